"""struct rw_semaphore: many readers or one writer, with lockdep's checks."""

from __future__ import annotations

import threading
import time

import pytest

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
    # The kernel's rwsem can deadlock here only if a writer queues in between; lockdep
    # reports it regardless.  The model (no writer fairness) lets the second read in.
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
