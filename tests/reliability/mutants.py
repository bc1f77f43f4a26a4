"""Hand-made mutants of issue 12's checks: each must be killed by the tests named with it.

    python tests/reliability/mutants.py [NAME-FRAGMENT ...]

Each mutant rewrites one place of the source (an exact, unique text), runs the named tests
with ``-x``, and puts the source back (also when interrupted).  A mutant that lets ``vfio-ref
bench`` run measures for real: the bench mutants take a few minutes each.  Not collected by
pytest (the name does not start with ``test_``); the results are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PY = sys.executable
MUTEX = "src/vfio_ref/kernel/mutex.py"
RC = "src/vfio_ref/kernel/refcount.py"
AT = "src/vfio_ref/kernel/atomic.py"
LV = "src/vfio_ref/vfio/level.py"
SLAB = "src/vfio_ref/kernel/slab.py"
CLI = "src/vfio_ref/cli.py"
REPORT = "src/vfio_ref/report.py"
BENCH = "src/vfio_ref/bench.py"
TM = "tests/kernel/test_mutex_lockdep.py"
TR = "tests/kernel/test_refcount.py"
TS = "tests/kernel/test_slab.py"
REF = "tests/reliability/test_refusals.py"


def k(expr):
    return f"{REF}::{expr}" if "::" not in expr else expr


Mutant = tuple[str, str, str, str, list[str]]  # name, file, exact old text, new text, tests

M: list[Mutant] = [
    # mutex.py
    (
        "M1 non-owner unlock silent (old behaviour)",
        MUTEX,
        "        if o is not t:\n            self._unlock_by_non_owner(k, t, o)\n"
        "            if o is None:\n                return  # nothing to release",
        "        if o is None:\n            return",
        [TM],
    ),
    (
        "M2 no WARN on non-owner unlock",
        MUTEX,
        '        debug_locks_warn(k, "__mutex_unlock_slowpath", "DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)")',
        "        pass",
        [TM],
    ),
    (
        "M3 non-owner unlock does not release",
        MUTEX,
        "            if o is None:\n                return  # nothing to release",
        "            return",
        [TM],
    ),
    (
        "M4 unheld unlock releases anyway",
        MUTEX,
        "            if o is None:\n                return  # nothing to release",
        "            pass",
        [TM],
    ),
    (
        "M5 every debug-locks report printed",
        MUTEX,
        '    was_on = not k.state.get("debug_locks_off") and not k.lockdep.reports',
        "    was_on = True",
        [TM],
    ),
    (
        "M6 lockdep reports do not turn debug_locks off",
        MUTEX,
        '    was_on = not k.state.get("debug_locks_off") and not k.lockdep.reports',
        '    was_on = not k.state.get("debug_locks_off")',
        [TM],
    ),
    ("M7 debug_locks never turned off", MUTEX, '    k.state["debug_locks_off"] = True\n', "", [TM]),
    (
        "M8 site: the lock primitive, not its caller",
        MUTEX,
        "f.f_code.co_filename == __file__:",
        "f.f_code.co_filename != __file__:",
        [TM],
    ),
    (
        "M9 spinlock: no 'already unlocked'",
        MUTEX,
        "        if owner is None:\n            debug_locks_warn",
        "        if owner is not None:\n            debug_locks_warn",
        [TM],
    ),
    (
        "M10 spinlock reports as a mutex",
        MUTEX,
        'def _unlock_by_non_owner(self, k: Kernel, t: Task, owner: Task | None) -> None:\n        """CONFIG_DEBUG_SP',
        'def _unlock_by_non_owner_x(self, k: Kernel, t: Task, owner: Task | None) -> None:\n        """CONFIG_DEBUG_SP',
        [TM],
    ),
    # refcount.py
    (
        "R1 constructor unchecked",
        RC,
        '            _check_int("Refcount(kernel, ", "the counter of a refcount_t", n)',
        "            pass",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R2 refcount_set unchecked",
        RC,
        '            _check_int(f"refcount_set({self!r}, ", "the counter of a refcount_t", n)',
        "            pass",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R3 INT_MAX + 1 let past the constructor's fast check",
        RC,
        '        if type(n) is not int or not INT_MIN <= n <= INT_MAX:\n            _check_int("Refcount',
        '        if type(n) is not int or not INT_MIN <= n <= INT_MAX + 1:\n            _check_int("Refcount',
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R4 INT_MIN - 1 let past the range rule",
        RC,
        "    if not INT_MIN <= n <= INT_MAX:",
        "    if not INT_MIN - 1 <= n <= INT_MAX:",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R5 bool accepted",
        RC,
        '    if type(n) is not int:\n        raise ModelUsageError(f"{head}{n!r}): {what} is a C int',
        '    if not isinstance(n, int):\n        raise ModelUsageError(f"{head}{n!r}): {what} is a C int',
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R6 add unchecked",
        RC,
        '            _check_int(f"refcount_add({self!r}, ", "the amount i", i)',
        "            pass",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R7 add_not_zero unchecked",
        RC,
        '            _check_int(f"refcount_add_not_zero({self!r}, ", "the amount i", i)',
        "            pass",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    (
        "R8 sub_and_test unchecked",
        RC,
        '            _check_int(f"refcount_sub_and_test({self!r}, ", "the amount i", i)',
        "            pass",
        [k("test_a_refcount_t_refuses_what_no_c_int_can_be")],
    ),
    ("R9 no C wrap", RC, "    return (x - INT_MIN) % _WRAP + INT_MIN", "    return x", [TR]),
    # atomic.py
    (
        "A1 Atomic() unchecked",
        AT,
        '            _check_int("Atomic(kernel, ", value)',
        "            pass",
        [k("test_an_atomic_t_refuses_what_is_not_an_int")],
    ),
    (
        "A2 atomic_set unchecked",
        AT,
        '            _check_int(f"atomic_set({self!r}, ", i)',
        "            pass",
        [k("test_an_atomic_t_refuses_what_is_not_an_int")],
    ),
    (
        "A3 atomic_add_return unchecked",
        AT,
        '            _check_int(f"atomic_add_return({self!r}, ", i)',
        "            pass",
        [k("test_an_atomic_t_refuses_what_is_not_an_int")],
    ),
    (
        "A4 atomic_cmpxchg unchecked",
        AT,
        '                _check_int(f"atomic_cmpxchg({self!r}, ", v)',
        "                pass",
        [k("test_an_atomic_t_refuses_what_is_not_an_int")],
    ),
    # level.py
    (
        "L1 any attribute resolves",
        LV,
        '                if not inspect.isfunction(fn) or getattr(fn, "_removed_by", None):',
        '                if getattr(fn, "_removed_by", None):',
        [k("test_a_misuse_of_the_command_is_one_line_and_exit_status_2")],
    ),
    (
        "L2 private helpers resolve",
        LV,
        '        if name.startswith("_") and name not in DUNDER_NAMES:\n            return None',
        "        pass",
        [k("test_a_private_helper_of_a_level_is_not_a_kernel_function")],
    ),
    # slab.py
    (
        "S1 freed container back-pointer readable",
        SLAB,
        '_ALLOWED_ON_FREED = frozenset({"__class__", "_poison", "__dict__", "_embedded", "__slots__"})',
        '_ALLOWED_ON_FREED = frozenset({"__class__", "_poison", "__dict__", "_embedded", "__slots__", "container"})',
        [TS],
    ),
    # cli.py: output and main
    (
        "C1 no per-cell catch",
        REPORT,
        '    except Exception as e:  # a failure inside the model: this cell reads "error", the rest go on',
        "    except OSError as e:  # mutant",
        [
            # a ModelUsageError has its own clause: the catch-all is reached by any other error
            k("test_any_exception_escaping_the_model_is_a_cell_error_with_its_type"),
            k("test_a_cell_whose_run_raises_reads_error_and_every_other_cell_is_computed"),
        ],
    ),
    (
        "C2 error cell shown as clean/kinds",
        REPORT,
        '        if self.error is not None:\n            return "error"\n        t: str',
        '        if False:\n            return "error"\n        t: str',
        [k("test_a_cell_whose_run_raises_reads_error_and_every_other_cell_is_computed")],
    ),
    (
        "C3 JSON drops the error",
        REPORT,
        '            doc["error"] = self.error',
        "            pass",
        [k("test_the_json_of_an_errored_cell_says_so")],
    ),
    (
        "C4 errored report exits 0",
        CLI,
        "    if not n:\n        return EXIT_OK",
        "    if True:\n        return EXIT_OK",
        [k("test_a_cell_whose_run_raises_reads_error_and_every_other_cell_is_computed")],
    ),
    (
        "C5 error type dropped",
        REPORT,
        '        cell.error = f"{type(e).__name__}: {e}"',
        "        cell.error = str(e)",
        [k("test_any_exception_escaping_the_model_is_a_cell_error_with_its_type")],
    ),
    (
        "C6 stdout not dropped after a broken pipe",
        CLI,
        "        _drop_stdout()  # the reader wants no more: stop quietly",
        "        pass",
        [k("test_a_reader_that_closed_the_pipe_ends_it_quietly_with_exit_status_1")],
    ),
    (
        "C7 no flush inside main",
        CLI,
        "                sys.stdout.flush()  # while a failure can still be reported",
        "                pass",
        [
            k("test_a_full_disk_is_one_line_and_exit_status_1"),
            k("test_a_reader_that_closed_the_pipe_ends_it_quietly_with_exit_status_1"),
        ],
    ),
    (
        "C8 broken pipe exits 0",
        CLI,
        "        _drop_stdout()  # the reader wants no more: stop quietly\n        return EXIT_INCOMPLETE",
        "        _drop_stdout()  # the reader wants no more: stop quietly\n        return EXIT_OK",
        [k("test_a_reader_that_closed_the_pipe_ends_it_quietly_with_exit_status_1")],
    ),
    (
        "C9 full disk: stdout not dropped",
        CLI,
        "    except OSError as e:\n        _drop_stdout()",
        "    except OSError as e:\n        pass",
        [k("test_a_full_disk_is_one_line_and_exit_status_1")],
    ),
    (
        "C10 argparse swallows --help write errors",
        CLI,
        "        else:\n            file.write(message)",
        "        else:\n            with contextlib.suppress(OSError):\n                file.write(message)",
        [k("test_a_full_disk_is_one_line_and_exit_status_1")],
    ),
    (
        "C11 closed stdout not refused",
        CLI,
        "    if sys.stdout is None:  # started with stdout closed",
        "    if False:  # started with stdout closed",
        [k("test_a_closed_stdout_is_one_line_and_exit_status_1")],
    ),
    (
        "C12 internal errors escape as tracebacks",
        CLI,
        '        if os.environ.get("VFIO_REF_TRACEBACK"):\n            raise',
        "        if True:\n            raise",
        [k("test_an_internal_failure_outside_the_report_is_one_line_and_exit_status_1")],
    ),
    (
        "C13 no argument checks at all",
        CLI,
        "        check_args(args, _given_options(argv))\n",
        "",
        [k("test_a_misuse_of_the_command_is_one_line_and_exit_status_2")],
    ),
    (
        "C14 every option counts as given",
        CLI,
        '            elif action.dest != "help":\n                action.default = argparse.SUPPRESS',
        '            elif action.dest == "never":\n                action.default = argparse.SUPPRESS',
        [
            k("test_random_scheduling_with_its_seed_and_runs_runs"),
            "tests/test_cli.py::test_explore_prints_each_finding_with_a_replayable_schedule",
        ],
    ),
]
RULES = [  # each refusal rule of check_args, deleted alone
    ("negative bound", '            _refuse(f"--bound must be 0 or more preemptions, not {b}")'),
    ("duplicate --level", '        no_duplicates("--level", levels, "level is one column of the report")'),
    ("duplicate --scenario", '        no_duplicates("--scenario", scenarios, "scenario is one row of the report")'),
    ("report --review-fixes", '        review_fixes_apply(levels)\n        if "findings" in given'),
    ("explore --review-fixes", "        review_fixes_apply([args.level])\n        if args.scenario"),
    (
        "explore fault_sweep options",
        '            for opt in ("replay", "random", "seed", "runs"):',
    ),
    ("--random with --replay", "        if args.random and args.replay is not None:"),
    ("--seed/--runs without --random", "            if opt in given and not args.random:"),
    ("--runs below 1", "        if args.runs < 1:"),
    (
        "--bound/--no-reduction without the bounded search",
        "            if opt in given and (args.random or args.replay is not None):",
    ),
    ("--full-trace with --no-trace", "        if args.full_trace and args.no_trace:"),
    ("show --list with FUNCTION", "        if args.list and args.function is not None:"),
]
for name, line in RULES:
    if line.lstrip().startswith("if ") or line.lstrip().startswith("for "):
        new = (
            line.replace("if ", "if False and ", 1)
            if line.lstrip().startswith("if ")
            else line.replace(" in (", " in () and (", 1)
        )
    elif "\n" in line:
        first, rest = line.split("\n", 1)
        new = first[: len(first) - len(first.lstrip())] + "pass\n" + rest
    else:
        new = line[: len(line) - len(line.lstrip())] + "pass"
    M.append(
        (f"C-rule {name} deleted", CLI, line, new, [k("test_a_misuse_of_the_command_is_one_line_and_exit_status_2")])
    )
M += [
    # bench.py
    (
        "B1 --out not checked before measuring",
        BENCH,
        "    out_path = check_out(out)\n    bench_dir",
        "    out_path = Path(out)\n    bench_dir",
        [k("test_the_bench_output_path_is_checked_before_measuring")],
    ),
    (
        "B2 existing directory not refused",
        BENCH,
        '    if path.name in ("", ".", "..") or path.is_dir():',
        '    if path.name in ("", ".", ".."):',
        [k("test_the_bench_output_path_is_checked_before_measuring")],
    ),
    (
        "B3 trailing slash not refused",
        BENCH,
        '    if not out or out.endswith(("/", os.sep)):',
        "    if not out:",
        [k("test_the_bench_output_path_is_checked_before_measuring")],
    ),
    (
        "B4 plot path not checked",
        BENCH,
        "    if png.is_dir():",
        "    if False:",
        [k("test_the_bench_output_path_is_checked_before_measuring")],
    ),
    (
        "B5 non-directory ancestor not refused",
        BENCH,
        "    if not anc.is_dir():",
        "    if False:",
        [k("test_the_bench_output_path_is_checked_before_measuring")],
    ),
]


def run_mutants(
    mutants: list[Mutant], only: list[str], *, root: pathlib.Path, pytest_args: tuple[str, ...] = (), timeout: int
) -> int:
    """Apply each mutant whose name contains one of ``only`` (every one when empty), run its
    tests with ``-x``, put the source back (also when interrupted); 0 when all are killed."""
    results: list[tuple[str, str]] = []
    for name, f, old, new, tests in mutants:
        if only and not any(o in name for o in only):
            continue
        path = root / f
        src = path.read_text()
        n = src.count(old)
        if n != 1:
            results.append((name, f"NOT APPLIED ({n} matches)"))
            print(name, "NOT APPLIED", n, flush=True)
            continue
        path.write_text(src.replace(old, new))
        t0 = time.time()
        try:
            p = subprocess.run(
                [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args, *tests],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            verdict = "killed" if p.returncode != 0 else "SURVIVED"
        finally:
            path.write_text(src)
        results.append((name, verdict))
        print(f"{verdict:9s} {time.time() - t0:5.1f}s  {name}", flush=True)
    print()
    print(sum(v == "killed" for _, v in results), "killed of", len(results))
    return 0 if all(v == "killed" for _, v in results) else 1


# Argued equivalent (tests/reliability/test_mutants_apply.py still checks that they apply):
EQUIVALENT: list[Mutant] = [
    # The report's scenario-name rule deleted from check_args: build_report() refuses the same
    # unknown name with the same message before any cell runs (the library's own check, kept
    # for Python callers), so the command still exits 2 with that one line and runs nothing.
    (
        "C-rule report scenario names deleted",
        CLI,
        "            check_scenario(name)\n        for spec in args.scenario_file or ():",
        "            pass\n        for spec in args.scenario_file or ():",
        [k("test_a_misuse_of_the_command_is_one_line_and_exit_status_2")],
    ),
]


def main() -> int:
    return run_mutants(M, sys.argv[1:], root=ROOT, timeout=900)


if __name__ == "__main__":
    sys.exit(main())
