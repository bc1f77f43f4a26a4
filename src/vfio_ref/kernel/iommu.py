"""IOMMU groups (drivers/iommu/iommu.c, include/linux/iommu.h), 5.15/5.16 behaviour.

An :class:`IommuGroup` is the set of devices an IOMMU cannot tell apart.  Its lifetime is one
reference count (in the kernel, the kref of ``group->devices_kobj``, which pins the group's
own kobject); the release at zero gives the group's id back to the per-kernel IDA and frees
the group.  Contracts kept:

* ``iommu_group_alloc`` returns a group holding ONE reference, owned by the caller, with the
  lowest free id >= 0; or ERR_PTR(-ENOMEM) when the allocation fails, or ERR_PTR of the IDA's
  error.  ``iommu_group_get(dev)`` (+1, or None without a group), ``iommu_group_ref_get``
  (+1) and ``iommu_group_put`` (-1, None-safe) move that count.
* ``iommu_group_add_device`` takes a reference for the device, links it in (``devices``,
  under the group's ``mutex``) and only then, with the mutex dropped, sends
  IOMMU_GROUP_NOTIFY_ADD_DEVICE on the group's chain.  ``iommu_group_remove_device`` sends
  IOMMU_GROUP_NOTIFY_DEL_DEVICE first, then unlinks the device under the mutex and drops
  the device's reference (which may free the group).
* ``iommu_group_for_each_dev`` holds the group mutex across every callback.
* The bus relay ``iommu_bus_notifier`` (registered on every bus that has IOMMU ops) turns the
  driver core's bind/unbind events into IOMMU_GROUP_NOTIFY_{BIND,BOUND,UNBIND,UNBOUND}_DRIVER
  on the device's group chain, holding a temporary group reference while it does.
  BUS_NOTIFY_DRIVER_NOT_BOUND is not relayed; a device without a group gets nothing.

Deliberate simplifications: no domains, default domains, sysfs links or reserved regions;
the per-device ``struct group_device`` is not materialised (``devices`` lists the devices
themselves), but its allocation stays an injectable failure point
(``kzalloc@iommu_group_add_device``).  An IOMMU driver's device_group()/probe_device() is
not modelled: whoever plays the platform puts devices into groups with
iommu_group_add_device, and BUS_NOTIFY_ADD_DEVICE does nothing here.

Costs: get/put O(1); add O(1) plus the chain; remove and for_each O(devices in the group).
The device list is shared data under ``group->mutex``: every access is a scheduling point
and a happens-before access.  ``dev->iommu_group`` is read without a lock: its reads and
writes here are scheduling points on the device (not happens-before accesses: the kernel's
word-sized plain accesses to it are not what this model reports as races).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .core import Kernel, KernelBug, backtrace, caller_outside, model_site
from .device import Device, dev_name
from .driver import (
    BUS_NOTIFY_ADD_DEVICE,
    BUS_NOTIFY_BIND_DRIVER,
    BUS_NOTIFY_BOUND_DRIVER,
    BUS_NOTIFY_REMOVED_DEVICE,
    BUS_NOTIFY_UNBIND_DRIVER,
    BUS_NOTIFY_UNBOUND_DRIVER,
)
from .errno import ENOMEM, ERR_PTR
from .ida import Ida
from .kref import Kref
from .mutex import Mutex
from .notifier import (
    NOTIFY_DONE,
    NOTIFY_OK,
    BlockingNotifierHead,
    NotifierBlock,
    blocking_notifier_call_chain,
    blocking_notifier_chain_register,
    blocking_notifier_chain_unregister,
    notifier_chain_register,
)
from .slab import KStruct, kfree, kzalloc

if TYPE_CHECKING:
    from .driver import Bus

IOMMU_GROUP_NOTIFY_ADD_DEVICE: Final = 1
IOMMU_GROUP_NOTIFY_DEL_DEVICE: Final = 2
IOMMU_GROUP_NOTIFY_BIND_DRIVER: Final = 3
IOMMU_GROUP_NOTIFY_BOUND_DRIVER: Final = 4
IOMMU_GROUP_NOTIFY_UNBIND_DRIVER: Final = 5
IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER: Final = 6

IOMMU_GROUP_NOTIFY_NAMES: Final[dict[int, str]] = {
    IOMMU_GROUP_NOTIFY_ADD_DEVICE: "IOMMU_GROUP_NOTIFY_ADD_DEVICE",
    IOMMU_GROUP_NOTIFY_DEL_DEVICE: "IOMMU_GROUP_NOTIFY_DEL_DEVICE",
    IOMMU_GROUP_NOTIFY_BIND_DRIVER: "IOMMU_GROUP_NOTIFY_BIND_DRIVER",
    IOMMU_GROUP_NOTIFY_BOUND_DRIVER: "IOMMU_GROUP_NOTIFY_BOUND_DRIVER",
    IOMMU_GROUP_NOTIFY_UNBIND_DRIVER: "IOMMU_GROUP_NOTIFY_UNBIND_DRIVER",
    IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER: "IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER",
}

# Driver-core event -> the group event the relay sends for it.
_RELAYED: Final[dict[int, int]] = {
    BUS_NOTIFY_BIND_DRIVER: IOMMU_GROUP_NOTIFY_BIND_DRIVER,
    BUS_NOTIFY_BOUND_DRIVER: IOMMU_GROUP_NOTIFY_BOUND_DRIVER,
    BUS_NOTIFY_UNBIND_DRIVER: IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
    BUS_NOTIFY_UNBOUND_DRIVER: IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
}

_IDA_KEY: Final = "iommu_group_ida"


class IommuGroup(KStruct):
    """struct iommu_group (the fields the model needs).

    ``kref`` stands for the devices_kobj reference count; ``devices`` is the member list,
    protected by ``mutex`` ("&group->mutex"); ``notifier`` is the group's blocking chain
    ("&group->notifier.rwsem").  ``id`` is -1 until the IDA has given one.
    """

    _embedded = ("kref", "mutex", "notifier")

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.kref = Kref(kernel)
        self.kref.container = self
        self.devices: list[Device] = []
        self.mutex = Mutex(kernel, "&group->mutex")
        self.mutex.container = self
        self.notifier = BlockingNotifierHead(kernel, "&group->notifier.rwsem")
        self.notifier.container = self
        self.iommu_data: Any = None
        self.iommu_data_release: Callable[[Any], None] | None = None
        self.name: str | None = None
        self.id = -1

    def leak_detail(self) -> str:
        return f"iommu_group {self.id}, kref {self.kref.refcount.refs}"

    def __repr__(self) -> str:
        return f"<iommu_group {self.id}, kref {self.kref.refcount.refs}, {len(self.devices)} devices>"


class IommuOps:
    """struct iommu_ops, reduced to its presence: a bus that has one can isolate devices."""

    __slots__ = ("name",)

    def __init__(self, name: str = "iommu") -> None:
        self.name = name


def _group_ida(k: Kernel) -> Ida:
    """The kernel's iommu_group_ida (one per Kernel, made on first use)."""
    ida = k.state.get(_IDA_KEY)
    if ida is None:
        ida = k.state.setdefault(_IDA_KEY, Ida(k))
    assert isinstance(ida, Ida)
    return ida


def _devices_access(group: IommuGroup, op: str, write: bool) -> None:
    """A scheduling point and a happens-before access on ``group->devices``."""
    k = group.kernel
    s = k.sched
    if s is not None:
        s.point(op, group, None, "devices")
        hb = k.hb
        if hb is not None:
            hb.access(k.current(), group, "devices", write)


def _dev_group_access(dev: Device, op: str) -> None:
    """Scheduling point for ``dev->iommu_group`` (READ_ONCE / WRITE_ONCE on the device), a
    field read without a lock by iommu_group_get while membership changes elsewhere."""
    s = dev.kernel.sched
    if s is not None:
        s.point(op, dev, None, "iommu_group")


# --------------------------------------------------------------------------------------
# Allocation and references


def iommu_group_release(kref: Kref) -> None:
    """The last reference went: release iommu_data, give the id back, free the group."""
    group: IommuGroup = kref.container
    k = group.kernel
    release = group.iommu_data_release
    if release is not None:
        release(group.iommu_data)
    _group_ida(k).ida_free(group.id)
    kfree(k, group)


def iommu_group_alloc(k: Kernel) -> Any:
    """A new group with one reference for the caller and the lowest free id, or ERR_PTR.

    Failures: the kzalloc (ERR_PTR(-ENOMEM)) and the id allocation (ERR_PTR of its errno,
    the group freed again).  The kernel's later sysfs steps are not modelled.
    """
    group = kzalloc(k, IommuGroup)
    if group is None:
        return ERR_PTR(-ENOMEM)
    ret = _group_ida(k).ida_alloc()
    if ret < 0:
        kfree(k, group)
        return ERR_PTR(ret)
    group.id = ret
    group.kref.kref_init()
    return group


def iommu_group_get(dev: Device) -> IommuGroup | None:
    """The device's group with a new reference, or None.  Reads ``dev->iommu_group``
    without a lock, as the kernel does."""
    _dev_group_access(dev, "READ_ONCE")
    group: IommuGroup | None = dev.iommu_group
    if group is not None:
        group.kref.kref_get()
    return group


def iommu_group_ref_get(group: IommuGroup) -> IommuGroup:
    """Take another reference on a group the caller already holds; returns it."""
    group.kref.kref_get()
    return group


def iommu_group_put(group: IommuGroup | None) -> None:
    """Drop one reference (None is ignored); the last one frees the group."""
    if group is not None:
        group.kref.kref_put(iommu_group_release)


def iommu_group_id(group: IommuGroup) -> int:
    """The group's id, as in /sys/kernel/iommu_groups/<id>."""
    return group.id


def iommu_group_get_iommudata(group: IommuGroup) -> Any:
    """What an IOMMU driver stored with iommu_group_set_iommudata."""
    return group.iommu_data


def iommu_group_set_iommudata(
    group: IommuGroup, iommu_data: Any, release: Callable[[Any], None] | None
) -> None:
    """Store driver data; ``release(data)`` runs when the group is released."""
    group.iommu_data = iommu_data
    group.iommu_data_release = release


def iommu_group_set_name(group: IommuGroup, name: str | None) -> int:
    """Replace the group's name: 0, or -ENOMEM (injectable ``iommu_group_set_name@<caller>``,
    standing for the kstrdup) with the group left unnamed.  ``None`` just clears it."""
    k = group.kernel
    if group.name is not None:
        group.name = None
        if name is None:
            return 0
    if name is None:
        # The kernel would kstrdup(NULL) and fail the same way.
        return -ENOMEM
    if k.fault_inject.should_fail("iommu_group_set_name", caller_outside(__file__), name):
        return -ENOMEM
    group.name = name
    return 0


# --------------------------------------------------------------------------------------
# Membership


def iommu_group_add_device(group: IommuGroup, dev: Device) -> int:
    """Make ``dev`` a member: +1 group reference, ``dev.iommu_group`` set, linked under the
    group mutex, then IOMMU_GROUP_NOTIFY_ADD_DEVICE sent with the mutex dropped.  Returns
    0, or -ENOMEM (injectable ``kzalloc@iommu_group_add_device``) with nothing changed."""
    k = group.kernel
    if k.fault_inject.should_fail("kzalloc", "iommu_group_add_device", "group_device"):
        return -ENOMEM
    group.kref.kref_get()
    _dev_group_access(dev, "WRITE_ONCE")
    dev.iommu_group = group
    group.mutex.mutex_lock()
    _devices_access(group, "list_add_tail", True)
    group.devices.append(dev)
    group.mutex.mutex_unlock()
    blocking_notifier_call_chain(group.notifier, IOMMU_GROUP_NOTIFY_ADD_DEVICE, dev)
    k.printk(f"{dev_name(dev)}: Adding to iommu group {group.id}")
    return 0


def iommu_group_remove_device(dev: Device) -> None:
    """Take ``dev`` out of its group: IOMMU_GROUP_NOTIFY_DEL_DEVICE first, then the unlink
    under the group mutex, ``dev.iommu_group`` cleared and the device's group reference
    dropped.  A device that the group does not list is left alone after the notification.

    5.15 does not check for a missing group: calling this for a device without one is a
    NULL pointer dereference, modelled as a KernelBug (an oops) in the caller's thread.
    """
    group: IommuGroup | None = dev.iommu_group
    k = dev.kernel
    if group is None:
        _, site = model_site(1)
        exc = KernelBug(
            f"BUG: kernel NULL pointer dereference in iommu_group_remove_device: "
            f"device {dev_name(dev)!r} has no iommu_group [{site}]"
        )
        exc.backtrace = backtrace(1)
        k.printk(exc.message)
        raise exc
    k.printk(f"{dev_name(dev)}: Removing from iommu group {group.id}")
    blocking_notifier_call_chain(group.notifier, IOMMU_GROUP_NOTIFY_DEL_DEVICE, dev)
    found = False
    group.mutex.mutex_lock()
    _devices_access(group, "list_del", True)
    for i, d in enumerate(group.devices):
        if d is dev:
            del group.devices[i]
            found = True
            break
    group.mutex.mutex_unlock()
    if not found:
        return
    _dev_group_access(dev, "WRITE_ONCE")
    dev.iommu_group = None
    group.kref.kref_put(iommu_group_release)


def iommu_group_for_each_dev(
    group: IommuGroup, data: Any, fn: Callable[[Device, Any], int]
) -> int:
    """Call ``fn(dev, data)`` for each member in order, holding the group mutex across the
    calls (so membership cannot change meanwhile); stop at the first non-zero return and
    return it, else 0.  ``fn`` must not add or remove members (it would deadlock)."""
    group.mutex.mutex_lock()
    _devices_access(group, "list_for_each_entry", False)
    ret = 0
    for dev in list(group.devices):
        ret = fn(dev, data)
        if ret:
            break
    group.mutex.mutex_unlock()
    return ret


def iommu_group_register_notifier(group: IommuGroup, nb: NotifierBlock) -> int:
    """Watch the group's events; the caller should hold a group reference while registered.
    Returns what blocking_notifier_chain_register returns."""
    # Ablation hook (register_notifier_under_group_lock): the caller's lock taken around the
    # registration, the lock order of registering while holding it.  Absent in the kernel.
    outer = group.kernel.state.get("ablation:register_notifier_under")
    if outer is None:
        return blocking_notifier_chain_register(group.notifier, nb)
    outer.mutex_lock()
    try:
        return blocking_notifier_chain_register(group.notifier, nb)
    finally:
        outer.mutex_unlock()


def iommu_group_unregister_notifier(group: IommuGroup, nb: NotifierBlock) -> int:
    """Stop watching; when this returns no callback of ``nb`` is running.  0 or -ENOENT."""
    return blocking_notifier_chain_unregister(group.notifier, nb)


# --------------------------------------------------------------------------------------
# The bus side


def iommu_present(bus: Bus | None) -> bool:
    """True when ``bus`` has IOMMU ops (its devices can be isolated)."""
    return bus is not None and bus.iommu_ops is not None


def iommu_release_device(dev: Device) -> None:
    """Undo the IOMMU layer's probe on device removal: a device on an IOMMU bus leaves its
    group.  Devices on buses without IOMMU ops were never probed by the IOMMU layer (the
    kernel's ``dev->iommu`` is NULL) and are left alone, whatever group they are in."""
    if not iommu_present(dev.bus) or dev.iommu_group is None:
        return
    iommu_group_remove_device(dev)


def iommu_bus_notifier(nb: NotifierBlock, action: int, data: Any) -> int:
    """The IOMMU layer's callback on a bus's notifier chain.

    ADD_DEVICE would probe the device with the IOMMU driver (not modelled: the platform
    adds devices to groups itself); REMOVED_DEVICE releases it from its group.  The four
    driver events are relayed to the device's group chain under a temporary group
    reference; anything else, and any device without a group, is ignored.
    """
    dev: Device = data
    if action == BUS_NOTIFY_ADD_DEVICE:
        return NOTIFY_OK
    if action == BUS_NOTIFY_REMOVED_DEVICE:
        iommu_release_device(dev)
        return NOTIFY_OK
    group = iommu_group_get(dev)
    if group is None:
        return NOTIFY_DONE
    group_action = _RELAYED.get(action, 0)
    if group_action:
        blocking_notifier_call_chain(group.notifier, group_action, dev)
    iommu_group_put(group)
    return NOTIFY_DONE


def bus_set_iommu(bus: Bus, ops: IommuOps) -> int:
    """Give ``bus`` IOMMU ops and hook iommu_bus_notifier onto its chain (boot time).

    The registration does not pass the injectable point: it happens while the platform is
    set up, before any scenario runs.  Returns 0.
    """
    bus.iommu_ops = ops
    nb = NotifierBlock(bus, iommu_bus_notifier)
    bus.iommu_nb = nb
    nh = bus.bus_notifier
    nh.rwsem.down_write()
    notifier_chain_register(nh, nb)
    nh.rwsem.up_write()
    return 0
