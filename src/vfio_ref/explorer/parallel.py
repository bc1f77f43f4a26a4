"""One depth-first search on several processes: the same search, split into its parts.

After the first execution, the rest of a depth-first search is a list of independent
subtrees, one per other choice at each node of the first path (``DfsStrategy.subtrees``),
each searched exactly as the whole search would search it (its sleep sets come from its own
path).  The parts run in a process pool (the standard library's; a worker reruns its part
from scratch if the pool hands it out again), and their results are merged in the order the
serial search takes them: the same schedule count, the same outcomes with the same counts,
the same findings with the same first schedule.

A PCT sample (``random=True``) splits the same way: its parts are stretches of consecutive
runs, each made exactly as the whole sample makes them (pct.py), merged in run order.

Only these two strategies split (they are :class:`Splittable`).  Source-DPOR
(``bound=None`` with the reduction) adds backtrack points to nodes above the subtree it is
in, so its parts are not independent: it runs in one process (``--jobs`` then parallelises
the report's cells).

A cap on the number of schedules is honoured exactly: when the parts together run more
schedules than the cap, the search is run again serially, up to the cap.  The parts count
their schedules on one counter the pool's processes share, and stop as soon as the count
passes the cap, so a capped search costs at most the cap twice over (once split, once
serially), whatever the number of parts.

On a Dask cluster (``cluster=ADDRESS``, vfio_ref.cluster) the parts travel as data: the
program is named by a :class:`ProgramSpec` (a catalogue scenario, or FILE.py:FUNCTION the
workers can read) and rebuilt on the worker.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .garbage import frozen_for_fork
from .pct import PctStrategy
from .strategy import Strategy

if TYPE_CHECKING:
    from .explore import Judge, KernelFactory, OutcomeOf, Program, Stats, _Collector, _Ticks


class Splittable(Strategy, Protocol):
    """A strategy whose search splits into independent parts once it has made its first
    execution (DfsStrategy, PctStrategy)."""

    def subtrees(self) -> list[tuple[int, int]]:
        """The parts of the rest of the search, in the order the search takes them."""
        ...

    def restrict(self, first: Any, a: int, b: int, /) -> None:
        """Make this fresh strategy search only part ``(a, b)`` of ``first``'s search."""
        ...


# Builds a fresh strategy for the search being split (a picklable callable: it travels to a
# cluster's workers).
MakeStrategy = Callable[[], Splittable]


@dataclass
class _Part:
    program: Program
    judge: Judge
    first: Splittable
    units: list[tuple[int, int]]
    make: MakeStrategy
    bound: int | None
    max_schedules: int | None
    kernel_factory: KernelFactory
    max_steps: int
    outcome_of: OutcomeOf


@dataclass(frozen=True)
class ProgramSpec:
    """A program named by data, to rebuild where it runs: a catalogue scenario (or
    FILE.py:FUNCTION) at a level, with its options."""

    scenario: str
    level: str
    review_fixes: bool = False
    ablation: str | None = None
    noiommu: bool = False
    fail: tuple[tuple[str, int | None], ...] = ()  # injected failures (point, nth or every call)

    def build(self) -> Program:
        from ..scenarios.catalogue import SCENARIOS
        from ..scenarios.harness import make_program

        if self.scenario in SCENARIOS:
            fn: Any = SCENARIOS[self.scenario].fn
        else:
            from ..cli import _scenario_arg

            fn = _scenario_arg(self.scenario)
        return make_program(
            fn, self.level, review_fixes=self.review_fixes, ablation=self.ablation, noiommu=self.noiommu,
            fail=self.fail,
        )


def _run_part_remote(
    spec: ProgramSpec,
    make: MakeStrategy,
    first: Splittable,
    bound: int | None,
    max_schedules: int | None,
    max_steps: int,
    unit: tuple[int, int],
) -> tuple[Stats, _Collector]:
    """One part on a cluster worker (everything it needs arrives as data)."""
    from ..scenarios.harness import judge_execution
    from .explore import _default_kernel, _search, default_state

    strategy = make()
    strategy.restrict(first, *unit)
    return _search(
        spec.build(),
        judge_execution,
        strategy,
        bound=bound,
        max_schedules=max_schedules,
        kernel_factory=_default_kernel,
        max_steps=max_steps,
        outcome_of=default_state,
        progress=None,
    )


class PartsPastTheCap(Exception):
    """The parts of a split search together ran more schedules than its cap: the search is
    redone serially, up to the cap (raised in a worker, re-raised in the parent)."""


class _SharedCount:
    """Schedules run so far by every part of one split search: a counter in memory the
    pool's forked processes share (the parent shows it as progress).  ``tick`` (the search
    loop's progress hook, once per schedule) raises PartsPastTheCap once the count passes
    ``cap``."""

    def __init__(self, ctx: Any, start: int, cap: int | None) -> None:
        self.count = ctx.Value("q", start)
        self.cap = cap

    def tick(self, n: int, findings: int) -> None:
        with self.count.get_lock():
            self.count.value += 1
        self.check()

    def check(self) -> None:
        """Raise PartsPastTheCap when the parts have run past the cap (a part about to
        start checks too: the pool goes on handing out parts until the parent sees it)."""
        if self.cap is not None and self.count.value > self.cap:
            raise PartsPastTheCap(f"the parts ran past the cap of {self.cap} schedules")


# Set in the parent just before the pool forks, read by the workers: the program is a
# closure (a scenario at a level), which forked workers inherit instead of unpickling.
_WORK: _Part | None = None
_COUNT: _SharedCount | None = None


def _run_part(i: int) -> tuple[Stats, _Collector]:
    from .explore import _search

    w = _WORK
    assert w is not None
    if _COUNT is not None:
        _COUNT.check()
    strategy = w.make()
    strategy.restrict(w.first, *w.units[i])
    stats, col = _search(
        w.program,
        w.judge,
        strategy,
        bound=w.bound,
        max_schedules=w.max_schedules,
        kernel_factory=w.kernel_factory,
        max_steps=w.max_steps,
        outcome_of=w.outcome_of,
        progress=_COUNT,
    )
    return stats, col


def search_parallel(
    program: Program,
    judge: Judge,
    *,
    make: MakeStrategy,
    bound: int | None,
    jobs: int,
    max_schedules: int | None,
    kernel_factory: KernelFactory,
    max_steps: int,
    outcome_of: OutcomeOf,
    cluster: str | None = None,
    spec: ProgramSpec | None = None,
    progress: _Ticks | None = None,
) -> tuple[Stats, _Collector] | None:
    """The search of ``explore`` that ``make`` builds strategies for, on ``jobs`` processes
    (or on the Dask cluster at ``cluster``, the program named by ``spec``); None when the
    parts ran past ``max_schedules`` (the caller then searches serially, up to the cap).
    ``bound`` is the search's preemption bound, as its statistics state it."""
    global _WORK, _COUNT
    import time

    from .explore import Stats, _account, _Collector, run_once

    t0 = time.perf_counter()
    first = make()
    stats = Stats(space=first.describe(), bound=bound, max_schedules=max_schedules)
    stats.sampled = isinstance(first, PctStrategy)
    col = _Collector(outcome_of)
    first.new_execution()
    res = run_once(program, judge, first, kernel_factory=kernel_factory, max_steps=max_steps, fault_points=False)
    _account(stats, col, res)
    units = first.subtrees()
    _WORK = _Part(program, judge, first, units, make, bound, max_schedules, kernel_factory, max_steps, outcome_of)
    parts: list[tuple[Any, Any]] = []
    try:
        if cluster is not None:
            from ..cluster import map_in_order

            if spec is None:
                raise ValueError("a search on a cluster needs its program named by a ProgramSpec")
            fn = functools.partial(_run_part_remote, spec, make, first, bound, max_schedules, max_steps)
            parts = map_in_order(cluster, fn, units)
        else:
            ctx = multiprocessing.get_context("fork")
            count = _COUNT = _SharedCount(ctx, stats.schedules, max_schedules)
            with frozen_for_fork(), concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                # The shallowest nodes' subtrees are the biggest: hand them out first, so that
                # no worker is left alone with a big one at the end; merge in the search's order.
                # (A sample's parts are alike: they go in run order.)
                order = sorted(range(len(units)), key=lambda i: units[i][0])
                futures = {i: pool.submit(_run_part, i) for i in order}
                try:
                    pending = set(futures.values())
                    while pending:
                        _, pending = concurrent.futures.wait(pending, timeout=1.0)
                        if progress is not None:
                            progress.tick(count.count.value, -1)
                    parts = [futures[i].result() for i in range(len(units))]
                except PartsPastTheCap:
                    pool.shutdown(cancel_futures=True)
                    return None
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        _WORK = None
        _COUNT = None
    for st, c in parts:
        stats.schedules += st.schedules
        stats.distinct += st.distinct
        stats.redundant += st.redundant
        stats.buggy += st.buggy
        stats.points_total += st.points_total
        if st.distinct:
            stats.points_min = st.points_min if not stats.points_min else min(stats.points_min, st.points_min)
            stats.points_max = max(stats.points_max, st.points_max)
        stats.step_limit += st.step_limit
        stats.lazy_names += st.lazy_names
        stats.unstable_names += st.unstable_names
        stats.interrupted = stats.interrupted or st.interrupted
        col.merge(c)
    if max_schedules is not None and stats.schedules > max_schedules:
        return None
    stats.complete = (
        not stats.interrupted and not stats.sampled and all(st.complete for st, _ in parts) and len(parts) == len(units)
        and not stats.unstable_names
    )
    stats.wall = time.perf_counter() - t0
    stats.jobs = jobs
    return stats, col
