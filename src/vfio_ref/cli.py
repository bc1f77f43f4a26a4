"""The ``vfio-ref`` command.

    vfio-ref report [--json] [--scenario S]... [--level L]... [--review-fixes] [--ablation A]
    vfio-ref explore SCENARIO --level L [--bound N | --random --seed S --runs N]
                     [--replay SCHEDULE] [--review-fixes] [--ablation A] [--no-reduction]
    vfio-ref show LEVEL FUNCTION [--review-fixes]      (or: vfio-ref show LEVEL --list)
    vfio-ref diff LEVEL_A LEVEL_B [--review-fixes]
    vfio-ref list {scenarios,levels,ablations}
    vfio-ref bench [--quick] [--out FILE]

A misuse (an unknown level, scenario or ablation, a schedule that does not fit) prints one
line naming what was wrong and what is allowed, and exits with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .explorer import ScheduleMismatch
from .kernel.core import ModelUsageError


def _levels() -> tuple[str, ...]:
    from .vfio import LEVELS

    return LEVELS


def _matrix(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    from .scenarios import SCENARIO_NAMES, run
    from .vfio import check_level, get_ablation

    levels = list(args.level or _levels())
    for lv in levels:
        check_level(lv)
    scenarios = list(args.scenario or SCENARIO_NAMES)
    if args.ablation is not None:
        a = get_ablation(args.ablation)
        levels = [lv for lv in levels if lv in a.levels]
        if not levels:
            raise ModelUsageError(f"ablation {args.ablation!r} applies to none of the levels asked for")
    out: dict[str, dict[str, Any]] = {}
    for name in scenarios:
        out[name] = {}
        for lv in levels:
            v = run(
                name,
                lv,
                review_fixes=args.review_fixes,
                ablation=args.ablation,
                bound=args.bound,
                traces=False,
                progress=not args.json,
            )
            out[name][lv] = {"clean": v.clean, "kinds": v.kinds(), "schedules": sum(s.schedules for s in v.stats)}
    return levels, scenarios, out


def cmd_report(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    levels, scenarios, m = _matrix(args)
    wall = time.perf_counter() - t0
    if args.json:
        doc = {
            "levels": levels,
            "scenarios": {
                name: {lv: {"clean": c["clean"], "kinds": c["kinds"]} for lv, c in row.items()}
                for name, row in m.items()
            },
        }
        print(json.dumps(doc, indent=2))
        return 0
    opts = []
    if args.review_fixes:
        opts.append("review fixes applied to p3/p4")
    if args.ablation:
        opts.append(f"ablation {args.ablation}")
    title = "vfio_ref scenario report" + (f" ({'; '.join(opts)})" if opts else "")
    print(title)
    print(f"every interleaving up to {args.bound} preemptions; cells: clean, or what the checkers found")
    print()
    width = max(len(lv) for lv in levels)
    cells = {
        name: {lv: ("clean" if c["clean"] else ",".join(c["kinds"])) for lv, c in row.items()}
        for name, row in m.items()
    }
    colw = {lv: max(width, *(len(cells[n][lv]) for n in scenarios)) for lv in levels}
    namew = max(len(n) for n in scenarios)
    print(f"{'scenario':<{namew}}  " + "  ".join(f"{lv:<{colw[lv]}}" for lv in levels))
    print(f"{'-' * namew}  " + "  ".join("-" * colw[lv] for lv in levels))
    for n in scenarios:
        print(f"{n:<{namew}}  " + "  ".join(f"{cells[n][lv]:<{colw[lv]}}" for lv in levels))
    total = sum(c["schedules"] for row in m.values() for c in row.values())
    if not args.review_fixes and {"p3", "p4"} & set(levels):
        print()
        print("p3 and p4 run as posted: vfio_create_group frees the group it returns (found in review);")
        print("--review-fixes applies the fix agreed in the thread.")
    print()
    print(f"{total} schedules explored in {wall:.1f}s.  Details: vfio-ref explore SCENARIO --level LEVEL")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from .scenarios import run

    v = run(
        args.scenario,
        args.level,
        review_fixes=args.review_fixes,
        ablation=args.ablation,
        bound=args.bound,
        mode="random" if args.random else "dfs",
        seed=args.seed,
        runs=args.runs,
        replay=args.replay,
        traces=True,
        full_trace=args.full_trace,
        reduction=not args.no_reduction,
        progress=True,
    )
    print(v.render(traces=not args.no_trace))
    if not v.findings and not args.no_trace:
        print()
        print("trace of the default schedule:")
        print(v.trace)
    return 0


def _level_cls(level: str, review_fixes: bool) -> Any:
    from .vfio import level_class

    return level_class(level, review_fixes)


def cmd_show(args: argparse.Namespace) -> int:
    cls = _level_cls(args.level, args.review_fixes)
    if args.list or args.function is None:
        print(f"functions modelled at {args.level}:")
        for name in cls.function_names():
            print(f"  {name}")
        print(f"structs at {args.level}: " + ", ".join(f"struct {s}" for s in sorted(cls.structs())))
        return 0
    name = args.function.removeprefix("struct ")
    print(cls.source_of(name))
    return 0


def _body(src: str) -> list[str]:
    lines = src.splitlines(keepends=True)
    return lines[1:] if lines and lines[0].startswith("# ") else lines


def cmd_diff(args: argparse.Namespace) -> int:
    a = _level_cls(args.level_a, args.review_fixes)
    b = _level_cls(args.level_b, args.review_fixes)
    names_a = set(a.function_names()) | set(a.structs())
    names_b = set(b.function_names()) | set(b.structs())
    changed = 0
    for name in sorted(names_a | names_b):
        src_a = _body(a.source_of(name)) if name in names_a else []
        src_b = _body(b.source_of(name)) if name in names_b else []
        if src_a == src_b:
            continue
        changed += 1
        label = f"struct {name}" if name in a.structs() or name in b.structs() else name
        print(f"=== {label}: " + ("added" if not src_a else "removed" if not src_b else "changed"))
        sys.stdout.writelines(
            difflib.unified_diff(src_a, src_b, fromfile=f"{args.level_a}/{label}", tofile=f"{args.level_b}/{label}")
        )
        print()
    print(f"{changed} function(s) or struct(s) differ between {args.level_a} and {args.level_b}.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "levels":
        from .vfio import LEVEL_CLASSES, REVIEW_FIX_LEVELS

        for lv, cls in LEVEL_CLASSES.items():
            fixes = "  [review fixes available]" if lv in REVIEW_FIX_LEVELS else ""
            print(f"{lv:5s} {cls.TITLE}{fixes}")
    elif args.what == "scenarios":
        from .scenarios import SCENARIO_NAMES, SCENARIOS

        for n in SCENARIO_NAMES:
            summary = SCENARIOS[n].summary if n in SCENARIOS else "lifecycle, once per injectable failure point failed"
            print(f"{n:32s} {summary}")
    else:
        from .vfio import ablations_table

        for name, a in sorted(ablations_table().items()):
            print(f"{name:36s} [{', '.join(a.levels)}] {a.summary} (shown by {a.shows})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        bench = importlib.import_module("vfio_ref.bench")
    except ModuleNotFoundError:
        raise ModelUsageError("the benchmark suite is not part of this build") from None
    return int(bench.main(quick=args.quick, out=args.out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfio-ref",
        description="Executable reference model of the VFIO group lifecycle (Linux 5.15 -> 5.16).",
    )
    p.add_argument("--version", action="version", version=f"vfio-ref {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("report", help="the scenario x level matrix")
    r.add_argument("--json", action="store_true", help="print the matrix as JSON")
    r.add_argument("--scenario", action="append", help="only this scenario (repeatable)")
    r.add_argument("--level", action="append", help="only this level (repeatable)")
    r.add_argument("--review-fixes", action="store_true", help="apply the fix agreed in review to p3/p4")
    r.add_argument("--ablation", help="remove one design decision (see `vfio-ref list ablations`)")
    r.add_argument("--bound", type=int, default=2, help="preemption bound (default 2)")
    r.set_defaults(fn=cmd_report)

    e = sub.add_parser("explore", help="explore one scenario at one level and print each finding's trace")
    e.add_argument("scenario")
    e.add_argument("--level", required=True)
    e.add_argument("--bound", type=int, default=2)
    e.add_argument("--random", action="store_true", help="PCT random scheduling instead of bounded search")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--runs", type=int, default=200)
    e.add_argument("--replay", help="run exactly this schedule (as printed with a finding)")
    e.add_argument("--review-fixes", action="store_true")
    e.add_argument("--ablation")
    e.add_argument("--no-trace", action="store_true", help="omit the swimlane traces")
    e.add_argument("--full-trace", action="store_true", help="show the platform's setup in the traces too")
    e.add_argument(
        "--no-reduction", action="store_true", help="plain depth-first search, without sleep sets and DPOR"
    )
    e.set_defaults(fn=cmd_explore)

    s = sub.add_parser("show", help="the effective source of a modelled function or struct at a level")
    s.add_argument("level")
    s.add_argument("function", nargs="?")
    s.add_argument("--list", action="store_true", help="list what is modelled at the level")
    s.add_argument("--review-fixes", action="store_true")
    s.set_defaults(fn=cmd_show)

    d = sub.add_parser("diff", help="what changed between two levels, function by function")
    d.add_argument("level_a")
    d.add_argument("level_b")
    d.add_argument("--review-fixes", action="store_true")
    d.set_defaults(fn=cmd_diff)

    li = sub.add_parser("list", help="list scenarios, levels or ablations")
    li.add_argument("what", choices=["scenarios", "levels", "ablations"])
    li.set_defaults(fn=cmd_list)

    b = sub.add_parser("bench", help="run the benchmark suite and write a Markdown report")
    b.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    b.add_argument("--out", default="benchmarks/REPORT.md")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ModelUsageError, ScheduleMismatch, ValueError) as e:
        print(f"vfio-ref: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
