"""Patch 5: the struct device and the cdev live inside the vfio_group (cdev_device_add).

The group's memory is now freed by the struct device's release; its minor comes from an IDA
and goes back only then; an open finds its group through the cdev and refuses a group whose
users reached zero; an open file keeps the memory alive after cdev_device_del (the question
Kevin Tian asked in review); and the error paths of vfio_create_group leak nothing (Yi Liu's
question).
"""

from __future__ import annotations

import pytest

from vfio_ref.kernel.cdev import File, Inode, cdev_put, kobj_lookup, replace_fops
from vfio_ref.kernel.device import MINOR
from vfio_ref.kernel.errno import ENODEV, ENXIO
from vfio_ref.kernel.iommu import iommu_group_get, iommu_group_put
from vfio_ref.kernel.slab import is_freed
from vfio_ref.vfio.base import VFIO_IOMMU

from .machine import A, B, machine


def test_the_lifecycle_is_clean_and_the_group_embeds_its_device_and_cdev() -> None:
    m = machine("p5")
    assert m.p.bind(A) == 0
    f = m.p.open_group(A)
    assert isinstance(f, File)
    group = f.private_data
    assert group.dev.container is group and group.cdev.container is group
    assert f.f_inode.i_cdev is group.cdev  # the open reached the group through the cdev
    m.p.close(f)
    m.p.unbind(A)
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_an_open_in_flight_keeps_the_group_alive_after_cdev_device_del() -> None:
    """chrdev_open has found the cdev (and holds a reference on it) when the last
    vfio_group_put runs: cdev_device_del, put_device.  The open then fails with -ENODEV
    (users is zero), and the memory goes only when its cdev reference does."""
    m = machine("p5")
    m.p.bind(A)
    devt = m.p.group_devt(A)
    v, k = m.v, m.k
    ida = v.vfio.group_ida
    # chrdev_open, up to ->open: the cdev found and referenced, cached in the inode
    inode = Inode(k, devt)
    cdev = kobj_lookup(k, devt)
    assert cdev is not None
    inode.i_cdev = cdev
    group = cdev.container

    m.p.unbind(A)  # the last put: users 0, cdev_device_del, notifier gone, put_device
    assert group.users.refcount_read() == 0
    assert not is_freed(group)  # the in-flight open's cdev reference holds it
    assert MINOR(devt) in ida  # and its minor is not reused yet
    assert m.p.open_devt(devt) == -ENXIO  # a new open no longer finds the node

    # ... the open goes on: ->open refuses the dying group
    filp = File(k, inode)
    replace_fops(filp, v.vfio_group_fops)
    assert v.vfio_group_fops_open(inode, filp) == -ENODEV
    cdev_put(cdev)  # chrdev_open's error path drops its reference: the last one
    assert is_freed(group)
    assert MINOR(devt) not in ida  # the minor went back with the struct device
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == [] and m.k.faults == []


def test_a_node_whose_inode_cached_the_cdev_reopens_through_it_and_open_says_enodev() -> None:
    """Open the same node twice: the first open cached the group's cdev in the node's inode
    (i_cdev).  After cdev_device_del, while something still holds the cdev (an open in
    flight here), the second open skips the map and reaches vfio_group_fops_open, which
    refuses the dying group with -ENODEV; a node opened for the first time finds nothing
    mapped and gets -ENXIO from chrdev_open."""
    m = machine("p5")
    m.p.bind(A)
    devt = m.p.group_devt(A)
    f = m.p.open_devt(devt)
    assert isinstance(f, File)
    node = f.f_inode
    m.p.close(f)
    assert node.i_cdev is not None  # still cached: the cdev lives (the group does)
    held = kobj_lookup(m.k, devt)  # an open in flight holds the cdev
    assert held is node.i_cdev
    m.p.unbind(A)  # the last put: cdev_device_del, put_device
    assert m.p.open_devt(devt) == -ENODEV  # the same node: through i_cdev to ->open
    fresh = Inode(m.k, devt, "/tmp/mknod-again")
    from vfio_ref.kernel.cdev import vfs_open_inode

    assert vfs_open_inode(m.k, fresh) == -ENXIO  # a fresh inode looks the number up
    cdev_put(held)  # the last cdev reference: the group is freed, the inode forgets it
    assert node.i_cdev is None
    assert m.p.open_devt(devt) == -ENXIO
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == [] and m.k.faults == []


def test_an_open_file_keeps_the_group_alive_and_its_release_frees_it() -> None:
    m = machine("p5")
    m.p.bind(A)
    f = m.p.open_group(A)
    assert isinstance(f, File)
    group = f.private_data
    m.p.unbind(A)  # the file still holds a user
    assert group.users.refcount_read() == 1 and not is_freed(group)
    m.p.close(f)  # release: the last put; then fput drops the cdev reference
    assert is_freed(group)
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_minors_come_from_the_ida_and_are_reused_only_after_release() -> None:
    m = machine("p5")
    m.p.bind(A)
    first = m.p.group_devt(A)
    cdev = kobj_lookup(m.k, first)  # somebody holds the old group's cdev
    m.p.unbind(A)
    m.p.bind(A)  # a new group while the old one's memory is still alive
    second = m.p.group_devt(A)
    assert MINOR(second) != MINOR(first)
    cdev_put(cdev)
    m.p.unbind(A)
    m.p.bind(A)
    assert MINOR(m.p.group_devt(A)) == MINOR(first)  # lowest free minor again
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_a_creator_that_loses_the_race_allocates_a_minor_and_gives_it_back() -> None:
    """The minor is allocated before the "did we race" check: the loser takes one, and its
    put_device (the struct device's release) returns it."""
    m = machine("p5", devices=(A, B))
    v, ida = m.v, m.v.vfio.group_ida
    ig_a, ig_b = iommu_group_get(m.p.dev(A)), iommu_group_get(m.p.dev(B))
    g1 = v.vfio_create_group(ig_a, VFIO_IOMMU)
    assert sorted(ida) == [0]
    allocs, frees = m.k.slab.allocs, m.k.slab.frees
    g2 = v.vfio_create_group(ig_b, VFIO_IOMMU)
    assert g2 is g1
    assert m.k.slab.allocs - allocs == 1 and m.k.slab.frees - frees == 1  # the loser's group
    assert sorted(ida) == [0]  # its minor (1) was taken and given back
    assert [p.name for p in m.k.fault_inject.points].count("ida_alloc@vfio_group_alloc") == 2
    iommu_group_put(ig_a)
    iommu_group_put(ig_b)
    v.vfio_group_put(g1)
    v.vfio_group_put(g2)
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def _create_group_fault_points() -> list[str]:
    m = machine("p5")
    n0 = len(m.k.fault_inject.points)
    m.p.bind(A)
    inside = ("vfio_group_alloc", "vfio_create_group", "cdev_device_add", "iommu_group_register_notifier")
    return [p.name for p in m.k.fault_inject.points[n0:] if p.name.split("@")[1] in inside]


@pytest.mark.parametrize("point", _create_group_fault_points())
def test_every_failure_point_of_vfio_create_group_leaks_nothing(point: str) -> None:
    m = machine("p5")
    m.k.fault_inject.fail(point)
    ret = m.p.bind(A)
    assert ret < 0  # the error reaches the driver core
    assert m.v.vfio.group_ida.ida_is_empty()  # the minor went back
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == [] and m.k.faults == []


def test_when_cdev_device_add_fails_nothing_leaks_and_the_node_is_gone() -> None:
    m = machine("p5")
    m.k.fault_inject.fail("device_add@cdev_device_add")
    assert m.p.bind(A) == -12
    assert m.p.open_group(A) == -2  # no group, no /dev/vfio/N
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []
