"""A small machine to run the model on, and the user-space side of VFIO.

:class:`Platform` builds what the scenarios need around a loaded vfio level: a PCI bus with
an IOMMU (and a platform bus without one, for no-IOMMU devices), iommu groups, devices, a
vfio-pci-like driver whose probe registers a vfio_device and whose remove unregisters it,
a non-vfio driver, pci-stub, and an IOMMU driver for containers (a type1 stand-in).  Its
user-space calls open and close group files, set a container, and act as an external user
(KVM); they return the kernel's results (a File or a negative errno, an ERR_PTR value),
never raise for a kernel error.

Everything here is "outside" vfio.c: driver glue and user space.  The teardown takes the
whole platform down in a fixed order so that the leak check sees only real leaks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..kernel.cdev import File, FileOperations, Inode, vfs_ioctl, vfs_open_chrdev, vfs_open_inode
from ..kernel.core import Kernel, ModelUsageError
from ..kernel.device import MAJOR, MINOR, MKDEV, Device
from ..kernel.driver import (
    Bus,
    DeviceDriver,
    bus_add_device,
    bus_remove_device,
    device_driver_attach,
    device_release_driver,
)
from ..kernel.errno import ENOENT, ENOMEM, ERR_PTR, IS_ERR
from ..kernel.iommu import IommuGroup, iommu_group_add_device, iommu_group_alloc, iommu_group_put
from ..kernel.mutex import mutex_lock, mutex_unlock
from ..kernel.slab import KStruct, kfree, kzalloc
from ..kernel.workqueue import flush_scheduled_work
from .base import (
    VFIO_CHECK_EXTENSION,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_NOIOMMU_IOMMU,
    VFIO_SET_IOMMU,
    VFIO_TYPE1v2_IOMMU,
    VfioBase,
    VfioDevice,
    VfioIommuDriverOps,
)


class VfioPciDevice(KStruct):
    """A vfio-pci-like driver's private struct: it embeds its vfio_device."""

    _embedded = ("vdev",)

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.vdev = VfioDevice(k)
        self.vdev.container = self  # container_of(vdev) reaches the driver's struct
        self.pdev: Device | None = None


class Type1Data(KStruct):
    """What the type1 stand-in's ->open returns (its per-container state)."""

    def __init__(self, k: Kernel) -> None:
        self.kernel = k


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
        self.files: list[File] = []
        self.external: list[Any] = []
        self.vfio_pci = DeviceDriver("vfio-pci", probe=self.vfio_pci_probe, remove=self.vfio_pci_remove)
        self.foreign = DeviceDriver("e1000e", probe=lambda dev: 0, remove=lambda dev: None)
        self.pci_stub = DeviceDriver("pci-stub", probe=lambda dev: 0, remove=lambda dev: None)
        self.drivers = {d.name: d for d in (self.vfio_pci, self.foreign, self.pci_stub)}
        self.type1_ops = VfioIommuDriverOps(
            "vfio-iommu-type1",
            open=self._type1_open,
            release=self._type1_release,
            ioctl=self._type1_ioctl,
            attach_group=lambda data, iommu_group, type: 0,
            detach_group=lambda data, iommu_group: None,
        )
        self.type1_registered = False

    # -- the vfio-pci-like driver ----------------------------------------------------------------

    def vfio_pci_probe(self, pdev: Device) -> int:
        v = self.vfio
        vdev = kzalloc(self.k, VfioPciDevice)
        if vdev is None:
            return -ENOMEM
        vdev.pdev = pdev
        v.vfio_init_group_dev(vdev.vdev, pdev, None)
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
        return -25

    def register_type1(self) -> int:
        ret = self.vfio.vfio_register_iommu_driver(self.type1_ops)
        self.type1_registered = ret == 0
        return ret

    # -- hardware ------------------------------------------------------------------------------------

    def add_group(self, name: str) -> IommuGroup:
        """An iommu group, as the IOMMU driver creates one at probe: the platform owns its
        allocation reference until teardown."""
        g = iommu_group_alloc(self.k)
        if IS_ERR(g):
            raise ModelUsageError(f"iommu_group_alloc failed for {name}: {g!r}")
        self.groups[name] = g
        return g  # type: ignore[no-any-return]

    def add_device(
        self, name: str, group: str | None = None, *, iommu: bool = True, hdr_type: int = 0
    ) -> Device:
        """A PCI device (in iommu group ``group``), or with ``iommu=False`` a device on a bus
        with no IOMMU (what no-IOMMU mode is for)."""
        bus = self.pci if iommu else self.platform
        dev = bus_add_device(self.k, bus, name, is_pci=iommu, hdr_type=hdr_type)
        if IS_ERR(dev):
            raise ModelUsageError(f"could not add device {name}: {dev!r}")
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

    def bind(self, dev: str, driver: str = "vfio-pci") -> int:
        """Bind ``driver`` to device ``dev`` (what writing to sysfs bind does): 0 or -errno."""
        drv = self.drivers.get(driver)
        if drv is None:
            raise ModelUsageError(f"no driver {driver!r} (drivers: {', '.join(self.drivers)})")
        return device_driver_attach(drv, self.dev(dev))

    def unbind(self, dev: str) -> None:
        device_release_driver(self.dev(dev))

    def remove_device(self, name: str) -> None:
        dev = self.devices.pop(name)
        bus_remove_device(dev)

    # -- user space ---------------------------------------------------------------------------------------

    def group_devt(self, dev: str) -> int:
        """The dev_t of /dev/vfio/N for the group of device ``dev`` (as `ls -l` shows it)."""
        v = self.vfio
        d = self.dev(dev)
        # User space reads this from sysfs; the model walks the group list under its lock.
        mutex_lock(v.vfio.group_lock)
        try:
            for group in _groups_of(v):
                if group.iommu_group is d.iommu_group:
                    return _devt_of(v, group)
        finally:
            mutex_unlock(v.vfio.group_lock)
        raise ModelUsageError(f"device {dev!r} has no vfio group now")

    def open_devt(self, devt: int) -> File | int:
        """open(2) of /dev/vfio/N by dev_t: the File, or the negative errno."""
        f = vfs_open_chrdev(self.k, devt, name=f"/dev/vfio/{MINOR(devt)}")
        if isinstance(f, File):
            self.files.append(f)
        return f

    def open_group(self, dev: str) -> File | int:
        """Open the group file of device ``dev``'s group; -ENOENT when it has none (there is
        no /dev/vfio/N to open)."""
        try:
            devt = self.group_devt(dev)
        except ModelUsageError:
            return -ENOENT
        return self.open_devt(devt)

    def open_container(self) -> File | int:
        """open(2) of /dev/vfio/vfio (a misc device: its fops are vfio_fops)."""
        inode = Inode(self.k, MKDEV(10, 196), "/dev/vfio/vfio")
        inode.i_fop = self.vfio.vfio_fops
        f = vfs_open_inode(self.k, inode, name="/dev/vfio/vfio")
        if isinstance(f, File):
            self.files.append(f)
        return f

    def ioctl(self, f: File, cmd: str, arg: Any = 0) -> Any:
        return vfs_ioctl(f, cmd, arg)

    def set_container(self, group_file: File, container_file: File) -> int:
        return int(self.ioctl(group_file, VFIO_GROUP_SET_CONTAINER, container_file))

    def unset_container(self, group_file: File) -> int:
        return int(self.ioctl(group_file, VFIO_GROUP_UNSET_CONTAINER))

    def set_iommu(self, container_file: File, noiommu: bool = False) -> int:
        return int(
            self.ioctl(container_file, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU if noiommu else VFIO_TYPE1v2_IOMMU)
        )

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

    def close(self, f: File) -> None:
        if f in self.files:
            self.files.remove(f)
        f.close()

    def external_user_get(self, group_file: File) -> Any:
        """KVM's vfio_group_get_external_user(): the group, or an ERR_PTR value."""
        g = self.vfio.vfio_group_get_external_user(group_file)
        if not IS_ERR(g):
            self.external.append(g)
        return g

    def external_user_put(self, group: Any) -> None:
        self.external.remove(group)
        self.vfio.vfio_group_put_external_user(group)

    # -- teardown ------------------------------------------------------------------------------------------

    def teardown(self, *, cleanup: bool = True) -> None:
        """Close what is open, unbind, remove devices, drop the groups, flush work, and
        unload vfio: afterwards anything still allocated is a leak."""
        for g in list(self.external):
            self.external_user_put(g)
        for f in list(self.files):
            if not f.closed:
                self.close(f)
        self.files.clear()
        for dev in list(self.devices.values()):
            if dev.driver is not None:
                device_release_driver(dev)
        for name in list(self.devices):
            self.remove_device(name)
        for name in list(self.groups):
            iommu_group_put(self.groups.pop(name))
        flush_scheduled_work(self.k)
        if self.type1_registered:
            self.vfio.vfio_unregister_iommu_driver(self.type1_ops)
            self.type1_registered = False
        if cleanup:
            self.vfio.vfio_cleanup()


def _groups_of(v: VfioBase) -> list[Any]:
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
__all__ = ["FileOperations", "Platform", "VfioPciDevice"]
