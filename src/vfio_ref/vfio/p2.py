"""Patch 2/5: "vfio: Do not open code the group list search in vfio_create_group()".

A pure refactor: the list walk of vfio_group_get_from_iommu() becomes
__vfio_group_get_from_iommu(), which expects vfio.group_lock held and takes a reference on
a match, and vfio_create_group()'s "did we race" check calls it instead of its own copy.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..kernel.atomic import atomic_set
from ..kernel.device import MAJOR, MKDEV, device_create
from ..kernel.errno import ENOMEM, ERR_CAST, ERR_PTR, IS_ERR
from ..kernel.iommu import IommuGroup, iommu_group_id, iommu_group_register_notifier
from ..kernel.kref import kref_init
from ..kernel.mutex import mutex_init, mutex_lock, mutex_unlock
from ..kernel.notifier import BLOCKING_INIT_NOTIFIER_HEAD
from ..kernel.shared import INIT_LIST_HEAD, list_add, list_walk_begin
from ..kernel.slab import kfree, kzalloc
from ..kernel.wait import init_waitqueue_head
from .base import VFIO_NO_IOMMU, VfioGroupPtr
from .p1 import VfioP1


class VfioP2(VfioP1):
    LEVEL: ClassVar[str] = "p2"
    TITLE: ClassVar[str] = "vfio: Do not open code the group list search in vfio_create_group() (patch 2/5)"

    def __vfio_group_get_from_iommu(self, iommu_group: IommuGroup) -> VfioGroupPtr | None:
        """Find the group of ``iommu_group`` and take a reference; vfio.group_lock held."""
        # list_for_each_entry(group, &vfio.group_list, vfio_next), written out (the hot walk).
        head = self.vfio.group_list
        node = list_walk_begin(head)
        while node is not head:
            # The entry's field read through the node, the entry named only on a hit: two
            # bytecodes of sixteen fewer per entry (benchmarks, ``paired:walk``).
            if node.container.iommu_group is iommu_group:
                group = node.container
                self.vfio_group_get(group)
                return group
            node = node.next
        return None

    def vfio_group_get_from_iommu(self, iommu_group: IommuGroup) -> VfioGroupPtr | None:
        vfio = self.vfio
        mutex_lock(vfio.group_lock)
        group = self.__vfio_group_get_from_iommu(iommu_group)
        mutex_unlock(vfio.group_lock)
        return group

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
        group.type = type
        group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        group.nb.notifier_call = self.vfio_iommu_group_notifier

        ret = iommu_group_register_notifier(iommu_group, group.nb)
        if ret:
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
