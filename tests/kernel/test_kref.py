"""struct kref (include/linux/kref.h) and the rules of Documentation/core-api/kref.rst."""

from __future__ import annotations

from typing import Any

import pytest

from vfio_ref.kernel import Deadlock, Kernel, Kref, KStruct, Mutex, SpinLock, UseAfterFree, kfree, kzalloc
from vfio_ref.kernel.refcount import REFCOUNT_SATURATED

ADD_ON_ZERO_MSG = "refcount_t: addition on 0; use-after-free."
UNDERFLOW_MSG = "refcount_t: underflow; use-after-free."


class Releases:
    """A release callback that records each call (and what the caller held at the time)."""

    def __init__(self, k: Kernel, lock: Mutex | None = None, unlock: bool = True) -> None:
        self.k = k
        self.lock = lock
        self.unlock = unlock
        self.calls: list[Kref] = []
        self.lock_held_by_caller: list[bool] = []

    def __call__(self, kref: Kref) -> None:
        self.calls.append(kref)
        if self.lock is not None:
            self.lock_held_by_caller.append(self.lock.owner is self.k.current())
            if self.unlock:
                self.lock.unlock()


def test_init_get_put(k: Kernel) -> None:
    kref = Kref(k)
    kref.kref_init()
    assert kref.kref_read() == 1
    kref.kref_get()
    assert kref.kref_read() == 2
    release = Releases(k)
    assert kref.kref_put(release) == 0
    assert release.calls == []
    assert kref.kref_put(release) == 1
    assert release.calls == [kref]
    assert kref.kref_read() == 0
    assert k.warnings == []


def test_release_runs_exactly_once_after_init_plus_gets_puts(k: Kernel) -> None:
    kref = Kref(k)
    kref.kref_init()
    gets = 17
    for _ in range(gets):
        kref.kref_get()
    release = Releases(k)
    results = [kref.kref_put(release) for _ in range(gets + 1)]
    assert results == [0] * gets + [1]
    assert len(release.calls) == 1


def test_put_mutex_not_last_does_not_touch_the_mutex(k: Kernel) -> None:
    lock = Mutex(k, "&vfio.group_lock")
    kref = Kref(k)
    kref.kref_init()
    kref.kref_get()
    release = Releases(k, lock)
    assert kref.kref_put_mutex(release, lock) == 0
    assert release.calls == []
    assert not lock.is_locked()
    assert kref.kref_read() == 1


def test_put_mutex_last_calls_release_with_the_mutex_held(k: Kernel) -> None:
    lock = Mutex(k, "&vfio.group_lock")
    kref = Kref(k)
    kref.kref_init()
    release = Releases(k, lock)
    assert kref.kref_put_mutex(release, lock) == 1
    assert release.calls == [kref]
    assert release.lock_held_by_caller == [True]
    assert not lock.is_locked()  # release dropped it
    assert k.warnings == [] and k.lockdep_reports == []


def test_put_mutex_release_that_forgets_to_unlock_leaves_the_mutex_held(k: Kernel) -> None:
    lock = Mutex(k, "&vfio.group_lock")
    kref = Kref(k)
    kref.kref_init()
    release = Releases(k, lock, unlock=False)
    assert kref.kref_put_mutex(release, lock) == 1
    assert lock.is_locked()  # nothing drops it for the release callback
    with pytest.raises(Deadlock):
        lock.lock()  # the next vfio_group_get_from_iommu in this task would hang


def test_put_lock_with_a_spinlock(k: Kernel) -> None:
    lock = SpinLock(k, "&kobj_lock")
    kref = Kref(k)
    kref.kref_init()
    kref.kref_get()
    release = Releases(k, lock)
    assert kref.kref_put_lock(release, lock) == 0
    assert kref.kref_put_lock(release, lock) == 1
    assert release.lock_held_by_caller == [True]
    assert not lock.is_locked()


def test_get_unless_zero(k: Kernel) -> None:
    kref = Kref(k)
    kref.kref_init()
    assert kref.kref_get_unless_zero() is True
    assert kref.kref_read() == 2
    kref.kref_put(Releases(k))
    kref.kref_put(Releases(k))
    assert kref.kref_get_unless_zero() is False  # dying object: no new reference
    assert kref.kref_read() == 0
    assert k.warnings == []


def test_get_from_zero_warns_addition_on_zero(k: Kernel, only_warning) -> None:
    kref = Kref(k)
    kref.kref_init()
    kref.kref_put(Releases(k))
    kref.kref_get()
    assert kref.kref_read() == REFCOUNT_SATURATED
    ev = only_warning(k, "refcount_warn_saturate", ADD_ON_ZERO_MSG)
    assert ev.backtrace[:2] == ("refcount_inc", "kref_get")


def test_put_on_zero_warns_underflow_and_does_not_release(k: Kernel, only_warning) -> None:
    kref = Kref(k)  # never initialised: 0
    release = Releases(k)
    assert kref.kref_put(release) == 0
    assert release.calls == []
    assert kref.kref_read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG).backtrace[:2] == (
        "refcount_dec_and_test",
        "kref_put",
    )


class Obj(KStruct):
    _embedded = ("kref",)

    def __init__(self, kernel: Kernel, *args: Any, **kwargs: Any) -> None:
        super().__init__(kernel)
        self.kref = Kref(kernel)
        self.kref.kref_init()


def obj_release(kref: Kref) -> None:
    kfree(kref.refcount.kernel, kref.container)


def test_an_embedded_kref_dies_with_its_object(k: Kernel) -> None:
    obj = kzalloc(k, Obj)
    assert obj is not None
    obj.kref.container = obj
    kref = obj.kref
    assert kref.kref_put(obj_release) == 1
    assert k.leaks() == []
    with pytest.raises(UseAfterFree):
        obj.kref.kref_get()
    with pytest.raises(UseAfterFree):
        kref.kref_get()  # a pointer to the embedded kref is a pointer into freed memory
