"""IDA benchmarks: what an id costs, beside the cheapest thing the kernel's IDA always does.

Every IDA operation takes the IDA's spinlock in the kernel, so each group has a floor: a
bare ``threading.Lock()`` acquire + release measured in the same run.  The IDA results carry
``extra_info["lock_floor_ratio"]`` (their fastest round over the floor's); the alloc+free with
10**6 ids in use also carries ``ratio_to_1e3`` and must stay within 2x of the 10**3 case
(the lowest-free search does not grow with the number of ids in use).

Groups:

* ``alloc+free @1e3`` / ``alloc+free @1e6``: one ida_alloc_max(MINORMASK) + ida_free with
  10**3 / 10**6 vfio minors in use (two IDA operations against one lock round trip);
* ``fill 2**20``: hand out every vfio minor, 0 .. MINORMASK, from an empty IDA, then check
  the next allocation fails -ENOSPC (against 2**20 lock round trips); the same fill on the
  bare bitmap tree shows how much of it is the data structure.

Fault-point recording is off while ids are counted in bulk (a million recorded points cost
more than the IDA); ``alloc+free @1e3`` also has a run with recording on, to show that cost.

Run: ``pytest benchmarks/bench_ida.py`` (``--benchmark-disable`` runs each body once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from _bench import tag, tag_floor
from vfio_ref.kernel import Kernel
from vfio_ref.kernel.errno import ENOSPC
from vfio_ref.kernel.ida import Ida, IdBitmap

MINORMASK = (1 << 20) - 1
GROUP_1E3 = "alloc+free @1e3"
GROUP_1E6 = "alloc+free @1e6"
GROUP_FILL = "fill 2**20"
TABLE = "IDA (p5's minors): ida_alloc_max(MINORMASK) + ida_free"
FILL = MINORMASK + 1


def _floor_key(group: str) -> str:
    return f"floor:lock:{group}"


_best_times: dict[str, float] = {}  # group or case -> best seconds per call in this run


def _best(benchmark: Any) -> float | None:
    """The fastest round of a finished benchmark (per call), or None when benchmarking is
    disabled.  Ratios use the fastest rounds, the ones least disturbed by other load."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.min)


def _compare(benchmark: Any, key: str) -> None:
    """Record this result's best time under ``key`` and its ratio to the group's lock floor."""
    m = _best(benchmark)
    if m is None:
        return
    _best_times[key] = m
    floor = _best_times.get("floor " + benchmark.group)
    if floor:
        benchmark.extra_info["lock_floor_ratio"] = round(m / floor, 1)


def _ida_with(n: int, *, recording: bool = False) -> Ida:
    """An IDA holding vfio minors 0 .. n-1, allocated the way vfio does."""
    k = Kernel()
    k.fault_inject.recording = False
    ida = Ida(k)
    for _ in range(n):
        ida.ida_alloc_max(MINORMASK)
    k.fault_inject.recording = recording
    return ida


def _cycle(ida: Ida) -> Callable[[], None]:
    alloc_max, free = ida.ida_alloc_max, ida.ida_free

    def alloc_free() -> None:
        free(alloc_max(MINORMASK))

    return alloc_free


@pytest.fixture(scope="module")
def ida_1e6() -> Ida:
    return _ida_with(10**6)


# -- the floor: one bare lock round trip ------------------------------------------------------


@pytest.mark.parametrize("group", [GROUP_1E3, GROUP_1E6])
def test_lock_floor(benchmark: Any, group: str) -> None:
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def lock_round_trip() -> None:
        acquire()
        release()

    benchmark.group = group
    tag_floor(benchmark, _floor_key(group), f"a bare threading.Lock acquire + release ({group})")
    benchmark(lock_round_trip)
    m = _best(benchmark)
    if m is not None:
        _best_times["floor " + group] = m
    assert not lock.locked()


def test_lock_floor_fill(benchmark: Any) -> None:
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def lock_round_trips() -> None:
        for _ in range(MINORMASK + 1):
            acquire()
            release()

    benchmark.group = GROUP_FILL
    tag_floor(benchmark, _floor_key(GROUP_FILL), f"{FILL} bare threading.Lock round trips", per=FILL)
    benchmark.pedantic(lock_round_trips, rounds=3)
    m = _best(benchmark)
    if m is not None:
        _best_times["floor " + GROUP_FILL] = m


# -- the IDA ------------------------------------------------------------------------------------


def test_alloc_free_with_1e3_in_use(benchmark: Any) -> None:
    ida = _ida_with(10**3)
    benchmark.group = GROUP_1E3
    tag(benchmark, table=TABLE, row="alloc + free, 10**3 ids in use", key="ida@1e3", floor=_floor_key(GROUP_1E3))
    benchmark(_cycle(ida))
    _compare(benchmark, "ida " + GROUP_1E3)
    assert len(ida) == 10**3
    assert ida.ida_alloc_max(MINORMASK) == 10**3


def test_alloc_free_with_1e3_in_use_recording_fault_points(benchmark: Any) -> None:
    ida = _ida_with(10**3, recording=True)
    benchmark.group = GROUP_1E3
    tag(
        benchmark,
        table=TABLE,
        row="alloc + free, 10**3 ids in use, fault points recorded",
        key="ida@1e3-recording",
        floor=_floor_key(GROUP_1E3),
    )
    benchmark(_cycle(ida))
    _compare(benchmark, "ida recording " + GROUP_1E3)
    assert len(ida) == 10**3


def test_alloc_free_with_1e6_in_use(benchmark: Any, ida_1e6: Ida) -> None:
    benchmark.group = GROUP_1E6
    tag(benchmark, table=TABLE, row="alloc + free, 10**6 ids in use", key="ida@1e6", floor=_floor_key(GROUP_1E6))
    benchmark(_cycle(ida_1e6))
    _compare(benchmark, "ida " + GROUP_1E6)
    assert len(ida_1e6) == 10**6
    small = _best_times.get("ida " + GROUP_1E3)
    big = _best_times.get("ida " + GROUP_1E6)
    if small and big:
        benchmark.extra_info["ratio_to_1e3"] = round(big / small, 2)
        assert big <= 2 * small, f"alloc+free at 1e6 in use costs {big / small:.2f}x the 1e3 case"


def test_fill_all_vfio_minors(benchmark: Any) -> None:
    def fresh() -> tuple[tuple[Ida], dict[str, Any]]:
        k = Kernel()
        k.fault_inject.recording = False
        return (Ida(k),), {}

    def fill(ida: Ida) -> Ida:
        alloc_max = ida.ida_alloc_max
        for _ in range(MINORMASK + 1):
            alloc_max(MINORMASK)
        return ida

    benchmark.group = GROUP_FILL
    tag(
        benchmark,
        table=TABLE,
        row="fill all 2**20 minors (whole fill)",
        key="ida-fill",
        floor=_floor_key(GROUP_FILL),
        per=FILL,
        show="total",
    )
    ida = benchmark.pedantic(fill, setup=fresh, rounds=3)
    _compare(benchmark, "ida " + GROUP_FILL)
    assert len(ida) == MINORMASK + 1
    assert ida.ida_alloc_max(MINORMASK) == -ENOSPC
    assert ida.ida_alloc() == MINORMASK + 1


def test_fill_all_vfio_minors_bitmap_only(benchmark: Any) -> None:
    # The data structure alone, without the IDA's kernel-side bookkeeping (scheduling hook,
    # fault-injection point, argument conversion): how much of the fill is the bitmap tree.
    def fill(ids: IdBitmap) -> IdBitmap:
        alloc = ids.alloc
        for _ in range(MINORMASK + 1):
            alloc(0, MINORMASK)
        return ids

    benchmark.group = GROUP_FILL
    tag(
        benchmark,
        table=TABLE,
        row="fill all 2**20 minors, bitmap tree only (whole fill)",
        key="bitmap-fill",
        floor=_floor_key(GROUP_FILL),
        per=FILL,
        show="total",
    )
    ids = benchmark.pedantic(fill, setup=lambda: ((IdBitmap(),), {}), rounds=3)
    _compare(benchmark, "bitmap " + GROUP_FILL)
    assert ids.count() == MINORMASK + 1
    assert ids.alloc(0, MINORMASK) == -1
