"""Issue 13's ratios, each taken as a pair: the model's figure and its floor timed in turn,
round after round, in one loop.

The other benchmark modules time a figure and its floor minutes apart, and this VM's speed
drifts by 2-5x within minutes, so a ratio of two such figures can be off by as much.  Here
both sides of a ratio see the same machine: each round times the model and the floor back to
back (the order swapped every round), and the ratio is the median over pairs of rounds (one
of each order) of their ratios' geometric mean (``vfio_ref.bench.order_balanced_ratio``: a
fast moment of the machine that favours one side in one round does not decide it, as it
would a ratio of two separate minima, and the first run after the collection between rounds,
slower by up to a third, weighs on both sides alike).  The figures shown beside it are the
fastest rounds.

* ``kasan@LEVEL``: the lifecycle (free-running) as it runs against ``Kernel(kasan=False)``;
* ``hook@LEVEL``: the same against the kernel's code recompiled without the scheduling hook
  (issue 5's goal, ``_bench.sched_hook_stubbed``);
* ``point``: one scheduling point with a switch (bench_explorer's two threads alternating
  on an atomic, 2,000 points) against one bare greenlet switch;
* ``point-stand-in@RUNG``: the same program through a stand-in point that does only part of
  the explorer's (``_point_floor.py``: what bounds the point from below), against the same;
* ``walk@LEVEL``: vfio_group_get_from_iommu + vfio_group_put with 1,024 groups alive (the
  whole list walked), per entry, against a bare scan of 1,024 entries, per entry;
* ``toy``: issue 4's toy at bound 2, the reduced search against the plain one, per schedule;
* ``split``: one depth-first search (the base's device_fd_vs_unbind at bound 1) in one
  process against the same search split over two (a speed-up: the goal is a floor, not a
  ceiling), with the collector on, as a search runs;
* ``report``: ``vfio-ref report`` with ``--jobs 1`` against ``--jobs 2`` (the quick run's
  p1 and p5; the default report otherwise), a speed-up too.

Each pair is one benchmark whose ``extra_info["paired"]`` holds both figures (seconds per
operation); ``vfio-ref bench`` reads the goals of issue 13 from them.  Under
``--benchmark-disable`` (CI's smoke run) every pair runs one round.

Run: ``pytest benchmarks/bench_paired.py``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import pytest

from _bench import QUICK, bare_scan, greenlet_ping_pong, is_disabled, level_label, sched_hook_stubbed, timed_loop
from _point_floor import READS, RUNGS, stand_in_execution
from bench_explorer import _alternating, _AlwaysSwitch, _judge_all, _locked_steps, _no_findings
from bench_lookup import _Groups
from bench_scenarios import _lifecycle
from vfio_ref import LEVELS
from vfio_ref.bench import fmt_time, order_balanced_ratio
from vfio_ref.explorer import explore, run_once

TABLE = "Paired ratios (issue 13): the model and its floor timed in turn"
ROUNDS = 16 if QUICK else 32  # even: each order as often (order_balanced_ratio)
TOY_ROUNDS = 6 if QUICK else 10  # a round of the toy is two whole searches (about a second)


def paired(
    model: Callable[[], object], floor: Callable[[], object], rounds: int, *, gc_off: bool = True
) -> tuple[float, float, float]:
    """``model`` and ``floor`` timed back to back, ``rounds`` times, the order swapped every
    round, the garbage collector off (collected between rounds) unless ``gc_off`` is False: the
    fastest round of each (seconds per call) and the order-balanced ratio model / floor
    (``order_balanced_ratio``; ``rounds`` should be even)."""
    best = [float("inf"), float("inf")]
    ratios = []
    fns = (model, floor)
    enabled = gc.isenabled()
    try:
        for r in range(rounds):
            gc.collect()
            if gc_off:
                gc.disable()
            took = [0.0, 0.0]
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                fns[i]()
                took[i] = time.perf_counter() - t
                best[i] = min(best[i], took[i])
            gc.enable()
            ratios.append(took[0] / took[1])
    finally:
        if enabled:
            gc.enable()
        else:
            gc.disable()
    return best[0], best[1], order_balanced_ratio(ratios)


def record(
    benchmark: Any,
    *,
    key: str,
    row: str,
    col: str,
    model: Callable[[], object],
    floor: Callable[[], object],
    per_model: int,
    per_floor: int,
    floor_label: str,
    rounds: int = ROUNDS,
    gc_off: bool = True,
) -> tuple[float, float]:
    """Run the pair (once under ``--benchmark-disable``), keep both figures per operation
    in ``extra_info["paired"]``, and tag the benchmark for the report's table."""
    rounds = 1 if is_disabled(benchmark) else rounds
    out: list[tuple[float, float, float]] = []
    benchmark.pedantic(lambda: out.append(paired(model, floor, rounds, gc_off=gc_off)), rounds=1, iterations=1)
    m, f = out[-1][0] / per_model, out[-1][1] / per_floor
    ratio = out[-1][2] * per_floor / per_model
    benchmark.extra_info["paired"] = {"model": m, "floor": f, "ratio": ratio, "rounds": rounds,
                                      "floor_label": floor_label}
    benchmark.extra_info["report"] = {
        "table": TABLE, "row": row, "col": col, "key": key, "per": 1, "show": "total",
        "note": f"{ratio:.2f}x ({rounds} rounds, order-balanced); "
                f"fastest: {fmt_time(m)} against {floor_label} {fmt_time(f)}",
    }
    return m, f


# -- KASAN on against off ----------------------------------------------------------------------


INNER = 1  # lifecycles per timed call
# A lifecycle's two variants differ by 5-15%, and one round's ratio scatters far wider: the
# first lifecycle after the collection between rounds is slower by up to a half, so the
# rounds' ratios fall in two clusters by order (medians 1.7x and 0.7x for KASAN at p5).  The
# plain median of 201 rounds then read 1.0-1.26x between runs of the same code; the
# order-balanced ratio of each two rounds cancels the order.  Many short rounds (a round is
# 1-3 ms).
LIFECYCLE_ROUNDS = 200 if QUICK else 400


@pytest.mark.parametrize("level", LEVELS)
def test_kasan_on_against_off(benchmark: Any, level: str) -> None:
    on = timed_loop(lambda: _lifecycle(level, True), INNER)
    off = timed_loop(lambda: _lifecycle(level, False), INNER)
    record(benchmark, key=f"paired:kasan@{level}", row="lifecycle: KASAN on against off", col=level_label(level),
           model=on, floor=off, per_model=INNER, per_floor=INNER, floor_label="kasan=False",
           rounds=LIFECYCLE_ROUNDS)


# -- the scheduling hook against the kernel recompiled without it (issue 5's goal) ------------


@pytest.mark.parametrize("level", LEVELS)
def test_scheduling_hook_against_none(benchmark: Any, level: str) -> None:
    lifecycles = timed_loop(lambda: _lifecycle(level, True), INNER)

    def stubbed() -> None:
        with sched_hook_stubbed():  # swaps the functions' code: cheap next to a lifecycle
            lifecycles()

    record(benchmark, key=f"paired:hook@{level}", row="lifecycle: the scheduling hook against none",
           col=level_label(level), model=lifecycles, floor=stubbed, per_model=INNER, per_floor=INNER,
           rounds=LIFECYCLE_ROUNDS,
           floor_label="hook stubbed out")


# -- one scheduling point against a greenlet switch -------------------------------------------


def test_scheduling_point_against_a_greenlet_switch(benchmark: Any) -> None:
    points: list[int] = []

    def execution() -> None:
        points.append(run_once(_alternating, _no_findings, _AlwaysSwitch()).sched.step_no)

    execution()
    switches, _ = greenlet_ping_pong(points[0])

    record(benchmark, key="paired:point", row="one scheduling point (with a switch)", col="",
           model=execution, floor=switches, per_model=points[0], per_floor=points[0] // 2 * 2,
           floor_label="a greenlet switch")


@pytest.mark.parametrize("rung", RUNGS)
def test_point_stand_in_against_a_greenlet_switch(benchmark: Any, rung: str) -> None:
    """What bounds the point from below (_point_floor.py): each stand-in's point against a
    greenlet switch, timed in turn as the explorer's point is."""
    execution = stand_in_execution(rung)
    choices = execution()
    assert choices == 2 * READS  # every point is a choice, and every choice switches
    switches, _ = greenlet_ping_pong(choices)
    record(benchmark, key=f"paired:point-stand-in@{rung}", row=f"a stand-in point: {STAND_IN_ROWS[rung]}",
           col="", model=execution, floor=switches, per_model=choices, per_floor=choices,
           floor_label="a greenlet switch")


STAND_IN_ROWS = {
    "protocol": "the operation's, the point's and the strategy's calls, the choice kept, the switch",
    "wait": "+ the step count, the pending operation, every live thread's wait condition read",
    "records": "+ the choice point and the choice as typed records, the preemption count, the step begun",
}


# -- the group-list walk against a bare scan --------------------------------------------------


WALK = 1024


@pytest.mark.parametrize("level", LEVELS)
def test_group_list_walk_against_a_bare_scan(benchmark: Any, level: str) -> None:
    if is_disabled(benchmark) and level != LEVELS[-1]:
        pytest.skip("smoke run: one level (building 1,024 groups is the cost)")
    groups = _Groups(level)  # p3 and p4 with the review fix (boot_level)
    groups.grow(WALK)
    v = groups.v
    target = groups.iommu_groups[0]  # the oldest: at the tail of vfio.group_list
    get, put = v.vfio_group_get_from_iommu, v.vfio_group_put
    inner = 20

    def lookups() -> None:
        for _ in range(inner):
            put(get(target))

    scans = bare_scan(WALK, inner)

    record(benchmark, key=f"paired:walk@{level}", row=f"group-list walk, {WALK} groups, per entry",
           col=level_label(level), model=lookups, floor=scans, per_model=inner * WALK, per_floor=inner * WALK,
           floor_label="a bare scan")
    assert v.k.warnings == []


# -- the reduced search against the plain one, per schedule -----------------------------------


def test_reduced_search_against_plain_per_schedule(benchmark: Any) -> None:
    bound = 0 if is_disabled(benchmark) else 2
    counts: dict[bool, int] = {}

    def search(reduction: bool) -> None:
        ex = explore(_locked_steps(20), _judge_all, bound=bound, reduction=reduction, traces=False, shrink=False)
        assert ex.clean and ex.stats.exhausted
        counts[reduction] = ex.stats.schedules

    search(True)
    search(False)
    record(benchmark, key="paired:toy", row="toy at bound 2: reduced search, per schedule", col="",
           model=lambda: search(True), floor=lambda: search(False), per_model=counts[True],
           per_floor=counts[False], floor_label="the plain search", rounds=TOY_ROUNDS)


# -- one search in one process against the same search split over two ---------------------------


SPLIT_ROUNDS = 4 if QUICK else 6  # a round is two whole searches (about 40 s here)


def test_split_search_against_serial(benchmark: Any) -> None:
    from vfio_ref.scenarios.catalogue import SCENARIOS
    from vfio_ref.scenarios.harness import judge_execution, make_program

    bound = 0 if is_disabled(benchmark) else 1
    sc = SCENARIOS["device_fd_vs_unbind"]
    program = make_program(sc.fn, "base", review_fixes=False, ablation=None, noiommu=sc.noiommu)
    counts: dict[int, int] = {}

    def search(jobs: int) -> None:
        ex = explore(program, judge_execution, bound=bound, traces=False, shrink=False, reduction=False, jobs=jobs)
        assert ex.stats.exhausted
        counts[jobs] = ex.stats.schedules

    search(2)
    search(1)
    assert counts[1] == counts[2]
    record(benchmark, key="paired:split", row="one search: one process against two, per schedule", col="",
           model=lambda: search(1), floor=lambda: search(2), per_model=counts[1], per_floor=counts[2],
           floor_label="--jobs 2", rounds=SPLIT_ROUNDS, gc_off=False)


# -- the report with one job against two ----------------------------------------------------------


# A round is two reports (about 11 s quick, 2 minutes at default settings, on the Xeon VM of
# earlier passes; a third of that on the EPYC one).  The quick pair's median of three read
# 1.68-2.17x between runs; its reports are short (the p1 and p5 columns, 3.5 s with
# --jobs 2), so the quick run takes six.
REPORT_ROUNDS = 6 if QUICK else 4


def test_report_one_job_against_two(benchmark: Any) -> None:
    import contextlib
    import io

    from vfio_ref.cli import main as cli_main

    if is_disabled(benchmark):
        argv = ["report", "--scenario", "lifecycle", "--level", "p5"]
    elif QUICK:
        argv = ["report", "--level", "p1", "--level", "p5"]
    else:
        argv = ["report"]

    def report(jobs: int) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli_main([*argv, "--jobs", str(jobs)]) == 0

    record(benchmark, key="paired:report", row=f"vfio-ref {' '.join(argv)}: --jobs 1 against --jobs 2", col="",
           model=lambda: report(1), floor=lambda: report(2), per_model=1, per_floor=1,
           floor_label="--jobs 2", rounds=REPORT_ROUNDS, gc_off=False)
