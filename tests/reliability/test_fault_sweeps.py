"""Fault sweeps: every injectable failure point failed in turn, and random combinations.

At patch 5 and at patches 3 and 4 with the review fixes:

* the harness's ``fault_sweep`` (the lifecycle, once per point, explored with one
  preemption) finds exactly the WARNs an allocation failure legitimately triggers;
* every catalogued scenario, run free-running with each point it passes failed in turn:
  nothing is used after free, nothing leaks, the only new WARNs are the legitimate ones, and
  a failed operation reports -ENOMEM to its caller;
* operation sequences checked by the oracle at every step (the scenarios' sequential
  shapes, and random ones), with each point failed in turn and with random combinations of
  points by seed: the failed operation returns the kernel's errno (-ENOMEM), changes nothing
  else, every refcount still equals its holders, and the teardown leaves nothing behind.

The kernel's error handling, which the oracle applies (``ops.WARN_ONLY_POINTS`` and
``ops.IGNORED_POINTS``): every injectable failure fails its operation with -ENOMEM, except
that vfio_unregister_group_dev cannot fail (without its vfio_unbound_dev it WARNs
``!unbound`` and goes on), __vfio_register_dev ignores vfio_assign_device_set's result and
vfio_noiommu_group_alloc ignores iommu_group_set_name's.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.core import Kernel, KernelFault, ModelUsageError
from vfio_ref.kernel.errno import ENOMEM
from vfio_ref.kernel.fault import can_fail
from vfio_ref.scenarios import SCENARIO_NAMES, SCENARIOS, ScenarioContext, fault_points, run_fault_sweep
from vfio_ref.vfio import load

from . import LONG, note_figure, ops

LEVELS = [("p5", False), ("p4", True), ("p3", True)]
IDS = [f"{lv}{'+fixes' if rf else ''}" for lv, rf in LEVELS]
ENOMEM_TEXTS = ("-12", "ENOMEM")


@pytest.mark.parametrize(("level", "review_fixes"), LEVELS, ids=IDS)
def test_the_lifecycle_sweep_finds_exactly_the_warns_allocation_failures_trigger(
    level: str, review_fixes: bool
) -> None:
    points = fault_points(level, review_fixes=review_fixes)
    verdict = run_fault_sweep(level, review_fixes=review_fixes, traces=False)
    note_figure("fault points swept", len(points))
    # The points no 5.15/5.16 kernel can fail are not swept (include_unreachable adds them).
    assert verdict.observations["points_swept"] == [len([p for p in points if can_fail(p)])]
    found = sorted(
        (f.kind, (f.injected or "").split(" ")[0], f.detail.split(" (call trace")[0]) for f in verdict.findings
    )
    expected = sorted(
        ("warn", p, f"WARN in {fn}: {msg}")
        for p in set(points)
        if p in ops.WARN_ONLY_POINTS
        for fn, msg in [ops.WARN_ONLY_POINTS[p]]
    )
    assert found == expected
    assert "kzalloc@vfio_unregister_group_dev" in points  # the sweep reaches the WARN-only point


# --------------------------------------------------------------------------------------
# Every scenario, free-running, each point in turn


class FreeRun:
    """One free-running run of a scenario body, optionally with the Nth injectable call
    after its setup failed."""

    def __init__(self, name: str, level: str, review_fixes: bool, fail_nth: int | None = None) -> None:
        sc = SCENARIOS[name]
        k = Kernel(hang_timeout=3.0)
        v = load(k, level, review_fixes=review_fixes, noiommu=sc.noiommu)
        assert v.vfio_init() == 0
        s = ScenarioContext(k, v, None)
        fi = k.fault_inject
        self.base = 0

        def arm() -> None:
            self.base = len(fi.points)
            if fail_nth is not None:
                fi.fail_nth(self.base + fail_nth)

        s.on_begin = arm
        self.raised: str | None = None
        try:
            sc.fn(s)
        except ModelUsageError as e:  # the platform's use_group / add_device refuse to go on
            self.raised = str(e)
        except KernelFault as e:  # an oops in the main thread (the BUG_ON scenario, say)
            k.record_fault(e)
        self.oopsed = k.oopsed
        if not k.oopsed:
            s.platform.teardown()
        self.kernel = k
        self.points = [p.name for p in fi.points[self.base :]]
        self.injected = [p.name for p in fi.injected]
        self.observations = s.observations
        self.warnings = Counter((w.function, w.message) for w in k.warnings)
        self.fault_kinds = sorted({f.kind for f in k.faults})
        self.leaks = [str(leak) for leak in k.leaks()] if not k.oopsed else []

    def returned(self) -> set[int]:
        return {v for vals in self.observations.values() for v in vals}


SWEPT_SCENARIOS = [n for n in SCENARIO_NAMES if n != "fault_sweep"]


@pytest.mark.parametrize("name", SWEPT_SCENARIOS)
@pytest.mark.parametrize(("level", "review_fixes"), LEVELS, ids=IDS)
def test_every_scenario_survives_each_failure_point(level: str, review_fixes: bool, name: str) -> None:
    clean = FreeRun(name, level, review_fixes)
    assert clean.injected == []
    for n in range(1, len(clean.points) + 1):
        run = FreeRun(name, level, review_fixes, fail_nth=n)
        where = f"{name} at {level} with injectable call #{n} ({run.injected}) failed"
        # nothing new goes wrong: scenarios that oops by design (a BUG_ON, the unbalanced
        # put's use-after-free) may stop earlier, never worse -- except the oops a kernel
        # bug takes once the failure exposes it (ops.OOPS_POINTS)
        expected_oops = tuple(ops.OOPS_POINTS[p] for p in run.injected if p in ops.OOPS_POINTS)
        new_faults = [f.message for f in run.kernel.faults if f.kind not in clean.fault_kinds]
        assert all(m.startswith(expected_oops) for m in new_faults) if expected_oops else not new_faults, (
            f"{where}: faults {new_faults}"
        )
        assert run.leaks == [], f"{where}: leaks {run.leaks}"
        legit = Counter(ops.WARN_ONLY_POINTS[p] for p in run.injected if p in ops.WARN_ONLY_POINTS)
        assert run.warnings - clean.warnings == legit, f"{where}: WARNs {run.warnings}"
        failing = [
            p
            for p in run.injected
            if p not in ops.WARN_ONLY_POINTS
            and p not in ops.IGNORED_POINTS
            and p not in ops.KNOWN_GAPS
            and not ops.is_platform_point(p)
        ]
        if failing and not run.oopsed:
            reported = -ENOMEM in run.returned() or any(t in (run.raised or "") for t in ENOMEM_TEXTS)
            assert reported, f"{where}: -ENOMEM never reached the caller ({run.observations}, {run.raised})"
    note_figure("fault points swept", len(clean.points))


# --------------------------------------------------------------------------------------
# Oracle-checked sequences, each point in turn and random combinations

S = ops.SETUP
SEQUENCES: dict[str, list[ops.Step]] = {
    "lifecycle": [*S, ("bind", "d0", "vfio-pci"), ("open", "d0"), ("close", "f0"), ("unbind", "d0")],
    "double_open": [*S, ("bind", "d0", "vfio-pci"), ("open", "d0"), ("open", "d0"), ("close", "f0"), ("unbind", "d0")],
    "external_user": [
        *S,
        ("bind", "d0", "vfio-pci"),
        ("open", "d0"),
        ("open_container",),
        ("set_container", "f0", "c0"),
        ("set_iommu", "c0"),
        ("ext_get", "f0"),
        ("ext_put", "e0"),
        ("close", "f0"),
        ("close_container", "c0"),
        ("unbind", "d0"),
    ],
    "live_group_add_device": [
        *S,
        ("bind", "d0", "vfio-pci"),
        ("open", "d0"),
        ("open_container",),
        ("set_container", "f0", "c0"),
        ("set_iommu", "c0"),
        ("add_device", "d3", "g0"),
        ("close", "f0"),
        ("close_container", "c0"),
        ("unbind", "d0"),
    ],
    "two_devices_one_group": [
        *S,
        ("bind", "d0", "vfio-pci"),
        ("bind", "d1", "vfio-pci"),
        ("open", "d1"),
        ("unbind", "d0"),
        ("close", "f0"),
        ("unbind", "d1"),
    ],
    "minor_reuse": [
        *S,
        ("bind", "d0", "vfio-pci"),
        ("unbind", "d0"),
        ("bind", "d2", "vfio-pci"),
        ("bind", "d0", "vfio-pci"),
        ("open_minor", 1),
        ("close", "f0"),
        ("unbind", "d2"),
        ("open_minor", 0),
    ],
}
RANDOM_SEEDS = range(20) if LONG else range(5)
for seed in RANDOM_SEEDS:
    SEQUENCES[f"random{seed}"] = ops.random_sequence(seed, 25)


@pytest.mark.parametrize("seq", sorted(SEQUENCES))
@pytest.mark.parametrize(("level", "review_fixes"), LEVELS, ids=IDS)
def test_each_failure_point_of_a_sequence_fails_only_its_operation(level: str, review_fixes: bool, seq: str) -> None:
    steps = SEQUENCES[seq]
    clean = ops.replay(level, steps, review_fixes=review_fixes)
    points = ops.swept_points(clean)
    assert points, "the sequence passes no injectable point"
    for p in points:
        run = ops.replay(level, steps, review_fixes=review_fixes, fail_nth=p.seq - clean.armed_at)
        assert [x.name for x in run.k.fault_inject.injected] == [p.name]
    note_figure("fault points swept", len(points))


COMBINATIONS = 200 if LONG else 25


@pytest.mark.parametrize(("level", "review_fixes"), LEVELS, ids=IDS)
def test_random_combinations_of_failures_by_seed(level: str, review_fixes: bool) -> None:
    rng = random.Random(f"{level}{review_fixes}")
    injected = 0
    for _ in range(COMBINATIONS):
        steps = ops.random_sequence(rng.randrange(1 << 30), 30)
        clean = ops.replay(level, steps, review_fixes=review_fixes)
        points = sorted({(p.name, p.nth_at_point) for p in ops.swept_points(clean)})
        if not points:
            continue
        chosen = rng.sample(points, min(len(points), rng.randint(2, 4)))
        run = ops.replay(level, steps, review_fixes=review_fixes, failures=chosen)
        injected += len(run.k.fault_inject.injected)
    note_figure("fault combinations run", COMBINATIONS)
    assert injected >= COMBINATIONS  # the combinations do fail calls


# --------------------------------------------------------------------------------------
# The legitimate WARN, and what the platform does not yet do


@pytest.mark.parametrize(("level", "review_fixes"), [*LEVELS, ("base", False)], ids=[*IDS, "base"])
def test_a_failed_unbound_allocation_warns_unbound_and_the_unbind_still_completes(
    level: str, review_fixes: bool
) -> None:
    steps = [*ops.SETUP, ("bind", "d0", "vfio-pci"), ("unbind", "d0")]
    run = ops.replay(level, steps, review_fixes=review_fixes, failures=[("kzalloc@vfio_unregister_group_dev", 1)])
    assert [(w.function, w.message) for w in run.k.warnings] == [("vfio_unregister_group_dev", "!unbound")]
    assert run.snapshots[-1] == {}  # the group went with its last device


@pytest.mark.parametrize(("level", "review_fixes"), LEVELS, ids=IDS)
def test_a_failed_group_creation_fails_the_bind_with_enomem_and_leaves_nothing(level: str, review_fixes: bool) -> None:
    steps = [*ops.SETUP, ("bind", "d0", "vfio-pci")]
    clean = ops.replay(level, steps, review_fixes=review_fixes)
    creation = [p for p in clean.step_points[len(ops.SETUP)] if p.name != "kzalloc@vfio_assign_device_set"]
    assert len(creation) >= 3  # the probe's allocation and the group's
    for p in creation:
        run = ops.replay(level, steps, review_fixes=review_fixes, fail_nth=p.seq - clean.armed_at)
        assert run.returns[-1] == -ENOMEM, p.name
        assert run.snapshots[-1] == {}


def test_a_failed_iommu_driver_open_fails_set_iommu_with_enomem() -> None:
    steps = [*ops.SETUP, ("bind", "d0", "vfio-pci"), ("open", "d0"), ("open_container",), ("set_container", "f0", "c0")]
    run = ops.Run("p5")
    for s in steps:
        run.step(s)
    run.k.fault_inject.fail("kzalloc@_type1_open")
    assert run.p.set_iommu(run.containers["c0"]) == -ENOMEM
    assert run.containers["c0"].private_data.iommu_driver is None


def test_the_file_helpers_stay_usable_after_a_failed_container_open() -> None:
    run = ops.replay(
        "p5", [*ops.SETUP, ("open_container",), ("open_container",)], failures=[("kzalloc@vfio_fops_open", 1)]
    )
    assert run.returns[-2:] == [-ENOMEM, 0]
    assert isinstance(run.containers["c0"], File)


@pytest.mark.parametrize("level", ["base", "p1", "p2", "p3", "p4", "p5"])
def test_every_sweep_finding_replays_from_its_failure_and_schedule_alone(level: str) -> None:
    """A sweep's finding names its failure as --fail takes it: injecting that one failure
    and replaying the schedule gives the same finding (what the printed command does)."""
    from vfio_ref.scenarios import run
    from vfio_ref.scenarios.catalogue import FAULT_SWEEP_OF

    v = run_fault_sweep(level, traces=False)
    assert v.findings, f"the sweep at {level} finds the legitimate !unbound WARN at least"
    for f in v.findings:
        assert f.fail is not None and f.fail.count(":") == 1
        again = run(FAULT_SWEEP_OF, level, fail=[f.fail], replay=f.schedule, traces=False)
        assert f.ident in {g.ident for g in again.findings}, (f.fail, f.schedule)
