"""The explorer: what a scheduling point costs, how fast it searches, how long scenarios take.

* ``point (switch)``: one scheduling point that hands control to the other model thread
  (two threads alternating on a shared atomic under a strategy that always switches), and
  ``point (no switch)``: one that lets the running thread go on; both with the explorer's
  fast path (no tracing, no reduction), each beside a bare greenlet switch;
* ``toy``: issue 4's toy, two threads of twenty locked steps each, explored exhaustively at
  preemption bound 2, with the restricted sleep sets (explore's default at a bound) and
  without (plain depth-first search): schedules per second and the all-in cost per point;
  and a smaller toy with no bound: source-DPOR against every interleaving;
* ``split``: one depth-first search serially and over two processes;
* ``exhaust``: each concurrent scenario at each level, as posted, explored to exhaustion at
  bound 2 (no shrinking, no traces): time, schedules, and the all-in cost per scheduling
  point (p3 and p4 stop early: their as-posted create bug is found in the first schedules);
* ``first finding``: each ablation at each level it applies to (p3 and p4 with the review
  fix, or their own bug would come first), on the scenario that shows it: schedules (and
  time) until the search first sees a finding, or "none" when the bounded space has none.

Explorations are slow and deterministic, so each runs one round.  Under
``--benchmark-disable`` (CI's smoke run) the explorations use bound 0 (one schedule each).

Run: ``pytest benchmarks/bench_explorer.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from _bench import FIXED_IN_REVIEW, FLOOR_GREENLET, QUICK, add_note, is_disabled, level_label, tag
from vfio_ref import LEVELS
from vfio_ref.explorer import Execution, RawFinding, explore, run_once
from vfio_ref.explorer.records import ChoicePoint
from vfio_ref.explorer.replay import ReplayStrategy
from vfio_ref.explorer.scheduler import ControlledScheduler
from vfio_ref.kernel import Mutex
from vfio_ref.kernel.atomic import Atomic
from vfio_ref.scenarios.catalogue import SCENARIOS
from vfio_ref.scenarios.harness import judge_execution, judge_kernel, make_program
from vfio_ref.vfio import ablations_table

POINTS_PER_THREAD = 1000
CONCURRENT = tuple(name for name, sc in SCENARIOS.items() if sc.threads >= 2)
EXHAUST_LEVELS = ("p1", "p5") if QUICK else LEVELS  # base is the slowest to exhaust (its kworker)


# -- one scheduling point ---------------------------------------------------------------------


class _AlwaysSwitch(ReplayStrategy):
    """Run another thread at every choice point (one execution, nothing recorded: the rest
    of the protocol is the replay strategy's)."""

    def __init__(self) -> None:
        super().__init__({})

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        # As cheap as a choice can be: what is measured is the scheduler's point, not this
        # stand-in (a generator expression here cost a quarter of the point).
        first = cp.enabled[0]
        return first if first != cp.running else cp.enabled[1]


def _alternating(ctx: Execution) -> None:
    a = Atomic(ctx.kernel, 0)
    read = a.atomic_read

    def body() -> None:
        for _ in range(POINTS_PER_THREAD):
            read()

    t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
    ctx.join(t1, t2)


def _no_findings(ctx: Execution) -> Sequence[RawFinding]:
    return []


@pytest.mark.parametrize("switch", [True, False], ids=["switch", "no_switch"])
def test_scheduling_point(benchmark: Any, switch: bool) -> None:
    steps: list[int] = []

    def one_execution() -> None:
        strategy = _AlwaysSwitch() if switch else ReplayStrategy({})
        res = run_once(_alternating, _no_findings, strategy)
        steps.append(res.sched.step_no)

    one_execution()
    points = steps[0]
    assert points >= 2 * POINTS_PER_THREAD - 2
    tag(
        benchmark,
        table="Explorer: one scheduling point",
        row="point with a switch to the other thread" if switch else "point, the running thread goes on",
        key="sched-point-switch" if switch else "sched-point",
        floor=FLOOR_GREENLET,
        per=points,
        note=f"{points} points per execution",
    )
    benchmark(one_execution)


# -- issue 4's toy ---------------------------------------------------------------------------------


def _locked_steps(n: int) -> Any:
    """Two threads of ``n`` locked steps each on one mutex (tests/explorer/toys.py)."""

    def program(ctx: Execution) -> None:
        m = Mutex(ctx.kernel, "m")

        def body() -> None:
            for _ in range(n):
                m.lock()
                m.unlock()

        t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
        ctx.join(t1, t2)

    return program


def _judge_all(ctx: Execution) -> Sequence[RawFinding]:
    return judge_kernel(ctx.kernel, teardown_done=False, deadlock=ctx.deadlock)


@pytest.mark.parametrize("reduction", [True, False], ids=["reduced", "plain"])
def test_toy_locked_steps_bound2(benchmark: Any, reduction: bool) -> None:
    bound = 0 if is_disabled(benchmark) else 2
    result: list[Any] = []

    def search() -> None:
        result.append(
            explore(_locked_steps(20), _judge_all, bound=bound, reduction=reduction, traces=False, shrink=False)
        )

    benchmark.pedantic(search, rounds=1 if QUICK or is_disabled(benchmark) else 3, iterations=1)
    st = result[-1].stats
    assert result[-1].clean and st.exhausted
    tag(
        benchmark,
        table="Explorer: issue 4's toy (two threads of 20 locked steps, bound 2)",
        row="restricted sleep sets (default at a bound)" if reduction else "plain depth-first (reduction=False)",
        key="toy" if reduction else "toy-plain",
        floor=FLOOR_GREENLET,
        per=st.points_total,
        show="total",
    )
    benchmark.extra_info["schedules"] = st.schedules
    benchmark.extra_info["points"] = st.points_total
    stats = getattr(benchmark, "stats", None)
    best = stats.stats.min if stats is not None else st.wall
    add_note(benchmark, f"{st.schedules} schedules ({st.schedules / best:,.0f}/s), {st.points_total} points")


@pytest.mark.parametrize("reduction", [True, False], ids=["dpor", "plain"])
def test_toy_unbounded(benchmark: Any, reduction: bool) -> None:
    """Two threads of three locked steps, no preemption bound: source-DPOR against the plain
    search of every interleaving.  Both must see the same outcomes; DPOR runs fewer."""
    n = 1 if is_disabled(benchmark) else 3
    result: list[Any] = []

    def search() -> None:
        result.append(
            explore(_locked_steps(n), _judge_all, bound=None, reduction=reduction, traces=False, shrink=False)
        )

    benchmark.pedantic(search, rounds=1, iterations=1)
    ex = result[-1]
    st = ex.stats
    assert ex.clean and st.exhausted
    other = explore(_locked_steps(n), _judge_all, bound=None, reduction=not reduction, traces=False, shrink=False)
    assert set(ex.outcomes) == set(other.outcomes)
    fewer = st.schedules if reduction else other.stats.schedules
    more = other.stats.schedules if reduction else st.schedules
    assert fewer <= more, "the reduction ran more schedules than the plain search"
    tag(
        benchmark,
        table=f"Explorer: two threads of {n} locked steps, no bound",
        row="source-DPOR + sleep sets (bound=None)" if reduction else "plain: every interleaving",
        key="toy-unbounded" if reduction else "toy-unbounded-plain",
        floor=FLOOR_GREENLET,
        per=st.points_total,
        show="total",
        note=f"{st.schedules} sched",
    )
    benchmark.extra_info["schedules"] = st.schedules


@pytest.mark.parametrize("jobs", [1, 2], ids=["serial", "jobs2"])
def test_parallel_split(benchmark: Any, jobs: int) -> None:
    """One depth-first search (device_fd_vs_unbind at the base, bound 1: three threads with
    its kworker) serially and split over two processes: the same schedules, less wall time
    when two cores are free."""
    bound = 0 if is_disabled(benchmark) else 1
    sc = SCENARIOS["device_fd_vs_unbind"]
    program = make_program(sc.fn, "base", review_fixes=False, ablation=None, noiommu=sc.noiommu)
    result: list[Any] = []

    def search() -> None:
        result.append(
            explore(program, judge_execution, bound=bound, traces=False, shrink=False, reduction=False, jobs=jobs)
        )

    benchmark.pedantic(search, rounds=1, iterations=1)
    st = result[-1].stats
    assert st.exhausted
    tag(
        benchmark,
        table="Explorer: one search split over processes (device_fd_vs_unbind, base, bound 1, plain)",
        row=f"--jobs {jobs}",
        key=f"split:{jobs}",
        floor=FLOOR_GREENLET,
        per=st.points_total,
        show="total",
        note=f"{st.schedules} sched",
    )
    benchmark.extra_info["schedules"] = st.schedules


# -- scenarios to exhaustion -----------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", CONCURRENT)
def test_exhaust_scenario_bound2(benchmark: Any, name: str, level: str) -> None:
    if level not in EXHAUST_LEVELS:
        pytest.skip(f"quick mode explores {' and '.join(EXHAUST_LEVELS)} only")
    bound = 0 if is_disabled(benchmark) else 2
    sc = SCENARIOS[name]
    program = make_program(sc.fn, level, review_fixes=False, ablation=None, noiommu=sc.noiommu)
    result: list[Any] = []

    def search() -> None:
        result.append(
            explore(program, judge_execution, bound=bound, traces=False, shrink=False, label=f"{name}@{level}")
        )

    benchmark.pedantic(search, rounds=1, iterations=1)
    st = result[-1].stats
    assert st.exhausted
    tag(
        benchmark,
        table="Explorer: each concurrent scenario to exhaustion at bound 2 (levels as posted)",
        row=name,
        col=level,
        key=f"exhaust:{name}@{level}",
        floor=FLOOR_GREENLET,
        per=st.points_total,
        show="total",
        note=f"{st.schedules} sched",
    )
    benchmark.extra_info["schedules"] = st.schedules
    benchmark.extra_info["findings"] = sorted({f.kind for f in result[-1].findings})


# -- schedules until an ablation's first finding ---------------------------------------------------


class _FirstFinding(Exception):
    def __init__(self, schedules: int, points: int, kind: str) -> None:
        super().__init__(kind)
        self.schedules = schedules
        self.points = points
        self.kind = kind


def _until_first_finding(program: Any, bound: int) -> tuple[_FirstFinding | None, Any]:
    """Explore until the first finding: (what and when, None) or, when the bounded space has
    none, (None, the exploration's stats)."""
    count = [0, 0]

    def judge(exe: Execution) -> Sequence[RawFinding]:
        count[0] += 1
        count[1] += exe.sched.step_no
        found = judge_execution(exe)
        if found:
            raise _FirstFinding(count[0], count[1], found[0].kind)
        return found

    try:
        ex = explore(program, judge, bound=bound, traces=False, shrink=False)
    except _FirstFinding as first:
        return first, None
    return None, ex.stats


_ABLATION_CASES = [
    (name, level) for name, a in sorted(ablations_table().items()) for level in LEVELS if level in a.levels
]


@pytest.mark.parametrize(("ablation", "level"), _ABLATION_CASES, ids=[f"{a}@{lv}" for a, lv in _ABLATION_CASES])
def test_ablation_first_finding(benchmark: Any, ablation: str, level: str) -> None:
    a = ablations_table()[ablation]
    if QUICK and level not in EXHAUST_LEVELS and level != a.levels[0]:
        pytest.skip(f"quick mode: {' and '.join(EXHAUST_LEVELS)} and each ablation's first level only")
    sc = SCENARIOS[a.shows]
    # At p3 and p4 the as-posted create bug would be the first finding: take the review fix.
    fixed = level in FIXED_IN_REVIEW
    program = make_program(sc.fn, level, review_fixes=fixed, ablation=ablation, noiommu=sc.noiommu)
    bound = 0 if is_disabled(benchmark) else 2
    result: list[tuple[_FirstFinding | None, Any]] = []

    def search() -> None:
        result.append(_until_first_finding(program, bound))

    benchmark.pedantic(search, rounds=1, iterations=1)
    first, stats = result[-1]
    if first is not None:
        schedules, points, note = first.schedules, first.points, f"{first.schedules} sched, {first.kind}"
    else:  # the decision matters only at some levels: no finding in the whole bounded space
        schedules, points, note = stats.schedules, stats.points_total, f"none in {stats.schedules} sched"
    tag(
        benchmark,
        table="Explorer: schedules until each ablation's first finding (bound 2)",
        row=f"{ablation} ({a.shows})",
        col=level_label(level),
        key=f"ablation:{ablation}@{level}",
        floor=FLOOR_GREENLET,
        per=max(1, points),
        show="total",
        note=note,
    )
    benchmark.extra_info["schedules"] = schedules
    benchmark.extra_info["found"] = first is not None
