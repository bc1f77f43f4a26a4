"""Patch 1: the notifier takes no group reference; release WARNs about container users; the
unbound list is freed after the notifier is unregistered."""

from __future__ import annotations

import pytest

from vfio_ref.kernel import ModelUsageError
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.workqueue import system_wq

from .machine import A, B, machine
from .recorder import recorded_machine


def test_the_notifier_takes_no_group_reference_and_defers_no_put() -> None:
    m = machine("p1", devices=(A, B))
    m.p.bind(A)
    group = m.v.vfio_group_get_from_dev(m.p.dev(A))
    assert group is not None
    m.v.vfio_group_put(group)
    allocs = m.k.slab.allocs
    assert m.p.bind(B, "pci-stub") == 0  # BIND_DRIVER and BOUND_DRIVER reach the notifier
    assert m.k.slab.allocs == allocs  # no vfio_group_put_work
    assert system_wq(m.k).workers_started == 0  # and nothing queued
    assert group.kref.kref_read() == 1
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


@pytest.mark.parametrize("name", ["vfio_group_schedule_put", "vfio_group_put_bg", "vfio_group_try_get"])
def test_the_deferred_put_machinery_is_gone(name: str) -> None:
    m = machine("p1")
    with pytest.raises(ModelUsageError, match=f"{name}.*patch p1 removed it"):
        getattr(m.v, name)(None)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("base", [("vfio_group_release", "!list_empty(&group->device_list)")]),
        (
            "p1",
            [
                ("vfio_group_release", "!list_empty(&group->device_list)"),
                ("vfio_group_release", "atomic_read(&group->container_users)"),
            ],
        ),
    ],
)
def test_dropping_the_last_reference_of_a_group_in_use_warns_at_p1_only(
    level: str, expected: list[tuple[str, str]]
) -> None:
    """The group in use (container_users = 1) loses its two references to a buggy caller:
    patch 1 adds the WARN that catches the unbalanced container user."""
    m = machine(level)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    assert isinstance(g, File)
    group = g.private_data
    assert group.kref.kref_read() == 2  # the registered device and the open file
    m.v.vfio_group_put(group)
    m.v.vfio_group_put(group)  # the release runs with a device listed and the container set
    assert m.warnings() == expected


def test_the_unbound_list_is_freed_only_after_the_notifier_is_unregistered() -> None:
    """Unbinding the only device: its unbound entry is still listed when the group's last
    reference goes (UNBOUND_DRIVER comes after the driver's remove returns), and patch 1
    frees it only once no notifier callback can be running."""
    v, p, rec = recorded_machine("p1")
    p.add_group("g0")
    p.add_device(A, "g0")
    assert p.bind(A) == 0
    group = v.vfio_group_get_from_dev(p.dev(A))
    assert group is not None
    unbound_list = group.unbound_list
    v.vfio_group_put(group)
    start = len(rec.events)
    p.unbind(A)
    unregister = rec.index("down_write", via="iommu_group_unregister_notifier", start=start)
    free = rec.index("list_del", obj=unbound_list, via="vfio_group_unlock_and_free", start=start)
    assert unregister < free
    p.teardown()
    assert v.k.leaks() == [] and v.k.warnings == []
