"""Patch 3/5: "vfio: Don't leak a group reference if the group already exists".

The bug it fixes: vfio_create_group() took over the caller's iommu_group reference, so when
it lost the creation race and returned the existing group, that reference was never put.
New rule: vfio_create_group() takes its own reference (iommu_group_ref_get), put when the
group is freed (vfio_group_unlock_and_free), and both callers put theirs.

AS POSTED (v1), with the bug Alex Williamson found in review: the notifier-registration
failure jumps to a new label ``err_put_group`` at the end of the function, and the success
path falls through it too, so a successfully created group is iommu_group_put() and kfree()d
and then returned -- every vfio_register_group_dev() that creates a group goes on to use
freed memory.  (The failure path itself kfree()s the ERR_PTR it just stored in ``group``
and leaks the group.)  :class:`P3ReviewFixes` is the v2/v3 shape agreed in review: the
registration failure cleans up in place and the success path returns before any cleanup.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..kernel.atomic import atomic_read, atomic_set
from ..kernel.bug import WARN_ON
from ..kernel.device import MAJOR, MKDEV, Device, device_create, device_destroy
from ..kernel.errno import EINVAL, ENOMEM, ERR_CAST, ERR_PTR, IS_ERR, PTR_ERR
from ..kernel.iommu import (
    IommuGroup,
    iommu_group_add_device,
    iommu_group_alloc,
    iommu_group_get,
    iommu_group_id,
    iommu_group_put,
    iommu_group_ref_get,
    iommu_group_register_notifier,
    iommu_group_remove_device,
    iommu_group_set_name,
    iommu_group_unregister_notifier,
    iommu_present,
)
from ..kernel.kref import Kref, kref_init
from ..kernel.mutex import mutex_init, mutex_lock, mutex_unlock
from ..kernel.notifier import BLOCKING_INIT_NOTIFIER_HEAD
from ..kernel.shared import INIT_LIST_HEAD, list_add, list_del, list_empty, list_for_each_entry_safe
from ..kernel.slab import container_of, kfree, kzalloc
from ..kernel.wait import init_waitqueue_head
from .base import VFIO_IOMMU, VFIO_NO_IOMMU, VfioGroupPtr
from .p2 import VfioP2


class VfioP3(VfioP2):
    LEVEL: ClassVar[str] = "p3"
    TITLE: ClassVar[str] = "vfio: Don't leak a group reference if the group already exists (patch 3/5)"

    def vfio_group_unlock_and_free(self, group: VfioGroupPtr) -> None:
        k = self.k
        mutex_unlock(self.vfio.group_lock)
        assert group.iommu_group is not None
        iommu_group_unregister_notifier(group.iommu_group, group.nb)

        for unbound in list_for_each_entry_safe(group.unbound_list):
            list_del(unbound.unbound_next)
            kfree(k, unbound)
        iommu_group_put(group.iommu_group)
        kfree(k, group)

    def vfio_create_group(self, iommu_group: IommuGroup, type: int) -> Any:
        k, vfio = self.k, self.vfio
        group = kzalloc(k, self.VfioGroup)
        if group is None:
            return ERR_PTR(-ENOMEM)

        kref_init(group.kref)
        group.device_list = INIT_LIST_HEAD(k, group, "group->device_list")
        group.device_lock = mutex_init(k, "&group->device_lock")
        group.unbound_list = INIT_LIST_HEAD(k, group, "group->unbound_list")
        group.unbound_lock = mutex_init(k, "&group->unbound_lock")
        atomic_set(group.container_users, 0)
        atomic_set(group.opened, 0)
        group.container_q = init_waitqueue_head(k, "&group->container_q")
        group.iommu_group = iommu_group
        # put in vfio_group_unlock_and_free()
        iommu_group_ref_get(iommu_group)
        group.type = type
        group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        group.nb.notifier_call = self.vfio_iommu_group_notifier

        ret = iommu_group_register_notifier(iommu_group, group.nb)
        if ret:
            group = ERR_PTR(ret)
            # goto err_put_group
        else:
            mutex_lock(vfio.group_lock)

            # Did we race creating this group?
            existing_group = self.__vfio_group_get_from_iommu(iommu_group)
            if existing_group is not None:
                self.vfio_group_unlock_and_free(group)
                return existing_group

            minor = self.vfio_alloc_group_minor(group)
            if minor < 0:
                self.vfio_group_unlock_and_free(group)
                return ERR_PTR(minor)

            dev = device_create(
                vfio.class_,
                None,
                MKDEV(MAJOR(vfio.group_devt), minor),
                group,
                "%s%d" % ("noiommu-" if group.type == VFIO_NO_IOMMU else "", iommu_group_id(iommu_group)),
            )
            if IS_ERR(dev):
                self.vfio_free_group_minor(minor)
                self.vfio_group_unlock_and_free(group)
                return ERR_CAST(dev)

            group.minor = minor
            group.dev = dev

            list_add(group.vfio_next, vfio.group_list)

            mutex_unlock(vfio.group_lock)

        # err_put_group: -- and, as posted, the success path falls through here as well.
        iommu_group_put(iommu_group)
        kfree(k, group)
        return group

    def vfio_group_release(self, kref: Kref) -> None:
        """Called with vfio.group_lock held (kref_put_mutex)."""
        k, vfio = self.k, self.vfio
        group: VfioGroupPtr = container_of(kref, self.VfioGroup, "kref")

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        assert vfio.class_ is not None
        device_destroy(vfio.class_, MKDEV(MAJOR(vfio.group_devt), group.minor))
        list_del(group.vfio_next)
        self.vfio_free_group_minor(group.minor)
        self.vfio_group_unlock_and_free(group)

    def vfio_noiommu_group_alloc(self, dev: Device, type: int) -> Any:
        iommu_group = iommu_group_alloc(self.k)
        if IS_ERR(iommu_group):
            return ERR_CAST(iommu_group)

        iommu_group_set_name(iommu_group, "vfio-noiommu")
        ret = iommu_group_add_device(iommu_group, dev)
        if ret:
            iommu_group_put(iommu_group)  # out_put_group
            return ERR_PTR(ret)

        group = self.vfio_create_group(iommu_group, type)
        if IS_ERR(group):
            ret = PTR_ERR(group)
            iommu_group_remove_device(dev)  # out_remove_device
            iommu_group_put(iommu_group)  # out_put_group
            return ERR_PTR(ret)
        iommu_group_put(iommu_group)
        return group

    def vfio_group_find_or_alloc(self, dev: Device) -> Any:
        k = self.k
        iommu_group = iommu_group_get(dev)
        if iommu_group is None and self.noiommu and not iommu_present(dev.bus):
            group = self.vfio_noiommu_group_alloc(dev, VFIO_NO_IOMMU)
            if not IS_ERR(group):
                k.tainted.add("TAINT_USER")
                k.printk(f"{dev.name}: Adding kernel taint for vfio-noiommu group on device")
            return group
        if iommu_group is None:
            return ERR_PTR(-EINVAL)

        # A found vfio_group already holds a reference to the iommu_group.
        group = self.vfio_group_get_from_iommu(iommu_group)
        if group is None:
            # (v1 still says here that a newly created vfio_group keeps the reference.)
            group = self.vfio_create_group(iommu_group, VFIO_IOMMU)
        iommu_group_put(iommu_group)  # out_put
        return group


class ReviewFixes:
    """Patch 3 as fixed in review (v2/v3): the only behaviour change is in vfio_create_group."""

    def vfio_create_group(self: Any, iommu_group: IommuGroup, type: int) -> Any:
        k, vfio = self.k, self.vfio
        group = kzalloc(k, self.VfioGroup)
        if group is None:
            return ERR_PTR(-ENOMEM)

        kref_init(group.kref)
        group.device_list = INIT_LIST_HEAD(k, group, "group->device_list")
        group.device_lock = mutex_init(k, "&group->device_lock")
        group.unbound_list = INIT_LIST_HEAD(k, group, "group->unbound_list")
        group.unbound_lock = mutex_init(k, "&group->unbound_lock")
        atomic_set(group.container_users, 0)
        atomic_set(group.opened, 0)
        group.container_q = init_waitqueue_head(k, "&group->container_q")
        group.iommu_group = iommu_group
        # put in vfio_group_unlock_and_free()
        iommu_group_ref_get(iommu_group)
        group.type = type
        group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        group.nb.notifier_call = self.vfio_iommu_group_notifier
        ret = iommu_group_register_notifier(iommu_group, group.nb)
        if ret:
            iommu_group_put(iommu_group)
            kfree(k, group)
            return ERR_PTR(ret)

        mutex_lock(vfio.group_lock)

        # Did we race creating this group?
        existing_group = self.__vfio_group_get_from_iommu(iommu_group)
        if existing_group is not None:
            self.vfio_group_unlock_and_free(group)
            return existing_group

        minor = self.vfio_alloc_group_minor(group)
        if minor < 0:
            self.vfio_group_unlock_and_free(group)
            return ERR_PTR(minor)

        dev = device_create(
            vfio.class_,
            None,
            MKDEV(MAJOR(vfio.group_devt), minor),
            group,
            "%s%d" % ("noiommu-" if group.type == VFIO_NO_IOMMU else "", iommu_group_id(iommu_group)),
        )
        if IS_ERR(dev):
            self.vfio_free_group_minor(minor)
            self.vfio_group_unlock_and_free(group)
            return ERR_CAST(dev)

        group.minor = minor
        group.dev = dev

        list_add(group.vfio_next, vfio.group_list)

        mutex_unlock(vfio.group_lock)
        return group
