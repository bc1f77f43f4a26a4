"""Fault injection after the kernel's fail-nth and named fault points."""

from __future__ import annotations

from typing import Any

import pytest

from vfio_ref.kernel import Kernel, KStruct, kzalloc


class VfioGroup(KStruct):
    pass


class VfioUnboundDev(KStruct):
    pass


def vfio_create_group(k: Kernel) -> Any:
    return kzalloc(k, VfioGroup)


def vfio_iommu_group_notifier(k: Kernel) -> Any:
    return kzalloc(k, VfioUnboundDev)


def run_calls(k: Kernel) -> list[bool]:
    """Three injectable calls at two points; True where the allocation succeeded."""
    results = [vfio_create_group(k), vfio_iommu_group_notifier(k), vfio_create_group(k)]
    return [r is not None for r in results]


def test_no_rule_no_failure(k: Kernel) -> None:
    assert run_calls(k) == [True, True, True]
    assert k.fault_inject.injected == []


@pytest.mark.parametrize(("n", "expect"), [(1, [False, True, True]), (2, [True, False, True]),
                                           (3, [True, True, False]), (4, [True, True, True])])
def test_fail_nth_counts_injectable_calls_from_one(k: Kernel, n: int, expect: list[bool]) -> None:
    k.fault_inject.fail_nth(n)
    assert run_calls(k) == expect
    assert [p.seq for p in k.fault_inject.injected] == ([n] if n <= 3 else [])


def test_fail_nth_rejects_zero(k: Kernel) -> None:
    with pytest.raises(ValueError):
        k.fault_inject.fail_nth(0)


def test_a_named_point_fails_every_call_there(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@vfio_create_group")
    assert run_calls(k) == [False, True, False]


def test_a_named_point_can_fail_only_its_nth_call(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@vfio_create_group", nth=2)
    assert run_calls(k) == [True, True, False]
    [p] = k.fault_inject.injected
    assert (p.name, p.nth_at_point, p.seq) == ("kzalloc@vfio_create_group", 2, 3)


def test_an_unknown_point_name_is_ignored_but_a_malformed_one_is_refused(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@no_such_function")
    assert run_calls(k) == [True, True, True]
    with pytest.raises(ValueError):
        k.fault_inject.fail("kzalloc")


def test_points_record_every_injectable_call(k: Kernel) -> None:
    k.fault_inject.fail_nth(2)
    with k.as_task(k.new_task("T1")):
        run_calls(k)
    got = [(p.seq, p.name, p.detail, p.thread, p.nth_at_point, p.injected) for p in k.fault_inject.points]
    assert got == [
        (1, "kzalloc@vfio_create_group", "VfioGroup", "T1", 1, False),
        (2, "kzalloc@vfio_iommu_group_notifier", "VfioUnboundDev", "T1", 1, True),
        (3, "kzalloc@vfio_create_group", "VfioGroup", "T1", 2, False),
    ]
    assert any("FAULT_INJECTION: forcing a failure" in line for line in k.log)


def test_other_kinds_of_points(k: Kernel) -> None:
    fi = k.fault_inject
    fi.fail("ida_alloc@vfio_group_alloc")
    assert fi.should_fail("ida_alloc", "vfio_group_alloc", "vfio.group_ida") is True
    assert fi.should_fail("cdev_add", "cdev_device_add") is False
    assert [p.name for p in fi.points] == ["ida_alloc@vfio_group_alloc", "cdev_add@cdev_device_add"]


def test_without_recording_only_injections_are_kept(k: Kernel) -> None:
    k.fault_inject.recording = False
    k.fault_inject.fail_nth(3)
    assert run_calls(k) == [True, True, False]
    assert k.fault_inject.points == []
    assert [p.seq for p in k.fault_inject.injected] == [3]


def test_a_sweep_fails_each_point_in_turn() -> None:
    # What fault_sweep does: run once to list the points, then once per point with it failed.
    probe = Kernel()
    run_calls(probe)
    n = len(probe.fault_inject.points)
    outcomes = []
    for i in range(1, n + 1):
        k = Kernel()
        k.fault_inject.fail_nth(i)
        outcomes.append(run_calls(k))
    assert outcomes == [[False, True, True], [True, False, True], [True, True, False]]


# -- which points the kernel can fail --------------------------------------------------


def test_a_notifier_registration_cannot_fail_in_5_15_but_an_allocation_can() -> None:
    from vfio_ref.kernel.fault import FAULT_KINDS, UNREACHABLE_NOTE, can_fail, fault_kind

    assert can_fail("kzalloc@vfio_create_group")
    assert can_fail("ida_alloc@vfio_group_alloc")
    assert not can_fail("notifier_register@iommu_group_register_notifier")
    assert not can_fail("notifier_register@vfio_register_group_notifier")
    assert "always returns 0" in fault_kind("notifier_register@x").why
    assert UNREACHABLE_NOTE == "unreachable in 5.15/5.16"
    # every kind the substrate injects is classified
    assert {"kzalloc", "kmalloc", "ida_alloc", "idr_alloc", "dev_set_name", "device_add", "cdev_add",
            "alloc_chrdev_region", "register_chrdev_region", "iommu_group_set_name",
            "anon_inode_getfile", "notifier_register"} == set(FAULT_KINDS)


def test_the_sweepable_points_leave_out_the_unreachable_ones_unless_asked(k: Kernel) -> None:
    from vfio_ref.kernel.fault import sweepable

    fi = k.fault_inject
    fi.should_fail("kzalloc", "vfio_create_group")
    fi.should_fail("notifier_register", "iommu_group_register_notifier")
    fi.should_fail("ida_alloc", "vfio_group_alloc")
    assert [p.reachable for p in fi.points] == [True, False, True]
    assert [p.name for p in sweepable(fi.points)] == ["kzalloc@vfio_create_group", "ida_alloc@vfio_group_alloc"]
    assert [p.seq for p in sweepable(fi.points, include_unreachable=True)] == [1, 2, 3]
