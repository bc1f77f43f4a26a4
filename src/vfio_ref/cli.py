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

Exit status:

0  done: the answer is complete.
1  the answer is incomplete: a report cell could not be computed (the model raised; the
   cell reads ``error`` and the message is listed under the matrix), the output could not
   be written (a full disk: one line on stderr; a reader that closed the pipe early, as
   ``| head`` does: silently), or vfio-ref itself failed (one line on stderr).
2  usage: a misuse (an unknown level, scenario or ablation, a meaningless combination of
   options, a schedule that does not fit) prints one line naming what was wrong and what is
   allowed; nothing is run.

No Python traceback reaches the user from inside the package (``VFIO_REF_TRACEBACK=1``
shows one for an internal failure, for a bug report).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .explorer import ScheduleMismatch
from .explorer.explore import DEFAULT_MAX_SCHEDULES
from .kernel.core import ModelUsageError

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C: what was found so far is printed, marked incomplete


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
    return n  # a negative one is refused by check_args, with the other rules


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
            [*(args.scenario or ()), *(args.scenario_file or ())] or None,
            args.level,
            review_fixes=args.review_fixes,
            ablation=args.ablation,
            bound=args.bound,
            max_schedules=args.max_schedules,
            jobs=args.jobs if args.jobs is not None else default_jobs(),
            check_reduction=args.check_reduction,
            findings=args.findings,
            coverage=args.coverage,
            on_cell=tick,
            cluster=args.cluster,
        )
    except KeyboardInterrupt:
        if progress:
            sys.stderr.write("\n")
        _say("vfio-ref: interrupted: the report was not finished")
        return EXIT_INTERRUPTED
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
    return _report_status(len(rep.errors))


def _report_status(n: int) -> int:
    if not n:
        return EXIT_OK
    _say(f"vfio-ref: error: {n} cell{'s' if n > 1 else ''} of the report could not be computed (see the report)")
    return EXIT_INCOMPLETE


def _scenario_arg(text: str) -> Any:
    """A catalogue name, or FILE.py:FUNCTION (a scenario function written as docs/EXPLORER.md shows)."""
    from .scenarios.user import is_scenario_file, load_scenario

    return load_scenario(text) if is_scenario_file(text) else text


def _default_explore_jobs(args: argparse.Namespace) -> int:
    """Every core for a search that splits (a depth-first search: bounded, or plain; a
    random sample; fault_sweep's points); one process for the others (the unbounded reduced
    search, --replay), for --coverage (it traces this process) and on a cluster."""
    from .report import default_jobs

    if not _search_splits(args) or args.coverage or args.cluster is not None:
        return 1
    return default_jobs()


def _search_splits(args: argparse.Namespace) -> bool:
    """Whether explore's search is one depth-first search (bounded, or plain), one random
    sample or a fault sweep (its points, each searched whole), the kinds --jobs and
    --cluster split: not the unbounded reduced search or --replay."""
    if args.scenario == "fault_sweep" or args.random:
        return True
    unbounded_reduced = args.bound is None and not args.no_reduction
    return not (args.replay is not None or unbounded_reduced)


def cmd_explore(args: argparse.Namespace) -> int:
    from .report import finding_json, swept_json
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
        include_unreachable=args.include_unreachable,
        fail=args.fail or (),
        chains=args.chains,
        coverage=args.coverage,
        jobs=args.jobs if args.jobs is not None else _default_explore_jobs(args),
        cluster=args.cluster,
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
            "review_fixes": v.review_fixes,
            "ablation": v.ablation,
            "injected": list(v.injected),
            "findings": [finding_json(f) for f in v.findings],
        }
        if v.swept:
            doc["swept"] = [swept_json(sp) for sp in v.swept]
        if v.coverage is not None:
            doc["coverage"] = v.coverage.to_json()
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
        _say("vfio-ref: interrupted: the search above is incomplete")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _level_cls(level: str, review_fixes: bool) -> Any:
    from .vfio import level_class

    return level_class(level, review_fixes)


def _variant(text: str, args: argparse.Namespace) -> Any:
    """LEVEL[+fix][+ABLATION], with --review-fixes / --ablation applying too."""
    from .vfio.source import parse_variant

    return parse_variant(text, review_fixes=args.review_fixes, ablation=getattr(args, "ablation", None))


def cmd_show(args: argparse.Namespace) -> int:
    from .vfio.source import kernel_functions, show, substrate_switch

    v = _variant(args.level, args)
    cls = v.cls()
    if args.list or args.function is None:
        print(f"functions of vfio.c modelled at {v.spelling}:")
        for name in cls.function_names():
            print(f"  {name}")
        print(f"structs at {v.spelling}: " + ", ".join(f"struct {s}" for s in sorted(cls.structs())))
        names = sorted(kernel_functions())
        print(f"the simulated kernel and the platform ({len(names)} functions, the same at every level):")
        print("  " + " ".join(names))
        sw = substrate_switch(v)
        if sw is not None:
            print()
            print(sw.rstrip())
        return 0
    print(show(v, args.function).rstrip())
    sw = substrate_switch(v)
    if sw is not None and args.function in ("cdev_device_add", "cdev_device_del", "cdev_add", "cdev_put",
                                           "iommu_group_register_notifier", "vfio_create_group"):
        print()
        print(sw.rstrip())
    return 0


def _body(src: str) -> list[str]:
    lines = src.splitlines(keepends=True)
    return lines[1:] if lines and lines[0].startswith("# ") else lines


def cmd_diff(args: argparse.Namespace) -> int:
    from .vfio.source import diff_names, substrate_switch

    va = _variant(args.level_a, args)
    vb = _variant(args.level_b, args)
    a, b = va.cls(), vb.cls()
    sa, sb = a.structs(), b.structs()
    changed = 0
    for name in diff_names(va, vb):
        ra, rb = a.resolve(name), b.resolve(name)
        src_a = _body(a.source_of(name)) if ra is not None else []
        src_b = _body(b.source_of(name)) if rb is not None else []
        if src_a == src_b:
            continue
        changed += 1
        label = f"struct {name}" if name in sa or name in sb else name
        print(f"=== {label}: " + ("added" if not src_a else "removed" if not src_b else "changed"))
        sys.stdout.writelines(
            difflib.unified_diff(src_a, src_b, fromfile=f"{va.spelling}/{label}", tofile=f"{vb.spelling}/{label}")
        )
        print()
    for v, other in ((va, vb), (vb, va)):
        sw = substrate_switch(v)
        if sw is not None and substrate_switch(other) != sw:
            changed += 1
            print(f"=== {v.spelling} switches the simulated kernel:")
            print(sw.rstrip())
            print()
    print(f"{changed} function(s) or struct(s) differ between {va.spelling} and {vb.spelling}.")
    if changed == 0 and va == vb:
        print("(the same variant on both sides: spell the review fix as LEVEL+fix, an ablation as LEVEL+NAME)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "faults":
        return _list_faults(args)
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


def _list_faults(args: argparse.Namespace) -> int:
    from .scenarios import reached_points
    from .scenarios.catalogue import FAULT_SWEEP_OF

    scenario = _scenario_arg(args.scenario) if args.scenario else FAULT_SWEEP_OF
    label = args.scenario or FAULT_SWEEP_OF
    pts = reached_points(scenario, args.level, review_fixes=args.review_fixes, ablation=args.ablation)
    print(f"fault points {label} reaches at {args.level} after begin() (default schedule), in order:")
    w = max([len(p.name) for p in pts] + [5])
    for p in pts:
        can = "can fail" if p.reachable else "cannot fail in 5.15/5.16"
        print(f"  {p.name:<{w}}  x{p.calls}  first injectable call #{p.first}  {can}: {p.why}")
    if not pts:
        print("  (none)")
    print(f"fail one: vfio-ref explore {label} --level {args.level} --fail POINT[:N]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        bench = importlib.import_module("vfio_ref.bench")
    except ModuleNotFoundError:
        raise ModelUsageError("the benchmark suite is not part of this build") from None
    return int(bench.main(quick=args.quick, out=args.out))


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that a failure to print --help or --version is reported (by
    :func:`main`) instead of being swallowed with exit status 0."""

    def error(self, message: str) -> Any:
        """A bad option value: one line naming it, exit status 2 (as every other misuse)."""
        self.exit(EXIT_USAGE, f"vfio-ref: error: {message}\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        if not message:
            return
        file = file or sys.stderr
        if file is sys.stderr:  # a usage error: its status (2) matters more than its text
            with contextlib.suppress(OSError, ValueError):
                file.write(message)
        else:
            file.write(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vfio-ref",
        description="Executable reference model of the VFIO group lifecycle (Linux 5.15 -> 5.16).",
    )
    p.add_argument("--version", action="version", version=f"vfio-ref {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("report", help="the scenario x level matrix")
    r.add_argument("--json", action="store_true", help="print the matrix as JSON")
    r.add_argument("--findings", action="store_true", help="with --json: every finding of every cell")
    r.add_argument("--scenario", action="append", help="only this scenario (repeatable)")
    r.add_argument(
        "--scenario-file", action="append", metavar="FILE.py:FUNCTION",
        help="a row for your own scenario (repeatable; without --scenario, only these rows)",
    )
    r.add_argument("--level", action="append", help="only this level (repeatable)")
    r.add_argument("--review-fixes", action="store_true", help="apply the fix agreed in review to p3/p4")
    r.add_argument("--ablation", help="remove one design decision (see `vfio-ref list ablations`)")
    r.add_argument(
        "--bound",
        type=_bound,
        default="auto",
        help="preemption bound: N, 'none' (every interleaving), or 'auto' (default: unbounded where it "
        "finishes within its budget, else 1)",
    )
    r.add_argument(
        "--max-schedules", type=_count, default=DEFAULT_MAX_SCHEDULES,
        help=f"stop each search after this many schedules (default {DEFAULT_MAX_SCHEDULES}; 'none': no cap)",
    )
    r.add_argument("--jobs", type=_jobs, default=None, help="worker processes (default: every core)")
    r.add_argument("--cluster", metavar="ADDRESS", help="compute the cells on this Dask scheduler (tcp://host:port)")
    r.add_argument(
        "--check-reduction", action="store_true", help="also run the plain search of each cell and compare"
    )
    r.add_argument(
        "--coverage", action="store_true",
        help="a coverage table: the vfio.c functions and branches each cell's schedules reached (slower)",
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
    e.add_argument(
        "--jobs", type=_jobs, default=None,
        help="split a depth-first search, a --random sample or fault_sweep's points over this many processes "
        "(same result; default: every core when the search is one that splits, else 1)",
    )
    e.add_argument(
        "--cluster", metavar="ADDRESS",
        help="split a depth-first search, a --random sample or fault_sweep's points over this Dask scheduler's "
        "workers",
    )
    e.add_argument("--random", action="store_true", help="PCT random scheduling instead of a systematic search")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--runs", type=int, default=200)
    e.add_argument("--replay", help="run exactly this schedule (as printed with a finding)")
    e.add_argument("--review-fixes", action="store_true")
    e.add_argument("--ablation")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-trace", action="store_true", help="omit the swimlane traces")
    e.add_argument(
        "--full-trace", action="store_true",
        help="show the platform's setup and the driver-core traffic in the traces too",
    )
    e.add_argument("--chains", action="store_true", help="print each step's whole call chain in the traces")
    e.add_argument(
        "--coverage", action="store_true",
        help="say which modelled vfio.c functions and branches the explored schedules reached (slower)",
    )
    e.add_argument(
        "--fail", action="append", metavar="POINT[:N]",
        help="fail this fault point (every call, or its Nth call after the scenario's begin()); repeatable; "
        "`vfio-ref list faults --level L --scenario S` lists the points",
    )
    e.add_argument(
        "--no-reduction", action="store_true", help="plain depth-first search, without sleep sets and DPOR"
    )
    e.add_argument(
        "--check-reduction", action="store_true", help="also run the plain search and compare the outcomes"
    )
    e.add_argument(
        "--include-unreachable",
        action="store_true",
        help="fault_sweep: also fail the points no 5.15/5.16 kernel can fail (their findings say so)",
    )
    e.set_defaults(fn=cmd_explore)

    s = sub.add_parser(
        "show", help="the effective source of a function or struct of vfio.c at a level, or of the simulated kernel"
    )
    s.add_argument("level", help="LEVEL, LEVEL+fix (the review fix) or LEVEL+ABLATION")
    s.add_argument("function", nargs="?")
    s.add_argument("--list", action="store_true", help="list what is modelled at the level")
    s.add_argument("--review-fixes", action="store_true")
    s.add_argument("--ablation", help="show the level with this ablation (see `vfio-ref list ablations`)")
    s.set_defaults(fn=cmd_show)

    d = sub.add_parser("diff", help="what changed between two levels, function by function")
    d.add_argument("level_a", help="LEVEL, LEVEL+fix (the review fix) or LEVEL+ABLATION")
    d.add_argument("level_b", help="LEVEL, LEVEL+fix (the review fix) or LEVEL+ABLATION")
    d.add_argument("--review-fixes", action="store_true", help="apply the review fixes on both sides")
    d.set_defaults(fn=cmd_diff)

    li = sub.add_parser("list", help="list scenarios, levels, ablations, or the fault points a scenario reaches")
    li.add_argument("what", choices=["scenarios", "levels", "ablations", "faults"])
    li.add_argument("--level", help="list faults: at this level")
    li.add_argument("--scenario", help="list faults: of this scenario or FILE.py:FUNCTION (default: lifecycle)")
    li.add_argument("--review-fixes", action="store_true", help="list faults: with the review fixes")
    li.add_argument("--ablation", help="list faults: with this ablation")
    li.set_defaults(fn=cmd_list)

    b = sub.add_parser("bench", help="run the benchmark suite and write a Markdown report")
    b.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    b.add_argument("--out", default="benchmarks/REPORT.md")
    b.set_defaults(fn=cmd_bench)
    return p


# --------------------------------------------------------------------------------------------
# Options: what was given, and which combinations mean something


def _given_options(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options given on the command line (defaults left out), so that
    a check can tell ``--bound 2`` typed from the default 2.  Parses ``argv`` again with every
    default suppressed; options added to :func:`build_parser` later are covered too."""
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"cmd", "fn"}


def _refuse(rule: str) -> None:
    raise ModelUsageError(rule)


def _is_scenario_file(text: str) -> bool:
    from .scenarios.user import is_scenario_file

    return is_scenario_file(text)


def check_args(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse, with one line naming the rule, every combination of options that would be
    accepted and then ignored or mean nothing (docs/RELIABILITY.md lists them).  Names
    (levels, scenarios, ablations) are checked here too, so that nothing runs on a bad one."""
    from .scenarios import SCENARIO_NAMES
    from .vfio import REVIEW_FIX_LEVELS, check_ablation, check_level, get_ablation

    def check_scenario(name: str) -> None:
        if name not in SCENARIO_NAMES:
            _refuse(f"unknown scenario {name!r}: the scenarios are {', '.join(SCENARIO_NAMES)}")

    def no_duplicates(option: str, values: list[str], what: str) -> None:
        seen: set[str] = set()
        for v in values:
            if v in seen:
                _refuse(f"{option} {v} is given twice: each {what}, so a repeat is more likely a typo")
            seen.add(v)

    def review_fixes_apply(levels: list[str]) -> None:
        if args.review_fixes and not set(levels) & set(REVIEW_FIX_LEVELS):
            _refuse(
                f"--review-fixes changes nothing at {', '.join(levels)}: "
                f"review fixes exist for {', '.join(REVIEW_FIX_LEVELS)} only"
            )

    def bound_ok() -> None:
        b = vars(args).get("bound")
        if isinstance(b, int) and b < 0:
            _refuse(f"--bound must be 0 or more preemptions, not {b}")

    cmd = args.cmd
    if cmd == "report":
        bound_ok()
        levels = list(args.level or _levels())
        scenarios = list(args.scenario or ([] if args.scenario_file else SCENARIO_NAMES))
        for lv in levels:
            check_level(lv)
        for name in scenarios:
            check_scenario(name)
        for spec in args.scenario_file or ():
            if not _is_scenario_file(spec):
                _refuse(f"--scenario-file {spec!r}: expected FILE.py:FUNCTION (a catalogue one goes in --scenario)")
            _scenario_arg(spec)
        no_duplicates("--scenario-file", list(args.scenario_file or ()), "scenario is one row of the report")
        no_duplicates("--level", levels, "level is one column of the report")
        no_duplicates("--scenario", scenarios, "scenario is one row of the report")
        if args.ablation is not None:
            a = get_ablation(args.ablation)
            levels = [lv for lv in levels if lv in a.levels]
            if not levels:
                _refuse(f"ablation {args.ablation!r} applies to none of the levels asked for: it applies to "
                        f"{', '.join(a.levels)}")
        review_fixes_apply(levels)
        if "findings" in given and not args.json:
            _refuse("--findings adds every finding to the JSON document: it needs --json")
    elif cmd == "explore":
        bound_ok()
        if args.bound == "auto":
            _refuse("--bound auto is for the report: explore one space, --bound N or --bound none")
        if not _is_scenario_file(args.scenario):
            check_scenario(args.scenario)
        check_level(args.level)
        check_ablation(args.ablation, args.level)
        review_fixes_apply([args.level])
        if args.scenario == "fault_sweep":
            for opt in ("replay", "random", "seed", "runs"):
                if opt in given:
                    _refuse(
                        f"--{opt.replace('_', '-')} does not apply to fault_sweep: it searches the lifecycle once "
                        "per failure point (give --bound N|none and --max-schedules, or --no-reduction)"
                    )
        if args.random and args.replay is not None:
            _refuse("--random and --replay exclude each other: --replay runs the one schedule it is given")
        for opt in ("seed", "runs"):
            if opt in given and not args.random:
                _refuse(f"--{opt} applies to random scheduling only: add --random, or leave --{opt} out")
        if args.runs < 1:
            _refuse(f"--runs must be 1 or more schedules, not {args.runs}")
        for opt in ("bound", "no_reduction", "max_schedules", "check_reduction"):
            if opt in given and (args.random or args.replay is not None):
                mode = "--random (PCT) does not" if args.random else "--replay runs one schedule and does not"
                _refuse(f"--{opt.replace('_', '-')} applies to the systematic search only: {mode} use it")
        for opt in ("jobs", "cluster"):
            if opt not in given:
                continue
            if not _search_splits(args):
                _refuse(
                    f"--{opt} splits one depth-first search (a bound, or --no-reduction), one --random sample or "
                    "fault_sweep's points: the unbounded reduced search and --replay run in one process "
                    "(report --jobs splits cells)"
                )
        if args.include_unreachable and args.scenario != "fault_sweep":
            _refuse("--include-unreachable applies to fault_sweep only: it adds failure points to the sweep")
        if args.check_reduction and args.no_reduction:
            _refuse("--check-reduction compares the reduced search with the plain one: it needs the reduction")
        if args.full_trace and args.no_trace:
            _refuse("--full-trace and --no-trace exclude each other: --full-trace shows more of the traces")
        if args.chains and (args.no_trace or args.json):
            _refuse("--chains prints call chains in the swimlanes: not with --no-trace or --json "
                    "(the JSON events carry every chain)")
        if args.fail:
            from .scenarios import parse_fail

            if args.scenario == "fault_sweep":
                _refuse("--fail does not apply to fault_sweep: it fails each point in turn")
            specs = [parse_fail(x) for x in args.fail]
            no_duplicates("--fail", [x for x, _ in specs if _ is None], "point fails every call")
    elif cmd == "show":
        _variant(args.level, args)  # refuses --review-fixes where no level has the fix
        if args.list and args.function is not None:
            _refuse(f"--list lists every function at {args.level}: give FUNCTION or --list, not both")
    elif cmd == "diff":
        _variant(args.level_a, args)  # as for show
        _variant(args.level_b, args)
    elif cmd == "list":
        if args.what == "faults":
            if args.level is None:
                _refuse("list faults needs --level LEVEL: the points a scenario reaches depend on the level")
            check_level(args.level)
            if args.scenario is not None and not _is_scenario_file(args.scenario):
                check_scenario(args.scenario)
            check_ablation(args.ablation, args.level)
            review_fixes_apply([args.level])
        else:
            for opt in ("level", "scenario", "review_fixes", "ablation"):
                if opt in given:
                    _refuse(f"--{opt.replace('_', '-')} applies to `list faults` only, not `list {args.what}`")


# --------------------------------------------------------------------------------------------
# main: one line for every failure, never a traceback


def _say(line: str) -> None:
    """One line on stderr; if even stderr cannot be written, nothing more can be said."""
    err = sys.stderr
    if err is None:  # started with stderr closed (print would fall back to stdout)
        return
    with contextlib.suppress(OSError, ValueError):
        print(line, file=err, flush=True)


def _drop_stdout() -> None:
    """Point the process's stdout at /dev/null, so that the interpreter's final flush of what
    is still buffered cannot fail again ("Exception ignored ... BrokenPipeError", exit 120).
    Only for the real stdout: a test harness's replacement is left alone."""
    out = sys.stdout
    if out is not sys.__stdout__ or out is None:
        return
    try:
        fd = out.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    os.dup2(null, fd)
    os.close(null)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args, _given_options(argv))
        return int(args.fn(args))
    except (ModelUsageError, ScheduleMismatch, ValueError) as e:
        _say(f"vfio-ref: error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("vfio-ref: interrupted")
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vfio-ref`` command; returns the exit status (see the module docstring)."""
    if sys.stdout is None:  # started with stdout closed: print() would drop everything silently
        _say("vfio-ref: error: cannot write the output: standard output is closed")
        return EXIT_INCOMPLETE
    try:
        try:
            return _run(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # while a failure can still be reported
    except BrokenPipeError:
        _drop_stdout()  # the reader wants no more: stop quietly
        return EXIT_INCOMPLETE
    except OSError as e:
        _drop_stdout()
        if e.filename:
            _say(f"vfio-ref: error: {e.filename}: {e.strerror or e}")
        else:
            _say(f"vfio-ref: error: cannot write the output: {e.strerror or e}")
        return EXIT_INCOMPLETE
    except Exception as e:
        if os.environ.get("VFIO_REF_TRACEBACK"):
            raise
        _say(f"vfio-ref: internal error: {type(e).__name__}: {e} (a bug in vfio-ref; VFIO_REF_TRACEBACK=1 shows where)")
        return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
