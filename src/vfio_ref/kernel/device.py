"""kobjects, struct device and struct class (lib/kobject.c, drivers/base/core.c, class.c).

Lifetimes, as in the kernel:

* ``device_initialize`` gives the device's kobject its first reference; from then on only
  ``put_device`` may free it: the last put calls ``dev.release`` (or the class's
  ``dev_release``), and a device with neither WARNs as the kernel does.
* ``device_add`` names the device in sysfs (a name must be unique inside its class, and a
  device with no class in its parent's directory, /sys/devices for one with no parent: a
  clash is -EEXIST), takes a reference on the parent, and creates the /dev node when the
  device has a dev_t.  On failure the caller still owns the initialize reference.
* ``device_del`` undoes device_add; it drops no reference of the caller's.
* ``device_create`` / ``device_destroy`` wrap it all for a class device with a kfree release.

A kobject that embeds in a bigger struct (a device inside a vfio_group, a cdev's kobject)
points at its container, so ``container_of`` works and the memory is the container's.
Costs: every operation O(1) (class lookups are dict lookups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import Kernel, model_site
from .errno import EEXIST, EINVAL, ENODEV, ENOMEM, ERR_PTR, IS_ERR
from .kref import Kref
from .mutex import Mutex
from .sched import note_created
from .slab import KStruct, kfree, kzalloc

MINORBITS = 20
MINORMASK = (1 << MINORBITS) - 1


def MAJOR(dev: int) -> int:
    return dev >> MINORBITS


def MINOR(dev: int) -> int:
    return dev & MINORMASK


def MKDEV(ma: int, mi: int) -> int:
    return (ma << MINORBITS) | mi


# --------------------------------------------------------------------------------------
# kobject


class Kobject:
    """struct kobject: a name, a parent and a kref; ``release`` runs at the last put."""

    __slots__ = (
        "_poison", "container", "kernel", "kref", "name", "parent", "release",
        "state_in_sysfs", "state_initialized",
    )
    _embedded = ("kref",)

    def __init__(self, kernel: Kernel, container: Any = None) -> None:
        self.kernel = kernel
        self.container = container
        self.kref = Kref(kernel)
        self.kref.container = self
        self.name: str | None = None
        self.parent: Kobject | None = None
        self.release: Callable[[Kobject], None] | None = None
        self.state_initialized = False
        self.state_in_sysfs = False
        note_created(kernel.sched, self)

    def __repr__(self) -> str:
        return f"<kobject {self.name} kref={self.kref.refcount.refs}>"


def kobject_init(kobj: Kobject, release: Callable[[Kobject], None] | None) -> None:
    kobj.kref.kref_init()
    kobj.release = release
    kobj.state_initialized = True


def kobject_get(kobj: Kobject | None) -> Kobject | None:
    if kobj is not None:
        kobj.kref.kref_get()
    return kobj


def kobject_get_unless_zero(kobj: Kobject | None) -> Kobject | None:
    if kobj is None:
        return None
    return kobj if kobj.kref.kref_get_unless_zero() else None


def _kobject_release(kref: Kref) -> None:
    kobj: Kobject = kref.container
    # kobject_cleanup (5.8+): a kobject still in sysfs is taken out first, but its parent is
    # only dropped after the release has run.
    parent = None
    if kobj.state_in_sysfs:
        parent = kobj.parent
        kobj.state_in_sysfs = False
        kobj.parent = None
    release = kobj.release
    if release is not None:
        release(kobj)
    kobject_put(parent)


def kobject_put(kobj: Kobject | None) -> None:
    if kobj is not None:
        kobj.kref.kref_put(_kobject_release)


def kobject_add(kobj: Kobject, parent: Kobject | None) -> None:
    kobj.parent = kobject_get(parent)
    kobj.state_in_sysfs = True


def kobject_del(kobj: Kobject) -> None:
    parent = kobj.parent
    kobj.state_in_sysfs = False
    kobj.parent = None
    kobject_put(parent)


# --------------------------------------------------------------------------------------
# struct class


class Class(KStruct):
    """struct class: a name, its devices by name and by dev_t, an optional dev_release."""

    def __init__(self, kernel: Kernel, name: str = "") -> None:
        self.kernel = kernel
        self.name = name
        self.devices: dict[str, Device] = {}
        self.by_devt: dict[int, Device] = {}
        self.dev_release: Callable[[Device], None] | None = None
        self.devnode: Callable[[Device], str] | None = None

    def leak_detail(self) -> str:
        return f"class {self.name}"


def class_create(k: Kernel, name: str) -> Any:
    """A new class, or ERR_PTR(-ENOMEM) / ERR_PTR(-EEXIST) for a name already registered."""
    classes: dict[str, Class] = k.state.setdefault("classes", {})
    if name in classes:
        return ERR_PTR(-EEXIST)
    cls = kzalloc(k, Class, name)
    if cls is None:
        return ERR_PTR(-ENOMEM)
    classes[name] = cls
    return cls


def class_destroy(cls: Class | None) -> None:
    if cls is None or IS_ERR(cls):
        return
    k = cls.kernel
    k.state.get("classes", {}).pop(cls.name, None)
    kfree(k, cls)


# --------------------------------------------------------------------------------------
# struct device


class Device(KStruct):
    """struct device (the fields the model needs).  ``container`` is set when embedded."""

    _embedded = ("kobj", "mutex")

    def __init__(self, kernel: Kernel, container: Any = None) -> None:
        self.kernel = kernel
        self.container = container
        self.kobj = Kobject(kernel, self)
        self.parent: Device | None = None
        self.devt = 0
        self.class_: Class | None = None
        self.release: Callable[[Device], None] | None = None
        self.driver_data: Any = None
        self.driver: Any = None  # struct device_driver *, set by the driver core
        self.bus: Any = None
        self.iommu_group: Any = None
        self.mutex = Mutex(kernel, "&dev->mutex")  # device_lock()
        self.hdr_type = 0  # PCI header type; 0 is PCI_HEADER_TYPE_NORMAL
        self.is_pci = False
        self.added = False

    @property
    def name(self) -> str | None:
        return self.kobj.name

    def leak_detail(self) -> str:
        return f"device {self.kobj.name!r} kref={self.kobj.kref.refcount.refs}"

    def __repr__(self) -> str:
        return f"<device {self.kobj.name}>"


def dev_name(dev: Device) -> str:
    return dev.kobj.name or ""


def dev_set_name(dev: Device, name: str) -> int:
    """Name the device: 0, or -ENOMEM (an injectable failure, as the kstrdup it does)."""
    k = dev.kernel
    fn, _ = model_site(2)
    if k.fault_inject.should_fail("dev_set_name", fn, name):
        return -ENOMEM
    dev.kobj.name = name
    return 0


def _device_release(kobj: Kobject) -> None:
    dev: Device = kobj.container
    if dev.release is not None:
        dev.release(dev)
    elif dev.class_ is not None and dev.class_.dev_release is not None:
        dev.class_.dev_release(dev)
    else:
        _, site = model_site(2)
        dev.kernel.record_warn(
            "device_release",
            f"Device '{dev_name(dev)}' does not have a release() function, it is broken and "
            "must be fixed. See Documentation/core-api/kobject.rst.",
            "WARN",
            site,
        )


def device_initialize(dev: Device) -> None:
    kobject_init(dev.kobj, _device_release)


def get_device(dev: Device | None) -> Device | None:
    if dev is not None:
        kobject_get(dev.kobj)
    return dev


def put_device(dev: Device | None) -> None:
    if dev is not None:
        kobject_put(dev.kobj)


def _sysfs_dirs(k: Kernel) -> dict[tuple[int, str], Device]:
    """The sysfs directories of class-less devices, by (parent, name): two devices of one
    parent (or two with no parent, in /sys/devices) cannot share a name."""
    dirs: dict[tuple[int, str], Device] = k.state.setdefault("sysfs_devices", {})
    return dirs


def device_add(dev: Device) -> int:
    """Make the device visible: sysfs name, parent references, /dev node for a dev_t.

    As the kernel, it pins the parent twice (get_device(parent), then kobject_add's parent
    reference); device_del drops both.  On failure the caller still owns its reference.
    """
    k = dev.kernel
    dev = get_device(dev)  # type: ignore[assignment]
    name = dev_name(dev)
    if not name:
        put_device(dev)
        return -EINVAL
    fn, _ = model_site(2)
    parent = get_device(dev.parent)
    if k.fault_inject.should_fail("device_add", fn, name):
        put_device(parent)
        put_device(dev)
        return -ENOMEM
    cls = dev.class_
    if cls is not None and name in cls.devices:
        k.printk(f"sysfs: cannot create duplicate filename '/class/{cls.name}/{name}'")
        put_device(parent)
        put_device(dev)
        return -EEXIST
    dirs = _sysfs_dirs(k)
    key = (id(parent), name)
    if cls is None and key in dirs:
        where = f"/devices/{dev_name(parent)}/{name}" if parent is not None else f"/devices/{name}"
        k.printk(f"sysfs: cannot create duplicate filename '{where}'")
        put_device(parent)
        put_device(dev)
        return -EEXIST
    kobject_add(dev.kobj, parent.kobj if parent is not None else None)
    if cls is None:
        dirs[key] = dev
    if cls is not None:
        cls.devices[name] = dev
        if dev.devt:
            cls.by_devt.setdefault(dev.devt, dev)
    if MAJOR(dev.devt):
        nodes: dict[int, Device] = k.state.setdefault("devtmpfs", {})
        nodes[dev.devt] = dev
    dev.added = True
    put_device(dev)
    return 0


def device_del(dev: Device) -> None:
    """Remove the device from sysfs and /dev; the caller's references are untouched."""
    k = dev.kernel
    cls = dev.class_
    name = dev_name(dev)
    parent = dev.parent
    if dev.devt:
        nodes: dict[int, Device] = k.state.setdefault("devtmpfs", {})
        if nodes.get(dev.devt) is dev:
            del nodes[dev.devt]
    if cls is not None:
        if cls.devices.get(name) is dev:
            del cls.devices[name]
        if dev.devt and cls.by_devt.get(dev.devt) is dev:
            del cls.by_devt[dev.devt]
    else:
        dirs = _sysfs_dirs(k)
        if dirs.get((id(parent), name)) is dev:
            del dirs[(id(parent), name)]
    was_added = dev.added
    dev.added = False
    if dev.kobj.state_in_sysfs:
        kobject_del(dev.kobj)
    if was_added:
        put_device(parent)


def device_register(dev: Device) -> int:
    device_initialize(dev)
    return device_add(dev)


def device_unregister(dev: Device) -> None:
    device_del(dev)
    put_device(dev)


def _device_create_release(dev: Device) -> None:
    kfree(dev.kernel, dev)


def device_create(
    cls: Class | None, parent: Device | None, devt: int, drvdata: Any, name: str
) -> Any:
    """A class device with a dev_t, named ``name`` (already formatted), or an ERR_PTR."""
    if cls is None or IS_ERR(cls):
        return ERR_PTR(-ENODEV)
    k = cls.kernel
    dev = kzalloc(k, Device)
    if dev is None:
        return ERR_PTR(-ENOMEM)
    device_initialize(dev)
    dev.devt = devt
    dev.class_ = cls
    dev.parent = parent
    dev.release = _device_create_release
    dev.driver_data = drvdata
    err = dev_set_name(dev, name)
    if err == 0:
        err = device_add(dev)
    if err:
        put_device(dev)
        return ERR_PTR(err)
    return dev


def class_find_device_by_devt(cls: Class, devt: int) -> Device | None:
    """The class's device with this dev_t, with a reference taken, or None."""
    return get_device(cls.by_devt.get(devt))


def device_destroy(cls: Class, devt: int) -> None:
    dev = class_find_device_by_devt(cls, devt)
    if dev is not None:
        put_device(dev)
        device_unregister(dev)


def devtmpfs_lookup(k: Kernel, devt: int) -> Device | None:
    """The device whose /dev node has this dev_t, if one exists now."""
    nodes: dict[int, Device] = k.state.get("devtmpfs", {})
    return nodes.get(devt)


def device_lock(dev: Device) -> None:
    dev.mutex.mutex_lock()


def device_unlock(dev: Device) -> None:
    dev.mutex.mutex_unlock()
