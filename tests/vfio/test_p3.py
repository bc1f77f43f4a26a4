"""Patch 3: vfio_create_group takes its own iommu_group reference and both callers put theirs.

As posted (v1), the success path falls through the new error label: the group is freed and
then returned, so registering a device that creates a group is a use-after-free (Alex
Williamson's review).  With the fix agreed in review, the references balance on every path.
"""

from __future__ import annotations

import pytest

from vfio_ref.kernel import KernelBug, UseAfterFree
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.iommu import iommu_group_get, iommu_group_put
from vfio_ref.vfio.base import VFIO_IOMMU

from .machine import A, B, machine


def test_as_posted_creating_a_group_is_a_use_after_free() -> None:
    m = machine("p3")
    with pytest.raises(UseAfterFree) as uaf:
        m.p.bind(A)
    msg = uaf.value.message
    # where it is used: the registration's device lookup on the group it was handed
    assert "use-after-free in vfio_group_get_device: read of group->device_lock" in msg
    assert "__vfio_register_dev" in uaf.value.backtrace
    # who freed it: vfio_create_group itself, on its way out (the err_put_group label)
    assert "Freed by task" in msg and "in vfio_create_group" in msg.split("Freed by task")[1]
    assert uaf.value.freed.function == "vfio_create_group"  # type: ignore[attr-defined]


def test_as_posted_a_failed_notifier_registration_frees_the_error_pointer() -> None:
    """The v1 error path stores ERR_PTR(ret) in ``group`` and then kfree()s it."""
    m = machine("p3")
    m.k.fault_inject.fail("notifier_register@iommu_group_register_notifier")
    with pytest.raises(KernelBug, match=r"invalid-free in vfio_create_group: kfree\(ERR_PTR\(-ENOMEM\)\)"):
        m.p.bind(A)


def _refs(m: object, name: str = "g0") -> int:
    return int(m.p.groups[name].kref.kref_read())  # type: ignore[attr-defined]


def test_with_review_fixes_the_lifecycle_balances_iommu_group_references() -> None:
    m = machine("p3", review_fixes=True)
    assert _refs(m) == 2  # the platform's allocation reference + the device's membership
    assert m.p.bind(A) == 0
    assert _refs(m) == 3  # + the vfio_group's own reference (the caller put its own)
    f = m.p.open_group(A)
    assert isinstance(f, File)
    m.p.close(f)
    m.p.unbind(A)
    assert _refs(m) == 2  # the group's reference went with the group
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_with_review_fixes_the_race_loser_leaks_nothing() -> None:
    """The race the patch fixes, by hand: the second creator finds the group in its race
    check and returns it; the iommu_group reference it took is dropped, and its caller
    puts its own."""
    m = machine("p3", review_fixes=True, devices=(A, B))
    v, ig = m.v, m.p.groups["g0"]
    mine_a = iommu_group_get(m.p.dev(A))
    mine_b = iommu_group_get(m.p.dev(B))
    base = _refs(m)
    g1 = v.vfio_create_group(mine_a, VFIO_IOMMU)
    assert _refs(m) == base + 1  # the new group's own reference
    g2 = v.vfio_create_group(mine_b, VFIO_IOMMU)
    assert g2 is g1
    assert _refs(m) == base + 1  # the loser took one and gave it back
    iommu_group_put(mine_a)  # each caller puts its own, as find_or_alloc now does
    iommu_group_put(mine_b)
    v.vfio_group_put(g2)
    v.vfio_group_put(g1)
    assert ig.kref.kref_read() == base - 2
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_with_review_fixes_both_callers_put_their_own_reference() -> None:
    # vfio_group_find_or_alloc: bind twice in one group (create, then find)
    m = machine("p3", review_fixes=True, devices=(A, B))
    assert m.p.bind(A) == 0 and m.p.bind(B) == 0
    assert _refs(m) == 4  # platform + two members + the one vfio_group
    m.p.teardown()
    assert m.k.leaks() == []
    # vfio_noiommu_group_alloc: the fake group's only other reference is the device's
    n = machine("p3", review_fixes=True, noiommu=True)
    assert n.p.bind(A) == 0
    ig = n.p.dev(A).iommu_group
    assert ig.kref.kref_read() == 2  # the member device + the vfio_group; the allocation ref was put
    n.p.teardown()
    assert n.warnings() == [] and n.k.leaks() == []


def test_with_review_fixes_a_failed_notifier_registration_cleans_up_in_place() -> None:
    m = machine("p3", review_fixes=True)
    m.k.fault_inject.fail("notifier_register@iommu_group_register_notifier")
    assert m.p.bind(A) == -12  # -ENOMEM reaches the driver core
    assert _refs(m) == 2
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []
