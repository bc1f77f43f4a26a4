"""The interleaving explorer: run a program under every schedule of a space, or a sample.

A *program* is a function of an :class:`Execution`: it builds what it needs on
``ctx.kernel`` (a fresh simulated kernel for every schedule), spawns threads with
``ctx.spawn`` and waits for them with ``ctx.join``.  A *judge* turns a finished execution
into findings (:class:`RawFinding`), each identified by a :class:`FindingId` record.  The
explorer returns every distinct finding with the first schedule that produced it, shortened
to the fewest deviations that still produce it, and the trace of that schedule; and every
distinct *outcome* (return codes, findings, final state) with how many schedules reached it.

What is searched is decided once, by :func:`make_strategy`; the loop in :func:`explore`
knows no mode:

==================================  =============================================
arguments                           strategy and guarantee
==================================  =============================================
``replay="7:1"``                    that one schedule
``random=True, seed, runs, depth``  PCT sampling: "sampled", never complete
``bound=N, reduction=False``        every schedule with at most N preemptions
``bound=N`` (reduction on)          the same outcomes, with sleep sets restricted
                                    for the bound (fewer schedules)
``bound=None, reduction=False``     every schedule
``bound=None`` (reduction on)       source-DPOR: one schedule per class of
                                    equivalent schedules, the same outcomes
==================================  =============================================

A search stopped by ``max_schedules`` or by Ctrl-C is *incomplete*: its statistics say so
in their first line, and ``Exploration.complete`` is False.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..kernel.core import ALL_CAPS, Kernel
from .dfs import DfsStrategy
from .dpor import DporStrategy
from .garbage import collect_garbage, collecting_between_executions
from .pct import PctStrategy
from .replay import ReplayStrategy
from .scheduler import (
    ControlledScheduler,
    DeadlockInfo,
    ScheduleMismatch,
    SimThread,
    StepLimitExceeded,
    TraceEvent,
)
from .strategy import SleepBlocked, Strategy, deviations, format_schedule, parse_schedule

DEFAULT_MAX_SCHEDULES = 100_000


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


@dataclass(frozen=True, order=True)
class FindingId:
    """What makes two findings the same problem: its kind, the kernel function where it
    happened, and what went wrong there (the WARN's condition, the freed ``Type.member``
    touched, the lock classes, the racing location...).  ``other`` is the second party when
    there is one (the other access of a data race)."""

    kind: str
    function: str = ""
    what: str = ""
    other: str = ""

    @property
    def key(self) -> str:
        """A one-line spelling, for people (never parsed back)."""
        return ":".join(p for p in (self.kind, self.function, self.what, self.other) if p)


@dataclass(frozen=True)
class RawFinding:
    """What a judge reports: a kind, a human detail, and the finding's identity (a
    :class:`FindingId`; a plain string is taken as ``FindingId(kind, what=string)``)."""

    kind: str
    detail: str
    ident: FindingId

    def __init__(self, kind: str, detail: str, ident: FindingId | str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "detail", detail)
        if isinstance(ident, str):
            ident = FindingId(kind, what=ident)
        elif ident.kind != kind:
            raise ValueError(f"finding of kind {kind!r} with an identity of kind {ident.kind!r}")
        object.__setattr__(self, "ident", ident)

    @property
    def key(self) -> str:
        return self.ident.key


@dataclass
class Finding:
    """One distinct problem: ``kind`` (warn, bug, use-after-free, double-free, leak, deadlock,
    lockdep, data-race), a ``detail`` in the kernel's report shape, its identity, the
    shortened ``schedule`` that produces it, the steps of that schedule (``events``) and
    how many schedules produced it.  ``injected`` names a fault that was injected for it;
    ``fail`` is that failure as ``run(..., fail=[...])`` / ``--fail`` take it, when it can be
    asked for that way (a fault sweep's reachable points)."""

    kind: str
    detail: str
    ident: FindingId
    schedule: str
    preemptions: int
    events: list[TraceEvent] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    count: int = 1
    injected: str | None = None
    fail: str | None = None
    reproduced: bool = True
    trace: str = ""  # the swimlanes of ``events``, rendered (filled by the scenario layer)

    @property
    def key(self) -> str:
        return self.ident.key

    def __str__(self) -> str:
        head = self.detail.splitlines()[0] if self.detail else ""
        inj = f" [with {self.injected} failed]" if self.injected else ""
        return f"{self.kind}: {head}{inj} (schedule {self.schedule})"


Observations = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Outcome:
    """What one execution ended with: the kernel's return codes (``observations``), the
    identities of its findings, and the final state the program recorded."""

    observations: Observations
    findings: frozenset[FindingId]
    state: Any = None

    def returns(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.observations}

    def __repr__(self) -> str:
        # The findings in sorted order: a frozenset's own order follows its insertion
        # history, so two equal outcomes (one unpickled from a worker) could print apart.
        found = ", ".join(repr(f) for f in sorted(self.findings))
        return f"Outcome(observations={self.observations!r}, findings={{{found}}}, state={self.state!r})"


@dataclass
class OutcomeInfo:
    count: int
    schedule: str


@dataclass
class Stats:
    space: str
    schedules: int = 0
    distinct: int = 0
    buggy: int = 0
    redundant: int = 0
    points_min: int = 0
    points_max: int = 0
    points_total: int = 0
    bound: int | None = None
    complete: bool = False
    sampled: bool = False
    capped: bool = False
    interrupted: bool = False
    max_schedules: int | None = None
    wall: float = 0.0
    seed: int | None = None
    step_limit: int = 0
    # Objects a recorded step touched that never announced themselves (named on first touch,
    # in the order they were touched), and the executions that had two or more of them: there
    # a name can stand for different objects in different schedules, and the reduction,
    # which compares names across executions, cannot vouch for what it pruned.
    lazy_names: int = 0
    unstable_names: int = 0
    jobs: int = 1

    @property
    def exhausted(self) -> bool:
        """The stated space was searched to the end (same as ``complete``)."""
        return self.complete

    @property
    def points_avg(self) -> float:
        return self.points_total / self.distinct if self.distinct else 0.0

    @property
    def rate(self) -> float:
        return self.schedules / self.wall if self.wall > 0 else 0.0

    def verdict_line(self) -> str:
        """The space searched and whether it was exhausted, in one line."""
        if self.sampled:
            state = f"sampled ({self.schedules} schedules): not a complete search"
        elif self.unstable_names and not self.capped and not self.interrupted:
            state = (
                f"NOT vouched for ({self.schedules} schedules): in {self.unstable_names} of them two or "
                "more objects that never announced themselves were named on first touch, so the "
                "reduction may have pruned by names that differ between schedules; search again "
                "without the reduction"
            )
        elif self.complete:
            state = f"exhausted ({self.schedules} schedules)"
        elif self.interrupted:
            state = f"NOT exhausted: interrupted after {self.schedules} schedules"
        elif self.capped:
            state = f"NOT exhausted: stopped at the cap of {self.max_schedules} schedules"
        else:
            state = f"NOT exhausted ({self.schedules} schedules)"
        return f"Searched {self.space}: {state}."

    def render(self) -> str:
        lines = [
            "... " + self.verdict_line(),
            "... Exploration statistics:",
            f"..... Explored {self.schedules} schedules: {self.distinct} ran to the end, "
            f"{self.redundant} cut short as redundant.",
            f"..... Found {100.0 * self.buggy / max(1, self.distinct):.1f}% buggy schedules ({self.buggy}).",
            f"..... Scheduling points per schedule: min {self.points_min}, "
            f"avg {self.points_avg:.1f}, max {self.points_max}.",
        ]
        if self.seed is not None:
            lines.append(f"..... Seed {self.seed}.")
        if self.step_limit:
            lines.append(f"..... {self.step_limit} schedules hit the step limit.")
        if self.lazy_names:
            lines.append(
                f"..... {self.lazy_names} objects were named on first touch (they never announced "
                "themselves when made); "
                + (
                    f"{self.unstable_names} schedules had two or more (see the first line)."
                    if self.unstable_names
                    else "at most one per schedule, so it had one name in every schedule."
                )
            )
        jobs = f" on {self.jobs} processes" if self.jobs > 1 else ""
        lines.append(f"..... Elapsed {self.wall:.3f}s ({self.rate:.0f} schedules/s){jobs}.")
        return "\n".join(lines)


@dataclass
class ReductionCheck:
    """The plain search run beside a reduced one over the same space (``check_reduction``)."""

    plain: Stats
    only_plain: list[Outcome]
    only_reduced: list[Outcome]
    kinds_plain: list[str]
    kinds_reduced: list[str]

    @property
    def agree(self) -> bool:
        return not self.only_plain and not self.only_reduced and self.kinds_plain == self.kinds_reduced

    def render(self) -> str:
        if not self.plain.complete:
            return f"reduction check: the plain search did not finish ({self.plain.verdict_line()}): no verdict"
        if self.agree:
            return (
                f"reduction check: the plain search ({self.plain.schedules} schedules) sees the same "
                "outcomes and finding kinds"
            )
        lines = ["reduction check: DISAGREEMENT between the reduced and the plain search"]
        for o in self.only_plain:
            lines.append(f"  only the plain search: {o}")
        for o in self.only_reduced:
            lines.append(f"  only the reduced search: {o}")
        if self.kinds_plain != self.kinds_reduced:
            lines.append(f"  finding kinds: plain {self.kinds_plain}, reduced {self.kinds_reduced}")
        return "\n".join(lines)


@dataclass
class Exploration:
    findings: list[Finding]
    stats: Stats
    outcomes: dict[Outcome, OutcomeInfo] = field(default_factory=dict)
    check: ReductionCheck | None = None

    @property
    def complete(self) -> bool:
        return self.stats.complete

    @property
    def clean(self) -> bool:
        """No findings *and* the stated space was searched to the end."""
        return not self.findings and self.stats.complete

    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})

    def returns(self) -> list[dict[str, list[int]]]:
        """The return codes of each distinct outcome."""
        seen: list[dict[str, list[int]]] = []
        for o in self.outcomes:
            r = o.returns()
            if r not in seen:
                seen.append(r)
        return seen


Program = Callable[[Execution], None]
Judge = Callable[[Execution], Sequence[RawFinding]]
KernelFactory = Callable[[ControlledScheduler], Kernel]
OutcomeOf = Callable[[Execution], Any]


def _default_kernel(s: ControlledScheduler) -> Kernel:
    return Kernel(sched=s)


def default_state(exe: Execution) -> Any:
    """The final state a program recorded in ``exe.data["state"]`` (None if it did not)."""
    return exe.data.get("state")


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
    fault_points: bool = True,
) -> RunResult:
    """One execution of ``program`` under ``strategy``, judged (a redundant one is not).
    ``fault_points=False``: the kernel does not list the injectable points it passes
    (``FaultInjector.points``, what ``vfio-ref list faults`` reads); a search's executions
    never read them, and the record of each cost about 2% of a search."""
    sched = ControlledScheduler(strategy, trace=trace, max_steps=max_steps)
    kernel = kernel_factory(sched)
    kernel.lean = not trace
    if not fault_points:
        kernel.fault_inject.recording = False
    sched.attach(kernel)
    ctx = Execution(kernel, sched)
    redundant = False
    try:
        sched.run(lambda: program(ctx))
    except SleepBlocked:
        redundant = True
    strategy.end_execution(sched)
    if redundant:
        return RunResult([], sched, ctx, True)
    return RunResult(list(judge(ctx)), sched, ctx, False)


def make_strategy(
    *,
    bound: int | None = 2,
    reduction: bool = True,
    replay: str | None = None,
    random: bool = False,
    seed: int = 0,
    runs: int = 200,
    depth: int = 3,
) -> Strategy:
    """The strategy for a set of explore() options (see the module docstring)."""
    if replay is not None:
        if random:
            raise ValueError("a replay runs one given schedule: it cannot also be random")
        return ReplayStrategy(parse_schedule(replay))
    if random:
        return PctStrategy(seed, runs, depth)
    if bound is not None and bound < 0:
        raise ValueError(f"preemption bound must be 0 or more, or None (no bound), not {bound}")
    if bound is None and reduction:
        return DporStrategy()
    return DfsStrategy(bound, reduction)


class _Ticks(Protocol):
    """What the search loop tells as it goes: once per schedule, the count and the findings."""

    def tick(self, n: int, findings: int) -> None: ...


class _Progress:
    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.t0 = time.monotonic()
        self.last = self.t0
        self.shown = False

    def tick(self, n: int, findings: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            rate = n / (now - self.t0)
            # findings < 0: not known here (the parts of a split search keep their own).
            so_far = f", {findings} findings so far" if findings >= 0 else ""
            sys.stderr.write(f"\r{self.label}: {n} schedules, {rate:.0f}/s{so_far}   ")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 79 + "\r")
            sys.stderr.flush()


def _observations(exe: Execution) -> Observations:
    obs = exe.data.get("observations") or {}
    return tuple(sorted((k, tuple(v)) for k, v in obs.items()))


class _Collector:
    """Distinct findings (by identity) and outcomes, in the order first seen."""

    def __init__(self, outcome_of: OutcomeOf) -> None:
        self.by_id: dict[FindingId, Finding] = {}
        self.outcomes: dict[Outcome, OutcomeInfo] = {}
        self.outcome_of = outcome_of

    def add(self, res: RunResult) -> None:
        sched = res.sched
        sch: str | None = None
        for r in res.findings:
            f = self.by_id.get(r.ident)
            if f is None:
                if sch is None:
                    sch = format_schedule(deviations(sched.choices))
                self.by_id[r.ident] = Finding(
                    r.kind, r.detail, r.ident, sch, sched.preemptions, threads=[t.name for t in sched.threads]
                )
            else:
                f.count += 1
        o = Outcome(_observations(res.ctx), frozenset(r.ident for r in res.findings), self.outcome_of(res.ctx))
        info = self.outcomes.get(o)
        if info is None:
            if sch is None:
                sch = format_schedule(deviations(sched.choices))
            self.outcomes[o] = OutcomeInfo(1, sch)
        else:
            info.count += 1

    def merge(self, later: _Collector) -> None:
        """Add what a later part of the same search saw (first seen here stays first)."""
        for ident, f in later.by_id.items():
            mine = self.by_id.get(ident)
            if mine is None:
                self.by_id[ident] = f
            else:
                mine.count += f.count
        for o, info in later.outcomes.items():
            have = self.outcomes.get(o)
            if have is None:
                self.outcomes[o] = info
            else:
                have.count += info.count


def _account(stats: Stats, col: _Collector, res: RunResult) -> None:
    """Count one execution (and keep what it found, unless it was cut short as redundant)."""
    stats.schedules += 1
    stats.lazy_names += res.sched.lazy_names
    if res.sched.lazy_names > 1:
        stats.unstable_names += 1
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
    col.add(res)


def _search(
    program: Program,
    judge: Judge,
    strategy: Strategy,
    *,
    bound: int | None,
    max_schedules: int | None,
    kernel_factory: KernelFactory,
    max_steps: int,
    outcome_of: OutcomeOf,
    progress: _Ticks | None,
) -> tuple[Stats, _Collector]:
    """The one loop: executions until the strategy is done, the cap, or Ctrl-C (Python's
    cyclic garbage collector runs between executions, not inside them: garbage.py)."""
    stats = Stats(space=strategy.describe(), bound=bound, max_schedules=max_schedules)
    stats.sampled = isinstance(strategy, PctStrategy)
    col = _Collector(outcome_of)
    t0 = time.perf_counter()
    try:
        with collecting_between_executions() as collect:
            while strategy.new_execution():
                if max_schedules is not None and stats.schedules >= max_schedules:
                    stats.capped = True
                    break
                res = run_once(program, judge, strategy, kernel_factory=kernel_factory, max_steps=max_steps,
                               fault_points=False)
                _account(stats, col, res)
                res.sched.discard_records()
                del res  # the execution's kernel is garbage now
                if collect:
                    collect_garbage()
                if progress is not None:
                    progress.tick(stats.schedules, len(col.by_id))
    except KeyboardInterrupt:
        stats.interrupted = True
    stats.complete = (
        strategy.complete and not stats.capped and not stats.interrupted and not stats.sampled
        and not stats.unstable_names
    )
    stats.wall = time.perf_counter() - t0
    return stats, col


def explore(
    program: Program,
    judge: Judge,
    *,
    bound: int | None = 2,
    reduction: bool = True,
    max_schedules: int | None = DEFAULT_MAX_SCHEDULES,
    replay: str | None = None,
    random: bool = False,
    mode: str | None = None,
    seed: int = 0,
    runs: int = 200,
    depth: int = 3,
    kernel_factory: KernelFactory = _default_kernel,
    shrink: bool = True,
    traces: bool = True,
    progress: bool = False,
    max_steps: int = 200_000,
    label: str = "explore",
    outcome: OutcomeOf = default_state,
    check_reduction: bool = False,
    jobs: int = 1,
    cluster: str | None = None,
    program_spec: Any = None,
) -> Exploration:
    """Explore ``program``'s interleavings and return every distinct finding and outcome
    (see the module docstring).  ``mode="random"`` is the same as ``random=True``.

    ``jobs`` > 1 splits a depth-first search, or a random sample, over that many processes
    (parallel.py), with the same result; ``cluster`` (a Dask scheduler's address) sends the
    parts there instead, the program named by ``program_spec`` (a parallel.ProgramSpec); the
    other strategies (source-DPOR, a replay) run in this process."""
    if mode is not None:
        if mode not in ("dfs", "random"):
            raise ValueError(f"explore mode {mode!r}: expected 'dfs' or 'random'")
        random = random or mode == "random"
    if max_schedules is not None and max_schedules < 1:
        raise ValueError(f"max_schedules must be 1 or more (or None: no cap), not {max_schedules}")
    strategy = make_strategy(
        bound=bound, reduction=reduction, replay=replay, random=random, seed=seed, runs=runs, depth=depth
    )
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, not {jobs}")
    t0 = time.perf_counter()
    prog = _Progress(progress, label)
    split = None
    if (jobs > 1 or cluster is not None) and isinstance(strategy, (DfsStrategy, PctStrategy)):
        from .parallel import search_parallel

        split = search_parallel(
            program,
            judge,
            make=functools.partial(PctStrategy, seed, runs, depth) if random else functools.partial(
                DfsStrategy, bound, reduction
            ),
            bound=None if random else bound,
            jobs=jobs,
            max_schedules=max_schedules,
            kernel_factory=kernel_factory,
            max_steps=max_steps,
            outcome_of=outcome,
            cluster=cluster,
            spec=program_spec,
            progress=prog,
        )
    if split is not None:
        stats, col = split
    else:
        stats, col = _search(
            program,
            judge,
            strategy,
            bound=bound if replay is None and not random else None,
            max_schedules=max_schedules,
            kernel_factory=kernel_factory,
            max_steps=max_steps,
            outcome_of=outcome,
            progress=prog,
        )
    if random:
        stats.seed = seed
    prog.done()
    check = None
    if check_reduction and reduction and replay is None and not random and not stats.interrupted:
        plain_stats, plain_col = _search(
            program,
            judge,
            DfsStrategy(bound, False),
            bound=bound,
            max_schedules=max_schedules,
            kernel_factory=kernel_factory,
            max_steps=max_steps,
            outcome_of=outcome,
            progress=None,
        )
        check = compare_outcomes(plain_stats, plain_col.outcomes, col.outcomes)
    findings = list(col.by_id.values())
    if not stats.interrupted:
        for f in findings:
            finish_finding(program, judge, f, kernel_factory=kernel_factory, max_steps=max_steps, shrink=shrink,
                           traces=traces)
    stats.wall = time.perf_counter() - t0
    findings.sort(key=lambda f: (f.kind, f.ident))
    return Exploration(findings, stats, col.outcomes, check)


def compare_outcomes(
    plain: Stats, plain_outcomes: Iterable[Outcome], reduced_outcomes: Iterable[Outcome]
) -> ReductionCheck:
    ps, rs = set(plain_outcomes), set(reduced_outcomes)
    kinds_p = sorted({i.kind for o in ps for i in o.findings})
    kinds_r = sorted({i.kind for o in rs for i in o.findings})
    if not plain.complete:
        return ReductionCheck(plain, [], [], kinds_p, kinds_r)
    return ReductionCheck(
        plain, sorted(ps - rs, key=repr), sorted(rs - ps, key=repr), kinds_p, kinds_r
    )


def finish_finding(
    program: Program,
    judge: Judge,
    f: Finding,
    *,
    kernel_factory: KernelFactory = _default_kernel,
    max_steps: int = 200_000,
    shrink: bool = True,
    traces: bool = True,
) -> None:
    """Shorten ``f``'s schedule and replay it with tracing on: its events, and its detail as
    the full (non-lean) run reports it.  ``f.reproduced`` says whether the replay found it."""
    if shrink and f.schedule != "-":
        f.schedule = shrink_schedule(program, judge, f.ident, f.schedule, kernel_factory, max_steps)
    if not traces:
        return
    res = replay_findings(program, judge, f.schedule, kernel_factory, max_steps)
    f.events = res.sched.trace
    f.threads = [t.name for t in res.sched.threads]
    f.preemptions = res.sched.preemptions
    for r in res.findings:
        if r.ident == f.ident:
            f.detail = r.detail
            break
    else:
        f.reproduced = False


def shrink_schedule(
    program: Program,
    judge: Judge,
    ident: FindingId | str,
    schedule: str,
    kernel_factory: KernelFactory = _default_kernel,
    max_steps: int = 200_000,
) -> str:
    """Greedily drop deviations while the finding ``ident`` still occurs (1-minimal result)."""
    devs = parse_schedule(schedule)

    def fails(d: dict[int, int]) -> bool:
        try:
            res = run_once(
                program, judge, ReplayStrategy(d), kernel_factory=kernel_factory, max_steps=max_steps
            )
        except ScheduleMismatch:
            return False
        return any(r.ident == ident or r.key == ident for r in res.findings)

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
    "DEFAULT_MAX_SCHEDULES",
    "Execution",
    "Exploration",
    "Finding",
    "FindingId",
    "Outcome",
    "RawFinding",
    "ReductionCheck",
    "RunResult",
    "ScheduleMismatch",
    "Stats",
    "StepLimitExceeded",
    "compare_outcomes",
    "explore",
    "finish_finding",
    "make_strategy",
    "replay_findings",
    "run_once",
    "shrink_schedule",
]
