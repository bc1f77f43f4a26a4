"""vfio-ref bench's report rendering, on a small synthetic pytest-benchmark JSON document
(no benchmark runs here: the figures are made up, only the arithmetic and layout matter)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from vfio_ref import bench
from vfio_ref.kernel.core import ModelUsageError


def _b(name: str, best: float, report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "stats": {"min": best, "mean": best * 1.1}, "extra_info": {"report": report, **extra}}


def _entry(name: str, best: float, **tags: Any) -> dict[str, Any]:
    tags.setdefault("per", 1)
    tags.setdefault("show", "op")
    tags.setdefault("col", "")
    return _b(name, best, tags)


def _doc() -> dict[str, Any]:
    lookup = "Lookup: get + put"
    life = "Lifecycle scenario"
    create = "Group create + destroy"
    return {
        "datetime": "2021-10-01T00:00:00",
        "machine_info": {"node": "box", "python_implementation": "CPython", "python_version": "3.11.7"},
        "benchmarks": [
            # floors: 200 lock round trips in 10 µs -> 50 ns each
            _b("test_floor_lock", 10e-6, {"floor_of": "floor:lock", "label": "a bare Lock round trip", "per": 200}),
            _b("test_floor_greenlet", 100e-6, {"floor_of": "floor:greenlet", "label": "greenlet", "per": 1000}),
            _b("scan64", 640e-9, {"floor_of": "floor:scan:64", "label": "scan 64", "per": 1}),
            _b("scan1024", 10.24e-6, {"floor_of": "floor:scan:1024", "label": "scan 1024", "per": 1}),
            # primitives: refcount 200 ops in 25 µs -> 125 ns = 2.5x the lock
            _entry(
                "test_refcount", 25e-6, table="Primitives", row="refcount", key="refcount", floor="floor:lock", per=200
            ),
            # lookup at two sizes, two levels
            _entry(
                "l64b",
                3.2e-6,
                table=lookup,
                row="64 groups",
                col="base",
                key="lookup:64@base",
                floor="floor:scan:64",
                x=64,
            ),
            _entry(
                "l64p5",
                3.0e-6,
                table=lookup,
                row="64 groups",
                col="p5",
                key="lookup:64@p5",
                floor="floor:scan:64",
                x=64,
            ),
            _entry(
                "l1kb",
                51.2e-6,
                table=lookup,
                row="1024 groups",
                col="base",
                key="lookup:1024@base",
                floor="floor:scan:1024",
                x=1024,
            ),
            _entry(
                "l1kp5",
                40.96e-6,
                table=lookup,
                row="1024 groups",
                col="p5",
                key="lookup:1024@p5",
                floor="floor:scan:1024",
                x=1024,
            ),
            # lifecycle: the hook costs 2% at base, poisoning 25% at p5
            _entry("lb", 510e-6, table=life, row="as it runs", col="base", key="lifecycle-as-is@base"),
            _entry("lbh", 500e-6, table=life, row="hook stubbed", col="base", key="lifecycle-nohook@base"),
            _entry("lbk", 490e-6, table=life, row="kasan off", col="base", key="lifecycle-nokasan@base"),
            _entry("lp", 500e-6, table=life, row="as it runs", col="p5", key="lifecycle-as-is@p5"),
            _entry("lph", 499e-6, table=life, row="hook stubbed", col="p5", key="lifecycle-nohook@p5"),
            _entry("lpk", 400e-6, table=life, row="kasan off", col="p5", key="lifecycle-nokasan@p5"),
            # create: p1 is 2x base
            _entry(
                "cb", 80e-6, table=create, row="create + destroy", col="base", key="create@base", floor="floor:lock"
            ),
            _entry("c1", 160e-6, table=create, row="create + destroy", col="p1", key="create@p1", floor="floor:lock"),
            _entry(
                "c3", 81e-6, table=create, row="create + destroy", col="p3+fix", key="create@p3", floor="floor:lock"
            ),
            # IDA
            _entry("i3", 1.0e-6, table="IDA", row="1e3", key="ida@1e3", floor="floor:lock"),
            _entry("i6", 1.5e-6, table="IDA", row="1e6", key="ida@1e6", floor="floor:lock"),
            # explorer: 1999 points in 1.4 ms -> 700 ns = 7x a 100 ns switch
            _entry(
                "pt",
                1.3993e-3,
                table="Explorer: one scheduling point",
                row="switch",
                key="sched-point-switch",
                floor="floor:greenlet",
                per=1999,
                note="1999 points",
            ),
            _b(
                "toy",
                0.1,
                {
                    "table": "Explorer: issue 4's toy",
                    "row": "toy",
                    "col": "",
                    "key": "toy",
                    "floor": "floor:greenlet",
                    "per": 60000,
                    "show": "total",
                },
                schedules=762,
            ),
            {"name": "untagged_one", "stats": {"min": 1.0}, "extra_info": {}},
        ],
    }


def test_parse_floors_and_entries() -> None:
    res = bench.parse(_doc())
    assert res.floors["floor:lock"].per_op == pytest.approx(50e-9)
    assert res.floors["floor:greenlet"].per_op == pytest.approx(100e-9)
    assert res.untagged == ["untagged_one"]
    k = res.by_key()
    assert res.ratio(k["refcount"]) == pytest.approx(2.5)
    assert res.ratio(k["lookup:1024@p5"]) == pytest.approx(4.0)
    assert res.ratio(k["sched-point-switch"]) == pytest.approx(7.0, rel=1e-3)
    assert k["toy"].shown == pytest.approx(0.1)  # a total, not per point


def test_formatting() -> None:
    assert bench.fmt_time(125e-9) == "125 ns"
    assert bench.fmt_time(3.2e-6) == "3.2 µs"
    assert bench.fmt_time(0.0456) == "45.6 ms"
    assert bench.fmt_time(2.5) == "2.5 s"
    assert bench.fmt_ratio(2.5) == "2.50x"
    assert bench.fmt_ratio(14.25) == "14.2x"
    assert bench.fmt_ratio(12345.0) == "1.2e4x"
    assert bench.fmt_ratio(None) == "n/a"


def test_goals_met_and_missed() -> None:
    by_name = {g.goal.split(" (")[0].split(":")[0]: g for g in bench.goals(bench.parse(_doc()))}
    assert by_name["refcount inc + dec_and_test vs a bare Lock round trip"].met is True
    hook = by_name["scheduling hook"]
    assert hook.met is True and hook.ratio == pytest.approx(1.02)  # base is the worst level: 510/500
    poison = by_name["slab poisoning"]
    assert poison.met is False and poison.ratio == pytest.approx(1.25) and "p5" in poison.goal
    ida = by_name["IDA alloc + free with 10**6 ids in use vs 10**3"]
    assert ida.met is True and ida.ratio == pytest.approx(1.5)
    assert by_name["one explorer scheduling point"].met is True
    create = by_name["group create + destroy"]
    assert create.met is False and create.ratio == pytest.approx(2.0) and "(p1)" in create.goal
    toy = by_name["issue 4"]
    assert toy.met is False and toy.figure == "7,620/s"


def test_render_report_tables() -> None:
    text = bench.render_report(_doc(), command="vfio-ref bench --quick", wall=61.0)
    lines = text.splitlines()
    assert lines[0] == "# vfio_ref benchmark report"
    assert "Produced by: `vfio-ref bench --quick`" in lines
    # One table per hot path, in reading order, levels as columns in level order.
    heads = [ln for ln in lines if ln.startswith("### ")]
    assert heads == [
        "### Primitives",
        "### Lookup: get + put",
        "### Group create + destroy",
        "### Lifecycle scenario",
        "### IDA",
        "### Explorer: one scheduling point",
        "### Explorer: issue 4's toy",
    ]
    i = lines.index("### Lookup: get + put")
    assert lines[i + 2] == "|  | floor | base | p5 |"
    assert lines[i + 4] == "| 64 groups | 640 ns | 3.2 µs (5.00x) | 3 µs (4.69x) |"
    assert lines[i + 5] == "| 1024 groups | 10.2 µs | 51.2 µs (5.00x) | 41 µs (4.00x) |"
    # The slope between the two largest sizes, per level and for the floor.
    slope = next(ln for ln in lines if ln.startswith("Slope"))
    assert "base 50 ns" in slope and "p5 39.5 ns" in slope and "floor 10 ns" in slope
    j = lines.index("### Group create + destroy")
    assert lines[j + 2] == "|  | floor | base | p1 | p3+fix |"
    assert "| create + destroy | 50 ns | 80 µs (1.6e3x) | 160 µs (3.2e3x) | 81 µs (1.6e3x) |" in lines
    # Notes go under the figure; totals are shown whole, ratios stay per operation.
    assert any("700 ns (7.00x)<br>1999 points" in ln for ln in lines)
    assert "| toy | 100 ns | 100 ms (16.7x) |" in lines
    # Goals table with the misses in bold.
    assert "| goal | figure | against | ratio | limit | met? |" in lines
    assert any(ln.startswith("| slab poisoning") and ln.endswith("| **no** |") for ln in lines)
    assert "Untagged benchmarks (in the JSON only): untagged_one." in lines
    assert "| `floor:lock` | a bare Lock round trip | 50 ns |" in lines


def test_missing_figures_are_not_run() -> None:
    doc = {"benchmarks": [_entry("only", 1e-6, table="Primitives", row="refcount", key="refcount", floor="floor:lock")]}
    gl = bench.goals(bench.parse(doc))
    assert gl[0].met is None and "not run" in gl[0].floor
    assert all(g.met is None for g in gl)
    text = bench.render_report(doc, command="vfio-ref bench")
    assert "| refcount | not run | 1 µs (n/a) |" in text


def test_without_the_dev_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # as if not installed
    with pytest.raises(ModelUsageError, match=r"pip install 'vfio-ref\[dev\]'"):
        bench.run_suite(Path("benchmarks"), "unused.json", quick=True)


def test_a_new_run_keeps_the_hand_measured_part_of_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "REPORT.md"
    hand = "## Measured by hand on some day\n\n| what | before | after |\n| --- | --- | --- |\n| x | 1 | 2 |\n"
    out.write_text("# old generated part\n\nstale figures\n\n" + hand)
    doc = {"benchmarks": [_entry("only", 1e-6, table="Primitives", row="refcount", key="refcount", floor="floor:lock")]}

    def fake_suite(bench_dir: Path, json_path: str, *, quick: bool) -> int:
        Path(json_path).write_text(json.dumps(doc))
        return 0

    monkeypatch.setattr(bench, "run_suite", fake_suite)
    monkeypatch.setattr(bench, "plot_lookup", lambda data, png: False)
    assert bench.main(quick=True, out=str(out)) == 0
    text = out.read_text()
    assert "stale figures" not in text and text.startswith("# vfio_ref benchmark report")
    assert text.endswith("\n\n" + hand)
    assert text.count("## Measured by hand") == 1
    assert bench.kept_by_hand(tmp_path / "missing.md") == ""


def _issue13_doc(*, split_s: float, report_s: float, walk_p5_s: float, toy_plain_s: float) -> dict[str, Any]:
    doc = _doc()
    doc["benchmarks"] += [
        _entry("s1", 20.0, table="split", row="--jobs 1", key="split:1", show="total"),
        _entry("s2", split_s, table="split", row="--jobs 2", key="split:2", show="total"),
        _entry("r1", 40.0, table="report", row="vfio-ref report --jobs 1", key="report-serial", show="total"),
        _entry("r2", report_s, table="report", row="vfio-ref report --jobs 2", key="report", show="total"),
        _b("toy-plain", toy_plain_s, {"table": "Explorer: issue 4's toy", "row": "plain", "col": "", "key": "toy-plain",
                                      "floor": "floor:greenlet", "per": 60000, "show": "total"}, schedules=762),
    ]
    for e in doc["benchmarks"]:
        if e["name"] == "l1kp5":
            e["stats"]["min"] = walk_p5_s
    return doc


def _issue13(doc: dict[str, Any]) -> dict[str, bench.GoalResult]:
    return {g.goal.split(" (worst")[0]: g for g in bench.issue13_goals(bench.parse(doc))}


def test_issue13_goals_are_reported_from_the_same_run() -> None:
    # Missed: the split gains 1.6x, the report 1.9x but takes 21 s, the walk at base is
    # 51.2 µs over a 10.24 µs scan (5x, the worst level), the reduced toy 0.1 s against 0.075 s.
    g = _issue13(_issue13_doc(split_s=12.5, report_s=21.0, walk_p5_s=40.96e-6, toy_plain_s=0.075))
    split = g["issue 13: one depth-first search over 2 processes, throughput against the same search in one"]
    assert split.met is False and split.ratio == pytest.approx(1.6) and split.limit == ">= 1.8x"
    rep = g["issue 13: `vfio-ref report` with --jobs 2, throughput against --jobs 1"]
    assert rep.met is True and rep.ratio == pytest.approx(40 / 21)
    wall = g["issue 13: `vfio-ref report --jobs 2` wall time"]
    assert wall.met is False and wall.figure == "21 s" and wall.floor == "--jobs 1: 40 s"
    kasan = g["issue 13: KASAN-like poisoning: lifecycle (free-running) vs the same with kasan=False"]
    assert kasan.met is False and kasan.ratio == pytest.approx(1.25) and kasan.limit == "<= 1.1x"
    point = g["issue 13: one explorer scheduling point (with a switch) vs a bare greenlet switch"]
    assert point.met is False and point.ratio == pytest.approx(7.0, rel=1e-3)
    walk = next(v for n, v in g.items() if n.startswith("issue 13: group-list walk"))
    assert walk.met is False and walk.ratio == pytest.approx(5.0) and "(worst level: base)" in walk.goal
    assert walk.figure == "50 ns" and walk.floor == "bare scan 10 ns"
    toy = g["issue 13: toy, reduced search per schedule vs plain depth-first search"]
    assert toy.met is False and toy.ratio == pytest.approx(0.1 / 0.075)


def test_issue13_goals_met_at_their_limits() -> None:
    # The split at exactly 1.8x, the report in 19 s, the reduced toy at exactly 1.3x the plain.
    doc = _issue13_doc(split_s=20.0 / 1.8, report_s=19.0, walk_p5_s=40.96e-6, toy_plain_s=0.1 / 1.3)
    for e in doc["benchmarks"]:
        if e["name"] == "l1kb":
            e["stats"]["min"] = 30.72e-6  # 3x the scan: the walk's limit, now at base and p5 below
        if e["name"] == "l1kp5":
            e["stats"]["min"] = 20.48e-6
    g = _issue13(doc)
    assert g["issue 13: one depth-first search over 2 processes, throughput against the same search in one"].met
    assert g["issue 13: `vfio-ref report --jobs 2` wall time"].met is True
    walk = next(v for n, v in g.items() if n.startswith("issue 13: group-list walk"))
    assert walk.met is True and walk.ratio == pytest.approx(3.0)
    assert g["issue 13: toy, reduced search per schedule vs plain depth-first search"].met is True


def test_the_report_goal_is_judged_on_the_default_report_only() -> None:
    # The quick run times `vfio-ref report --level p1 --level p5`: 5 s says nothing of the
    # default report's 20 s goal, so it is shown, neither met nor missed.
    doc = _issue13_doc(split_s=10.0, report_s=5.0, walk_p5_s=40.96e-6, toy_plain_s=0.075)
    for e in doc["benchmarks"]:
        if e["extra_info"].get("report", {}).get("key") == "report":
            e["extra_info"]["report"]["row"] = "vfio-ref report --level p1 --level p5 --jobs 2"
    [wall] = [g for g in bench.issue13_goals(bench.parse(doc)) if g.goal.endswith("wall time")]
    assert wall.goal == "issue 13: `vfio-ref report --level p1 --level p5 --jobs 2` wall time"
    assert wall.met is None and wall.figure == "5 s"
    assert wall.floor == "--jobs 1: 40 s; not the default report: the goal is not judged"
    assert bench.REPORT_AT_DEFAULTS == "vfio-ref report --jobs 2"


def test_issue13_goals_not_run_say_so() -> None:
    doc = {"benchmarks": [_entry("only", 1e-6, table="Primitives", row="refcount", key="refcount", floor="floor:lock")]}
    gl = bench.issue13_goals(bench.parse(doc))
    assert len(gl) == 7 and all(g.met is None and g.figure == "not run" for g in gl)


def _pair(name: str, key: str, model: float, floor: float, label: str) -> dict[str, Any]:
    # The ratio is the order-balanced one over the rounds (here a little above the fastest figures' own).
    return _b(name, 1.0, {"table": "Paired", "row": name, "col": "", "key": key, "per": 1, "show": "total"},
              paired={"model": model * 0.9, "floor": floor, "ratio": model / floor, "floor_label": label})


def test_issue13_goals_take_a_paired_ratio_over_two_separate_figures() -> None:
    # The separate figures say the poisoning costs 1.25x (p5) and the point 7x; the pairs,
    # timed in turn, say 1.08x at base, 1.12x at p5 (the worst) and 2.5x.
    doc = _issue13_doc(split_s=10.0, report_s=19.0, walk_p5_s=40.96e-6, toy_plain_s=0.075)
    doc["benchmarks"] += [
        _pair("kb", "paired:kasan@base", 1.08e-3, 1e-3, "kasan=False"),
        _pair("kp5", "paired:kasan@p5", 1.12e-3, 1e-3, "kasan=False"),
        _pair("pt", "paired:point", 1e-6, 0.4e-6, "a greenlet switch"),
        _pair("w", "paired:walk@p1", 60e-9, 20e-9, "a bare scan"),
        _pair("toy", "paired:toy", 1.2e-3, 1e-3, "the plain search"),
    ]
    g = _issue13(doc)
    kasan = g["issue 13: KASAN-like poisoning: lifecycle (free-running) vs the same with kasan=False"]
    assert kasan.ratio == pytest.approx(1.12) and kasan.met is False
    assert kasan.figure == "1.01 ms" and kasan.floor == "kasan=False 1 ms; timed in turn, order-balanced ratio"
    goals = bench.issue13_goals(bench.parse(doc))
    assert "(worst level: p5)" in next(gr.goal for gr in goals if gr.goal.startswith("issue 13: KASAN"))
    point = g["issue 13: one explorer scheduling point (with a switch) vs a bare greenlet switch"]
    assert point.ratio == pytest.approx(2.5) and point.met is True
    walk = next(v for n, v in g.items() if n.startswith("issue 13: group-list walk"))
    assert walk.ratio == pytest.approx(3.0) and walk.met is True and "(worst level: p1)" in walk.goal
    toy = g["issue 13: toy, reduced search per schedule vs plain depth-first search"]
    assert toy.ratio == pytest.approx(1.2) and toy.met is True


def test_a_paired_table_shows_each_ratio_and_the_fastest_of_each_side() -> None:
    doc = {"benchmarks": [_pair("kb", "paired:kasan@base", 1.08e-3, 1e-3, "kasan=False")]}
    doc["benchmarks"][0]["extra_info"]["report"].update(col="base", row="lifecycle: KASAN on against off")
    text = bench.render_report(doc, command="vfio-ref bench")
    row = "| lifecycle: KASAN on against off | in each cell, timed in turn | 1.08x<br>972 µs against kasan=False 1 ms |"
    assert row in text


def test_issue5s_hook_poisoning_and_point_goals_take_their_pairs() -> None:
    # Unpaired, the synthetic doc says the hook costs 1.02x at base and poisoning 1.25x at p5.
    doc = _doc()
    doc["benchmarks"] += [
        _pair("hp1", "paired:hook@p1", 1.07e-3, 1e-3, "hook stubbed out"),
        _pair("hp5", "paired:hook@p5", 1.01e-3, 1e-3, "hook stubbed out"),
        _pair("kp5", "paired:kasan@p5", 1.04e-3, 1e-3, "kasan=False"),
        _pair("pt", "paired:point", 1e-6, 0.4e-6, "a greenlet switch"),  # 7x unpaired in _doc
    ]
    by_name = {g.goal.split(" (")[0]: g for g in bench.goals(bench.parse(doc))}
    assert by_name["one explorer scheduling point"].ratio == pytest.approx(2.5)
    hook = by_name["scheduling hook: lifecycle"]
    assert hook.ratio == pytest.approx(1.07) and hook.met is False and "(worst level: p1)" in hook.goal
    poison = by_name["slab poisoning: lifecycle"]
    assert poison.ratio == pytest.approx(1.04) and poison.met is True and "timed in turn" in poison.floor


def test_issue13_split_goal_takes_the_paired_speed_up_as_a_floor() -> None:
    # Separately timed, the split says 2.0x (20 s against 10 s); timed in turn it says 1.7x,
    # below the floor of 1.8x: the pair decides, and a speed-up must reach its limit.
    name = "issue 13: one depth-first search over 2 processes, throughput against the same search in one"
    doc = _issue13_doc(split_s=10.0, report_s=19.0, walk_p5_s=40.96e-6, toy_plain_s=0.075)
    doc["benchmarks"].append(_pair("sp", "paired:split", 5.1e-3, 3e-3, "--jobs 2"))
    split = _issue13(doc)[name]
    assert split.ratio == pytest.approx(1.7) and split.met is False and split.limit == ">= 1.8x"
    assert split.floor == "--jobs 2 3 ms; timed in turn, order-balanced ratio"
    doc["benchmarks"][-1] = _pair("sp", "paired:split", 5.7e-3, 3e-3, "--jobs 2")
    split = _issue13(doc)[name]
    assert split.ratio == pytest.approx(1.9) and split.met is True


def test_issue13_report_goal_takes_the_paired_speed_up_as_a_floor() -> None:
    # The doc's separately timed reports give a speed-up of their own; the pair, timed in
    # turn, says 1.68x, and decides: below the floor of 1.8x.
    name = "issue 13: `vfio-ref report` with --jobs 2, throughput against --jobs 1"
    doc = _issue13_doc(split_s=10.0, report_s=19.0, walk_p5_s=40.96e-6, toy_plain_s=0.075)
    doc["benchmarks"].append(_pair("rp", "paired:report", 9.65, 5.0 * 9.65 / 8.4, "--jobs 2"))
    goal = _issue13(doc)[name]
    assert goal.ratio == pytest.approx(8.4 / 5.0) and goal.met is False and goal.limit == ">= 1.8x"
    assert goal.floor.startswith("--jobs 2 ") and goal.floor.endswith("; timed in turn, order-balanced ratio")


_PAIRED_GOALS = [
    # (the goal's name starts with, its pair's key, its limit, how the limit reads)
    ("issue 13: KASAN-like poisoning", "paired:kasan@p5", 1.10, "<= 1.1x"),
    ("issue 13: one explorer scheduling point", "paired:point", 3.0, "<= 3x"),
    ("issue 13: group-list walk", "paired:walk@p1", 3.0, "<= 3x"),
    ("issue 13: toy, reduced search", "paired:toy", 1.3, "<= 1.3x"),
    ("issue 13: one depth-first search over 2 processes", "paired:split", 1.8, ">= 1.8x"),
    ("issue 13: `vfio-ref report` with --jobs 2, throughput", "paired:report", 1.8, ">= 1.8x"),
]


@pytest.mark.parametrize(("goal", "key", "limit", "reads"), _PAIRED_GOALS, ids=[g[1] for g in _PAIRED_GOALS])
def test_each_paired_issue13_goal_is_met_at_its_limit_and_missed_just_past_it(
    goal: str, key: str, limit: float, reads: str
) -> None:
    floor_goal = reads.startswith(">=")  # a speed-up: the limit is a floor
    past = limit * (0.99 if floor_goal else 1.01)
    for ratio, met in ((limit, True), (past, False)):
        doc = _issue13_doc(split_s=10.0, report_s=19.0, walk_p5_s=20.48e-6, toy_plain_s=0.1)
        doc["benchmarks"].append(_pair("x", key, ratio, 1.0, "its floor"))
        [g] = [g for g in bench.issue13_goals(bench.parse(doc)) if g.goal.startswith(goal)]
        assert (g.ratio, g.met, g.limit) == (pytest.approx(ratio), met, reads), (goal, ratio)


_ISSUE5_PAIRED_GOALS = [
    ("scheduling hook: lifecycle", "paired:hook@p1", 1.05, "<= 1.05x"),
    ("slab poisoning: lifecycle", "paired:kasan@p5", 1.05, "<= 1.05x"),
    ("one explorer scheduling point", "paired:point", 20.0, "<= 20x"),
]


@pytest.mark.parametrize(("goal", "key", "limit", "reads"), _ISSUE5_PAIRED_GOALS,
                         ids=[g[1] for g in _ISSUE5_PAIRED_GOALS])
def test_each_paired_issue5_goal_is_met_at_its_limit_and_missed_just_past_it(
    goal: str, key: str, limit: float, reads: str
) -> None:
    for ratio, met in ((limit, True), (limit * 1.01, False)):
        doc = _doc()
        doc["benchmarks"].append(_pair("x", key, ratio, 1.0, "its floor"))
        [g] = [g for g in bench.goals(bench.parse(doc)) if g.goal.startswith(goal)]
        assert (g.ratio, g.met, g.limit) == (pytest.approx(ratio), met, reads), (goal, ratio)


def _set(doc: dict[str, Any], name: str, best: float, **extra: Any) -> None:
    """Benchmark ``name`` of ``doc`` took ``best`` seconds for one operation."""
    [e] = [e for e in doc["benchmarks"] if e["name"] == name]
    e["stats"]["min"] = best
    e["extra_info"]["report"]["per"] = 1
    e["extra_info"].update(extra)


def _lifecycles(doc: dict[str, Any], ratio: float) -> None:
    # base as it runs at ``ratio`` to both its variants; p5 level with them (base is the worst)
    for name in ("lb", "lbh", "lbk", "lp", "lph", "lpk"):
        _set(doc, name, 1.0)
    _set(doc, "lb", ratio)


# (the goal's name starts with, what sets its figure to a ratio, its limit, how it reads; a
# limit read ">=" is a floor).  Unpaired: each goal as judged when its pair did not run.
_UNPAIRED_GOALS: list[tuple[str, Any, float, str]] = [
    ("refcount inc", lambda d, r: (_set(d, "test_floor_lock", 1.0), _set(d, "test_refcount", r)), 3, "<= 3x"),
    ("scheduling hook", lambda d, r: _lifecycles(d, r), 1.05, "<= 1.05x"),
    ("slab poisoning", lambda d, r: _lifecycles(d, r), 1.05, "<= 1.05x"),
    ("IDA alloc", lambda d, r: (_set(d, "i3", 1.0), _set(d, "i6", r)), 2, "<= 2x"),
    ("one explorer scheduling point", lambda d, r: (_set(d, "test_floor_greenlet", 1.0), _set(d, "pt", r)),
     20, "<= 20x"),
    ("group create + destroy", lambda d, r: (_set(d, "cb", 1.2), _set(d, "c3", 1.0), _set(d, "c1", r)),
     1.5, "<= 1.5x"),
    ("issue 4: toy (2 threads x 20 locked steps) schedules per second at bound 2, restricted",
     lambda d, r: _set(d, "toy", 0.125, schedules=0.125 * r), 10_000, ">= 10,000/s"),
    ("issue 4: toy (2 threads x 20 locked steps) schedules per second at bound 2, plain",
     lambda d, r: _set(d, "toy-plain", 0.125, schedules=0.125 * r), 10_000, ">= 10,000/s"),
    ("issue 13: KASAN", lambda d, r: _lifecycles(d, r), 1.10, "<= 1.1x"),
    ("issue 13: one explorer scheduling point",
     lambda d, r: (_set(d, "test_floor_greenlet", 1.0), _set(d, "pt", r)), 3, "<= 3x"),
    ("issue 13: group-list walk",
     lambda d, r: (_set(d, "scan1024", 1.0), _set(d, "l1kp5", 1.0), _set(d, "l1kb", r)), 3, "<= 3x"),
    ("issue 13: toy, reduced",
     lambda d, r: (_set(d, "toy", r, schedules=1), _set(d, "toy-plain", 1.0, schedules=1)), 1.3, "<= 1.3x"),
]


@pytest.mark.parametrize(("goal", "setting", "limit", "reads"), _UNPAIRED_GOALS,
                         ids=[g[0][:40] for g in _UNPAIRED_GOALS])
def test_each_unpaired_goal_is_met_at_its_limit_and_missed_just_past_it(
    goal: str, setting: Any, limit: float, reads: str
) -> None:
    floor_goal = reads.startswith(">=")
    for ratio, met in ((limit, True), (limit * (0.99 if floor_goal else 1.01), False)):
        doc = _issue13_doc(split_s=10.0, report_s=19.0, walk_p5_s=20.48e-6, toy_plain_s=0.1)
        setting(doc, ratio)
        [g] = [g for g in bench.goals(bench.parse(doc)) if g.goal.startswith(goal)]
        assert (g.met, g.limit) == (met, reads), (goal, ratio, g)
        if g.ratio is not None:
            assert g.ratio == pytest.approx(ratio)


# -- the paired benchmarks' statistic ----------------------------------------------------------


def test_order_balanced_ratio_cancels_a_penalty_on_whatever_runs_first() -> None:
    # The model is truly 1.1x the floor; the first run of each round takes 1.5x as long.
    # Round 0 runs the model first, round 1 the floor first, and so on.
    true, penalty = 1.1, 1.5
    ratios = [true * penalty if r % 2 == 0 else true / penalty for r in range(200)]
    # The plain median lands between the clusters: their mean, 1.19x here, not 1.1x.
    assert statistics.median(ratios) == pytest.approx((true * penalty + true / penalty) / 2)
    assert bench.order_balanced_ratio(ratios) == pytest.approx(true)
    # One round more of the first order: the plain median jumps to a cluster, the balanced
    # ratio does not move (an odd last round is left out).
    assert statistics.median([*ratios, true * penalty]) == pytest.approx(true * penalty)
    assert bench.order_balanced_ratio([*ratios, true * penalty]) == pytest.approx(true)


def test_order_balanced_ratio_is_a_median_over_pairs_of_rounds() -> None:
    # Pairs (4, 1) -> 2, (1, 1) -> 1, (9, 1) -> 3, (16, 1) -> 4, (100, 1) -> 10: median 3.
    assert bench.order_balanced_ratio([4, 1, 1, 1, 9, 1, 16, 1, 100, 1]) == pytest.approx(3)
    # Not the pairs (1, 4), (1, 1), ...: the pairing starts at round 0.
    assert bench.order_balanced_ratio([2, 4, 1, 1, 1, 9]) == pytest.approx(math.sqrt(8))
    assert bench.order_balanced_ratio([1.25]) == 1.25  # a smoke run's one round


@pytest.mark.parametrize("ratios", [[1.0, 0.0], [1.0, -2.0], [float("nan"), 1.0], [float("inf"), 1.0]])
def test_order_balanced_ratio_refuses_rounds_it_cannot_combine(ratios: list[float]) -> None:
    with pytest.raises(ValueError, match=r"^order_balanced_ratio: a round's ratio must be positive and finite: \["):
        bench.order_balanced_ratio(ratios)
    with pytest.raises(ValueError, match=r"^order_balanced_ratio: no rounds$"):
        bench.order_balanced_ratio([])
