"""benchmarks/crosscheck_table.py, the long catalogue cross-check behind docs/RELIABILITY.md's
table: one small cell run for real, a resumed run skips what its file holds, and the table
says NO for a cell that disagrees."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from . import load_file


def _script() -> ModuleType:
    return load_file("benchmarks/crosscheck_table.py")


def test_a_cell_compares_the_plain_and_the_reduced_search_over_the_whole_space() -> None:
    row = _script().check_cell("p1", "ioctl_vs_close", False, 1, 1)
    assert row["plain_complete"] and row["reduced_complete"]
    assert row["same_outcomes"] and row["agree"]
    assert 1 <= row["reduced_schedules"] <= row["plain_schedules"]  # type: ignore[operator]


def test_every_concurrent_scenario_is_in_the_order_at_every_level_once() -> None:
    mod = _script()
    from vfio_ref import LEVELS

    cells = {(lv, n) for lv, n, fixes in mod.ORDER if not fixes or lv in ("p3", "p4")}
    assert cells == {(lv, n) for lv in LEVELS for n in mod.CONCURRENT}
    assert len(mod.ORDER) == len(set(mod.ORDER))
    assert mod.ORDER[-1][0] == "base"  # the dearest last


def test_a_resumed_run_skips_the_cells_its_file_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _script()
    out = tmp_path / "x.jsonl"
    held = {"scenario": "ioctl_vs_close", "level": "p1", "review_fixes": False, "bound": 1}
    out.write_text(json.dumps(held) + "\n")
    ran: list[tuple[str, str]] = []
    monkeypatch.setattr(mod, "check_cell", lambda lv, n, fx, b, j: ran.append((lv, n)) or {**held, "level": "x"})
    argv = ["crosscheck_table.py", "--bound", "1", "--out", str(out), "--only"]
    monkeypatch.setattr(sys, "argv", [*argv, "ioctl_vs_close@p1"])
    mod.main()
    assert ran == []
    monkeypatch.setattr(sys, "argv", [*argv, "ioctl_vs_close@p2"])
    mod.main()
    assert ran == [("p2", "ioctl_vs_close")]


def test_the_table_says_no_where_the_searches_disagree() -> None:
    row = {
        "scenario": "s", "level": "p3", "review_fixes": True, "bound": 2, "plain_schedules": 1200,
        "plain_s": 1.0, "reduced_schedules": 300, "reduced_s": 0.5, "outcomes": 3, "agree": False,
    }
    lines = _script().table([row, {**row, "agree": True, "review_fixes": False}]).splitlines()
    assert lines[2] == "| s | p3+fix | 1,200, 1.0 | 300, 0.5 | 3 | **NO** |"
    assert lines[3] == "| s | p3 | 1,200, 1.0 | 300, 0.5 | 3 | yes |"


def test_the_table_lists_level_by_level_the_fixed_level_before_the_posted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _script()
    row = {"plain_schedules": 2, "plain_s": 0.1, "reduced_schedules": 1, "reduced_s": 0.1, "outcomes": 1,
           "agree": True, "bound": 2}
    cells = [("create_race", "p3", False), ("ioctl_vs_close", "base", False), ("create_race", "p3", True),
             ("create_race", "base", False)]
    out = tmp_path / "x.jsonl"
    out.write_text("".join(json.dumps({**row, "scenario": n, "level": lv, "review_fixes": fx}) + "\n"
                           for n, lv, fx in cells))
    monkeypatch.setattr(sys, "argv", ["crosscheck_table.py", "--out", str(out), "--table"])
    mod.main()
    lines = capsys.readouterr().out.splitlines()[2:]
    assert [ln.split(" | ")[:2] for ln in lines] == [
        ["| create_race", "base"], ["| ioctl_vs_close", "base"], ["| create_race", "p3+fix"], ["| create_race", "p3"],
    ]
