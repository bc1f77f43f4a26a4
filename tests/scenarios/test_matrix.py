"""The report's whole matrix, pinned: each cell as ``vfio-ref report`` prints it, with the
reason it reads so.  A cell that changes must change here, with its reason, in the same
commit.  ``*`` marks a cell searched up to one preemption (its unbounded search did not
finish within the budget); the others were searched over every interleaving.

The verdicts come from running the model (tests/scenarios/verdicts.py computes the report
once per test run); this file only says what they must be, and why.
"""

from __future__ import annotations

import pytest

from vfio_ref import LEVELS
from vfio_ref.scenarios import SCENARIO_NAMES

from .verdicts import report

UAF_P3 = "use-after-free"  # p3/p4 as posted: vfio_create_group frees the group it returns (review)
WHY_P3 = "p3/p4 as posted: vfio_create_group() frees the group it returns (the review's finding)"

# scenario -> (cells base..p5, reason for the non-p3/p4 cells)
EXPECTED: dict[str, tuple[tuple[str, ...], str]] = {
    "lifecycle": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "bind, open, close, unbind: nothing wrong; at the base the deferred put's kworker is a third "
        "thread whose interleavings make the space too big to finish unbounded",
    ),
    "noiommu_lifecycle": (
        ("clean", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "the same without an IOMMU (no group notifier, so no kworker at the base)",
    ),
    "noiommu_unprivileged_open": (
        ("clean", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "the open without CAP_SYS_RAWIO is -EPERM and puts its reference back",
    ),
    "double_open": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "the second open is -EBUSY and changes nothing",
    ),
    "external_user": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "KVM's reference through the file is taken and put back",
    ),
    "unbalanced_put": (
        (
            "use-after-free,warn*",
            "use-after-free,warn",
            "use-after-free,warn",
            "use-after-free",
            "use-after-free",
            "use-after-free,warn",
        ),
        "two puts nobody took free a group in use: its release WARNs (device list, container users) "
        "and later users touch freed memory",
    ),
    "live_group_add_device": (
        ("warn*", "warn", "warn", UAF_P3, UAF_P3, "warn"),
        "vfio_group_nb_add_dev's WARN 'Device added to live group'",
    ),
    "live_group_bind_foreign_driver": (
        ("bug", "bug", "bug", UAF_P3, UAF_P3, "bug"),
        "BUG_ON(vfio_group_nb_verify()) in the notifier: a foreign driver bound in a live group",
    ),
    "create_race": (
        ("leak*", "leak*", "leak*", "use-after-free*", "use-after-free*", "clean*"),
        "two creators race: the loser leaks an iommu_group reference until patch 3 (its subject); "
        "patch 5 is clean; too many interleavings to finish unbounded",
    ),
    "notifier_vs_release": (
        ("clean*", "clean*", "clean*", UAF_P3, UAF_P3, "clean*"),
        "the notifier racing the last put is safe at every level; too many interleavings unbounded",
    ),
    "open_vs_last_put": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "an open racing the last put fails cleanly (patch 5: -ENODEV or -ENXIO), never touches freed memory",
    ),
    "lookup_vs_last_put": (
        ("clean*", "clean*", "clean*", UAF_P3, UAF_P3, "clean*"),
        "a registration's group lookup racing the last put never revives a dying group",
    ),
    "fault_sweep": (
        ("leak,warn*", "warn*", "warn*", "use-after-free*", "use-after-free*", "warn*"),
        "every level: WARN_ON(!unbound) when vfio_unregister_group_dev's allocation fails; the base "
        "also WARNs !do_work and leaks the group when its deferred put cannot allocate its work",
    ),
    "minor_reuse": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "a rebind reuses the lowest minor; the old dev_t reaches the new group or fails",
    ),
    "device_fd_vs_unbind": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "the unbind asks user space (->request) and waits; closing the device fd lets it go on",
    ),
    "ioctl_vs_close": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "SET_CONTAINER runs under fdget: release never runs under the ioctl",
    ),
    "device_fd_vs_group_close": (
        ("clean*", "clean", "clean", UAF_P3, UAF_P3, "clean"),
        "the last container user leaves through either fd, in either order, exactly once",
    ),
    "notifier_left_registered": (
        ("warn*", "warn", "warn", UAF_P3, UAF_P3, "warn"),
        "WARN_ON(group->notifier.head) at the reopen and at the last put",
    ),
}


def test_the_pinned_matrix_covers_every_scenario_and_level() -> None:
    assert tuple(EXPECTED) == SCENARIO_NAMES
    assert all(len(cells) == len(LEVELS) for cells, _ in EXPECTED.values())


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_the_report_row_is_the_pinned_one(name: str) -> None:
    cells, why = EXPECTED[name]
    rep = report()
    got = tuple(rep.cell(name, lv).text() for lv in LEVELS)
    assert got == cells, f"{name}: {why}"


# With the fix agreed in review, p3 and p4 read exactly as p5 does: the fix removes the one
# bug those levels have, and nothing the later patches change shows in these scenarios.


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_with_the_review_fix_p3_and_p4_read_as_p5(name: str) -> None:
    cells, why = EXPECTED[name]
    rep = report(review_fixes=True)
    got = tuple(rep.cell(name, lv).text() for lv in ("p3", "p4"))
    assert got == (cells[-1], cells[-1]), f"{name} with the review fix ({WHY_P3}, fixed): {why}"
