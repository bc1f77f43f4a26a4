"""Fault injection, after the kernel's fault-inject / fail-nth (Documentation/fault-injection).

Every injectable point (an allocation, an id allocation, dev_set_name, device_add, cdev_add,
a notifier registration...) asks :meth:`FaultInjector.should_fail` before doing its work.
A point is named ``"<kind>@<kernel function>"``, e.g. ``"kzalloc@vfio_create_group"`` or
``"ida_alloc@vfio_group_alloc"``.  A run can fail:

* the Nth injectable call of the run (``fail_nth(n)``, 1-based, as /proc/self/fail-nth);
* every call, or the Nth call, at a named point (``fail("kzalloc@vfio_create_group", nth=1)``).

``points`` lists every injectable point the run passed, in order, so a sweep can fail each
in turn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Kernel


@dataclass(frozen=True, slots=True)
class FaultPoint:
    seq: int  # 1-based position among all injectable calls of the run
    name: str  # "<kind>@<function>"
    detail: str
    thread: str
    nth_at_point: int  # 1-based count of calls at this named point
    injected: bool


class FaultInjector:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.points: list[FaultPoint] = []
        self.recording = True
        self._seq = 0
        self._counts: Counter[str] = Counter()
        self._nth: int | None = None
        self._rules: dict[str, set[int] | None] = {}
        self.injected: list[FaultPoint] = []

    def fail_nth(self, n: int) -> None:
        """Make the ``n``-th injectable call of this kernel fail (1-based)."""
        if n < 1:
            raise ValueError(f"fail_nth({n}): n counts injectable calls from 1")
        self._nth = n

    def fail(self, name: str, nth: int | None = None) -> None:
        """Fail calls at point ``name``: all of them, or only the ``nth`` (1-based)."""
        if "@" not in name:
            raise ValueError(f"fault point {name!r}: expected '<kind>@<kernel function>'")
        if nth is None:
            self._rules[name] = None
        else:
            prev = self._rules.get(name, set())
            if prev is not None:
                prev.add(nth)
                self._rules[name] = prev

    def should_fail(self, kind: str, function: str, detail: str = "") -> bool:
        name = f"{kind}@{function}"
        self._seq += 1
        self._counts[name] += 1
        c = self._counts[name]
        fail = self._nth == self._seq
        if not fail and name in self._rules:
            rule = self._rules[name]
            fail = rule is None or c in rule
        if self.recording or fail:
            p = FaultPoint(self._seq, name, detail, self.kernel.current().name, c, fail)
            if self.recording:
                self.points.append(p)
            if fail:
                self.injected.append(p)
                self.kernel.printk(
                    f"FAULT_INJECTION: forcing a failure. name {name} ({detail}), nth={self._seq}"
                )
        return fail
