"""IOMMU groups (drivers/iommu/iommu.c, 5.15/5.16): references, ids, membership, notifications."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vfio_ref.kernel import Kernel, KernelBug, UseAfterFree, WarnEvent, lockdep_assert_held
from vfio_ref.kernel.device import Device, dev_name
from vfio_ref.kernel.driver import Bus, bus_add_device, bus_remove_device
from vfio_ref.kernel.errno import ENOENT, ENOMEM, IS_ERR, PTR_ERR
from vfio_ref.kernel.iommu import (
    IOMMU_GROUP_NOTIFY_ADD_DEVICE,
    IOMMU_GROUP_NOTIFY_BIND_DRIVER,
    IOMMU_GROUP_NOTIFY_BOUND_DRIVER,
    IOMMU_GROUP_NOTIFY_DEL_DEVICE,
    IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
    IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
    IommuGroup,
    iommu_group_add_device,
    iommu_group_alloc,
    iommu_group_for_each_dev,
    iommu_group_get,
    iommu_group_get_iommudata,
    iommu_group_id,
    iommu_group_put,
    iommu_group_ref_get,
    iommu_group_register_notifier,
    iommu_group_remove_device,
    iommu_group_set_iommudata,
    iommu_group_set_name,
    iommu_group_unregister_notifier,
    iommu_present,
)
from vfio_ref.kernel.notifier import NOTIFY_OK, NotifierBlock
from vfio_ref.kernel.slab import is_freed

OnlyWarning = Callable[[Kernel, str, str], WarnEvent]  # the conftest fixture


def alloc(k: Kernel) -> IommuGroup:
    g = iommu_group_alloc(k)
    assert not IS_ERR(g)
    assert isinstance(g, IommuGroup)
    return g


def refs(g: IommuGroup) -> int:
    return g.kref.kref_read()


def new_device(k: Kernel, bus: Bus, name: str) -> Device:
    dev = bus_add_device(k, bus, name)
    assert not IS_ERR(dev)
    return dev


class GroupEvents:
    """A NotifierBlock on a group chain recording (event, device name) and what it saw."""

    def __init__(self, group: IommuGroup, probe: Callable[[int, Device], Any] | None = None) -> None:
        self.group = group
        self.events: list[tuple[int, str]] = []
        self.seen: list[Any] = []
        self.probe = probe
        self.nb = NotifierBlock(notifier_call=self.call)
        assert iommu_group_register_notifier(group, self.nb) == 0

    def call(self, nb: NotifierBlock, action: int, data: Any) -> int:
        self.events.append((action, dev_name(data)))
        if self.probe is not None:
            self.seen.append(self.probe(action, data))
        return NOTIFY_OK

    def stop(self) -> None:
        assert iommu_group_unregister_notifier(self.group, self.nb) == 0


@pytest.fixture
def bus(k: Kernel) -> Bus:
    return Bus(k, "pci")


# --------------------------------------------------------------------------------------
# Allocation, ids, references


def test_alloc_gives_one_reference_and_lowest_free_id(k: Kernel) -> None:
    g0, g1 = alloc(k), alloc(k)
    assert (iommu_group_id(g0), iommu_group_id(g1)) == (0, 1)
    assert refs(g0) == refs(g1) == 1
    assert g0.notifier.head is None and g0.devices == []
    assert g0.mutex.lock_class == "&group->mutex"
    assert g0.notifier.rwsem.lock_class == "&group->notifier.rwsem"
    iommu_group_put(g0)
    iommu_group_put(g1)
    assert k.leaks() == []


def test_last_put_frees_and_the_id_is_reused(k: Kernel) -> None:
    g0, g1 = alloc(k), alloc(k)
    iommu_group_put(g0)
    assert is_freed(g0)
    with pytest.raises(UseAfterFree):
        _ = g0.devices
    g2 = alloc(k)
    assert iommu_group_id(g2) == 0  # lowest free id again
    g3 = alloc(k)
    assert iommu_group_id(g3) == 2
    for g in (g1, g2, g3):
        iommu_group_put(g)
    assert k.leaks() == [] and k.warnings == []


def test_get_ref_get_put_count_exactly(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    dev = new_device(k, bus, "0000:00:01.0")
    assert iommu_group_get(dev) is None  # no group yet: no reference taken anywhere
    assert refs(g) == 1
    assert iommu_group_add_device(g, dev) == 0
    assert refs(g) == 2
    assert iommu_group_get(dev) is g
    assert refs(g) == 3
    assert iommu_group_ref_get(g) is g
    assert refs(g) == 4
    iommu_group_put(g)
    iommu_group_put(g)
    assert refs(g) == 2
    iommu_group_remove_device(dev)
    assert refs(g) == 1 and dev.iommu_group is None
    iommu_group_put(None)  # NULL-safe
    assert refs(g) == 1
    iommu_group_put(g)
    assert is_freed(g)
    bus_remove_device(dev)
    assert k.leaks() == [] and k.warnings == []


def test_leak_report_names_the_group_and_its_references(k: Kernel) -> None:
    g = alloc(k)
    iommu_group_ref_get(g)
    assert [(leak.type, leak.allocated_by, leak.detail) for leak in k.leaks()] == [
        ("IommuGroup", "iommu_group_alloc", f"iommu_group {g.id}, kref 2")
    ]


def test_put_after_free_is_a_use_after_free(k: Kernel) -> None:
    g = alloc(k)
    iommu_group_put(g)
    with pytest.raises(UseAfterFree):
        iommu_group_put(g)


def test_alloc_failure_returns_enomem(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@iommu_group_alloc", nth=1)
    g = iommu_group_alloc(k)
    assert IS_ERR(g) and PTR_ERR(g) == -ENOMEM
    assert k.leaks() == []
    g2 = alloc(k)
    assert iommu_group_id(g2) == 0


def test_id_allocation_failure_frees_the_group(k: Kernel) -> None:
    k.fault_inject.fail("ida_alloc@iommu_group_alloc", nth=1)
    g = iommu_group_alloc(k)
    assert IS_ERR(g) and PTR_ERR(g) == -ENOMEM
    assert k.leaks() == []  # the kzalloc'd group went back
    assert iommu_group_id(alloc(k)) == 0  # and no id was consumed


def test_release_runs_the_iommu_data_release(k: Kernel) -> None:
    g = alloc(k)
    released: list[Any] = []
    iommu_group_set_iommudata(g, "data", released.append)
    assert iommu_group_get_iommudata(g) == "data"
    iommu_group_put(g)
    assert released == ["data"]


def test_set_name_and_injected_failure(k: Kernel) -> None:
    g = alloc(k)
    assert iommu_group_set_name(g, "vfio-noiommu") == 0
    assert g.name == "vfio-noiommu"
    # The point counts its calls: the first one above was call 1.
    k.fault_inject.fail("iommu_group_set_name@test_set_name_and_injected_failure", nth=2)
    assert iommu_group_set_name(g, "other") == -ENOMEM
    assert g.name is None  # the old name is dropped before the copy fails
    assert iommu_group_set_name(g, "again") == 0
    assert iommu_group_set_name(g, None) == 0 and g.name is None


# --------------------------------------------------------------------------------------
# Membership and notifications


def test_add_device_links_then_notifies_outside_the_mutex(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    dev = new_device(k, bus, "0000:00:02.0")

    def state(action: int, d: Device) -> tuple[bool, bool, bool, int]:
        return (g.mutex.is_locked(), d in g.devices, d.iommu_group is g, refs(g))

    rec = GroupEvents(g, state)
    assert iommu_group_add_device(g, dev) == 0
    assert rec.events == [(IOMMU_GROUP_NOTIFY_ADD_DEVICE, "0000:00:02.0")]
    # Already linked and referenced, and the group mutex already dropped, when notified.
    assert rec.seen == [(False, True, True, 2)]
    assert g.devices == [dev] and dev.iommu_group is g


def test_remove_device_notifies_first_then_unlinks_and_puts(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    dev = new_device(k, bus, "0000:00:03.0")
    iommu_group_add_device(g, dev)

    def state(action: int, d: Device) -> tuple[bool, bool, bool, int]:
        return (g.mutex.is_locked(), d in g.devices, d.iommu_group is g, refs(g))

    rec = GroupEvents(g, state)
    iommu_group_remove_device(dev)
    assert rec.events == [(IOMMU_GROUP_NOTIFY_DEL_DEVICE, "0000:00:03.0")]
    # Still a member, still referenced, mutex not held, when DEL_DEVICE goes out.
    assert rec.seen == [(False, True, True, 2)]
    assert g.devices == [] and dev.iommu_group is None and refs(g) == 1


def test_notification_order_for_adds_and_removes(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    rec = GroupEvents(g)
    a, b = new_device(k, bus, "a"), new_device(k, bus, "b")
    iommu_group_add_device(g, a)
    iommu_group_add_device(g, b)
    assert g.devices == [a, b]
    iommu_group_remove_device(b)
    iommu_group_remove_device(a)
    assert rec.events == [
        (IOMMU_GROUP_NOTIFY_ADD_DEVICE, "a"),
        (IOMMU_GROUP_NOTIFY_ADD_DEVICE, "b"),
        (IOMMU_GROUP_NOTIFY_DEL_DEVICE, "b"),
        (IOMMU_GROUP_NOTIFY_DEL_DEVICE, "a"),
    ]
    rec.stop()
    iommu_group_put(g)
    bus_remove_device(a)
    bus_remove_device(b)
    assert k.leaks() == []


def test_injected_add_device_failure_changes_nothing(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    rec = GroupEvents(g)
    dev = new_device(k, bus, "0000:00:04.0")
    k.fault_inject.fail("kzalloc@iommu_group_add_device", nth=1)
    assert iommu_group_add_device(g, dev) == -ENOMEM
    assert (refs(g), g.devices, dev.iommu_group, rec.events) == (1, [], None, [])
    assert iommu_group_add_device(g, dev) == 0
    assert refs(g) == 2


def test_remove_of_a_device_without_group_oopses_as_in_5_15(k: Kernel, bus: Bus) -> None:
    dev = new_device(k, bus, "lonely")
    with pytest.raises(KernelBug) as exc:
        iommu_group_remove_device(dev)
    assert "NULL pointer dereference in iommu_group_remove_device" in exc.value.message


def test_remove_of_a_device_the_group_does_not_list_only_notifies(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    rec = GroupEvents(g)
    dev = new_device(k, bus, "stray")
    dev.iommu_group = g  # points at the group without being a member
    iommu_group_remove_device(dev)
    assert rec.events == [(IOMMU_GROUP_NOTIFY_DEL_DEVICE, "stray")]
    assert refs(g) == 1 and dev.iommu_group is g


def test_for_each_dev_holds_the_group_mutex_and_stops_at_nonzero(
    k: Kernel, bus: Bus, only_warning: OnlyWarning
) -> None:
    g = alloc(k)
    devs = [new_device(k, bus, f"d{i}") for i in range(3)]
    for d in devs:
        iommu_group_add_device(g, d)
    visited: list[str] = []

    def fn(dev: Device, data: Any) -> int:
        lockdep_assert_held(k, g.mutex)
        visited.append(dev_name(dev))
        return data if dev_name(dev) == "d1" else 0

    assert iommu_group_for_each_dev(g, 0, fn) == 0
    assert visited == ["d0", "d1", "d2"]
    visited.clear()
    assert iommu_group_for_each_dev(g, -22, fn) == -22
    assert visited == ["d0", "d1"]
    assert k.warnings == []  # the assertion held inside every callback
    assert not g.mutex.is_locked()
    # ...and the same assertion outside the walk does fire, so the check above means something.
    lockdep_assert_held(k, g.mutex)
    only_warning(k, "test_for_each_dev_holds_the_group_mutex_and_stops_at_nonzero",
                 "lockdep_assert_held(&group->mutex)")


def test_group_notifier_register_unregister(k: Kernel) -> None:
    g = alloc(k)
    nb = NotifierBlock(notifier_call=lambda nb, a, d: NOTIFY_OK)
    assert iommu_group_register_notifier(g, nb) == 0
    assert g.notifier.head is nb
    assert iommu_group_unregister_notifier(g, nb) == 0
    assert g.notifier.head is None
    assert iommu_group_unregister_notifier(g, nb) == -ENOENT


def test_iommu_present(k: Kernel) -> None:
    assert iommu_present(Bus(k, "pci", iommu=True))
    assert not iommu_present(Bus(k, "mdev", iommu=False))
    assert not iommu_present(None)


def test_concurrent_adds_and_gets_keep_exact_counts(k: Kernel, bus: Bus) -> None:
    g = alloc(k)
    devs = [new_device(k, bus, f"t{i}") for i in range(8)]

    def worker(d: Device) -> Callable[[], None]:
        def run() -> None:
            for _ in range(50):
                assert iommu_group_add_device(g, d) == 0
                got = iommu_group_get(d)
                assert got is g
                iommu_group_put(got)
                iommu_group_remove_device(d)

        return run

    assert k.run_threads(*(worker(d) for d in devs)) == []
    assert refs(g) == 1 and g.devices == []
    assert k.lockdep_reports == [] and k.warnings == []


def test_relayed_events_come_under_a_temporary_group_reference(k: Kernel, bus: Bus) -> None:
    from vfio_ref.kernel.driver import DeviceDriver, device_driver_attach, device_release_driver

    g = alloc(k)
    dev = new_device(k, bus, "0000:00:05.0")
    iommu_group_add_device(g, dev)
    rec = GroupEvents(g, lambda action, d: refs(g))
    drv = DeviceDriver("pci-stub", probe=lambda d: 0, remove=lambda d: None)
    assert device_driver_attach(drv, dev) == 0
    device_release_driver(dev)
    assert [e[0] for e in rec.events] == [
        IOMMU_GROUP_NOTIFY_BIND_DRIVER,
        IOMMU_GROUP_NOTIFY_BOUND_DRIVER,
        IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
        IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
    ]
    assert rec.seen == [3, 3, 3, 3]  # alloc + member + the relay's own
    assert refs(g) == 2


class RecordingSched:
    """A scheduler stand-in for one thread: every point is allowed and recorded."""

    step_no = 0

    def __init__(self) -> None:
        self.points: list[tuple[str, object]] = []

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        assert ready is None or ready(), f"{op} would block"
        self.points.append((op, obj))

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        raise AssertionError("no kernel threads expected")


def test_dev_iommu_group_accesses_are_scheduling_points_on_the_device() -> None:
    s = RecordingSched()
    k = Kernel(sched=s)
    g = alloc(k)
    dev = new_device(k, Bus(k, "pci"), "dev")
    s.points.clear()
    iommu_group_add_device(g, dev)
    assert ("WRITE_ONCE", dev) in s.points
    s.points.clear()
    assert iommu_group_get(dev) is g
    assert [op for op, o in s.points][:2] == ["READ_ONCE", "refcount_inc"]
    assert s.points[0][1] is dev
    s.points.clear()
    iommu_group_remove_device(dev)
    assert ("WRITE_ONCE", dev) in s.points
    assert ("list_del", g) in s.points  # the member list is shared data too
