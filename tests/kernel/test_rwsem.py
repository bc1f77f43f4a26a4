"""struct rw_semaphore: many readers or one writer, with lockdep's checks."""

from __future__ import annotations

import threading
import time

import pytest

from vfio_ref.explorer import Execution, RawFinding, explore
from vfio_ref.kernel import Deadlock, Kernel, Mutex, RWSemaphore, Task


def wait_until_blocked(task_box: list[Task], obj: object, timeout: float = 2.0) -> None:
    """Spin until the task in ``task_box`` is sleeping on ``obj``."""
    deadline = time.monotonic() + timeout
    while not task_box or task_box[0].waiting_for is not obj:
        assert time.monotonic() < deadline, "the other task never blocked"
        time.sleep(0.001)


def test_several_readers_hold_it_at_once(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    all_inside = threading.Barrier(3, timeout=2)
    seen: list[int] = []

    def reader() -> None:
        sem.down_read()
        all_inside.wait()  # breaks (and the test fails) unless all three are in together
        seen.append(len(sem.readers))
        sem.up_read()

    assert k.run_threads(reader, reader, reader) == []
    assert max(seen) == 3
    assert sem.readers == {} and sem.writer is None
    assert k.lockdep_reports == []


def test_a_writer_excludes_readers(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    events: list[str] = []
    reader_task: list[Task] = []

    def writer() -> None:
        sem.down_write()
        events.append("writer in")
        wait_until_blocked(reader_task, sem)
        events.append("writer out")
        sem.up_write()

    def reader() -> None:
        reader_task.append(k.current())
        while not events:
            time.sleep(0.001)
        sem.down_read()
        events.append("reader in")
        sem.up_read()

    assert k.run_threads(writer, reader) == []
    assert events == ["writer in", "writer out", "reader in"]


def test_a_reader_excludes_writers(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    events: list[str] = []
    writer_task: list[Task] = []

    def reader() -> None:
        sem.down_read()
        events.append("reader in")
        wait_until_blocked(writer_task, sem)
        events.append("reader out")
        sem.up_read()

    def writer() -> None:
        writer_task.append(k.current())
        while not events:
            time.sleep(0.001)
        sem.down_write()
        events.append("writer in")
        sem.up_write()

    assert k.run_threads(reader, writer) == []
    assert events == ["reader in", "reader out", "writer in"]


def test_write_after_read_by_the_same_task_is_reported_and_deadlocks(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    sem.down_read()
    with pytest.raises(Deadlock, match="down_write"):
        sem.down_write()
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("read-then-write", ("&nh->rwsem",))
    assert "down_read(&nh->rwsem);\n  down_write(&nh->rwsem);" in r.text
    assert sem.writer is None and k.current() in sem.readers
    sem.up_read()
    assert sem.readers == {}


def test_recursive_write_is_reported_and_deadlocks(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    sem.down_write()
    with pytest.raises(Deadlock):
        sem.down_write()
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("recursive", ("&nh->rwsem",))
    with pytest.raises(Deadlock):
        sem.down_read()  # read while holding the write side cannot succeed either
    sem.up_write()
    assert sem.writer is None


def test_recursive_read_is_reported_but_succeeds(k: Kernel) -> None:
    # The kernel's rwsem can deadlock here only if a writer queues in between (see below);
    # lockdep reports it regardless.
    sem = RWSemaphore(k, "&nh->rwsem")
    sem.down_read()
    sem.down_read()
    assert sem.readers[k.current()] == 2
    assert [r.kind for r in k.lockdep_reports] == ["recursive"]
    sem.up_read()
    sem.up_read()
    assert sem.readers == {}


def test_up_without_down_is_a_bad_unlock(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    sem.up_read()
    assert [(r.kind, r.classes) for r in k.lockdep_reports] == [("bad-unlock", ("&nh->rwsem",))]


def test_rwsem_and_mutex_order_inversion(k: Kernel) -> None:
    sem, m = RWSemaphore(k, "&nh->rwsem"), Mutex(k, "&vfio.group_lock")
    sem.down_read()
    m.lock()
    m.unlock()
    sem.up_read()
    m.lock()
    sem.down_write()  # read and write create the same dependencies
    sem.up_write()
    m.unlock()
    [r] = k.lockdep_reports
    assert (r.kind, r.classes) == ("circular", ("&vfio.group_lock", "&nh->rwsem"))


def test_a_writer_blocked_forever_by_a_reader_becomes_a_deadlock() -> None:
    k = Kernel(hang_timeout=0.2)
    sem = RWSemaphore(k, "&nh->rwsem")
    assert k.run_threads(sem.down_read, names=("reader",)) == []  # exits holding the read side
    [f] = k.run_threads(sem.down_write, names=("writer",))
    assert isinstance(f, Deadlock)
    assert "reader" in f.message


# -- a waiting writer blocks the readers that come after it ------------------------------


def test_a_waiting_writer_blocks_a_new_reader_until_it_has_had_its_turn(k: Kernel) -> None:
    sem = RWSemaphore(k, "&container->group_lock")
    events: list[str] = []
    writer_task: list[Task] = []
    reader2_task: list[Task] = []

    def reader1() -> None:
        sem.down_read()
        events.append("reader1 in")
        wait_until_blocked(writer_task, sem)  # the writer queued behind us
        wait_until_blocked(reader2_task, sem)  # and the second reader queued behind it
        events.append("reader1 out")
        sem.up_read()

    def writer() -> None:
        writer_task.append(k.current())
        while not events:
            time.sleep(0.001)
        sem.down_write()
        events.append("writer in")
        sem.up_write()

    def reader2() -> None:
        wait_until_blocked(writer_task, sem)
        reader2_task.append(k.current())
        sem.down_read()  # the semaphore is only read-held, but a writer waits: queue
        events.append("reader2 in")
        sem.up_read()

    assert k.run_threads(reader1, writer, reader2) == []
    assert events == ["reader1 in", "reader1 out", "writer in", "reader2 in"]
    assert sem.wait_list == [] and sem.readers == {} and sem.writer is None


def test_readers_queued_together_get_in_together_after_the_writer(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    inside = threading.Barrier(2, timeout=2)
    sem.down_write()
    tasks: list[Task] = []

    def reader() -> None:
        tasks.append(k.current())
        sem.down_read()
        inside.wait()  # both readers hold it at once
        sem.up_read()

    th = threading.Thread(target=lambda: k.run_threads(reader, reader))
    th.start()
    deadline = time.monotonic() + 2
    while len(sem.wait_list) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    sem.up_write()
    th.join(2)
    assert not th.is_alive() and sem.readers == {} and sem.wait_list == []


def test_a_second_read_deadlocks_when_a_writer_queued_in_between(k: Kernel) -> None:
    sem = RWSemaphore(k, "&nh->rwsem")
    writer_task: list[Task] = []
    results: list[str] = []

    def reader() -> None:
        sem.down_read()
        wait_until_blocked(writer_task, sem)
        try:
            sem.down_read()  # behind the waiting writer, which waits for us
        except Deadlock as e:
            results.append(str(e))
        sem.up_read()

    def writer() -> None:
        writer_task.append(k.current())
        sem.down_write()
        sem.up_write()

    assert k.run_threads(reader, writer) == []
    [msg] = results
    assert msg.startswith("deadlock:") and "down_read" in msg
    assert [r.kind for r in k.lockdep_reports] == ["recursive"]


def _read_twice_with_a_writer(ctx: Execution) -> None:
    sem = RWSemaphore(ctx.kernel, "&nh->rwsem")

    def reader() -> None:
        sem.down_read()
        sem.down_read()
        sem.up_read()
        sem.up_read()

    def writer() -> None:
        sem.down_write()
        sem.up_write()

    t1, t2 = ctx.spawn("R", reader), ctx.spawn("W", writer)
    ctx.join(t1, t2)


def _deadlocks_only(ctx: Execution) -> list[RawFinding]:
    dl = ctx.deadlock
    return [] if dl is None else [RawFinding("deadlock", str(dl), "deadlock")]


def test_the_explorer_finds_the_writer_that_queues_between_two_reads() -> None:
    ex = explore(_read_twice_with_a_writer, _deadlocks_only, bound=2, traces=False)
    assert [f.kind for f in ex.findings] == ["deadlock"]
    assert "R: blocked in down_read(&nh->rwsem) held by R" in ex.findings[0].detail
    assert "W: blocked in down_write(&nh->rwsem) held by R" in ex.findings[0].detail
    assert explore(_read_twice_with_a_writer, _deadlocks_only, bound=0, traces=False).clean
