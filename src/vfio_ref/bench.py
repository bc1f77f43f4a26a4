"""``vfio-ref bench``: run the benchmark suite and write a Markdown report.

The suite is the pytest-benchmark files under ``benchmarks/`` of a source checkout; it runs
in this process (``pytest.main``) and leaves its results in a JSON file, from which the
report is rendered:

* one table per hot path, the levels as columns, each figure with its ratio to a floor
  measured in the same run (absolute times drift on shared machines; ratios much less);
* the goals of issues 5 and 13, each with its figure, its floor, the ratio and whether it is met;
* with the ``plot`` extra (matplotlib), a PNG of lookup cost against the number of groups,
  one line per level, next to the report.

Figures are the fastest round of each benchmark (the round least disturbed by other load),
per operation unless a table says otherwise.  Each benchmark says where its figure goes
through ``extra_info["report"]`` (see ``benchmarks/_bench.py``); the rendering here knows
nothing about the benchmarks beyond those tags and the goal keys below, so it can be tested
on a synthetic JSON document.

pytest and pytest-benchmark come with the ``dev`` extra; matplotlib with ``plot``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import LEVELS
from .kernel.core import ModelUsageError

DEFAULT_OUT = "benchmarks/REPORT.md"
QUICK_ENV = "VFIO_REF_BENCH_QUICK"
# The report benchmark's row when it runs the report at its default settings (a full run);
# issue 13's 20 s goal is judged on that row only.
REPORT_AT_DEFAULTS = "vfio-ref report --jobs 2"

# Tables in reading order (by title prefix); tables not listed follow, in run order.
TABLE_ORDER = (
    "Primitives",
    "Lookup",
    "Open path",
    "Group create",
    "Lifecycle",
    "IDA",
    "Explorer: one scheduling point",
    "Explorer: issue 4",
    "Explorer: each concurrent",
    "Explorer: schedules until",
    "vfio-ref report",
)


# --------------------------------------------------------------------------------------------
# Reading pytest-benchmark's JSON


@dataclass(frozen=True)
class Entry:
    """One tagged benchmark: where it goes in the report and its fastest round."""

    name: str
    table: str
    row: str
    col: str
    key: str | None
    floor: str | None
    per: int
    show: str
    note: str
    x: float | None
    best: float  # seconds, fastest round of one call
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_op(self) -> float:
        return self.best / self.per

    @property
    def shown(self) -> float:
        return self.best if self.show == "total" else self.per_op


@dataclass(frozen=True)
class Floor:
    key: str
    label: str
    per_op: float  # seconds
    name: str


@dataclass
class Results:
    entries: list[Entry]
    floors: dict[str, Floor]
    untagged: list[str]

    def by_key(self) -> dict[str, Entry]:
        return {e.key: e for e in self.entries if e.key is not None}

    def ratio(self, e: Entry) -> float | None:
        """``e``'s per-operation time over its floor's, or None without a floor."""
        fl = self.floors.get(e.floor) if e.floor is not None else None
        if fl is None or fl.per_op <= 0:
            return None
        return e.per_op / fl.per_op


def parse(data: dict[str, Any]) -> Results:
    """The tagged entries and floors of a pytest-benchmark JSON document."""
    entries: list[Entry] = []
    floors: dict[str, Floor] = {}
    untagged: list[str] = []
    for b in data.get("benchmarks", []):
        info = (b.get("extra_info") or {}).get("report")
        stats = b.get("stats") or {}
        best = stats.get("min")
        name = str(b.get("name", "?"))
        if not isinstance(info, dict) or not isinstance(best, (int, float)):
            untagged.append(name)
            continue
        per = max(1, int(info.get("per", 1)))
        if "floor_of" in info:
            key = str(info["floor_of"])
            fl = Floor(key, str(info.get("label", key)), float(best) / per, name)
            if key not in floors or fl.per_op < floors[key].per_op:
                floors[key] = fl
            continue
        x = info.get("x")
        extra = {k: v for k, v in (b.get("extra_info") or {}).items() if k != "report"}
        entries.append(
            Entry(
                name=name,
                table=str(info.get("table", "Other")),
                row=str(info.get("row", name)),
                col=str(info.get("col", "")),
                key=None if info.get("key") is None else str(info["key"]),
                floor=None if info.get("floor") is None else str(info["floor"]),
                per=per,
                show=str(info.get("show", "op")),
                note=str(info.get("note", "")),
                x=None if x is None else float(x),
                best=float(best),
                extra=extra,
            )
        )
    return Results(entries, floors, untagged)


# --------------------------------------------------------------------------------------------
# The paired benchmarks' statistic


def order_balanced_ratio(ratios: Sequence[float]) -> float:
    """The ratio of a pair of variants timed in turn, from each round's ratio (model / floor),
    the order swapped every round: round 0 times the model first, round 1 the floor first,
    and so on.

    Whatever runs first in a round pays for the caches the collection before it left cold
    (measured: the lifecycle at p5 took 760 µs first after ``gc.collect()``, then 486, 449,
    429 µs; the same calls, no page faults).  So the rounds' ratios fall in two clusters, one
    per order (1.7x and 0.7x for KASAN on against off), and their median lands anywhere in
    the gap between them: 1.0-1.26x between runs of the same code.  Here each two rounds
    in turn, one of each order, give the geometric mean of their ratios, in which a
    penalty that scales the first run cancels; the result is the median of those.  An odd
    last round is left out; one round alone is returned as it is (a smoke run).

    O(n log n) in the number of rounds.
    """
    if not ratios:
        raise ValueError("order_balanced_ratio: no rounds")
    if any(not r > 0 or math.isinf(r) for r in ratios):
        raise ValueError(f"order_balanced_ratio: a round's ratio must be positive and finite: {list(ratios)}")
    if len(ratios) == 1:
        return ratios[0]
    pairs = [math.sqrt(ratios[i] * ratios[i + 1]) for i in range(0, len(ratios) - 1, 2)]
    return statistics.median(pairs)


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_time(seconds: float) -> str:
    """A duration with a unit chosen for it: '85 ns', '1.23 µs', '45.6 ms', '2.31 s'."""
    if seconds < 0 or math.isnan(seconds):
        return "?"
    for unit, scale in (("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3)):
        v = seconds / scale
        if v < 999.5:
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    if r < 10:
        return f"{r:.2f}x"
    if r < 1000:
        return f"{r:.1f}x"
    return f"{r:.1e}x".replace("e+0", "e").replace("e+", "e")


def _level_rank(col: str) -> tuple[int, str]:
    base = col.split("+", 1)[0]
    if col == "":
        return (-1, col)
    if base in LEVELS:
        return (LEVELS.index(base), col)
    return (len(LEVELS), col)


def _table_rank(title: str, first_seen: int) -> tuple[int, int]:
    for i, prefix in enumerate(TABLE_ORDER):
        if title.startswith(prefix):
            return (i, first_seen)
    return (len(TABLE_ORDER), first_seen)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(res: Results, title: str, entries: Sequence[Entry]) -> list[str]:
    """One hot path's table: rows x columns (levels), 'figure (ratio)' per cell."""
    rows: list[str] = []
    cols: list[str] = []
    for e in entries:
        if e.row not in rows:
            rows.append(e.row)
        if e.col not in cols:
            cols.append(e.col)
    cols.sort(key=_level_rank)
    cells: dict[tuple[str, str], Entry] = {(e.row, e.col): e for e in entries}
    head = ["", "floor", *[c or "model" for c in cols]]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        in_row = [cells[(r, c)] for c in cols if (r, c) in cells]
        fkeys = {e.floor for e in in_row}
        if all(_paired(e) is not None for e in in_row):
            floor_cell = "in each cell, timed in turn"
        elif len(fkeys) == 1 and None not in fkeys:
            fk = next(iter(fkeys))
            assert fk is not None
            fl = res.floors.get(fk)
            floor_cell = fmt_time(fl.per_op) if fl is not None else "not run"
        elif fkeys == {None}:
            floor_cell = "none"
        else:
            floor_cell = "per cell"
        out = [_md_escape(r), floor_cell]
        for c in cols:
            ce = cells.get((r, c))
            if ce is None:
                out.append("")
                continue
            pair = _paired(ce)
            if pair is not None:
                # The ratio first (order-balanced over the rounds), then the fastest of each side.
                ratio, m, f, label = pair
                cell = f"{fmt_ratio(ratio)}<br>{fmt_time(m)} against {_md_escape(label)} {fmt_time(f)}"
            else:
                cell = f"{fmt_time(ce.shown)} ({fmt_ratio(res.ratio(ce))})"
                if ce.note:
                    cell += f"<br>{_md_escape(ce.note)}"
            out.append(cell)
        lines.append("| " + " | ".join(out) + " |")
    slope = _slopes(res, entries)
    if slope:
        lines += ["", slope]
    lines.append("")
    return lines


def _slopes(res: Results, entries: Sequence[Entry]) -> str:
    """For a table with an abscissa: the cost of one more x between its two largest values,
    per column, and the same for the floors."""
    by_col: dict[str, dict[float, Entry]] = {}
    for e in entries:
        if e.x is not None:
            by_col.setdefault(e.col, {})[e.x] = e
    parts = []
    floor_part = ""
    span = ""
    for col in sorted(by_col, key=_level_rank):
        pts = by_col[col]
        if len(pts) < 2:
            continue
        x1, x2 = sorted(pts)[-2:]
        a, b = pts[x1], pts[x2]
        parts.append(f"{col or 'model'} {fmt_time((b.per_op - a.per_op) / (x2 - x1))}")
        span = f"{x1:g} to {x2:g}"
        if not floor_part and a.floor in res.floors and b.floor in res.floors:
            fa, fb = res.floors[a.floor or ""], res.floors[b.floor or ""]
            floor_part = f"; floor {fmt_time((fb.per_op - fa.per_op) / (x2 - x1))}"
    if not parts:
        return ""
    return f"Slope (cost of one more entry, {span}): " + ", ".join(parts) + floor_part + "."


# --------------------------------------------------------------------------------------------
# Goals (issues 5 and 13)


@dataclass(frozen=True)
class GoalResult:
    goal: str
    figure: str
    floor: str
    ratio: float | None
    limit: str
    met: bool | None  # None: not measured in this run


def _ratio_goal(
    name: str, keys: dict[str, Entry], res: Results, fig_key: str, floor_key: str, limit: float, what: str
) -> GoalResult:
    e = keys.get(fig_key)
    if e is None:
        return GoalResult(name, "not run", what, None, f"<= {limit:g}x", None)
    fl = res.floors.get(floor_key)
    fe = keys.get(floor_key)
    floor_t = fl.per_op if fl is not None else (fe.per_op if fe is not None else None)
    if floor_t is None or floor_t <= 0:
        return GoalResult(name, fmt_time(e.per_op), f"{what}: not run", None, f"<= {limit:g}x", None)
    r = e.per_op / floor_t
    return GoalResult(name, fmt_time(e.per_op), f"{what} {fmt_time(floor_t)}", r, f"<= {limit:g}x", r <= limit)


def _worst_level_goal(name: str, keys: dict[str, Entry], fig: str, floor: str, limit: float, what: str) -> GoalResult:
    """The worst level's ratio of ``fig`` over ``floor`` (both key templates with {level})."""
    worst: tuple[float, str, Entry, Entry] | None = None
    for lv in LEVELS:
        a, b = keys.get(fig.format(level=lv)), keys.get(floor.format(level=lv))
        if a is None or b is None or b.per_op <= 0:
            continue
        r = a.per_op / b.per_op
        if worst is None or r > worst[0]:
            worst = (r, lv, a, b)
    if worst is None:
        return GoalResult(name, "not run", what, None, f"<= {limit:g}x", None)
    r, lv, fig_e, floor_e = worst
    return GoalResult(
        f"{name} (worst level: {lv})",
        fmt_time(fig_e.per_op),
        f"{what} {fmt_time(floor_e.per_op)}",
        r,
        f"<= {limit:g}x",
        r <= limit,
    )


def goals(res: Results) -> list[GoalResult]:
    """Issue 5's goals, from one run's figures (and issue 4's two, for reference); the hook's,
    the poisoning's and the point's from bench_paired.py's pairs where they ran."""
    k = res.by_key()
    hook_name = "scheduling hook: lifecycle (free-running) vs the same with the hook stubbed out"
    slab_name = "slab poisoning: lifecycle (free-running) vs the same with kasan=False"
    out = [
        _ratio_goal(
            "refcount inc + dec_and_test vs a bare Lock round trip", k, res, "refcount", "floor:lock", 3, "Lock"
        ),
        _paired_goal(hook_name, k, [(f"paired:hook@{lv}", lv) for lv in LEVELS], 1.05)
        or _worst_level_goal(hook_name, k, "lifecycle-as-is@{level}", "lifecycle-nohook@{level}", 1.05, "stubbed"),
        _paired_goal(slab_name, k, [(f"paired:kasan@{lv}", lv) for lv in LEVELS], 1.05)
        or _worst_level_goal(slab_name, k, "lifecycle-as-is@{level}", "lifecycle-nokasan@{level}", 1.05, "kasan off"),
        _ratio_goal("IDA alloc + free with 10**6 ids in use vs 10**3", k, res, "ida@1e6", "ida@1e3", 2, "at 1e3"),
        _paired_goal("one explorer scheduling point (with a switch) vs a bare greenlet switch", k,
                     [("paired:point", "")], 20)
        or _ratio_goal(
            "one explorer scheduling point (with a switch) vs a bare greenlet switch",
            k,
            res,
            "sched-point-switch",
            "floor:greenlet",
            20,
            "greenlet switch",
        ),
    ]
    # Create + destroy: every level within 1.5x of the fastest.
    creates = {lv: k[f"create@{lv}"] for lv in LEVELS if f"create@{lv}" in k}
    if creates:
        fast_lv = min(creates, key=lambda lv: creates[lv].per_op)
        slow_lv = max(creates, key=lambda lv: creates[lv].per_op)
        r = creates[slow_lv].per_op / creates[fast_lv].per_op
        out.append(
            GoalResult(
                f"group create + destroy: slowest level ({slow_lv}) vs fastest ({fast_lv})",
                fmt_time(creates[slow_lv].per_op),
                f"{fast_lv} {fmt_time(creates[fast_lv].per_op)}",
                r,
                "<= 1.5x",
                r <= 1.5,
            )
        )
    else:
        out.append(GoalResult("group create + destroy: slowest level vs fastest", "not run", "", None, "<= 1.5x", None))
    # Issue 4, for reference: the toy's search rate and the report's wall time.
    for key, how in (("toy", "restricted sleep sets"), ("toy-plain", "plain DFS")):
        toy = k.get(key)
        if toy is not None and "schedules" in toy.extra and toy.best > 0:
            rate = float(toy.extra["schedules"]) / toy.best
            out.append(
                GoalResult(
                    f"issue 4: toy (2 threads x 20 locked steps) schedules per second at bound 2, {how}",
                    f"{rate:,.0f}/s",
                    "",
                    None,
                    ">= 10,000/s",
                    rate >= 10_000,
                )
            )
    rep = k.get("report")
    if rep is not None:
        out.append(GoalResult(f"issue 4: `{rep.row}` wall time", fmt_time(rep.best), "", None, "< 60 s", rep.best < 60))
    return out + issue13_goals(res)


def _speedup_goal(name: str, par: Entry | None, ser: Entry | None, limit: float) -> GoalResult:
    """``ser`` over ``par`` (two runs of the same work): at least ``limit``."""
    if par is None or ser is None or par.best <= 0:
        return GoalResult(name, "not run", "", None, f">= {limit:g}x", None)
    r = ser.best / par.best
    return GoalResult(name, f"{r:.2f}x", f"{fmt_time(par.best)} against {fmt_time(ser.best)}", r, f">= {limit:g}x",
                      r >= limit)


def _paired(e: Entry | None) -> tuple[float, float, float, str] | None:
    """A paired benchmark's ratio (order-balanced over its rounds), its two fastest figures
    (seconds per operation) and its floor's label."""
    p = e.extra.get("paired") if e is not None else None
    if not isinstance(p, dict):
        return None
    r, m, f = p.get("ratio"), p.get("model"), p.get("floor")
    if not isinstance(r, (int, float)) or not isinstance(m, (int, float)) or not isinstance(f, (int, float)):
        return None
    return float(r), float(m), float(f), str(p.get("floor_label", "floor"))


def _paired_goal(
    name: str, k: dict[str, Entry], keys: list[tuple[str, str]], limit: float, *, at_least: bool = False
) -> GoalResult | None:
    """The worst of the paired figures ``keys`` ((key, level or "")), or None when none ran:
    the highest ratio against a ceiling, the lowest against a floor (``at_least``, a
    speed-up)."""
    worst: tuple[float, str, float, float, str] | None = None
    for key, lv in keys:
        p = _paired(k.get(key))
        if p is not None and (worst is None or (p[0] < worst[0] if at_least else p[0] > worst[0])):
            worst = (p[0], lv, p[1], p[2], p[3])
    if worst is None:
        return None
    r, lv, m, f, label = worst
    where = f" (worst level: {lv})" if lv else ""
    return GoalResult(f"{name}{where}", fmt_time(m), f"{label} {fmt_time(f)}; timed in turn, order-balanced ratio", r,
                      f">= {limit:g}x" if at_least else f"<= {limit:g}x", r >= limit if at_least else r <= limit)


def issue13_goals(res: Results) -> list[GoalResult]:
    """Issue 13's goals: two cores used, the hot paths near their floors, the report's budget.
    A ratio comes from benchmarks/bench_paired.py (the figure and its floor timed in turn)
    where that ran, else from the two figures of the other modules."""
    k = res.by_key()
    kasan_name = "issue 13: KASAN-like poisoning: lifecycle (free-running) vs the same with kasan=False"
    point_name = "issue 13: one explorer scheduling point (with a switch) vs a bare greenlet switch"
    split_name = "issue 13: one depth-first search over 2 processes, throughput against the same search in one"
    report_name = "issue 13: `vfio-ref report` with --jobs 2, throughput against --jobs 1"
    out = [
        _paired_goal(split_name, k, [("paired:split", "")], 1.8, at_least=True)
        or _speedup_goal(split_name, k.get("split:2"), k.get("split:1"), 1.8),
        _paired_goal(report_name, k, [("paired:report", "")], 1.8, at_least=True)
        or _speedup_goal(report_name, k.get("report"), k.get("report-serial"), 1.8),
        _paired_goal(kasan_name, k, [(f"paired:kasan@{lv}", lv) for lv in LEVELS], 1.10)
        or _worst_level_goal(kasan_name, k, "lifecycle-as-is@{level}", "lifecycle-nokasan@{level}", 1.10, "kasan off"),
        _paired_goal(point_name, k, [("paired:point", "")], 3)
        or _ratio_goal(point_name, k, res, "sched-point-switch", "floor:greenlet", 3, "greenlet switch"),
    ]
    # The walk: per entry with 1,024 groups alive (the whole lookup over 1,024) against the
    # bare scan of 1,024 entries, at the worst level.
    name = "issue 13: group-list walk per entry, 1,024 groups (get + put amortised), vs a bare list scan"
    walk = _paired_goal(name, k, [(f"paired:walk@{lv}", lv) for lv in LEVELS], 3)
    scan = res.floors.get("floor:scan:1024")
    walks = [(lv, k[f"lookup:1024@{lv}"]) for lv in LEVELS if f"lookup:1024@{lv}" in k]
    if walk is not None:
        out.append(walk)
    elif scan is None or scan.per_op <= 0 or not walks:
        out.append(GoalResult(name, "not run", "bare scan", None, "<= 3x", None))
    else:
        lv, e = max(walks, key=lambda w: w[1].per_op)
        r = e.per_op / scan.per_op
        out.append(GoalResult(f"{name} (worst level: {lv})", fmt_time(e.per_op / 1024),
                              f"bare scan {fmt_time(scan.per_op / 1024)}", r, "<= 3x", r <= 3))
    # The reduced search's bookkeeping: per schedule, against the plain search, on the toy.
    red, plain = k.get("toy"), k.get("toy-plain")
    name = "issue 13: toy, reduced search per schedule vs plain depth-first search"
    toy = _paired_goal(name, k, [("paired:toy", "")], 1.3)
    if toy is not None:
        out.append(toy)
    elif red is None or plain is None or not red.extra.get("schedules") or not plain.extra.get("schedules"):
        out.append(GoalResult(name, "not run", "plain", None, "<= 1.3x", None))
    else:
        a = red.best / float(red.extra["schedules"])
        b = plain.best / float(plain.extra["schedules"])
        out.append(GoalResult(name, fmt_time(a), f"plain {fmt_time(b)}", a / b, "<= 1.3x", a / b <= 1.3))
    ser = k.get("report-serial")
    rep = k.get("report")
    if rep is not None:
        against = f"--jobs 1: {fmt_time(ser.best)}" if ser is not None else "--jobs 1: not run"
        # The goal is the report at its default settings; a narrower one (the quick run's p1
        # and p5) is shown for its figure, neither met nor missed.
        default = rep.row == REPORT_AT_DEFAULTS
        if not default:
            against += "; not the default report: the goal is not judged"
        out.append(GoalResult(f"issue 13: `{rep.row}` wall time", fmt_time(rep.best), against, None, "< 20 s",
                              rep.best < 20 if default else None))
    else:
        out.append(GoalResult("issue 13: `vfio-ref report --jobs 2` wall time", "not run", "", None, "< 20 s", None))
    return out


# --------------------------------------------------------------------------------------------
# The report


def render_report(
    data: dict[str, Any],
    *,
    command: str,
    wall: float | None = None,
    plot: str | None = None,
    plot_note: str = "",
) -> str:
    """The Markdown report of one pytest-benchmark JSON document."""
    res = parse(data)
    lines = ["# vfio_ref benchmark report", "", f"Produced by: `{command}`", ""]
    mi = data.get("machine_info") or {}
    when = data.get("datetime", "")
    cpu = (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or "?"
    py = f"{mi.get('python_implementation', 'Python')} {mi.get('python_version', '?')}"
    took = f", {fmt_time(wall)} in all." if wall else "."
    lines.append(f"Run {when} on {mi.get('node', '?')} ({cpu}; {py}){took}")
    lines += [
        "",
        "Every figure is the fastest round of its benchmark (the least disturbed by other load), per "
        "operation unless the row says otherwise, and beside it, in parentheses, its ratio to the floor "
        "of its row, measured in the same run: the floors are the cheapest Python the same work could "
        "cost (a bare `threading.Lock` round trip, a bare list scan, a bare greenlet switch), so the "
        "ratios hold when absolute times drift.  Levels p3 and p4 run with the fix agreed in review "
        "(`+fix`): as posted they free the group they create."
        + (" The garbage collector was off while timing." if _gc_off(data) else ""),
        "",
        "## Goals",
        "",
        "| goal | figure | against | ratio | limit | met? |",
        "|---|---|---|---|---|---|",
    ]
    for g in goals(res):
        met = "n/a" if g.met is None else ("yes" if g.met else "**no**")
        ratio = fmt_ratio(g.ratio) if g.ratio is not None else ""
        lines.append(f"| {_md_escape(g.goal)} | {g.figure} | {g.floor} | {ratio} | {g.limit} | {met} |")
    lines += ["", "## Hot paths", ""]
    tables: dict[str, list[Entry]] = {}
    for e in res.entries:
        tables.setdefault(e.table, []).append(e)
    order = sorted(enumerate(tables), key=lambda it: _table_rank(it[1], it[0]))
    for _, title in order:
        lines += render_table(res, title, tables[title])
        if plot and title.startswith("Lookup"):
            lines += [f"![lookup cost vs number of groups]({plot})", ""]
        elif plot_note and title.startswith("Lookup"):
            lines += [plot_note, ""]
    if res.floors:
        lines += ["## Floors", "", "| floor | what | per operation |", "|---|---|---|"]
        for key in sorted(res.floors):
            fl = res.floors[key]
            lines.append(f"| `{key}` | {_md_escape(fl.label)} | {fmt_time(fl.per_op)} |")
        lines.append("")
    if res.untagged:
        lines += [f"Untagged benchmarks (in the JSON only): {', '.join(res.untagged)}.", ""]
    return "\n".join(lines)


def _gc_off(data: dict[str, Any]) -> bool:
    bs = data.get("benchmarks") or []
    return bool(bs) and all(bool((b.get("options") or {}).get("disable_gc")) for b in bs)


def plot_lookup(data: dict[str, Any], path: str) -> bool:
    """A PNG of lookup cost vs number of groups, one line per level (and the floor).
    False when matplotlib (the ``plot`` extra) is not installed or there is nothing to plot."""
    try:
        mpl = importlib.import_module("matplotlib")
    except ImportError:
        return False
    mpl.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    res = parse(data)
    series: dict[str, list[tuple[float, float]]] = {}
    floor: dict[float, float] = {}
    for e in res.entries:
        if e.table.startswith("Lookup") and e.x is not None:
            series.setdefault(e.col, []).append((e.x, e.per_op * 1e6))
            fl = res.floors.get(e.floor or "")
            if fl is not None:
                floor[e.x] = fl.per_op * 1e6
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for col in sorted(series, key=_level_rank):
        pts = sorted(series[col])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=col)
    if floor:
        xs = sorted(floor)
        ax.plot(xs, [floor[x] for x in xs], linestyle="--", color="grey", label="floor: list scan")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vfio groups alive")
    ax.set_ylabel("vfio_group_get_from_iommu + vfio_group_put (µs)")
    ax.set_title("Lookup cost vs number of groups")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Running the suite


def find_benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout: under the working directory or one of its
    parents, else beside the package's source tree (an editable install)."""
    cands = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    for c in cands:
        d = c / "benchmarks"
        if d.is_dir() and any(d.glob("bench_*.py")):
            return d
    raise ModelUsageError(
        "vfio-ref bench: no benchmarks/ directory with bench_*.py found; run it from a source checkout"
    )


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_suite(bench_dir: Path, json_path: str, *, quick: bool) -> int:
    """Run the benchmarks with pytest-benchmark, results to ``json_path``; pytest's exit code."""
    try:
        pytest = importlib.import_module("pytest")
        importlib.import_module("pytest_benchmark")
    except ImportError:
        raise ModelUsageError("vfio-ref bench needs pytest and pytest-benchmark: pip install 'vfio-ref[dev]'") from None
    args = [
        str(bench_dir),
        "-p",
        "no:cacheprovider",
        "-o",
        "python_files=bench_*.py",
        f"--rootdir={bench_dir.parent}",
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        "-q",
        "--benchmark-quiet",
    ]
    if quick:
        args += ["--benchmark-max-time=0.05", "--benchmark-min-rounds=3", "--benchmark-warmup=off"]
    else:
        args += ["--benchmark-max-time=0.5", "--benchmark-min-rounds=5"]
    # Benchmark modules read the quick switch when imported: make pytest import them afresh.
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if f and Path(f).parent == bench_dir:
            del sys.modules[name]
    with _env(QUICK_ENV, "1" if quick else "0"):
        return int(pytest.main(args))


def check_out(out: str) -> Path:
    """The report's path, checked before anything is measured: it must name a file (not a
    directory) that can be created or overwritten, and so must the plot beside it.  A
    ModelUsageError says what is wrong with it."""
    what = f"--out {out!r}"
    if not out or out.endswith(("/", os.sep)):
        raise ModelUsageError(
            f"{what} names a directory; give the report's file name, e.g. {(out or './') + 'REPORT.md'!r}"
        )
    path = Path(out)
    if path.name in ("", ".", "..") or path.is_dir():
        raise ModelUsageError(
            f"{what} is a directory; give the report's file name, e.g. {os.path.join(out, 'REPORT.md')!r}"
        )
    png = path.with_name(path.stem + "-lookup.png")
    if png.is_dir():
        raise ModelUsageError(f"{what}: the plot goes beside the report, but {str(png)!r} is a directory")
    for p in (path, png):
        if p.exists() and not os.access(p, os.W_OK):
            raise ModelUsageError(f"{what}: {str(p)!r} cannot be overwritten (no write permission)")
    # The first ancestor that exists must be a directory we can create entries in (the
    # missing ones are made when the report is written).
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ModelUsageError(f"{what}: {str(anc)!r} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ModelUsageError(f"{what}: cannot create files in {str(anc)!r} (no write permission)")
    return path


# Everything from this heading on is measured by hand (same-run ratios of things the suite
# does not time); a new run of the suite keeps it.
BY_HAND = "## Measured by hand"


def kept_by_hand(path: Path) -> str:
    """The part of an existing report from its BY_HAND heading on ("" when it has none)."""
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    i = old.find("\n" + BY_HAND)
    return old[i + 1 :].rstrip("\n") + "\n" if i >= 0 else ""


def main(*, quick: bool, out: str) -> int:
    """Run the suite (``quick``: about a minute) and write the Markdown report to ``out``
    (checked first, so that a bad path costs nothing)."""
    out_path = check_out(out)
    bench_dir = find_benchmarks_dir()
    command = "vfio-ref bench" + (" --quick" if quick else "") + (f" --out {out}" if out != DEFAULT_OUT else "")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vfio-ref-bench-") as tmp:
        json_path = os.path.join(tmp, "benchmarks.json")
        rc = run_suite(bench_dir, json_path, quick=quick)
        if not os.path.exists(json_path):
            raise ModelUsageError(f"vfio-ref bench: the benchmark run failed (pytest exit code {rc})")
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    wall = time.perf_counter() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    png = out_path.with_name(out_path.stem + "-lookup.png")
    plotted = plot_lookup(data, str(png))
    text = render_report(
        data,
        command=command,
        wall=wall,
        plot=png.name if plotted else None,
        plot_note="" if plotted else "(Install the `plot` extra, `pip install 'vfio-ref[plot]'`, for a plot.)",
    )
    kept = kept_by_hand(out_path)
    out_path.write_text(text + "\n" + (f"\n{kept}" if kept else ""), encoding="utf-8")
    res = parse(data)
    gl = goals(res)
    missed = [g.goal for g in gl if g.met is False]
    print(f"wrote {out_path}" + (f" and {png}" if plotted else "") + f" ({len(res.entries)} figures, {wall:.0f} s)")
    if missed:
        print("goals missed: " + "; ".join(missed), file=sys.stderr)
    if rc != 0:
        print(f"vfio-ref bench: some benchmarks failed (pytest exit code {rc})", file=sys.stderr)
        return 1
    return 0
