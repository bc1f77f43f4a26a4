"""A small test helper: a level booted on a free-running kernel, with its platform."""

from __future__ import annotations

from dataclasses import dataclass

from vfio_ref.kernel import Kernel
from vfio_ref.vfio import boot
from vfio_ref.vfio.base import VfioBase
from vfio_ref.vfio.platform import Platform

A = "0000:00:01.0"
B = "0000:00:01.1"


@dataclass
class Machine:
    v: VfioBase
    p: Platform

    @property
    def k(self) -> Kernel:
        return self.v.k

    def warnings(self) -> list[tuple[str, str]]:
        return [(w.function, w.message) for w in self.k.warnings]

    def leaks(self) -> list[str]:
        return sorted(f"{leak.type} by {leak.allocated_by}" for leak in self.k.leaks())


def machine(level: str, *, devices: tuple[str, ...] = (A,), noiommu: bool = False, **opts: object) -> Machine:
    """``level`` booted, one iommu group g0 holding ``devices`` (or, with ``noiommu``,
    devices on a bus with no IOMMU and no group)."""
    v = boot(level, noiommu=noiommu, hang_timeout=1.0, **opts)  # type: ignore[arg-type]
    p = Platform(v)
    if not noiommu:
        p.add_group("g0")
    for d in devices:
        p.add_device(d, None if noiommu else "g0", iommu=not noiommu)
    return Machine(v, p)
