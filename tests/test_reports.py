"""Issue 11: findings in the kernel's report shapes, swimlanes that map onto the C,
everything as data (checked against docs/vfio-ref.schema.json), your own scenario and
faults from the command line, show/diff over the whole model, and coverage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vfio_ref.cli import main
from vfio_ref.explorer import explore
from vfio_ref.explorer.explore import Execution, RawFinding
from vfio_ref.explorer.trace import render_swimlanes
from vfio_ref.kernel.errno import ENOMEM
from vfio_ref.kernel.shared import SharedField
from vfio_ref.kernel.slab import KStruct, kzalloc
from vfio_ref.scenarios import ScenarioContext, fault_points, run
from vfio_ref.scenarios.harness import judge_kernel

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "vfio-ref.schema.json").read_text())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def step_of(trace: str, pattern: str) -> int:
    """The step number of the swimlane row whose cell matches ``pattern``."""
    for line in trace.splitlines():
        m = re.match(r"\s*(\d+) \|", line)
        if m and re.search(pattern, line):
            return int(m.group(1))
    raise AssertionError(f"no step matches {pattern!r}")


# -- 1. the kernel's report shapes -------------------------------------------------------------


def test_a_use_after_free_reads_as_kasan_access_then_allocated_by_then_freed_by() -> None:
    """The first review question: patch 3 as posted frees the group it returns."""
    v = run("lifecycle", "p3")
    (f,) = v.findings
    lines = f.detail.splitlines()
    assert lines[0].startswith("BUG: KASAN: use-after-free in vfio_group_get_device: read of group->device_lock")
    access = lines.index(next(ln for ln in lines if ln.startswith("Read of ")))
    assert re.fullmatch(r"Read of group->device_lock \(struct vfio_group\) by task main at step \d+:", lines[access])
    assert lines[access + 1 : access + 3] == ["  vfio_group_get_device", "  __vfio_register_dev"]
    alloc = lines.index("Allocated by task main in vfio_create_group:")
    assert lines[alloc + 1 : alloc + 3] == ["  vfio_create_group", "  vfio_group_find_or_alloc"]
    freed = next(i for i, ln in enumerate(lines) if ln.startswith("Freed by task main in vfio_create_group at step"))
    assert lines[freed + 1 : freed + 3] == ["  kfree", "  vfio_create_group"]
    assert access < alloc < freed
    assert "  bind" in lines[alloc + 1 : freed]  # the whole chain, up to the user's sysfs write
    # the steps the report names are the swimlanes' kfree and faulting access
    freed_at = int(re.search(r"at step (\d+):", lines[freed]).group(1))  # type: ignore[union-attr]
    fault_at = int(re.search(r"at step (\d+):", lines[access]).group(1))  # type: ignore[union-attr]
    assert step_of(f.trace, r"vfio_create_group: kfree\(group\)  <== FREED") == freed_at
    assert step_of(f.trace, r"vfio_group_get_device: read group->device_lock: use-after-free  <== FAULT") == fault_at
    assert freed_at < fault_at


class Flag(KStruct):
    s: SharedField[int] = SharedField(0)

    def __init__(self, k: Any) -> None:
        self.kernel = k


def racy(ctx: Execution) -> None:
    flag = kzalloc(ctx.kernel, Flag)
    assert flag is not None

    def writer() -> None:
        flag.s = 1

    def reader() -> None:
        _ = flag.s

    a = ctx.spawn("T1", writer)
    b = ctx.spawn("T2", reader)
    ctx.join(a, b)


def judge_traced(exe: Execution) -> list[RawFinding]:
    traced = exe.sched.tracing
    return judge_kernel(
        exe.kernel,
        teardown_done=False,
        trace=exe.sched.trace if traced else None,
        threads=exe.thread_names if traced else None,
    )


def test_a_data_race_reads_as_kcsan_both_accesses_with_their_chains_and_marked_steps() -> None:
    ex = explore(racy, judge_traced, bound=1)
    (f,) = ex.findings
    assert f.kind == "data-race"
    lines = f.detail.splitlines()
    assert lines[0].startswith("data-race on flag->s: ")
    assert lines[1] in ("BUG: KCSAN: data-race in writer / reader", "BUG: KCSAN: data-race in reader / writer")
    accesses = [ln for ln in lines if re.match(r"(read|write) to flag->s by task T\d at step \d+:$", ln)]
    assert len(accesses) == 2 and {a.split()[0] for a in accesses} == {"read", "write"}
    marked = [e for e in f.events if e.mark == "race"]
    assert sorted(e.caller for e in marked) == ["reader", "writer"]
    text = render_swimlanes(f.events, f.threads)
    assert text.count("<== DATA RACE") == 2
    assert "writer: flag->s = 1 (was 0)  <== DATA RACE" in text
    assert "reader: read flag->s (" in text


def grab_an_iommu_group_reference(s: ScenarioContext) -> None:
    """A reference taken and never put: the teardown leaves the iommu group allocated."""
    from vfio_ref.kernel.iommu import iommu_group_get

    p = s.platform
    p.add_group("g0")
    p.add_device("0000:00:01.0", "g0")
    s.begin()
    dev = p.dev("0000:00:01.0")
    t = s.spawn("T1", lambda: iommu_group_get(dev))
    s.join(t)


def test_a_leak_names_the_reference_nobody_put_back_as_ref_tracker_does() -> None:
    v = run(grab_an_iommu_group_reference, "p5")
    (f,) = v.findings
    assert f.kind == "leak"
    lines = f.detail.splitlines()
    assert lines[0].startswith("unreferenced object struct iommu_group (iommu_group 0, kref 1)")
    assert lines[1].startswith("ref_tracker: iommu_group->kref has 1 reference never put")
    assert re.fullmatch(r"  step \d+ \[T1\]: iommu_group_get: kref_get\(&iommu_group->kref\) \d+\u2192\d+", lines[2])
    assert "    iommu_group_get" in lines[3:6]


def test_the_lockdep_chain_says_where_each_lock_was_taken() -> None:
    v = run("notifier_vs_release", "base", ablation="register_notifier_under_group_lock", bound=0, traces=False)
    (f,) = v.findings
    assert f.kind == "lockdep"
    assert "but task is already holding lock:\n  (&group->notifier.rwsem) at: " in f.detail
    chain = f.detail.split("the existing dependency chain is:\n")[1]
    first = chain.splitlines()
    assert first[0].startswith("-> (&vfio.group_lock) -> (&group->notifier.rwsem): first taken in ")
    assert first[1].strip() and first[1].startswith("       ")  # the call chain that took it


# -- 2. swimlanes that map onto the C ---------------------------------------------------------------


def test_swimlanes_name_fields_by_their_kernel_expression_and_show_before_and_after() -> None:
    v = run("lifecycle", "p5")
    trace = v.trace
    assert "vfio_group_alloc: refcount_set(&group->users) 0\u21921" in trace
    assert re.search(r"kref_get\(&iommu_group->kref\) \d+\u2192\d+", trace)
    assert "» echo 0000:00:01.0 > bind" in trace
    assert "building the platform, folded" in trace
    assert "driver-core traffic without vfio.c folded" in trace
    for internal in ("refs=", "VfioGroup", "Refcount", ".kernel", "WRITE_ONCE(VfioGroup"):
        assert internal not in trace, internal
    # nothing folded with --full-trace; the same step numbers
    full = run("lifecycle", "p5", full_trace=True).trace
    assert "folded" not in full
    assert step_of(full, r"refcount_set\(&group->users\)") == step_of(trace, r"refcount_set\(&group->users\)")


def test_a_plain_field_write_shows_the_c_assignment_and_user_calls_are_marked() -> None:
    v = run("lifecycle", "p5", full_trace=True)
    text = v.trace
    assert "» open(" in text and "» close(" in text
    assert "READ_ONCE(VfioGroup" not in text


def test_step_numbers_are_unique_and_cells_are_never_cut() -> None:
    v = run("lifecycle", "p3")
    f = v.findings[0]
    text = render_swimlanes(f.events, f.threads, width=None, full=True)
    steps = [int(m.group(1)) for ln in text.splitlines() if (m := re.match(r"\s*(\d+) \|", ln))]
    assert steps == list(range(1, len(steps) + 1))
    narrow = render_swimlanes(f.events, f.threads, width=60, full=True)
    assert max(len(ln) for ln in narrow.splitlines()) <= 60
    joined = re.sub(r"\s+", " ", " ".join(ln.split("|", 1)[1].strip() for ln in narrow.splitlines() if "|" in ln))
    assert "vfio_group_get_device: read group->device_lock: use-after-free <== FAULT" in joined


def test_chains_on_demand() -> None:
    v = run("lifecycle", "p3", chains=True)
    f = v.findings[0]
    assert "  <- vfio_group_get_device <- __vfio_register_dev <- vfio_register_group_dev" in f.trace
    assert "  <- " not in run("lifecycle", "p3").findings[0].trace


# -- 3. everything as data --------------------------------------------------------------------------


def test_explore_json_carries_findings_schedules_faults_and_events_and_matches_the_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = cli(capsys, "explore", "lifecycle", "--level", "p3", "--json")
    assert rc == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    (f,) = doc["findings"]
    assert f["kind"] == "use-after-free" and f["schedule"] == "-" and f["injected"] is None
    assert f["id"] == {"kind": "use-after-free", "function": "vfio_group_get_device",
                       "what": "read of group->device_lock", "other": ""}
    marks = [e["mark"] for e in f["events"] if e["mark"]]
    assert marks[-2:] == ["kfree", "fault"]
    assert [e["step"] for e in f["events"]] == list(range(1, len(f["events"]) + 1))
    assert doc["returns"] and all(isinstance(v, list) for r in doc["returns"] for v in r.values())


def test_report_json_with_findings_matches_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(
        capsys, "report", "--json", "--findings", "--scenario", "lifecycle", "--level", "p3", "--level", "p5",
        "--jobs", "1",
    )
    assert rc == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    cell = doc["scenarios"]["lifecycle"]["p3"]
    assert cell["kinds"] == ["use-after-free"] and cell["findings"][0]["events"]


def test_the_schema_refuses_what_it_should() -> None:
    bad = {"levels": ["p9"], "scenarios": {}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


# -- 4. your own scenario from the command line ----------------------------------------------------


USER_SCENARIO = '''
from vfio_ref.scenarios import ScenarioContext


def open_vs_unbind(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device("0000:00:01.0", "g0")
    assert p.bind("0000:00:01.0") == 0
    s.begin()
    devt = p.group_devt("0000:00:01.0")

    def opener() -> None:
        f = p.open_devt(devt)
        s.observe("open", f if isinstance(f, int) else 0)
        if not isinstance(f, int):
            p.close(f)

    t1 = s.spawn("T1", opener)
    t2 = s.spawn("T2", lambda: p.unbind("0000:00:01.0"))
    s.join(t1, t2)
'''


def test_a_scenario_file_runs_under_explore_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.py"
    path.write_text(USER_SCENARIO)
    spec = f"{path}:open_vs_unbind"
    rc, out, _ = cli(capsys, "explore", spec, "--level", "p5", "--bound", "1", "--json")
    assert rc == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["clean"] and doc["scenario"] == "open_vs_unbind"
    opens = sorted({r["open"][0] for r in doc["returns"]})
    assert 0 in opens and len(opens) >= 2  # it opens, or it loses to the unbind
    rc, out, _ = cli(capsys, "report", "--json", "--scenario-file", spec, "--level", "p5", "--jobs", "1")
    assert rc == 0
    assert json.loads(out)["scenarios"][spec]["p5"]["clean"] is True
    rc, _, err = cli(capsys, "report", "--scenario-file", f"{path}:nope", "--level", "p5")
    assert rc == 2 and "has no function 'nope'" in err and "open_vs_unbind" in err


# -- 5. faults from the command line ----------------------------------------------------------------


def test_list_faults_names_the_points_a_scenario_reaches(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "list", "faults", "--level", "p5")
    assert rc == 0
    names = [ln.split()[0] for ln in out.splitlines()[1:-1]]
    assert names == list(dict.fromkeys(fault_points("p5")))
    assert "cannot fail in 5.15/5.16" in out  # the notifier registration
    rc, _, err = cli(capsys, "list", "faults")
    assert rc == 2 and "needs --level" in err


def test_fail_a_point_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The third review question: the cdev_device_add error path of patch 5 leaks nothing."""
    rc, out, _ = cli(capsys, "explore", "lifecycle", "--level", "p5", "--fail", "device_add@cdev_device_add", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["clean"] and doc["injected"] == ["device_add@cdev_device_add (every call)"]
    assert doc["returns"] == [{"bind": [-ENOMEM]}]
    rc, _, err = cli(capsys, "explore", "lifecycle", "--level", "p5", "--fail", "kzalloc@nowhere")
    assert rc == 2 and "'kzalloc@nowhere' is not reached" in err and "device_add@cdev_device_add" in err
    rc, _, err = cli(capsys, "explore", "lifecycle", "--level", "p5", "--fail", "device_add@cdev_device_add:2")
    assert rc == 2 and "call 2 is never made" in err
    rc, _, err = cli(capsys, "explore", "lifecycle", "--level", "p5", "--fail", "nonsense")
    assert rc == 2 and "expected KIND@FUNCTION[:N]" in err


def test_an_injected_failure_is_a_marked_step() -> None:
    v = run("lifecycle", "p5", fail=["device_add@cdev_device_add:1"])
    assert "device_add fails (FAULT_INJECTION: forcing a failure at device_add@cdev_device_add)  <== FAILURE" in v.trace


def test_the_fault_sweep_lists_each_point_and_its_verdict() -> None:
    v = run("fault_sweep", "p5", bound=0, traces=False)
    points = fault_points("p5")
    assert [sp.point for sp in v.swept] == [p for p in points if p != "notifier_register@iommu_group_register_notifier"]
    assert all(sp.verdict == "clean" for sp in v.swept if sp.point != "kzalloc@vfio_unregister_group_dev")
    assert "points swept (" in v.render(traces=False)


# -- 6. show / diff over the whole model -------------------------------------------------------------


@pytest.mark.parametrize("name", ["cdev_add", "chrdev_open", "fput", "cdev_device_del", "refcount_dec_and_test"])
def test_show_finds_the_simulated_kernels_functions(capsys: pytest.CaptureFixture[str], name: str) -> None:
    rc, out, _ = cli(capsys, "show", "p5", name)
    assert rc == 0 and f"def {name}(" in out and "the simulated kernel" in out


def test_show_names_the_level_that_defines_a_double_underscore_function(capsys: pytest.CaptureFixture[str]) -> None:
    # The level hook copies these into every later level's class; the header still names the
    # patch whose module holds the function (it had named the level asked for).
    rc, out, _ = cli(capsys, "show", "p5", "__vfio_group_get_from_iommu")
    assert rc == 0 and out.startswith("# __vfio_group_get_from_iommu at p5: defined by p2 (")
    rc, out, _ = cli(capsys, "show", "p4", "__vfio_register_dev")
    assert rc == 0 and out.startswith("# __vfio_register_dev at p4: defined by base (")


def test_show_an_ablation_and_the_review_fix(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "show", "p5", "vfio_group_try_get", "--ablation", "open_refcount_inc")
    assert rc == 0 and "refcount_inc(group.users)" in out and "OpenRefcountInc" in out
    rc, out, _ = cli(capsys, "show", "p5+open_refcount_inc", "vfio_group_try_get")
    assert "refcount_inc(group.users)" in out
    rc, out, _ = cli(capsys, "show", "p3+fix", "vfio_create_group")
    assert rc == 0 and "defined by ReviewFixes" in out
    rc, out, _ = cli(capsys, "show", "p3", "vfio_create_group")
    assert "the success path falls through here as well" in out


def test_diff_shows_the_review_fix_and_an_ablation(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "diff", "p3", "p3+fix")
    assert rc == 0
    assert "=== vfio_create_group: changed" in out
    assert "1 function(s) or struct(s) differ between p3 and p3+fix." in out
    rc, out, _ = cli(capsys, "diff", "p5", "p5+cdev_without_parent_ref")
    assert 'self.k.state["cdev_parent_ref"] = False' in out
    rc, out, _ = cli(capsys, "diff", "p3", "p3")
    assert "spell the review fix as LEVEL+fix" in out
    rc, _, err = cli(capsys, "diff", "p5", "p5+fix")
    assert rc == 2 and "review fixes exist for" in err


# -- 7. coverage ---------------------------------------------------------------------------------------


def test_coverage_says_which_functions_and_branches_the_schedules_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    v = run("lifecycle", "p5", coverage=True, traces=False)
    cov = v.coverage
    assert cov is not None
    assert 0 < cov.reached < cov.functions and 0 < cov.branches_taken < cov.branches
    fo = cov.by_function["vfio_group_fops_open"]
    assert fo.reached and any("if opened" in m and "true" in m for m in fo.missed)  # never a second open
    assert not cov.by_function["vfio_group_get_external_user"].reached
    d = run("double_open", "p5", coverage=True, traces=False).coverage
    assert d is not None
    assert not any("if opened" in m and "true" in m for m in d.by_function["vfio_group_fops_open"].missed)
    rc, out, _ = cli(capsys, "explore", "lifecycle", "--level", "p5", "--coverage", "--json")
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["coverage"]["reached"] == cov.reached
    rc, out, _ = cli(capsys, "report", "--coverage", "--scenario", "lifecycle", "--level", "p5", "--jobs", "1")
    assert rc == 0 and re.search(r"lifecycle\s+fn \d+/\d+ br \d+/\d+", out)


def test_each_of_two_identical_calls_in_a_row_is_marked_as_its_own_user_call() -> None:
    # Two closes in a row run in frames that may reuse one address: each call is numbered,
    # so both are marked (a frame's id made the second look like the first, now and then).
    def twice(s: ScenarioContext) -> None:
        p = s.platform
        p.add_group("g0")
        p.add_device("0000:00:01.0", "g0")
        s.begin()
        s.observe("bind", p.bind("0000:00:01.0"))
        first = p.open_group("0000:00:01.0")
        second = p.dup(first)
        for f in (first, second):
            s.observe("close", p.close(f))
        p.unbind("0000:00:01.0")

    v = run(twice, "p5", full_trace=True)
    assert v.clean and v.observations["close"] == [0, 0]
    assert v.trace.count("» close(") == 2, v.trace
