"""struct rw_semaphore (kernel/locking/rwsem.c): many readers or one writer, served in order.

* ``down_read`` takes the semaphore at once when no writer holds it and nobody is queued;
  ``down_write`` when nobody holds it and nobody is queued.  Otherwise the task joins the
  wait queue, and waiters are served in arrival order: a writer once the semaphore is
  free and it is first in the queue, a reader once no writer holds the semaphore or
  waits ahead of it.  So a writer that waits blocks the readers that come after it, as
  the kernel's rwsem does: a task that takes the read side twice can deadlock if a writer
  queues in between (lockdep reports the recursion either way).
* Taking the write side while the task holds the read side (or either side twice) can
  never succeed: lockdep reports it and the task gets :class:`Deadlock` at once.
* Ordering: up_write -> later down_read/down_write; up_read -> later down_write.

Under the explorer an acquisition is one scheduling point when it succeeds at once, and a
second one (waiting for its turn) when it has to queue: the queue is joined at the moment
the task tries, never earlier.

Simplifications: 5.15 also wakes the readers queued behind a waiting writer when a reader
is at the head of the queue, and lets a writer that has not slept yet take a free
semaphore ahead of the queue (optimistic spinning, lock stealing); neither is modelled:
both only reorder waiters that would all get the semaphore.  A waiter whose thread dies
of a Deadlock leaves the queue.
"""

from __future__ import annotations

import threading
from typing import Any

from .core import Deadlock, Kernel, Task, model_site
from .mutex import wait_free_running
from .sched import note_created


class _Waiter:
    """struct rwsem_waiter: a queued task and which side it wants."""

    __slots__ = ("task", "write")

    def __init__(self, task: Task, write: bool) -> None:
        self.task = task
        self.write = write

    def __repr__(self) -> str:
        return f"<rwsem_waiter {self.task.name} {'write' if self.write else 'read'}>"


class RWSemaphore:
    __slots__ = (
        "_cond", "_poison", "container", "kernel", "lock_class", "readers", "wait_list", "writer",
    )

    def __init__(self, kernel: Kernel, name: str = "rwsem") -> None:
        self.kernel = kernel
        self.lock_class = name
        self.readers: dict[Task, int] = {}
        self.writer: Task | None = None
        self.wait_list: list[_Waiter] = []
        self.container: Any = None
        self._cond = threading.Condition(threading.Lock()) if kernel.sched is None else None
        note_created(kernel.sched, self)

    # -- who may go ahead ---------------------------------------------------------------

    def _can_read(self) -> bool:
        """The read fast path: no writer holds it and nobody is queued."""
        return self.writer is None and not self.wait_list

    def _can_write(self) -> bool:
        """The write fast path: nobody holds it and nobody is queued."""
        return self.writer is None and not self.readers and not self.wait_list

    def _granted(self, w: _Waiter) -> bool:
        """Whether queued waiter ``w`` may take the semaphore now (arrival order)."""
        if self.writer is not None:
            return False
        if w.write:
            return not self.readers and bool(self.wait_list) and self.wait_list[0] is w
        for x in self.wait_list:
            if x is w:
                return True
            if x.write:
                return False
        return True

    def holders(self) -> tuple[Task, ...]:
        w = self.writer
        return (w,) if w is not None else tuple(self.readers)

    def _self_deadlock(self, t: Task, what: str) -> Deadlock:
        fn, site = model_site(3)
        return Deadlock(
            f"deadlock: {t.name} calls {what}({self.lock_class}) in {fn} while holding it [{site}]",
            function=fn,
            what=f"{what}({self.lock_class}) while holding it",
        )

    def _wait_turn(self, t: Task, write: bool, op: str) -> None:
        """Under the explorer, the slow path: join the wait queue now, then a second
        scheduling point that goes ahead once it is this waiter's turn."""
        s = self.kernel.sched
        assert s is not None
        w = _Waiter(t, write)
        self.wait_list.append(w)
        s.point(op, self, lambda: self._granted(w))
        self.wait_list.remove(w)

    # -- the read side ------------------------------------------------------------------

    def down_read(self) -> None:
        k = self.kernel
        t = k.current()
        if k.lockdep_enabled:
            k.lockdep.check_acquire(t, self, "r")
        if self.writer is t:
            raise self._self_deadlock(t, "down_read")
        s = k.sched
        if s is not None:
            s.point("down_read", self)
            if not self._can_read():
                self._wait_turn(t, False, "down_read")
            self.readers[t] = self.readers.get(t, 0) + 1
        else:
            cond = self._cond
            assert cond is not None
            with cond:
                fast = self._can_read()
                if fast:
                    self.readers[t] = self.readers.get(t, 0) + 1
                else:
                    self.wait_list.append(_Waiter(t, False))
            if not fast:
                self._wait_appended(t, False, "down_read")
        if k.hb is not None:
            k.hb.acquire(t, (self, "w"))
        if k.lockdep_enabled:
            k.lockdep.acquired(t, self, "r")

    def up_read(self) -> None:
        k = self.kernel
        t = k.current()
        s = k.sched
        if s is not None:
            s.point("up_read", self)
        if k.lockdep_enabled:
            k.lockdep.released(t, self)
        if k.hb is not None:
            k.hb.release(t, (self, "r"))
        cond = self._cond
        if cond is not None:
            with cond:
                self._drop_reader(t)
                cond.notify_all()
        else:
            self._drop_reader(t)

    def _drop_reader(self, t: Task) -> None:
        n = self.readers.get(t, 0)
        if n <= 1:
            self.readers.pop(t, None)
        else:
            self.readers[t] = n - 1

    # -- the write side -----------------------------------------------------------------

    def down_write(self) -> None:
        k = self.kernel
        t = k.current()
        if k.lockdep_enabled:
            k.lockdep.check_acquire(t, self, "w")
        if self.writer is t or t in self.readers:
            raise self._self_deadlock(t, "down_write")
        s = k.sched
        if s is not None:
            s.point("down_write", self)
            if not self._can_write():
                self._wait_turn(t, True, "down_write")
            self.writer = t
        else:
            cond = self._cond
            assert cond is not None
            with cond:
                fast = self._can_write()
                if fast:
                    self.writer = t
                else:
                    self.wait_list.append(_Waiter(t, True))
            if not fast:
                self._wait_appended(t, True, "down_write")
        if k.hb is not None:
            k.hb.acquire(t, (self, "w"))
            k.hb.acquire(t, (self, "r"))
        if k.lockdep_enabled:
            k.lockdep.acquired(t, self, "w")

    def up_write(self) -> None:
        k = self.kernel
        t = k.current()
        s = k.sched
        if s is not None:
            s.point("up_write", self)
        if k.lockdep_enabled:
            k.lockdep.released(t, self)
        if k.hb is not None:
            k.hb.release_exclusive(t, (self, "w"))
        cond = self._cond
        if cond is not None:
            with cond:
                self.writer = None
                cond.notify_all()
        else:
            self.writer = None

    # -- free-running slow path ---------------------------------------------------------

    def _wait_appended(self, t: Task, write: bool, op: str) -> None:
        """Free-running: the waiter for ``t`` is already queued; sleep until it is granted,
        then take the side it asked for."""
        cond = self._cond
        assert cond is not None
        with cond:
            w = next(x for x in self.wait_list if x.task is t and x.write == write)

        def try_once(tmo: float) -> bool:
            with cond:
                if self._granted(w):
                    self.wait_list.remove(w)
                    if write:
                        self.writer = t
                    else:
                        self.readers[t] = self.readers.get(t, 0) + 1
                    cond.notify_all()
                    return True
                cond.wait(tmo)
                return False

        try:
            wait_free_running(self.kernel, t, self, try_once, op)
        except BaseException:
            with cond:
                if w in self.wait_list:
                    self.wait_list.remove(w)
                cond.notify_all()
            raise

    def __repr__(self) -> str:
        return (
            f"<RWSemaphore {self.lock_class} writer={self.writer} readers={len(self.readers)} "
            f"queued={len(self.wait_list)}>"
        )


def init_rwsem(k: Kernel, name: str) -> RWSemaphore:
    return RWSemaphore(k, name)


down_read = RWSemaphore.down_read
up_read = RWSemaphore.up_read
down_write = RWSemaphore.down_write
up_write = RWSemaphore.up_write
