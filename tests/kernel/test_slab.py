"""kzalloc / kfree with KASAN-like poisoning and a kmemleak-like live set.

The helpers below are named after the kernel functions they stand for, because the slab
names the allocating and freeing function in its reports.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from vfio_ref.kernel import (
    DoubleFree,
    Kernel,
    KernelBug,
    KStruct,
    Mutex,
    Refcount,
    UseAfterFree,
    kfree,
    kzalloc,
)
from vfio_ref.kernel.errno import ENOMEM, ERR_PTR
from vfio_ref.kernel.slab import container_of, is_freed


class VfioGroup(KStruct):
    _embedded = ("group_lock", "users")

    def __init__(self, kernel: Kernel, *args: Any, **kwargs: Any) -> None:
        super().__init__(kernel)
        self.minor = 0
        self.container_users = 0
        self.group_lock = Mutex(kernel, "&group->group_lock")
        self.users = Refcount(kernel, 1)
        self.group_lock.container = self

    def leak_detail(self) -> str:
        return f"users={self.users.refs}"


class VfioUnboundDev(KStruct):
    def __init__(self, kernel: Kernel, *args: Any, **kwargs: Any) -> None:
        super().__init__(kernel)
        self.dev = None


def vfio_create_group(k: Kernel) -> VfioGroup | None:
    return kzalloc(k, VfioGroup)


def vfio_group_unlock_and_free(k: Kernel, group: object) -> None:
    kfree(k, group)


def vfio_iommu_group_notifier(k: Kernel) -> VfioUnboundDev | None:
    return kzalloc(k, VfioUnboundDev)


def vfio_group_try_get(group: VfioGroup) -> int:
    return group.minor


def vfio_group_set_container(group: VfioGroup) -> None:
    group.container_users = 1


def new_group(k: Kernel) -> VfioGroup:
    g = vfio_create_group(k)
    assert g is not None
    return g


# -- use-after-free ------------------------------------------------------------------------------


def test_reading_a_field_of_a_freed_struct_is_a_use_after_free(k: Kernel) -> None:
    g = new_group(k)
    g.minor = 7
    assert vfio_group_try_get(g) == 7  # live: plain field access
    vfio_group_unlock_and_free(k, g)
    with pytest.raises(UseAfterFree) as ei:
        vfio_group_try_get(g)
    e: Any = ei.value
    assert e.kind == "use-after-free"
    assert (e.field, e.access, e.function) == ("minor", "read", "vfio_group_try_get")
    assert e.message.startswith(
        "BUG: KASAN: use-after-free in vfio_group_try_get: read of group->minor (struct vfio_group)"
    )
    assert "Allocated by task MainThread in vfio_create_group" in e.message
    assert "Freed by task MainThread in vfio_group_unlock_and_free" in e.message
    assert e.freed.function == "vfio_group_unlock_and_free"


def test_writing_a_field_of_a_freed_struct_is_a_use_after_free(k: Kernel) -> None:
    g = new_group(k)
    vfio_group_unlock_and_free(k, g)
    with pytest.raises(UseAfterFree) as ei:
        vfio_group_set_container(g)
    e: Any = ei.value
    assert (e.field, e.access) == ("container_users", "write")
    assert "write of group->container_users (struct vfio_group)" in e.message


def test_the_report_names_the_task_that_freed_it(k: Kernel) -> None:
    g = new_group(k)
    with k.as_task(k.new_task("kworker/0:1")):
        vfio_group_unlock_and_free(k, g)
    with pytest.raises(UseAfterFree) as ei:
        vfio_group_try_get(g)
    assert "Freed by task kworker/0:1 in vfio_group_unlock_and_free" in ei.value.message
    assert ei.value.thread == "MainThread"  # who touched it


def test_freed_object_still_answers_is_freed_and_repr(k: Kernel) -> None:
    g = new_group(k)
    assert not is_freed(g)
    vfio_group_unlock_and_free(k, g)
    assert is_freed(g)
    assert repr(g).startswith("<freed VfioGroup at ")


# -- double free and invalid free ----------------------------------------------------------------


def test_kfree_twice_is_a_double_free(k: Kernel) -> None:
    g = new_group(k)
    vfio_group_unlock_and_free(k, g)
    with pytest.raises(DoubleFree) as ei:
        vfio_group_unlock_and_free(k, g)
    assert ei.value.kind == "double-free"
    assert ei.value.message.startswith("BUG: KASAN: double-free in vfio_group_unlock_and_free: VfioGroup")
    assert "Freed by task MainThread in vfio_group_unlock_and_free" in ei.value.message


def test_kfree_null_is_fine(k: Kernel) -> None:
    kfree(k, None)
    assert k.warnings == [] and k.faults == [] and k.leaks() == []


def test_kfree_of_an_err_ptr_is_an_invalid_free(k: Kernel) -> None:
    with pytest.raises(KernelBug) as ei:
        vfio_group_unlock_and_free(k, ERR_PTR(-ENOMEM))
    assert ei.value.message.startswith("BUG: KASAN: invalid-free in vfio_group_unlock_and_free")
    assert "ERR_PTR(-ENOMEM)" in ei.value.message


# -- embedded objects ----------------------------------------------------------------------------


def test_an_embedded_mutex_is_freed_with_its_container(k: Kernel) -> None:
    g = new_group(k)
    lock = g.group_lock
    vfio_group_unlock_and_free(k, g)
    assert is_freed(lock)
    with pytest.raises(UseAfterFree, match=r"group->group_lock\.lock \(struct vfio_group\)"):
        lock.lock()
    with pytest.raises(UseAfterFree):
        g.group_lock.lock()


def test_an_embedded_refcount_is_freed_with_its_container(k: Kernel) -> None:
    g = new_group(k)
    users = g.users
    vfio_group_unlock_and_free(k, g)
    assert is_freed(users)
    with pytest.raises(UseAfterFree) as ei:
        users.inc_not_zero()  # the lookup that finds a dead group through a stale pointer
    assert "Freed by task MainThread in vfio_group_unlock_and_free" in ei.value.message


def vfio_group_of_lock(lock: Mutex) -> Any:
    return container_of(lock, VfioGroup, "group_lock")


def test_the_container_back_pointer_of_a_freed_member_is_freed_memory_too(k: Kernel) -> None:
    # container_of() from a stale pointer to an embedded member (a struct cdev, a mutex...) is
    # how a use-after-free of the container usually starts: the back-pointer lives in the
    # freed memory, so reading it is the first bad access and the one reported.
    g = new_group(k)
    lock, users = g.group_lock, g.users
    vfio_group_unlock_and_free(k, g)
    with pytest.raises(UseAfterFree) as ei:
        vfio_group_of_lock(lock)
    e = ei.value
    assert (e.field, e.access) == ("container", "read")  # type: ignore[attr-defined]
    # C's container_of is a macro; the model's is a function, which the report names.
    assert e.message.startswith(
        "BUG: KASAN: use-after-free in container_of: read of group->group_lock (struct vfio_group)"
    )
    assert "Freed by task MainThread in vfio_group_unlock_and_free" in e.message
    for member in (lock, users):
        with pytest.raises(UseAfterFree) as ei:
            _ = member.container
        assert (ei.value.field, ei.value.access) == ("container", "read")  # type: ignore[attr-defined]
    with pytest.raises(UseAfterFree):
        lock.container = None  # writing it is one too


class _AccessLog:
    """Stands in for the explorer's recording scheduler: the member accesses reported."""

    def __init__(self) -> None:
        self.accesses: list[tuple[str, str, bool]] = []

    def access(self, obj: object, field: str, write: bool) -> None:
        self.accesses.append((type(obj).__name__, field, write))


def test_freeing_a_watched_struct_reports_no_access_and_poisons_its_members(k: Kernel) -> None:
    # Under the explorer's reductions structs are built as watched twins, whose member reads
    # and writes are steps' accesses; kfree must go around them (its write of the whole
    # object is reported once, by the scheduler's freed()), whereas plain structs are poisoned
    # with ordinary attribute writes.
    from vfio_ref.kernel import slab

    g = slab.watched_class(VfioGroup)(k)
    lock, users = g.group_lock, g.users
    log = _AccessLog()
    saved = slab.WATCH.report
    slab.WATCH.report = log
    try:
        slab.poison(g, None)
        assert log.accesses == []
        assert is_freed(g) and is_freed(lock) and is_freed(users)
        with pytest.raises(UseAfterFree):
            _ = g.minor
        assert log.accesses == [("FreedVfioGroup", "minor", False)]  # the faulting read is a step's
    finally:
        slab.WATCH.report = saved


def test_fields_not_declared_embedded_are_separate_objects(k: Kernel) -> None:
    g = new_group(k)
    ud = vfio_iommu_group_notifier(k)
    assert ud is not None
    g.other = ud  # type: ignore[attr-defined]  # a pointer, not embedded memory
    vfio_group_unlock_and_free(k, g)
    assert not is_freed(ud)
    assert ud.dev is None


def test_container_of(k: Kernel) -> None:
    g = new_group(k)
    assert container_of(g.group_lock, VfioGroup, "group_lock") is g
    with pytest.raises(TypeError):
        container_of(g.group_lock, VfioUnboundDev, "group_lock")


# -- leaks -----------------------------------------------------------------------------------


def test_leaks_lists_exactly_the_live_objects_with_their_allocator(k: Kernel) -> None:
    g1 = new_group(k)
    g2 = new_group(k)
    ud = vfio_iommu_group_notifier(k)
    vfio_group_unlock_and_free(k, g1)
    leaks = sorted(k.leaks(), key=lambda leak: leak.type)
    assert [(leak.type, leak.allocated_by, leak.thread) for leak in leaks] == [
        ("VfioGroup", "vfio_create_group", "MainThread"),
        ("VfioUnboundDev", "vfio_iommu_group_notifier", "MainThread"),
    ]
    assert leaks[0].detail == "users=1"
    assert str(leaks[0]) == (
        "unreferenced object struct vfio_group (users=1), allocated by vfio_create_group [MainThread]"
    )
    vfio_group_unlock_and_free(k, g2)
    vfio_group_unlock_and_free(k, ud)
    assert k.leaks() == []
    assert (k.slab.allocs, k.slab.frees) == (3, 3)


def test_objects_not_from_kzalloc_are_not_tracked(k: Kernel) -> None:
    VfioGroup(k)  # a struct on the stack, so to speak
    assert k.leaks() == []


# -- fault injection -----------------------------------------------------------------------------


def test_an_injected_kzalloc_failure_returns_null(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@vfio_create_group")
    assert vfio_create_group(k) is None
    assert vfio_iommu_group_notifier(k) is not None  # other call sites still allocate
    assert [leak.type for leak in k.leaks()] == ["VfioUnboundDev"]
    [p] = k.fault_inject.injected
    assert (p.name, p.detail) == ("kzalloc@vfio_create_group", "VfioGroup")


# -- KASAN off -------------------------------------------------------------------------------


def test_without_kasan_freed_memory_is_not_poisoned() -> None:
    k = Kernel(kasan=False)
    g = new_group(k)
    g.minor = 3
    vfio_group_unlock_and_free(k, g)
    assert not is_freed(g)
    assert vfio_group_try_get(g) == 3  # a silent use-after-free, as on a kernel without KASAN
    assert k.leaks() == []  # still untracked: the live set does not depend on KASAN


def test_allocation_and_free_chains_are_named_as_when_they_happened(monkeypatch: pytest.MonkeyPatch) -> None:
    # The records keep the frame of kzalloc's and kfree's caller and name the call chain when
    # a report reads it; by then every function on it has returned.  The names must be the
    # ones a walk of the stack gave at the call.
    from vfio_ref.kernel import slab
    from vfio_ref.kernel.core import backtrace_from, site_from
    from vfio_ref.vfio import boot
    from vfio_ref.vfio.platform import Platform

    at_the_call: dict[int, tuple[str, tuple[str, ...]]] = {}
    for cls in (slab.AllocInfo, slab.FreeInfo):
        init = cls.__init__

        def naming_now(self: Any, *args: Any, _init: Any = init, **kw: Any) -> None:
            _init(self, *args, **kw)
            at_the_call[id(self)] = (site_from(self._frame)[0], backtrace_from(self._frame, slab.CHAIN_DEPTH))

        monkeypatch.setattr(cls, "__init__", naming_now)
    v = boot("p3")  # as posted: vfio_create_group() frees the group it returns
    p = Platform(v)
    p.add_group("g0")
    p.add_device("0000:00:01.0", "g0")
    with pytest.raises(UseAfterFree) as e:
        p.bind("0000:00:01.0")
    freed = e.value.freed  # type: ignore[attr-defined]
    assert (freed.function, freed.backtrace) == at_the_call[id(freed)]
    assert freed.backtrace[:2] == ("vfio_create_group", "vfio_group_find_or_alloc")
    assert freed.allocated.backtrace == at_the_call[id(freed.allocated)][1]
    assert "Freed by task MainThread in vfio_create_group (vfio_create_group <- vfio_group_find_or_alloc <- " in str(
        e.value
    )
    # A live object's allocation chain, read at the end.
    live = [info for _, info in v.k.slab.live.values()]
    assert live and all(info.backtrace == at_the_call[id(info)][1] for info in live)
    # What a pickle carries: the chain, named.
    copy = pickle.loads(pickle.dumps(freed))
    assert (copy.function, copy.backtrace, copy.allocated.backtrace) == (
        freed.function, freed.backtrace, freed.allocated.backtrace
    )
