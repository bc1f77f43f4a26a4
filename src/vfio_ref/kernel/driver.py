"""A small driver core: buses, drivers, bind and unbind (drivers/base/bus.c, dd.c), 5.15.

What it keeps from the kernel, in the kernel's order:

* A :class:`Bus` has a blocking notifier chain ("&(&priv->bus_notifier)->rwsem") that the
  driver core sends BUS_NOTIFY_* events on; a bus built with ``iommu=True`` gets IOMMU ops
  and the IOMMU layer's relay (``iommu_bus_notifier``) on that chain.
* ``device_driver_attach(drv, dev)`` (the sysfs "bind" path) takes the device lock, refuses
  an unregistered device (-ENODEV) or a bound one (-EBUSY), sets ``dev.driver``, sends
  BIND_DRIVER, calls ``drv.probe(dev)``; on success sends BOUND_DRIVER and returns 0; on
  failure sends DRIVER_NOT_BOUND, clears ``dev.driver`` and returns the probe's error
  (-EPROBE_DEFER comes back as -EAGAIN).
* ``device_release_driver(dev)`` takes the device lock and, if the device is bound, sends
  UNBIND_DRIVER (driver still set), calls ``drv.remove(dev)``, clears ``dev.driver`` and
  sends UNBOUND_DRIVER.
* Every notification goes out with the device lock held, so callbacks on the bus chain (and
  the group chains it relays to) run under ``&dev->mutex``.

Platform helpers (not kernel functions, named after what they stand for):
``bus_add_device(k, bus, name, ...)`` allocates, names and registers a device on a bus;
``bus_remove_device(dev)`` unregisters it: DEL_DEVICE, driver release, REMOVED_DEVICE (on
which the IOMMU layer takes the device out of its group), device_del, the final put.

Simplifications: no matching or autoprobe (drivers are bound explicitly), no deferred
probe list, no driver-side device list, no pinctrl/DMA/PM steps, no parent locking (only
USB needs it).  Costs: O(1) plus the notifier chains, except bus_remove_device, which is
O(devices on the bus).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .core import Kernel
from .device import (
    Device,
    dev_name,
    dev_set_name,
    device_add,
    device_del,
    device_initialize,
    device_lock,
    device_unlock,
    put_device,
)
from .errno import EAGAIN, EBUSY, ENODEV, ENOMEM, ENXIO, ERR_PTR
from .mutex import SpinLock
from .notifier import (
    BlockingNotifierHead,
    NotifierBlock,
    blocking_notifier_call_chain,
    blocking_notifier_chain_register,
    blocking_notifier_chain_unregister,
)
from .slab import kfree, kzalloc

if TYPE_CHECKING:
    from .iommu import IommuOps

BUS_NOTIFY_ADD_DEVICE: Final = 0x00000001
BUS_NOTIFY_DEL_DEVICE: Final = 0x00000002
BUS_NOTIFY_REMOVED_DEVICE: Final = 0x00000003
BUS_NOTIFY_BIND_DRIVER: Final = 0x00000004
BUS_NOTIFY_BOUND_DRIVER: Final = 0x00000005
BUS_NOTIFY_UNBIND_DRIVER: Final = 0x00000006
BUS_NOTIFY_UNBOUND_DRIVER: Final = 0x00000007
BUS_NOTIFY_DRIVER_NOT_BOUND: Final = 0x00000008

BUS_NOTIFY_NAMES: Final[dict[int, str]] = {
    BUS_NOTIFY_ADD_DEVICE: "BUS_NOTIFY_ADD_DEVICE",
    BUS_NOTIFY_DEL_DEVICE: "BUS_NOTIFY_DEL_DEVICE",
    BUS_NOTIFY_REMOVED_DEVICE: "BUS_NOTIFY_REMOVED_DEVICE",
    BUS_NOTIFY_BIND_DRIVER: "BUS_NOTIFY_BIND_DRIVER",
    BUS_NOTIFY_BOUND_DRIVER: "BUS_NOTIFY_BOUND_DRIVER",
    BUS_NOTIFY_UNBIND_DRIVER: "BUS_NOTIFY_UNBIND_DRIVER",
    BUS_NOTIFY_UNBOUND_DRIVER: "BUS_NOTIFY_UNBOUND_DRIVER",
    BUS_NOTIFY_DRIVER_NOT_BOUND: "BUS_NOTIFY_DRIVER_NOT_BOUND",
}

# Not in the uapi errno set: the driver core's "try again later" from probe.
EPROBE_DEFER: Final = 517

ProbeFn = Callable[[Device], int]
RemoveFn = Callable[[Device], None]


class Bus:
    """struct bus_type with its private part: a name, IOMMU ops or None, the registered
    devices (under a spinlock standing for the klist's lock) and the bus notifier chain.

    ``Bus(k, name, iommu=True)`` also plays bus_set_iommu(): the IOMMU layer's relay is
    registered on the chain when the bus is built.
    """

    def __init__(self, k: Kernel, name: str, iommu: bool = True) -> None:
        self.kernel = k
        self.name = name
        self.iommu_ops: IommuOps | None = None
        self.iommu_nb: NotifierBlock | None = None
        self.devices: list[Device] = []
        self.klist_lock = SpinLock(k, "&bus->p->klist_devices.k_lock")
        self.bus_notifier = BlockingNotifierHead(k, "&(&priv->bus_notifier)->rwsem")
        self.bus_notifier.container = self
        if iommu:
            from .iommu import IommuOps, bus_set_iommu

            bus_set_iommu(self, IommuOps(f"{name}-iommu"))

    def __repr__(self) -> str:
        return f"<bus {self.name}{' iommu' if self.iommu_ops is not None else ''}>"


class DeviceDriver:
    """struct device_driver: ``name`` (VFIO prints it, and compares it with "pci-stub"),
    ``probe(dev) -> int`` and ``remove(dev) -> None``; either may be None."""

    __slots__ = ("bus", "name", "probe", "remove")

    def __init__(
        self,
        name: str,
        probe: ProbeFn | None = None,
        remove: RemoveFn | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.name = name
        self.probe = probe
        self.remove = remove
        self.bus = bus

    def __repr__(self) -> str:
        return f"<driver {self.name}>"


# --------------------------------------------------------------------------------------
# The bus notifier chain


def bus_register_notifier(bus: Bus, nb: NotifierBlock) -> int:
    """Watch ``bus``'s device and driver events (blocking_notifier_chain_register)."""
    return blocking_notifier_chain_register(bus.bus_notifier, nb)


def bus_unregister_notifier(bus: Bus, nb: NotifierBlock) -> int:
    """Stop watching; 0 or -ENOENT."""
    return blocking_notifier_chain_unregister(bus.bus_notifier, nb)


def bus_notify(dev: Device, action: int) -> None:
    """Send BUS_NOTIFY_``action`` about ``dev`` on its bus's chain (nothing without a bus).
    The driver core ignores what the callbacks return."""
    bus: Bus | None = dev.bus
    if bus is not None:
        blocking_notifier_call_chain(bus.bus_notifier, action, dev)


# --------------------------------------------------------------------------------------
# Devices on a bus (platform helpers)


def _bus_device_release(dev: Device) -> None:
    kfree(dev.kernel, dev)


def bus_add_device(
    k: Kernel,
    bus: Bus,
    name: str,
    *,
    parent: Device | None = None,
    is_pci: bool = True,
    hdr_type: int = 0,
) -> Device:
    """Create and register a device called ``name`` on ``bus``; the caller owns the
    initialize reference (bus_remove_device drops it).

    Steps: kzalloc (release kfree's it), device_initialize, dev_set_name, device_add, onto
    the bus's list, BUS_NOTIFY_ADD_DEVICE.  Returns the device, or ERR_PTR(-errno) if the
    allocation, the name or device_add failed (whatever was built is put again).
    """
    dev = kzalloc(k, Device)
    if dev is None:
        return ERR_PTR(-ENOMEM)  # type: ignore[no-any-return]
    device_initialize(dev)
    dev.release = _bus_device_release
    dev.parent = parent
    dev.bus = bus
    dev.is_pci = is_pci
    dev.hdr_type = hdr_type
    err = dev_set_name(dev, name)
    if err == 0:
        err = device_add(dev)
    if err:
        put_device(dev)
        return ERR_PTR(err)  # type: ignore[no-any-return]
    bus.klist_lock.spin_lock()
    bus.devices.append(dev)
    bus.klist_lock.spin_unlock()
    bus_notify(dev, BUS_NOTIFY_ADD_DEVICE)
    return dev


def bus_remove_device(dev: Device) -> None:
    """Unregister a device made by bus_add_device and drop the caller's reference.

    Order (device_del's): BUS_NOTIFY_DEL_DEVICE; release the driver if bound (UNBIND,
    remove, UNBOUND); off the bus's list; BUS_NOTIFY_REMOVED_DEVICE (the IOMMU relay takes
    a device of an IOMMU bus out of its group here: DEL_DEVICE on the group chain, -1 group
    reference); device_del; put_device (the last put frees the device).
    """
    bus: Bus | None = dev.bus
    bus_notify(dev, BUS_NOTIFY_DEL_DEVICE)
    device_release_driver(dev)
    if bus is not None:
        bus.klist_lock.spin_lock()
        for i, d in enumerate(bus.devices):
            if d is dev:
                del bus.devices[i]
                break
        bus.klist_lock.spin_unlock()
    bus_notify(dev, BUS_NOTIFY_REMOVED_DEVICE)
    device_del(dev)
    put_device(dev)


# --------------------------------------------------------------------------------------
# Binding (dd.c)


def _set_driver(dev: Device, drv: DeviceDriver | None) -> None:
    """Write ``dev->driver``: a scheduling point on the device first, since VFIO reads the
    field of other devices without their lock (READ_ONCE in vfio_dev_viable)."""
    s = dev.kernel.sched
    if s is not None:
        s.point("WRITE_ONCE", dev, None, "driver")
    dev.driver = drv


def driver_sysfs_add(dev: Device) -> int:
    """First step of binding once ``dev.driver`` is set: BUS_NOTIFY_BIND_DRIVER (the sysfs
    links it then makes are not modelled).  Returns 0."""
    bus_notify(dev, BUS_NOTIFY_BIND_DRIVER)
    return 0


def driver_bound(dev: Device) -> None:
    """The probe succeeded: BUS_NOTIFY_BOUND_DRIVER."""
    bus_notify(dev, BUS_NOTIFY_BOUND_DRIVER)


def call_driver_probe(dev: Device, drv: DeviceDriver) -> int:
    """Run the driver's probe (0 when it has none); a failure other than a rejected match
    (-ENODEV, -ENXIO) or a deferral is logged as the kernel logs it."""
    probe = drv.probe
    ret = probe(dev) if probe is not None else 0
    if ret and ret not in (-ENODEV, -ENXIO, -EPROBE_DEFER):
        dev.kernel.printk(f"{drv.name}: probe of {dev_name(dev)} failed with error {ret}")
    return ret


def really_probe(dev: Device, drv: DeviceDriver) -> int:
    """Bind with the device lock held: ``dev.driver`` set, BIND_DRIVER, probe, then either
    BOUND_DRIVER and 0, or DRIVER_NOT_BOUND, ``dev.driver`` cleared and the probe error
    as a positive number (5.15 returns probe errors inverted, so callers can tell them
    from their own)."""
    _set_driver(dev, drv)
    ret = driver_sysfs_add(dev)
    if ret == 0:
        ret = call_driver_probe(dev, drv)
        if ret == 0:
            driver_bound(dev)
            return 0
        ret = -ret  # a probe error comes back positive
    # probe_failed / sysfs_failed:
    bus_notify(dev, BUS_NOTIFY_DRIVER_NOT_BOUND)
    _set_driver(dev, None)
    dev.driver_data = None
    return ret


def driver_probe_device(drv: DeviceDriver, dev: Device) -> int:
    """Try ``drv`` on ``dev`` (device lock held): -ENODEV if the device is not registered,
    -EBUSY if it already has a driver, else really_probe's result."""
    if not dev.added:
        return -ENODEV
    if dev.driver is not None:
        return -EBUSY
    return really_probe(dev, drv)


def device_driver_attach(drv: DeviceDriver, dev: Device) -> int:
    """Bind ``drv`` to ``dev`` (what writing to a driver's sysfs "bind" file does).

    Returns 0 when bound; -ENODEV / -EBUSY as driver_probe_device; the probe's own
    (negative) error when it fails, with -EPROBE_DEFER turned into -EAGAIN.
    """
    device_lock(dev)
    ret = driver_probe_device(drv, dev)
    device_unlock(dev)
    if ret > 0:
        ret = -ret
    if ret == -EPROBE_DEFER:
        return -EAGAIN
    return ret


def device_release_driver_internal(dev: Device, drv: DeviceDriver | None) -> None:
    """Unbind under the device lock, if the device is bound (to ``drv``, when given):
    UNBIND_DRIVER with the driver still set, ``drv.remove(dev)``, ``dev.driver`` cleared,
    UNBOUND_DRIVER."""
    device_lock(dev)
    cur: DeviceDriver | None = dev.driver
    if cur is not None and (drv is None or drv is cur):
        bus_notify(dev, BUS_NOTIFY_UNBIND_DRIVER)
        remove = cur.remove
        if remove is not None:
            remove(dev)
        _set_driver(dev, None)
        dev.driver_data = None
        bus_notify(dev, BUS_NOTIFY_UNBOUND_DRIVER)
    device_unlock(dev)


def device_release_driver(dev: Device) -> None:
    """Unbind whatever driver ``dev`` has (nothing happens if it has none)."""
    device_release_driver_internal(dev, None)


def device_is_bound(dev: Device) -> bool:
    """True while a driver is bound (``dev.driver`` set)."""
    drv: Any = dev.driver
    return drv is not None
