"""Lookup: vfio_group_get_from_iommu + vfio_group_put with 1, 64, 1024 and 4096 groups alive.

The kernel walks vfio.group_list comparing each group's iommu_group; the model keeps that
walk, so the cost grows with the number of groups, and the slope is the point.  Groups are
added with list_add (at the head), and the benchmark looks up the oldest group, at the tail:
every lookup walks the whole list.  Each figure sits beside a bare Python list scan of the
same length (``floor:scan:N``, bench_floors.py).

The groups of a level are built once and grown from one size to the next (building 4096
groups is itself quadratic: each creation walks the list for a racing creator).  Patches 3
and 4 run with the review fix (as posted they free the group they create).  Under
``--benchmark-disable`` the 4096-group case is skipped: it only adds setup time.

Run: ``pytest benchmarks/bench_lookup.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from _bench import boot_level, floor_scan, is_disabled, level_label, pci_name, tag
from vfio_ref import LEVELS
from vfio_ref.kernel.errno import IS_ERR
from vfio_ref.vfio.platform import Platform

SIZES = (1, 64, 1024, 4096)
CASES = [(level, n) for level in LEVELS for n in SIZES]


class _Groups:
    """One level's platform and its vfio groups, grown on demand."""

    def __init__(self, level: str) -> None:
        self.v = boot_level(level)
        self.p = Platform(self.v)
        self.iommu_groups: list[Any] = []

    def grow(self, n: int) -> None:
        v, p = self.v, self.p
        for i in range(len(self.iommu_groups), n):
            ig = p.add_group(f"g{i}")
            dev = p.add_device(pci_name(i), f"g{i}")
            group = v.vfio_group_find_or_alloc(dev)
            assert not IS_ERR(group), group
            self.iommu_groups.append(ig)


@pytest.fixture(scope="module")
def groups() -> dict[str, _Groups]:
    return {}


@pytest.mark.parametrize(("level", "n"), CASES, ids=[f"{lv}-{n}" for lv, n in CASES])
def test_lookup_and_put(benchmark: Any, groups: dict[str, _Groups], level: str, n: int) -> None:
    if n > 1024 and is_disabled(benchmark):
        pytest.skip("smoke run: the 4096-group case only adds setup time")
    for other in [lv for lv in groups if lv != level]:
        del groups[other]  # one level's groups alive at a time
    state = groups.setdefault(level, _Groups(level))
    state.grow(n)
    v = state.v
    target = state.iommu_groups[0]  # the oldest: at the tail of vfio.group_list
    get, put = v.vfio_group_get_from_iommu, v.vfio_group_put

    def lookup_put() -> None:
        put(get(target))

    tag(
        benchmark,
        table="Lookup: vfio_group_get_from_iommu + vfio_group_put (the whole list walked)",
        row=f"{n} group{'s' if n > 1 else ''} alive",
        col=level_label(level),
        key=f"lookup:{n}@{level}",
        floor=floor_scan(n),
        x=n,
    )
    benchmark(lookup_put)
    g = get(target)
    assert g is not None and g.iommu_group is target
    put(g)
    assert v.k.warnings == []
