"""The reduced search against the plain one on every concurrent catalogue scenario at every
level, over the whole bounded space (no cap): the long form of
``tests/reliability/test_differential.py::test_the_explorers_reduction_loses_no_outcome``.

Each cell runs the plain bounded search (every interleaving within the bound, split over
``--jobs`` processes) and the reduced one (restricted sleep sets), and compares their outcome
sets (return codes, finding identities, what is left allocated).  A cell's line is appended to
``--out`` (JSON lines) as soon as it is done, so an interrupted run keeps what it checked;
cells already in that file are skipped when the run starts again.  Cheapest cells first (the
base's, with their kworker thread, last).

Run: ``python benchmarks/crosscheck_table.py [--bound 2] [--jobs 1] [--out FILE]``; then
``--table`` prints the Markdown table of what the file holds (docs/RELIABILITY.md carries it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from vfio_ref import LEVELS
from vfio_ref.explorer import explore
from vfio_ref.scenarios.catalogue import SCENARIOS
from vfio_ref.scenarios.harness import judge_execution, make_program
from vfio_ref.vfio import REVIEW_FIX_LEVELS

CONCURRENT = tuple(n for n, s in SCENARIOS.items() if s.threads > 1)
# (level, scenario, review fixes): p3 and p4 with the fix agreed in review (as posted, their
# create bug ends most schedules early), then as posted; the base last (its kworker is a
# third thread); create_race last within a level.
_NAMES = sorted(CONCURRENT, key=lambda n: n == "create_race")
ORDER = [(lv, n, lv in REVIEW_FIX_LEVELS) for lv in LEVELS[1:] for n in _NAMES]
ORDER += [(lv, n, False) for lv in REVIEW_FIX_LEVELS for n in _NAMES]
ORDER += [(LEVELS[0], n, False) for n in _NAMES]


def check_cell(level: str, name: str, fixes: bool, bound: int, jobs: int) -> dict[str, object]:
    """Plain and reduced search of one cell, no cap; their outcome sets compared."""
    sc = SCENARIOS[name]
    program = make_program(sc.fn, level, review_fixes=fixes, ablation=None, noiommu=sc.noiommu)
    t0 = time.perf_counter()
    plain = explore(program, judge_execution, bound=bound, reduction=False, traces=False, shrink=False,
                    max_schedules=None, jobs=jobs)
    t1 = time.perf_counter()
    reduced = explore(program, judge_execution, bound=bound, traces=False, shrink=False, max_schedules=None)
    t2 = time.perf_counter()
    same = set(reduced.outcomes) == set(plain.outcomes)
    return {
        "scenario": name,
        "level": level,
        "review_fixes": fixes,
        "bound": bound,
        "plain_schedules": plain.stats.schedules,
        "plain_complete": plain.stats.complete,
        "plain_s": round(t1 - t0, 1),
        "reduced_schedules": reduced.stats.schedules,
        "reduced_complete": reduced.stats.complete,
        "reduced_s": round(t2 - t1, 1),
        "outcomes": len(plain.outcomes),
        "kinds": sorted({f.kind for f in plain.findings}),
        "same_outcomes": same,
        "agree": same and plain.stats.complete and reduced.stats.complete
        and reduced.stats.schedules <= plain.stats.schedules,
    }


def table(rows: list[dict[str, object]]) -> str:
    out = ["| scenario | level | plain: schedules, s | reduced: schedules, s | outcomes | agree |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fix = "+fix" if r["review_fixes"] else ""
        out.append(
            f"| {r['scenario']} | {r['level']}{fix} | {r['plain_schedules']:,}, {r['plain_s']} | "
            f"{r['reduced_schedules']:,}, {r['reduced_s']} | {r['outcomes']} | "
            f"{'yes' if r['agree'] else '**NO**'} |"
        )
    return "\n".join(out)


def _done(out: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bound", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1, help="processes for each plain search")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("crosscheck.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of --out and stop")
    ap.add_argument("--only", help="SCENARIO@LEVEL (LEVEL+fix: with the review fix): check this one cell")
    args = ap.parse_args()
    if args.table:
        rows = [r for r in _done(args.out) if r["bound"] == args.bound]
        # Level by level (with the review fix before as posted), scenarios in catalogue order.
        rows.sort(key=lambda r: (LEVELS.index(str(r["level"])), not r["review_fixes"],
                                 CONCURRENT.index(str(r["scenario"]))))
        print(table(rows))
        return
    cells = ORDER
    if args.only:
        name, _, level = args.only.partition("@")
        fixes = level.endswith("+fix")
        cells = [(level.removesuffix("+fix"), name, fixes)]
    for level, name, fixes in cells:
        # Read again before each cell: another run may share the file (one per core).
        if any((r["level"], r["scenario"], r["review_fixes"], r["bound"]) == (level, name, fixes, args.bound)
               for r in _done(args.out)):
            continue
        row = check_cell(level, name, fixes, args.bound, args.jobs)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
