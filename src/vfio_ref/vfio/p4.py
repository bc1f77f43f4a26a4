"""Patch 4/5: "vfio: Use a refcount_t instead of a kref in the vfio_group".

Patch 5 embeds a struct device, which has its own kref, in the vfio_group; two krefs in one
struct is confusing, and this one really counts the period the group is registered in sysfs
and findable by the internal lookups.  It becomes ``refcount_t users``.

The release function merges into vfio_group_put(), which returns unless
refcount_dec_and_mutex_lock() took the count to zero -- with vfio.group_lock held, so the
1 -> 0 step is atomic with the list searches and with the group's presence in sysfs (a lookup
under the lock never sees a group at zero).  vfio_group_get() is refcount_inc(): a get on a
group whose users reached zero saturates and WARNs "addition on 0; use-after-free".

As posted, patch 4 keeps patch 3's vfio_create_group shape (the success path still falls into
the cleanup); :class:`P4ReviewFixes` carries the reviewed shape with this patch's change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..kernel.atomic import Atomic, atomic_read, atomic_set
from ..kernel.bug import WARN_ON
from ..kernel.core import Kernel
from ..kernel.device import MAJOR, MKDEV, device_create, device_destroy
from ..kernel.errno import ENOMEM, ERR_CAST, ERR_PTR, IS_ERR
from ..kernel.iommu import (
    IommuGroup,
    iommu_group_id,
    iommu_group_put,
    iommu_group_ref_get,
    iommu_group_register_notifier,
)
from ..kernel.mutex import Mutex, mutex_init, mutex_lock, mutex_unlock
from ..kernel.notifier import BLOCKING_INIT_NOTIFIER_HEAD, BlockingNotifierHead, NotifierBlock
from ..kernel.refcount import Refcount, refcount_dec_and_mutex_lock, refcount_inc, refcount_set
from ..kernel.shared import INIT_LIST_HEAD, ListHead, SharedField, list_add, list_del, list_empty
from ..kernel.slab import KStruct, kfree, kzalloc
from ..kernel.wait import WaitQueueHead, init_waitqueue_head
from .base import VFIO_IOMMU, VFIO_NO_IOMMU, VfioContainer
from .p3 import VfioP3


class VfioGroup(KStruct):
    """struct vfio_group at patch 4: ``refcount_t users`` replaces ``struct kref kref``."""

    __slots__ = ("iommu_group",)  # read by the group-list walk: see base.VfioGroup
    _embedded = (
        "users",
        "container_users",
        "device_list",
        "device_lock",
        "nb",
        "vfio_next",
        "container_next",
        "unbound_list",
        "unbound_lock",
        "opened",
        "container_q",
        "notifier",
    )
    # Read without a lock by open and by unregister's wait; written under container->group_lock.
    container: SharedField[VfioContainer | None] = SharedField(None)
    # struct kvm *: written by vfio_group_set_kvm and read by the group notifier's
    # registration, with no lock in common.
    kvm: SharedField[Any] = SharedField(None)

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.users = Refcount(k, 0)
        self.minor = 0
        self.container_users = Atomic(k, 0)
        self.iommu_group: IommuGroup | None = None
        # Members are built valid; the allocation path initialises them as the kernel does.
        self.device_list = ListHead(k, self, "group->device_list")
        self.device_lock = Mutex(k, "&group->device_lock")
        self.dev: Any = None
        self.nb = NotifierBlock(self)
        self.vfio_next = ListHead(k, self, "vfio_next")
        self.container_next = ListHead(k, self, "container_next")
        self.unbound_list = ListHead(k, self, "group->unbound_list")
        self.unbound_lock = Mutex(k, "&group->unbound_lock")
        self.opened = Atomic(k, 0)
        self.container_q = WaitQueueHead(k, "&group->container_q")
        self.type = VFIO_IOMMU
        self.dev_counter = 0
        self.notifier = BlockingNotifierHead(k, "&vfio_group->notifier.rwsem")
        for x in (self.users, self.container_users, self.opened):
            x.container = self

    def leak_detail(self) -> str:
        return f"vfio_group minor={self.minor} users={self.users.refs}"


class VfioP4(VfioP3):
    LEVEL: ClassVar[str] = "p4"
    TITLE: ClassVar[str] = "vfio: Use a refcount_t instead of a kref in the vfio_group (patch 4/5)"
    STRUCTS: ClassVar[dict[str, type]] = {"vfio_group": VfioGroup}
    VfioGroup: ClassVar[type] = VfioGroup
    REMOVED: ClassVar[tuple[str, ...]] = ("vfio_group_release",)

    def vfio_create_group(self, iommu_group: IommuGroup, type: int) -> Any:
        k, vfio = self.k, self.vfio
        group = kzalloc(k, self.VfioGroup)
        if group is None:
            return ERR_PTR(-ENOMEM)

        refcount_set(group.users, 1)
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

    def vfio_group_put(self, group: Any) -> None:
        k, vfio = self.k, self.vfio
        if not refcount_dec_and_mutex_lock(group.users, vfio.group_lock):
            return

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        assert vfio.class_ is not None
        device_destroy(vfio.class_, MKDEV(MAJOR(vfio.group_devt), group.minor))
        list_del(group.vfio_next)
        self.vfio_free_group_minor(group.minor)
        self.vfio_group_unlock_and_free(group)

    def vfio_group_get(self, group: Any) -> None:
        refcount_inc(group.users)


class ReviewFixes:
    """Patch 4 on top of patch 3 as fixed in review: vfio_create_group in the reviewed shape."""

    def vfio_create_group(self: Any, iommu_group: IommuGroup, type: int) -> Any:
        k, vfio = self.k, self.vfio
        group = kzalloc(k, self.VfioGroup)
        if group is None:
            return ERR_PTR(-ENOMEM)

        refcount_set(group.users, 1)
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
