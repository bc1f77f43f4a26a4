"""Patch 1/5: "vfio: Delete vfio_get/put_group from vfio_iommu_group_notifier()".

The notifier runs on a blocking chain whose rwsem makes it impossible for a callback to run
outside the notifier's registration.  While a group is being created, and after its count
reached zero, container_users is 0 and device_list is empty, so ADD_DEVICE and BOUND_DRIVER
return early, and UNBOUND_DRIVER only deletes from the unbound list.  The notifier therefore
needs no group reference: the lookup under vfio.group_lock (vfio_group_try_get) and the
deferred put through the workqueue (vfio_group_schedule_put) go.

Two more changes keep that argument true: the release WARNs when container_users is not 0
(a zero count with container users means some caller was unbalanced), and the unbound list,
which release walked without unbound_lock, is freed after the notifier is unregistered.

As posted (v1): only code is modelled; the patch's comment changes (the stale "spurious
callback is harmless" comment kept in v1, the removed registration comment) are not.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..kernel.atomic import atomic_read
from ..kernel.bug import BUG_ON, WARN_ON
from ..kernel.device import MAJOR, MKDEV, Device, dev_name, device_destroy
from ..kernel.iommu import (
    IOMMU_GROUP_NOTIFY_ADD_DEVICE,
    IOMMU_GROUP_NOTIFY_BIND_DRIVER,
    IOMMU_GROUP_NOTIFY_BOUND_DRIVER,
    IOMMU_GROUP_NOTIFY_DEL_DEVICE,
    IOMMU_GROUP_NOTIFY_UNBIND_DRIVER,
    IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER,
    iommu_group_id,
    iommu_group_put,
    iommu_group_unregister_notifier,
)
from ..kernel.kref import Kref
from ..kernel.mutex import mutex_lock, mutex_unlock
from ..kernel.notifier import NOTIFY_OK, NotifierBlock
from ..kernel.shared import list_del, list_empty, list_for_each_entry, list_for_each_entry_safe
from ..kernel.slab import container_of, kfree
from .base import VfioBase, VfioGroupPtr


class VfioP1(VfioBase):
    LEVEL: ClassVar[str] = "p1"
    TITLE: ClassVar[str] = "vfio: Delete vfio_get/put_group from vfio_iommu_group_notifier() (patch 1/5)"
    REMOVED: ClassVar[tuple[str, ...]] = (
        "vfio_group_put_bg",
        "vfio_group_schedule_put",
        "vfio_group_try_get",
        "vfio_group_put_work",
    )

    def vfio_group_unlock_and_free(self, group: VfioGroupPtr) -> None:
        k = self.k
        mutex_unlock(self.vfio.group_lock)
        assert group.iommu_group is not None
        iommu_group_unregister_notifier(group.iommu_group, group.nb)

        # No callback can run now: the unbound list is ours alone.
        for unbound in list_for_each_entry_safe(group.unbound_list):
            list_del(unbound.unbound_next)
            kfree(k, unbound)
        kfree(k, group)

    def vfio_group_release(self, kref: Kref) -> None:
        """Called with vfio.group_lock held (kref_put_mutex)."""
        k, vfio = self.k, self.vfio
        group: VfioGroupPtr = container_of(kref, self.VfioGroup, "kref")
        iommu_group = group.iommu_group

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        assert vfio.class_ is not None
        device_destroy(vfio.class_, MKDEV(MAJOR(vfio.group_devt), group.minor))
        list_del(group.vfio_next)
        self.vfio_free_group_minor(group.minor)
        self.vfio_group_unlock_and_free(group)
        iommu_group_put(iommu_group)

    def vfio_iommu_group_notifier(self, nb: NotifierBlock, action: int, data: Any) -> int:
        k = self.k
        group: VfioGroupPtr = container_of(nb, self.VfioGroup, "nb")
        dev: Device = data

        assert group.iommu_group is not None
        gid = iommu_group_id(group.iommu_group)
        if action == IOMMU_GROUP_NOTIFY_ADD_DEVICE:
            self.vfio_group_nb_add_dev(group, dev)
        elif action == IOMMU_GROUP_NOTIFY_DEL_DEVICE:
            # Nothing to do: a vfio driver in use blocks its remove until the device is
            # unused, and an unused or stub-bound device may simply go.
            pass
        elif action == IOMMU_GROUP_NOTIFY_BIND_DRIVER:
            k.printk(f"{dev_name(dev)}: vfio_iommu_group_notifier: group {gid} binding to driver")
        elif action == IOMMU_GROUP_NOTIFY_BOUND_DRIVER:
            k.printk(
                f"{dev_name(dev)}: vfio_iommu_group_notifier: group {gid} bound to driver {dev.driver.name}"
            )
            BUG_ON(k, self.vfio_group_nb_verify(group, dev), "vfio_group_nb_verify(group, dev)")
        elif action == IOMMU_GROUP_NOTIFY_UNBIND_DRIVER:
            k.printk(
                f"{dev_name(dev)}: vfio_iommu_group_notifier: group {gid} unbinding from driver {dev.driver.name}"
            )
        elif action == IOMMU_GROUP_NOTIFY_UNBOUND_DRIVER:
            k.printk(f"{dev_name(dev)}: vfio_iommu_group_notifier: group {gid} unbound from driver")
            # An unbound device in a live group is fine; what the kernel would like is to stop
            # other drivers binding to it, which would avoid the BUG_ON above.
            assert group.unbound_lock is not None
            mutex_lock(group.unbound_lock)
            for unbound in list_for_each_entry(group.unbound_list):
                if dev is unbound.dev:
                    list_del(unbound.unbound_next)
                    kfree(k, unbound)
                    break
            mutex_unlock(group.unbound_lock)
        return NOTIFY_OK
