"""The ``vfio-ref`` command.

    vfio-ref report [--json] [--scenario S]... [--level L]... [--review-fixes] [--ablation A]
    vfio-ref explore SCENARIO --level L [--bound N | --random --seed S --runs N]
                     [--replay SCHEDULE] [--review-fixes] [--ablation A] [--no-reduction]
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
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .explorer import ScheduleMismatch
from .kernel.core import ModelUsageError

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2


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
            try:
                v = run(
                    name,
                    lv,
                    review_fixes=args.review_fixes,
                    ablation=args.ablation,
                    bound=args.bound,
                    traces=False,
                    progress=not args.json,
                )
            except OSError:
                raise  # our own output failing, not the model
            except Exception as e:  # the model raised instead of giving a verdict: this cell only
                out[name][lv] = {"clean": False, "kinds": [], "error": _describe(e), "schedules": 0}
                continue
            out[name][lv] = {"clean": v.clean, "kinds": v.kinds(), "schedules": sum(s.schedules for s in v.stats)}
    return levels, scenarios, out


def _describe(e: BaseException) -> str:
    """A model error as one message: a ModelUsageError says it all; anything else also
    needs its type (a KeyError's message is just the key)."""
    return str(e) if isinstance(e, ModelUsageError) else f"{type(e).__name__}: {e}"


def cmd_report(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    levels, scenarios, m = _matrix(args)
    wall = time.perf_counter() - t0
    errors = [(name, lv, c["error"]) for name, row in m.items() for lv, c in row.items() if "error" in c]
    if args.json:
        doc = {
            "levels": levels,
            "scenarios": {
                name: {lv: {k: v for k, v in c.items() if k != "schedules"} for lv, c in row.items()}
                for name, row in m.items()
            },
        }
        print(json.dumps(doc, indent=2))
        return _report_status(errors)
    opts = []
    if args.review_fixes:
        from .vfio import REVIEW_FIX_LEVELS

        opts.append("review fixes applied to " + "/".join(lv for lv in levels if lv in REVIEW_FIX_LEVELS))
    if args.ablation:
        opts.append(f"ablation {args.ablation}")
    title = "vfio_ref scenario report" + (f" ({'; '.join(opts)})" if opts else "")
    print(title)
    print(f"every interleaving up to {args.bound} preemptions; cells: clean, or what the checkers found")
    print()
    width = max(len(lv) for lv in levels)
    cells = {
        name: {
            lv: ("error" if "error" in c else "clean" if c["clean"] else ",".join(c["kinds"]))
            for lv, c in row.items()
        }
        for name, row in m.items()
    }
    colw = {lv: max(width, *(len(cells[n][lv]) for n in scenarios)) for lv in levels}
    namew = max(len(n) for n in scenarios)
    print(f"{'scenario':<{namew}}  " + "  ".join(f"{lv:<{colw[lv]}}" for lv in levels))
    print(f"{'-' * namew}  " + "  ".join("-" * colw[lv] for lv in levels))
    for n in scenarios:
        print(f"{n:<{namew}}  " + "  ".join(f"{cells[n][lv]:<{colw[lv]}}" for lv in levels))
    total = sum(c["schedules"] for row in m.values() for c in row.values())
    if errors:
        print()
        print("error: the model raised instead of giving a verdict (every other cell was computed):")
        for name, lv, msg in errors:
            first, *rest = msg.splitlines() or [""]
            print(f"  {name} at {lv}: {first}")
            for line in rest:
                print(f"    {line}")
    sweep_bound = _fault_sweep_bound()
    if "fault_sweep" in scenarios and args.bound != sweep_bound:
        print()
        print(
            f"fault_sweep explores each failure point at {sweep_bound} preemption"
            f"{'s' if sweep_bound != 1 else ''} (--bound {args.bound} applies to the others)."
        )
    if not args.review_fixes and {"p3", "p4"} & set(levels):
        print()
        print("p3 and p4 run as posted: vfio_create_group frees the group it returns (found in review);")
        print("--review-fixes applies the fix agreed in the thread.")
    print()
    print(f"{total} schedules explored in {wall:.1f}s.  Details: vfio-ref explore SCENARIO --level LEVEL")
    return _report_status(errors)


def _report_status(errors: list[tuple[str, str, str]]) -> int:
    if not errors:
        return EXIT_OK
    n = len(errors)
    _say(f"vfio-ref: error: {n} cell{'s' if n > 1 else ''} of the report could not be computed (see the report)")
    return EXIT_INCOMPLETE


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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that a failure to print --help or --version is reported (by
    :func:`main`) instead of being swallowed with exit status 0."""

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


def _fault_sweep_bound() -> int:
    """The preemption bound the fault sweep explores each failure point at."""
    import inspect

    from .scenarios import run_fault_sweep

    default = inspect.signature(run_fault_sweep).parameters["bound"].default
    return default if isinstance(default, int) else 1


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
        if "bound" in vars(args) and args.bound is not None and args.bound < 0:
            _refuse(f"--bound must be 0 or more preemptions, not {args.bound}")

    cmd = args.cmd
    if cmd == "report":
        bound_ok()
        levels = list(args.level or _levels())
        scenarios = list(args.scenario or SCENARIO_NAMES)
        for lv in levels:
            check_level(lv)
        for name in scenarios:
            check_scenario(name)
        no_duplicates("--level", levels, "level is one column of the report")
        no_duplicates("--scenario", scenarios, "scenario is one row of the report")
        if args.ablation is not None:
            a = get_ablation(args.ablation)
            levels = [lv for lv in levels if lv in a.levels]
            if not levels:
                _refuse(f"ablation {args.ablation!r} applies to none of the levels asked for: it applies to "
                        f"{', '.join(a.levels)}")
        review_fixes_apply(levels)
        if scenarios == ["fault_sweep"] and "bound" in given:
            _refuse(
                f"--bound does not apply to fault_sweep: it explores each failure point at "
                f"{_fault_sweep_bound()} preemption"
            )
    elif cmd == "explore":
        bound_ok()
        check_scenario(args.scenario)
        check_level(args.level)
        check_ablation(args.ablation, args.level)
        review_fixes_apply([args.level])
        if args.scenario == "fault_sweep":
            for opt in ("replay", "random", "seed", "runs", "bound", "no_reduction"):
                if opt in given:
                    _refuse(
                        f"--{opt.replace('_', '-')} does not apply to fault_sweep: it explores the lifecycle once "
                        f"per failure point, each at {_fault_sweep_bound()} preemption"
                    )
        if args.random and args.replay is not None:
            _refuse("--random and --replay exclude each other: --replay runs the one schedule it is given")
        for opt in ("seed", "runs"):
            if opt in given and not args.random:
                _refuse(f"--{opt} applies to random scheduling only: add --random, or leave --{opt} out")
        if args.runs < 1:
            _refuse(f"--runs must be 1 or more schedules, not {args.runs}")
        for opt in ("bound", "no_reduction"):
            if opt in given and (args.random or args.replay is not None):
                mode = "--random (PCT) does not" if args.random else "--replay runs one schedule and does not"
                _refuse(f"--{opt.replace('_', '-')} applies to the bounded search only: {mode} use it")
        if args.full_trace and args.no_trace:
            _refuse("--full-trace and --no-trace exclude each other: --full-trace shows more of the traces")
    elif cmd == "show":
        check_level(args.level)
        review_fixes_apply([args.level])
        if args.list and args.function is not None:
            _refuse(f"--list lists every function at {args.level}: give FUNCTION or --list, not both")
    elif cmd == "diff":
        check_level(args.level_a)
        check_level(args.level_b)
        review_fixes_apply([args.level_a, args.level_b])


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
