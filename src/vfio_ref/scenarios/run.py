"""``run(name, level)``: a scenario's verdict at a level.

A verdict is the union of what the explorer found over the interleavings it ran (every one up
to the preemption bound, by default; every one with ``bound=None``), each finding with the
schedule that produced it (shortened) and a swimlane trace of that schedule.  ``complete``
says whether that space was searched to the end; ``clean`` is True only for a complete
search that found nothing.  ``observations`` are the kernel's return codes in the default
schedule (the one with no preemption), ``returns`` those of every distinct outcome.  Nothing
here knows what a level "should" do: verdicts come from running the model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..explorer import explore, render_finding, render_swimlanes, run_once
from ..explorer.explore import (
    DEFAULT_MAX_SCHEDULES,
    Exploration,
    Finding,
    FindingId,
    ReductionCheck,
    Stats,
)
from ..explorer.garbage import frozen_for_fork
from ..explorer.parallel import ProgramSpec
from ..explorer.replay import ReplayStrategy
from ..explorer.strategy import parse_schedule
from ..kernel.core import ModelUsageError
from ..kernel.fault import UNREACHABLE_NOTE, can_fail, fault_kind
from ..vfio import check_ablation, check_level
from .catalogue import FAULT_SWEEP_OF, SCENARIO_NAMES, SCENARIOS
from .coverage import Coverage, CoverageReport
from .harness import ScenarioContext, describe_observations, judge_execution, make_program

ScenarioFn = Callable[[ScenarioContext], None]


@dataclass
class Verdict:
    scenario: str
    level: str
    review_fixes: bool
    ablation: str | None
    findings: list[Finding]
    observations: dict[str, list[int]]
    stats: list[Stats] = field(default_factory=list)
    trace: str = ""
    returns: list[dict[str, list[int]]] = field(default_factory=list)
    check: ReductionCheck | None = None
    swept: list[SweptPoint] = field(default_factory=list)  # fault_sweep: each point and its verdict
    injected: list[str] = field(default_factory=list)  # the failures asked for (fail=)
    coverage: CoverageReport | None = None  # what the explored schedules reached (coverage=True)

    @property
    def complete(self) -> bool:
        """Every search behind the verdict exhausted the space it states."""
        return bool(self.stats) and all(s.complete for s in self.stats)

    @property
    def clean(self) -> bool:
        """No findings, over a complete search (an incomplete one is never clean)."""
        return not self.findings and self.complete

    @property
    def space(self) -> str:
        return "; ".join(dict.fromkeys(s.space for s in self.stats))

    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})

    def cell(self) -> str:
        """The report's cell: clean, the finding kinds, and "incomplete" when the search
        did not exhaust its space."""
        if self.findings:
            text = ",".join(self.kinds())
            return text if self.complete else text + " (incomplete)"
        return "clean" if self.complete else "incomplete"

    def render(self, *, traces: bool = True) -> str:
        opts = []
        if self.review_fixes:
            opts.append("review fixes")
        if self.ablation:
            opts.append(f"ablation {self.ablation}")
        head = f"{self.scenario} at {self.level}" + (f" ({', '.join(opts)})" if opts else "")
        # The first line says what was searched and whether the search exhausted it.
        lines = [f"{head}: {st.verdict_line()}" for st in self.stats[:1]] or [head]
        lines.append("verdict: " + self.cell())
        if self.injected:
            lines.append("failures injected: " + ", ".join(self.injected))
        if self.swept:
            lines.append(f"points swept ({len(self.swept)}):")
            for sp in self.swept:
                lines.append(f"  {sp.render()}")
        if self.observations:
            lines.append("returns (default schedule): " + describe_observations(self.observations))
        if len(self.returns) > 1:
            lines.append(f"returns seen over the search ({len(self.returns)} distinct):")
            for r in self.returns:
                lines.append("  " + describe_observations(r))
        for f in self.findings:
            lines.append("")
            lines.append(f"[{f.kind}] {f.detail}")
            if f.injected:
                lines.append(f"  injected failure: {f.injected}")
            flags = (" --review-fixes" if self.review_fixes else "") + (
                f" --ablation {self.ablation}" if self.ablation else ""
            )
            if f.fail:
                # A sweep's finding depends on its injected failure too: inject it, then replay.
                lines.append(
                    f"  schedule: {f.schedule}   (replay: vfio-ref explore {FAULT_SWEEP_OF} --level "
                    f"{self.level}{flags} --fail {f.fail} --replay {f.schedule})"
                )
            elif f.injected:
                # Not injectable by name (a point the kernel cannot fail): rerun the sweep.
                lines.append(
                    f"  schedule: {f.schedule}   (with that failure injected; rerun: vfio-ref explore "
                    f"{self.scenario} --level {self.level}{flags})"
                )
            else:
                lines.append(
                    f"  schedule: {f.schedule}   (replay: vfio-ref explore {self.scenario} --level "
                    f"{self.level}{flags} --replay {f.schedule})"
                )
            if traces and f.trace:
                lines.append(f.trace)
        lines.append("")
        if self.coverage is not None:
            lines.append(self.coverage.render())
            lines.append("")
        for st in self.stats:
            lines.append(st.render())
        if self.check is not None:
            lines.append(self.check.render())
        return "\n".join(lines)


@dataclass(frozen=True)
class SweptPoint:
    """One point of a fault sweep: its name, which injectable call of the scenario it is,
    whether the modelled kernel can fail it, and the verdict with it failed."""

    point: str
    nth: int
    reachable: bool
    verdict: str  # clean, the finding kinds, or incomplete
    kinds: tuple[str, ...] = ()

    def render(self) -> str:
        note = "" if self.reachable else f" ({UNREACHABLE_NOTE})"
        return f"#{self.nth:<3} {self.point}{note}: {self.verdict}"


@dataclass(frozen=True)
class ReachedPoint:
    """An injectable point a scenario passes (after its ``begin()``, in the default
    schedule): how many times, and whether the modelled kernel can fail it."""

    name: str
    calls: int
    first: int  # its first call's number among every injectable call of the scenario
    reachable: bool
    why: str


FailSpec = tuple[str, int | None]


def parse_fail(text: str) -> FailSpec:
    """``kzalloc@vfio_create_group`` (every call) or ``kzalloc@vfio_create_group:2`` (the
    second call after the scenario's begin())."""
    name, sep, nth = text.partition(":")
    if "@" not in name:
        raise ModelUsageError(
            f"fault point {text!r}: expected KIND@FUNCTION[:N] (see `vfio-ref list faults --level L`)"
        )
    if not sep:
        return name, None
    try:
        n = int(nth)
    except ValueError:
        raise ModelUsageError(f"fault point {text!r}: the call number after ':' must be a number") from None
    if n < 1:
        raise ModelUsageError(f"fault point {text!r}: calls are counted from 1")
    return name, n


def _check(name: str, level: str, ablation: str | None) -> None:
    if name not in SCENARIO_NAMES:
        raise ModelUsageError(f"unknown scenario {name!r}: the scenarios are {', '.join(SCENARIO_NAMES)}")
    check_level(level)
    check_ablation(ablation, level)


def _render(
    ex: Exploration,
    *,
    injected: str | None = None,
    traces: bool = True,
    full_trace: bool = False,
    chains: bool = False,
) -> None:
    for f in ex.findings:
        f.injected = injected
        if traces and f.events:
            f.trace = render_finding(f, full=full_trace, chains=chains)


def run(
    name: str | ScenarioFn,
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    bound: int | None = 2,
    max_schedules: int | None = DEFAULT_MAX_SCHEDULES,
    mode: str | None = None,
    random: bool = False,
    seed: int = 0,
    runs: int = 200,
    replay: str | None = None,
    traces: bool = True,
    full_trace: bool = False,
    reduction: bool = True,
    progress: bool = False,
    check_reduction: bool = False,
    noiommu: bool = False,
    include_unreachable: bool = False,
    fail: Sequence[FailSpec | str] = (),
    chains: bool = False,
    coverage: bool = False,
    jobs: int = 1,
    cluster: str | None = None,
) -> Verdict:
    """Run scenario ``name`` (a catalogue name, or a scenario function of a
    :class:`ScenarioContext`) at ``level`` and return its verdict (module docstring).

    ``fail`` injects failures into every schedule: each a point (``"kzalloc@vfio_create_group"``,
    every call) or a point and which of its calls after ``begin()`` (``("...", 1)`` or
    ``"kzalloc@vfio_create_group:1"``).  A point the scenario does not reach is refused,
    naming the ones it does (``list faults`` shows them).  ``jobs`` splits a depth-first
    search or a random sample over processes (a fault sweep: its points), ``cluster`` (a
    Dask scheduler's address; catalogue scenarios only) over a cluster, with the serial
    result."""
    if callable(name):
        fn: ScenarioFn = name
        label = getattr(fn, "__name__", "scenario")
        check_level(level)
        check_ablation(ablation, level)
    else:
        _check(name, level, ablation)
        label = name
        if name == "fault_sweep":
            if fail:
                raise ModelUsageError(
                    "fault_sweep fails each point in turn: it takes no failure to inject (give --fail to a scenario)"
                )
            if replay is not None or random or mode == "random":
                raise ModelUsageError(
                    "fault_sweep runs the lifecycle once per failure point over a search space: "
                    "it takes --bound and --no-reduction, not --replay or --random"
                )
            return run_fault_sweep(
                level,
                review_fixes=review_fixes,
                ablation=ablation,
                traces=traces,
                full_trace=full_trace,
                bound=bound,
                reduction=reduction,
                max_schedules=max_schedules,
                include_unreachable=include_unreachable,
                chains=chains,
                coverage=coverage,
                jobs=jobs,
                cluster=cluster,
            )
        if include_unreachable:
            raise ModelUsageError("include_unreachable applies to fault_sweep only")
        sc = SCENARIOS[name]
        fn = sc.fn
        noiommu = noiommu or sc.noiommu
    if bound is not None and bound < 0:
        raise ModelUsageError(f"bound must be 0 or more preemptions (or None: no bound), not {bound}")
    _check_coverage_here(coverage, jobs, cluster)
    specs = [parse_fail(x) if isinstance(x, str) else x for x in fail]
    if specs:
        check_fail(fn, level, specs, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu)
    spec = None
    if cluster is not None:
        if callable(name):
            raise ModelUsageError("a search on a cluster names its scenario: a catalogue name, not a function")
        spec = ProgramSpec(name, level, review_fixes, ablation, noiommu, tuple(specs))
    program = make_program(fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu, fail=specs)
    cov = Coverage(level, review_fixes, ablation) if coverage else None
    with cov if cov is not None else contextlib.nullcontext():
        ex = explore(
            program,
            judge_execution,
            mode=mode,
            random=random,
            bound=bound,
            seed=seed,
            runs=runs,
            replay=replay,
            traces=traces,
            reduction=reduction,
            max_schedules=max_schedules,
            progress=progress,
            label=f"{label}@{level}",
            check_reduction=check_reduction,
            jobs=jobs,
            cluster=cluster,
            program_spec=spec,
        )
    injected = [fail_label(p, n) for p, n in specs]
    _render(ex, injected=", ".join(injected) or None, traces=traces, full_trace=full_trace, chains=chains)
    # The default schedule: its return codes and, when clean, its trace.
    base = run_once(program, judge_execution, ReplayStrategy(parse_schedule(replay or "-")), trace=traces)
    ctx: Any = base.ctx.data.get("ctx")
    obs = dict(ctx.observations) if ctx is not None else {}
    trace = ""
    if traces:
        if ex.findings:
            trace = ex.findings[0].trace
        else:
            names = [t.name for t in base.sched.threads]
            trace = render_swimlanes(base.sched.trace, names, last="clean", full=full_trace, chains=chains)
    return Verdict(
        label, level, review_fixes, ablation, ex.findings, obs, [ex.stats], trace, ex.returns(), ex.check,
        injected=injected, coverage=cov.report() if cov is not None else None,
    )


def fail_label(point: str, nth: int | None) -> str:
    return f"{point} (every call)" if nth is None else f"{point} (call {nth} after begin())"


def reached_points(
    scenario: str | ScenarioFn,
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    noiommu: bool = False,
) -> list[ReachedPoint]:
    """The injectable points ``scenario`` passes after its ``begin()`` in the default
    schedule (a concurrent scenario may pass others in other schedules), in order."""
    if isinstance(scenario, str):
        _check(scenario, level, ablation)
        sc = SCENARIOS[FAULT_SWEEP_OF if scenario == "fault_sweep" else scenario]
        fn = sc.fn
        noiommu = noiommu or sc.noiommu
    else:
        fn = scenario
        check_level(level)
        check_ablation(ablation, level)
    program = make_program(fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu)
    res = run_once(program, judge_execution, ReplayStrategy({}))
    k = res.ctx.kernel
    base = res.ctx.data.get("fault_base", 0)
    out: dict[str, ReachedPoint] = {}
    for p in k.fault_inject.points:
        if p.seq <= base:
            continue
        r = out.get(p.name)
        if r is None:
            fk = fault_kind(p.name)
            out[p.name] = ReachedPoint(p.name, 1, p.seq - base, fk.can_fail, fk.why)
        else:
            out[p.name] = ReachedPoint(r.name, r.calls + 1, r.first, r.reachable, r.why)
    return list(out.values())


def check_fail(
    fn: ScenarioFn,
    level: str,
    specs: Sequence[FailSpec],
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    noiommu: bool = False,
) -> None:
    """Refuse a failure the scenario cannot meet: an unknown point, or a call number past
    the calls the scenario makes there."""
    reached = {r.name: r for r in reached_points(fn, level, review_fixes=review_fixes, ablation=ablation,
                                                 noiommu=noiommu)}
    known = ", ".join(f"{r.name} (x{r.calls})" for r in reached.values()) or "none"
    for point, nth in specs:
        r = reached.get(point)
        if r is None:
            raise ModelUsageError(
                f"fault point {point!r} is not reached by this scenario at {level} (after begin()); "
                f"the points it reaches: {known}"
            )
        if nth is not None and nth > r.calls:
            raise ModelUsageError(
                f"fault point {point!r} is called {r.calls} time{'s' if r.calls > 1 else ''} after begin() "
                f"at {level}, so call {nth} is never made; the points it reaches: {known}"
            )


def fault_points(level: str, *, review_fixes: bool = False, ablation: str | None = None) -> list[str]:
    """The injectable points the lifecycle passes at ``level``, in order (after setup)."""
    sc = SCENARIOS[FAULT_SWEEP_OF]
    program = make_program(sc.fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=sc.noiommu)
    res = run_once(program, judge_execution, ReplayStrategy({}))
    k = res.ctx.kernel
    base = res.ctx.data.get("fault_base", 0)
    return [p.name for p in k.fault_inject.points if p.seq > base]


def _check_coverage_here(coverage: bool, jobs: int, cluster: str | None) -> None:
    """Coverage is Python's line tracer in this process: a search split over processes or a
    cluster runs elsewhere, so the two are refused together."""
    if coverage and (jobs > 1 or cluster is not None):
        raise ModelUsageError("coverage traces this process: run it with jobs=1 and no cluster")


@dataclass(frozen=True)
class _SweepSearch:
    """How each point of a fault sweep is searched (the same for every point; data, so that
    a point can be searched in another process or on a cluster's worker)."""

    level: str
    review_fixes: bool
    ablation: str | None
    bound: int | None
    reduction: bool
    max_schedules: int | None
    traces: bool
    full_trace: bool
    chains: bool

    def __call__(self, unit: tuple[int, str, bool]) -> Exploration:
        """The lifecycle with injectable call ``n`` (at ``point``) failed, explored and
        rendered (its findings' traces and reports written)."""
        n, point, reachable = unit
        sc = SCENARIOS[FAULT_SWEEP_OF]
        program = make_program(
            sc.fn, self.level, review_fixes=self.review_fixes, ablation=self.ablation, noiommu=sc.noiommu, fail_nth=n
        )
        ex = explore(
            program,
            judge_execution,
            bound=self.bound,
            reduction=self.reduction,
            max_schedules=self.max_schedules,
            traces=self.traces,
            label=f"fault_sweep@{self.level}",
        )
        _render(ex, injected=_swept_label(point, n, reachable), traces=self.traces, full_trace=self.full_trace,
                chains=self.chains)
        return ex


def _swept_label(point: str, n: int, reachable: bool) -> str:
    note = "" if reachable else f", {UNREACHABLE_NOTE}"
    return f"{point} (injectable call #{n}{note})"


def run_fault_sweep(
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    traces: bool = True,
    full_trace: bool = False,
    bound: int | None = 1,
    reduction: bool = True,
    max_schedules: int | None = DEFAULT_MAX_SCHEDULES,
    include_unreachable: bool = False,
    chains: bool = False,
    coverage: bool = False,
    jobs: int = 1,
    cluster: str | None = None,
) -> Verdict:
    """The lifecycle, once per injectable failure point with that point failed (the Nth
    injectable call of the scenario proper), each explored over the same space.

    Points that no 5.15/5.16 kernel can fail (``kernel.fault.can_fail``) are skipped unless
    ``include_unreachable``; their findings then say "unreachable in 5.15/5.16".

    ``jobs`` > 1 searches the points on that many processes, ``cluster`` (a Dask
    scheduler's address) on its workers, each point's search whole: the serial sweep's
    result, point by point."""
    _check("fault_sweep", level, ablation)
    if jobs < 1:
        raise ModelUsageError(f"jobs must be 1 or more, not {jobs}")
    _check_coverage_here(coverage, jobs, cluster)
    points = fault_points(level, review_fixes=review_fixes, ablation=ablation)
    findings: dict[tuple[str, FindingId], Finding] = {}
    stats: list[Stats] = []
    swept_points: list[SweptPoint] = []
    # n counts every injectable call (fail_nth)
    units = [(n, point, can_fail(point)) for n, point in enumerate(points, start=1)]
    units = [u for u in units if u[2] or include_unreachable]
    search = _SweepSearch(level, review_fixes, ablation, bound, reduction, max_schedules, traces, full_trace, chains)
    cov = Coverage(level, review_fixes, ablation) if coverage else None
    t0 = time.perf_counter()
    if cluster is not None:
        from ..cluster import map_in_order

        explorations = map_in_order(cluster, search, units)
    elif jobs > 1 and len(units) > 1:
        ctx = multiprocessing.get_context("fork")
        with frozen_for_fork(), concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            explorations = list(pool.map(search, units))
    else:
        with cov if cov is not None else contextlib.nullcontext():
            explorations = [search(u) for u in units]
    swept = len(units)
    for (n, point, reachable), ex in zip(units, explorations, strict=True):
        stats.append(ex.stats)
        label = _swept_label(point, n, reachable)
        kinds = tuple(ex.kinds())
        cell = ",".join(kinds) if kinds else "clean"
        if not ex.stats.complete:
            cell = cell + " (incomplete)" if kinds else "incomplete"
        swept_points.append(SweptPoint(point, n, reachable, cell, kinds))
        # The same failure by name: the Nth injectable call is this point's k-th call.
        spec = f"{point}:{points[:n].count(point)}" if reachable else None
        for f in ex.findings:
            f.fail = spec
            findings.setdefault((label, f.ident), f)
    total = Stats(space=f"fault sweep: {swept} points; each: " + (stats[0].space if stats else "nothing"))
    for st in stats:
        total.schedules += st.schedules
        total.distinct += st.distinct
        total.buggy += st.buggy
        total.redundant += st.redundant
        total.points_total += st.points_total
        total.points_max = max(total.points_max, st.points_max)
        total.points_min = st.points_min if total.points_min == 0 else min(total.points_min, st.points_min)
    total.wall = time.perf_counter() - t0
    total.jobs = jobs if cluster is None and len(units) > 1 else 1
    total.complete = all(st.complete for st in stats)
    total.capped = any(st.capped for st in stats)
    total.interrupted = any(st.interrupted for st in stats)
    total.bound = bound
    flist = sorted(findings.values(), key=lambda f: (f.kind, f.ident, f.injected or ""))
    return Verdict(
        "fault_sweep",
        level,
        review_fixes,
        ablation,
        flist,
        {"points_swept": [swept]},
        [total],
        flist[0].trace if flist else "",
        swept=swept_points,
        coverage=cov.report() if cov is not None else None,
    )
