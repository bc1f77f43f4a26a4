"""Wait queues and completions between real threads, and the hung-task detector."""

from __future__ import annotations

import threading
import time

import pytest

from vfio_ref.kernel import Deadlock, Kernel, Task
from vfio_ref.kernel.wait import (
    complete,
    init_completion,
    init_waitqueue_head,
    try_wait_for_completion,
    wait_event,
    wait_for_completion,
    wake_up,
)


def wait_until_blocked(task_box: list[Task], obj: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not task_box or task_box[0].waiting_for is not obj:
        assert time.monotonic() < deadline, "the waiter never went to sleep"
        time.sleep(0.001)


def test_wait_event_sleeps_until_woken_with_the_condition_true(k: Kernel) -> None:
    wq = init_waitqueue_head(k, "vfio.release_q")
    flag = [False]
    events: list[str] = []
    waiter_task: list[Task] = []

    def waiter() -> None:
        waiter_task.append(k.current())
        wait_event(wq, lambda: flag[0])
        events.append("woke")

    def waker() -> None:
        wait_until_blocked(waiter_task, wq)
        events.append("setting")
        flag[0] = True
        wake_up(wq)

    assert k.run_threads(waiter, waker) == []
    assert events == ["setting", "woke"]
    assert waiter_task[0].waiting_for is None


def test_wait_event_with_a_true_condition_does_not_sleep(k: Kernel) -> None:
    wq = init_waitqueue_head(k)
    start = time.monotonic()
    wait_event(wq, lambda: True)
    assert time.monotonic() - start < 0.1


def test_a_wake_up_with_the_condition_still_false_keeps_waiting(k: Kernel) -> None:
    wq = init_waitqueue_head(k)
    state = [0]
    waiter_task: list[Task] = []

    def waiter() -> None:
        waiter_task.append(k.current())
        wait_event(wq, lambda: state[0] == 2)

    def waker() -> None:
        wait_until_blocked(waiter_task, wq)
        state[0] = 1
        wake_up(wq)  # spurious for the waiter
        time.sleep(0.03)
        assert waiter_task[0].waiting_for is wq
        state[0] = 2
        wake_up(wq)

    assert k.run_threads(waiter, waker) == []


def test_completion_done_before_the_wait(k: Kernel) -> None:
    c = init_completion(k)
    complete(c)
    assert c.done == 1
    wait_for_completion(c)
    assert c.done == 0


def test_completion_between_threads(k: Kernel) -> None:
    c = init_completion(k)
    events: list[str] = []
    waiter_task: list[Task] = []

    def vfio_unregister_group_dev() -> None:
        waiter_task.append(k.current())
        wait_for_completion(c)
        events.append("unregistered")

    def vfio_device_put() -> None:
        wait_until_blocked(waiter_task, c.wait)
        events.append("last put")
        complete(c)

    assert k.run_threads(vfio_unregister_group_dev, vfio_device_put) == []
    assert events == ["last put", "unregistered"]
    assert c.done == 0


def test_try_wait_for_completion(k: Kernel) -> None:
    c = init_completion(k)
    assert try_wait_for_completion(c) is False
    complete(c)
    complete(c)
    assert try_wait_for_completion(c) is True
    assert try_wait_for_completion(c) is True
    assert try_wait_for_completion(c) is False


class _SlowOrdering:
    """A happens-before stand-in that is slow to record the acquire a waiter makes on
    its way out: it widens the window between being woken and consuming the completion."""

    def acquire(self, t: Task, key: object) -> None:
        time.sleep(0.02)

    def release(self, t: Task, key: object) -> None:
        pass


def test_one_complete_releases_one_waiter(k: Kernel) -> None:
    k.hb = _SlowOrdering()  # type: ignore[assignment]
    c = init_completion(k)
    returned: list[str] = []
    tasks: list[Task] = []
    both_waiting = threading.Event()
    second_complete = threading.Event()

    def waiter(name: str) -> None:
        tasks.append(k.current())
        wait_for_completion(c)
        returned.append(name)

    def completer() -> None:
        deadline = time.monotonic() + 2
        while len(tasks) < 2 or any(t.waiting_for is not c.wait for t in tasks):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        both_waiting.set()
        complete(c)
        while not returned:
            assert time.monotonic() < deadline + 2
            time.sleep(0.001)
        time.sleep(0.05)  # time enough for a second waiter to slip through
        assert len(returned) == 1, returned  # the other one is still asleep
        complete(c)
        second_complete.set()

    faults = k.run_threads(lambda: waiter("a"), lambda: waiter("b"), completer)
    assert faults == []
    assert sorted(returned) == ["a", "b"]
    assert c.done == 0


def test_a_wait_that_can_never_end_becomes_a_deadlock() -> None:
    k = Kernel(hang_timeout=0.2)
    wq = init_waitqueue_head(k, "vfio.release_q")
    start = time.monotonic()
    with pytest.raises(Deadlock, match=r"^hung task: .* blocked in wait_event for more than 0.2s"):
        wait_event(wq, lambda: False)
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.5


def test_wait_for_completion_that_never_comes_becomes_a_deadlock() -> None:
    k = Kernel(hang_timeout=0.3)
    [f] = k.run_threads(lambda: wait_for_completion(init_completion(k)), names=("unregister",))
    assert isinstance(f, Deadlock)
    assert "unregister" in f.message
    assert k.faults == [f]


def test_an_idle_wait_is_not_a_hung_task() -> None:
    k = Kernel(hang_timeout=0.1)
    wq = init_waitqueue_head(k, "kworker idle")
    flag = [False]
    errors: list[BaseException] = []
    task = k.new_task("kworker/0:0")

    def kworker() -> None:
        with k.as_task(task):
            try:
                wait_event(wq, lambda: flag[0], idle=True)
            except BaseException as e:
                errors.append(e)

    th = threading.Thread(target=kworker, daemon=True)
    th.start()
    time.sleep(0.25)  # well past the hang timeout
    flag[0] = True
    wake_up(wq)
    th.join(2)
    assert not th.is_alive()
    assert errors == []
