"""Wait queues and completions (kernel/sched/wait.c, kernel/sched/completion.c).

``wait_event(wq, condition)`` sleeps until ``condition()`` is true, re-checking after every
``wake_up(wq)``; ``complete`` / ``wait_for_completion`` pass a one-shot (counted) event.
Ordering: wake_up and complete are releases, the wait that returns an acquire.

A wait that can never end becomes a :class:`Deadlock`: under the explorer when no thread can
run, in free-running mode after the kernel's hang timeout (as the hung-task detector).

Under the explorer the scheduler evaluates a wait's condition to decide whether the waiter
may run; those reads are never the waiter's own accesses (no scheduling point, no
happens-before record), whichever path of the scheduler evaluates them.  The kernel's last
check of the condition is ordered after the waker's wake_up (both take the queue's lock);
its first, unlocked, check races with the waker's write, a benign race the model does not
report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .core import Kernel
from .mutex import wait_free_running
from .sched import note_created


class WaitQueueHead:
    __slots__ = ("_cond", "_poison", "container", "kernel", "lock_class")

    def __init__(self, kernel: Kernel, name: str = "wait_queue") -> None:
        self.kernel = kernel
        self.lock_class = name
        self.container: Any = None
        self._cond = threading.Condition(threading.Lock()) if kernel.sched is None else None
        note_created(kernel.sched, self)

    def holders(self) -> tuple[()]:
        return ()


def init_waitqueue_head(k: Kernel, name: str = "wait_queue") -> WaitQueueHead:
    return WaitQueueHead(k, name)


def wait_event(wq: WaitQueueHead, condition: Callable[[], bool], *, idle: bool = False) -> None:
    """Sleep until ``condition()`` holds.  ``idle`` marks a kernel thread waiting for work,
    which the hang detector leaves alone."""
    k = wq.kernel
    s = k.sched
    t = k.current()
    if s is not None:
        s.point("wait_event", wq, _evaluated_by(s, condition))
    else:
        cond = wq._cond
        assert cond is not None

        def try_once(tmo: float) -> bool:
            with cond:
                if condition():
                    return True
                cond.wait(tmo)
                return condition()

        if not condition():
            if idle:
                while not try_once(0.05):
                    pass
            else:
                wait_free_running(k, t, wq, try_once, "wait_event")
    if k.hb is not None:
        k.hb.acquire(t, wq)


def _evaluated_by(s: Any, condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition`` as the scheduler's own evaluation: its tracked reads are skipped."""

    def ready() -> bool:
        prev = getattr(s, "evaluating", False)
        s.evaluating = True
        try:
            return condition()
        finally:
            s.evaluating = prev

    return ready


def wake_up(wq: WaitQueueHead) -> None:
    k = wq.kernel
    s = k.sched
    if s is not None:
        s.point("wake_up", wq)
    if k.hb is not None:
        k.hb.release(k.current(), wq)
    cond = wq._cond
    if cond is not None:
        with cond:
            cond.notify_all()


class Completion:
    __slots__ = ("_poison", "container", "done", "kernel", "wait")

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.done = 0
        self.wait = WaitQueueHead(kernel, "completion")
        self.container: Any = None
        note_created(kernel.sched, self)

    def _is_done(self) -> bool:
        return self.done > 0


def init_completion(k: Kernel) -> Completion:
    return Completion(k)


def complete(x: Completion) -> None:
    cond = x.wait._cond
    if cond is not None:
        with cond:  # done is counted under the wait queue's lock, as the kernel does
            x.done += 1
    else:
        x.done += 1
    wake_up(x.wait)


def try_wait_for_completion(x: Completion) -> bool:
    """Consume the completion if it is done; never sleeps."""
    k = x.kernel
    s = k.sched
    if s is not None:
        s.point("try_wait_for_completion", x)
    cond = x.wait._cond
    if cond is not None:
        with cond:
            ok = x.done > 0
            if ok:
                x.done -= 1
    else:
        ok = x.done > 0
        if ok:
            x.done -= 1
    if ok and k.hb is not None:
        k.hb.acquire(k.current(), x.wait)
    return ok


def wait_for_completion(x: Completion) -> None:
    """Sleep until the completion is done, then consume one ``complete``.

    Free-running, the check and the decrement happen under the wait queue's lock, so one
    complete() releases exactly one waiter; under the explorer nothing runs between the
    scheduling point and the decrement.
    """
    cond = x.wait._cond
    if cond is None:
        wait_event(x.wait, x._is_done)
        x.done -= 1
        return
    k = x.kernel
    t = k.current()

    def consume(tmo: float) -> bool:
        with cond:
            if x.done <= 0 and tmo > 0:
                cond.wait(tmo)
            if x.done > 0:
                x.done -= 1
                return True
            return False

    if not consume(0.0):
        wait_free_running(k, t, x.wait, consume, "wait_for_completion")
    if k.hb is not None:
        k.hb.acquire(t, x.wait)
