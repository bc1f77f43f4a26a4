"""The unbounded search (source-DPOR, no preemption bound) on every concurrent catalogue
scenario at every level: does it finish, in how many schedules and how long.

Run: ``python benchmarks/unbounded_table.py [--cap N] [--jobs N]``; prints a Markdown table
(docs/EXPLORER.md and benchmarks/REPORT.md carry the one measured here).  Cells run in a
process pool (one search per process); the wall times are each search's own, measured
while the other processes ran, so on a loaded machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

from vfio_ref import LEVELS
from vfio_ref.scenarios import run
from vfio_ref.scenarios.catalogue import SCENARIOS

# Two threads or more at some level: the two-thread scenarios, and one whose base-level
# kworker makes it concurrent.
NAMES = (*(n for n, s in SCENARIOS.items() if s.threads >= 2), "notifier_left_registered")
FIXED = ("p3", "p4")  # also with the review fixes (the as-posted create bug ends those fast)


def _cell(job: tuple[str, str, bool, int]) -> tuple[str, str, bool, int, bool, float, list[str]]:
    name, level, fixes, cap = job
    t0 = time.perf_counter()
    v = run(name, level, review_fixes=fixes, bound=None, max_schedules=cap, traces=False)
    wall = time.perf_counter() - t0
    return name, level, fixes, sum(s.schedules for s in v.stats), v.complete, wall, v.kinds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=5000, help="schedules per search before it is called unfinished")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    levels = [(lv, False) for lv in LEVELS] + [(lv, True) for lv in FIXED]
    jobs = [(n, lv, fx, args.cap) for n in NAMES for lv, fx in levels]
    results = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for name, level, fixes, sched, done, wall, kinds in pool.map(_cell, jobs):
            results[name, level, fixes] = (sched, done, wall, kinds)
    cols = [f"{lv}{'+fix' if fx else ''}" for lv, fx in levels]
    print(f"| scenario | {' | '.join(cols)} |")
    print(f"| --- | {' | '.join('---' for _ in cols)} |")
    for n in NAMES:
        cells = []
        for lv, fx in levels:
            sched, done, wall, kinds = results[n, lv, fx]
            what = ",".join(kinds) or "clean"
            cells.append(f"{sched:,}, {wall:.1f} s, {what}" if done else f"> {sched:,} ({wall:.0f} s): unfinished")
        print(f"| {n} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
