"""struct rw_semaphore (kernel/locking/rwsem.c): many readers or one writer.

* ``down_read`` waits while a writer holds the semaphore; ``down_write`` waits for no writer
  and no reader.  Taking the write side while the task holds the read side (or either side
  twice) can never succeed: lockdep reports it and the task gets :class:`Deadlock`.
* Ordering: up_write -> later down_read/down_write; up_read -> later down_write.

Simplification: readers are not held back by a waiting writer (the kernel's rwsem is
writer-fair); the read-then-write and recursive cases it would deadlock on are still caught.
"""

from __future__ import annotations

import threading
from typing import Any

from .core import Deadlock, Kernel, Task, model_site
from .mutex import wait_free_running
from .sched import note_created


class RWSemaphore:
    __slots__ = (
        "_cond", "_poison", "_read_ready", "_write_ready", "container", "kernel",
        "lock_class", "readers", "writer",
    )

    def __init__(self, kernel: Kernel, name: str = "rwsem") -> None:
        self.kernel = kernel
        self.lock_class = name
        self.readers: dict[Task, int] = {}
        self.writer: Task | None = None
        self.container: Any = None
        self._cond = threading.Condition(threading.Lock()) if kernel.sched is None else None
        self._read_ready = self._can_read
        self._write_ready = self._can_write
        note_created(kernel.sched, self)

    def _can_read(self) -> bool:
        return self.writer is None

    def _can_write(self) -> bool:
        return self.writer is None and not self.readers

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

    def down_read(self) -> None:
        k = self.kernel
        t = k.current()
        if k.lockdep_enabled:
            k.lockdep.check_acquire(t, self, "r")
        if self.writer is t:
            raise self._self_deadlock(t, "down_read")
        s = k.sched
        if s is not None:
            s.point("down_read", self, self._read_ready)
        else:
            cond = self._cond
            assert cond is not None

            def try_once(tmo: float) -> bool:
                with cond:
                    if self.writer is None:
                        self.readers[t] = self.readers.get(t, 0) + 1
                        return True
                    cond.wait(tmo)
                    return False

            if not try_once(0.0):
                wait_free_running(k, t, self, try_once, "down_read")
        if s is not None:
            self.readers[t] = self.readers.get(t, 0) + 1
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

    def down_write(self) -> None:
        k = self.kernel
        t = k.current()
        if k.lockdep_enabled:
            k.lockdep.check_acquire(t, self, "w")
        if self.writer is t or t in self.readers:
            raise self._self_deadlock(t, "down_write")
        s = k.sched
        if s is not None:
            s.point("down_write", self, self._write_ready)
            self.writer = t
        else:
            cond = self._cond
            assert cond is not None

            def try_once(tmo: float) -> bool:
                with cond:
                    if self.writer is None and not self.readers:
                        self.writer = t
                        return True
                    cond.wait(tmo)
                    return False

            if not try_once(0.0):
                wait_free_running(k, t, self, try_once, "down_write")
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

    def __repr__(self) -> str:
        return f"<RWSemaphore {self.lock_class} writer={self.writer} readers={len(self.readers)}>"


def init_rwsem(k: Kernel, name: str) -> RWSemaphore:
    return RWSemaphore(k, name)


down_read = RWSemaphore.down_read
up_read = RWSemaphore.up_read
down_write = RWSemaphore.down_write
up_write = RWSemaphore.up_write
