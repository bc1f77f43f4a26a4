"""The system workqueue: INIT_WORK, schedule_work, flush_scheduled_work (kernel/workqueue.c).

Work runs on a kernel worker thread ("kworker"), started when work is queued and gone once
the queue is drained: a real thread in free-running mode, a scheduler-controlled thread under
the explorer, so the work's steps interleave with everyone else's.
Ordering: schedule_work -> the work function (release / acquire on the work item).
``schedule_work`` of a work item already pending returns False and queues nothing.

Not modelled: the kernel's system workqueue may run two items at once (queued from two
CPUs, or the next one started while a worker sleeps); here one worker runs them in order.
For the base's deferred puts that changes no verdict: two vfio_group_put_bg items meet only
in the group's kref (an atomic decrement) and, for the one that drops the last reference,
vfio.group_lock, so running them together reaches the states their two orders reach, and
each is explored against every other thread.  One worker per item was tried: it multiplies
the base's schedules five- to tenfold, past the default search budget.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .core import Kernel, KernelFault
from .sched import note_created
from .wait import WaitQueueHead, wait_event, wake_up


class WorkStruct:
    __slots__ = ("_poison", "container", "func", "pending")

    def __init__(self) -> None:
        self.func: Callable[[WorkStruct], None] | None = None
        self.pending = False
        self.container: Any = None


def INIT_WORK(work: WorkStruct, func: Callable[[WorkStruct], None]) -> None:
    work.func = func
    work.pending = False


class Workqueue:
    def __init__(self, kernel: Kernel, name: str = "events") -> None:
        self.kernel = kernel
        self.name = name
        self.queue: deque[WorkStruct] = deque()
        self.running = 0
        self.worker_active = False
        self.idle = WaitQueueHead(kernel, f"{name}.idle")
        self._mutex = threading.Lock()
        self.workers_started = 0
        note_created(kernel.sched, self)

    def _idle(self) -> bool:
        # Read both fields under the queue's lock so a flush never sees a half-updated pair.
        with self._mutex:
            return not self.queue and self.running == 0 and not self.worker_active

    def _worker(self) -> None:
        k = self.kernel
        t = k.current()
        while True:
            with self._mutex:
                if not self.queue:
                    self.worker_active = False
                    break
                work = self.queue.popleft()
                work.pending = False
                self.running += 1
            if k.hb is not None:
                k.hb.acquire(t, work)
            try:
                assert work.func is not None
                work.func(work)
            except KernelFault as e:
                k.record_fault(e)
            finally:
                with self._mutex:
                    self.running -= 1
        wake_up(self.idle)

    def queue_work(self, work: WorkStruct) -> bool:
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("queue_work", self)
        if k.hb is not None:
            k.hb.release(k.current(), work)
        start = False
        with self._mutex:
            if work.pending:
                return False
            work.pending = True
            self.queue.append(work)
            if not self.worker_active:
                self.worker_active = True
                start = True
        if start:
            self.workers_started += 1
            name = f"kworker/{self.workers_started}"
            if s is not None:
                s.spawn_daemon(name, self._worker)
            else:
                task = k.new_task(name)

                def run() -> None:
                    with k.as_task(task):
                        try:
                            self._worker()
                        finally:
                            task.exited = True

                k.smp = True
                threading.Thread(target=run, name=name, daemon=True).start()
        return True

    def flush(self) -> None:
        """Wait until every queued work item has run to completion."""
        wait_event(self.idle, self._idle)


def system_wq(k: Kernel) -> Workqueue:
    """The system workqueue (``system_wq``: one per kernel, made with it)."""
    return k.system_wq


def schedule_work(k: Kernel, work: WorkStruct) -> bool:
    """Queue ``work`` on the system workqueue; False if it was already pending."""
    return system_wq(k).queue_work(work)


def flush_scheduled_work(k: Kernel) -> None:
    system_wq(k).flush()
