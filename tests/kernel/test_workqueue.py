"""The system workqueue: INIT_WORK, schedule_work, flush_scheduled_work."""

from __future__ import annotations

import threading
import time

from vfio_ref.kernel import Kernel, KernelBug, Task
from vfio_ref.kernel.bug import BUG_ON
from vfio_ref.kernel.workqueue import INIT_WORK, WorkStruct, flush_scheduled_work, schedule_work


def test_work_runs_on_a_kworker_thread(k: Kernel) -> None:
    ran_as: list[Task] = []
    ran_on: list[threading.Thread] = []

    def vfio_group_put_bg(work: WorkStruct) -> None:
        ran_as.append(k.current())
        ran_on.append(threading.current_thread())

    work = WorkStruct()
    INIT_WORK(work, vfio_group_put_bg)
    assert work.func is vfio_group_put_bg and not work.pending
    assert schedule_work(k, work) is True
    flush_scheduled_work(k)
    [task] = ran_as
    assert task is not k.current()  # a different task...
    assert task.name.startswith("kworker/")
    assert ran_on[0] is not threading.current_thread()  # ...on a different thread
    assert not work.pending


def test_flush_waits_for_the_work_to_finish(k: Kernel) -> None:
    done: list[str] = []
    gate = threading.Event()

    def slow(work: WorkStruct) -> None:
        assert gate.wait(5)
        time.sleep(0.03)
        done.append("ran")

    work = WorkStruct()
    INIT_WORK(work, slow)
    schedule_work(k, work)
    assert done == []  # schedule_work does not wait
    gate.set()
    flush_scheduled_work(k)  # must wait out the sleep
    assert done == ["ran"]


def test_scheduling_pending_work_returns_false_and_queues_nothing(k: Kernel) -> None:
    gate = threading.Event()
    runs: list[str] = []

    def first(work: WorkStruct) -> None:
        assert gate.wait(5)  # keep the worker busy so the second item stays pending
        runs.append("first")

    def second(work: WorkStruct) -> None:
        runs.append("second")

    w1, w2 = WorkStruct(), WorkStruct()
    INIT_WORK(w1, first)
    INIT_WORK(w2, second)
    assert schedule_work(k, w1) is True
    assert schedule_work(k, w2) is True
    assert w2.pending
    assert schedule_work(k, w2) is False
    gate.set()
    flush_scheduled_work(k)
    assert runs == ["first", "second"]  # in order, and the second ran once
    assert schedule_work(k, w2) is True  # no longer pending once it has started
    flush_scheduled_work(k)
    assert runs == ["first", "second", "second"]


def test_work_can_requeue_itself(k: Kernel) -> None:
    count = [0]

    def again(work: WorkStruct) -> None:
        count[0] += 1
        if count[0] < 3:
            assert schedule_work(k, work) is True

    w = WorkStruct()
    INIT_WORK(w, again)
    schedule_work(k, w)
    flush_scheduled_work(k)
    assert count[0] == 3


def test_flush_with_nothing_queued_returns_at_once(k: Kernel) -> None:
    start = time.monotonic()
    flush_scheduled_work(k)
    assert time.monotonic() - start < 0.1


def test_a_bug_in_a_work_item_is_recorded_and_the_worker_goes_on(k: Kernel) -> None:
    ran: list[str] = []

    def vfio_group_put_bg(work: WorkStruct) -> None:
        BUG_ON(k, True, "group->dead")

    def next_item(work: WorkStruct) -> None:
        ran.append("next")

    w1, w2 = WorkStruct(), WorkStruct()
    INIT_WORK(w1, vfio_group_put_bg)
    INIT_WORK(w2, next_item)
    schedule_work(k, w1)
    schedule_work(k, w2)
    flush_scheduled_work(k)
    [f] = k.faults
    assert isinstance(f, KernelBug) and "BUG_ON(group->dead)" in f.message
    assert f.thread.startswith("kworker/")
    assert ran == ["next"]
    assert k.oopsed
