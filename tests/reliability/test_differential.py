"""Differential runs: two levels on the same operation sequences must agree, except where
a patch changes behaviour on purpose -- and each such exception is named and asserted.

* Patch 2 against patch 1: a pure refactor (the race check calls the list search instead of
  open-coding it).  Same return codes, same holder counts and minors after every step, same
  WARNs, same leaks; and, under the explorer, the same outcomes in every interleaving.
* Patch 5 against patch 4 with the review fixes: the same, except
  - STALE_MINOR: opening a minor no group owns.  Up to patch 4 one cdev spans every minor, so
    the open reaches vfio_group_fops_open, whose IDR lookup finds nothing: -ENODEV.  From
    patch 5 each group owns its cdev; with the group gone nothing is mapped: chrdev_open
    fails first with -ENXIO.
  - OPEN_VS_LAST_PUT: an open racing the last put.  Patch 4 looks the minor up in the IDR
    under vfio.group_lock, atomically with the last put (0 or -ENODEV).  Patch 5 reaches the
    group through its cdev: before cdev_device_del the open finds ``users`` at zero and
    refcount_inc_not_zero fails (-ENODEV), after it chrdev_open finds nothing (-ENXIO).
  - MINOR_BEFORE_RACE_CHECK: two creators of one group.  Patch 4 allocates the minor under
    the lock after the race check (always the lowest, 0); patch 5 allocates it in
    vfio_group_alloc before taking the lock, so the winner may hold minor 1 while the loser
    returns minor 0 when its struct device is released.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfio_ref.explorer import explore
from vfio_ref.kernel.device import MINOR
from vfio_ref.kernel.errno import ENODEV, ENXIO
from vfio_ref.scenarios import SCENARIO_NAMES, SCENARIOS, ScenarioContext
from vfio_ref.scenarios.harness import judge_execution, make_program
from vfio_ref.vfio import LEVELS, REVIEW_FIX_LEVELS

from . import LONG, note_figure, ops

SETTINGS = settings(
    max_examples=500 if LONG else 100,
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=False,
)
CHOICES = st.lists(st.integers(min_value=0, max_value=(1 << 30) - 1), max_size=60 if LONG else 40)


def _run(level: str, steps: list[ops.Step], *, review_fixes: bool = False) -> ops.Run:
    run = ops.Run(level, review_fixes=review_fixes, check=False)
    for s in steps:
        run.step(s)
    run.finish()
    return run


def _replay_text(steps: list[ops.Step]) -> str:
    return ops.format_replay("p5", steps)


# --------------------------------------------------------------------------------------
# Sequential sequences


@SETTINGS
@given(choices=CHOICES)
def test_patch2_is_a_pure_refactor_of_patch1(choices: list[int]) -> None:
    steps = ops.sequence(choices)
    note_figure("sequences run", 2)
    p1, p2 = _run("p1", steps).outcome(), _run("p2", steps).outcome()
    assert p2 == p1, f"p1 and p2 differ on\n{_replay_text(steps)}"


def stale_minor(steps: list[ops.Step], i: int, p4: ops.Run, p5: ops.Run) -> bool:
    """STALE_MINOR: step ``i`` opens a minor that no group owns (in both runs), p4 says
    -ENODEV from vfio_group_fops_open, p5 says -ENXIO from chrdev_open."""
    op, *args = steps[i]
    if op != "open_minor":
        return False
    before = (p4.snapshots[i - 1], p5.snapshots[i - 1])
    owned = any(minor == args[0] for snap in before for _, minor in snap.values())
    return not owned and p4.returns[i] == -ENODEV and p5.returns[i] == -ENXIO


@SETTINGS
@given(choices=CHOICES)
def test_patch5_answers_as_patch4_except_for_a_stale_minor(choices: list[int]) -> None:
    steps = ops.sequence(choices)
    note_figure("sequences run", 2)
    p4 = _run("p4", steps, review_fixes=True)
    p5 = _run("p5", steps)
    a, b = p4.outcome(), p5.outcome()
    differing = [i for i, (x, y) in enumerate(zip(a.returns, b.returns, strict=True)) if x != y]
    unexplained = [steps[i] for i in differing if not stale_minor(steps, i, p4, p5)]
    assert unexplained == [], f"p4 and p5 differ at {unexplained} on\n{_replay_text(steps)}"
    assert b.snapshots == a.snapshots  # same holders and minors after every step
    assert (b.warnings, b.leaks, b.faults) == (a.warnings, a.leaks, a.faults)


@pytest.mark.parametrize("level", LEVELS)
def test_a_stale_minor_fails_with_enodev_up_to_patch4_and_with_enxio_at_patch5(level: str) -> None:
    steps = [
        *ops.SETUP,
        ("bind", "d0", "vfio-pci"),
        ("unbind", "d0"),
        ("open_minor", 0),
        ("bind", "d0", "vfio-pci"),
        ("open_minor", 0),
        ("close", "f0"),
        ("open_minor", 1),
    ]
    run = ops.replay(level, steps, review_fixes=level in REVIEW_FIX_LEVELS)  # checked by the oracle too
    stale = -ENXIO if level == "p5" else -ENODEV
    assert run.returns[len(ops.SETUP) :] == [0, 0, stale, 0, 0, 0, stale]
    assert run.outcome().leaks == []


# --------------------------------------------------------------------------------------
# Every interleaving, under the explorer


Outcomes = set[tuple[tuple[str, tuple[int, ...]], ...]]
# One preemption already reaches every deliberate difference; VFIO_REF_LONG=1 explores two.
BOUND = 2 if LONG else 1


def explored(
    body: Callable[[ScenarioContext], None],
    level: str,
    *,
    review_fixes: bool = False,
    noiommu: bool = False,
    reduction: bool = False,
) -> tuple[Outcomes, list[str]]:
    """Every distinct set of return codes the scenario sees over all interleavings up to
    ``BOUND`` preemptions, and the finding kinds.  Plain bounded search by default: the
    comparison must not depend on the explorer's partial-order reduction being sound."""
    seen: Outcomes = set()

    def judge(exe: object) -> list[object]:
        ctx = exe.data.get("ctx")  # type: ignore[attr-defined]
        if ctx is not None:
            seen.add(tuple(sorted((k, tuple(v)) for k, v in ctx.observations.items())))
        return judge_execution(exe)  # type: ignore[arg-type]

    program = make_program(body, level, review_fixes=review_fixes, ablation=None, noiommu=noiommu)
    ex = explore(program, judge, bound=BOUND, reduction=reduction, traces=False, shrink=False,  # type: ignore[arg-type]
                 max_schedules=None)
    note_figure("interleavings explored", ex.stats.schedules)
    # Outcome sets compare only over whole spaces: a capped search would pass silently.
    assert ex.stats.complete, f"{level}: the bounded space was not exhausted"
    return seen, sorted({f.kind for f in ex.findings})


def returns_of(outcomes: Outcomes, what: str) -> set[int]:
    return {v for o in outcomes for k, vals in o for v in vals if k == what}


EXPLORED = [n for n in SCENARIO_NAMES if n != "fault_sweep"]
CONCURRENT = [n for n in EXPLORED if SCENARIOS[n].threads > 1]


# The base's deferred put runs on a kworker, a third thread: its spaces are large (thousands of
# schedules at one preemption), so CI checks two of its concurrent scenarios; VFIO_REF_LONG=1
# checks them all, at two preemptions.
BASE_SAMPLE = ("open_vs_last_put", "ioctl_vs_close")
CROSS_CHECK = [(lv, n) for n in CONCURRENT for lv in LEVELS if LONG or lv != "base" or n in BASE_SAMPLE]


@pytest.mark.parametrize(("level", "name"), CROSS_CHECK)
def test_the_explorers_reduction_loses_no_outcome(level: str, name: str) -> None:
    """The reduced search may skip an interleaving only when an equivalent one within the
    bound is run: every outcome of the plain bounded search (return codes, finding
    identities, what is left allocated at the end) must be reached with the reduction on, and
    nothing else.  (The old DPOR kept a lock's race with its release, and never reached the
    open that loses to the last put at p4 and p5.)"""
    sc = SCENARIOS[name]
    fixes = level in REVIEW_FIX_LEVELS
    program = make_program(sc.fn, level, review_fixes=fixes, ablation=None, noiommu=sc.noiommu)
    # No cap: the comparison means something only over the whole bounded space (at the base,
    # three threads, the plain search of create_race at bound 2 runs past 100,000 schedules).
    plain = explore(program, judge_execution, bound=BOUND, reduction=False, traces=False, shrink=False,
                    max_schedules=None)
    reduced = explore(program, judge_execution, bound=BOUND, traces=False, shrink=False, max_schedules=None)
    note_figure("interleavings explored", plain.stats.schedules + reduced.stats.schedules)
    assert plain.stats.complete and reduced.stats.complete
    assert set(reduced.outcomes) == set(plain.outcomes)
    assert reduced.stats.schedules <= plain.stats.schedules


WHAT_USER_SPACE_HOLDS = ("device_fd_vs_unbind", "ioctl_vs_close", "device_fd_vs_group_close")


def test_the_cross_check_covers_the_scenarios_of_what_user_space_holds() -> None:
    assert set(WHAT_USER_SPACE_HOLDS) <= set(CONCURRENT)


def test_the_reduction_loses_no_outcome_of_a_notifier_left_registered_at_the_base() -> None:
    """Sequential in itself, the scenario is concurrent at the base: the notifier's deferred
    puts run on a kworker, and the last one may run the release that WARNs."""
    sc = SCENARIOS["notifier_left_registered"]
    plain = explored(sc.fn, "base")
    assert plain[1] == ["warn"]
    assert explored(sc.fn, "base", reduction=True) == plain


@pytest.mark.parametrize("name", EXPLORED)
def test_patch2_and_patch1_see_the_same_outcomes_in_every_interleaving(name: str) -> None:
    sc = SCENARIOS[name]
    assert explored(sc.fn, "p2", noiommu=sc.noiommu) == explored(sc.fn, "p1", noiommu=sc.noiommu)


@pytest.mark.parametrize("name", EXPLORED)
def test_patch5_sees_patch4s_outcomes_except_an_open_racing_the_last_put(name: str) -> None:
    sc = SCENARIOS[name]
    p4, p4_kinds = explored(sc.fn, "p4", review_fixes=True, noiommu=sc.noiommu)
    p5, p5_kinds = explored(sc.fn, "p5", noiommu=sc.noiommu)
    assert p5_kinds == p4_kinds
    if name == "open_vs_last_put":
        # OPEN_VS_LAST_PUT: patch 4's open fails only in the IDR lookup; patch 5's fails in
        # refcount_inc_not_zero (-ENODEV) or, once the cdev is unmapped, in chrdev_open (-ENXIO)
        assert returns_of(p4, "open") == {0, -ENODEV}
        assert returns_of(p5, "open") == {0, -ENODEV, -ENXIO}
        assert {o for o in p5 if -ENXIO not in dict(o)["open"]} == p4
    else:
        assert p5 == p4


def create_race_minor(s: ScenarioContext) -> None:
    """create_race, observing which minor the surviving group got."""
    from vfio_ref.scenarios.catalogue import A, B

    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    p.add_device(B, "g0")
    s.begin()
    t1 = s.spawn("T1", lambda: s.observe("bind_A", p.bind(A)))
    t2 = s.spawn("T2", lambda: s.observe("bind_B", p.bind(B)))
    s.join(t1, t2)
    s.observe("minor", MINOR(p.group_devt(A)))
    p.unbind(A)
    p.unbind(B)


def test_patch5_allocates_the_minor_before_the_race_check() -> None:
    """MINOR_BEFORE_RACE_CHECK: the group two creators race for has minor 0 at patch 4 in
    every interleaving; at patch 5 the winner may have taken minor 1 while the loser held 0
    (which the loser gives back: nothing leaks)."""
    p4, p4_kinds = explored(create_race_minor, "p4", review_fixes=True)
    p5, p5_kinds = explored(create_race_minor, "p5")
    assert p4_kinds == p5_kinds == []
    assert returns_of(p4, "minor") == {0}
    assert returns_of(p5, "minor") == {0, 1}
    assert returns_of(p4, "bind_A") == returns_of(p5, "bind_A") == {0}
