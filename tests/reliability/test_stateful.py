"""Random operation sequences at every level, checked after every step against the oracle.

A hypothesis state machine picks the next step among those the oracle allows (bind and
unbind vfio-pci / a non-vfio driver / pci-stub, add and remove a device, open a group by
device or by minor, close, open and close a container, set and unset it, pick the IOMMU,
external-user get and put; and ``put_in_use``, which does what user space does to use a
group -- open it, open a container, set it, pick the IOMMU -- as four checked steps, so that
sequences often reach groups in use).  After each step :meth:`ops.Run.check_state` holds: every
refcount equals the holders the oracle names, nothing freed is reachable from vfio.group_list
(the walk would raise UseAfterFree), minors and the IDR/IDA agree, and the WARNs are exactly
the ones the sequence makes the kernel print.  At teardown nothing is left allocated.

Left out of the random sequences, because the kernel itself cannot survive them (the oracle
refuses them, see :meth:`ops.Oracle.blocked`): a non-vfio driver binding in a group in use
(the BUG_ON in the notifier, by design until the series after this one), and unbinding the
last vfio device of a group whose container is still set (it waits for user space, which is
this very thread).  Patches 3 and 4 as posted free every group they create, so their random
sequences run with the review fixes; the as-posted bug is shown by a short example here.

A failure prints the shrunk sequence as an ``ops.replay(...)`` call to paste.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from vfio_ref.kernel import UseAfterFree
from vfio_ref.kernel.errno import EBUSY
from vfio_ref.vfio import LEVELS, REVIEW_FIX_LEVELS

from . import LONG, note_figure, ops

SETTINGS = settings(
    max_examples=500 if LONG else 60,
    stateful_step_count=60 if LONG else 40,
    deadline=None,
    database=None,
    derandomize=not LONG,  # CI runs the same examples every time; VFIO_REF_LONG=1 explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=False,
)

CHOICE = st.integers(min_value=0, max_value=31)


def _rule(op: str) -> Any:
    """A rule that runs one of the oracle's allowed ``op`` steps, picked by ``i``: mostly
    (i < 24, and always once shrunk) among the promising ones, those that would succeed, so
    that sequences reach groups in use with containers and external users."""

    @precondition(lambda self: bool(self.run.oracle.candidates(op)))
    @rule(i=CHOICE)
    def step(self: VfioSequences, i: int) -> None:
        o = self.run.oracle
        cands = o.candidates(op)
        promising = [s for s in cands if o.promising(s)]
        pool = promising if promising and i < 24 else cands
        self.run.step(pool[i % len(pool)])
        note_figure("sequence steps")

    step.__name__ = op
    return step


class VfioSequences(RuleBasedStateMachine):
    """One random sequence on a fresh kernel at ``LEVEL`` (subclassed per level below)."""

    LEVEL = "base"
    REVIEW_FIXES = False

    def __init__(self) -> None:
        super().__init__()
        self.run = ops.Run(self.LEVEL, review_fixes=self.REVIEW_FIXES)
        for s in ops.SETUP:
            self.run.step(s)
        note_figure("sequences run")

    add_device = _rule("add_device")
    remove_device = _rule("remove_device")
    bind = _rule("bind")
    unbind = _rule("unbind")
    open = _rule("open")
    open_minor = _rule("open_minor")
    close = _rule("close")
    open_container = _rule("open_container")
    close_container = _rule("close_container")
    set_container = _rule("set_container")
    set_iommu = _rule("set_iommu")
    unset_container = _rule("unset_container")
    ext_get = _rule("ext_get")
    ext_put = _rule("ext_put")

    def _idle_groups(self) -> list[str]:
        o = self.run.oracle
        return sorted(g for g, vg in o.vgroups.items() if vg.container is None and vg.externals == set())

    @precondition(lambda self: bool(self._idle_groups()))
    @rule(i=CHOICE)
    def put_in_use(self, i: int) -> None:
        """Several steps at once, as user space does them: open a group (unless open), open a
        container, set it, pick the IOMMU -- so random sequences often reach groups in use."""
        o = self.run.oracle
        groups = self._idle_groups()
        g = groups[i % len(groups)]
        if o.vgroups[g].file is None:
            self.run.step(("open", o.vfio_devices(g)[0]) if o.vfio_devices(g) else ("open_minor", o.vgroups[g].minor))
        f = o.vgroups[g].file
        self.run.step(("open_container",))
        c = f"c{o.n_containers - 1}"
        self.run.step(("set_container", f, c))
        self.run.step(("set_iommu", c))
        note_figure("sequence steps", 4)

    def teardown(self) -> None:
        if not self.run.failed:
            self.run.finish()


def machine_for(level: str, review_fixes: bool) -> type[VfioSequences]:
    return type(
        f"VfioSequences_{level}{'_fixed' if review_fixes else ''}",
        (VfioSequences,),
        {"LEVEL": level, "REVIEW_FIXES": review_fixes},
    )


@pytest.mark.parametrize("level", LEVELS)
def test_random_sequences_keep_every_refcount_equal_to_its_holders(level: str) -> None:
    run_state_machine_as_test(machine_for(level, level in REVIEW_FIX_LEVELS), settings=SETTINGS)


# --------------------------------------------------------------------------------------
# The oracle's checks fail when they should


@pytest.mark.parametrize("level", ["p3", "p4"])
def test_as_posted_every_group_creating_bind_is_a_use_after_free(level: str) -> None:
    """Alex Williamson's review finding: patch 3's success path falls into its error label and
    frees the group it returns; patch 4 keeps that shape."""
    with pytest.raises(ops.SequenceFailure) as failure:
        ops.replay(level, [*ops.SETUP, ("bind", "d0", "vfio-pci")])
    uaf = failure.value.__cause__
    assert isinstance(uaf, UseAfterFree)
    assert "Freed by task" in uaf.message and "in vfio_create_group" in uaf.message
    assert failure.value.where == "at step 5: ('bind', 'd0', 'vfio-pci')"
    assert failure.value.replay.startswith(f"ops.replay({level!r}, [")


def test_a_shrunk_failure_prints_a_sequence_that_replays_to_the_same_failure() -> None:
    """Hypothesis finds the as-posted patch 3 bug, shrinks it, and the failure message is a
    replay call; pasting it reproduces the same use-after-free."""
    as_posted = machine_for("p3", review_fixes=False)
    with pytest.raises(ops.SequenceFailure) as failure:
        run_state_machine_as_test(
            as_posted, settings=settings(SETTINGS, max_examples=50, derandomize=True, report_multiple_bugs=False)
        )
    text = str(failure.value)
    call = text[text.index("ops.replay(") :]
    assert call == failure.value.replay
    with pytest.raises(ops.SequenceFailure) as again:
        eval(call, {"ops": ops})
    assert type(again.value.__cause__) is type(failure.value.__cause__) is UseAfterFree
    assert again.value.where == failure.value.where
    steps = eval(call.replace("ops.replay('p3', ", "(", 1), {})
    # shrunk: the setup, at most one more step, and the bind that creates a group
    assert steps[: len(ops.SETUP)] == list(ops.SETUP)
    assert len(steps) <= len(ops.SETUP) + 2
    assert steps[-1][0] == "bind" and steps[-1][2] == "vfio-pci"


def test_a_step_the_kernel_answers_differently_fails_with_the_replay_call() -> None:
    run = ops.Run("p5")
    for s in ops.SETUP:
        run.step(s)
    run.step(("bind", "d0", "vfio-pci"))
    run.oracle.vgroups["g0"].file = "f99"  # the oracle now believes the group is open
    with pytest.raises(ops.SequenceFailure) as failure:
        run.step(("open", "d0"))
    text = str(failure.value)
    assert "('open', 'd0') returned 0, the kernel's rules say -EBUSY" in text
    assert text.rstrip().endswith("('open', 'd0'),\n])")


def test_a_reference_nobody_holds_is_reported_as_a_refcount_that_is_not_its_holders() -> None:
    run = ops.Run("p5")
    for s in ops.SETUP:
        run.step(s)
    run.step(("bind", "d0", "vfio-pci"))
    group = run.v.vfio_group_get_from_dev(run.p.dev("d0"))  # a reference the oracle cannot name
    with pytest.raises(ops.SequenceFailure, match=r"vfio_group of g0: refcount 2, holders 1"):
        run.step(("bind", "d1", "pci-stub"))
    run.v.vfio_group_put(group)


# --------------------------------------------------------------------------------------
# Examples the random sequences rely on, spelled out


@pytest.mark.parametrize("level", LEVELS)
def test_a_device_added_to_a_group_in_use_warns_exactly_once(level: str) -> None:
    run = ops.replay(
        level,
        [
            *ops.SETUP,
            ("bind", "d0", "vfio-pci"),
            ("open", "d0"),
            ("open_container",),
            ("set_container", "f0", "c0"),
            ("add_device", "d3", "g0"),  # in use: WARN
            ("unset_container", "f0"),
            ("add_device", "d4", "g0"),  # no longer in use: no WARN
        ],
        review_fixes=level in REVIEW_FIX_LEVELS,
    )
    assert [(w.function, w.message) for w in run.k.warnings] == [
        ("vfio_group_nb_add_dev", "Device added to live group 0!")
    ]


@pytest.mark.parametrize("level", LEVELS)
def test_an_external_user_keeps_the_container_after_the_file_and_its_fd_close(level: str) -> None:
    run = ops.replay(
        level,
        [
            *ops.SETUP,
            ("bind", "d0", "vfio-pci"),
            ("open", "d0"),
            ("open_container",),
            ("set_container", "f0", "c0"),
            ("set_iommu", "c0"),
            ("ext_get", "f0"),
            ("close", "f0"),
            ("close_container", "c0"),
            ("open", "d0"),  # the group is still in its container: -EBUSY
            ("ext_put", "e0"),  # the container goes with its last user
            ("open", "d0"),
            ("close", "f1"),
            ("unbind", "d0"),  # the last holder: the group goes
        ],
        review_fixes=level in REVIEW_FIX_LEVELS,
    )
    first = len(ops.SETUP)
    assert run.returns[first + 8] == -EBUSY and run.returns[first + 10] == 0
    assert run.snapshots[first + 8]["g0"][0] == 2  # the device and the external user
    assert run.snapshots[-1] == {}
