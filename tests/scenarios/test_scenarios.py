"""The scenario catalogue as a specification: what each scenario shows at each level.

Every expectation here is checked against a verdict computed by running the model (the
report's search: every interleaving, or every one up to a preemption where that is too
many; see vfio_ref.report); nothing reads a table of answers.
"""

from __future__ import annotations

import pytest

from vfio_ref import LEVELS
from vfio_ref.explorer import parse_schedule
from vfio_ref.kernel.errno import EBADF, EBUSY, EINVAL, ENODEV, ENXIO, EPERM
from vfio_ref.scenarios import SCENARIO_NAMES, SCENARIOS, run

from .verdicts import fixed, verdict

KINDS = {"warn", "bug", "use-after-free", "double-free", "leak", "deadlock", "lockdep", "data-race"}
FIXED = [lv for lv in LEVELS if lv not in ("p3", "p4")]  # levels that run as posted without the p3 bug


def test_the_catalogue_is_the_one_in_the_design() -> None:
    assert SCENARIO_NAMES == (
        "lifecycle",
        "noiommu_lifecycle",
        "noiommu_unprivileged_open",
        "double_open",
        "external_user",
        "unbalanced_put",
        "live_group_add_device",
        "live_group_bind_foreign_driver",
        "create_race",
        "notifier_vs_release",
        "open_vs_last_put",
        "lookup_vs_last_put",
        "fault_sweep",
        "minor_reuse",
        "device_fd_vs_unbind",
        "ioctl_vs_close",
        "device_fd_vs_group_close",
        "notifier_left_registered",
    )


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_runs_at_every_level_and_its_search_is_exhausted(name: str, level: str) -> None:
    v = fixed(name, level)
    assert v.scenario == name and v.level == level
    assert v.stats and all(st.exhausted for st in v.stats)
    # Every object a recorded step touched announced itself when it was made: the names the
    # reduction compares across executions are stable (else it could not vouch for the search).
    assert [st.lazy_names for st in v.stats] == [0] * len(v.stats)
    for f in v.findings:
        assert f.kind in KINDS
        assert f.detail and f.schedule
    if name != "fault_sweep" and SCENARIOS[name].threads > 1:
        assert v.stats[0].schedules > 1  # really explored, not just run once


# -- the sequential scenarios ---------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", ["lifecycle", "noiommu_lifecycle", "external_user", "minor_reuse"])
def test_the_normal_lifecycles_are_clean_once_patch_3_is_fixed(name: str, level: str) -> None:
    v = fixed(name, level)
    assert v.clean, [str(f) for f in v.findings]
    assert all(rc == 0 for what, rcs in v.observations.items() for rc in rcs if what in ("bind", "open"))


@pytest.mark.parametrize("level", ["p3", "p4"])
def test_as_posted_patch_3_frees_the_group_it_returns_in_every_lifecycle(level: str) -> None:
    v = verdict("lifecycle", level)
    assert v.kinds() == ["use-after-free"]
    (f,) = v.findings
    assert "Freed by task main in vfio_create_group" in f.detail
    assert "__vfio_register_dev" in f.detail  # the caller that uses the group it was handed


@pytest.mark.parametrize("level", LEVELS)
def test_a_second_open_is_ebusy_and_changes_nothing(level: str) -> None:
    v = fixed("double_open", level)
    assert v.observations["open"] == [0] and v.observations["second_open"] == [-EBUSY]
    assert v.clean


@pytest.mark.parametrize("level", LEVELS)
def test_a_noiommu_open_without_cap_sys_rawio_is_eperm_and_puts_its_reference_back(level: str) -> None:
    v = fixed("noiommu_unprivileged_open", level)
    assert v.observations["open"] == [-EPERM]
    assert v.clean  # the reference the open took is put back: nothing leaks at teardown


@pytest.mark.parametrize("level", LEVELS)
def test_a_device_added_to_a_live_group_fires_only_the_live_group_warn(level: str) -> None:
    v = fixed("live_group_add_device", level)
    assert [(f.kind, f.detail.split(" (call trace")[0]) for f in v.findings] == [
        ("warn", "WARN in vfio_group_nb_add_dev: Device added to live group 0!")
    ]


@pytest.mark.parametrize("level", LEVELS)
def test_a_foreign_driver_bound_in_a_live_group_hits_the_bug_on(level: str) -> None:
    v = fixed("live_group_bind_foreign_driver", level)
    assert v.kinds() == ["bug"]
    assert "BUG_ON(vfio_group_nb_verify(group, dev))" in v.findings[0].detail
    assert "vfio_iommu_group_notifier" in v.findings[0].detail


@pytest.mark.parametrize("level", LEVELS)
def test_an_unbalanced_put_frees_a_group_still_in_use(level: str) -> None:
    """Two puts nobody took free the group with its device registered and its container
    set: the release WARNs about the device list, patch 1's new WARN_ON about
    container_users fires from patch 1 on, and later users touch freed memory."""
    v = fixed("unbalanced_put", level)
    assert "use-after-free" in v.kinds()
    warns = {f.detail.split(" (call trace")[0].split(": ", 1)[1] for f in v.findings if f.kind == "warn"}
    assert "!list_empty(&group->device_list)" in warns
    assert ("atomic_read(&group->container_users)" in warns) == (level != "base")


def test_at_the_base_an_unbalanced_put_can_also_leak_the_unbound_dev_of_a_released_group() -> None:
    """The base's deferred put runs the release on the kworker: with two preemptions the
    release has already walked the group's unbound list when the unbind queues the device's
    vfio_unbound_dev on it, and then frees the group; nothing frees the entry."""
    v = run("unbalanced_put", "base", bound=None)
    assert v.complete
    (leak,) = [f for f in v.findings if f.kind == "leak"]
    assert leak.detail.startswith("unreferenced object struct vfio_unbound_dev")
    assert "allocated by vfio_unregister_group_dev" in leak.detail
    assert len(parse_schedule(leak.schedule)) == 2
    assert run("unbalanced_put", "base", bound=1).kinds() == ["use-after-free", "warn"]  # one preemption: none


def test_patch_5_allocates_minors_from_the_ida_and_an_old_dev_t_reaches_the_new_group() -> None:
    v = verdict("minor_reuse", "p5")
    assert v.observations["minor_reused"] == [1]  # lowest free minor: 0 again
    assert v.observations["old_devt_reaches_new_group"] == [1]  # never the freed group


# -- the concurrent scenarios ---------------------------------------------------------------


def test_two_creators_leak_an_iommu_group_reference_until_patch_3() -> None:
    for level in ("base", "p1", "p2"):
        v = verdict("create_race", level)
        assert v.kinds() == ["leak"], level
        assert "struct iommu_group" in v.findings[0].detail
        assert v.findings[0].schedule != "-"  # it takes a preemption
    for level in ("p3", "p4"):
        assert verdict("create_race", level, True).clean
    assert verdict("create_race", "p5").clean


def test_the_create_race_leak_needs_a_preemption() -> None:
    assert run("create_race", "base", bound=0, traces=False).clean
    assert run("create_race", "base", bound=1, traces=False).kinds() == ["leak"]


@pytest.mark.parametrize("name", ["notifier_vs_release", "open_vs_last_put", "lookup_vs_last_put"])
@pytest.mark.parametrize("level", LEVELS)
def test_the_races_against_the_last_put_are_clean_at_every_level(name: str, level: str) -> None:
    v = fixed(name, level)
    assert v.clean, [str(f) for f in v.findings]


def _outcomes(name: str, level: str, what: str) -> set[int]:
    """Every value ``what`` returned, over the verdict's whole search (each distinct outcome)."""
    v = fixed(name, level)
    assert v.clean and v.complete
    return {rc for r in v.returns for rc in r.get(what, [])}


def test_patch_5s_open_fails_with_enodev_or_enxio_when_it_loses_to_the_last_put() -> None:
    assert _outcomes("open_vs_last_put", "p5", "open") == {0, -ENODEV, -ENXIO}


# -- what user space holds: descriptors, the device fd, the group's other users --------------


@pytest.mark.parametrize("level", LEVELS)
def test_an_ioctl_racing_a_close_of_its_fd_is_clean_and_never_sees_release_run_under_it(level: str) -> None:
    """SET_CONTAINER runs under fdget: the close either comes first (the ioctl's fdget finds
    no file: -EBADF) or drops the table's reference only, and the ioctl's fdput runs the
    release, which takes the group out of the container it just joined."""
    v = fixed("ioctl_vs_close", level)
    assert v.clean, [str(f) for f in v.findings]
    assert _outcomes("ioctl_vs_close", level, "set_container") == {0, -EBADF}


@pytest.mark.parametrize("level", LEVELS)
def test_the_last_container_user_leaving_through_either_fd_is_clean(level: str) -> None:
    v = fixed("device_fd_vs_group_close", level)
    assert v.clean, [str(f) for f in v.findings]
    assert v.observations == {"bind": [0], "device_fd": [0], "close_device_fd": [0], "close_group_fd": [0]}


@pytest.mark.parametrize("level", LEVELS)
def test_an_unbind_with_a_device_fd_open_asks_user_space_and_waits_for_it(level: str) -> None:
    v = fixed("device_fd_vs_unbind", level)
    assert v.clean, [str(f) for f in v.findings]
    assert v.observations["request"] == [1]  # the driver relayed one request
    assert v.observations["close_device_fd"] == [0] and v.observations["close_group_fd"] == [0]


@pytest.mark.parametrize("level", LEVELS)
def test_a_group_notifier_left_registered_meets_the_kernels_two_warns(level: str) -> None:
    """The reopen WARNs in vfio_group_fops_open (and drops the stale notifier); the one
    registered again and never unregistered WARNs when the group goes: in vfio_group_release
    up to patch 3, in vfio_group_put from patch 4 (which merged the release into it)."""
    v = fixed("notifier_left_registered", level)
    put = "vfio_group_put" if level in ("p4", "p5") else "vfio_group_release"
    assert sorted((f.kind, f.detail.split(" (call trace")[0]) for f in v.findings) == [
        ("warn", "WARN in vfio_group_fops_open: group->notifier.head"),
        ("warn", f"WARN in {put}: group->notifier.head"),
    ]
    assert v.observations["register"] == [0] and v.observations["register_again"] == [0]
    assert v.observations["heard"] == [2]  # KVM attached and detached
    # the group is gone (-ENODEV), or at the base its last reference is still a pending
    # deferred put, and nobody uses its container any more (-EINVAL)
    assert v.observations["unregister_after_the_group_went"] == [-EINVAL if level == "base" else -ENODEV]


# -- findings replay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level", "fixes"), [("create_race", "base", False), ("create_race", "p3", False)]
)
def test_every_finding_replays_from_its_schedule(name: str, level: str, fixes: bool) -> None:
    v = run(name, level, review_fixes=fixes, bound=1, traces=False)
    assert v.findings
    for f in v.findings:
        again = run(name, level, review_fixes=fixes, replay=f.schedule, traces=False)
        assert f.key in {g.key for g in again.findings}, f


def test_a_finding_trace_reads_as_swimlanes_from_the_end_of_setup() -> None:
    v = run("create_race", "base", bound=1)
    t = v.findings[0].trace
    head = t.splitlines()[0]
    assert [c.strip() for c in head.split("|")] == ["step", "main", "T1", "T2", "kworker/1"]
    assert "building the platform, folded" in t
    assert "preempted; switch to" in t
    assert t.splitlines()[-1].startswith("leak: unreferenced object struct iommu_group")
