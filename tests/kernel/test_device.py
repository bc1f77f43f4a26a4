"""kobjects, struct device and struct class (lib/kobject.c, drivers/base/core.c, class.c), 5.15.

The contracts: device_initialize gives the one reference only put_device may drop; the last
put runs the release exactly once (dev->release, else the class's dev_release, else a WARN);
device_add/device_del make the device visible and invisible without touching the caller's
reference, pinning the parent meanwhile; device_create/device_destroy wrap it all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vfio_ref.kernel import Kernel, KStruct, UseAfterFree, WarnEvent, kfree, kzalloc
from vfio_ref.kernel.device import (
    MAJOR,
    MINOR,
    MINORBITS,
    MINORMASK,
    MKDEV,
    Class,
    Device,
    class_create,
    class_destroy,
    class_find_device_by_devt,
    dev_name,
    dev_set_name,
    device_add,
    device_create,
    device_del,
    device_destroy,
    device_initialize,
    device_register,
    device_unregister,
    devtmpfs_lookup,
    get_device,
    kobject_get_unless_zero,
    put_device,
)
from vfio_ref.kernel.errno import EEXIST, EINVAL, ENODEV, ENOMEM, ERR_PTR, IS_ERR, PTR_ERR
from vfio_ref.kernel.slab import container_of, is_freed

OnlyWarning = Callable[[Kernel, str, str], WarnEvent]  # the conftest fixture

NO_RELEASE = (
    "Device '{}' does not have a release() function, it is broken and must be fixed. "
    "See Documentation/core-api/kobject.rst."
)
UNDERFLOW = "refcount_t: underflow; use-after-free."


class Releases:
    """A device release callback that records the devices it was called for."""

    def __init__(self) -> None:
        self.calls: list[Device] = []

    def __call__(self, dev: Device) -> None:
        self.calls.append(dev)


def refs(dev: Device) -> int:
    return dev.kobj.kref.kref_read()


def new_device(k: Kernel, name: str | None = "dev0", release: Releases | None = None) -> Device:
    dev = Device(k)
    device_initialize(dev)
    dev.release = release if release is not None else Releases()
    if name is not None:
        assert dev_set_name(dev, name) == 0
    return dev


def new_class(k: Kernel, name: str = "cls") -> Class:
    cls = class_create(k, name)
    assert isinstance(cls, Class)
    return cls


# --------------------------------------------------------------------------------------
# dev_t


def test_dev_t_has_a_20_bit_minor() -> None:
    assert (MINORBITS, MINORMASK) == (20, 0xFFFFF)
    devt = MKDEV(254, 7)
    assert devt == 254 * 2**20 + 7
    assert (MAJOR(devt), MINOR(devt)) == (254, 7)
    assert MINOR(MKDEV(1, MINORMASK)) == MINORMASK and MAJOR(MKDEV(1, MINORMASK) + 1) == 2


# --------------------------------------------------------------------------------------
# References and release


def test_device_initialize_gives_one_reference_and_the_last_put_releases_once(k: Kernel) -> None:
    rel = Releases()
    dev = new_device(k, release=rel)
    assert refs(dev) == 1
    assert get_device(dev) is dev
    get_device(dev)
    assert refs(dev) == 3
    put_device(dev)
    put_device(dev)
    assert rel.calls == []
    put_device(dev)
    assert rel.calls == [dev]
    assert refs(dev) == 0
    assert k.warnings == []


def test_a_put_after_the_release_underflows(k: Kernel, only_warning: OnlyWarning) -> None:
    rel = Releases()
    dev = new_device(k, release=rel)
    put_device(dev)
    put_device(dev)  # the release kept the memory, so this is a refcount bug, not a UAF
    only_warning(k, "refcount_warn_saturate", UNDERFLOW)
    assert rel.calls == [dev]


def test_null_is_ignored_by_get_and_put(k: Kernel) -> None:
    assert get_device(None) is None
    put_device(None)
    assert k.warnings == []


def test_a_device_without_release_warns_with_the_kernels_text(k: Kernel, only_warning: OnlyWarning) -> None:
    dev = Device(k)
    device_initialize(dev)
    assert dev_set_name(dev, "orphan") == 0
    put_device(dev)
    only_warning(k, "device_release", NO_RELEASE.format("orphan"))


def test_the_class_dev_release_is_used_when_the_device_has_none(k: Kernel) -> None:
    cls = new_class(k)
    by_class = Releases()
    cls.dev_release = by_class
    plain = Device(k)
    device_initialize(plain)
    plain.class_ = cls
    put_device(plain)
    assert by_class.calls == [plain]
    # dev->release takes precedence over the class's.
    own = Releases()
    dev = new_device(k, release=own)
    dev.class_ = cls
    put_device(dev)
    assert (own.calls, by_class.calls) == ([dev], [plain])
    assert k.warnings == []


def test_kobject_get_unless_zero_refuses_a_released_device(k: Kernel) -> None:
    dev = new_device(k)
    assert kobject_get_unless_zero(dev.kobj) is dev.kobj
    assert refs(dev) == 2
    put_device(dev)
    put_device(dev)
    assert kobject_get_unless_zero(dev.kobj) is None
    assert refs(dev) == 0
    assert k.warnings == []


class Holder(KStruct):
    """A struct embedding a device, freed by the device's release (a vfio_group's shape)."""

    _embedded = ("dev",)

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.dev = Device(kernel, self)


def holder_release(dev: Device) -> None:
    kfree(dev.kernel, container_of(dev, Holder, "dev"))


def test_an_embedded_device_frees_its_container_and_the_device_with_it(k: Kernel) -> None:
    h = kzalloc(k, Holder)
    assert h is not None
    device_initialize(h.dev)
    h.dev.release = holder_release
    dev, kobj = h.dev, h.dev.kobj
    put_device(dev)
    assert is_freed(h) and is_freed(dev) and is_freed(kobj)
    with pytest.raises(UseAfterFree, match=r"read of holder->dev\.kobj \(struct holder\)"):
        put_device(dev)
    assert k.leaks() == []


# --------------------------------------------------------------------------------------
# device_add / device_del


def test_device_add_keeps_only_the_callers_reference(k: Kernel) -> None:
    dev = new_device(k)
    assert device_add(dev) == 0
    assert dev.added and refs(dev) == 1  # its own temporary reference is gone again
    device_del(dev)
    assert not dev.added and refs(dev) == 1  # device_del drops nothing of the caller's


def test_device_add_without_a_name_is_einval_and_the_caller_keeps_its_reference(k: Kernel) -> None:
    rel = Releases()
    dev = new_device(k, name=None, release=rel)
    assert device_add(dev) == -EINVAL
    assert not dev.added and refs(dev) == 1
    put_device(dev)
    assert rel.calls == [dev]


def driver_probe_like(dev: Device) -> int:
    return device_add(dev)


def test_device_add_can_be_made_to_fail_and_the_caller_still_owns_the_device(k: Kernel) -> None:
    rel = Releases()
    dev = new_device(k, release=rel)
    dev.devt = MKDEV(10, 1)
    k.fault_inject.fail("device_add@driver_probe_like")
    assert driver_probe_like(dev) == -ENOMEM
    assert not dev.added and devtmpfs_lookup(k, dev.devt) is None
    assert refs(dev) == 1
    put_device(dev)
    assert rel.calls == [dev]


def test_a_duplicate_name_in_a_class_is_eexist_and_the_caller_keeps_its_reference(k: Kernel) -> None:
    cls = new_class(k)
    first = new_device(k, "vfio0")
    first.class_ = cls
    assert device_add(first) == 0
    rel = Releases()
    second = new_device(k, "vfio0", release=rel)
    second.class_ = cls
    assert device_add(second) == -EEXIST
    assert "sysfs: cannot create duplicate filename '/class/cls/vfio0'" in k.log
    assert refs(second) == 1 and not second.added
    put_device(second)
    assert rel.calls == [second]
    # The first one was not disturbed, and once it is gone the name is free again.
    assert cls.devices == {"vfio0": first}
    device_del(first)
    third = new_device(k, "vfio0")
    third.class_ = cls
    assert device_add(third) == 0


def test_two_class_less_devices_of_one_parent_cannot_share_a_name(k: Kernel) -> None:
    first = new_device(k, "0000:00:01.0")
    assert device_add(first) == 0
    rel = Releases()
    second = new_device(k, "0000:00:01.0", release=rel)
    assert device_add(second) == -EEXIST
    assert "sysfs: cannot create duplicate filename '/devices/0000:00:01.0'" in k.log
    assert refs(second) == 1 and not second.added
    put_device(second)
    assert rel.calls == [second]
    parent = new_device(k, "pci0000:00")
    assert device_add(parent) == 0
    child = new_device(k, "0000:00:01.0")
    child.parent = parent
    assert device_add(child) == 0  # another directory: /devices/pci0000:00/0000:00:01.0
    device_del(first)
    again = new_device(k, "0000:00:01.0")
    assert device_add(again) == 0  # the name is free once the first is gone


def test_the_same_name_in_two_classes_is_fine(k: Kernel) -> None:
    a, b = new_class(k, "a"), new_class(k, "b")
    da, db = new_device(k, "x"), new_device(k, "x")
    da.class_, db.class_ = a, b
    assert device_add(da) == 0
    assert device_add(db) == 0


def test_the_dev_node_exists_only_while_the_device_is_added(k: Kernel) -> None:
    dev = new_device(k)
    dev.devt = MKDEV(10, 3)
    assert devtmpfs_lookup(k, dev.devt) is None
    assert device_add(dev) == 0
    assert devtmpfs_lookup(k, dev.devt) is dev
    device_del(dev)
    assert devtmpfs_lookup(k, dev.devt) is None


def test_device_add_pins_the_parent_until_device_del(k: Kernel) -> None:
    parent_rel = Releases()
    parent = new_device(k, "parent", release=parent_rel)
    assert device_add(parent) == 0
    child = new_device(k, "child")
    child.parent = parent
    before = refs(parent)
    assert device_add(child) == 0
    assert refs(parent) > before
    assert child.kobj.parent is parent.kobj
    # The parent's owner lets go: the added child still holds it.
    device_unregister(parent)
    assert parent_rel.calls == []
    device_del(child)
    assert child.kobj.parent is None
    assert parent_rel.calls == [parent]  # the child's reference was the last one
    assert k.warnings == []


def test_device_del_returns_the_parent_to_its_exact_count(k: Kernel) -> None:
    parent = new_device(k, "parent")
    child = new_device(k, "child")
    child.parent = parent
    assert refs(parent) == 1
    assert device_add(child) == 0
    device_del(child)
    assert refs(parent) == 1


def test_device_register_and_unregister_are_initialize_add_and_del_put(k: Kernel) -> None:
    rel = Releases()
    dev = Device(k)
    dev.release = rel
    assert dev_set_name(dev, "reg") == 0
    assert device_register(dev) == 0
    assert dev.added and refs(dev) == 1
    device_unregister(dev)
    assert not dev.added and rel.calls == [dev]


# --------------------------------------------------------------------------------------
# dev_set_name, classes, device_create / device_destroy


def test_dev_set_name_can_be_made_to_fail(k: Kernel) -> None:
    dev = Device(k)
    device_initialize(dev)
    dev.release = Releases()
    k.fault_inject.fail("dev_set_name@test_dev_set_name_can_be_made_to_fail")
    assert dev_set_name(dev, "x") == -ENOMEM
    assert dev.name is None and dev_name(dev) == ""
    assert device_add(dev) == -EINVAL


def test_class_names_are_unique(k: Kernel) -> None:
    cls = new_class(k, "vfio")
    dup = class_create(k, "vfio")
    assert IS_ERR(dup) and PTR_ERR(dup) == -EEXIST
    class_destroy(cls)
    again = new_class(k, "vfio")
    class_destroy(again)
    assert k.leaks() == []


def test_device_create_and_device_destroy_leave_nothing_behind(k: Kernel) -> None:
    cls = new_class(k, "vfio")
    parent = new_device(k, "parent")
    devt = MKDEV(254, 0)
    dev = device_create(cls, parent, devt, "drvdata", "0")
    assert isinstance(dev, Device)
    assert (dev_name(dev), dev.devt, dev.class_) == ("0", devt, cls)
    assert (dev.driver_data, dev.parent) == ("drvdata", parent)
    assert refs(dev) == 1
    assert devtmpfs_lookup(k, devt) is dev
    found = class_find_device_by_devt(cls, devt)
    assert found is dev and refs(dev) == 2
    put_device(found)
    device_destroy(cls, devt)
    assert is_freed(dev)
    assert devtmpfs_lookup(k, devt) is None and cls.devices == {} and cls.by_devt == {}
    assert refs(parent) == 1
    device_destroy(cls, devt)  # nothing left with that devt: a no-op
    class_destroy(cls)
    assert k.leaks() == []
    assert k.warnings == []


def test_device_create_errors_come_back_as_err_ptr_and_leak_nothing(k: Kernel) -> None:
    assert device_create(None, None, MKDEV(254, 0), None, "0") is ERR_PTR(-ENODEV)
    cls = new_class(k, "vfio")
    first = device_create(cls, None, MKDEV(254, 0), None, "0")
    assert isinstance(first, Device)
    assert device_create(cls, None, MKDEV(254, 1), None, "0") is ERR_PTR(-EEXIST)
    k.fault_inject.fail("dev_set_name@device_create")
    assert device_create(cls, None, MKDEV(254, 2), None, "2") is ERR_PTR(-ENOMEM)
    k.fault_inject.fail("kzalloc@device_create")
    assert device_create(cls, None, MKDEV(254, 3), None, "3") is ERR_PTR(-ENOMEM)
    assert [leak.type for leak in k.leaks()] == ["Class", "Device"]
    device_destroy(cls, MKDEV(254, 0))
    class_destroy(cls)
    assert k.leaks() == []
