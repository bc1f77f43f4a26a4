"""Floors: the cheapest Python a hot path could possibly cost, measured in the same run.

Every figure in the report is divided by one of these, so the ratios survive the drift of
absolute times on shared machines:

* ``floor:lock`` is in bench_primitives.py (a bare ``threading.Lock`` acquire + release);
* ``floor:scan:N``: a Python list of N entries scanned comparing one attribute, the target
  last (what ``list_for_each_entry`` + ``if (group->iommu_group == iommu_group)`` costs with
  no model around it);
* ``floor:greenlet``: one bare greenlet switch (the explorer runs model threads as greenlets).

Run: ``pytest benchmarks/bench_floors.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from greenlet import greenlet

from _bench import FLOOR_GREENLET, floor_scan, tag_floor

SCAN_SIZES = (1, 64, 1024, 4096)
SWITCH_LOOP = 500


class _Entry:
    __slots__ = ("iommu_group",)

    def __init__(self) -> None:
        self.iommu_group = object()


@pytest.mark.parametrize("n", SCAN_SIZES)
def test_floor_list_scan(benchmark: Any, n: int) -> None:
    entries = [_Entry() for _ in range(n)]
    target = entries[-1].iommu_group
    loops = max(1, 256 // n)

    def scan() -> None:
        for _ in range(loops):
            for e in entries:
                if e.iommu_group is target:
                    break

    tag_floor(benchmark, floor_scan(n), f"list scan of {n} entries comparing one attribute", per=loops)
    benchmark(scan)


def test_floor_greenlet_switch(benchmark: Any) -> None:
    main = greenlet.getcurrent()

    def partner() -> None:
        while True:
            main.switch()

    g = greenlet(partner)
    switch = g.switch
    rng = range(SWITCH_LOOP)

    def ping_pong() -> None:
        for _ in rng:
            switch()  # there and back: two switches

    tag_floor(benchmark, FLOOR_GREENLET, "one bare greenlet switch", per=2 * SWITCH_LOOP)
    benchmark(ping_pong)
    assert not g.dead
