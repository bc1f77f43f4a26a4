"""Patch 5/5: "vfio: Use cdev_device_add() instead of device_create()".

The modern cdev lifecycle: the struct device and the struct cdev are embedded in the
vfio_group, so one memory object holds all three and container_of() moves between them.

* vfio_group_alloc() / vfio_group_release() pair the allocation and the free; the free is
  the struct device's release, run by the last put_device().
* vfio_create_group() / vfio_group_put() pair the group's user-visible life: cdev_device_add
  when created, cdev_device_del when ``users`` reaches zero.
* The IDR of minors becomes an IDA (ids only: vfio_group_fops_open finds its group with
  container_of(inode->i_cdev)), and the global cdev spanning every minor goes.

Consequences the model shows: the minor is allocated *before* the "did we race" check, so a
creator that loses the race holds a minor until its struct device is released; the node is
openable as soon as cdev_device_add maps it (even if that call then fails); an open racing
the last vfio_group_put finds ``users`` at zero and fails with -ENODEV through
refcount_inc_not_zero, while the open file's cdev reference keeps the memory alive (Kevin
Tian's question in review).

As posted (v1): the open uses the small helper vfio_group_try_get() (v3 open-codes the same
refcount_inc_not_zero).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..kernel.atomic import Atomic, atomic_cmpxchg, atomic_dec, atomic_read
from ..kernel.bug import WARN_ON
from ..kernel.cdev import (
    Cdev,
    alloc_chrdev_region,
    cdev_device_add,
    cdev_device_del,
    cdev_init,
    unregister_chrdev_region,
)
from ..kernel.core import CAP_SYS_RAWIO, Kernel
from ..kernel.device import (
    MAJOR,
    MINOR,
    MINORMASK,
    MKDEV,
    Class,
    Device,
    class_create,
    class_destroy,
    dev_set_name,
    device_initialize,
    put_device,
)
from ..kernel.errno import EBUSY, ENODEV, ENOMEM, EPERM, ERR_PTR, IS_ERR, PTR_ERR
from ..kernel.ida import Ida, ida_alloc_max, ida_destroy, ida_free, ida_init
from ..kernel.iommu import (
    IommuGroup,
    iommu_group_id,
    iommu_group_put,
    iommu_group_ref_get,
    iommu_group_register_notifier,
    iommu_group_unregister_notifier,
)
from ..kernel.mutex import Mutex, mutex_destroy, mutex_init, mutex_lock, mutex_unlock
from ..kernel.notifier import BLOCKING_INIT_NOTIFIER_HEAD, BlockingNotifierHead, NotifierBlock
from ..kernel.refcount import Refcount, refcount_dec_and_mutex_lock, refcount_inc_not_zero, refcount_set
from ..kernel.shared import (
    INIT_LIST_HEAD,
    ListHead,
    SharedField,
    list_add,
    list_del,
    list_empty,
    list_for_each_entry_safe,
)
from ..kernel.slab import KStruct, container_of, kfree, kzalloc
from ..kernel.wait import WaitQueueHead, init_waitqueue_head
from .base import THIS_MODULE, VFIO_IOMMU, VFIO_NO_IOMMU, VfioContainer, VfioGroupPtr
from .p4 import VfioP4


class Vfio:
    """The static ``struct vfio`` at patch 5: an IDA of minors, no IDR, no global cdev."""

    def __init__(self, k: Kernel) -> None:
        self.class_: Class | None = None
        self.iommu_drivers_list: ListHead = ListHead(k, None, "vfio.iommu_drivers_list")
        self.iommu_drivers_lock: Mutex = Mutex(k, "&vfio.iommu_drivers_lock")
        self.group_list: ListHead = ListHead(k, None, "vfio.group_list")
        self.group_lock: Mutex = Mutex(k, "&vfio.group_lock")  # locks group_list
        self.group_ida = Ida(k)
        self.group_devt = 0


class VfioGroup(KStruct):
    """struct vfio_group at patch 5: embeds its struct device and struct cdev; ``minor`` and
    the device pointer are gone (the minor is MINOR(group->dev.devt))."""

    __slots__ = ("iommu_group",)  # read by the group-list walk: see base.VfioGroup
    _embedded = (
        "dev",
        "cdev",
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
        self.dev = Device(k, container=self)
        self.cdev = Cdev(k, container=self)
        self.users = Refcount(k, 0)
        self.container_users = Atomic(k, 0)
        self.iommu_group: IommuGroup | None = None
        # Members are built valid; the allocation path initialises them as the kernel does.
        self.device_list = ListHead(k, self, "group->device_list")
        self.device_lock = Mutex(k, "&group->device_lock")
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
        return (
            f"vfio_group minor={MINOR(self.dev.devt)} users={self.users.refs} "
            f"dev.kref={self.dev.kobj.kref.refcount.refs}"
        )


class VfioP5(VfioP4):
    LEVEL: ClassVar[str] = "p5"
    TITLE: ClassVar[str] = "vfio: Use cdev_device_add() instead of device_create() (patch 5/5)"
    STRUCTS: ClassVar[dict[str, type]] = {"vfio_group": VfioGroup, "vfio": Vfio}
    VfioGroup: ClassVar[type] = VfioGroup
    REMOVED: ClassVar[tuple[str, ...]] = (
        "vfio_alloc_group_minor",
        "vfio_free_group_minor",
        "vfio_group_unlock_and_free",
        "vfio_group_get_from_minor",
    )

    def __init__(self, kernel: Kernel, *, noiommu: bool = False) -> None:
        super().__init__(kernel, noiommu=noiommu)
        self.vfio = Vfio(kernel)  # type: ignore[assignment]

    def vfio_group_release(self, dev: Device) -> None:  # type: ignore[override]
        """The struct device's release: the last put_device() frees the whole group."""
        k, vfio = self.k, self.vfio
        group: VfioGroupPtr = container_of(dev, self.VfioGroup, "dev")

        for unbound in list_for_each_entry_safe(group.unbound_list):
            list_del(unbound.unbound_next)
            kfree(k, unbound)

        assert group.device_lock is not None and group.unbound_lock is not None
        mutex_destroy(group.device_lock)
        mutex_destroy(group.unbound_lock)
        iommu_group_put(group.iommu_group)
        assert isinstance(vfio, Vfio) and vfio.group_ida is not None
        ida_free(vfio.group_ida, MINOR(group.dev.devt))
        kfree(k, group)

    def vfio_group_alloc(self, iommu_group: IommuGroup, type: int) -> Any:
        k, vfio = self.k, self.vfio
        assert isinstance(vfio, Vfio) and vfio.group_ida is not None
        group = kzalloc(k, self.VfioGroup)
        if group is None:
            return ERR_PTR(-ENOMEM)

        minor = ida_alloc_max(vfio.group_ida, MINORMASK)
        if minor < 0:
            kfree(k, group)
            return ERR_PTR(minor)

        device_initialize(group.dev)
        group.dev.devt = MKDEV(MAJOR(vfio.group_devt), minor)
        group.dev.class_ = vfio.class_
        group.dev.release = self.vfio_group_release
        cdev_init(group.cdev, self.vfio_group_fops)
        group.cdev.owner = THIS_MODULE

        refcount_set(group.users, 1)
        group.device_list = INIT_LIST_HEAD(k, group, "group->device_list")
        group.device_lock = mutex_init(k, "&group->device_lock")
        group.unbound_list = INIT_LIST_HEAD(k, group, "group->unbound_list")
        group.unbound_lock = mutex_init(k, "&group->unbound_lock")
        group.container_q = init_waitqueue_head(k, "&group->container_q")
        group.iommu_group = iommu_group
        # put in vfio_group_release()
        iommu_group_ref_get(iommu_group)
        group.type = type
        group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        return group

    def vfio_create_group(self, iommu_group: IommuGroup, type: int) -> Any:
        vfio = self.vfio
        group = self.vfio_group_alloc(iommu_group, type)
        if IS_ERR(group):
            return group

        err = dev_set_name(
            group.dev,
            "%s%d" % ("noiommu-" if group.type == VFIO_NO_IOMMU else "", iommu_group_id(iommu_group)),
        )
        if err:
            ret = ERR_PTR(err)
            put_device(group.dev)  # err_put
            return ret

        group.nb.notifier_call = self.vfio_iommu_group_notifier
        err = iommu_group_register_notifier(iommu_group, group.nb)
        if err:
            ret = ERR_PTR(err)
            put_device(group.dev)  # err_put
            return ret

        mutex_lock(vfio.group_lock)

        # Did we race creating this group?
        ret = self.__vfio_group_get_from_iommu(iommu_group)
        if ret is None:
            err = cdev_device_add(group.cdev, group.dev)
            if err:
                ret = ERR_PTR(err)
            else:
                list_add(group.vfio_next, vfio.group_list)
                mutex_unlock(vfio.group_lock)
                return group

        # err_unlock: the race was lost (ret is the existing group, referenced) or
        # cdev_device_add failed (ret is its error).
        mutex_unlock(vfio.group_lock)
        iommu_group_unregister_notifier(group.iommu_group, group.nb)
        put_device(group.dev)  # err_put
        return ret

    def vfio_group_put(self, group: Any) -> None:
        k, vfio = self.k, self.vfio
        if not refcount_dec_and_mutex_lock(group.users, vfio.group_lock):
            return

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        list_del(group.vfio_next)
        cdev_device_del(group.cdev, group.dev)
        mutex_unlock(vfio.group_lock)

        iommu_group_unregister_notifier(group.iommu_group, group.nb)
        put_device(group.dev)

    def vfio_group_try_get(self, group: Any) -> bool:
        """Returns true if the get was obtained (users may already be zero)."""
        return refcount_inc_not_zero(group.users)

    def vfio_group_fops_open(self, inode: Any, filep: Any) -> int:
        k = self.k
        group = container_of(inode.i_cdev, self.VfioGroup, "cdev")

        if not self.vfio_group_try_get(group):
            return -ENODEV

        if group.type == VFIO_NO_IOMMU and not k.capable(CAP_SYS_RAWIO):
            self.vfio_group_put(group)
            return -EPERM

        # Do we need multiple instances of the group open?  Seems not.
        opened = atomic_cmpxchg(group.opened, 0, 1)
        if opened:
            self.vfio_group_put(group)
            return -EBUSY

        # Is something still in use from a previous open?
        if group.container is not None:
            atomic_dec(group.opened)
            self.vfio_group_put(group)
            return -EBUSY

        # Warn if a previous user did not clean up, and re-init to drop them.
        if WARN_ON(k, group.notifier.head, "group->notifier.head"):
            group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        filep.private_data = group
        return 0

    def vfio_init(self) -> int:
        k, vfio = self.k, self.vfio
        assert isinstance(vfio, Vfio)
        vfio.group_ida = ida_init(k)

        cls = class_create(k, "vfio")
        if IS_ERR(cls):
            return PTR_ERR(cls)  # err_class
        vfio.class_ = cls

        ret, vfio.group_devt = alloc_chrdev_region(k, 0, MINORMASK + 1, "vfio")
        if ret:
            class_destroy(vfio.class_)  # err_alloc_chrdev
            vfio.class_ = None
            return ret

        k.printk("VFIO - User Level meta-driver version: 0.3")
        self.vfio_register_iommu_driver(self.vfio_noiommu_ops)
        return 0

    def vfio_cleanup(self) -> None:
        k, vfio = self.k, self.vfio
        assert isinstance(vfio, Vfio)
        WARN_ON(k, not list_empty(vfio.group_list), "!list_empty(&vfio.group_list)")

        self.vfio_unregister_iommu_driver(self.vfio_noiommu_ops)
        assert vfio.group_ida is not None
        ida_destroy(vfio.group_ida)
        unregister_chrdev_region(k, vfio.group_devt, MINORMASK + 1)
        class_destroy(vfio.class_)
        vfio.class_ = None
