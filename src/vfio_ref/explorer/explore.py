"""The interleaving explorer: run a program under every schedule up to a bound, or randomly.

A *program* is a function of an :class:`Execution`: it builds what it needs on
``ctx.kernel`` (a fresh simulated kernel for every schedule), spawns threads with
``ctx.spawn`` and waits for them with ``ctx.join``.  A *judge* turns a finished execution
into findings, each with a stable key.  The explorer returns every distinct finding with the
first schedule that produced it, shortened to the fewest deviations that still produce it,
and a swimlane trace of that schedule.

Modes:

* systematic (default): depth-first over the choice points with a preemption bound
  (default 2) and sleep sets, so interleavings that only reorder independent operations are
  not run twice.  ``reduction=False`` runs the plain bounded search.  Each finding's schedule
  is then shrunk to a 1-minimal set of deviations.
* random: PCT with a seed; run ``runs`` schedules.
* replay: run exactly one schedule string.

Statistics follow Coyote's: schedules run, distinct, buggy, scheduling points min/avg/max,
whether the bounded space was exhausted, and wall time.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..kernel.core import ALL_CAPS, Kernel
from .scheduler import (
    ControlledScheduler,
    DeadlockInfo,
    ScheduleMismatch,
    SimThread,
    StepLimitExceeded,
    Strategy,
    TraceEvent,
)
from .strategies import (
    DfsStrategy,
    Node,
    PctStrategy,
    ReplayStrategy,
    SleepBlocked,
    backtrack,
    deviations,
    format_schedule,
    parse_schedule,
)


class Execution:
    """What a program sees: a fresh kernel, and threads it can spawn and join."""

    def __init__(self, kernel: Kernel, sched: ControlledScheduler) -> None:
        self.kernel = kernel
        self.sched = sched
        self.data: dict[str, Any] = {}

    def spawn(self, name: str, fn: Callable[[], None], *, caps: frozenset[str] = ALL_CAPS) -> SimThread:
        return self.sched.spawn(name, fn, caps=caps)

    def join(self, *threads: SimThread) -> None:
        self.sched.join(*threads)

    @property
    def deadlock(self) -> DeadlockInfo | None:
        return self.sched.deadlock

    @property
    def step_limit_hit(self) -> bool:
        return self.sched.step_limit_hit

    @property
    def thread_names(self) -> list[str]:
        return [t.name for t in self.sched.threads]


@dataclass(frozen=True)
class RawFinding:
    """What a judge reports: a kind, a human detail, and a key that identifies it."""

    kind: str
    detail: str
    key: str


@dataclass
class Finding:
    kind: str
    detail: str
    key: str
    schedule: str
    preemptions: int
    trace: list[TraceEvent] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    count: int = 1  # schedules that produced it

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail} (schedule {self.schedule})"


@dataclass
class Stats:
    mode: str
    schedules: int = 0
    distinct: int = 0
    buggy: int = 0
    redundant: int = 0
    points_min: int = 0
    points_max: int = 0
    points_total: int = 0
    bound: int | None = None
    exhausted: bool = False
    wall: float = 0.0
    seed: int | None = None
    step_limit: int = 0

    @property
    def points_avg(self) -> float:
        return self.points_total / self.schedules if self.schedules else 0.0

    @property
    def rate(self) -> float:
        return self.schedules / self.wall if self.wall > 0 else 0.0

    def render(self) -> str:
        lines = [
            "... Exploration statistics:",
            f"..... Mode: {self.mode}"
            + (f", preemption bound {self.bound}" if self.bound is not None else "")
            + (f", seed {self.seed}" if self.seed is not None else ""),
            f"..... Explored {self.schedules} schedules: {self.distinct} distinct, "
            f"{self.redundant} cut short as redundant.",
            f"..... Found {100.0 * self.buggy / max(1, self.schedules):.1f}% buggy schedules ({self.buggy}).",
            f"..... Scheduling points per schedule: min {self.points_min}, "
            f"avg {self.points_avg:.1f}, max {self.points_max}.",
        ]
        if self.bound is not None:
            lines.append(
                "..... Bounded space "
                + (f"exhausted (complete at PB<={self.bound})." if self.exhausted else "NOT exhausted.")
            )
        if self.step_limit:
            lines.append(f"..... {self.step_limit} schedules hit the step limit.")
        lines.append(f"..... Elapsed {self.wall:.3f}s ({self.rate:.0f} schedules/s).")
        return "\n".join(lines)


@dataclass
class Exploration:
    findings: list[Finding]
    stats: Stats

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})


Program = Callable[[Execution], None]
Judge = Callable[[Execution], Sequence[RawFinding]]
KernelFactory = Callable[[ControlledScheduler], Kernel]


def _default_kernel(s: ControlledScheduler) -> Kernel:
    return Kernel(sched=s)


@dataclass
class RunResult:
    findings: list[RawFinding]
    sched: ControlledScheduler
    ctx: Execution
    redundant: bool


def run_once(
    program: Program,
    judge: Judge,
    strategy: Strategy,
    *,
    kernel_factory: KernelFactory = _default_kernel,
    trace: bool = False,
    max_steps: int = 200_000,
    on_exec: Callable[[tuple[str, int, bool], int], None] | None = None,
) -> RunResult:
    """One execution of ``program`` under ``strategy``, judged."""
    sched = ControlledScheduler(strategy, trace=trace, max_steps=max_steps)
    sched.on_exec = on_exec
    sched._slow = trace or on_exec is not None
    kernel = kernel_factory(sched)
    kernel.lean = not trace
    sched.attach(kernel)
    ctx = Execution(kernel, sched)
    redundant = False
    try:
        sched.run(lambda: program(ctx))
    except SleepBlocked:
        redundant = True
    if redundant:
        return RunResult([], sched, ctx, True)
    return RunResult(list(judge(ctx)), sched, ctx, False)


class _Collector:
    def __init__(self) -> None:
        self.by_key: dict[str, Finding] = {}

    def add(self, raws: Sequence[RawFinding], sched: ControlledScheduler) -> None:
        sch = None
        for r in raws:
            f = self.by_key.get(r.key)
            if f is None:
                if sch is None:
                    sch = format_schedule(deviations(sched))
                self.by_key[r.key] = Finding(
                    r.kind, r.detail, r.key, sch, sched.preemptions, threads=[t.name for t in sched.threads]
                )
            else:
                f.count += 1


class _Progress:
    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.t0 = time.monotonic()
        self.last = self.t0

    def tick(self, n: int, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            rate = n / (now - self.t0)
            sys.stderr.write(f"\r{self.label}: {n} schedules, {rate:.0f}/s {extra}   ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last != self.t0:
            sys.stderr.write("\n")


def _account(stats: Stats, res: RunResult) -> None:
    stats.schedules += 1
    if res.redundant:
        stats.redundant += 1
        return
    stats.distinct += 1
    n = res.sched.step_no
    stats.points_total += n
    stats.points_min = n if stats.distinct == 1 else min(stats.points_min, n)
    stats.points_max = max(stats.points_max, n)
    if res.findings:
        stats.buggy += 1
    if res.sched.step_limit_hit:
        stats.step_limit += 1


def explore(
    program: Program,
    judge: Judge,
    *,
    mode: str = "dfs",
    bound: int = 2,
    reduction: bool = True,
    max_schedules: int = 100_000,
    seed: int = 0,
    runs: int = 200,
    depth: int = 3,
    replay: str | None = None,
    kernel_factory: KernelFactory = _default_kernel,
    shrink: bool = True,
    traces: bool = True,
    progress: bool = False,
    max_steps: int = 200_000,
    label: str = "explore",
) -> Exploration:
    """Explore ``program``'s interleavings and return every distinct finding (see module doc)."""
    t0 = time.perf_counter()
    collector = _Collector()
    prog = _Progress(progress, label)
    if replay is not None:
        stats = Stats(mode="replay")
        devs = parse_schedule(replay)
        res = run_once(
            program, judge, ReplayStrategy(devs), kernel_factory=kernel_factory, max_steps=max_steps
        )
        if devs and max(devs) >= len(res.sched.choices):
            raise ScheduleMismatch(
                f"schedule does not fit: it deviates at choice point {max(devs)} but the execution "
                f"had only {len(res.sched.choices)} choice points"
            )
        _account(stats, res)
        collector.add(res.findings, res.sched)
    elif mode == "random":
        stats = Stats(mode="random (PCT)", seed=seed)
        rng = random.Random(seed)
        first = run_once(
            program, judge, ReplayStrategy({}), kernel_factory=kernel_factory, max_steps=max_steps
        )
        _account(stats, first)
        collector.add(first.findings, first.sched)
        k = max(2, len(first.sched.choices))
        for _ in range(max(0, runs - 1)):
            pct = PctStrategy(random.Random(rng.random()), depth, k)
            res = run_once(program, judge, pct, kernel_factory=kernel_factory, max_steps=max_steps)
            _account(stats, res)
            collector.add(res.findings, res.sched)
            prog.tick(stats.schedules)
    elif mode == "dfs":
        stats = Stats(mode="systematic" + (" + sleep sets + DPOR" if reduction else ""), bound=bound)
        nodes: list[Node] = []
        exhausted = True
        while True:
            dfs = DfsStrategy(nodes, bound, reduction)
            res = run_once(
                program,
                judge,
                dfs,
                kernel_factory=kernel_factory,
                max_steps=max_steps,
                on_exec=dfs.executed if reduction else None,
            )
            _account(stats, res)
            collector.add(res.findings, res.sched)
            prog.tick(stats.schedules, f"(bound {bound})")
            if not backtrack(nodes, bound):
                break
            if stats.schedules >= max_schedules:
                exhausted = False
                break
        stats.exhausted = exhausted
    else:
        raise ValueError(f"explore mode {mode!r}: expected 'dfs' or 'random'")
    prog.done()
    findings = list(collector.by_key.values())
    for f in findings:
        if shrink and f.schedule != "-":
            f.schedule = shrink_schedule(program, judge, f.key, f.schedule, kernel_factory, max_steps)
        if traces:
            res = replay_findings(program, judge, f.schedule, kernel_factory, max_steps)
            f.trace = res.sched.trace
            f.threads = [t.name for t in res.sched.threads]
            f.preemptions = res.sched.preemptions
            # The search ran lean: take the full report of the same finding from the replay.
            for r in res.findings:
                if r.key == f.key:
                    f.detail = r.detail
                    break
    stats.wall = time.perf_counter() - t0
    findings.sort(key=lambda f: (f.kind, f.key))
    return Exploration(findings, stats)


def shrink_schedule(
    program: Program,
    judge: Judge,
    key: str,
    schedule: str,
    kernel_factory: KernelFactory = _default_kernel,
    max_steps: int = 200_000,
) -> str:
    """Greedily drop deviations while the finding ``key`` still occurs (1-minimal result)."""
    devs = parse_schedule(schedule)

    def fails(d: dict[int, int]) -> bool:
        try:
            res = run_once(
                program, judge, ReplayStrategy(d), kernel_factory=kernel_factory, max_steps=max_steps
            )
        except ScheduleMismatch:
            return False
        return any(r.key == key for r in res.findings)

    changed = True
    while changed and devs:
        changed = False
        for cp in sorted(devs):
            trial = {c: t for c, t in devs.items() if c != cp}
            if fails(trial):
                devs = trial
                changed = True
                break
    return format_schedule(devs)


def replay_findings(
    program: Program,
    judge: Judge,
    schedule: str,
    kernel_factory: KernelFactory = _default_kernel,
    max_steps: int = 200_000,
) -> RunResult:
    """Run exactly ``schedule`` with tracing on."""
    return run_once(
        program,
        judge,
        ReplayStrategy(parse_schedule(schedule)),
        kernel_factory=kernel_factory,
        trace=True,
        max_steps=max_steps,
    )


__all__ = [
    "Execution",
    "Exploration",
    "Finding",
    "RawFinding",
    "RunResult",
    "ScheduleMismatch",
    "Stats",
    "StepLimitExceeded",
    "explore",
    "replay_findings",
    "run_once",
    "shrink_schedule",
]
