"""A single-threaded scheduler that only records: every scheduling point, in order.

Plugged into ``Kernel(sched=Recorder())`` it turns the kernel's scheduling hook into a log
of (operation, object, kernel call chain) that a test can read to check the *order* of what
a function did ("the unbound list is freed after the notifier is unregistered").  Kernel
threads (kworkers) are run when somebody waits for them, never in the middle of a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vfio_ref.kernel import Deadlock, Kernel
from vfio_ref.kernel.core import backtrace
from vfio_ref.vfio import load
from vfio_ref.vfio.base import VfioBase
from vfio_ref.vfio.platform import Platform


@dataclass
class Event:
    op: str
    obj: Any
    calls: tuple[str, ...]
    extra: Any = None


class Recorder:
    def __init__(self, probe: Callable[[str, Any], Any] | None = None) -> None:
        self.step_no = 0
        self.events: list[Event] = []
        self.daemons: list[tuple[str, Callable[[], None]]] = []
        self.kernel: Kernel | None = None
        self.probe = probe

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        self.step_no += 1
        extra = self.probe(op, obj) if self.probe is not None else None
        self.events.append(Event(op, obj, backtrace(2, 8), extra))
        if ready is not None and not ready():
            while self.daemons and not ready():
                self._run_daemon(*self.daemons.pop(0))
            if not ready():
                raise Deadlock(f"recorder: {op} would wait forever")

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        self.daemons.append((name, fn))

    def _run_daemon(self, name: str, fn: Callable[[], None]) -> None:
        k = self.kernel
        assert k is not None
        prev = k._sched_task
        k._sched_task = k.new_task(name)
        try:
            fn()
        finally:
            k._sched_task = prev

    def index(self, op: str, *, obj: Any = None, via: str | None = None, start: int = 0) -> int:
        """The position of the first event ``op`` (on ``obj``, made from ``via``) at or after ``start``."""
        for i in range(start, len(self.events)):
            e = self.events[i]
            if e.op == op and (obj is None or e.obj is obj) and (via is None or via in e.calls):
                return i
        raise AssertionError(f"no {op} event{' via ' + via if via else ''} recorded")


def recorded_machine(level: str, *, probe: Callable[[str, Any], Any] | None = None, **opts: Any) -> tuple[
    VfioBase, Platform, Recorder
]:
    rec = Recorder(probe)
    k = Kernel(sched=rec)  # type: ignore[arg-type]
    rec.kernel = k
    v = load(k, level, **opts)
    assert v.vfio_init() == 0
    return v, Platform(v), rec
