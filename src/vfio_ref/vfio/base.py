"""drivers/vfio/vfio.c at the series' base: Linux 5.15's group code plus Christoph Hellwig's
"vfio: simplify iommu group allocation for mediated devices" series (torvalds c3c0fa9d94f7).

What the group lifecycle looks like here:

* ``struct vfio_group`` is counted by a kref; the last ``vfio_group_put`` takes
  ``vfio.group_lock`` (kref_put_mutex) and ``vfio_group_release`` tears the group down with
  the lock held, then ``vfio_group_unlock_and_free`` unlocks, unregisters the iommu group
  notifier and kfree()s it.
* Minors come from an IDR under ``vfio.group_lock``; ONE cdev spans all 2^20 minors and
  ``vfio_group_fops_open`` looks the group up by minor under the lock.
* The /dev node is a separate ``device_create`` device, unrelated to open files.
* The iommu group notifier looks its group up on the group list under the lock to take a
  reference (``vfio_group_try_get``), and drops it through the workqueue
  (``vfio_group_schedule_put``) because a final put from inside the callback would unregister
  the notifier from its own chain.

Modelled, beside the group lifecycle: the container far enough to move container_users (the
group fd's SET/UNSET_CONTAINER, the container fd's open/release/SET_IOMMU), the external-user
API, vfio_device registration with the unbound list, the device fd (GET_DEVICE_FD, its
release, and the unregister path's request loop that waits for it), and the group's other
users: vfio_device_get_from_dev, vfio_register_notifier / vfio_unregister_notifier with
vfio_group_set_kvm, vfio_pin_pages / vfio_unpin_pages.  Simplified (each said at the
place): modules are always present, copying arguments from user space is not modelled (an
ioctl's argument is the value itself: a descriptor, a device name), vfio_dev_viable's PCI
test uses the model device's ``hdr_type``.  docs/MODEL.md has the table of every function of
vfio.c and how it is modelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..kernel.atomic import (
    Atomic,
    atomic_cmpxchg,
    atomic_dec,
    atomic_dec_if_positive,
    atomic_inc,
    atomic_inc_not_zero,
    atomic_read,
    atomic_set,
)
from ..kernel.bug import BUG_ON, WARN_ON, WARN_ON_ONCE, deref, dev_WARN
from ..kernel.cdev import (
    Cdev,
    FileOperations,
    alloc_chrdev_region,
    cdev_add,
    cdev_del,
    cdev_init,
    unregister_chrdev_region,
)
from ..kernel.core import CAP_SYS_RAWIO, Kernel, ModelUsageError
from ..kernel.device import (
    MAJOR,
    MINORMASK,
    MKDEV,
    Class,
    Device,
    class_create,
    class_destroy,
    dev_name,
    device_create,
    device_destroy,
)
from ..kernel.errno import (
    E2BIG,
    EBADF,
    EBUSY,
    EINVAL,
    ENODEV,
    ENOMEM,
    ENOTTY,
    EPERM,
    ERR_CAST,
    ERR_PTR,
    IS_ERR,
    PTR_ERR,
)
from ..kernel.file import (
    O_CLOEXEC,
    anon_inode_getfile,
    fd_install,
    fdget,
    fdput,
    get_unused_fd_flags,
    put_unused_fd,
)
from ..kernel.idr import Idr, idr_alloc, idr_destroy, idr_find, idr_init, idr_remove
from ..kernel.iommu import (
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
    iommu_group_id,
    iommu_group_put,
    iommu_group_register_notifier,
    iommu_group_remove_device,
    iommu_group_set_name,
    iommu_group_unregister_notifier,
    iommu_present,
)
from ..kernel.kref import Kref, kref_get, kref_init, kref_put, kref_put_mutex
from ..kernel.mutex import Mutex, mutex_init, mutex_lock, mutex_unlock
from ..kernel.notifier import (
    BLOCKING_INIT_NOTIFIER_HEAD,
    NOTIFY_OK,
    BlockingNotifierHead,
    NotifierBlock,
    blocking_notifier_call_chain,
    blocking_notifier_chain_register,
    blocking_notifier_chain_unregister,
)
from ..kernel.refcount import Refcount, refcount_dec_and_test, refcount_inc_not_zero, refcount_set
from ..kernel.rwsem import RWSemaphore, down_read, down_write, init_rwsem, up_read, up_write
from ..kernel.shared import (
    INIT_LIST_HEAD,
    ListHead,
    SharedField,
    list_add,
    list_add_tail,
    list_del,
    list_empty,
    list_for_each_entry,
    list_for_each_entry_safe,
    list_walk_begin,
)
from ..kernel.slab import KStruct, container_of, kfree, kmalloc, kzalloc
from ..kernel.wait import (
    Completion,
    WaitQueueHead,
    complete,
    init_completion,
    init_waitqueue_head,
    try_wait_for_completion,
    wait_event,
    wait_for_completion,
    wake_up,
)
from ..kernel.workqueue import INIT_WORK, WorkStruct, schedule_work
from .level import Level

# enum vfio_group_type
VFIO_IOMMU: Final = 0
VFIO_EMULATED_IOMMU: Final = 1
VFIO_NO_IOMMU: Final = 2

VFIO_NOIOMMU_IOMMU: Final = 8
VFIO_TYPE1v2_IOMMU: Final = 3
PCI_HEADER_TYPE_NORMAL: Final = 0

# The ioctls the model implements (numbers are the model's own, not the uapi's).
VFIO_GROUP_GET_STATUS: Final = "VFIO_GROUP_GET_STATUS"
VFIO_GROUP_SET_CONTAINER: Final = "VFIO_GROUP_SET_CONTAINER"
VFIO_GROUP_UNSET_CONTAINER: Final = "VFIO_GROUP_UNSET_CONTAINER"
VFIO_SET_IOMMU: Final = "VFIO_SET_IOMMU"
VFIO_CHECK_EXTENSION: Final = "VFIO_CHECK_EXTENSION"
VFIO_GROUP_GET_DEVICE_FD: Final = "VFIO_GROUP_GET_DEVICE_FD"
VFIO_GROUP_FLAGS_VIABLE: Final = 1
VFIO_GROUP_FLAGS_CONTAINER_SET: Final = 2

# enum vfio_notify_type, and the events of VFIO_GROUP_NOTIFY
VFIO_IOMMU_NOTIFY: Final = 0
VFIO_GROUP_NOTIFY: Final = 1
VFIO_GROUP_NOTIFY_SET_KVM: Final = 1 << 0

VFIO_PIN_PAGES_MAX_ENTRIES: Final = 4096 // 8  # PAGE_SIZE / sizeof(unsigned long)
O_RDWR: Final = 0o2

THIS_MODULE: Final = None  # modules are always present in the model (try_module_get succeeds)


# --------------------------------------------------------------------------------------
# Structs

# A struct vfio_group pointer: the struct's Python class differs between levels (patch 4
# and patch 5 change it), so functions shared by the levels take any of them.
VfioGroupPtr = Any


class VfioIommuDriverOps:
    """struct vfio_iommu_driver_ops: the callbacks the model needs (the optional ones None
    when a driver has none, as a NULL member)."""

    def __init__(
        self,
        name: str,
        *,
        open: Any,
        release: Any,
        ioctl: Any,
        attach_group: Any,
        detach_group: Any,
        pin_pages: Any = None,
        unpin_pages: Any = None,
        register_notifier: Any = None,
        unregister_notifier: Any = None,
    ) -> None:
        self.name = name
        self.open = open
        self.release = release
        self.ioctl = ioctl
        self.attach_group = attach_group
        self.detach_group = detach_group
        self.pin_pages = pin_pages
        self.unpin_pages = unpin_pages
        self.register_notifier = register_notifier
        self.unregister_notifier = unregister_notifier


@dataclass(frozen=True, eq=False)
class VfioDeviceOps:
    """struct vfio_device_ops: what vfio.c calls of a vfio driver (None for a NULL member).

    ``open_device(device) -> int`` runs for the first open of the device set's device,
    ``close_device(device)`` for the last close; ``ioctl(device, cmd, arg)`` answers the
    device fd's ioctls; ``request(device, count)`` asks the driver to get its user to
    release the device (vfio_unregister_group_dev); ``match(device, buf) -> int`` replaces
    the name comparison of vfio_device_get_from_name (negative: an error).
    """

    name: str
    open_device: Callable[[VfioDevice], int] | None = None
    close_device: Callable[[VfioDevice], None] | None = None
    ioctl: Callable[[VfioDevice, Any, Any], Any] | None = None
    request: Callable[[VfioDevice, int], None] | None = None
    match: Callable[[VfioDevice, str], int] | None = None


@dataclass
class EventMask:
    """``unsigned long *events`` of vfio_register_notifier: the caller's event bits, which
    the registration clears as it recognises them."""

    bits: int


class VfioIommuDriver(KStruct):
    """struct vfio_iommu_driver."""

    _embedded = ("vfio_next",)

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.ops: VfioIommuDriverOps | None = None
        self.vfio_next = ListHead(k, self, "vfio_next")


class VfioContainer(KStruct):
    """struct vfio_container: created by opening /dev/vfio/vfio, counted by a kref."""

    _embedded = ("kref", "group_list", "group_lock")

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.kref = Kref(k)
        self.kref.container = self
        # Members are built valid; vfio_fops_open initialises them as the kernel does.
        self.group_list = ListHead(k, self, "container->group_list")
        self.group_lock = RWSemaphore(k, "&container->group_lock")
        self.iommu_driver: VfioIommuDriver | None = None
        self.iommu_data: Any = None
        self.noiommu = False

    def leak_detail(self) -> str:
        return f"vfio_container kref={self.kref.refcount.refs}"


class VfioUnboundDev(KStruct):
    """struct vfio_unbound_dev: a device between vfio driver unbind and UNBOUND_DRIVER."""

    _embedded = ("unbound_next",)

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.dev: Device | None = None
        self.unbound_next = ListHead(k, self, "unbound_next")

    def leak_detail(self) -> str:
        return f"vfio_unbound_dev for {self.dev!r}"


class VfioDeviceSet(KStruct):
    """struct vfio_device_set: the devices that must be reset together (singleton here)."""

    _embedded = ("lock", "device_list")

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.lock = Mutex(k, "&new_dev_set->lock")
        self.device_list = ListHead(k, self, "dev_set->device_list")
        self.set_id: Any = None
        self.device_count = 0


class VfioDevice(KStruct):
    """struct vfio_device: what a vfio driver embeds and registers."""

    _embedded = ("refcount", "comp", "group_next", "dev_set_list")

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.container: Any = None  # the driver's struct that embeds it
        self.dev: Device | None = None
        self.ops: VfioDeviceOps | None = None
        self.group: Any = None
        self.dev_set: VfioDeviceSet | None = None
        self.dev_set_list = ListHead(k, self, "dev_set_list")
        self.refcount = Refcount(k, 0)
        self.comp = Completion(k)
        self.group_next = ListHead(k, self, "group_next")
        self.open_count = 0

    def leak_detail(self) -> str:
        return f"vfio_device for {self.dev!r} refcount={self.refcount.refs}"


class VfioGroup(KStruct):
    """struct vfio_group at the base: a kref counts it; ``minor`` and ``dev`` (the
    device_create'd /dev node) are separate from its memory."""

    # iommu_group in a slot: the group-list walk reads it for every entry, and a slot sits in
    # the object itself where a __dict__ member is read from a separate array (paired:walk
    # 2.0-2.3x a bare scan per entry against 2.4-4.0x, same run; benchmarks/REPORT.md).
    __slots__ = ("iommu_group",)
    _embedded = (
        "kref",
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
        self.kref = Kref(k)
        self.kref.container = self
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
        for x in (self.container_users, self.opened):
            x.container = self

    def leak_detail(self) -> str:
        return f"vfio_group minor={self.minor} kref={self.kref.refcount.refs}"


class VfioGroupPutWork(KStruct):
    """struct vfio_group_put_work: the deferred put of the base's notifier."""

    _embedded = ("work",)

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.work = WorkStruct()
        self.work.container = self
        self.group: Any = None


class Vfio:
    """The static ``struct vfio`` of vfio.c (one per loaded model)."""

    def __init__(self, k: Kernel) -> None:
        self.class_: Class | None = None
        self.iommu_drivers_list: ListHead = ListHead(k, None, "vfio.iommu_drivers_list")
        self.iommu_drivers_lock: Mutex = Mutex(k, "&vfio.iommu_drivers_lock")
        self.group_list: ListHead = ListHead(k, None, "vfio.group_list")
        self.group_idr = Idr(k)
        self.group_lock: Mutex = Mutex(k, "&vfio.group_lock")
        self.group_cdev = Cdev(k)
        self.group_devt = 0


def _user_int(cmd: str, arg: Any) -> int:
    """An ioctl's integer argument (get_user): the model passes the value itself."""
    if isinstance(arg, bool) or not isinstance(arg, int):
        raise ModelUsageError(f"{cmd} takes an int (a descriptor number), not {arg!r}")
    return arg


def _user_str(cmd: str, arg: Any) -> str:
    """An ioctl's string argument (strndup_user): the model passes the string itself."""
    if not isinstance(arg, str):
        raise ModelUsageError(f"{cmd} takes a device name (a str), not {arg!r}")
    return arg


# --------------------------------------------------------------------------------------
# The level


class VfioBase(Level):
    """vfio.c at the base of the series (see the module docstring)."""

    LEVEL: ClassVar[str] = "base"
    TITLE: ClassVar[str] = "Linux 5.15 + hch's 'simplify iommu group allocation' (the series' base)"
    STRUCTS: ClassVar[dict[str, type]] = {
        "vfio_group": VfioGroup,
        "vfio": Vfio,
        "vfio_container": VfioContainer,
        "vfio_device": VfioDevice,
        "vfio_unbound_dev": VfioUnboundDev,
        "vfio_group_put_work": VfioGroupPutWork,
    }
    VfioGroup: ClassVar[type] = VfioGroup

    def __init__(self, kernel: Kernel, *, noiommu: bool = False) -> None:
        self.k = kernel
        self.vfio = Vfio(kernel)
        # module parameter enable_unsafe_noiommu_mode (CONFIG_VFIO_NOIOMMU=y)
        self.noiommu = noiommu
        self.vfio_device_set_xa: dict[int, VfioDeviceSet] = {}
        self.vfio_group_fops = FileOperations(
            owner=THIS_MODULE,
            open=self.vfio_group_fops_open,
            release=self.vfio_group_fops_release,
            unlocked_ioctl=self.vfio_group_fops_unl_ioctl,
        )
        self.vfio_fops = FileOperations(
            owner=THIS_MODULE,
            open=self.vfio_fops_open,
            release=self.vfio_fops_release,
            unlocked_ioctl=self.vfio_fops_unl_ioctl,
        )
        # read, write and mmap of the device fd are not modelled: they pass straight to
        # the driver and hold no reference of their own (the fdget of the call does).
        self.vfio_device_fops = FileOperations(
            owner=THIS_MODULE,
            release=self.vfio_device_fops_release,
            unlocked_ioctl=self.vfio_device_fops_unl_ioctl,
            name="vfio_device_fops",
        )
        self.vfio_noiommu_ops = VfioIommuDriverOps(
            "vfio-noiommu",
            open=self.vfio_noiommu_open,
            release=self.vfio_noiommu_release,
            ioctl=self.vfio_noiommu_ioctl,
            attach_group=self.vfio_noiommu_attach_group,
            detach_group=self.vfio_noiommu_detach_group,
        )

    # -- vfio_device_set -----------------------------------------------------------------------

    def vfio_assign_device_set(self, device: VfioDevice, set_id: Any) -> int:
        k = self.k
        if WARN_ON(k, set_id is None, "!set_id"):
            return -EINVAL
        # The xarray and its lock are not modelled: drivers register one device at a time.
        idx = id(set_id)
        dev_set = self.vfio_device_set_xa.get(idx)
        if dev_set is None:
            new_dev_set = kzalloc(k, VfioDeviceSet)
            if new_dev_set is None:
                return -ENOMEM
            new_dev_set.lock = mutex_init(k, "&new_dev_set->lock")
            new_dev_set.device_list = INIT_LIST_HEAD(k, new_dev_set, "dev_set->device_list")
            new_dev_set.set_id = set_id
            self.vfio_device_set_xa[idx] = new_dev_set
            dev_set = new_dev_set
        dev_set.device_count += 1
        assert dev_set.lock is not None and dev_set.device_list is not None
        mutex_lock(dev_set.lock)
        device.dev_set = dev_set
        list_add_tail(device.dev_set_list, dev_set.device_list)
        mutex_unlock(dev_set.lock)
        return 0

    def vfio_release_device_set(self, device: VfioDevice) -> None:
        dev_set = device.dev_set
        if dev_set is None:
            return
        assert dev_set.lock is not None
        mutex_lock(dev_set.lock)
        list_del(device.dev_set_list)
        mutex_unlock(dev_set.lock)
        dev_set.device_count -= 1
        if not dev_set.device_count:
            self.vfio_device_set_xa.pop(id(dev_set.set_id), None)
            kfree(self.k, dev_set)

    # -- the no-IOMMU iommu driver ----------------------------------------------------------------

    def vfio_noiommu_open(self, arg: int) -> Any:
        if arg != VFIO_NOIOMMU_IOMMU:
            return ERR_PTR(-EINVAL)
        if not self.k.capable(CAP_SYS_RAWIO):
            return ERR_PTR(-EPERM)
        return None

    def vfio_noiommu_release(self, iommu_data: Any) -> None:
        pass

    def vfio_noiommu_ioctl(self, iommu_data: Any, cmd: str, arg: int) -> int:
        if cmd == VFIO_CHECK_EXTENSION:
            return 1 if self.noiommu and arg == VFIO_NOIOMMU_IOMMU else 0
        return -ENOTTY

    def vfio_noiommu_attach_group(self, iommu_data: Any, iommu_group: IommuGroup, type: int) -> int:
        return 0

    def vfio_noiommu_detach_group(self, iommu_data: Any, iommu_group: IommuGroup) -> None:
        pass

    def vfio_iommu_driver_allowed(self, container: VfioContainer, driver: VfioIommuDriver) -> bool:
        return container.noiommu == (driver.ops is self.vfio_noiommu_ops)

    # -- IOMMU driver registration ----------------------------------------------------------------

    def vfio_register_iommu_driver(self, ops: VfioIommuDriverOps) -> int:
        k, vfio = self.k, self.vfio
        driver = kzalloc(k, VfioIommuDriver)
        if driver is None:
            return -ENOMEM
        driver.ops = ops
        mutex_lock(vfio.iommu_drivers_lock)
        for tmp in list_for_each_entry(vfio.iommu_drivers_list):
            if tmp.ops is ops:
                mutex_unlock(vfio.iommu_drivers_lock)
                kfree(k, driver)
                return -EINVAL
        list_add(driver.vfio_next, vfio.iommu_drivers_list)
        mutex_unlock(vfio.iommu_drivers_lock)
        return 0

    def vfio_unregister_iommu_driver(self, ops: VfioIommuDriverOps) -> None:
        k, vfio = self.k, self.vfio
        mutex_lock(vfio.iommu_drivers_lock)
        for driver in list_for_each_entry(vfio.iommu_drivers_list):
            if driver.ops is ops:
                list_del(driver.vfio_next)
                mutex_unlock(vfio.iommu_drivers_lock)
                kfree(k, driver)
                return
        mutex_unlock(vfio.iommu_drivers_lock)

    # -- group minor allocation/free: both called with vfio.group_lock held -------------------------

    def vfio_alloc_group_minor(self, group: VfioGroupPtr) -> int:
        assert self.vfio.group_idr is not None
        return idr_alloc(self.vfio.group_idr, group, 0, MINORMASK + 1)

    def vfio_free_group_minor(self, minor: int) -> None:
        assert self.vfio.group_idr is not None
        idr_remove(self.vfio.group_idr, minor)

    # -- container objects ------------------------------------------------------------------------

    def vfio_container_get(self, container: VfioContainer) -> None:
        kref_get(container.kref)

    def vfio_container_release(self, kref: Kref) -> None:
        container: VfioContainer = kref.container
        kfree(self.k, container)

    def vfio_container_put(self, container: VfioContainer) -> None:
        kref_put(container.kref, self.vfio_container_release)

    # -- group objects: create, release, get, put, search -----------------------------------------

    def vfio_group_unlock_and_free(self, group: VfioGroupPtr) -> None:
        mutex_unlock(self.vfio.group_lock)
        # The notifier is unregistered outside the lock; its callback finds nothing now that
        # the group is off vfio.group_list.
        assert group.iommu_group is not None
        iommu_group_unregister_notifier(group.iommu_group, group.nb)
        kfree(self.k, group)

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

        # Registering takes the chain's rwsem, which the callback runs under; doing it
        # outside vfio.group_lock avoids an AB-BA with the callback's lookup.  The callback
        # ignores a group that is not on vfio.group_list, so registering early is harmless.
        ret = iommu_group_register_notifier(iommu_group, group.nb)
        if ret:
            kfree(k, group)
            return ERR_PTR(ret)

        mutex_lock(vfio.group_lock)

        # Did we race creating this group?
        for tmp in list_for_each_entry(vfio.group_list):
            if tmp.iommu_group is iommu_group:
                self.vfio_group_get(tmp)
                self.vfio_group_unlock_and_free(group)
                return tmp

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

    def vfio_group_release(self, kref: Kref) -> None:
        """Called with vfio.group_lock held (kref_put_mutex)."""
        k, vfio = self.k, self.vfio
        group: VfioGroupPtr = container_of(kref, self.VfioGroup, "kref")
        iommu_group = group.iommu_group

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        # The unbound list is walked and freed here without unbound_lock.
        for unbound in list_for_each_entry_safe(group.unbound_list):
            list_del(unbound.unbound_next)
            kfree(k, unbound)

        assert vfio.class_ is not None
        device_destroy(vfio.class_, MKDEV(MAJOR(vfio.group_devt), group.minor))
        list_del(group.vfio_next)
        self.vfio_free_group_minor(group.minor)
        self.vfio_group_unlock_and_free(group)
        iommu_group_put(iommu_group)

    def vfio_group_put(self, group: VfioGroupPtr) -> None:
        kref_put_mutex(group.kref, self.vfio_group_release, self.vfio.group_lock)

    def vfio_group_put_bg(self, work: WorkStruct) -> None:
        do_work: VfioGroupPutWork = container_of(work, VfioGroupPutWork, "work")
        self.vfio_group_put(do_work.group)
        kfree(self.k, do_work)

    def vfio_group_schedule_put(self, group: VfioGroupPtr) -> None:
        k = self.k
        do_work = kmalloc(k, VfioGroupPutWork)
        if WARN_ON(k, do_work is None, "!do_work"):
            return
        assert do_work is not None
        INIT_WORK(do_work.work, self.vfio_group_put_bg)
        do_work.group = group
        schedule_work(k, do_work.work)

    def vfio_group_get(self, group: VfioGroupPtr) -> None:
        """Assume group_lock or group reference is held."""
        kref_get(group.kref)

    def vfio_group_try_get(self, group: VfioGroupPtr) -> VfioGroupPtr | None:
        """Not a try (it sleeps on the mutex): make sure ``group`` is still listed, under the
        lock, and take a reference."""
        vfio = self.vfio
        target = group
        mutex_lock(vfio.group_lock)
        for group in list_for_each_entry(vfio.group_list):
            if group is target:
                self.vfio_group_get(group)
                mutex_unlock(vfio.group_lock)
                return group
        mutex_unlock(vfio.group_lock)
        return None

    def vfio_group_get_from_iommu(self, iommu_group: IommuGroup) -> VfioGroupPtr | None:
        vfio = self.vfio
        mutex_lock(vfio.group_lock)
        # list_for_each_entry(group, &vfio.group_list, vfio_next), written out (the hot walk).
        head = vfio.group_list
        node = list_walk_begin(head)
        while node is not head:
            # The entry's field read through the node, the entry named only on a hit: two
            # bytecodes of sixteen fewer per entry (benchmarks, ``paired:walk``).
            if node.container.iommu_group is iommu_group:
                group = node.container
                self.vfio_group_get(group)
                mutex_unlock(vfio.group_lock)
                return group
            node = node.next
        mutex_unlock(vfio.group_lock)
        return None

    def vfio_group_get_from_minor(self, minor: int) -> VfioGroupPtr | None:
        vfio = self.vfio
        assert vfio.group_idr is not None
        mutex_lock(vfio.group_lock)
        group = idr_find(vfio.group_idr, minor)
        if group is None:
            mutex_unlock(vfio.group_lock)
            return None
        self.vfio_group_get(group)
        mutex_unlock(vfio.group_lock)
        return group

    def vfio_group_get_from_dev(self, dev: Device) -> VfioGroupPtr | None:
        iommu_group = iommu_group_get(dev)
        if iommu_group is None:
            return None
        group = self.vfio_group_get_from_iommu(iommu_group)
        iommu_group_put(iommu_group)
        return group

    # -- device objects -----------------------------------------------------------------------------

    def vfio_device_put(self, device: VfioDevice) -> None:
        """A device reference always implies a group reference."""
        if refcount_dec_and_test(device.refcount):
            assert device.comp is not None
            complete(device.comp)

    def vfio_device_try_get(self, device: VfioDevice) -> bool:
        return refcount_inc_not_zero(device.refcount)

    def vfio_group_get_device(self, group: VfioGroupPtr, dev: Device) -> VfioDevice | None:
        assert group.device_lock is not None and group.device_list is not None
        mutex_lock(group.device_lock)
        for device in list_for_each_entry(group.device_list):
            if device.dev is dev and self.vfio_device_try_get(device):
                mutex_unlock(group.device_lock)
                return device  # type: ignore[no-any-return]
        mutex_unlock(group.device_lock)
        return None

    def vfio_dev_driver_allowed(self, dev: Device, drv: Any) -> bool:
        """pci-stub, and PCI bridges (non-normal header), may stay in a user-owned group."""
        # Simplified: "is a PCI device" and its header type are fields of the model device.
        if dev.is_pci and dev.hdr_type != PCI_HEADER_TYPE_NORMAL:
            return True
        return drv.name in ("pci-stub",)

    def vfio_dev_viable(self, dev: Device, data: VfioGroupPtr) -> int:
        """A group is viable when every device is driver-less, bound to vfio, bound to an
        allowed driver, or on its way out (on the unbound list)."""
        group = data
        drv = dev.driver  # READ_ONCE(dev->driver)
        ret = -EINVAL
        assert group.unbound_lock is not None
        mutex_lock(group.unbound_lock)
        for unbound in list_for_each_entry(group.unbound_list):
            if dev is unbound.dev:
                ret = 0
                break
        mutex_unlock(group.unbound_lock)

        if not ret or drv is None or self.vfio_dev_driver_allowed(dev, drv):
            return 0

        device = self.vfio_group_get_device(group, dev)
        if device is not None:
            self.vfio_device_put(device)
            return 0

        return ret

    # -- async device support: the iommu group notifier ---------------------------------------------

    def vfio_group_nb_add_dev(self, group: VfioGroupPtr, dev: Device) -> int:
        k = self.k
        # Do we already know about it?  We should not.
        device = self.vfio_group_get_device(group, dev)
        if WARN_ON_ONCE(k, device is not None, "device"):
            assert device is not None
            self.vfio_device_put(device)
            return 0

        # Nothing to do for idle groups.
        if not atomic_read(group.container_users):
            return 0

        # TODO in the kernel: prevent device auto probing.
        assert group.iommu_group is not None
        dev_WARN(k, dev, "Device added to live group %d!" % iommu_group_id(group.iommu_group))
        return 0

    def vfio_group_nb_verify(self, group: VfioGroupPtr, dev: Device) -> int:
        # Nothing matters while the group is not in use.
        if not atomic_read(group.container_users):
            return 0
        return self.vfio_dev_viable(dev, group)

    def vfio_iommu_group_notifier(self, nb: NotifierBlock, action: int, data: Any) -> int:
        k = self.k
        group: VfioGroupPtr = container_of(nb, self.VfioGroup, "nb")
        dev: Device = data

        # Look the group up under vfio.group_lock to get a reference, or we could race its
        # removal; a group not on the list is a spurious notification.
        assert group is not None
        group = self.vfio_group_try_get(group)
        if group is None:
            return NOTIFY_OK

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

        # If ours is the last reference, the release would unregister this notifier: that
        # needs the chain's rwsem for write while we hold it for read.  Put it from a work.
        self.vfio_group_schedule_put(group)
        return NOTIFY_OK

    # -- VFIO driver API ------------------------------------------------------------------------------

    def vfio_init_group_dev(self, device: VfioDevice, dev: Device, ops: Any) -> None:
        device.comp = init_completion(self.k)
        device.dev = dev
        device.ops = ops

    def vfio_uninit_group_dev(self, device: VfioDevice) -> None:
        self.vfio_release_device_set(device)

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

        return group

    def vfio_group_find_or_alloc(self, dev: Device) -> Any:
        k = self.k
        iommu_group = iommu_group_get(dev)
        # CONFIG_VFIO_NOIOMMU: with noiommu enabled, a device with no group on a bus with no
        # IOMMU gets a fake group, and the kernel is tainted.
        if iommu_group is None and self.noiommu and not iommu_present(dev.bus):
            group = self.vfio_noiommu_group_alloc(dev, VFIO_NO_IOMMU)
            if not IS_ERR(group):
                k.tainted.add("TAINT_USER")
                k.printk(f"{dev_name(dev)}: Adding kernel taint for vfio-noiommu group on device")
            return group
        if iommu_group is None:
            return ERR_PTR(-EINVAL)

        # A found vfio_group already holds a reference to the iommu_group.
        group = self.vfio_group_get_from_iommu(iommu_group)
        if group is not None:
            iommu_group_put(iommu_group)  # out_put
            return group

        # A newly created vfio_group keeps the reference.
        group = self.vfio_create_group(iommu_group, VFIO_IOMMU)
        if IS_ERR(group):
            iommu_group_put(iommu_group)  # out_put
            return group
        return group

    def __vfio_register_dev(self, device: VfioDevice, group: Any) -> int:
        k = self.k
        if IS_ERR(group):
            return PTR_ERR(group)

        # A driver that names no set gets a singleton set for the device (the return value
        # is ignored, as in the kernel).
        if device.dev_set is None:
            self.vfio_assign_device_set(device, device)

        assert device.dev is not None
        existing_device = self.vfio_group_get_device(group, device.dev)
        if existing_device is not None:
            dev_WARN(k, device.dev, "Device already exists on group %d" % iommu_group_id(group.iommu_group))
            self.vfio_device_put(existing_device)
            if group.type == VFIO_NO_IOMMU or group.type == VFIO_EMULATED_IOMMU:
                iommu_group_remove_device(device.dev)
            self.vfio_group_put(group)
            return -EBUSY

        # Our reference on the group moves to the device.
        device.group = group

        # Refcounting can't start until the driver calls register.
        refcount_set(device.refcount, 1)

        mutex_lock(group.device_lock)
        list_add(device.group_next, group.device_list)
        group.dev_counter += 1
        mutex_unlock(group.device_lock)

        return 0

    def vfio_register_group_dev(self, device: VfioDevice) -> int:
        assert device.dev is not None
        return self.__vfio_register_dev(device, self.vfio_group_find_or_alloc(device.dev))

    def vfio_register_emulated_iommu_dev(self, device: VfioDevice) -> int:
        """Register a virtual device with no IOMMU behind it (a mediated device)."""
        assert device.dev is not None
        return self.__vfio_register_dev(
            device, self.vfio_noiommu_group_alloc(device.dev, VFIO_EMULATED_IOMMU)
        )

    def vfio_device_get_from_dev(self, dev: Device) -> VfioDevice | None:
        """A reference on the vfio_device of ``dev``, found the long way round (iommu group,
        vfio group, device list) since a caller that thinks it owns the device may be racing
        its release; the group reference of the search is dropped before returning."""
        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return None

        device = self.vfio_group_get_device(group, dev)
        self.vfio_group_put(group)

        return device

    def vfio_device_get_from_name(self, group: VfioGroupPtr, buf: str) -> Any:
        """The device of ``group`` whose name is ``buf`` (or that the driver's ->match
        accepts), referenced; ERR_PTR(-ENODEV) when none is, or ->match's error."""
        device: Any = ERR_PTR(-ENODEV)

        assert group.device_lock is not None and group.device_list is not None
        mutex_lock(group.device_lock)
        for it in list_for_each_entry(group.device_list):
            ops: VfioDeviceOps = deref(self.k, it.ops, "it->ops")
            if ops.match is not None:
                ret = ops.match(it, buf)
                if ret < 0:
                    device = ERR_PTR(ret)
                    break
            else:
                ret = int(dev_name(it.dev) == buf)

            if ret and self.vfio_device_try_get(it):
                device = it
                break
        mutex_unlock(group.device_lock)

        return device

    def vfio_unregister_group_dev(self, device: VfioDevice) -> None:
        """Drop the driver's device reference and wait until no one else holds one, asking
        the driver (->request) to get its user to let go."""
        k = self.k
        group: VfioGroupPtr = device.group
        i = 0

        # Once the device leaves the group, the group looks non-viable although the device
        # still has its driver until the unbind completes: external users re-checking the
        # group would fail.  The unbound list bridges the gap until UNBOUND_DRIVER.
        unbound = kzalloc(k, VfioUnboundDev)
        if unbound is not None:
            unbound.dev = device.dev
            assert group.unbound_lock is not None and group.unbound_list is not None
            mutex_lock(group.unbound_lock)
            list_add(unbound.unbound_next, group.unbound_list)
            mutex_unlock(group.unbound_lock)
        WARN_ON(k, unbound is None, "!unbound")

        self.vfio_device_put(device)
        assert device.comp is not None
        rc = try_wait_for_completion(device.comp)
        while not rc:
            ops = deref(k, device.ops, "device->ops")
            if ops.request is not None:
                ops.request(device, i)
                i += 1

            # Simplified: the kernel waits 10 s at a time (interruptibly until a signal
            # comes, then not, with a one-time "blocked until device is released" warning)
            # and asks again; the model waits without a timeout, so it asks once.
            wait_for_completion(device.comp)
            rc = True

        assert group.device_lock is not None
        mutex_lock(group.device_lock)
        list_del(device.group_next)
        group.dev_counter -= 1
        mutex_unlock(group.device_lock)

        # Removing the last device of a group in use waits until the group is detached from
        # its container, so the user cannot race us binding the device to another driver.
        if list_empty(group.device_list):
            assert group.container_q is not None
            wait_event(group.container_q, lambda: group.container is None)

        if group.type == VFIO_NO_IOMMU or group.type == VFIO_EMULATED_IOMMU:
            assert device.dev is not None
            iommu_group_remove_device(device.dev)

        # Matches the get in vfio_register_group_dev().
        self.vfio_group_put(group)

    # -- VFIO base fd, /dev/vfio/vfio ------------------------------------------------------------------

    def __vfio_container_attach_groups(
        self, container: VfioContainer, driver: VfioIommuDriver, data: Any
    ) -> int:
        """Called with container->group_lock held for write."""
        ret = -ENODEV
        attached: list[VfioGroupPtr] = []
        assert driver.ops is not None
        for group in list_for_each_entry(container.group_list):
            ret = int(driver.ops.attach_group(data, group.iommu_group, group.type))
            if ret:
                for g in reversed(attached):  # unwind
                    driver.ops.detach_group(data, g.iommu_group)
                return ret
            attached.append(group)
        return ret

    def vfio_ioctl_set_iommu(self, container: VfioContainer, arg: int) -> int:
        vfio = self.vfio
        ret = -ENODEV
        assert container.group_lock is not None
        down_write(container.group_lock)

        # Only adding a group to a container privileges it to choose an IOMMU.
        if list_empty(container.group_list) or container.iommu_driver is not None:
            up_write(container.group_lock)
            return -EINVAL

        mutex_lock(vfio.iommu_drivers_lock)
        for driver in list_for_each_entry(vfio.iommu_drivers_list):
            if not self.vfio_iommu_driver_allowed(container, driver):
                continue
            if driver.ops.ioctl(None, VFIO_CHECK_EXTENSION, arg) <= 0:
                continue
            data = driver.ops.open(arg)
            if IS_ERR(data):
                ret = PTR_ERR(data)
                continue
            ret = self.__vfio_container_attach_groups(container, driver, data)
            if ret:
                driver.ops.release(data)
                continue
            container.iommu_driver = driver
            container.iommu_data = data
            break
        mutex_unlock(vfio.iommu_drivers_lock)
        up_write(container.group_lock)
        return ret

    def vfio_fops_unl_ioctl(self, filep: Any, cmd: str, arg: Any) -> int:
        container: VfioContainer | None = filep.private_data
        if container is None:
            return -EINVAL
        if cmd == VFIO_SET_IOMMU:
            return self.vfio_ioctl_set_iommu(container, arg)
        return -ENOTTY

    def vfio_fops_open(self, inode: Any, filep: Any) -> int:
        k = self.k
        container = kzalloc(k, VfioContainer)
        if container is None:
            return -ENOMEM
        container.group_list = INIT_LIST_HEAD(k, container, "container->group_list")
        container.group_lock = init_rwsem(k, "&container->group_lock")
        kref_init(container.kref)
        filep.private_data = container
        return 0

    def vfio_fops_release(self, inode: Any, filep: Any) -> int:
        container: VfioContainer = filep.private_data
        filep.private_data = None
        self.vfio_container_put(container)
        return 0

    # -- VFIO group fd, /dev/vfio/$GROUP ---------------------------------------------------------------

    def __vfio_group_unset_container(self, group: VfioGroupPtr) -> None:
        container = group.container
        assert container is not None and container.group_lock is not None
        down_write(container.group_lock)

        driver = container.iommu_driver
        if driver is not None:
            driver.ops.detach_group(container.iommu_data, group.iommu_group)

        group.container = None
        assert group.container_q is not None
        wake_up(group.container_q)
        list_del(group.container_next)

        # Detaching the last group deprivileges the container: drop its IOMMU.
        if driver is not None and list_empty(container.group_list):
            driver.ops.release(container.iommu_data)
            container.iommu_driver = None
            container.iommu_data = None

        up_write(container.group_lock)
        self.vfio_container_put(container)

    def vfio_group_unset_container(self, group: VfioGroupPtr) -> int:
        """UNSET_CONTAINER must fail with other users or no container: only 1 -> 0 is valid."""
        users = atomic_cmpxchg(group.container_users, 1, 0)
        if not users:
            return -EINVAL
        if users != 1:
            return -EBUSY
        self.__vfio_group_unset_container(group)
        return 0

    def vfio_group_try_dissolve_container(self, group: VfioGroupPtr) -> None:
        """Removing the last container user removes the group from its container."""
        if atomic_dec_if_positive(group.container_users) == 0:
            self.__vfio_group_unset_container(group)

    def vfio_group_set_container(self, group: VfioGroupPtr, container_fd: int) -> int:
        k = self.k
        ret = 0
        if atomic_read(group.container_users):
            return -EINVAL

        if group.type == VFIO_NO_IOMMU and not k.capable(CAP_SYS_RAWIO):
            return -EPERM

        f = fdget(k, container_fd)
        if f.file is None:
            return -EBADF

        # Sanity check: is this really our fd?
        if f.file.f_op is not self.vfio_fops:
            fdput(f)
            return -EINVAL

        container: VfioContainer = f.file.private_data
        WARN_ON(k, container is None, "!container")  # fget ensures we don't race release

        assert container.group_lock is not None
        down_write(container.group_lock)

        # Real groups and fake (no-IOMMU) groups cannot mix.
        if not list_empty(container.group_list) and container.noiommu != (group.type == VFIO_NO_IOMMU):
            ret = -EPERM
        else:
            driver = container.iommu_driver
            if driver is not None:
                assert driver.ops is not None
                ret = int(driver.ops.attach_group(container.iommu_data, group.iommu_group, group.type))
            if not ret:
                group.container = container
                container.noiommu = group.type == VFIO_NO_IOMMU
                list_add(group.container_next, container.group_list)

                # Get a reference on the container and mark a user within the group.
                self.vfio_container_get(container)
                atomic_inc(group.container_users)

        # unlock_out:
        up_write(container.group_lock)
        fdput(f)
        return ret

    def vfio_group_viable(self, group: VfioGroupPtr) -> bool:
        assert group.iommu_group is not None
        return iommu_group_for_each_dev(group.iommu_group, group, self.vfio_dev_viable) == 0

    def vfio_group_add_container_user(self, group: VfioGroupPtr) -> int:
        if not atomic_inc_not_zero(group.container_users):
            return -EINVAL

        if group.type == VFIO_NO_IOMMU:
            atomic_dec(group.container_users)
            return -EPERM
        container = group.container
        assert container is not None
        if container.iommu_driver is None or not self.vfio_group_viable(group):
            atomic_dec(group.container_users)
            return -EINVAL

        return 0

    def vfio_group_get_device_fd(self, group: VfioGroupPtr, buf: str) -> int:
        """VFIO_GROUP_GET_DEVICE_FD: a new descriptor for the device called ``buf``, or
        -errno.  The device fd holds a device reference and a container user; the first
        open of the device runs the driver's ->open_device under the device set's lock."""
        k = self.k
        ret = 0

        if (
            atomic_read(group.container_users) == 0
            or group.container.iommu_driver is None
            or not self.vfio_group_viable(group)
        ):
            return -EINVAL

        if group.type == VFIO_NO_IOMMU and not k.capable(CAP_SYS_RAWIO):
            return -EPERM

        device = self.vfio_device_get_from_name(group, buf)
        if IS_ERR(device):
            return PTR_ERR(device)

        # try_module_get(device->dev->driver->owner): modules are not modelled (it succeeds).

        dev_set: VfioDeviceSet = deref(k, device.dev_set, "device->dev_set->lock")
        ops: VfioDeviceOps = deref(k, device.ops, "device->ops")
        mutex_lock(dev_set.lock)
        device.open_count += 1
        if device.open_count == 1 and ops.open_device is not None:
            ret = ops.open_device(device)
            # if (ret) goto err_undo_count
        if not ret:
            mutex_unlock(dev_set.lock)

            # Not anon_inode_getfd(): the kernel sets f_mode bits on the file before
            # installing it (f_mode is not modelled).
            fdno = ret = get_unused_fd_flags(k, O_CLOEXEC)
            if ret >= 0:
                filep = anon_inode_getfile(k, "[vfio-device]", self.vfio_device_fops, device, O_RDWR)
                if not IS_ERR(filep):
                    atomic_inc(group.container_users)

                    fd_install(k, fdno, filep)

                    if group.type == VFIO_NO_IOMMU:
                        assert device.dev is not None
                        k.printk(
                            f"{dev_name(device.dev)}: vfio-noiommu device opened by user "
                            f"({k.current().name})"
                        )
                    return fdno
                ret = PTR_ERR(filep)
                put_unused_fd(k, fdno)  # err_fd
            # err_close_device:
            mutex_lock(dev_set.lock)
            if device.open_count == 1 and ops.close_device is not None:
                ops.close_device(device)
        # err_undo_count:
        device.open_count -= 1
        mutex_unlock(dev_set.lock)
        # module_put(device->dev->driver->owner): not modelled.
        # err_device_put:
        self.vfio_device_put(device)
        return ret

    def vfio_group_fops_unl_ioctl(self, filep: Any, cmd: str, arg: Any) -> Any:
        group: VfioGroupPtr = filep.private_data
        if cmd == VFIO_GROUP_GET_STATUS:
            flags = 0
            if self.vfio_group_viable(group):
                flags |= VFIO_GROUP_FLAGS_VIABLE
            if group.container is not None:
                flags |= VFIO_GROUP_FLAGS_CONTAINER_SET
            return flags
        if cmd == VFIO_GROUP_SET_CONTAINER:
            # get_user(fd, arg): the argument is the container's descriptor itself.
            fd = _user_int(cmd, arg)
            if fd < 0:
                return -EINVAL
            return self.vfio_group_set_container(group, fd)
        if cmd == VFIO_GROUP_UNSET_CONTAINER:
            return self.vfio_group_unset_container(group)
        if cmd == VFIO_GROUP_GET_DEVICE_FD:
            # strndup_user(arg, PAGE_SIZE): the argument is the device name itself (the
            # copy, its -EFAULT and its allocation are not modelled).
            buf = _user_str(cmd, arg)
            ret = self.vfio_group_get_device_fd(group, buf)
            return ret
        return -ENOTTY

    def vfio_group_fops_open(self, inode: Any, filep: Any) -> int:
        k = self.k
        group = self.vfio_group_get_from_minor(inode.i_rdev & MINORMASK)  # iminor(inode)
        if group is None:
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
        assert group.notifier is not None
        if WARN_ON(k, group.notifier.head, "group->notifier.head"):
            group.notifier = BLOCKING_INIT_NOTIFIER_HEAD(k, "&vfio_group->notifier.rwsem")

        filep.private_data = group
        return 0

    def vfio_group_fops_release(self, inode: Any, filep: Any) -> int:
        group: VfioGroupPtr = filep.private_data
        filep.private_data = None
        self.vfio_group_try_dissolve_container(group)
        atomic_dec(group.opened)
        self.vfio_group_put(group)
        return 0

    # -- VFIO device fd ---------------------------------------------------------------------------------

    def vfio_device_fops_release(self, inode: Any, filep: Any) -> int:
        """The device fd's last fput: the last close of the device runs ->close_device,
        then the fd's container user and its device reference go."""
        k = self.k
        device: VfioDevice = filep.private_data

        dev_set: VfioDeviceSet = deref(k, device.dev_set, "device->dev_set->lock")
        ops: VfioDeviceOps = deref(k, device.ops, "device->ops")
        mutex_lock(dev_set.lock)
        device.open_count -= 1
        if not device.open_count and ops.close_device is not None:
            ops.close_device(device)
        mutex_unlock(dev_set.lock)

        # module_put(device->dev->driver->owner): not modelled.

        self.vfio_group_try_dissolve_container(device.group)

        self.vfio_device_put(device)

        return 0

    def vfio_device_fops_unl_ioctl(self, filep: Any, cmd: Any, arg: Any) -> Any:
        device: VfioDevice = filep.private_data
        ops: VfioDeviceOps = deref(self.k, device.ops, "device->ops")

        if ops.ioctl is None:
            return -EINVAL

        return ops.ioctl(device, cmd, arg)

    # -- external user API ------------------------------------------------------------------------------

    def vfio_group_get_external_user(self, filep: Any) -> Any:
        """KVM's entry point: pin the group's container through the group file."""
        group: VfioGroupPtr = filep.private_data
        if filep.f_op is not self.vfio_group_fops:
            return ERR_PTR(-EINVAL)

        ret = self.vfio_group_add_container_user(group)
        if ret:
            return ERR_PTR(ret)

        self.vfio_group_get(group)
        return group

    def vfio_group_get_external_user_from_dev(self, dev: Device) -> Any:
        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return ERR_PTR(-ENODEV)

        ret = self.vfio_group_add_container_user(group)
        if ret:
            self.vfio_group_put(group)
            return ERR_PTR(ret)
        return group

    def vfio_group_put_external_user(self, group: VfioGroupPtr) -> None:
        self.vfio_group_try_dissolve_container(group)
        self.vfio_group_put(group)

    # -- sub-module support: pinning, and the notifiers of other users --------------------------------

    def vfio_pin_pages(
        self, dev: Device | None, user_pfn: list[int], npage: int, prot: int, phys_pfn: list[int]
    ) -> int:
        """Pin pages for ``dev``'s group (a mediated device's vendor driver): a group
        reference and a container user are held around the IOMMU driver's ->pin_pages."""
        if dev is None or not user_pfn or phys_pfn is None or not npage:
            return -EINVAL

        if npage > VFIO_PIN_PAGES_MAX_ENTRIES:
            return -E2BIG

        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return -ENODEV

        if group.dev_counter > 1:
            ret = -EINVAL
        else:
            ret = self.vfio_group_add_container_user(group)
            if not ret:
                container = group.container
                driver = container.iommu_driver
                if driver is not None and driver.ops.pin_pages is not None:
                    ret = int(
                        driver.ops.pin_pages(
                            container.iommu_data, group.iommu_group, user_pfn, npage, prot, phys_pfn
                        )
                    )
                else:
                    ret = -ENOTTY

                self.vfio_group_try_dissolve_container(group)

        # err_pin_pages:
        self.vfio_group_put(group)
        return ret

    def vfio_unpin_pages(self, dev: Device | None, user_pfn: list[int], npage: int) -> int:
        """Unpin what vfio_pin_pages pinned, with the same group reference and container
        user around the IOMMU driver's ->unpin_pages."""
        if dev is None or not user_pfn or not npage:
            return -EINVAL

        if npage > VFIO_PIN_PAGES_MAX_ENTRIES:
            return -E2BIG

        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return -ENODEV

        ret = self.vfio_group_add_container_user(group)
        if not ret:
            container = group.container
            driver = container.iommu_driver
            if driver is not None and driver.ops.unpin_pages is not None:
                ret = int(driver.ops.unpin_pages(container.iommu_data, user_pfn, npage))
            else:
                ret = -ENOTTY

            self.vfio_group_try_dissolve_container(group)

        # err_unpin_pages:
        self.vfio_group_put(group)
        return ret

    def vfio_register_iommu_notifier(self, group: VfioGroupPtr, events: EventMask, nb: NotifierBlock) -> int:
        ret = self.vfio_group_add_container_user(group)
        if ret:
            return -EINVAL

        container = group.container
        driver = container.iommu_driver
        if driver is not None and driver.ops.register_notifier is not None:
            ret = int(driver.ops.register_notifier(container.iommu_data, events, nb))
        else:
            ret = -ENOTTY

        self.vfio_group_try_dissolve_container(group)

        return ret

    def vfio_unregister_iommu_notifier(self, group: VfioGroupPtr, nb: NotifierBlock) -> int:
        ret = self.vfio_group_add_container_user(group)
        if ret:
            return -EINVAL

        container = group.container
        driver = container.iommu_driver
        if driver is not None and driver.ops.unregister_notifier is not None:
            ret = int(driver.ops.unregister_notifier(container.iommu_data, nb))
        else:
            ret = -ENOTTY

        self.vfio_group_try_dissolve_container(group)

        return ret

    def vfio_group_set_kvm(self, group: VfioGroupPtr, kvm: Any) -> None:
        """KVM tells the group which VM uses it (NULL when it lets go); every notifier
        registered for VFIO_GROUP_NOTIFY_SET_KVM hears of it."""
        group.kvm = kvm
        assert group.notifier is not None
        blocking_notifier_call_chain(group.notifier, VFIO_GROUP_NOTIFY_SET_KVM, kvm)

    def vfio_register_group_notifier(self, group: VfioGroupPtr, events: EventMask, nb: NotifierBlock) -> int:
        set_kvm = False

        if events.bits & VFIO_GROUP_NOTIFY_SET_KVM:
            set_kvm = True

        # Clear the events this function knows; anything left is refused.
        events.bits &= ~VFIO_GROUP_NOTIFY_SET_KVM

        if events.bits:
            return -EINVAL

        ret = self.vfio_group_add_container_user(group)
        if ret:
            return -EINVAL

        assert group.notifier is not None
        ret = blocking_notifier_chain_register(group.notifier, nb)

        # KVM may already have attached itself to the group: replay it once to the newcomer.
        if not ret and set_kvm:
            kvm = group.kvm
            if kvm is not None:
                blocking_notifier_call_chain(group.notifier, VFIO_GROUP_NOTIFY_SET_KVM, kvm)

        self.vfio_group_try_dissolve_container(group)

        return ret

    def vfio_unregister_group_notifier(self, group: VfioGroupPtr, nb: NotifierBlock) -> int:
        ret = self.vfio_group_add_container_user(group)
        if ret:
            return -EINVAL

        assert group.notifier is not None
        ret = blocking_notifier_chain_unregister(group.notifier, nb)

        self.vfio_group_try_dissolve_container(group)

        return ret

    def vfio_register_notifier(
        self, dev: Device | None, type: int, events: EventMask | None, nb: NotifierBlock | None
    ) -> int:
        """Register ``nb`` for ``dev``'s group: VFIO_IOMMU_NOTIFY (the IOMMU driver's chain)
        or VFIO_GROUP_NOTIFY (the group's own chain, SET_KVM).  The group is held only for
        the call: a notifier left registered outlives nothing but its group's chain."""
        if dev is None or nb is None or events is None or events.bits == 0:
            return -EINVAL

        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return -ENODEV

        if type == VFIO_IOMMU_NOTIFY:
            ret = self.vfio_register_iommu_notifier(group, events, nb)
        elif type == VFIO_GROUP_NOTIFY:
            ret = self.vfio_register_group_notifier(group, events, nb)
        else:
            ret = -EINVAL

        self.vfio_group_put(group)
        return ret

    def vfio_unregister_notifier(self, dev: Device | None, type: int, nb: NotifierBlock | None) -> int:
        if dev is None or nb is None:
            return -EINVAL

        group = self.vfio_group_get_from_dev(dev)
        if group is None:
            return -ENODEV

        if type == VFIO_IOMMU_NOTIFY:
            ret = self.vfio_unregister_iommu_notifier(group, nb)
        elif type == VFIO_GROUP_NOTIFY:
            ret = self.vfio_unregister_group_notifier(group, nb)
        else:
            ret = -EINVAL

        self.vfio_group_put(group)
        return ret

    # -- module init / exit ---------------------------------------------------------------------------

    def vfio_init(self) -> int:
        k, vfio = self.k, self.vfio
        vfio.group_idr = idr_init(k)
        # mutex_init / INIT_LIST_HEAD of the static struct happened in Vfio().
        # misc_register(&vfio_dev) for /dev/vfio/vfio: the container fops are reached directly.

        # /dev/vfio/$GROUP
        cls = class_create(k, "vfio")
        if IS_ERR(cls):
            return PTR_ERR(cls)  # err_class
        vfio.class_ = cls

        ret, vfio.group_devt = alloc_chrdev_region(k, 0, MINORMASK + 1, "vfio")
        if ret:
            class_destroy(vfio.class_)  # err_alloc_chrdev
            vfio.class_ = None
            return ret

        vfio.group_cdev = Cdev(k)
        cdev_init(vfio.group_cdev, self.vfio_group_fops)
        ret = cdev_add(vfio.group_cdev, vfio.group_devt, MINORMASK + 1)
        if ret:
            unregister_chrdev_region(k, vfio.group_devt, MINORMASK + 1)  # err_cdev_add
            class_destroy(vfio.class_)  # err_alloc_chrdev
            vfio.class_ = None
            return ret

        k.printk("VFIO - User Level meta-driver version: 0.3")
        # CONFIG_VFIO_NOIOMMU
        self.vfio_register_iommu_driver(self.vfio_noiommu_ops)
        return 0

    def vfio_cleanup(self) -> None:
        k, vfio = self.k, self.vfio
        WARN_ON(k, not list_empty(vfio.group_list), "!list_empty(&vfio.group_list)")

        self.vfio_unregister_iommu_driver(self.vfio_noiommu_ops)
        assert vfio.group_idr is not None and vfio.group_cdev is not None
        idr_destroy(vfio.group_idr)
        cdev_del(vfio.group_cdev)
        unregister_chrdev_region(k, vfio.group_devt, MINORMASK + 1)
        class_destroy(vfio.class_)
        vfio.class_ = None


# Imported names used by later levels; kept so every level module can import from here.
__all__ = [
    "O_RDWR",
    "PCI_HEADER_TYPE_NORMAL",
    "VFIO_EMULATED_IOMMU",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_GROUP_NOTIFY",
    "VFIO_GROUP_NOTIFY_SET_KVM",
    "VFIO_IOMMU",
    "VFIO_IOMMU_NOTIFY",
    "VFIO_NOIOMMU_IOMMU",
    "VFIO_NO_IOMMU",
    "VFIO_PIN_PAGES_MAX_ENTRIES",
    "EventMask",
    "VFIO_TYPE1v2_IOMMU",
    "VfioBase",
    "VfioContainer",
    "VfioDevice",
    "VfioDeviceOps",
    "VfioDeviceSet",
    "VfioGroup",
    "VfioIommuDriverOps",
    "VfioUnboundDev",
]
_unused = (down_read, up_read, wait_event, list_for_each_entry_safe, Refcount, kref_put)
