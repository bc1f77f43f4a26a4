"""The scenario x level report: computed once here, printed by the CLI, used from Python.

``build_report()`` runs every scenario of the catalogue (or those asked for) at every level
and returns a :class:`Report` of :class:`Cell` records; ``Report.render()`` is the text
matrix and ``Report.to_json()`` the document of ``vfio-ref report --json``.

What each cell searched is stated, never implied.  With ``bound="auto"`` (the default) a cell
is searched up to AUTO_FALLBACK_BOUND preemption(s) (depth-first, restricted sleep sets), then with
no preemption bound (source-DPOR) within a budget of as many schedules as the bounded search
took (at most AUTO_BUDGET); when the unbounded search finishes, the cell shows it, and
otherwise the cell shows the bounded one, marked ``*``.  So the unbounded attempt never
costs more than the bounded search did.  (The sound searches are expensive: the base's deferred put runs on a
kworker, a third thread in every scenario; docs/EXPLORER.md has the measured table.)

A cell whose search did not exhaust its space reads ``incomplete`` (or its finding kinds
followed by "(incomplete)"), never ``clean``.  A cell whose run failed inside the model
reads ``error``, with the message listed under the matrix, and every other cell is still
computed.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .explorer.explore import DEFAULT_MAX_SCHEDULES
from .explorer.garbage import frozen_for_fork
from .kernel.core import ModelUsageError

AUTO = "auto"
AUTO_FALLBACK_BOUND = 1
# The bounded fallback runs the depth-first search with the restricted sleep sets (the
# reduction --check-reduction checks against the plain search).  Until 0.2.6 they pruned
# nothing at one preemption, because a search that spent its last preemption stopped asking
# the strategy before the step that puts the sleeper to sleep had run, and the fallback ran
# the plain search (recording costs about 15%).  Now they cut the base's kworker
# interleavings: device_fd_vs_unbind 4,614 schedules plain, 1,779 reduced; lookup_vs_last_put
# 3,292 and 2,270; notifier_vs_release 2,357 and 1,451 (the same findings and returns).
AUTO_FALLBACK_REDUCTION = True
# In "auto" mode, the unbounded attempt's budget: the bounded search's schedule count, and
# at most this many.
AUTO_BUDGET = 200

Bound = int | None | str  # an int, None (no bound) or "auto"


@dataclass
class Cell:
    """One scenario at one level: its verdict, or the error that stopped its run."""

    scenario: str
    level: str
    verdict: Any = None  # a scenarios.Verdict
    error: str | None = None
    space: str = ""  # "all" (no bound) or "bound N"
    fallback: bool = False  # the unbounded search did not finish: this is the bounded one
    wall: float = 0.0

    @property
    def complete(self) -> bool:
        return self.verdict is not None and bool(self.verdict.complete)

    @property
    def clean(self) -> bool:
        return self.verdict is not None and bool(self.verdict.clean)

    @property
    def kinds(self) -> list[str]:
        return [] if self.verdict is None else list(self.verdict.kinds())

    @property
    def schedules(self) -> int:
        return 0 if self.verdict is None else sum(s.schedules for s in self.verdict.stats)

    def text(self) -> str:
        if self.error is not None:
            return "error"
        t: str = self.verdict.cell()
        return t + ("*" if self.fallback else "")

    def to_json(self, *, findings: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "clean": self.clean,
            "kinds": self.kinds,
            "complete": self.complete,
            "space": self.space,
            "schedules": self.schedules,
        }
        if self.error is not None:
            doc["error"] = self.error
        if findings and self.verdict is not None:
            doc["findings"] = [finding_json(f) for f in self.verdict.findings]
        cov = getattr(self.verdict, "coverage", None)
        if cov is not None:
            doc["coverage"] = cov.to_json()
        return doc

    def coverage_text(self) -> str:
        """The coverage column's cell: functions reached and branches taken ("" without)."""
        cov = getattr(self.verdict, "coverage", None)
        return "" if cov is None else str(cov.cell())


def finding_json(f: Any) -> dict[str, Any]:
    """A finding as data (the schema is docs/vfio-ref.schema.json, described in
    docs/EXPLORER.md): its kind and identity, the detail in the kernel's report shape, the
    schedule that produces it and the fault injected for it, and the steps of that schedule."""
    return {
        "kind": f.kind,
        "id": asdict(f.ident),  # kind, function, what, other
        "summary": f.detail.splitlines()[0] if f.detail else "",
        "detail": f.detail,
        "schedule": f.schedule,
        "preemptions": f.preemptions,
        "injected": f.injected,
        "count": f.count,
        "reproduced": f.reproduced,
        "threads": list(f.threads),
        "events": events_json(f.events),
    }


def swept_json(sp: Any) -> dict[str, Any]:
    """One point of a fault sweep and its verdict."""
    return {"point": sp.point, "nth": sp.nth, "reachable": sp.reachable, "verdict": sp.verdict, "kinds": list(sp.kinds)}


def events_json(events: Any) -> list[dict[str, Any]]:
    """The steps of a trace, numbered as the swimlanes number them; ``setup`` marks the
    steps that built the platform (before the scenario's ``begin()``)."""
    from .explorer.trace import SETUP_DONE

    marks = [i for i, e in enumerate(events) if e.op == SETUP_DONE]
    end = marks[-1] if marks else -1
    out = []
    n = 0
    for i, e in enumerate(events):
        if e.op == SETUP_DONE:
            continue
        n += 1
        out.append(event_json(n, e, setup=i < end))
    return out


def event_json(n: int, e: Any, *, setup: bool = False) -> dict[str, Any]:
    """One step of a finding's trace."""
    return {
        "step": n,
        "setup": setup,
        "thread": e.thread,
        "op": e.op,
        "caller": e.caller,
        "what": e.what,
        "expr": e.expr,
        "before": e.before,
        "after": e.after,
        "mark": e.mark,
        "user_call": e.user,
        "vfio": e.vfio,
        "switch": e.switch,
        "functions": list(e.functions),
    }


@dataclass
class Report:
    levels: list[str]
    scenarios: list[str]
    cells: dict[tuple[str, str], Cell]
    review_fixes: bool = False
    ablation: str | None = None
    bound: Bound = AUTO
    wall: float = 0.0
    jobs: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def cell(self, scenario: str, level: str) -> Cell:
        return self.cells[(scenario, level)]

    @property
    def errors(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.error is not None]

    def space_line(self) -> str:
        if self.bound == AUTO:
            return (
                "each cell: every interleaving (no preemption bound), or, marked *, every interleaving "
                f"up to {AUTO_FALLBACK_BOUND} preemption where the unbounded search did not finish within "
                f"the bounded one's schedule count (at most {AUTO_BUDGET})"
            )
        if self.bound is None:
            return "each cell: every interleaving (no preemption bound)"
        return f"each cell: every interleaving up to {self.bound} preemptions"

    def render(self) -> str:
        opts = []
        if self.review_fixes:
            from .vfio import REVIEW_FIX_LEVELS

            opts.append("review fixes applied to " + "/".join(lv for lv in self.levels if lv in REVIEW_FIX_LEVELS))
        if self.ablation:
            opts.append(f"ablation {self.ablation}")
        lines = ["vfio_ref scenario report" + (f" ({'; '.join(opts)})" if opts else "")]
        lines.append(self.space_line() + "; cells: clean, what the checkers found, or incomplete")
        lines.append("")
        cells = {k: c.text() for k, c in self.cells.items()}
        width = max(len(lv) for lv in self.levels)
        colw = {lv: max(width, *(len(cells[(n, lv)]) for n in self.scenarios)) for lv in self.levels}
        namew = max(len(n) for n in [*self.scenarios, "scenario"])
        lines.append(f"{'scenario':<{namew}}  " + "  ".join(f"{lv:<{colw[lv]}}" for lv in self.levels).rstrip())
        lines.append(f"{'-' * namew}  " + "  ".join("-" * colw[lv] for lv in self.levels))
        for n in self.scenarios:
            lines.append(
                f"{n:<{namew}}  " + "  ".join(f"{cells[(n, lv)]:<{colw[lv]}}" for lv in self.levels).rstrip()
            )
        if not self.review_fixes and {"p3", "p4"} & set(self.levels):
            lines.append("")
            lines.append("p3 and p4 run as posted: vfio_create_group frees the group it returns (found in review);")
            lines.append("--review-fixes applies the fix agreed in the thread.")
        if any(c.coverage_text() for c in self.cells.values()):
            lines.append("")
            lines.append("coverage: vfio.c functions reached (fn) and branches taken (br) by each cell's schedules")
            covw = {lv: max(len(lv), *(len(self.cells[(n, lv)].coverage_text()) for n in self.scenarios))
                    for lv in self.levels}
            lines.append(f"{'scenario':<{namew}}  " + "  ".join(f"{lv:<{covw[lv]}}" for lv in self.levels).rstrip())
            for n in self.scenarios:
                lines.append(
                    f"{n:<{namew}}  "
                    + "  ".join(f"{self.cells[(n, lv)].coverage_text():<{covw[lv]}}" for lv in self.levels).rstrip()
                )
        if self.errors:
            lines.append("")
            lines.append("error: the model raised instead of giving a verdict (every other cell was computed):")
            for c in self.errors:
                first, *rest = (c.error or "").splitlines() or [""]
                lines.append(f"  {c.scenario} at {c.level}: {first}")
                lines.extend(f"    {line}" for line in rest)
        total = sum(c.schedules for c in self.cells.values())
        lines.append("")
        jobs = f" with {self.jobs} jobs" if self.jobs > 1 else ""
        lines.append(
            f"{total} schedules explored in {self.wall:.1f}s{jobs}.  Details: vfio-ref explore SCENARIO --level LEVEL"
        )
        return "\n".join(lines)

    def to_json(self, *, findings: bool = False) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "space": self.space_line(),
            "scenarios": {
                n: {lv: self.cells[(n, lv)].to_json(findings=findings) for lv in self.levels} for n in self.scenarios
            },
        }


@dataclass(frozen=True)
class _Job:
    scenario: str
    level: str
    review_fixes: bool
    ablation: str | None
    bound: Bound
    max_schedules: int | None
    check_reduction: bool
    traces: bool
    coverage: bool = False


def _run_cell(job: _Job) -> Cell:
    """One cell (in this process or a worker): never raises for a failing model run."""
    from .scenarios import run
    from .scenarios.user import is_scenario_file, load_scenario

    t0 = time.perf_counter()
    cell = Cell(job.scenario, job.level)
    scenario: Any = job.scenario
    try:
        if is_scenario_file(job.scenario):
            scenario = load_scenario(job.scenario)  # loaded here: a worker process loads it too
        if job.bound == AUTO:
            # The bounded search is the reduced one (AUTO_FALLBACK_REDUCTION); --check-reduction
            # runs the plain one beside it and compares them.
            v = run(
                scenario, job.level, review_fixes=job.review_fixes, ablation=job.ablation,
                bound=AUTO_FALLBACK_BOUND, max_schedules=job.max_schedules, traces=job.traces,
                coverage=job.coverage, check_reduction=job.check_reduction,
                reduction=AUTO_FALLBACK_REDUCTION,
            )
            cell.space = f"bound {AUTO_FALLBACK_BOUND}"
            cell.fallback = True
            budget = min(AUTO_BUDGET, sum(s.schedules for s in v.stats))
            if job.max_schedules is not None:
                budget = min(budget, job.max_schedules)
            if v.complete and job.scenario != "fault_sweep":
                u = run(
                    scenario, job.level, review_fixes=job.review_fixes, ablation=job.ablation, bound=None,
                    max_schedules=budget, traces=job.traces, coverage=job.coverage,
                    check_reduction=job.check_reduction,
                )
                if u.complete:
                    v, cell.space, cell.fallback = u, "all", False
        else:
            bound = job.bound if job.bound is None or isinstance(job.bound, int) else AUTO_FALLBACK_BOUND
            v = run(
                scenario, job.level, review_fixes=job.review_fixes, ablation=job.ablation, bound=bound,
                max_schedules=job.max_schedules, traces=job.traces, coverage=job.coverage,
                check_reduction=job.check_reduction,
            )
            cell.space = "all" if bound is None else f"bound {bound}"
        cell.verdict = v
    except KeyboardInterrupt:
        raise
    except ModelUsageError as e:
        cell.error = str(e)
    except Exception as e:  # a failure inside the model: this cell reads "error", the rest go on
        cell.error = f"{type(e).__name__}: {e}"
    cell.wall = time.perf_counter() - t0
    return cell


def default_jobs() -> int:
    """Every core of this machine."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def build_report(
    scenarios: Sequence[str] | None = None,
    levels: Sequence[str] | None = None,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    bound: Bound = AUTO,
    max_schedules: int | None = DEFAULT_MAX_SCHEDULES,
    jobs: int = 1,
    check_reduction: bool = False,
    findings: bool = False,
    coverage: bool = False,
    on_cell: Callable[[Cell], None] | None = None,
    cluster: str | None = None,
) -> Report:
    """Run the matrix (see the module docstring).  ``jobs`` > 1 computes cells in that many
    worker processes, ``cluster`` (a Dask scheduler's address) on that cluster; the cells,
    and so the report, are the same as with one."""
    from .scenarios import SCENARIO_NAMES
    from .vfio import LEVELS, check_level, get_ablation

    lv = list(levels) if levels else list(LEVELS)
    for level in lv:
        check_level(level)
    from .scenarios.user import is_scenario_file, load_scenario

    sc = list(scenarios) if scenarios else list(SCENARIO_NAMES)
    for name in sc:
        if is_scenario_file(name):
            load_scenario(name)  # a missing file or function is refused before anything runs
        elif name not in SCENARIO_NAMES:
            raise ModelUsageError(f"unknown scenario {name!r}: the scenarios are {', '.join(SCENARIO_NAMES)}")
    if len(set(lv)) != len(lv) or len(set(sc)) != len(sc):
        raise ModelUsageError("a level or scenario is asked for twice: name each once")
    if ablation is not None:
        a = get_ablation(ablation)
        lv = [x for x in lv if x in a.levels]
        if not lv:
            raise ModelUsageError(f"ablation {ablation!r} applies to none of the levels asked for")
    if jobs < 1:
        raise ModelUsageError(f"--jobs must be 1 or more, not {jobs}")
    if isinstance(bound, int) and bound < 0:
        raise ModelUsageError(f"bound must be 0 or more preemptions, none, or auto, not {bound}")
    work = [
        _Job(n, level, review_fixes, ablation, bound, max_schedules, check_reduction, findings, coverage)
        for n in sc
        for level in lv
    ]
    t0 = time.perf_counter()
    cells: dict[tuple[str, str], Cell] = {}
    if cluster is not None:
        from .cluster import map_in_order

        for c in map_in_order(cluster, _run_cell, work):
            cells[(c.scenario, c.level)] = c
            if on_cell is not None:
                on_cell(c)
    elif jobs == 1 or len(work) == 1:
        for job in work:
            c = _run_cell(job)
            cells[(c.scenario, c.level)] = c
            if on_cell is not None:
                on_cell(c)
    else:
        # The biggest cells first, so that no worker is left alone with one at the end: the
        # base's (its kworker is a third thread in every scenario), then the other concurrent
        # scenarios and the fault sweep, then the rest; the catalogue's order within each.
        order = sorted(work, key=_size_rank)
        with frozen_for_fork(), concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            for c in pool.map(_run_cell, order):
                cells[(c.scenario, c.level)] = c
                if on_cell is not None:
                    on_cell(c)
    return Report(lv, sc, cells, review_fixes, ablation, bound, time.perf_counter() - t0, jobs)


def _size_rank(job: _Job) -> tuple[bool, bool]:
    """Sorts the cells that take longest first: the base's, then the concurrent scenarios'
    and the fault sweep's (a scenario file's cells are taken to be big)."""
    from .scenarios.catalogue import SCENARIOS
    from .vfio import LEVELS

    sc = SCENARIOS.get(job.scenario)
    big = sc is None or sc.threads > 1 or job.scenario == "fault_sweep"
    return (job.level != LEVELS[0], not big)
