"""Fault injection, after the kernel's fault-inject / fail-nth (Documentation/fault-injection).

Every injectable point (an allocation, an id allocation, dev_set_name, device_add, cdev_add,
a notifier registration...) asks :meth:`FaultInjector.should_fail` before doing its work.
A point is named ``"<kind>@<kernel function>"``, e.g. ``"kzalloc@vfio_create_group"`` or
``"ida_alloc@vfio_group_alloc"``.  A run can fail:

* the Nth injectable call of the run (``fail_nth(n)``, 1-based, as /proc/self/fail-nth);
* every call, or the Nth call, at a named point (``fail("kzalloc@vfio_create_group", nth=1)``).

``points`` lists every injectable point the run passed, in order, so a sweep can fail each
in turn.

Not every point can fail in the kernel being modelled.  Each *kind* of point says whether
5.15/5.16 can fail it (:data:`FAULT_KINDS`): an allocation can (fault-inject's failslab,
or memory pressure), ``blocking_notifier_chain_register`` cannot (it always returns 0
until 5.17).  A sweep fails only the points the kernel can fail (:func:`sweepable`);
failing an unreachable one shows what the caller's error path would do, which no real
kernel runs: its findings must say so (:data:`UNREACHABLE_NOTE`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Kernel


UNREACHABLE_NOTE = "unreachable in 5.15/5.16"


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A kind of injectable point: whether the modelled kernel can fail it, and how (the
    error it returns) or why not."""

    kind: str
    can_fail: bool
    why: str


FAULT_KINDS: dict[str, FaultKind] = {
    fk.kind: fk
    for fk in (
        FaultKind("kzalloc", True, "a slab allocation can fail (-ENOMEM; failslab)"),
        FaultKind("kmalloc", True, "a slab allocation can fail (-ENOMEM; failslab)"),
        FaultKind("ida_alloc", True, "the IDA's node allocation can fail (-ENOMEM)"),
        FaultKind("idr_alloc", True, "the IDR's node allocation can fail (-ENOMEM)"),
        FaultKind("dev_set_name", True, "kobject_set_name_vargs allocates the name (-ENOMEM)"),
        FaultKind("device_add", True, "device_add can fail (kobject_add, sysfs, bus: -ENOMEM here)"),
        FaultKind("cdev_add", True, "kobj_map allocates its probes (-ENOMEM)"),
        FaultKind("alloc_chrdev_region", True, "the region's allocation can fail (-ENOMEM)"),
        FaultKind("register_chrdev_region", True, "the region's allocation can fail (-ENOMEM)"),
        FaultKind("iommu_group_set_name", True, "kstrdup of the name can fail (-ENOMEM)"),
        FaultKind("anon_inode_getfile", True, "alloc_file_pseudo can fail (-ENOMEM)"),
        FaultKind(
            "notifier_register",
            False,
            "blocking_notifier_chain_register always returns 0 in 5.15/5.16 (-EEXIST only from 5.17), "
            "so iommu_group_register_notifier cannot fail",
        ),
    )
}


def fault_kind(name: str) -> FaultKind:
    """The kind of point ``name`` ("<kind>@<function>" or a bare kind).  A kind the table
    does not know is taken as one the kernel can fail (an allocation-like point)."""
    kind = name.split("@", 1)[0]
    fk = FAULT_KINDS.get(kind)
    return fk if fk is not None else FaultKind(kind, True, "not classified: assumed to fail like an allocation")


def can_fail(name: str) -> bool:
    """Whether 5.15/5.16 can fail the point called ``name``."""
    return fault_kind(name).can_fail


@dataclass(frozen=True, slots=True)
class FaultPoint:
    seq: int  # 1-based position among all injectable calls of the run
    name: str  # "<kind>@<function>"
    detail: str
    thread: str
    nth_at_point: int  # 1-based count of calls at this named point
    injected: bool

    @property
    def reachable(self) -> bool:
        """Whether the modelled kernel can fail this point at all."""
        return can_fail(self.name)


def sweepable(points: list[FaultPoint], *, include_unreachable: bool = False) -> list[FaultPoint]:
    """The points a fault sweep fails, in order: those the kernel can fail, or every one
    with ``include_unreachable`` (whose findings must then carry UNREACHABLE_NOTE)."""
    return [p for p in points if include_unreachable or p.reachable]


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
                s = self.kernel.sched
                if s is not None and getattr(s, "tracing", False):
                    s.note(  # type: ignore[attr-defined]  # a step of a traced replay
                        "inject", f"{kind} fails (FAULT_INJECTION: forcing a failure at {name})"
                    )
                self.kernel.printk(
                    f"FAULT_INJECTION: forcing a failure. name {name} ({detail}), nth={self._seq}"
                )
        return fail
