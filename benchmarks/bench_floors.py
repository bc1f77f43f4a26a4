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

from _bench import FLOOR_GREENLET, bare_scan, floor_scan, greenlet_ping_pong, tag_floor

SCAN_SIZES = (1, 64, 1024, 4096)
SWITCH_LOOP = 500


@pytest.mark.parametrize("n", SCAN_SIZES)
def test_floor_list_scan(benchmark: Any, n: int) -> None:
    loops = max(1, 256 // n)
    tag_floor(benchmark, floor_scan(n), f"list scan of {n} entries comparing one attribute", per=loops)
    benchmark(bare_scan(n, loops))


def test_floor_greenlet_switch(benchmark: Any) -> None:
    tag_floor(benchmark, FLOOR_GREENLET, "one bare greenlet switch", per=2 * SWITCH_LOOP)
    ping_pong, partner = greenlet_ping_pong(2 * SWITCH_LOOP)
    benchmark(ping_pong)
    assert not partner.dead
