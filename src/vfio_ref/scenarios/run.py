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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..explorer import explore, render_swimlanes, run_once
from ..explorer.explore import (
    DEFAULT_MAX_SCHEDULES,
    Exploration,
    Finding,
    FindingId,
    ReductionCheck,
    Stats,
)
from ..explorer.parallel import ProgramSpec
from ..explorer.replay import ReplayStrategy
from ..explorer.strategy import parse_schedule
from ..kernel.core import ModelUsageError
from ..kernel.fault import UNREACHABLE_NOTE, can_fail
from ..vfio import check_ablation, check_level
from .catalogue import FAULT_SWEEP_OF, SCENARIO_NAMES, SCENARIOS
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
        lines = [head, "=" * len(head)]
        for st in self.stats[:1]:
            lines.append(st.verdict_line())
        lines.append("verdict: " + self.cell())
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
            if f.injected:
                # A sweep's finding depends on its injected failure too: rerun the sweep.
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
        for st in self.stats:
            lines.append(st.render())
        if self.check is not None:
            lines.append(self.check.render())
        return "\n".join(lines)


def _check(name: str, level: str, ablation: str | None) -> None:
    if name not in SCENARIO_NAMES:
        raise ModelUsageError(f"unknown scenario {name!r}: the scenarios are {', '.join(SCENARIO_NAMES)}")
    check_level(level)
    check_ablation(ablation, level)


def _render(ex: Exploration, *, injected: str | None = None, traces: bool = True, full_trace: bool = False) -> None:
    for f in ex.findings:
        f.injected = injected
        if traces and f.events:
            f.trace = render_swimlanes(
                f.events, f.threads, last=f"{f.kind}: {f.detail.splitlines()[0]}", full=full_trace
            )


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
    jobs: int = 1,
    cluster: str | None = None,
) -> Verdict:
    """Run scenario ``name`` (a catalogue name, or a scenario function of a
    :class:`ScenarioContext`) at ``level`` and return its verdict (module docstring).

    ``jobs`` splits a depth-first search over processes, ``cluster`` (a Dask scheduler's
    address; catalogue scenarios only) over a cluster, with the serial result."""
    if callable(name):
        fn: ScenarioFn = name
        label = getattr(fn, "__name__", "scenario")
        check_level(level)
        check_ablation(ablation, level)
    else:
        _check(name, level, ablation)
        label = name
        if name == "fault_sweep":
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
            )
        if include_unreachable:
            raise ModelUsageError("include_unreachable applies to fault_sweep only")
        sc = SCENARIOS[name]
        fn = sc.fn
        noiommu = noiommu or sc.noiommu
    if bound is not None and bound < 0:
        raise ModelUsageError(f"bound must be 0 or more preemptions (or None: no bound), not {bound}")
    spec = None
    if cluster is not None:
        if callable(name):
            raise ModelUsageError("a search on a cluster names its scenario: a catalogue name, not a function")
        spec = ProgramSpec(name, level, review_fixes, ablation, noiommu)
    program = make_program(fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu)
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
    _render(ex, traces=traces, full_trace=full_trace)
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
            trace = render_swimlanes(base.sched.trace, names, last="clean", full=full_trace)
    return Verdict(
        label, level, review_fixes, ablation, ex.findings, obs, [ex.stats], trace, ex.returns(), ex.check
    )


def fault_points(level: str, *, review_fixes: bool = False, ablation: str | None = None) -> list[str]:
    """The injectable points the lifecycle passes at ``level``, in order (after setup)."""
    sc = SCENARIOS[FAULT_SWEEP_OF]
    program = make_program(sc.fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=sc.noiommu)
    res = run_once(program, judge_execution, ReplayStrategy({}))
    k = res.ctx.kernel
    base = res.ctx.data.get("fault_base", 0)
    return [p.name for p in k.fault_inject.points if p.seq > base]


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
) -> Verdict:
    """The lifecycle, once per injectable failure point with that point failed (the Nth
    injectable call of the scenario proper), each explored over the same space.

    Points that no 5.15/5.16 kernel can fail (``kernel.fault.can_fail``) are skipped unless
    ``include_unreachable``; their findings then say "unreachable in 5.15/5.16"."""
    _check("fault_sweep", level, ablation)
    sc = SCENARIOS[FAULT_SWEEP_OF]
    points = fault_points(level, review_fixes=review_fixes, ablation=ablation)
    findings: dict[tuple[str, FindingId], Finding] = {}
    stats: list[Stats] = []
    swept = 0
    for n, point in enumerate(points, start=1):  # n counts every injectable call (fail_nth)
        reachable = can_fail(point)
        if not reachable and not include_unreachable:
            continue
        swept += 1
        program = make_program(
            sc.fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=sc.noiommu, fail_nth=n
        )
        ex = explore(
            program,
            judge_execution,
            bound=bound,
            reduction=reduction,
            max_schedules=max_schedules,
            traces=traces,
            label=f"fault_sweep@{level}",
        )
        stats.append(ex.stats)
        note = "" if reachable else f", {UNREACHABLE_NOTE}"
        label = f"{point} (injectable call #{n}{note})"
        _render(ex, injected=label, traces=traces, full_trace=full_trace)
        for f in ex.findings:
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
        total.wall += st.wall
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
    )
