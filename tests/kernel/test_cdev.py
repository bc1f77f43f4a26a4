"""struct cdev, dev_t regions, the chrdev map and chrdev_open (fs/char_dev.c, drivers/base/map.c).

The central specification is the lifetime chain patch 5 relies on (Jason's answer to Kevin
in the seed thread): an open file holds a cdev reference, the cdev holds a reference on its
parent struct device, so a struct embedding both lives until the last close *and* the last
put_device.  ``Box`` below is such a struct (a vfio_group in miniature).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vfio_ref.kernel.cdev as cdev_mod
from vfio_ref.kernel import Kernel, KStruct, ModelUsageError, UseAfterFree, WarnEvent, kfree, kzalloc
from vfio_ref.kernel.cdev import (
    CHRDEV_MAJOR_DYN_END,
    CHRDEV_MAJOR_DYN_EXT_END,
    CHRDEV_MAJOR_DYN_EXT_START,
    Cdev,
    CdevMap,
    File,
    FileOperations,
    Inode,
    alloc_chrdev_region,
    cdev_add,
    cdev_alloc,
    cdev_del,
    cdev_device_add,
    cdev_device_del,
    cdev_init,
    cdev_set_parent,
    evict,
    fput,
    iminor,
    kobj_lookup,
    register_chrdev_region,
    unregister_chrdev_region,
    vfs_ioctl,
    vfs_open_chrdev,
    vfs_open_inode,
)
from vfio_ref.kernel.device import (
    MAJOR,
    MINOR,
    MINORMASK,
    MKDEV,
    Device,
    Kobject,
    dev_set_name,
    device_initialize,
    devtmpfs_lookup,
    put_device,
)
from vfio_ref.kernel.errno import EBUSY, EINVAL, ENOMEM, ENOTTY, ENXIO
from vfio_ref.kernel.shared import list_count
from vfio_ref.kernel.slab import container_of, is_freed

OnlyWarning = Callable[[Kernel, str, str], WarnEvent]  # the conftest fixture

ALL_MINORS = MINORMASK + 1


# --------------------------------------------------------------------------------------
# Fixtures: a driver's file operations, and a struct embedding a device and a cdev


class Box(KStruct):
    """A kzalloc'd struct embedding a struct device and a struct cdev; its device's release
    kfree()s it (the shape of patch 5's vfio_group)."""

    _embedded = ("dev", "cdev")

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.dev = Device(kernel, self)
        self.cdev = Cdev(kernel, self)
        self.value = 42
        self.releases = 0


def box_release(dev: Device) -> None:
    box = container_of(dev, Box, "dev")
    box.releases += 1
    kfree(dev.kernel, box)


class Driver:
    """File operations that record their calls.  open stores the embedding Box (found with
    container_of from inode->i_cdev, as vfio_group_fops_open does) in private_data."""

    def __init__(self, open_result: int = 0) -> None:
        self.open_result = open_result
        self.opened: list[int] = []  # minors
        self.released: list[File] = []
        self.cdev_refs_at_release: list[int] = []
        self.fops = FileOperations(
            owner="drv", open=self.open, release=self.release, unlocked_ioctl=self.ioctl, name="drv_fops"
        )

    def open(self, inode: Inode, file: File) -> int:
        self.opened.append(iminor(inode))
        if self.open_result:
            return self.open_result
        cdev = inode.i_cdev
        assert cdev is not None
        file.private_data = cdev.container
        return 0

    def release(self, inode: Inode, file: File) -> int:
        self.released.append(file)
        cdev = inode.i_cdev
        assert cdev is not None
        self.cdev_refs_at_release.append(cdev.kobj.kref.kref_read())
        return 0

    def ioctl(self, file: File, cmd: int, arg: Any) -> int:
        # Reads the embedding struct: a UseAfterFree if it were already freed.
        return int(file.private_data.value) + cmd


def new_region(k: Kernel, count: int = ALL_MINORS, name: str = "box") -> int:
    ret, base = alloc_chrdev_region(k, 0, count, name)
    assert ret == 0
    return base


def new_box(k: Kernel, devt: int, drv: Driver, name: str = "box0") -> Box:
    """kzalloc + device_initialize + cdev_init, as vfio_group_alloc does (not yet added)."""
    box = kzalloc(k, Box)
    assert box is not None
    device_initialize(box.dev)
    box.dev.devt = devt
    box.dev.release = box_release
    assert dev_set_name(box.dev, name) == 0
    cdev_init(box.cdev, drv.fops)
    box.cdev.owner = "drv"
    return box


def refs(kobj: Kobject) -> int:
    return kobj.kref.kref_read()


def open_file(k: Kernel, devt: int) -> File:
    f = vfs_open_chrdev(k, devt)
    assert isinstance(f, File), f"open of {MAJOR(devt)}:{MINOR(devt)} failed with {f}"
    return f


# --------------------------------------------------------------------------------------
# dev_t regions


def test_dynamic_majors_count_down_from_254_and_are_unique_per_kernel(k: Kernel) -> None:
    assert alloc_chrdev_region(k, 0, ALL_MINORS, "vfio") == (0, MKDEV(254, 0))
    assert alloc_chrdev_region(k, 3, 5, "other") == (0, MKDEV(253, 3))
    # Another kernel has its own table.
    assert alloc_chrdev_region(Kernel(), 0, 1, "vfio") == (0, MKDEV(254, 0))


def test_overlapping_region_is_ebusy_and_adjacent_regions_coexist(k: Kernel) -> None:
    assert register_chrdev_region(k, MKDEV(10, 0), 16, "a") == 0
    assert register_chrdev_region(k, MKDEV(10, 8), 16, "b") == -EBUSY
    assert register_chrdev_region(k, MKDEV(10, 15), 1, "c") == -EBUSY
    assert register_chrdev_region(k, MKDEV(10, 16), 16, "d") == 0
    assert register_chrdev_region(k, MKDEV(11, 0), 16, "e") == 0  # same minors, other major
    unregister_chrdev_region(k, MKDEV(10, 0), 16)
    assert register_chrdev_region(k, MKDEV(10, 8), 8, "b") == 0
    for devt, n in ((MKDEV(10, 8), 8), (MKDEV(10, 16), 16), (MKDEV(11, 0), 16)):
        unregister_chrdev_region(k, devt, n)
    assert k.leaks() == []


def test_unregister_needs_the_exact_bounds(k: Kernel) -> None:
    assert register_chrdev_region(k, MKDEV(10, 0), 16, "a") == 0
    unregister_chrdev_region(k, MKDEV(10, 0), 8)  # not what was registered: ignored
    assert register_chrdev_region(k, MKDEV(10, 0), 1, "b") == -EBUSY
    assert [leak.detail for leak in k.leaks()] == ["chrdev region 10:0+16 'a'"]
    unregister_chrdev_region(k, MKDEV(10, 0), 16)
    assert k.leaks() == []


def test_region_spanning_two_majors_is_rolled_back_when_the_second_clashes(k: Kernel) -> None:
    assert register_chrdev_region(k, MKDEV(21, 0), 4, "taken") == 0
    assert register_chrdev_region(k, MKDEV(20, MINORMASK - 1), 6, "span") == -EBUSY
    # The major-20 piece registered before the clash was given back.
    assert register_chrdev_region(k, MKDEV(20, MINORMASK - 1), 2, "again") == 0
    assert register_chrdev_region(k, MKDEV(21, 4), 2, "after") == 0


def test_region_out_of_bounds_is_einval(k: Kernel) -> None:
    assert register_chrdev_region(k, MKDEV(512, 0), 1, "big") == -EINVAL
    assert alloc_chrdev_region(k, 1, ALL_MINORS, "too many") == (-EINVAL, 0)
    assert any("is greater than the maximum (511)" in line for line in k.log)
    assert k.leaks() == []


def vfio_init_like(k: Kernel) -> tuple[int, int]:
    return alloc_chrdev_region(k, 0, ALL_MINORS, "vfio")


def test_injected_region_allocation_failure_is_enomem_and_registers_nothing(k: Kernel) -> None:
    k.fault_inject.fail("alloc_chrdev_region@vfio_init_like")
    assert vfio_init_like(k) == (-ENOMEM, 0)
    assert [p.name for p in k.fault_inject.injected] == ["alloc_chrdev_region@vfio_init_like"]
    assert k.leaks() == []
    # Major 254 is still free.
    assert alloc_chrdev_region(k, 0, 1, "next") == (0, MKDEV(254, 0))


def test_dynamic_majors_run_out_with_ebusy(k: Kernel) -> None:
    n_dynamic = (254 - CHRDEV_MAJOR_DYN_END + 1) + (CHRDEV_MAJOR_DYN_EXT_START - CHRDEV_MAJOR_DYN_EXT_END + 1)
    majors = []
    for i in range(n_dynamic):
        ret, devt = alloc_chrdev_region(k, 0, 1, f"r{i}")
        assert ret == 0
        majors.append(MAJOR(devt))
    assert majors == [*range(254, 233, -1), *range(511, 383, -1)]
    assert alloc_chrdev_region(k, 0, 1, "one too many") == (-EBUSY, 0)
    assert 'CHRDEV "one too many" dynamic allocation region is full' in k.log


def test_a_major_in_use_255_higher_hides_the_dynamic_major_sharing_its_hash_bucket(k: Kernel) -> None:
    # 509 % 255 == 254: the kernel only takes a low dynamic major whose whole bucket is empty.
    assert register_chrdev_region(k, MKDEV(509, 0), 1, "high") == 0
    assert alloc_chrdev_region(k, 0, 1, "dyn") == (0, MKDEV(253, 0))


def test_a_region_never_unregistered_is_reported_as_a_leak(k: Kernel) -> None:
    base = vfio_init_like(k)[1]
    [leak] = k.leaks()
    assert (leak.type, leak.allocated_by) == ("CharDeviceStruct", "vfio_init_like")
    assert leak.detail == "chrdev region 254:0+1048576 'vfio'"
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == []


# --------------------------------------------------------------------------------------
# The map: which cdev answers a dev_t


def test_one_cdev_over_all_minors_answers_every_minor_of_its_major(k: Kernel) -> None:
    """The base's layout: one global cdev for MINORMASK + 1 minors."""
    base = new_region(k)
    drv = Driver()
    cdev = Cdev(k)
    cdev_init(cdev, drv.fops)
    assert cdev_add(cdev, base, ALL_MINORS) == 0
    files = [open_file(k, base + minor) for minor in (0, 777, MINORMASK)]
    assert drv.opened == [0, 777, MINORMASK]
    assert refs(cdev.kobj) == 1 + 3
    assert vfs_open_chrdev(k, MKDEV(MAJOR(base) + 1, 0)) == -ENXIO
    assert vfs_open_chrdev(k, MKDEV(MAJOR(base) - 1, MINORMASK)) == -ENXIO
    for f in files:
        f.close()
    assert refs(cdev.kobj) == 1
    cdev_del(cdev)
    assert refs(cdev.kobj) == 0
    assert vfs_open_chrdev(k, base) == -ENXIO


def test_a_one_minor_cdev_is_preferred_over_a_wider_mapping(k: Kernel) -> None:
    base = new_region(k)
    wide_drv, narrow_drv = Driver(), Driver()
    wide, narrow = Cdev(k), Cdev(k)
    cdev_init(wide, wide_drv.fops)
    cdev_init(narrow, narrow_drv.fops)
    assert cdev_add(wide, base, ALL_MINORS) == 0
    assert cdev_add(narrow, base + 5, 1) == 0
    for minor in (4, 5, 6):
        open_file(k, base + minor).close()
    assert (wide_drv.opened, narrow_drv.opened) == ([4, 6], [5])
    cdev_del(narrow)
    open_file(k, base + 5).close()
    assert wide_drv.opened == [4, 6, 5]


def test_unmap_removes_the_newest_mapping_with_those_bounds_whatever_its_cdev(k: Kernel) -> None:
    """kobj_unmap matches (dev, range) only: deleting the older of two cdevs added at the
    same number unmaps the newer one, and leaves the older, released one in the map."""
    devt = MKDEV(300, 1)
    a, b = Cdev(k), Cdev(k)
    drv_a, drv_b = Driver(), Driver()
    cdev_init(a, drv_a.fops)
    cdev_init(b, drv_b.fops)
    assert cdev_add(a, devt, 1) == 0
    assert cdev_add(b, devt, 1) == 0
    open_file(k, devt).close()
    assert (drv_a.opened, drv_b.opened) == ([], [1])  # the newest answers
    cdev_del(a)
    assert refs(a.kobj) == 0 and refs(b.kobj) == 1
    # a's mapping is what is left; a lookup picks it and fails to get a released cdev.
    assert kobj_lookup(k, devt) is None
    assert vfs_open_chrdev(k, devt) == -ENXIO
    cdev_del(b)  # removes a's stale mapping and drops b's init reference
    assert refs(b.kobj) == 0
    assert cdev_mod.chrdev_state(k).cdev_map.mappings == 0


def test_kobj_lookup_returns_the_cdev_with_a_reference_taken(k: Kernel) -> None:
    devt = MKDEV(300, 0)
    cdev = Cdev(k)
    cdev_init(cdev, Driver().fops)
    assert kobj_lookup(k, devt) is None
    assert cdev_add(cdev, devt, 1) == 0
    assert kobj_lookup(k, devt) is cdev
    assert refs(cdev.kobj) == 2


class NaiveMap:
    """The kernel's rule written out: pick the narrowest covering mapping, newest first;
    unmap the newest mapping with exactly those bounds."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, int, object]] = []  # (dev, range, seq, cdev)
        self.seq = 0

    def map(self, dev: int, rng: int, cdev: object) -> None:
        self.entries.append((dev, rng, self.seq, cdev))
        self.seq += 1

    def unmap(self, dev: int, rng: int) -> None:
        same = [e for e in self.entries if e[0] == dev and e[1] == rng]
        if same:
            self.entries.remove(max(same, key=lambda e: e[2]))

    def find(self, x: int) -> object | None:
        cov = [e for e in self.entries if e[0] <= x < e[0] + e[1]]
        return min(cov, key=lambda e: (e[1], -e[2]))[3] if cov else None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["map", "unmap"]), st.integers(0, 40), st.integers(1, 12)),
        max_size=60,
    )
)
def test_cdev_map_agrees_with_the_kernels_rule_on_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    k = Kernel()
    cdevs = [Cdev(k) for _ in range(4)]
    real, naive = CdevMap(), NaiveMap()
    for i, (op, dev, rng) in enumerate(ops):
        if op == "map":
            real.map(dev, rng, cdevs[i % 4])
            naive.map(dev, rng, cdevs[i % 4])
        else:
            real.unmap(dev, rng)
            naive.unmap(dev, rng)
        for x in range(0, 55):
            p = real.find(x)
            assert (p.cdev if p else None) is naive.find(x), f"lookup of {x} after {ops[: i + 1]}"
    assert real.mappings == len(naive.entries)
    for dev, rng, _, _ in list(naive.entries):
        real.unmap(dev, rng)
    assert real.mappings == 0
    assert real.segments() == 0  # no boundary outlives the mappings that needed it


def test_per_minor_mappings_stay_exact_at_scale(k: Kernel) -> None:
    """Patch 5's layout: one cdev per minor.  20000 of them, mapped and unmapped in random
    order, each lookup finding its own."""
    m = CdevMap()
    cdevs = {minor: Cdev(k) for minor in range(20000)}
    order = list(cdevs)
    random.Random(5).shuffle(order)
    for minor in order:
        m.map(MKDEV(254, minor), 1, cdevs[minor])
    assert all(m.find(MKDEV(254, minor)).cdev is cdevs[minor] for minor in order)  # type: ignore[union-attr]
    for minor in order[:10000]:
        m.unmap(MKDEV(254, minor), 1)
    assert all(m.find(MKDEV(254, minor)) is None for minor in order[:10000])
    assert m.mappings == 10000 and m.segments() == 0


# --------------------------------------------------------------------------------------
# The lifetime chain: file -> cdev -> device -> container


def test_open_after_cdev_device_add_reaches_the_driver_and_pins_the_cdev(k: Kernel) -> None:
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base + 3, drv)
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 1)
    assert cdev_device_add(box.cdev, box.dev) == 0
    # cdev_add took a reference on the parent device.
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (2, 1)
    assert devtmpfs_lookup(k, base + 3) is box.dev
    f = open_file(k, base + 3)
    assert drv.opened == [3]
    assert f.f_op is drv.fops
    assert f.private_data is box
    assert vfs_ioctl(f, 1) == 43
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (2, 2)
    assert f.f_inode.i_cdev is box.cdev


def test_after_cdev_device_del_new_opens_fail_but_an_open_file_still_works(k: Kernel) -> None:
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    f = open_file(k, base)
    cdev_device_del(box.cdev, box.dev)
    assert vfs_open_chrdev(k, base) == -ENXIO
    assert devtmpfs_lookup(k, base) is None
    assert drv.opened == [0]  # the failed open never reached the driver
    assert vfs_ioctl(f, 0) == 42
    # cdev_del dropped the init reference; the file's is left.  The device is untouched.
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (2, 1)


@pytest.mark.parametrize("last", ["close", "put_device"])
def test_memory_lives_until_the_later_of_last_close_and_last_put_device(k: Kernel, last: str) -> None:
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    f = open_file(k, base)
    cdev_device_del(box.cdev, box.dev)
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (2, 1)

    if last == "close":
        put_device(box.dev)
        assert not is_freed(box)
        assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 1)
        assert vfs_ioctl(f, 0) == 42  # still usable: the file pins the struct
        f.close()
    else:
        f.close()
        assert not is_freed(box)
        # The cdev was released: its parent reference is gone, the caller's remains.
        assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 0)
        put_device(box.dev)
    assert is_freed(box)
    assert object.__getattribute__(box, "releases") == 1
    assert drv.released == [f]
    assert drv.cdev_refs_at_release == [1]  # ->release runs before fput drops the reference
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == []
    assert k.warnings == []


def test_every_open_file_holds_its_own_cdev_reference(k: Kernel) -> None:
    base = new_region(k)
    box = new_box(k, base, Driver())
    assert cdev_device_add(box.cdev, box.dev) == 0
    files = [open_file(k, base) for _ in range(3)]
    assert refs(box.cdev.kobj) == 4
    cdev_device_del(box.cdev, box.dev)
    put_device(box.dev)
    for i, f in enumerate(files):
        assert not is_freed(box)
        assert refs(box.cdev.kobj) == 3 - i
        f.close()
    assert is_freed(box)


def test_without_the_parent_reference_a_close_after_the_final_put_device_is_use_after_free(
    k: Kernel,
) -> None:
    """Ablation cdev_without_parent_ref: the cdev does not pin its device, so the final
    put_device frees the struct under an open file; fput then reads the freed cdev."""
    k.state["cdev_parent_ref"] = False
    base = new_region(k)
    box = new_box(k, base, Driver())
    box.cdev.ops = FileOperations(name="no_release_fops")  # so that fput's own access is the first
    assert cdev_device_add(box.cdev, box.dev) == 0
    assert refs(box.dev.kobj) == 1  # no parent reference taken
    f = open_file(k, base)
    cdev_device_del(box.cdev, box.dev)
    put_device(box.dev)
    assert is_freed(box)  # freed while a file is open
    with pytest.raises(UseAfterFree) as exc:
        f.close()
    msg = exc.value.message
    assert msg.startswith("BUG: KASAN: use-after-free in cdev_put: read of box->cdev.owner (struct box)")
    assert "Freed by task" in msg and "put_device" in msg
    assert exc.value.freed.type == "Box"  # type: ignore[attr-defined]
    assert f.closed


def test_without_the_parent_reference_closing_first_is_still_clean(k: Kernel) -> None:
    k.state["cdev_parent_ref"] = False
    base = new_region(k)
    box = new_box(k, base, Driver())
    assert cdev_device_add(box.cdev, box.dev) == 0
    f = open_file(k, base)
    cdev_device_del(box.cdev, box.dev)
    f.close()
    assert refs(box.dev.kobj) == 1  # the cdev's release dropped no parent reference
    put_device(box.dev)
    assert is_freed(box)
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == [] and k.warnings == []


def test_cdev_device_add_failing_in_device_add_leaves_nothing_mapped_or_leaked(k: Kernel) -> None:
    base = new_region(k)
    box = new_box(k, base, Driver())
    k.fault_inject.fail("device_add@cdev_device_add")
    assert cdev_device_add(box.cdev, box.dev) == -ENOMEM
    assert vfs_open_chrdev(k, base) == -ENXIO
    assert devtmpfs_lookup(k, base) is None
    # cdev_del released the cdev, which gave its parent reference back.
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 0)
    put_device(box.dev)
    assert is_freed(box)
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == []


def test_the_node_is_openable_while_cdev_device_add_runs_even_when_it_fails(k: Kernel) -> None:
    """Callers must assume userspace opened the cdev before cdev_device_add returned."""
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    inject = k.fault_inject.should_fail
    early: list[File | int] = []

    def should_fail(kind: str, function: str, detail: str = "") -> bool:
        if kind == "device_add":
            early.append(vfs_open_chrdev(k, base))  # userspace races in here
            return True
        return inject(kind, function, detail)

    k.fault_inject.should_fail = should_fail  # type: ignore[method-assign]
    assert cdev_device_add(box.cdev, box.dev) == -ENOMEM
    [f] = early
    assert isinstance(f, File) and drv.opened == [0]
    assert vfs_open_chrdev(k, base) == -ENXIO  # unmapped by the failure path
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (2, 1)
    put_device(box.dev)  # the caller's error path
    assert vfs_ioctl(f, 0) == 42  # the early file still works on live memory
    f.close()
    assert is_freed(box)


def probe_like(box: Box) -> int:
    return cdev_device_add(box.cdev, box.dev)


def test_cdev_add_failure_maps_nothing_and_takes_no_parent_reference(k: Kernel) -> None:
    base = new_region(k)
    box = new_box(k, base, Driver())
    k.fault_inject.fail("cdev_add@probe_like")  # named after the first caller outside cdev.c
    assert probe_like(box) == -ENOMEM
    assert refs(box.dev.kobj) == 1
    assert vfs_open_chrdev(k, base) == -ENXIO
    assert devtmpfs_lookup(k, base) is None  # device_add never ran
    put_device(box.dev)
    assert is_freed(box)
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == []


def test_cdev_device_add_without_devt_is_plain_device_add(k: Kernel) -> None:
    box = new_box(k, 0, Driver())
    assert cdev_device_add(box.cdev, box.dev) == 0
    assert box.dev.added and box.cdev.kobj.parent is None
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 1)
    cdev_device_del(box.cdev, box.dev)
    assert (refs(box.dev.kobj), refs(box.cdev.kobj)) == (1, 1)  # no cdev_del without devt
    put_device(box.dev)
    assert is_freed(box)


def test_cdev_device_add_without_devt_still_cdev_dels_on_failure_as_5_15_does(k: Kernel) -> None:
    """5.15/5.16 call cdev_del on a device_add failure even when no cdev was added (fixed
    later): the never-added cdev loses its init reference."""
    box = new_box(k, 0, Driver())
    k.fault_inject.fail("device_add@cdev_device_add")
    assert cdev_device_add(box.cdev, box.dev) == -ENOMEM
    assert refs(box.cdev.kobj) == 0
    put_device(box.dev)
    assert is_freed(box) and k.warnings == []


def test_cdev_set_parent_warns_on_an_uninitialised_kobject(k: Kernel, only_warning: OnlyWarning) -> None:
    cdev = Cdev(k)
    cdev_init(cdev, None)
    parent = Device(k)
    cdev_set_parent(cdev, parent.kobj)
    only_warning(k, "cdev_set_parent", "!kobj->state_initialized")
    assert cdev.kobj.parent is parent.kobj


# --------------------------------------------------------------------------------------
# chrdev_open details: the inode's cached cdev, open errors, files


def test_reopening_a_cached_inode_skips_the_map_and_reaches_a_deleted_cdev(k: Kernel) -> None:
    """A new inode must look the number up; an inode that already cached the cdev does not,
    so it reaches the driver's open after cdev_del as long as the cdev is alive.  (Why
    patch 5's vfio_group_fops_open must use refcount_inc_not_zero.)"""
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    inode = Inode(k, base)
    f1 = vfs_open_inode(k, inode)
    assert isinstance(f1, File) and inode.i_cdev is box.cdev
    assert list_count(box.cdev.list) == 1
    cdev_device_del(box.cdev, box.dev)
    assert vfs_open_chrdev(k, base) == -ENXIO
    f2 = vfs_open_inode(k, inode)
    assert isinstance(f2, File)
    assert drv.opened == [0, 0]
    assert refs(box.cdev.kobj) == 2
    put_device(box.dev)
    f1.close()
    f2.close()
    # The cdev's release unlinked the inode before freeing; the inode forgot it.
    assert inode.i_cdev is None and is_freed(box)
    assert vfs_open_inode(k, inode) == -ENXIO


def test_an_opener_that_loses_the_caching_race_drops_its_lookup_reference(
    k: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two opens of one inode: the second caches the cdev while the first is between its
    lookup and retaking cdev_lock.  The first then takes a reference on the cached cdev and
    drops the one its lookup took."""
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    inode = Inode(k, base)
    real_lookup = cdev_mod.kobj_lookup
    racer: list[File | int] = []
    raced = False

    def lookup_then_race(kernel: Kernel, dev: int) -> Cdev | None:
        nonlocal raced
        found = real_lookup(kernel, dev)
        if not raced:
            raced = True
            racer.append(vfs_open_inode(k, inode))  # runs the whole open, caching i_cdev
        return found

    monkeypatch.setattr(cdev_mod, "kobj_lookup", lookup_then_race)
    first = vfs_open_inode(k, inode)
    [second] = racer
    assert isinstance(first, File) and isinstance(second, File)
    assert inode.i_cdev is box.cdev
    assert list_count(box.cdev.list) == 1  # cached once
    assert refs(box.cdev.kobj) == 1 + 2  # init + one per file; the spare lookup ref is gone
    first.close()
    second.close()
    assert refs(box.cdev.kobj) == 1


def test_closing_a_file_from_a_fresh_lookup_evicts_its_inode(k: Kernel) -> None:
    base = new_region(k)
    box = new_box(k, base, Driver())
    assert cdev_device_add(box.cdev, box.dev) == 0
    f = open_file(k, base)
    inode = f.f_inode
    assert list_count(box.cdev.list) == 1
    f.close()
    assert list_count(box.cdev.list) == 0 and inode.i_cdev is None
    # A caller's own inode stays linked until the caller evicts it.
    own = Inode(k, base)
    g = vfs_open_inode(k, own)
    assert isinstance(g, File)
    g.close()
    assert own.i_cdev is box.cdev and list_count(box.cdev.list) == 1
    evict(own)
    assert own.i_cdev is None and list_count(box.cdev.list) == 0


def test_a_driver_open_error_drops_the_cdev_reference_and_skips_release(k: Kernel) -> None:
    base = new_region(k)
    drv = Driver(open_result=-EBUSY)
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    assert vfs_open_chrdev(k, base) == -EBUSY
    assert drv.opened == [0] and drv.released == []
    assert refs(box.cdev.kobj) == 1
    assert list_count(box.cdev.list) == 0  # the failed open's inode was evicted


def test_a_cdev_without_fops_cannot_be_opened(k: Kernel) -> None:
    devt = MKDEV(300, 0)
    cdev = Cdev(k)
    cdev_init(cdev, None)
    assert cdev_add(cdev, devt, 1) == 0
    assert vfs_open_chrdev(k, devt) == -ENXIO
    assert refs(cdev.kobj) == 1


def test_an_ioctl_the_driver_lacks_is_enotty(k: Kernel) -> None:
    devt = MKDEV(300, 0)
    cdev = Cdev(k)
    cdev_init(cdev, FileOperations(name="bare"))
    assert cdev_add(cdev, devt, 1) == 0
    f = open_file(k, devt)
    assert vfs_ioctl(f, 1) == -ENOTTY
    f.close()
    assert refs(cdev.kobj) == 1


def test_closing_a_file_twice_or_using_it_after_close_is_a_model_usage_error(k: Kernel) -> None:
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    f = open_file(k, base)
    f.close()
    with pytest.raises(ModelUsageError, match=r"fput of file#\d+ /dev/char/254:0, which is already closed"):
        f.close()
    with pytest.raises(ModelUsageError, match=r"private_data on file#\d+ .* which is closed"):
        _ = f.private_data
    with pytest.raises(ModelUsageError, match="ioctl on"):
        vfs_ioctl(f, 0)
    with pytest.raises(ModelUsageError, match="used after its last fput"):
        _ = f.f_inode
    with pytest.raises(ModelUsageError, match="already closed"):
        fput(f)
    assert drv.released == [f]  # released once
    assert refs(box.cdev.kobj) == 1


def test_cdev_alloc_gives_a_cdev_whose_release_frees_it(k: Kernel) -> None:
    devt = MKDEV(300, 0)
    p = cdev_alloc(k)
    assert p is not None
    p.ops = Driver().fops
    assert cdev_add(p, devt, 1) == 0
    f = open_file(k, devt)
    cdev_del(p)
    assert not is_freed(p)
    f.close()
    assert is_freed(p)
    assert k.leaks() == []


def test_cdev_alloc_can_fail(k: Kernel) -> None:
    k.fault_inject.fail("kzalloc@cdev_alloc")
    assert cdev_alloc(k) is None
    assert k.leaks() == []


def test_cdev_add_count_must_be_positive(k: Kernel) -> None:
    cdev = Cdev(k)
    cdev_init(cdev, None)
    with pytest.raises(ModelUsageError, match="count must be at least 1"):
        cdev_add(cdev, MKDEV(300, 0), 0)


def test_opens_and_closes_racing_with_teardown_never_touch_freed_memory(k: Kernel) -> None:
    """Free-running threads: openers loop while the owner deletes and puts the device.
    Whatever the interleaving, every open either fails with -ENXIO or yields a file that
    works until closed, and the struct is freed exactly once, after everything."""
    base = new_region(k)
    drv = Driver()
    box = new_box(k, base, drv)
    assert cdev_device_add(box.cdev, box.dev) == 0
    results: list[int] = []

    def opener() -> None:
        for _ in range(40):
            f = vfs_open_chrdev(k, base)
            if isinstance(f, File):
                results.append(vfs_ioctl(f, 0))
                f.close()
            else:
                results.append(f)

    def owner() -> None:
        cdev_device_del(box.cdev, box.dev)
        put_device(box.dev)

    assert k.run_threads(opener, opener, owner, opener) == []
    assert set(results) <= {42, -ENXIO}
    assert is_freed(box) and object.__getattribute__(box, "releases") == 1
    unregister_chrdev_region(k, base, ALL_MINORS)
    assert k.leaks() == [] and k.warnings == [] and k.lockdep_reports == []
