"""list_head lists, tracked shared fields, and the happens-before race checker.

The happens-before tests drive two tasks on one OS thread by switching the kernel's
``current`` (``k._sched_task``), as the explorer's scheduler does: each switch is a point
where the other task runs, and only the synchronisation the primitives record orders one
task's accesses before the other's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from vfio_ref.kernel import Atomic, Kernel, KStruct, Mutex, Refcount, RWSemaphore, Task
from vfio_ref.kernel.shared import (
    INIT_LIST_HEAD,
    ListHead,
    SharedField,
    list_add,
    list_add_tail,
    list_count,
    list_del,
    list_empty,
    list_for_each_entry,
    list_walk_begin,
)
from vfio_ref.kernel.workqueue import INIT_WORK, WorkStruct, flush_scheduled_work, schedule_work

# -- list_head -----------------------------------------------------------------------------------


class Entry(KStruct):
    def __init__(self, kernel: Kernel, name: str) -> None:
        super().__init__(kernel)
        self.name = name
        self.node = INIT_LIST_HEAD(kernel, self, "entry")


def names(head: ListHead) -> list[str]:
    return [e.name for e in list_for_each_entry(head)]


def test_a_new_head_is_empty(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="vfio.group_list")
    assert list_empty(head)
    assert names(head) == []
    assert list_count(head) == 0


def test_list_add_inserts_at_the_front_and_list_add_tail_at_the_back(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="vfio.group_list")
    a, b, c, d = (Entry(k, n) for n in "abcd")
    list_add(a.node, head)
    list_add(b.node, head)
    list_add_tail(c.node, head)
    list_add_tail(d.node, head)
    assert names(head) == ["b", "a", "c", "d"]
    assert not list_empty(head)
    assert list_count(head) == 4
    # the ring is consistent both ways
    node, back = head.prev, []
    while node is not head:
        assert node is not None
        back.append(node.container.name)
        node = node.prev
    assert back == ["d", "c", "a", "b"]


def test_list_del_unlinks_and_poisons_the_entry(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="group->unbound_list")
    a, b, c = (Entry(k, n) for n in "abc")
    for e in (a, b, c):
        list_add_tail(e.node, head)
    list_del(b.node)
    assert names(head) == ["a", "c"]
    assert b.node.next is None and b.node.prev is None  # LIST_POISON: walking on fails loudly
    list_del(a.node)
    list_del(c.node)
    assert list_empty(head)


def test_list_del_of_a_node_not_on_a_list_raises(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="group->unbound_list")
    a = Entry(k, "a")
    list_add(a.node, head)
    list_del(a.node)
    with pytest.raises(AttributeError, match="not on a list"):
        list_del(a.node)
    assert list_empty(head)


def test_list_del_is_constant_time(k: Kernel) -> None:
    # Unlinking touches only the entry and its two neighbours: with every other node's
    # links broken, deleting from the middle still works.
    head = INIT_LIST_HEAD(k, name="vfio.group_list")
    entries = [Entry(k, str(i)) for i in range(7)]
    for e in entries:
        list_add_tail(e.node, head)
    victim = entries[3]
    saved = {}
    for e in entries:
        if e not in (entries[2], victim, entries[4]):
            saved[e] = (e.node.next, e.node.prev)
            e.node.next = e.node.prev = None
    list_del(victim.node)
    assert entries[2].node.next is entries[4].node
    assert entries[4].node.prev is entries[2].node
    for e, (n, p) in saved.items():
        e.node.next, e.node.prev = n, p
    assert names(head) == ["0", "1", "2", "4", "5", "6"]


def test_list_for_each_entry_survives_deleting_the_current_entry(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="group->unbound_list")
    for n in "abcd":
        list_add_tail(Entry(k, n).node, head)
    seen = []
    for e in list_for_each_entry(head):
        seen.append(e.name)
        if e.name in "bc":
            list_del(e.node)
    assert seen == ["a", "b", "c", "d"]
    assert names(head) == ["a", "d"]


def walk_written_out(head: ListHead) -> list[str]:
    """list_for_each_entry as a hot caller writes it out (list_walk_begin, then node.next)."""
    out = []
    node = list_walk_begin(head)
    while node is not head:
        out.append(node.container.name)
        node = node.next
    return out


def test_a_written_out_walk_visits_what_list_for_each_entry_yields(k: Kernel) -> None:
    head = INIT_LIST_HEAD(k, name="vfio.group_list")
    assert walk_written_out(head) == []  # an empty list: the first node is the head
    for n in "abc":
        list_add(Entry(k, n).node, head)
    assert walk_written_out(head) == names(head) == ["c", "b", "a"]


class Group(KStruct):
    container = SharedField[Any](None)
    container_users = SharedField[int](0)


def test_shared_field_reads_and_writes_like_a_plain_field(k: Kernel) -> None:
    g, h = Group(k), Group(k)
    assert g.container is None and g.container_users == 0
    g.container = "c0"
    g.container_users = 1
    assert (g.container, g.container_users) == ("c0", 1)
    assert (h.container, h.container_users) == (None, 0)  # per instance
    assert isinstance(Group.container, SharedField)


# -- happens-before ------------------------------------------------------------------------------


class Switcher:
    """Run code as one task or another on this thread (what the scheduler does)."""

    def __init__(self, k: Kernel) -> None:
        self.k = k

    def __call__(self, task: Task) -> Switcher:
        self.k._sched_task = task
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        self.k._sched_task = None


class Obj:
    pass


def touch_container(k: Kernel, obj: object, write: bool) -> None:
    """A tracked access, as SharedField makes one: the race names the caller."""
    assert k.hb is not None
    k.hb.access(k.current(), obj, "container", write)


def vfio_group_set_container(k: Kernel, obj: object) -> None:
    touch_container(k, obj, True)


def vfio_group_unset_container(k: Kernel, obj: object) -> None:
    touch_container(k, obj, True)


def vfio_group_get_container(k: Kernel, obj: object) -> None:
    touch_container(k, obj, False)


@pytest.fixture
def hbk() -> Kernel:
    return Kernel(hb=True)


def two_tasks(k: Kernel) -> tuple[Task, Task, Switcher]:
    return k.new_task("A"), k.new_task("B"), Switcher(k)


def races(k: Kernel) -> list[tuple[str, str, str]]:
    assert k.hb is not None
    return [(r.location, r.first, r.second) for r in k.hb.races]


def test_hb_is_off_in_free_running_mode_unless_asked() -> None:
    assert Kernel().hb is None
    assert Kernel(hb=True).hb is not None


def test_two_tasks_writing_with_no_sync_race(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    with run(a):
        vfio_group_set_container(hbk, obj)
    with run(b):
        vfio_group_unset_container(hbk, obj)
    assert races(hbk) == [
        ("Obj.container", "write in vfio_group_set_container [A]", "write in vfio_group_unset_container [B]")
    ]
    assert any(line.startswith("BUG: KCSAN: data-race on Obj.container") for line in hbk.log)


def test_a_write_and_an_unordered_read_race(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    with run(a):
        vfio_group_set_container(hbk, obj)
    with run(b):
        vfio_group_get_container(hbk, obj)
    assert races(hbk) == [
        ("Obj.container", "write in vfio_group_set_container [A]", "read in vfio_group_get_container [B]")
    ]


def test_a_read_and_an_unordered_write_race(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    with run(a):
        vfio_group_get_container(hbk, obj)
    with run(b):
        vfio_group_set_container(hbk, obj)
    assert races(hbk) == [
        ("Obj.container", "read in vfio_group_get_container [A]", "write in vfio_group_set_container [B]")
    ]


def test_reads_do_not_race_with_reads_and_a_task_not_with_itself(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    with run(a):
        vfio_group_get_container(hbk, obj)
    with run(b):
        vfio_group_get_container(hbk, obj)
    with run(a):
        vfio_group_get_container(hbk, obj)
    other = Obj()
    with run(a):
        vfio_group_set_container(hbk, other)
        vfio_group_unset_container(hbk, other)
        vfio_group_get_container(hbk, other)
    assert races(hbk) == []


def test_the_same_race_is_reported_once(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    for _ in range(3):
        with run(a):
            vfio_group_set_container(hbk, obj)
        with run(b):
            vfio_group_unset_container(hbk, obj)
    assert len(races(hbk)) == 2  # A then B, and B then A: two distinct orders


def test_a_mutex_orders_the_writes(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    lock = Mutex(hbk, "&group->group_lock")
    with run(a):
        lock.lock()
        vfio_group_set_container(hbk, obj)
        lock.unlock()
    with run(b):
        lock.lock()
        vfio_group_unset_container(hbk, obj)
        lock.unlock()
    assert races(hbk) == []


def test_locking_only_on_one_side_does_not_order(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    lock = Mutex(hbk, "&group->group_lock")
    with run(a):
        lock.lock()
        vfio_group_set_container(hbk, obj)
        lock.unlock()
    with run(b):
        vfio_group_unset_container(hbk, obj)  # forgot the lock
    assert len(races(hbk)) == 1


def test_a_write_after_the_unlock_is_not_covered(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    lock = Mutex(hbk, "&group->group_lock")
    with run(a):
        lock.lock()
        lock.unlock()
        vfio_group_set_container(hbk, obj)  # outside the critical section
    with run(b):
        lock.lock()
        vfio_group_unset_container(hbk, obj)
        lock.unlock()
    assert len(races(hbk)) == 1


def test_the_final_refcount_put_orders_every_earlier_holders_writes(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    users = Refcount(hbk, 2)
    with run(a):
        vfio_group_set_container(hbk, obj)
        assert users.dec_and_test() is False  # a release
    with run(b):
        assert users.dec_and_test() is True  # the last put: release + acquire
        vfio_group_unset_container(hbk, obj)  # what the release function does
    assert races(hbk) == []


def test_a_put_that_does_not_reach_zero_does_not_acquire(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    users = Refcount(hbk, 3)
    with run(a):
        vfio_group_set_container(hbk, obj)
        users.dec_and_test()
    with run(b):
        assert users.dec_and_test() is False
        vfio_group_unset_container(hbk, obj)  # still shared: unordered with A's write
    assert len(races(hbk)) == 1


def test_refcount_dec_and_mutex_lock_orders_like_the_final_put(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    users = Refcount(hbk, 2)
    lock = Mutex(hbk, "&vfio.group_lock")
    with run(a):
        vfio_group_set_container(hbk, obj)
        assert users.dec_and_mutex_lock(lock) is False  # refcount_dec_not_one: a release
    with run(b):
        assert users.dec_and_mutex_lock(lock) is True
        vfio_group_unset_container(hbk, obj)
        lock.unlock()
    assert races(hbk) == []


def test_rwsem_writer_then_reader_is_ordered(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    sem = RWSemaphore(hbk, "&nh->rwsem")
    with run(a):
        sem.down_write()
        vfio_group_set_container(hbk, obj)
        sem.up_write()
    with run(b):
        sem.down_read()
        vfio_group_get_container(hbk, obj)
        sem.up_read()
    assert races(hbk) == []


def test_rwsem_reader_then_writer_is_ordered(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    sem = RWSemaphore(hbk, "&nh->rwsem")
    with run(a):
        sem.down_read()
        vfio_group_get_container(hbk, obj)
        sem.up_read()
    with run(b):
        sem.down_write()
        vfio_group_set_container(hbk, obj)
        sem.up_write()
    assert races(hbk) == []


def test_two_readers_writing_under_the_read_side_race(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    sem = RWSemaphore(hbk, "&nh->rwsem")
    with run(a):
        sem.down_read()
        vfio_group_set_container(hbk, obj)
        sem.up_read()
    with run(b):
        sem.down_read()
        vfio_group_unset_container(hbk, obj)
        sem.up_read()
    assert len(races(hbk)) == 1


def test_fork_orders_the_parent_before_the_child(hbk: Kernel) -> None:
    a, b, run = two_tasks(hbk)
    obj = Obj()
    assert hbk.hb is not None
    with run(a):
        vfio_group_set_container(hbk, obj)
    hbk.hb.fork(a, b)
    with run(b):
        vfio_group_unset_container(hbk, obj)
    assert races(hbk) == []
    with run(a):
        vfio_group_get_container(hbk, obj)  # but the parent is not ordered after the child
    assert len(races(hbk)) == 1


# -- tracked lists and fields under a scheduler -----------------------------------------------------


class NullScheduler:
    """A scheduler that never switches by itself: the test switches tasks by hand."""

    step_no = 0

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        self.step_no += 1

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        raise NotImplementedError


@pytest.fixture
def sk() -> Kernel:
    return Kernel(sched=NullScheduler())


def vfio_group_nb_add_dev(head: ListHead, e: Entry) -> None:
    list_add(e.node, head)


def vfio_group_release(head: ListHead) -> None:
    for e in list_for_each_entry(head):
        list_del(e.node)


def test_unlocked_list_updates_race_and_name_the_callers(sk: Kernel) -> None:
    assert sk.hb is not None  # on by default under a scheduler
    a, b, run = two_tasks(sk)
    head = INIT_LIST_HEAD(sk, name="group->unbound_list")
    with run(a):
        vfio_group_nb_add_dev(head, Entry(sk, "x"))
    with run(b):
        vfio_group_release(head)
    # The walk (a read) and the unlink (a write) each conflict with A's insertion.
    assert {r.location for r in sk.hb.races} == {"ListHead.group->unbound_list"}
    assert [(r.first, r.second) for r in sk.hb.races] == [
        ("write in vfio_group_nb_add_dev [A]", "read in vfio_group_release [B]"),
        ("write in vfio_group_nb_add_dev [A]", "write in vfio_group_release [B]"),
    ]
    assert all(r.step is not None for r in sk.hb.races)


def test_a_written_out_walk_is_one_scheduling_point_and_a_read_of_the_list(sk: Kernel) -> None:
    assert sk.hb is not None
    a, b, run = two_tasks(sk)
    head = INIT_LIST_HEAD(sk, name="vfio.group_list")
    with run(a):
        vfio_group_nb_add_dev(head, Entry(sk, "x"))
        vfio_group_nb_add_dev(head, Entry(sk, "y"))
    assert sk.sched is not None
    before = sk.sched.step_no
    with run(b):
        assert walk_written_out(head) == ["y", "x"]
    assert sk.sched.step_no == before + 1  # the walk's one point, none per entry
    # A read of the list, named after the function that walks it (list_walk_begin's caller).
    assert [(r.location, r.first, r.second) for r in sk.hb.races] == [
        ("ListHead.vfio.group_list", "write in vfio_group_nb_add_dev [A]", "read in walk_written_out [B]")
    ]


def test_locked_list_updates_do_not_race(sk: Kernel) -> None:
    assert sk.hb is not None
    a, b, run = two_tasks(sk)
    head = INIT_LIST_HEAD(sk, name="group->unbound_list")
    lock = Mutex(sk, "&group->unbound_lock")
    with run(a):
        lock.lock()
        vfio_group_nb_add_dev(head, Entry(sk, "x"))
        lock.unlock()
    with run(b):
        lock.lock()
        vfio_group_release(head)
        lock.unlock()
    assert sk.hb.races == []
    assert list_empty(head)


def vfio_group_set_container_field(g: Group) -> None:
    g.container = "container0"


def vfio_group_try_dissolve_container(g: Group) -> object:
    return g.container


def test_shared_fields_are_tracked_under_a_scheduler(sk: Kernel) -> None:
    assert sk.hb is not None
    a, b, run = two_tasks(sk)
    g = Group(sk)
    with run(a):
        vfio_group_set_container_field(g)
    with run(b):
        assert vfio_group_try_dissolve_container(g) == "container0"
    [r] = sk.hb.races
    assert (r.location, r.first, r.second) == (
        "Group.container",
        "write in vfio_group_set_container_field [A]",
        "read in vfio_group_try_dissolve_container [B]",
    )


def test_value_returning_atomics_order_like_a_lock(sk: Kernel) -> None:
    assert sk.hb is not None
    a, b, run = two_tasks(sk)
    obj = Obj()
    flag = Atomic(sk, 0)
    with run(a):
        vfio_group_set_container(sk, obj)
        flag.atomic_add_return(1)
    with run(b):
        assert flag.atomic_add_return(0) == 1
        vfio_group_get_container(sk, obj)
    assert sk.hb.races == []


def test_a_plain_atomic_read_does_not_order(sk: Kernel) -> None:
    assert sk.hb is not None
    a, b, run = two_tasks(sk)
    obj = Obj()
    flag = Atomic(sk, 0)
    with run(a):
        vfio_group_set_container(sk, obj)
        flag.atomic_inc()
    with run(b):
        assert flag.atomic_read() == 1  # atomic_read is unordered
        vfio_group_get_container(sk, obj)
    assert len(sk.hb.races) == 1


# -- happens-before across a real kworker thread ------------------------------------------------------


def test_schedule_work_orders_the_scheduler_before_the_work_and_flush_after_it() -> None:
    k = Kernel(hb=True)
    obj = Obj()

    def vfio_group_put_bg(work: WorkStruct) -> None:
        vfio_group_get_container(k, obj)

    work = WorkStruct()
    INIT_WORK(work, vfio_group_put_bg)
    vfio_group_set_container(k, obj)
    schedule_work(k, work)
    flush_scheduled_work(k)
    vfio_group_unset_container(k, obj)  # after the flush: ordered after the work's read
    assert races(k) == []


def test_a_write_after_schedule_work_is_not_ordered_before_the_work() -> None:
    k = Kernel(hb=True)
    obj = Obj()
    written = threading.Event()

    def vfio_group_put_bg(work: WorkStruct) -> None:
        assert written.wait(5)
        vfio_group_get_container(k, obj)

    work = WorkStruct()
    INIT_WORK(work, vfio_group_put_bg)
    schedule_work(k, work)
    vfio_group_set_container(k, obj)  # too late: the work was queued before it
    written.set()
    flush_scheduled_work(k)
    [(loc, first, second)] = races(k)
    assert (loc, first) == ("Obj.container", "write in vfio_group_set_container [MainThread]")
    # (The reader is named by the nearest model frame: test code called from the model's
    # worker shows up as the worker; real work functions live in the model and are named.)
    assert second.startswith("read in ") and "[kworker/" in second
