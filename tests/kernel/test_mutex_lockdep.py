"""struct mutex and the lockdep-like validator.

Lockdep reports a problem as soon as the lock *order* is seen, without any deadlock having
to happen; a real deadlock (free-running threads) ends in a Deadlock fault naming the
wait-for cycle instead of hanging.
"""

from __future__ import annotations

import threading
import time

import pytest

from vfio_ref.kernel import Deadlock, Kernel, Mutex, lockdep_assert_held
from vfio_ref.kernel.mutex import SpinLock

# -- basic mutex ---------------------------------------------------------------------------


def test_lock_unlock_is_locked(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    assert not m.is_locked()
    m.lock()
    assert m.is_locked()
    assert m.owner is k.current()
    m.unlock()
    assert not m.is_locked()
    assert k.lockdep_reports == [] and k.warnings == []


def test_trylock(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    assert m.trylock() is True
    other = k.new_task("other")
    with k.as_task(other):
        assert m.trylock() is False  # held by the first task: no sleeping
    m.unlock()
    with k.as_task(other):
        assert m.trylock() is True
        m.unlock()
    assert k.lockdep_reports == []


def test_mutual_exclusion_between_real_threads(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    inside = [0]
    overlaps: list[int] = []
    total = [0]

    def worker() -> None:
        for _ in range(300):
            m.lock()
            inside[0] += 1
            if inside[0] != 1:
                overlaps.append(inside[0])
            total[0] += 1
            inside[0] -= 1
            m.unlock()

    assert k.run_threads(worker, worker, worker) == []
    assert overlaps == []
    assert total[0] == 900
    assert not m.is_locked()
    assert k.lockdep_reports == []


def test_mutex_destroy_of_a_held_mutex_warns(k: Kernel, only_warning) -> None:
    m = Mutex(k, "&group->device_lock")
    m.mutex_destroy()
    assert k.warnings == []
    m.lock()

    def vfio_group_release() -> None:
        m.mutex_destroy()

    vfio_group_release()
    ev = only_warning(k, "vfio_group_release", "DEBUG_LOCKS_WARN_ON(mutex_is_locked(lock))")
    assert ev.macro == "WARN_ON"


# -- lockdep: inversions -------------------------------------------------------------------


def lock_in_order(*locks: Mutex) -> None:
    for m in locks:
        m.lock()
    for m in reversed(locks):
        m.unlock()


def test_ab_ba_is_reported_the_first_time_both_orders_are_seen(k: Kernel) -> None:
    a, b = Mutex(k, "A"), Mutex(k, "B")
    lock_in_order(a, b)
    assert k.lockdep_reports == []
    lock_in_order(b, a)  # no deadlock happens: one task, run one after the other
    [r] = k.lockdep_reports
    assert r.kind == "circular"
    assert r.classes == ("B", "A")  # holding B, trying to take A
    assert "possible circular locking dependency detected" in r.text
    assert r.thread == k.current().name
    # seen again: no second report
    lock_in_order(b, a)
    lock_in_order(a, b)
    assert len(k.lockdep_reports) == 1


def test_ab_ba_across_two_tasks(k: Kernel) -> None:
    a, b = Mutex(k, "A"), Mutex(k, "B")
    with k.as_task(k.new_task("T1")):
        lock_in_order(a, b)
    with k.as_task(k.new_task("T2")):
        lock_in_order(b, a)
    [r] = k.lockdep_reports
    assert (r.kind, r.classes, r.thread) == ("circular", ("B", "A"), "T2")
    assert "first taken in lock_in_order [T1]" in r.text  # the earlier A -> B dependency


def test_a_longer_cycle_is_found(k: Kernel) -> None:
    a, b, c = Mutex(k, "A"), Mutex(k, "B"), Mutex(k, "C")
    lock_in_order(a, b)
    lock_in_order(b, c)
    assert k.lockdep_reports == []
    lock_in_order(c, a)
    [r] = k.lockdep_reports
    assert r.kind == "circular"
    assert r.classes == ("C", "A")
    assert "(A) -> (B)" in r.text and "(B) -> (C)" in r.text  # the chain that closes it


def test_consistent_order_is_never_reported(k: Kernel) -> None:
    locks = [Mutex(k, f"L{i}") for i in range(5)]
    for _ in range(3):
        lock_in_order(*locks)
        lock_in_order(locks[0], locks[3])
        lock_in_order(locks[1], locks[4])
    assert k.lockdep_reports == []


def test_classes_not_instances_carry_the_order(k: Kernel) -> None:
    # Two groups' locks are one class: group1 A->B and group2 B->A is an inversion.
    a1, b1 = Mutex(k, "&group->lock"), Mutex(k, "&group->dev_lock")
    a2, b2 = Mutex(k, "&group->lock"), Mutex(k, "&group->dev_lock")
    lock_in_order(a1, b1)
    lock_in_order(b2, a2)
    assert [r.kind for r in k.lockdep_reports] == ["circular"]


# -- lockdep: recursion and unlock balance ---------------------------------------------------


def test_recursive_lock_of_a_held_mutex_is_reported_and_raises_deadlock(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    m.lock()
    with pytest.raises(Deadlock, match="already holds"):
        m.lock()  # never a hang
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("recursive", ("&vfio.group_lock",))
    assert "possible recursive locking detected" in r.text
    assert m.owner is k.current()  # still held once
    m.unlock()
    assert not m.is_locked()


def test_two_instances_of_one_class_nested_is_reported_without_deadlock(k: Kernel) -> None:
    g1, g2 = Mutex(k, "&group->group_lock"), Mutex(k, "&group->group_lock")
    g1.lock()
    g2.lock()  # a different lock: it can be taken
    assert g1.is_locked() and g2.is_locked()
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("recursive", ("&group->group_lock",))
    g2.unlock()
    g1.unlock()
    assert not k.faults


def test_unlock_of_an_unheld_mutex_is_a_bad_unlock(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    m.unlock()
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("bad-unlock", ("&vfio.group_lock",))
    assert "bad unlock balance detected" in r.text
    assert not m.is_locked()
    m.lock()  # the mutex still works
    m.unlock()
    assert len(k.lockdep_reports) == 1


def test_unlock_by_a_task_that_does_not_hold_it_is_a_bad_unlock(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    m.lock()
    with k.as_task(k.new_task("intruder")):
        m.unlock()
    [r] = k.lockdep_reports
    assert (r.kind, r.thread) == ("bad-unlock", "intruder")


# -- CONFIG_DEBUG_MUTEXES: the owner check at unlock ---------------------------------------------

OWNER_WARN = ("__mutex_unlock_slowpath", "DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)")


def owner_warns(k: Kernel) -> list[tuple[str, bool]]:
    """(thread, printed) of each owner-check WARN; fails if any other WARN fired."""
    assert all((w.function, w.message) == OWNER_WARN for w in k.warnings), k.warnings
    assert all(w.macro == "DEBUG_LOCKS_WARN_ON" and w.site.startswith("test_mutex_lockdep.py:") for w in k.warnings)
    return [(w.thread, w.printed) for w in k.warnings]


def test_the_owners_unlock_is_quiet(k: Kernel) -> None:
    m = Mutex(k, "L")
    for _ in range(3):
        m.lock()
        m.unlock()
    assert k.warnings == [] and k.lockdep_reports == []


def test_unlock_by_a_non_owner_warns_and_releases_the_mutex_as_the_kernel_does(k: Kernel) -> None:
    m = Mutex(k, "L")
    m.lock()
    with k.as_task(k.new_task("intruder")):
        m.unlock()
    # __mutex_unlock_slowpath: lockdep's bad unlock first (it turns debug_locks off, so the
    # WARN that follows is recorded but not printed), then the owner is cleared anyway.
    assert owner_warns(k) == [("intruder", False)]
    assert [(r.kind, r.thread) for r in k.lockdep_reports] == [("bad-unlock", "intruder")]
    assert not m.is_locked() and m.owner is None


def test_the_owners_later_unlock_does_not_silently_release_the_next_holders_lock(k: Kernel) -> None:
    m = Mutex(k, "L")
    m.lock()
    with k.as_task(k.new_task("intruder")):
        m.unlock()
    holder = k.new_task("holder")
    with k.as_task(holder):
        m.lock()  # free again: the next task takes it
    assert m.owner is holder
    m.unlock()  # the first owner: lockdep still has it held, so only DEBUG_MUTEXES sees this
    assert owner_warns(k) == [("intruder", False), ("MainThread", False)]
    assert not m.is_locked()  # released under the holder's feet, as the kernel would, and reported
    with k.as_task(holder):
        m.unlock()  # the holder's unlock now finds no owner: a third report
    assert owner_warns(k) == [("intruder", False), ("MainThread", False), ("holder", False)]
    assert len(k.lockdep_reports) == 1
    m.lock()  # and the mutex still works
    m.unlock()
    assert len(k.warnings) == 3


def test_with_lockdep_off_the_owner_check_is_the_report_that_prints() -> None:
    k = Kernel(lockdep=False, hang_timeout=0.5)
    m = Mutex(k, "L")
    m.lock()
    with k.as_task(k.new_task("intruder")):
        m.unlock()
        m.unlock()  # debug_locks is off after the first: recorded, not printed
    assert owner_warns(k) == [("intruder", True), ("intruder", False)]
    assert k.log == ["WARNING: __mutex_unlock_slowpath: DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)"]
    assert k.lockdep_reports == []


def test_a_non_owner_unlock_between_real_threads_wakes_the_waiter(k: Kernel) -> None:
    m = Mutex(k, "L")
    m.lock()
    got = threading.Event()

    def waiter() -> None:
        m.lock()
        got.set()
        m.unlock()

    def intruder() -> None:
        time.sleep(0.05)
        m.unlock()

    k.run_threads(waiter, intruder, names=("waiter", "intruder"))
    assert got.is_set()
    m.unlock()  # the first owner's unlock, after the waiter has come and gone
    assert owner_warns(k) == [("intruder", False), ("MainThread", False)]
    assert not k.faults


@pytest.mark.parametrize(
    "reduction",
    [
        False,
        # The reduced search sees it too: the unlock is part of the non-owner's step, and a
        # step that releases a mutex conflicts with the owner's steps on it.
        True,
    ],
    ids=["plain", "reduced"],
)
def test_the_owner_check_under_the_explorer_in_every_schedule(reduction: bool) -> None:
    from vfio_ref.explorer import Execution, RawFinding, explore
    from vfio_ref.kernel.atomic import Atomic

    def program(ctx: Execution) -> None:
        m, work = Mutex(ctx.kernel, "L"), Atomic(ctx.kernel, 0)

        def holder() -> None:
            m.lock()
            work.atomic_inc()  # a scheduling point inside the critical section
            m.unlock()

        def intruder() -> None:
            m.unlock()

        ctx.join(ctx.spawn("owner", holder), ctx.spawn("waiter", holder), ctx.spawn("intruder", intruder))
        ctx.data["locked"] = m.is_locked()

    outcomes: set[tuple[str, ...]] = set()

    def judge(ctx: Execution) -> list[RawFinding]:
        k = ctx.kernel
        assert ctx.data["locked"] is False and not k.faults
        assert all((w.function, w.message) == OWNER_WARN for w in k.warnings)
        outcomes.add(tuple(w.thread for w in k.warnings))
        return [RawFinding("warn", f"{w.message} [{w.thread}]", f"warn:{w.thread}") for w in k.warnings]

    ex = explore(program, judge, bound=2, reduction=reduction)
    assert ex.stats.exhausted and {f.kind for f in ex.findings} == {"warn"}
    # The intruder's unlock always WARNs.  When it released a holder's lock, that holder's
    # own unlock WARNs too, and so does the unlock of whoever took the lock in between: no
    # schedule releases a lock silently.
    assert outcomes == {
        ("intruder",),
        ("intruder", "owner"),
        ("intruder", "waiter"),
        ("intruder", "owner", "waiter"),
        ("intruder", "waiter", "owner"),
    }


def test_a_spinlock_checks_its_owner_as_debug_spin_unlock_does() -> None:
    k = Kernel(lockdep=False, hang_timeout=0.5)
    s = SpinLock(k, "S")
    s.spin_unlock()  # never locked: 'already unlocked', then 'wrong owner' (not printed)
    s.spin_lock()
    with k.as_task(k.new_task("intruder")):
        s.spin_unlock()
    got = [(w.function, w.message, w.macro, w.thread, w.printed) for w in k.warnings]
    assert got == [
        ("debug_spin_unlock", "BUG: spinlock already unlocked", "SPIN_BUG_ON", "MainThread", True),
        ("debug_spin_unlock", "BUG: spinlock wrong owner", "SPIN_BUG_ON", "MainThread", False),
        ("debug_spin_unlock", "BUG: spinlock wrong owner", "SPIN_BUG_ON", "intruder", False),
    ]
    assert not s.is_locked()


# -- lockdep_assert_held ------------------------------------------------------------------------


def vfio_group_try_dissolve_container(k: Kernel, m: Mutex) -> None:
    lockdep_assert_held(k, m)


def test_lockdep_assert_held_warns_when_not_held(k: Kernel, only_warning) -> None:
    m = Mutex(k, "&group->group_rwsem")
    vfio_group_try_dissolve_container(k, m)
    ev = only_warning(k, "vfio_group_try_dissolve_container", "lockdep_assert_held(&group->group_rwsem)")
    assert ev.macro == "WARN_ON"
    assert ev.site.startswith("test_mutex_lockdep.py:")


def test_lockdep_assert_held_is_quiet_when_held(k: Kernel) -> None:
    m = Mutex(k, "&group->group_rwsem")
    m.lock()
    vfio_group_try_dissolve_container(k, m)
    m.unlock()
    assert k.warnings == []


def test_lockdep_assert_held_wants_the_current_task_to_hold_it(k: Kernel, only_warning) -> None:
    m = Mutex(k, "L")
    m.lock()
    with k.as_task(k.new_task("other")):
        vfio_group_try_dissolve_container(k, m)
    assert only_warning(k, "vfio_group_try_dissolve_container", "lockdep_assert_held(L)").thread == "other"


# -- lockdep off ------------------------------------------------------------------------------


def test_lockdep_off_records_nothing() -> None:
    k = Kernel(lockdep=False, hang_timeout=0.5)
    a, b = Mutex(k, "A"), Mutex(k, "B")
    lock_in_order(a, b)
    lock_in_order(b, a)
    g1, g2 = Mutex(k, "G"), Mutex(k, "G")
    lock_in_order(g1, g2)
    a.unlock()
    vfio_group_try_dissolve_container(k, a)
    assert k.lockdep_reports == []
    # CONFIG_DEBUG_MUTEXES is not lockdep: its owner check still WARNs at the unheld unlock,
    # and prints (no lockdep report turned debug_locks off first).
    [w] = k.warnings
    assert (w.function, w.message, w.printed) == (
        "__mutex_unlock_slowpath",
        "DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)",
        True,
    )
    # The mutex itself still knows it cannot be taken twice.
    a.lock()
    with pytest.raises(Deadlock):
        a.lock()
    assert k.lockdep_reports == []


# -- real deadlocks in free-running mode ---------------------------------------------------------


def test_two_thread_ab_ba_deadlock_ends_in_a_deadlock_fault_naming_the_cycle() -> None:
    k = Kernel(hang_timeout=2.0)
    a, b = Mutex(k, "A"), Mutex(k, "B")
    a_held, b_held = threading.Event(), threading.Event()

    def t0() -> None:
        a.lock()
        a_held.set()
        assert b_held.wait(5)
        b.lock()

    def t1() -> None:
        b.lock()
        b_held.set()
        assert a_held.wait(5)
        a.lock()

    start = time.monotonic()
    faults = k.run_threads(t0, t1, names=("T0", "T1"))
    elapsed = time.monotonic() - start
    assert elapsed < 2.0  # found from the wait-for graph, not by the hang timeout
    assert faults and all(isinstance(f, Deadlock) for f in faults)
    assert set(faults) <= set(k.faults)
    cycle = [f.message for f in faults if "waits for" in f.message and "exited" not in f.message]
    assert cycle, [f.message for f in faults]
    msg = cycle[0]
    assert ("T0 waits for B" in msg and "T1 waits for A" in msg), msg
    # lockdep saw the inversion first, exactly once
    assert [(r.kind, set(r.classes)) for r in k.lockdep_reports] == [("circular", {"A", "B"})]


def test_waiting_for_a_lock_whose_holder_exited_is_a_deadlock(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    assert k.run_threads(m.lock, names=("leaker",)) == []  # exits holding the mutex
    [f] = k.run_threads(m.lock, names=("victim",))
    assert isinstance(f, Deadlock)
    assert "exited" in f.message and "leaker" in f.message


def test_a_lock_held_for_too_long_is_a_hung_task() -> None:
    k = Kernel(hang_timeout=0.3)
    m = Mutex(k, "&vfio.group_lock")
    holding, release = threading.Event(), threading.Event()
    holder_task = k.new_task("holder")

    def holder() -> None:
        with k.as_task(holder_task):
            m.lock()
            holding.set()
            release.wait(5)
            m.unlock()

    th = threading.Thread(target=holder, daemon=True)
    th.start()
    assert holding.wait(5)

    def waiter() -> None:
        try:
            m.lock()
        finally:
            release.set()

    start = time.monotonic()
    [f] = k.run_threads(waiter, names=("waiter",))
    assert time.monotonic() - start >= 0.3
    assert isinstance(f, Deadlock)
    assert f.message.startswith("hung task: waiter blocked in mutex_lock for more than 0.3s")
    th.join(5)
    assert not m.is_locked()


def test_a_dependency_is_named_from_its_frame_as_when_it_was_first_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lockdep keeps the frame that took a new dependency and names its function and call
    # chain only when a report needs them.  The names must be the ones the stack had when
    # the dependency was taken, although every function on it has returned since.
    from vfio_ref.kernel import lockdep
    from vfio_ref.kernel.core import backtrace_from, site_from
    from vfio_ref.vfio import boot
    from vfio_ref.vfio.platform import Platform

    eager: dict[int, tuple[str, tuple[str, ...]]] = {}
    init = lockdep._Edge.__init__

    def naming_now(self: lockdep._Edge, thread: str, frame: object) -> None:
        init(self, thread, frame)  # type: ignore[arg-type]
        eager[id(self)] = (site_from(self._frame)[0], backtrace_from(self._frame))

    monkeypatch.setattr(lockdep._Edge, "__init__", naming_now)
    v = boot("p5")
    p = Platform(v)
    p.add_group("g0")
    p.add_device("0000:00:01.0", "g0")
    assert p.bind("0000:00:01.0") == 0
    p.use_group("0000:00:01.0")  # open the group, set a container and an IOMMU: nested locks
    p.teardown()
    edges = [e for succ in v.k.lockdep.graph.values() for e in succ.values()]
    assert len(edges) >= 3 and eager
    for e in edges:
        assert (e.function, e.chain) == eager[id(e)]
        assert e.chain  # a model function took it: its chain is named
