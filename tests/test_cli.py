"""The ``vfio-ref`` command, as a user meets it: the report, explore and replay, show and
diff, and one clear line with exit status 2 for every misuse."""

from __future__ import annotations

import itertools
import json

import pytest

from vfio_ref import LEVELS
from vfio_ref.cli import main
from vfio_ref.scenarios import run


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_json_has_the_documented_shape_and_agrees_with_run(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "report", "--json", "--scenario", "lifecycle", "--scenario", "create_race")
    assert rc == 0
    doc = json.loads(out)
    assert doc["levels"] == list(LEVELS)
    assert set(doc["scenarios"]) == {"lifecycle", "create_race"}
    for name, row in doc["scenarios"].items():
        assert list(row) == list(LEVELS)
        for level, cell in row.items():
            assert set(cell) == {"clean", "kinds", "complete", "space", "schedules"}
            # Each cell names the space it covered; run() over that space gives the same verdict
            # (the unbounded space by source-DPOR, the bounded fallback by the restricted sleep
            # sets: both reduced, run's default).
            bound = {"all": None, "bound 1": 1}[cell["space"]]
            v = run(name, level, bound=bound, traces=False)
            assert (cell["clean"], cell["kinds"], cell["complete"]) == (v.clean, v.kinds(), v.complete)
            assert cell["schedules"] == sum(s.schedules for s in v.stats)


def test_the_reports_bounded_fallback_is_the_reduced_search_and_checked_against_the_plain_one() -> None:
    from vfio_ref.report import build_report

    reduced = build_report(["ioctl_vs_close"], ["base"], jobs=1).cell("ioctl_vs_close", "base")
    assert reduced.space == "bound 1" and reduced.fallback
    assert reduced.verdict is not None and reduced.verdict.check is None
    assert [s.space for s in reduced.verdict.stats] == [
        "every schedule with at most 1 preemptions; depth-first with sleep sets restricted for the bound"
    ]
    checked = build_report(["ioctl_vs_close"], ["base"], jobs=1, check_reduction=True).cell("ioctl_vs_close", "base")
    assert checked.verdict is not None and checked.verdict.check is not None and checked.verdict.check.agree
    assert checked.schedules == reduced.schedules
    # The plain search beside it ran more schedules (the kworker's interleavings pruned).
    assert checked.verdict.check.plain.schedules > reduced.schedules


def test_report_text_is_a_matrix_of_scenarios_by_levels(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "report", "--scenario", "create_race", "--level", "base", "--level", "p5")
    assert rc == 0
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("scenario"))
    assert header.split() == ["scenario", "base", "p5"]
    row = next(ln for ln in lines if ln.startswith("create_race"))
    # base: the unbounded search does not finish within its budget, so the cell covers one
    # preemption (*); p5 likewise, and is clean there.
    assert row.split() == ["create_race", "leak*", "clean*"]


def test_report_with_review_fixes_and_an_ablation(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(
        capsys, "report", "--json", "--scenario", "open_vs_last_put", "--ablation", "open_refcount_inc"
    )
    assert rc == 0
    doc = json.loads(out)
    assert doc["levels"] == ["p5"]  # the ablation applies at patch 5 only
    cell = doc["scenarios"]["open_vs_last_put"]["p5"]
    assert (cell["clean"], cell["kinds"], cell["complete"], cell["space"]) == (False, ["warn"], True, "all")
    rc, out, _ = cli(capsys, "report", "--json", "--review-fixes", "--scenario", "lifecycle", "--level", "p3")
    cell = json.loads(out)["scenarios"]["lifecycle"]["p3"]
    assert (cell["clean"], cell["kinds"], cell["complete"], cell["space"]) == (True, [], True, "all")


def test_explore_prints_each_finding_with_a_replayable_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "explore", "create_race", "--level", "base", "--bound", "1")
    assert rc == 0
    assert "verdict: leak" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("schedule:"))
    schedule = line.split()[1]
    assert f"--replay {schedule}" in line
    assert "Exploration statistics" in out
    assert "Searched every schedule with at most 1 preemption" in out and ": exhausted (" in out
    rc, replayed, _ = cli(capsys, "explore", "create_race", "--level", "base", "--replay", schedule)
    assert rc == 0 and "verdict: leak" in replayed


def test_explore_splits_over_every_core_by_default_where_the_search_splits(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vfio_ref.report

    monkeypatch.setattr(vfio_ref.report, "default_jobs", lambda: 2)  # as on a 2-core machine
    base = ("explore", "open_vs_last_put", "--level", "p5", "--no-trace")
    _, split, _ = cli(capsys, *base)
    _, one, _ = cli(capsys, *base, "--jobs", "1")
    elapsed = [ln for ln in split.splitlines() if "Elapsed" in ln]
    assert len(elapsed) == 1 and elapsed[0].endswith("on 2 processes.")
    assert [ln for ln in split.splitlines() if "Elapsed" not in ln] == [
        ln for ln in one.splitlines() if "Elapsed" not in ln
    ]
    # A random sample splits too, into stretches of runs, with the same result.
    sample = ("--random", "--seed", "3", "--runs", "30")
    _, split, _ = cli(capsys, *base, *sample)
    _, one, _ = cli(capsys, *base, *sample, "--jobs", "1")
    assert next(ln for ln in split.splitlines() if "Elapsed" in ln).endswith("on 2 processes.")
    assert [ln for ln in split.splitlines() if "Elapsed" not in ln] == [
        ln for ln in one.splitlines() if "Elapsed" not in ln
    ]
    # So does a fault sweep, point by point.
    sweep = ("explore", "fault_sweep", "--level", "p5", "--no-trace")
    _, split, _ = cli(capsys, *sweep)
    _, one, _ = cli(capsys, *sweep, "--jobs", "1")
    assert next(ln for ln in split.splitlines() if "Elapsed" in ln).endswith("on 2 processes.")
    assert [ln for ln in split.splitlines() if "Elapsed" not in ln] == [
        ln for ln in one.splitlines() if "Elapsed" not in ln
    ]
    # Searches that do not split run in one process when --jobs is not given (and are
    # refused when it is).
    for extra in (("--bound", "none"), ("--replay", "-"), ("--coverage",)):
        rc, out, err = cli(capsys, *base, *extra)
        assert rc == 0 and err == "" and "processes" not in out, extra


def test_explore_random_mode_is_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("explore", "create_race", "--level", "base", "--random", "--seed", "3", "--runs", "20", "--no-trace")
    _, first, _ = cli(capsys, *args)
    _, second, _ = cli(capsys, *args)
    strip = [ln for ln in first.splitlines() if "Elapsed" not in ln]
    assert strip == [ln for ln in second.splitlines() if "Elapsed" not in ln]


def test_show_prints_a_function_as_the_level_defines_it(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "show", "p4", "vfio_group_put")
    assert rc == 0
    assert "refcount_dec_and_mutex_lock" in out
    rc, out, _ = cli(capsys, "show", "base", "vfio_group_put")
    assert "kref_put_mutex" in out


def test_diff_prints_what_a_patch_changed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "diff", "p4", "p5")
    assert rc == 0
    assert "vfio_group_fops_open" in out
    assert "+" in out and "-" in out


def test_list_names_levels_scenarios_and_ablations(capsys: pytest.CaptureFixture[str]) -> None:
    for what, expect in (("levels", "p5"), ("scenarios", "open_vs_last_put"), ("ablations", "no_deferred_put")):
        rc, out, _ = cli(capsys, "list", what)
        assert rc == 0 and expect in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["report", "--level", "p6"], "unknown level 'p6'"),
        (["report", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["report", "--ablation", "nope"], "unknown ablation 'nope'"),
        (["explore", "lifecycle", "--level", "base", "--ablation", "open_refcount_inc"], "does not apply to level"),
        (["explore", "create_race", "--level", "base", "--replay", "x:y"], "is not 'CHOICE:THREAD'"),
        (["explore", "create_race", "--level", "base", "--replay", "0:9"], "thread 9"),
        (["explore", "create_race", "--level", "base", "--bound", "-1"], "bound must be 0 or more"),
        (["show", "p5", "no_such_function"], "no_such_function"),
        (["diff", "p5", "p9"], "unknown level 'p9'"),
    ],
)
def test_a_misuse_is_one_line_on_stderr_and_exit_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("vfio-ref: error: ") and says in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("older", "newer"), list(itertools.pairwise(LEVELS)))
def test_diff_of_consecutive_levels_names_exactly_what_the_patch_module_defines(
    capsys: pytest.CaptureFixture[str], older: str, newer: str
) -> None:
    import inspect
    import sys

    from vfio_ref.vfio import level_class

    cls = level_class(newer)
    module = sys.modules[cls.__module__]

    def defined_here(obj: object) -> bool:
        return inspect.getmodule(inspect.unwrap(obj)) is module  # type: ignore[arg-type]

    own = {n for n in cls.function_names() if (r := cls.resolve(n)) is not None and defined_here(r[1])}
    old_structs = level_class(older).structs()
    for name in cls.__dict__.get("REMOVED", ()):  # what the patch deletes shows as removed
        own.add(f"struct {name}" if name in old_structs else name)
    own |= {f"struct {s}" for s, t in cls.structs().items() if defined_here(t)}
    rc, out, _ = cli(capsys, "diff", older, newer)
    assert rc == 0
    changed = {ln[4:].rsplit(":", 1)[0] for ln in out.splitlines() if ln.startswith("=== ")}
    assert changed == own


@pytest.mark.parametrize("level", LEVELS)
def test_show_prints_every_modelled_function_at_every_level(capsys: pytest.CaptureFixture[str], level: str) -> None:
    from vfio_ref.vfio import level_class

    for name in level_class(level).function_names():
        rc, out, _ = cli(capsys, "show", level, name)
        assert rc == 0 and f"def {name}" in out, name
