"""``run(name, level)``: a scenario's verdict at a level.

A verdict is the union of what the explorer found over the interleavings it ran (every one up
to the preemption bound, by default), each finding with the schedule that produced it
(shortened) and a swimlane trace of that schedule.  ``observations`` are the kernel's return
codes in the default schedule (the one with no preemption).  Nothing here knows what a level
"should" do: verdicts come from running the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..explorer import explore, render_swimlanes, run_once
from ..explorer.explore import Exploration, Stats
from ..explorer.strategies import ReplayStrategy, parse_schedule
from ..kernel.core import ModelUsageError
from ..vfio import check_ablation, check_level
from .catalogue import FAULT_SWEEP_OF, SCENARIO_NAMES, SCENARIOS
from .harness import describe_observations, judge_execution, make_program


@dataclass
class Finding:
    """One thing that went wrong: ``kind`` (warn, bug, use-after-free, double-free, leak,
    deadlock, lockdep, data-race), a ``detail`` naming the kernel function (and, for a WARN,
    the kernel's condition text), the ``schedule`` that produces it and its ``trace``."""

    kind: str
    detail: str
    schedule: str
    key: str
    trace: str = ""
    preemptions: int = 0
    injected: str | None = None

    def __str__(self) -> str:
        head = self.detail.splitlines()[0]
        inj = f" [with {self.injected} failed]" if self.injected else ""
        return f"{self.kind}: {head}{inj} (schedule {self.schedule})"


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

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})

    def render(self, *, traces: bool = True) -> str:
        opts = []
        if self.review_fixes:
            opts.append("review fixes")
        if self.ablation:
            opts.append(f"ablation {self.ablation}")
        head = f"{self.scenario} at {self.level}" + (f" ({', '.join(opts)})" if opts else "")
        lines = [head, "=" * len(head)]
        lines.append("verdict: " + ("clean" if self.clean else ", ".join(self.kinds())))
        if self.observations:
            lines.append("returns (default schedule): " + describe_observations(self.observations))
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
        return "\n".join(lines)


def _check(name: str, level: str, ablation: str | None) -> None:
    if name not in SCENARIO_NAMES:
        raise ModelUsageError(f"unknown scenario {name!r}: the scenarios are {', '.join(SCENARIO_NAMES)}")
    check_level(level)
    check_ablation(ablation, level)


def _convert(
    ex: Exploration, injected: str | None = None, traces: bool = True, full_trace: bool = False
) -> list[Finding]:
    out = []
    for f in ex.findings:
        trace = (
            render_swimlanes(f.trace, f.threads, last=f"{f.kind}: {f.detail.splitlines()[0]}", full=full_trace)
            if traces
            else ""
        )
        key = f.key if injected is None else f"{injected}|{f.key}"
        out.append(Finding(f.kind, f.detail, f.schedule, key, trace, f.preemptions, injected))
    return out


def run(
    name: str,
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    bound: int = 2,
    mode: str = "dfs",
    seed: int = 0,
    runs: int = 200,
    replay: str | None = None,
    traces: bool = True,
    full_trace: bool = False,
    reduction: bool = True,
    max_schedules: int = 20_000,
    progress: bool = False,
) -> Verdict:
    """Run scenario ``name`` at ``level`` and return its verdict (see the module docstring)."""
    _check(name, level, ablation)
    if name == "fault_sweep":
        return run_fault_sweep(
            level, review_fixes=review_fixes, ablation=ablation, traces=traces, full_trace=full_trace
        )
    if bound < 0:
        raise ModelUsageError(f"bound must be 0 or more preemptions, not {bound}")
    sc = SCENARIOS[name]
    program = make_program(sc.fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=sc.noiommu)
    ex = explore(
        program,
        judge_execution,
        mode=mode,
        bound=bound,
        seed=seed,
        runs=runs,
        replay=replay,
        traces=traces,
        reduction=reduction,
        max_schedules=max_schedules,
        progress=progress,
        label=f"{name}@{level}",
    )
    findings = _convert(ex, traces=traces, full_trace=full_trace)
    # The default schedule: its return codes and, when clean, its trace.
    base = run_once(program, judge_execution, ReplayStrategy(parse_schedule(replay or "-")), trace=traces)
    ctx: Any = base.ctx.data.get("ctx")
    obs = dict(ctx.observations) if ctx is not None else {}
    trace = ""
    if traces:
        if findings:
            trace = findings[0].trace
        else:
            names = [t.name for t in base.sched.threads]
            trace = render_swimlanes(base.sched.trace, names, last="clean", full=full_trace)
    return Verdict(name, level, review_fixes, ablation, findings, obs, [ex.stats], trace)


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
    bound: int = 1,
) -> Verdict:
    """The lifecycle, once per injectable failure point with that point failed (the Nth
    injectable call of the scenario proper), each explored up to ``bound`` preemptions."""
    _check("fault_sweep", level, ablation)
    sc = SCENARIOS[FAULT_SWEEP_OF]
    points = fault_points(level, review_fixes=review_fixes, ablation=ablation)
    findings: dict[str, Finding] = {}
    stats: list[Stats] = []
    for n, point in enumerate(points, start=1):
        program = make_program(
            sc.fn, level, review_fixes=review_fixes, ablation=ablation, noiommu=sc.noiommu, fail_nth=n
        )
        ex = explore(program, judge_execution, bound=bound, traces=traces, label=f"fault_sweep@{level}")
        stats.append(ex.stats)
        label = f"{point} (injectable call #{n})"
        for f in _convert(ex, injected=label, traces=traces, full_trace=full_trace):
            findings.setdefault(f.key, f)
    total = Stats(mode=f"fault sweep: {len(points)} points, bound {bound}")
    for st in stats:
        total.schedules += st.schedules
        total.distinct += st.distinct
        total.buggy += st.buggy
        total.points_total += st.points_total
        total.points_max = max(total.points_max, st.points_max)
        total.points_min = st.points_min if total.points_min == 0 else min(total.points_min, st.points_min)
        total.wall += st.wall
    total.exhausted = all(st.exhausted for st in stats)
    total.bound = bound
    flist = sorted(findings.values(), key=lambda f: (f.kind, f.key))
    return Verdict(
        "fault_sweep",
        level,
        review_fixes,
        ablation,
        flist,
        {"points_swept": [len(points)]},
        [total],
        flist[0].trace if flist else "",
    )
