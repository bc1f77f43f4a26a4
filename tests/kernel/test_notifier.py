"""Blocking notifier chains (kernel/notifier.c, 5.15/5.16 behaviour)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from vfio_ref.kernel import (
    Deadlock,
    Kernel,
    Kref,
    KStruct,
    ModelUsageError,
    UseAfterFree,
    WarnEvent,
    kfree,
    kzalloc,
)
from vfio_ref.kernel.errno import ENOENT, ENOMEM
from vfio_ref.kernel.notifier import (
    BLOCKING_INIT_NOTIFIER_HEAD,
    NOTIFY_BAD,
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    NOTIFY_STOP_MASK,
    BlockingNotifierHead,
    NotifierBlock,
    blocking_notifier_call_chain,
    blocking_notifier_chain_register,
    blocking_notifier_chain_unregister,
)
from vfio_ref.kernel.rwsem import RWSemaphore

GROUP_RWSEM = "&group->notifier.rwsem"
OnlyWarning = Callable[[Kernel, str, str], WarnEvent]  # the conftest fixture


class Recorder:
    """Notifier callbacks that log (label, action, data) and answer a fixed value."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any]] = []

    def block(self, label: str, priority: int = 0, ret: int = NOTIFY_OK) -> NotifierBlock:
        def call(nb: NotifierBlock, action: int, data: Any) -> int:
            self.calls.append((label, action, data))
            return ret

        call.__name__ = f"cb_{label}"
        return NotifierBlock(notifier_call=call, priority=priority)

    @property
    def labels(self) -> list[str]:
        return [c[0] for c in self.calls]


def chain(k: Kernel) -> BlockingNotifierHead:
    return BLOCKING_INIT_NOTIFIER_HEAD(k, GROUP_RWSEM)


def test_constants_are_the_kernels() -> None:
    assert (NOTIFY_DONE, NOTIFY_OK, NOTIFY_STOP_MASK) == (0, 1, 0x8000)
    assert (NOTIFY_BAD, NOTIFY_STOP) == (0x8002, 0x8001)


def test_head_starts_empty_with_named_rwsem(k: Kernel) -> None:
    nh = chain(k)
    assert nh.head is None
    assert nh.rwsem.lock_class == GROUP_RWSEM


def test_calls_in_descending_priority_equal_priorities_in_registration_order(k: Kernel) -> None:
    nh = chain(k)
    rec = Recorder()
    for label, prio in [("a0", 0), ("b10", 10), ("c5", 5), ("d10", 10), ("e0", 0), ("f-1", -1)]:
        assert blocking_notifier_chain_register(nh, rec.block(label, prio)) == 0
    ret = blocking_notifier_call_chain(nh, 7, "data")
    assert rec.labels == ["b10", "d10", "c5", "a0", "e0", "f-1"]
    assert all(c[1:] == (7, "data") for c in rec.calls)
    assert ret == NOTIFY_OK
    assert nh.head is not None and nh.head.priority == 10
    assert k.warnings == [] and k.lockdep_reports == []


def test_returns_last_value_and_stops_on_stop_mask(k: Kernel) -> None:
    nh = chain(k)
    rec = Recorder()
    blocking_notifier_chain_register(nh, rec.block("first", 3, NOTIFY_DONE))
    blocking_notifier_chain_register(nh, rec.block("stopper", 2, NOTIFY_STOP))
    blocking_notifier_chain_register(nh, rec.block("never", 1, NOTIFY_OK))
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_STOP
    assert rec.labels == ["first", "stopper"]


def test_notify_bad_stops_too_but_plain_values_do_not(k: Kernel) -> None:
    nh = chain(k)
    rec = Recorder()
    blocking_notifier_chain_register(nh, rec.block("ok", 3, NOTIFY_OK))
    blocking_notifier_chain_register(nh, rec.block("odd", 2, 0x7FFF))  # no stop bit
    blocking_notifier_chain_register(nh, rec.block("bad", 1, NOTIFY_BAD))
    blocking_notifier_chain_register(nh, rec.block("never", 0, NOTIFY_OK))
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_BAD
    assert rec.labels == ["ok", "odd", "bad"]


def test_empty_chain_returns_done_without_touching_the_rwsem(
    k: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    nh = chain(k)

    def no_lock(self: RWSemaphore) -> None:
        raise AssertionError("an empty chain must not take the rwsem")

    monkeypatch.setattr(RWSemaphore, "down_read", no_lock)
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_DONE


def test_callbacks_run_with_the_read_side_held(k: Kernel) -> None:
    nh = chain(k)
    seen: list[tuple[bool, bool]] = []

    def cb(nb: NotifierBlock, action: int, data: Any) -> int:
        t = k.current()
        seen.append((t in nh.rwsem.readers, nh.rwsem.writer is None))
        return NOTIFY_OK

    blocking_notifier_chain_register(nh, NotifierBlock(notifier_call=cb))
    blocking_notifier_call_chain(nh, 1, None)
    assert seen == [(True, True)]
    assert not nh.rwsem.readers  # released afterwards


def test_double_register_warns_and_returns_zero(k: Kernel, only_warning: OnlyWarning) -> None:
    nh = chain(k)
    rec = Recorder()
    nb = rec.block("x")
    assert blocking_notifier_chain_register(nh, nb) == 0
    assert blocking_notifier_chain_register(nh, nb) == 0  # 5.15/5.16: 0, not -EEXIST
    only_warning(k, "notifier_chain_register", "double register detected")
    assert k.warnings[0].macro == "WARN"
    assert nh.blocks() == [nb]  # linked once, no loop
    blocking_notifier_call_chain(nh, 1, None)
    assert rec.labels == ["x"]


def test_unregister_unlinks_then_enoent(k: Kernel) -> None:
    nh = chain(k)
    rec = Recorder()
    a, b, c = rec.block("a", 3), rec.block("b", 2), rec.block("c", 1)
    for nb in (a, b, c):
        blocking_notifier_chain_register(nh, nb)
    assert blocking_notifier_chain_unregister(nh, b) == 0
    assert nh.blocks() == [a, c]
    assert blocking_notifier_chain_unregister(nh, b) == -ENOENT
    assert blocking_notifier_chain_unregister(nh, a) == 0
    assert blocking_notifier_chain_unregister(nh, c) == 0
    assert nh.head is None
    assert blocking_notifier_chain_unregister(nh, c) == -ENOENT
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_DONE
    assert rec.calls == []
    assert k.warnings == []


def test_callback_in_the_container_slot_is_refused() -> None:
    def cb(nb: NotifierBlock, action: int, data: Any) -> int:
        return NOTIFY_OK

    with pytest.raises(ModelUsageError, match="notifier_call="):
        NotifierBlock(cb)
    owner = object()
    nb = NotifierBlock(owner, cb, 3)
    assert (nb.container, nb.notifier_call, nb.priority, nb.next) == (owner, cb, 3, None)


def test_unregister_of_a_block_never_registered(k: Kernel) -> None:
    nh = chain(k)
    assert blocking_notifier_chain_unregister(nh, NotifierBlock()) == -ENOENT


def my_group_setup(nh: BlockingNotifierHead, nb: NotifierBlock) -> int:
    """Stands for a kernel caller (vfio_create_group, say) registering on a chain."""
    return blocking_notifier_chain_register(nh, nb)


def test_injected_register_failure_returns_enomem_and_leaves_chain_alone(k: Kernel) -> None:
    nh = chain(k)
    rec = Recorder()
    k.fault_inject.fail("notifier_register@my_group_setup", nth=1)
    assert my_group_setup(nh, rec.block("x")) == -ENOMEM
    assert nh.head is None
    assert [p.name for p in k.fault_inject.injected] == ["notifier_register@my_group_setup"]
    assert k.fault_inject.injected[0].detail == "cb_x"
    # Only the first call was made to fail.
    assert my_group_setup(nh, rec.block("y")) == 0
    assert [nb.notifier_call.__name__ for nb in nh.blocks() if nb.notifier_call] == ["cb_y"]


def test_register_is_a_recorded_fault_point(k: Kernel) -> None:
    nh = chain(k)
    my_group_setup(nh, Recorder().block("x"))
    assert [p.name for p in k.fault_inject.points] == ["notifier_register@my_group_setup"]


def test_block_without_callback_warns_and_is_skipped(k: Kernel, only_warning: OnlyWarning) -> None:
    nh = chain(k)
    rec = Recorder()
    blocking_notifier_chain_register(nh, NotifierBlock(priority=5))
    blocking_notifier_chain_register(nh, rec.block("after", 0))
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_OK
    assert rec.labels == ["after"]
    only_warning(k, "notifier_call_chain", "Invalid notifier called!")


# --------------------------------------------------------------------------------------
# Self-unregistration: the reason the base VFIO deferred its put.


def _assert_only_read_then_write(k: Kernel, faults: list[Any]) -> None:
    assert len(faults) == 1 and isinstance(faults[0], Deadlock)
    assert "down_write" in faults[0].message and GROUP_RWSEM in faults[0].message
    assert [(r.kind, r.classes) for r in k.lockdep_reports] == [("read-then-write", (GROUP_RWSEM,))]
    assert k.warnings == []
    assert k.faults == faults


def test_callback_unregistering_itself_is_reported_and_ends_in_deadlock(k: Kernel) -> None:
    nh = chain(k)
    reached: list[str] = []

    def cb(nb: NotifierBlock, action: int, data: Any) -> int:
        reached.append("callback")
        blocking_notifier_chain_unregister(nh, nb)
        reached.append("unregistered")  # never: the task is stuck for good
        return NOTIFY_OK

    nb = NotifierBlock(notifier_call=cb)
    blocking_notifier_chain_register(nh, nb)
    start = time.monotonic()
    faults = k.run_threads(lambda: blocking_notifier_call_chain(nh, 1, None), names=("notify",))
    assert time.monotonic() - start < 5  # reported at once, not after a hang timeout
    assert reached == ["callback"]
    _assert_only_read_then_write(k, faults)
    assert faults[0].thread == "notify"
    assert nh.blocks() == [nb]  # the unlink never happened


class Watcher(KStruct):
    """A refcounted object whose release unregisters its notifier and frees it, as the base
    vfio_group did (vfio_group_release -> vfio_group_unlock_and_free).

    Its callback takes a reference, lets ``meanwhile`` run (another thread dropping the
    owner's reference, say), then drops its own: inline, or deferred to ``deferred`` to run
    after the chain call returns (the base's vfio_group_schedule_put).
    """

    _embedded = ("kref", "nb")

    def __init__(self, kernel: Kernel, nh: BlockingNotifierHead) -> None:
        self.kernel = kernel
        self.nh = nh
        self.kref = Kref(kernel)
        self.kref.container = self
        self.nb = NotifierBlock(self, watcher_notifier)
        self.defer_put = False
        self.deferred: list[Any] = []

    def leak_detail(self) -> str:
        return f"watcher refs={self.kref.kref_read()}"


def watcher_release(kref: Kref) -> None:
    w: Watcher = kref.container
    blocking_notifier_chain_unregister(w.nh, w.nb)
    kfree(w.kernel, w)


def watcher_notifier(nb: NotifierBlock, action: int, data: Any) -> int:
    w: Watcher = nb.container
    w.kref.kref_get()
    data()  # meanwhile: the owner lets go
    if w.defer_put:
        w.deferred.append(lambda: w.kref.kref_put(watcher_release))
    else:
        w.kref.kref_put(watcher_release)
    return NOTIFY_OK


def _make_watcher(k: Kernel, nh: BlockingNotifierHead) -> Watcher:
    w = kzalloc(k, Watcher, nh)
    assert w is not None
    w.kref.kref_init()
    assert blocking_notifier_chain_register(nh, w.nb) == 0
    return w


def test_final_put_inside_the_callback_is_reported_and_deadlocks(k: Kernel) -> None:
    nh = chain(k)
    w = _make_watcher(k, nh)

    def owner_lets_go() -> None:
        w.kref.kref_put(watcher_release)  # 2 -> 1: the callback now holds the last one

    faults = k.run_threads(lambda: blocking_notifier_call_chain(nh, 1, owner_lets_go))
    _assert_only_read_then_write(k, faults)
    # The release never got past the unregister: the object was not freed.
    assert [leak.detail for leak in k.leaks()] == ["watcher refs=0"]


def test_deferring_the_final_put_past_the_chain_call_is_clean(k: Kernel) -> None:
    nh = chain(k)
    w = _make_watcher(k, nh)
    w.defer_put = True
    deferred = w.deferred

    def owner_lets_go() -> None:
        w.kref.kref_put(watcher_release)

    def notify_then_run_deferred() -> None:
        blocking_notifier_call_chain(nh, 1, owner_lets_go)
        for put in deferred:
            put()

    assert k.run_threads(notify_then_run_deferred) == []
    assert k.lockdep_reports == [] and k.warnings == [] and k.faults == []
    assert nh.head is None
    assert k.leaks() == []


def test_a_freed_block_still_on_the_chain_is_a_use_after_free(k: Kernel) -> None:
    nh = chain(k)
    w = _make_watcher(k, nh)
    kfree(k, w)  # freed without unregistering: the chain now links freed memory
    with pytest.raises(UseAfterFree) as exc:
        blocking_notifier_call_chain(nh, 1, lambda: None)
    # KASAN names the allocation the block lives in, and the walk that read it.
    assert "use-after-free in notifier_call_chain: read of watcher->nb.next (struct watcher)" in exc.value.message


# --------------------------------------------------------------------------------------
# Unregister waits for running callbacks (the ordering VFIO patch 1 relies on).


def test_unregister_does_not_return_while_a_callback_runs(k: Kernel) -> None:
    nh = chain(k)
    entered = threading.Event()
    release = threading.Event()
    log: list[str] = []
    log_lock = threading.Lock()

    def note(what: str) -> None:
        with log_lock:
            log.append(what)

    def cb(nb: NotifierBlock, action: int, data: Any) -> int:
        note("callback start")
        entered.set()
        assert release.wait(5), "the test never released the callback"
        note("callback end")
        return NOTIFY_OK

    nb = NotifierBlock(notifier_call=cb)
    blocking_notifier_chain_register(nh, nb)
    unregister_returned = threading.Event()
    results: list[int] = []

    def notifier_thread() -> None:
        blocking_notifier_call_chain(nh, 1, None)

    def unregister_thread() -> None:
        assert entered.wait(5)
        note("unregister start")
        results.append(blocking_notifier_chain_unregister(nh, nb))
        note("unregister return")
        unregister_returned.set()

    def referee() -> None:
        try:
            assert entered.wait(5)
            # Give the unregistering thread ample time to (wrongly) get through.
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                assert not unregister_returned.is_set(), "unregister returned under a running callback"
                time.sleep(0.01)
        finally:
            note("referee releases")
            release.set()

    # A short hang timeout must not turn the (legitimate) wait into a Deadlock.
    faults = k.run_threads(notifier_thread, unregister_thread, referee, names=("cb", "unreg", "ref"))
    assert faults == []
    assert results == [0]
    assert log.index("unregister start") < log.index("referee releases")
    assert log.index("callback end") < log.index("unregister return")
    assert nh.head is None
    assert k.lockdep_reports == [] and k.warnings == []


# --------------------------------------------------------------------------------------
# Scheduling points (what the explorer sees)


class RecordingSched:
    """A scheduler stand-in for one thread: every point is allowed and recorded."""

    step_no = 0

    def __init__(self) -> None:
        self.points: list[tuple[str, object]] = []

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        assert ready is None or ready(), f"{op} would block"
        self.points.append((op, obj))

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        raise AssertionError("no kernel threads expected")


def test_unlocked_head_look_and_chain_changes_are_points_on_the_same_object() -> None:
    s = RecordingSched()
    k = Kernel(sched=s)
    nh = chain(k)
    assert blocking_notifier_call_chain(nh, 1, None) == NOTIFY_DONE
    assert s.points == [("READ_ONCE", nh)]  # and no rwsem operation at all
    s.points.clear()
    nb = NotifierBlock(notifier_call=lambda nb, a, d: NOTIFY_OK)
    blocking_notifier_chain_register(nh, nb)
    assert [(op, o is nh, o is nh.rwsem) for op, o in s.points] == [
        ("down_write", False, True), ("WRITE_ONCE", True, False), ("up_write", False, True),
    ]
    s.points.clear()
    blocking_notifier_chain_unregister(nh, nb)
    assert ("WRITE_ONCE", nh) in s.points
