"""Group create + destroy at every level.

vfio_group_find_or_alloc() for a device whose iommu group has no vfio_group yet (the
lookup finds nothing, vfio_create_group makes one: allocation, minor, struct device or
cdev, notifier registration, list insertion), then vfio_group_put() of that only
reference (release: device/cdev teardown, minor freed, notifier unregistered, kfree).  This
is the creation a vfio driver's probe does and the destruction its remove does, without
the driver core around them.

Every level should be within 1.5x of the fastest: a slower level would mean the model, not
the kernel, is slow.  Floor: a bare ``threading.Lock`` round trip.  Patches 3 and 4 run
with the review fix (as posted they free the group they return).

Run: ``pytest benchmarks/bench_create.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from _bench import boot_level, level_label, tag
from vfio_ref import LEVELS
from vfio_ref.kernel.errno import IS_ERR
from vfio_ref.vfio.platform import Platform


@pytest.mark.parametrize("level", LEVELS)
def test_create_destroy(benchmark: Any, level: str) -> None:
    v = boot_level(level)
    p = Platform(v)
    p.add_group("g0")
    dev = p.add_device("0000:00:01.0", "g0")
    find_or_alloc, put = v.vfio_group_find_or_alloc, v.vfio_group_put
    k = v.k
    live = len(k.slab.live)

    def create_destroy() -> None:
        group = find_or_alloc(dev)
        assert not IS_ERR(group), group
        put(group)

    tag(
        benchmark,
        table="Group create + destroy: vfio_group_find_or_alloc + vfio_group_put",
        row="create + destroy",
        col=level_label(level),
        key=f"create@{level}",
    )
    benchmark(create_destroy)
    assert len(k.slab.live) == live, "create + destroy leaked"
    assert k.warnings == []
