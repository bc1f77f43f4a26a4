"""A lockdep-like validator (kernel/locking/lockdep.c, in spirit).

Locks belong to *classes* (the name given at init, e.g. ``"&vfio.group_lock"``); each task
keeps a stack of held locks.  Taking lock B while holding A records the dependency A -> B
the first time it is seen.  The validator reports, as soon as the order is seen and without
any deadlock having to happen:

* a circular dependency (A -> ... -> B already known when B -> A is added), once per cycle;
* recursive locking: a lock instance the task already holds, or another lock of a class
  the task holds (lockdep's 'possible recursive locking detected');
* taking the write side of an rwsem while holding its read side;
* releasing a lock the task does not hold ('bad unlock balance').

Simplification: read and write acquisitions create the same dependencies (lockdep tells
recursive-read locks apart; vfio uses none).  Cost: O(held locks) per acquisition, plus a
graph search only when a new dependency appears.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from .core import CallSite, backtrace, model_site

if TYPE_CHECKING:
    from .core import Kernel, Task


class Lockable(Protocol):
    lock_class: str


@dataclass(frozen=True)
class LockdepReport:
    kind: str  # "circular" | "recursive" | "read-then-write" | "bad-unlock"
    classes: tuple[str, ...]
    thread: str
    function: str
    text: str
    step: int | None = None

    def __str__(self) -> str:
        return self.text


class _Edge(CallSite):
    """A dependency as first seen: the task, and the frame of the kernel function that took
    the lock, named when a report needs it (most dependencies never appear in one; walking
    the stack for each was a tenth of an explored schedule's cost)."""

    __slots__ = ("thread",)

    def __init__(self, thread: str, frame: FrameType) -> None:
        super().__init__(frame)
        self.thread = thread

    @property
    def chain(self) -> tuple[str, ...]:
        return self.backtrace


class HeldLock:
    __slots__ = ("function", "lock", "mode")

    def __init__(self, lock: Any, mode: str, function: str) -> None:
        self.lock = lock
        self.mode = mode
        self.function = function


class Lockdep:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.graph: dict[str, dict[str, _Edge]] = {}
        self.reports: list[LockdepReport] = []
        self._reported: set[tuple[str, ...]] = set()

    # -- acquisition ------------------------------------------------------------------

    def check_acquire(self, task: Task, lock: Any, mode: str) -> None:
        """Validate taking ``lock`` (mode 'w' exclusive or 'r' shared) by ``task``."""
        held = task.held
        if not held:
            return
        cls = lock.lock_class
        for h in held:
            hcls = h.lock.lock_class
            if h.lock is lock:
                if h.mode == "r" and mode == "w":
                    self._report_self(task, lock, "read-then-write", h)
                else:
                    self._report_self(task, lock, "recursive", h)
                continue
            if hcls == cls:
                self._report_self(task, lock, "recursive", h)
                continue
            succ = self.graph.get(hcls)
            if succ is None:
                succ = self.graph[hcls] = {}
            if cls not in succ:
                # The frame model_site(3) and backtrace(3) would start from.
                succ[cls] = _Edge(task.name, sys._getframe(2))
                path = self._path(cls, hcls)
                if path is not None:
                    self._report_cycle(task, hcls, cls, path)

    def acquired(self, task: Task, lock: Any, mode: str) -> None:
        # The function that called the lock primitive (cheap: no stack walk).
        task.held.append(HeldLock(lock, mode, sys._getframe(2).f_code.co_name))

    def released(self, task: Task, lock: Any) -> bool:
        held = task.held
        for i in range(len(held) - 1, -1, -1):
            if held[i].lock is lock:
                del held[i]
                return True
        fn, _ = model_site(3)
        key = ("bad-unlock", lock.lock_class, task.name)
        if key not in self._reported:
            self._reported.add(key)
            self._add(
                LockdepReport(
                    "bad-unlock",
                    (lock.lock_class,),
                    task.name,
                    fn,
                    "=====================================\n"
                    "WARNING: bad unlock balance detected!\n"
                    "-------------------------------------\n"
                    f"{task.name} is trying to release lock ({lock.lock_class}) at: {fn}\n"
                    "but there are no more locks to release!",
                )
            )
        return False

    def holds(self, task: Task, lock: Any) -> bool:
        return any(h.lock is lock for h in task.held)

    # -- graph --------------------------------------------------------------------------

    def _path(self, src: str, dst: str) -> list[str] | None:
        """A dependency path src -> ... -> dst, if one is known (iterative DFS)."""
        if src == dst:
            return [src]
        stack: list[tuple[str, list[str]]] = [(src, [src])]
        seen = {src}
        while stack:
            node, path = stack.pop()
            for nxt in self.graph.get(node, ()):
                if nxt == dst:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    # -- reports --------------------------------------------------------------------------

    def _add(self, r: LockdepReport) -> None:
        self.reports.append(r)
        self.kernel.printk(r.text)

    def _report_self(self, task: Task, lock: Any, kind: str, held: HeldLock) -> None:
        cls = lock.lock_class
        key = (kind, cls)
        if key in self._reported:
            return
        self._reported.add(key)
        fn, _ = model_site(4)
        if kind == "read-then-write":
            title = "WARNING: possible recursive locking detected (write after read)"
            scen = f"  down_read({cls});\n  down_write({cls});"
        else:
            title = "WARNING: possible recursive locking detected"
            scen = f"  lock({cls});\n  lock({cls});"
        text = (
            "============================================\n"
            f"{title}\n"
            "--------------------------------------------\n"
            f"{task.name} is trying to acquire lock:\n  ({cls}) at: {fn}\n"
            f"but task is already holding lock:\n  ({held.lock.lock_class}) at: {held.function}\n"
            " Possible unsafe locking scenario:\n\n"
            "       CPU0\n       ----\n"
            f"{scen}\n\n *** DEADLOCK ***"
        )
        self._add(LockdepReport(kind, (cls,), task.name, fn, text, self.kernel.step()))

    def _report_cycle(self, task: Task, held_cls: str, new_cls: str, path: list[str]) -> None:
        cycle = tuple(sorted({held_cls, new_cls, *path}))
        key = ("circular", *cycle)
        if key in self._reported:
            return
        self._reported.add(key)
        fn, _ = model_site(4)
        chain_lines = []
        for a, b in itertools.pairwise(path):
            e = self.graph[a][b]
            chain_lines.append(f"-> ({a}) -> ({b}): first taken in {e.function} [{e.thread}]")
            chain_lines.extend(f"       {f}" for f in e.chain)
        held_at = next((h.function for h in reversed(task.held) if h.lock.lock_class == held_cls), "?")
        now = "\n".join(f"       {f}" for f in backtrace(4))
        text = (
            "======================================================\n"
            "WARNING: possible circular locking dependency detected\n"
            "------------------------------------------------------\n"
            f"{task.name} is trying to acquire lock:\n  ({new_cls}) at: {fn}\n"
            + (now + "\n" if now else "")
            + f"but task is already holding lock:\n  ({held_cls}) at: {held_at}\n"
            "which lock already depends on the new lock.\n\n"
            "the existing dependency chain is:\n" + "\n".join(chain_lines) + "\n\n"
            " Possible unsafe locking scenario:\n\n"
            "       CPU0                    CPU1\n"
            "       ----                    ----\n"
            f"  lock({held_cls});\n"
            f"                               lock({new_cls});\n"
            f"                               lock({held_cls});\n"
            f"  lock({new_cls});\n\n *** DEADLOCK ***"
        )
        self._add(
            LockdepReport("circular", (held_cls, new_cls), task.name, fn, text, self.kernel.step())
        )


def lockdep_assert_held(k: Kernel, lock: Any) -> None:
    """WARN when the current task does not hold ``lock`` (a no-op with lockdep off)."""
    if not k.lockdep_enabled:
        return
    if not k.lockdep.holds(k.current(), lock):
        fn, site = model_site(2)
        k.record_warn(fn, f"lockdep_assert_held({lock.lock_class})", "WARN_ON", site)
