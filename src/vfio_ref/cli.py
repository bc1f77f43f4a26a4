"""The ``vfio-ref`` command.

    vfio-ref report [--json [--findings]] [--scenario S]... [--level L]... [--review-fixes]
                    [--ablation A] [--bound N|none|auto] [--max-schedules N] [--jobs N]
                    [--check-reduction]
    vfio-ref explore SCENARIO|FILE.py:FUNCTION --level L [--bound N|none | --random --seed S
                     --runs N] [--replay SCHEDULE] [--max-schedules N] [--review-fixes]
                     [--ablation A] [--no-reduction] [--check-reduction] [--json]
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
from collections.abc import Sequence
from typing import Any

from . import __version__
from .explorer import ScheduleMismatch
from .explorer.explore import DEFAULT_MAX_SCHEDULES
from .kernel.core import ModelUsageError


def _levels() -> tuple[str, ...]:
    from .vfio import LEVELS

    return LEVELS


def _bound(text: str) -> int | str | None:
    """--bound: a number of preemptions, "none" (no bound) or "auto"."""
    t = text.strip().lower()
    if t in ("none", "unbounded"):
        return None
    if t == "auto":
        return "auto"
    try:
        n = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a bound: give a number of preemptions (0 or more), 'none' or 'auto'"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a preemption bound is 0 or more (or 'none')")
    return n


def _count(text: str) -> int | None:
    """--max-schedules: a positive number, or "none" (no cap)."""
    if text.strip().lower() == "none":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of schedules (or 'none')") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the cap is 1 schedule or more (or 'none')")
    return n


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: --jobs is 1 or more")
    return n


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, default_jobs

    progress = sys.stderr.isatty() and not args.json

    def tick(cell: Any) -> None:
        if progress:
            sys.stderr.write(f"\r{cell.scenario}@{cell.level}: {cell.text():<30}")
            sys.stderr.flush()

    try:
        rep = build_report(
            args.scenario,
            args.level,
            review_fixes=args.review_fixes,
            ablation=args.ablation,
            bound=args.bound,
            max_schedules=args.max_schedules,
            jobs=args.jobs if args.jobs is not None else default_jobs(),
            check_reduction=args.check_reduction,
            findings=args.findings,
            on_cell=tick,
        )
    except KeyboardInterrupt:
        if progress:
            sys.stderr.write("\n")
        print("vfio-ref: interrupted: the report was not finished", file=sys.stderr)
        return 130
    if progress:
        sys.stderr.write("\r" + " " * 79 + "\r")
    if args.json:
        print(json.dumps(rep.to_json(findings=args.findings), indent=2))
    else:
        print(rep.render())
        if args.check_reduction:
            for c in rep.cells.values():
                if c.verdict is not None and c.verdict.check is not None and not c.verdict.check.agree:
                    print(f"{c.scenario} at {c.level}: {c.verdict.check.render()}")
    return 1 if rep.errors else 0


def _scenario_arg(text: str) -> Any:
    """A catalogue name, or FILE.py:FUNCTION (a scenario function written as docs/EXPLORER.md shows)."""
    if ":" not in text or not text.split(":", 1)[0].endswith(".py"):
        return text
    path, fn_name = text.rsplit(":", 1)
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise ModelUsageError(f"scenario file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"vfio_ref_user_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ModelUsageError(f"cannot load {path!r} as a Python file")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise ModelUsageError(f"loading {path!r} failed: {type(e).__name__}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))
        raise ModelUsageError(f"{path!r} has no function {fn_name!r} (it defines: {', '.join(names) or 'none'})")
    return fn


def cmd_explore(args: argparse.Namespace) -> int:
    from .report import finding_json
    from .scenarios import run

    scenario = _scenario_arg(args.scenario)
    v = run(
        scenario,
        args.level,
        review_fixes=args.review_fixes,
        ablation=args.ablation,
        bound=args.bound,
        random=args.random,
        seed=args.seed,
        runs=args.runs,
        replay=args.replay,
        traces=True,
        full_trace=args.full_trace,
        reduction=not args.no_reduction,
        progress=not args.json,
        max_schedules=args.max_schedules,
        check_reduction=args.check_reduction,
    )
    interrupted = any(s.interrupted for s in v.stats)
    if args.json:
        doc = {
            "scenario": v.scenario,
            "level": v.level,
            "space": v.space,
            "complete": v.complete,
            "clean": v.clean,
            "kinds": v.kinds(),
            "schedules": sum(s.schedules for s in v.stats),
            "returns": v.returns,
            "findings": [finding_json(f) for f in v.findings],
        }
        if v.check is not None:
            doc["reduction_check"] = {"agree": v.check.agree, "plain_complete": v.check.plain.complete}
        print(json.dumps(doc, indent=2))
    else:
        print(v.render(traces=not args.no_trace))
        if not v.findings and not args.no_trace:
            print()
            print("trace of the default schedule:")
            print(v.trace)
    if interrupted:
        print("vfio-ref: interrupted: the search above is incomplete", file=sys.stderr)
        return 130
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
    r.add_argument("--findings", action="store_true", help="with --json: every finding of every cell")
    r.add_argument("--scenario", action="append", help="only this scenario (repeatable)")
    r.add_argument("--level", action="append", help="only this level (repeatable)")
    r.add_argument("--review-fixes", action="store_true", help="apply the fix agreed in review to p3/p4")
    r.add_argument("--ablation", help="remove one design decision (see `vfio-ref list ablations`)")
    r.add_argument(
        "--bound",
        type=_bound,
        default="auto",
        help="preemption bound: N, 'none' (every interleaving), or 'auto' (default: unbounded where it "
        "finishes within its budget, else 2)",
    )
    r.add_argument(
        "--max-schedules", type=_count, default=DEFAULT_MAX_SCHEDULES,
        help=f"stop each search after this many schedules (default {DEFAULT_MAX_SCHEDULES}; 'none': no cap)",
    )
    r.add_argument("--jobs", type=_jobs, default=None, help="worker processes (default: every core)")
    r.add_argument(
        "--check-reduction", action="store_true", help="also run the plain search of each cell and compare"
    )
    r.set_defaults(fn=cmd_report)

    e = sub.add_parser("explore", help="explore one scenario at one level and print each finding's trace")
    e.add_argument("scenario", help="a scenario name, or FILE.py:FUNCTION for your own")
    e.add_argument("--level", required=True)
    e.add_argument("--bound", type=_bound, default=2, help="preemption bound: N (default 2) or 'none'")
    e.add_argument(
        "--max-schedules", type=_count, default=DEFAULT_MAX_SCHEDULES,
        help=f"stop after this many schedules (default {DEFAULT_MAX_SCHEDULES}; 'none': no cap)",
    )
    e.add_argument("--random", action="store_true", help="PCT random scheduling instead of a systematic search")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--runs", type=int, default=200)
    e.add_argument("--replay", help="run exactly this schedule (as printed with a finding)")
    e.add_argument("--review-fixes", action="store_true")
    e.add_argument("--ablation")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-trace", action="store_true", help="omit the swimlane traces")
    e.add_argument("--full-trace", action="store_true", help="show the platform's setup in the traces too")
    e.add_argument(
        "--no-reduction", action="store_true", help="plain depth-first search, without sleep sets and DPOR"
    )
    e.add_argument(
        "--check-reduction", action="store_true", help="also run the plain search and compare the outcomes"
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
    except KeyboardInterrupt:
        print("vfio-ref: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
