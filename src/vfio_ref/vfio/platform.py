"""A small machine to run the model on, and the user-space side of VFIO.

:class:`Platform` builds what the scenarios need around a loaded vfio level: a PCI bus with
an IOMMU (and a platform bus without one, for no-IOMMU devices), iommu groups, devices, a
vfio-pci-like driver whose probe registers a vfio_device and whose remove unregisters it,
a non-vfio driver, pci-stub, and an IOMMU driver for containers (a type1 stand-in).

User space is one process with one descriptor table (:mod:`vfio_ref.kernel.file`): an open
installs its file at the lowest free descriptor, ``close`` closes a descriptor, ``dup``
makes a second one, and every ``ioctl`` runs under ``fdget``.  The Files an open returns
are user space's handles: each stands for the descriptor it was opened at (``p.fd(f)``),
and a descriptor number (an int) is accepted wherever a handle is.  Calls return what the
kernel returns to user space (a File, 0 or a negative errno, an ERR_PTR value) and never
raise for a kernel error: using a closed descriptor is -EBADF, as in C.

Other users of the group, in the kernel: KVM as an external user (``external_user_get``,
``set_kvm``), an in-kernel user of a device (a mediated device's vendor driver) that
registers for the group's notifications (``register_group_notifier``), pins pages, or
takes a transient device reference (``device_get_from_dev``).  The vfio-pci stand-in
relays the unregister path's device request to user space through an eventfd
(``request_eventfd`` on the device fd, then ``wait_request``): user space answers it by
closing what it holds.

Misuse of the platform itself (an unknown name, a duplicate, a handle that is not a
descriptor of this process, a call after an oops or after vfio was unloaded) raises
:class:`~vfio_ref.kernel.core.ModelUsageError` naming the object and the rule.  A
KernelFault (BUG, use-after-free...) that reaches a platform call is recorded in the
kernel's ``faults`` (the kernel has oopsed) before it propagates.

Everything here is "outside" vfio.c: driver glue and user space.  The teardown takes the
whole platform down in a fixed order so that the leak check sees only real leaks.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..kernel.cdev import File, FileOperations, Inode, vfs_open_inode
from ..kernel.core import Kernel, KernelFault, ModelUsageError
from ..kernel.device import MAJOR, MINOR, MKDEV, Device
from ..kernel.driver import (
    Bus,
    DeviceDriver,
    bus_add_device,
    bus_remove_device,
    device_driver_attach,
    device_release_driver,
)
from ..kernel.errno import EBADF, EINVAL, ENOENT, ENOMEM, ENOTTY, ERR_PTR, IS_ERR, errno_name
from ..kernel.eventfd import EventfdCtx, eventfd_ctx_create, eventfd_read, eventfd_signal
from ..kernel.file import (
    close_fd,
    current_files,
    exit_files,
    fd_install,
    fdget,
    fdput,
    get_unused_fd_flags,
    ksys_dup,
    ksys_ioctl,
    put_unused_fd,
)
from ..kernel.iommu import IommuGroup, iommu_group_add_device, iommu_group_alloc, iommu_group_id, iommu_group_put
from ..kernel.mutex import Mutex, mutex_lock, mutex_unlock
from ..kernel.notifier import NOTIFY_OK, NotifierBlock
from ..kernel.slab import KStruct, container_of, kfree, kzalloc
from ..kernel.workqueue import flush_scheduled_work
from .base import (
    VFIO_CHECK_EXTENSION,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_GROUP_NOTIFY,
    VFIO_GROUP_NOTIFY_SET_KVM,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_NOIOMMU_IOMMU,
    VFIO_SET_IOMMU,
    EventMask,
    VFIO_TYPE1v2_IOMMU,
    VfioBase,
    VfioDevice,
    VfioDeviceOps,
    VfioIommuDriverOps,
)

# The vfio-pci stand-in's device ioctl: VFIO_DEVICE_SET_IRQS for its request interrupt
# (VFIO_PCI_REQ_IRQ_INDEX, ACTION_TRIGGER), whose argument is the eventfd (or None to clear).
VFIO_DEVICE_SET_IRQS = "VFIO_DEVICE_SET_IRQS"

P = ParamSpec("P")
R = TypeVar("R")


# Numbers each user-space call (a frame's id can be reused once the frame is freed, so two
# calls in a row could look like one).
_CALL_SERIAL = itertools.count(1)


def _kernel_entry(fn: Callable[Concatenate[Platform, P], R]) -> Callable[Concatenate[Platform, P], R]:
    """A platform call that enters the kernel: a KernelFault that comes out of it is the
    kernel oopsing, so it is recorded in ``k.faults`` before it propagates."""

    def _entry(self: Platform, /, *args: P.args, **kwargs: P.kwargs) -> R:
        _call = next(_CALL_SERIAL)  # read from this frame by the tracer: which call a step is of
        try:
            return fn(self, *args, **kwargs)
        except KernelFault as e:
            self.k.record_fault(e)
            raise

    functools.update_wrapper(_entry, fn)
    return _entry


class VfioPciDevice(KStruct):
    """A vfio-pci-like driver's private struct: it embeds its vfio_device; ``igate``
    guards the request trigger (as vfio_pci_core_device's)."""

    _embedded = ("vdev", "igate")

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.vdev = VfioDevice(k)
        self.vdev.container = self  # container_of(vdev) reaches the driver's struct
        self.pdev: Device | None = None
        self.igate = Mutex(k, "&vdev->igate")
        self.req_trigger: EventfdCtx | None = None


class Type1Data(KStruct):
    """What the type1 stand-in's ->open returns (its per-container state)."""

    def __init__(self, k: Kernel) -> None:
        self.kernel = k


class Kvm:
    """struct kvm, as far as vfio sees one: a pointer it hands to group notifiers."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<kvm {self.name}>"


class GroupNotifierUser:
    """An in-kernel user of a device that listens to its group's notifications (a mediated
    device's vendor driver, say): its notifier block and what it heard."""

    def __init__(self, dev: str) -> None:
        self.dev = dev
        self.nb = NotifierBlock(self, self._notify)
        self.registered = False
        self.heard: list[tuple[int, Any]] = []

    def _notify(self, nb: NotifierBlock, action: int, data: Any) -> int:
        self.heard.append((action, data))
        return NOTIFY_OK


class Platform:
    """A machine: buses, iommu groups, devices, drivers, and a user-space process."""

    def __init__(self, vfio: VfioBase) -> None:
        self.vfio = vfio
        self.k: Kernel = vfio.k
        k = self.k
        self.pci = Bus(k, "pci", iommu=True)
        self.platform = Bus(k, "platform", iommu=False)
        self.groups: dict[str, IommuGroup] = {}
        self.devices: dict[str, Device] = {}
        self.files: list[File] = []  # every File this process opened, in order
        self.external: list[Any] = []
        self.notifier_users: dict[str, GroupNotifierUser] = {}
        self._fds: dict[File, int] = {}  # handle -> the descriptor it was opened at
        self._node_inodes: dict[Device, Inode] = {}  # devtmpfs node -> its inode
        self._mknod_inodes: dict[int, Inode] = {}  # dev_t -> the inode of a node made with mknod
        self.vfio_pci = DeviceDriver("vfio-pci", probe=self.vfio_pci_probe, remove=self.vfio_pci_remove)
        self.foreign = DeviceDriver("e1000e", probe=lambda dev: 0, remove=lambda dev: None)
        self.pci_stub = DeviceDriver("pci-stub", probe=lambda dev: 0, remove=lambda dev: None)
        self.drivers = {d.name: d for d in (self.vfio_pci, self.foreign, self.pci_stub)}
        self.vfio_pci_ops = VfioDeviceOps(
            "vfio-pci",
            open_device=self._vfio_pci_open_device,
            close_device=self._vfio_pci_close_device,
            ioctl=self._vfio_pci_ioctl,
            request=self._vfio_pci_request,
        )
        self.type1_ops = VfioIommuDriverOps(
            "vfio-iommu-type1",
            open=self._type1_open,
            release=self._type1_release,
            ioctl=self._type1_ioctl,
            attach_group=lambda data, iommu_group, type: 0,
            detach_group=lambda data, iommu_group: None,
            pin_pages=lambda data, iommu_group, user_pfn, npage, prot, phys_pfn: npage,
            unpin_pages=lambda data, user_pfn, npage: npage,
        )
        self.type1_registered = False

    # -- the vfio-pci-like driver ----------------------------------------------------------------

    def vfio_pci_probe(self, pdev: Device) -> int:
        v = self.vfio
        vdev = kzalloc(self.k, VfioPciDevice)
        if vdev is None:
            return -ENOMEM
        vdev.pdev = pdev
        v.vfio_init_group_dev(vdev.vdev, pdev, self.vfio_pci_ops)
        ret = v.vfio_register_group_dev(vdev.vdev)
        if ret:
            v.vfio_uninit_group_dev(vdev.vdev)
            kfree(self.k, vdev)
            return ret
        pdev.driver_data = vdev
        return 0

    def vfio_pci_remove(self, pdev: Device) -> None:
        v = self.vfio
        vdev: VfioPciDevice = pdev.driver_data
        v.vfio_unregister_group_dev(vdev.vdev)
        v.vfio_uninit_group_dev(vdev.vdev)
        pdev.driver_data = None
        kfree(self.k, vdev)

    def _vfio_pci_open_device(self, core_vdev: VfioDevice) -> int:
        """The first open of the device (vfio_pci_core_enable: not modelled further)."""
        return 0

    def _vfio_pci_close_device(self, core_vdev: VfioDevice) -> None:
        """The last close: the request trigger goes (as vfio_pci_core_close_device)."""
        vdev: VfioPciDevice = container_of(core_vdev, VfioPciDevice, "vdev")
        mutex_lock(vdev.igate)
        vdev.req_trigger = None  # eventfd_ctx_put: contexts are not counted here
        mutex_unlock(vdev.igate)

    def _vfio_pci_ioctl(self, core_vdev: VfioDevice, cmd: Any, arg: Any) -> int:
        """VFIO_DEVICE_SET_IRQS for the request interrupt: ``arg`` is the eventfd to signal
        (None to clear it).  Every other command is -ENOTTY."""
        if cmd != VFIO_DEVICE_SET_IRQS:
            return -ENOTTY
        if arg is not None and not isinstance(arg, EventfdCtx):
            return -EINVAL
        vdev: VfioPciDevice = container_of(core_vdev, VfioPciDevice, "vdev")
        mutex_lock(vdev.igate)
        vdev.req_trigger = arg
        mutex_unlock(vdev.igate)
        return 0

    def _vfio_pci_request(self, core_vdev: VfioDevice, count: int) -> None:
        """vfio_unregister_group_dev asks for the device back: signal user space's request
        eventfd, if it registered one (vfio_pci_core_request)."""
        vdev: VfioPciDevice = container_of(core_vdev, VfioPciDevice, "vdev")
        k = self.k
        name = vdev.pdev.name if vdev.pdev is not None else "?"
        mutex_lock(vdev.igate)
        if vdev.req_trigger is not None:
            if not count % 10:
                k.printk(f"{name}: Relaying device request to user (#{count})")
            eventfd_signal(vdev.req_trigger, 1)
        elif count == 0:
            k.printk(f"{name}: No device request channel registered, blocked until released by user")
        mutex_unlock(vdev.igate)

    # -- the type1 stand-in -----------------------------------------------------------------------

    def _type1_open(self, arg: int) -> Any:
        data = kzalloc(self.k, Type1Data)
        if data is None:
            return ERR_PTR(-ENOMEM)
        return data

    def _type1_release(self, data: Any) -> None:
        kfree(self.k, data)

    def _type1_ioctl(self, data: Any, cmd: str, arg: int) -> int:
        if cmd == VFIO_CHECK_EXTENSION:
            return 1 if arg == VFIO_TYPE1v2_IOMMU else 0
        return -ENOTTY

    def _check_loaded(self, what: str) -> None:
        if not self.vfio.is_loaded():
            raise ModelUsageError(
                f"{what}: the vfio module is unloaded (vfio_cleanup() ran); a module that uses vfio "
                "cannot be loaded without it"
            )

    @_kernel_entry
    def register_type1(self) -> int:
        """Load the type1 IOMMU driver (vfio_register_iommu_driver): 0 or -errno."""
        self._check_loaded("register_type1()")
        ret = self.vfio.vfio_register_iommu_driver(self.type1_ops)
        self.type1_registered = ret == 0
        return ret

    # -- hardware ------------------------------------------------------------------------------------

    @_kernel_entry
    def add_group(self, name: str) -> IommuGroup:
        """An iommu group, as the IOMMU driver creates one at probe: the platform owns its
        allocation reference until teardown.  Names are the platform's own; a second group
        of one name is refused."""
        if name in self.groups:
            raise ModelUsageError(f"add_group({name!r}): the platform already has an iommu group {name!r}")
        g = iommu_group_alloc(self.k)
        if IS_ERR(g):
            raise ModelUsageError(f"iommu_group_alloc failed for {name}: {g!r}")
        self.groups[name] = g
        return g  # type: ignore[no-any-return]

    @_kernel_entry
    def add_device(
        self, name: str, group: str | None = None, *, iommu: bool = True, hdr_type: int = 0
    ) -> Device:
        """A PCI device (in iommu group ``group``), or with ``iommu=False`` a device on a bus
        with no IOMMU (what no-IOMMU mode is for).  A name already in use is refused by the
        kernel (-EEXIST from device_add); an unknown group by the platform."""
        if group is not None and group not in self.groups:
            raise ModelUsageError(
                f"add_device({name!r}, {group!r}): no iommu group {group!r} on this platform "
                f"(groups: {', '.join(self.groups) or 'none'})"
            )
        bus = self.pci if iommu else self.platform
        dev = bus_add_device(self.k, bus, name, is_pci=iommu, hdr_type=hdr_type)
        if IS_ERR(dev):
            raise ModelUsageError(f"could not add device {name}: {errno_name(dev.err)} from the kernel")
        self.devices[name] = dev
        if group is not None:
            ret = iommu_group_add_device(self.groups[group], dev)
            if ret:
                raise ModelUsageError(f"iommu_group_add_device({group}, {name}) failed: {ret}")
        return dev

    def dev(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise ModelUsageError(
                f"no device {name!r} on this platform (devices: {', '.join(self.devices) or 'none'})"
            ) from None

    @_kernel_entry
    def bind(self, dev: str, driver: str = "vfio-pci") -> int:
        """Bind ``driver`` to device ``dev`` (what writing to sysfs bind does): 0 or -errno."""
        drv = self.drivers.get(driver)
        if drv is None:
            raise ModelUsageError(f"no driver {driver!r} (drivers: {', '.join(self.drivers)})")
        return device_driver_attach(drv, self.dev(dev))

    @_kernel_entry
    def unbind(self, dev: str) -> None:
        device_release_driver(self.dev(dev))

    @_kernel_entry
    def remove_device(self, name: str) -> None:
        dev = self.dev(name)
        del self.devices[name]
        bus_remove_device(dev)

    # -- user space: descriptors -----------------------------------------------------------------------

    def fd(self, f: File | int) -> int:
        """The descriptor a handle stands for: the one its File was opened at, or the int
        itself.  A File this process never opened, or whose descriptor was closed and now
        names another file, is refused (in C that would silently use the other file)."""
        if isinstance(f, bool) or not isinstance(f, (File, int)):
            raise ModelUsageError(f"{f!r} is not a file or a descriptor of this process")
        if isinstance(f, int):
            return f
        fd = self._fds.get(f)
        if fd is None:
            raise ModelUsageError(f"{f.name} is not a descriptor of this process (it was not opened here)")
        now = current_files(self.k).lookup_fd_raw(fd)
        if now is not None and now is not f:
            raise ModelUsageError(
                f"{f.name} was opened at descriptor {fd}, which was closed and now names {now.name}: "
                "a closed handle must not be used again"
            )
        return fd

    def _install(self, f: File, fd: int) -> File:
        self._fds[f] = fd
        self.files.append(f)
        return f

    def _open_inode(self, inode: Inode, name: str) -> File | int:
        """open(2) of a node: reserve a descriptor, open, install; the File or -errno."""
        k = self.k
        fd = get_unused_fd_flags(k, 0)
        if fd < 0:
            return fd
        f = vfs_open_inode(k, inode, name=name)
        if not isinstance(f, File):
            put_unused_fd(k, fd)
            return f
        fd_install(k, fd, f)
        return self._install(f, fd)

    @_kernel_entry
    def close(self, f: File | int) -> int:
        """close(2) of the handle's descriptor: 0, or -EBADF when it names nothing (closed
        already, or never a descriptor: a negative errno given back, say).  The file is
        released by its last reference: a dup or an ioctl in flight keeps it."""
        return close_fd(self.k, self.fd(f))

    @_kernel_entry
    def dup(self, f: File | int) -> int:
        """dup(2): a second descriptor for the same file (an int), or -EBADF / -EMFILE."""
        return ksys_dup(self.k, self.fd(f))

    @_kernel_entry
    def ioctl(self, f: File | int, cmd: str, arg: Any = 0) -> Any:
        """ioctl(2) on the handle's descriptor, under fdget.  A File given as the argument
        stands for its descriptor (VFIO_GROUP_SET_CONTAINER's container fd).
        VFIO_GROUP_GET_DEVICE_FD returns the device's File (the new descriptor's handle)."""
        fd = self.fd(f)
        if isinstance(arg, File):
            arg = self.fd(arg)
        ret = ksys_ioctl(self.k, fd, cmd, arg)
        if cmd == VFIO_GROUP_GET_DEVICE_FD and isinstance(ret, int) and ret >= 0:
            dev_file = current_files(self.k).lookup_fd_raw(ret)
            if dev_file is None:
                raise ModelUsageError(
                    f"device descriptor {ret} was closed before VFIO_GROUP_GET_DEVICE_FD returned it"
                )
            return self._install(dev_file, ret)
        return ret

    # -- user space: opening -----------------------------------------------------------------------------

    def _vfio_node(self, dev: str) -> Device | None:
        """The devtmpfs node /dev/vfio/N (or noiommu-N) of device ``dev``'s group, or None.
        User space knows the path from sysfs (the device's iommu_group link); no vfio lock
        is taken to find it, as in the kernel."""
        d = self.dev(dev)
        ig = d.iommu_group
        if ig is None:
            return None
        gid = iommu_group_id(ig)
        wanted = (f"{gid}", f"noiommu-{gid}")
        nodes: dict[int, Device] = self.k.state.get("devtmpfs", {})
        for node in list(nodes.values()):
            cls = node.class_
            if cls is not None and cls.name == "vfio" and node.name in wanted:
                return node
        return None

    def group_devt(self, dev: str) -> int:
        """The dev_t of /dev/vfio/N for the group of device ``dev`` (as `ls -l` shows it)."""
        node = self._vfio_node(dev)
        if node is None:
            raise ModelUsageError(f"device {dev!r} has no vfio group now (no /dev/vfio node for its iommu group)")
        return int(node.devt)

    @_kernel_entry
    def open_devt(self, devt: int) -> File | int:
        """open(2) of a node for dev_t ``devt`` made with mknod: one inode per number, which
        caches the cdev its first successful open found (i_cdev), as a kept node does.  The
        File, or the negative errno."""
        if isinstance(devt, bool) or not isinstance(devt, int):
            raise ModelUsageError(f"open_devt({devt!r}): a dev_t is an int (see group_devt)")
        inode = self._mknod_inodes.get(devt)
        if inode is None:
            inode = self._mknod_inodes.setdefault(devt, Inode(self.k, devt, f"/dev/vfio/{MINOR(devt)}"))
        return self._open_inode(inode, f"/dev/vfio/{MINOR(devt)}")

    @_kernel_entry
    def open_group(self, dev: str) -> File | int:
        """Open /dev/vfio/N of device ``dev``'s group: the File or -errno; -ENOENT when there
        is no such node.  Opening the same node again goes through its inode's cached cdev."""
        node = self._vfio_node(dev)
        if node is None:
            return -ENOENT
        path = f"/dev/vfio/{node.name}"
        inode = self._node_inodes.get(node)
        if inode is None:
            inode = self._node_inodes.setdefault(node, Inode(self.k, node.devt, path))
        return self._open_inode(inode, path)

    @_kernel_entry
    def open_container(self) -> File | int:
        """open(2) of /dev/vfio/vfio (a misc device: its fops are vfio_fops); -ENOENT once
        vfio is unloaded (the misc device, and its node, went with it)."""
        if not self.vfio.is_loaded():
            return -ENOENT
        inode = Inode(self.k, MKDEV(10, 196), "/dev/vfio/vfio")
        inode.i_fop = self.vfio.vfio_fops
        return self._open_inode(inode, "/dev/vfio/vfio")

    def set_container(self, group_file: File | int, container_file: File | int) -> int:
        return int(self.ioctl(group_file, VFIO_GROUP_SET_CONTAINER, container_file))

    def unset_container(self, group_file: File | int) -> int:
        return int(self.ioctl(group_file, VFIO_GROUP_UNSET_CONTAINER))

    def set_iommu(self, container_file: File | int, noiommu: bool = False) -> int:
        return int(
            self.ioctl(container_file, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU if noiommu else VFIO_TYPE1v2_IOMMU)
        )

    def open_device(self, group_file: File | int, dev: str) -> File | int:
        """VFIO_GROUP_GET_DEVICE_FD for device ``dev`` on the group's descriptor: the
        device's File, or the negative errno."""
        res: File | int = self.ioctl(group_file, VFIO_GROUP_GET_DEVICE_FD, dev)
        return res

    def use_group(self, dev: str, *, set_iommu: bool = True) -> tuple[File, File]:
        """Open the group of ``dev`` and a container, put the group in it (container_users
        becomes 1) and pick the IOMMU: the group is "in use".  Errors raise."""
        g = self.open_group(dev)
        if not isinstance(g, File):
            raise ModelUsageError(f"open of the group of {dev} failed: {g}")
        c = self.open_container()
        if not isinstance(c, File):
            raise ModelUsageError(f"open of /dev/vfio/vfio failed: {c}")
        ret = self.set_container(g, c)
        if ret:
            raise ModelUsageError(f"VFIO_GROUP_SET_CONTAINER failed: {ret}")
        if set_iommu:
            if not self.type1_registered:
                ret = self.register_type1()
                if ret:
                    raise ModelUsageError(f"registering the type1 IOMMU driver failed: {ret}")
            ret = self.set_iommu(c, noiommu=self.vfio.noiommu and not self.dev(dev).is_pci)
            if ret:
                raise ModelUsageError(f"VFIO_SET_IOMMU failed: {ret}")
        return g, c

    # -- user space: the device request --------------------------------------------------------------

    def request_eventfd(self, device_file: File | int) -> EventfdCtx | int:
        """Give the driver an eventfd to signal when the kernel wants the device back
        (VFIO_DEVICE_SET_IRQS on the device fd): the eventfd, or the ioctl's -errno."""
        ctx = eventfd_ctx_create(self.k, f"request eventfd of descriptor {self.fd(device_file)}")
        ret = self.ioctl(device_file, VFIO_DEVICE_SET_IRQS, ctx)
        return ctx if ret == 0 else int(ret)

    @_kernel_entry
    def wait_request(self, ctx: EventfdCtx) -> int:
        """Block in read(2) of the request eventfd until the driver signals it; the count."""
        if not isinstance(ctx, EventfdCtx):
            raise ModelUsageError(f"wait_request({ctx!r}): expected the eventfd request_eventfd returned")
        return eventfd_read(ctx)

    # -- KVM, an external user -----------------------------------------------------------------------

    @_kernel_entry
    def external_user_get(self, group_file: File | int) -> Any:
        """KVM_DEV_VFIO_GROUP_ADD: KVM takes the descriptor (fdget) and calls
        vfio_group_get_external_user() on its file: the group, or an ERR_PTR value
        (ERR_PTR(-EBADF) when the descriptor names nothing)."""
        k = self.k
        f = fdget(k, self.fd(group_file))
        if f.file is None:
            return ERR_PTR(-EBADF)
        g = self.vfio.vfio_group_get_external_user(f.file)
        fdput(f)
        if not IS_ERR(g):
            self.external.append(g)
        return g

    @_kernel_entry
    def external_user_put(self, group: Any) -> None:
        """KVM lets go of an external user it took (vfio_group_put_external_user)."""
        for i, g in enumerate(self.external):
            if g is group:
                del self.external[i]
                break
        else:
            raise ModelUsageError(
                f"external_user_put({group!r}): not an external user KVM holds (each is put once)"
            )
        self.vfio.vfio_group_put_external_user(group)

    @_kernel_entry
    def set_kvm(self, group: Any, kvm: Kvm | None) -> None:
        """KVM attaches a VM to (or, with None, detaches it from) a group it holds as an
        external user: vfio_group_set_kvm()."""
        if not any(g is group for g in self.external):
            raise ModelUsageError(f"set_kvm({group!r}): KVM calls it only on a group it holds as an external user")
        self.vfio.vfio_group_set_kvm(group, kvm)

    # -- in-kernel users of a device -------------------------------------------------------------------

    @_kernel_entry
    def device_get_from_dev(self, dev: str) -> VfioDevice | None:
        """Another subsystem takes a transient reference on ``dev``'s vfio_device
        (vfio_device_get_from_dev): the device, or None.  Put it with device_put."""
        return self.vfio.vfio_device_get_from_dev(self.dev(dev))

    @_kernel_entry
    def device_put(self, device: VfioDevice) -> None:
        """Drop a reference device_get_from_dev took (vfio_device_put)."""
        if not isinstance(device, VfioDevice):
            raise ModelUsageError(f"device_put({device!r}): expected the vfio_device device_get_from_dev returned")
        self.vfio.vfio_device_put(device)

    def _notifier_user(self, dev: str) -> GroupNotifierUser:
        self.dev(dev)
        user = self.notifier_users.get(dev)
        if user is None:
            user = self.notifier_users[dev] = GroupNotifierUser(dev)
        return user

    @_kernel_entry
    def register_group_notifier(self, dev: str, events: int = VFIO_GROUP_NOTIFY_SET_KVM) -> int:
        """A user of device ``dev`` (a vendor driver) registers for its group's
        notifications: vfio_register_notifier(VFIO_GROUP_NOTIFY).  0 or -errno."""
        user = self._notifier_user(dev)
        ret = self.vfio.vfio_register_notifier(self.dev(dev), VFIO_GROUP_NOTIFY, EventMask(events), user.nb)
        if ret == 0:
            user.registered = True
        return ret

    @_kernel_entry
    def unregister_group_notifier(self, dev: str) -> int:
        """That user unregisters: vfio_unregister_notifier(VFIO_GROUP_NOTIFY).  0 or -errno
        (-EINVAL once nobody uses the group's container, -ENODEV once the group is gone)."""
        user = self._notifier_user(dev)
        ret = self.vfio.vfio_unregister_notifier(self.dev(dev), VFIO_GROUP_NOTIFY, user.nb)
        if ret == 0:
            user.registered = False
        return ret

    def heard(self, dev: str) -> list[tuple[int, Any]]:
        """What the group notifier user of ``dev`` was told, in order: (event, data)."""
        return list(self._notifier_user(dev).heard)

    @_kernel_entry
    def pin_pages(self, dev: str, npage: int = 1) -> int:
        """A vendor driver pins ``npage`` pages for ``dev`` (vfio_pin_pages): the count or -errno."""
        user_pfn = list(range(npage))
        phys_pfn = [0] * npage
        return self.vfio.vfio_pin_pages(self.dev(dev), user_pfn, npage, 0, phys_pfn)

    @_kernel_entry
    def unpin_pages(self, dev: str, npage: int = 1) -> int:
        return self.vfio.vfio_unpin_pages(self.dev(dev), list(range(npage)), npage)

    # -- teardown ------------------------------------------------------------------------------------------

    @_kernel_entry
    def teardown(self, *, cleanup: bool = True) -> None:
        """Unregister the notifier users, put KVM's external users, close every descriptor,
        unbind, remove devices, drop the groups, flush work, and unload vfio: afterwards
        anything still allocated is a leak.  Refused after an oops: a kernel that hit a
        BUG or a use-after-free is not in a state whose teardown means anything."""
        k = self.k
        if k.oopsed:
            first = k.faults[0].message.splitlines()[0] if k.faults else "?"
            raise ModelUsageError(f"teardown() after the kernel oopsed ({first}): nothing can be torn down")
        for user in list(self.notifier_users.values()):
            if user.registered and user.dev in self.devices:
                self.unregister_group_notifier(user.dev)
        for g in list(self.external):
            self.external_user_put(g)
        exit_files(k)
        self.files.clear()
        for dev in list(self.devices.values()):
            if dev.driver is not None:
                device_release_driver(dev)
        for name in list(self.devices):
            self.remove_device(name)
        for name in list(self.groups):
            iommu_group_put(self.groups.pop(name))
        flush_scheduled_work(k)
        if self.type1_registered:
            self.vfio.vfio_unregister_iommu_driver(self.type1_ops)
            self.type1_registered = False
        if cleanup:
            self.vfio.vfio_cleanup()


def _groups_of(v: VfioBase) -> list[Any]:
    """Model helper: the groups on vfio.group_list (no lock, no scheduling point)."""
    from ..kernel.shared import ListHead

    head: ListHead = v.vfio.group_list
    out = []
    node = head.next
    while node is not head and node is not None:
        out.append(node.container)
        node = node.next
    return out


def _devt_of(v: VfioBase, group: Any) -> int:
    if hasattr(group, "minor"):
        return MKDEV(MAJOR(v.vfio.group_devt), group.minor)
    return int(group.dev.devt)


Thunk = Callable[[], object]
__all__ = [
    "VFIO_DEVICE_SET_IRQS",
    "FileOperations",
    "GroupNotifierUser",
    "Kvm",
    "Platform",
    "VfioPciDevice",
]
