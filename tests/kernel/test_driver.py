"""The small driver core (drivers/base/dd.c, bus.c order) and its IOMMU group relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vfio_ref.kernel import Kernel, lockdep_assert_held
from vfio_ref.kernel.device import Device, dev_name
from vfio_ref.kernel.driver import (
    BUS_NOTIFY_ADD_DEVICE,
    BUS_NOTIFY_BIND_DRIVER,
    BUS_NOTIFY_BOUND_DRIVER,
    BUS_NOTIFY_DEL_DEVICE,
    BUS_NOTIFY_DRIVER_NOT_BOUND,
    BUS_NOTIFY_REMOVED_DEVICE,
    BUS_NOTIFY_UNBIND_DRIVER,
    BUS_NOTIFY_UNBOUND_DRIVER,
    EPROBE_DEFER,
    Bus,
    DeviceDriver,
    bus_add_device,
    bus_register_notifier,
    bus_remove_device,
    bus_unregister_notifier,
    device_driver_attach,
    device_is_bound,
    device_release_driver,
)
from vfio_ref.kernel.errno import EAGAIN, EBUSY, EEXIST, EINVAL, ENODEV, ENOMEM, IS_ERR, PTR_ERR
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
    iommu_group_put,
    iommu_group_register_notifier,
    iommu_group_remove_device,
    iommu_group_unregister_notifier,
)
from vfio_ref.kernel.notifier import NOTIFY_OK, NotifierBlock
from vfio_ref.kernel.slab import is_freed


class Events:
    """A NotifierBlock recording (event, device name, name of dev.driver at that moment)."""

    def __init__(self, extra: Callable[[int, Device], None] | None = None) -> None:
        self.log: list[tuple[int, str, str | None]] = []
        self.extra = extra
        self.nb = NotifierBlock(notifier_call=self.call)

    def call(self, nb: NotifierBlock, action: int, data: Any) -> int:
        drv = data.driver
        self.log.append((action, dev_name(data), None if drv is None else drv.name))
        if self.extra is not None:
            self.extra(action, data)
        return NOTIFY_OK

    @property
    def actions(self) -> list[int]:
        return [e[0] for e in self.log]


class Driver:
    """A driver whose probe answers ``ret`` and which logs what it was asked to do."""

    def __init__(self, name: str, ret: int = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.ret = ret
        self.drv = DeviceDriver(name, probe=self.probe, remove=self.remove)

    def probe(self, dev: Device) -> int:
        self.calls.append(("probe", dev_name(dev)))
        return self.ret

    def remove(self, dev: Device) -> None:
        self.calls.append(("remove", dev_name(dev)))


def assert_held_then(k: Kernel, dev: Device, ret: int) -> int:
    lockdep_assert_held(k, dev.mutex)
    return ret


@pytest.fixture
def bus(k: Kernel) -> Bus:
    return Bus(k, "pci")


def group(k: Kernel) -> IommuGroup:
    g = iommu_group_alloc(k)
    assert isinstance(g, IommuGroup)
    return g


def device(k: Kernel, bus: Bus, name: str, **kw: Any) -> Device:
    dev = bus_add_device(k, bus, name, **kw)
    assert not IS_ERR(dev)
    return dev


def grouped(k: Kernel, bus: Bus, name: str) -> tuple[IommuGroup, Device, Events]:
    """A device alone in a fresh group, with a recorder on the group's chain."""
    g = group(k)
    dev = device(k, bus, name)
    assert iommu_group_add_device(g, dev) == 0
    rec = Events()
    assert iommu_group_register_notifier(g, rec.nb) == 0
    return g, dev, rec


# --------------------------------------------------------------------------------------
# Devices on a bus


def test_bus_add_device_registers_and_announces(k: Kernel, bus: Bus) -> None:
    rec = Events()
    assert bus_register_notifier(bus, rec.nb) == 0
    parent = device(k, bus, "pci0000:00")
    dev = device(k, bus, "0000:00:1f.0", parent=parent, hdr_type=1)
    assert (dev_name(dev), dev.bus, dev.parent, dev.is_pci, dev.hdr_type) == (
        "0000:00:1f.0", bus, parent, True, 1,
    )
    assert dev.added and dev.driver is None and dev.iommu_group is None
    assert dev.kobj.kref.kref_read() == 1  # the caller's initialize reference
    # device_add pins its parent twice, as the kernel: get_device(parent) + kobject_add's ref.
    assert parent.kobj.kref.kref_read() == 3
    assert bus.devices == [parent, dev]
    assert rec.log == [
        (BUS_NOTIFY_ADD_DEVICE, "pci0000:00", None),
        (BUS_NOTIFY_ADD_DEVICE, "0000:00:1f.0", None),
    ]
    assert bus_unregister_notifier(bus, rec.nb) == 0


def test_bus_add_device_failures_return_err_ptr_and_leak_nothing(k: Kernel, bus: Bus) -> None:
    k.fault_inject.fail("kzalloc@bus_add_device", nth=1)
    k.fault_inject.fail("dev_set_name@bus_add_device", nth=1)
    k.fault_inject.fail("device_add@bus_add_device", nth=1)
    for _ in range(3):
        dev = bus_add_device(k, bus, "x")
        assert IS_ERR(dev) and PTR_ERR(dev) == -ENOMEM
    assert bus.devices == [] and k.leaks() == []
    assert [p.name for p in k.fault_inject.injected] == [
        "kzalloc@bus_add_device", "dev_set_name@bus_add_device", "device_add@bus_add_device",
    ]


def test_a_second_device_of_the_same_name_is_eexist_and_leaks_nothing(k: Kernel, bus: Bus) -> None:
    first = device(k, bus, "0000:00:01.0")
    dup = bus_add_device(k, bus, "0000:00:01.0")
    assert IS_ERR(dup) and PTR_ERR(dup) == -EEXIST
    assert bus.devices == [first]
    bus_remove_device(first)
    assert k.leaks() == []


def test_bus_remove_device_frees_it(k: Kernel, bus: Bus) -> None:
    rec = Events()
    dev = device(k, bus, "gone")
    bus_register_notifier(bus, rec.nb)
    bus_remove_device(dev)
    assert is_freed(dev)
    assert bus.devices == []
    assert rec.log == [(BUS_NOTIFY_DEL_DEVICE, "gone", None), (BUS_NOTIFY_REMOVED_DEVICE, "gone", None)]
    assert k.leaks() == []


# --------------------------------------------------------------------------------------
# Binding and unbinding


def test_bind_and_unbind_relay_in_order_with_driver_visible(k: Kernel, bus: Bus) -> None:
    _, dev, rec = grouped(k, bus, "0000:01:00.0")
    d = Driver("vfio-pci")
    assert device_driver_attach(d.drv, dev) == 0
    assert dev.driver is d.drv and device_is_bound(dev)
    assert rec.log == [
        (IOMMU_GROUP_NOTIFY_BIND_DRIVER, "0000:01:00.0", "vfio-pci"),
        (IOMMU_GROUP_NOTIFY_BOUND_DRIVER, "0000:01:00.0", "vfio-pci"),
    ]
    rec.log.clear()
    device_release_driver(dev)
    assert dev.driver is None and not device_is_bound(dev)
    # UNBIND still sees the driver (VFIO prints its name); UNBOUND comes after it is gone.
    assert rec.log == [
        (IOMMU_GROUP_NOTIFY_UNBIND_DRIVER, "0000:01:00.0", "vfio-pci"),
        (IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER, "0000:01:00.0", None),
    ]
    assert d.calls == [("probe", "0000:01:00.0"), ("remove", "0000:01:00.0")]


def test_probe_runs_between_bind_and_bound_remove_between_unbind_and_unbound(
    k: Kernel, bus: Bus
) -> None:
    order: list[str] = []
    _, dev, rec = grouped(k, bus, "dev")
    rec.extra = lambda action, d: order.append(f"group:{action}")
    drv = DeviceDriver(
        "drv",
        probe=lambda d: order.append("probe") or 0,  # type: ignore[func-returns-value]
        remove=lambda d: order.append("remove"),
    )
    device_driver_attach(drv, dev)
    device_release_driver(dev)
    assert order == ["group:3", "probe", "group:4", "group:5", "remove", "group:6"]


def test_bus_chain_sees_every_event_in_dd_c_order(k: Kernel, bus: Bus) -> None:
    rec = Events()
    dev = device(k, bus, "dev")
    bus_register_notifier(bus, rec.nb)
    good, bad = Driver("good"), Driver("bad", ret=-EINVAL)
    assert device_driver_attach(bad.drv, dev) == -EINVAL
    assert device_driver_attach(good.drv, dev) == 0
    device_release_driver(dev)
    assert rec.log == [
        (BUS_NOTIFY_BIND_DRIVER, "dev", "bad"),
        (BUS_NOTIFY_DRIVER_NOT_BOUND, "dev", "bad"),  # 5.15 clears dev->driver after this
        (BUS_NOTIFY_BIND_DRIVER, "dev", "good"),
        (BUS_NOTIFY_BOUND_DRIVER, "dev", "good"),
        (BUS_NOTIFY_UNBIND_DRIVER, "dev", "good"),
        (BUS_NOTIFY_UNBOUND_DRIVER, "dev", None),
    ]


def test_failed_probe_sends_bind_but_not_bound_and_not_bound_is_not_relayed(k: Kernel, bus: Bus) -> None:
    _, dev, rec = grouped(k, bus, "0000:02:00.0")
    bad = Driver("flaky", ret=-ENODEV)
    assert device_driver_attach(bad.drv, dev) == -ENODEV
    assert dev.driver is None and not device_is_bound(dev)
    assert rec.actions == [IOMMU_GROUP_NOTIFY_BIND_DRIVER]
    assert bad.calls == [("probe", "0000:02:00.0")]  # no remove after a failed probe
    # Unbinding a device that never bound does nothing at all.
    device_release_driver(dev)
    assert rec.actions == [IOMMU_GROUP_NOTIFY_BIND_DRIVER]
    assert bad.calls == [("probe", "0000:02:00.0")]


def test_probe_defer_comes_back_as_eagain(k: Kernel, bus: Bus) -> None:
    dev = device(k, bus, "dev")
    assert device_driver_attach(Driver("later", ret=-EPROBE_DEFER).drv, dev) == -EAGAIN
    assert dev.driver is None


def test_attach_to_a_bound_device_is_ebusy_and_silent(k: Kernel, bus: Bus) -> None:
    _, dev, rec = grouped(k, bus, "dev")
    first, second = Driver("first"), Driver("second")
    assert device_driver_attach(first.drv, dev) == 0
    rec.log.clear()
    assert device_driver_attach(second.drv, dev) == -EBUSY
    assert dev.driver is first.drv and rec.log == [] and second.calls == []


def test_attach_to_an_unregistered_device_is_enodev(k: Kernel) -> None:
    dev = Device(k)  # initialised by nobody, never added
    assert device_driver_attach(Driver("d").drv, dev) == -ENODEV
    assert dev.driver is None


def test_device_lock_is_held_across_probe_remove_and_notifications(k: Kernel, bus: Bus) -> None:
    _, dev, rec = grouped(k, bus, "dev")
    rec.extra = lambda action, d: lockdep_assert_held(k, d.mutex)
    drv = DeviceDriver(
        "drv",
        probe=lambda d: assert_held_then(k, d, 0),
        remove=lambda d: lockdep_assert_held(k, d.mutex),
    )
    device_driver_attach(drv, dev)
    device_release_driver(dev)
    assert len(rec.log) == 4
    assert k.warnings == []
    assert not dev.mutex.is_locked()


def test_device_without_group_gets_no_group_notifications(k: Kernel, bus: Bus) -> None:
    _, _, rec = grouped(k, bus, "member")
    outsider = device(k, bus, "outsider")
    d = Driver("drv")
    assert device_driver_attach(d.drv, outsider) == 0
    device_release_driver(outsider)
    assert d.calls == [("probe", "outsider"), ("remove", "outsider")]
    assert rec.log == []  # the member's group heard nothing about the outsider
    assert outsider.iommu_group is None


def test_bus_without_iommu_relays_nothing(k: Kernel) -> None:
    mdev = Bus(k, "mdev", iommu=False)
    assert mdev.iommu_ops is None and mdev.bus_notifier.head is None
    g = group(k)
    dev = device(k, mdev, "mdev0", is_pci=False)
    iommu_group_add_device(g, dev)  # as vfio's emulated-IOMMU groups do
    rec = Events()
    iommu_group_register_notifier(g, rec.nb)
    assert device_driver_attach(Driver("vfio-mdev").drv, dev) == 0
    device_release_driver(dev)
    assert rec.log == []
    # Removal is the group owner's job on such a bus: the driver core leaves it alone.
    iommu_group_remove_device(dev)
    assert rec.actions == [IOMMU_GROUP_NOTIFY_DEL_DEVICE]
    iommu_group_unregister_notifier(g, rec.nb)
    iommu_group_put(g)
    bus_remove_device(dev)
    assert k.leaks() == []


def test_bus_remove_device_unbinds_then_leaves_the_group(k: Kernel, bus: Bus) -> None:
    g, dev, rec = grouped(k, bus, "0000:03:00.0")
    d = Driver("vfio-pci")
    device_driver_attach(d.drv, dev)
    rec.log.clear()
    assert g.kref.kref_read() == 2
    bus_remove_device(dev)
    assert rec.actions == [
        IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
        IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
        IOMMU_GROUP_NOTIFY_DEL_DEVICE,
    ]
    assert d.calls[-1] == ("remove", "0000:03:00.0")
    assert g.devices == [] and g.kref.kref_read() == 1
    assert is_freed(dev)


def test_full_cycle_leaves_nothing_behind(k: Kernel, bus: Bus) -> None:
    g = group(k)
    rec = Events()
    assert iommu_group_register_notifier(g, rec.nb) == 0
    dev = device(k, bus, "0000:04:00.0")
    assert iommu_group_add_device(g, dev) == 0
    d = Driver("vfio-pci")
    assert device_driver_attach(d.drv, dev) == 0
    device_release_driver(dev)
    bus_remove_device(dev)
    assert rec.actions == [
        IOMMU_GROUP_NOTIFY_ADD_DEVICE,
        IOMMU_GROUP_NOTIFY_BIND_DRIVER,
        IOMMU_GROUP_NOTIFY_BOUND_DRIVER,
        IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
        IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
        IOMMU_GROUP_NOTIFY_DEL_DEVICE,
    ]
    assert [leak.detail for leak in k.leaks()] == [f"iommu_group {g.id}, kref 1"]  # the platform's
    assert iommu_group_unregister_notifier(g, rec.nb) == 0
    iommu_group_put(g)
    assert k.leaks() == []
    assert k.warnings == [] and k.lockdep_reports == [] and k.faults == []


def test_two_devices_of_one_group_bind_concurrently(k: Kernel, bus: Bus) -> None:
    g = group(k)
    rec = Events()
    iommu_group_register_notifier(g, rec.nb)
    a, b = device(k, bus, "a"), device(k, bus, "b")
    iommu_group_add_device(g, a)
    iommu_group_add_device(g, b)
    da, db = Driver("drv"), Driver("drv")

    def cycle(drv: DeviceDriver, dev: Device) -> Callable[[], None]:
        def run() -> None:
            for _ in range(20):
                assert device_driver_attach(drv, dev) == 0
                device_release_driver(dev)

        return run

    assert k.run_threads(cycle(da.drv, a), cycle(db.drv, b)) == []
    per_dev = {name: [e[0] for e in rec.log if e[1] == name] for name in ("a", "b")}
    expected = [IOMMU_GROUP_NOTIFY_ADD_DEVICE] + [3, 4, 5, 6] * 20
    assert per_dev == {"a": expected, "b": expected}
    assert g.kref.kref_read() == 3
    assert k.lockdep_reports == [] and k.warnings == []


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


def test_dev_driver_writes_are_scheduling_points_on_the_device() -> None:
    s = RecordingSched()
    k = Kernel(sched=s)
    dev = device(k, Bus(k, "pci"), "dev")
    s.points.clear()
    device_driver_attach(Driver("d").drv, dev)
    device_release_driver(dev)
    # dev->driver is written before BIND goes out and cleared before UNBOUND does; each
    # relayed event reads dev->iommu_group (iommu_group_get) on the way.
    assert [op for op, o in s.points if o is dev] == [
        "WRITE_ONCE", "READ_ONCE", "READ_ONCE",  # attach: set, BIND, BOUND
        "READ_ONCE", "WRITE_ONCE", "READ_ONCE",  # release: UNBIND, clear, UNBOUND
    ]
