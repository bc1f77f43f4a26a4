"""vfio.c at the series' base: the group lifecycle as Linux 5.15 (plus hch's series) had it."""

from __future__ import annotations

import pytest

from vfio_ref import LEVELS
from vfio_ref.kernel import CAP_SYS_ADMIN, KernelBug, UseAfterFree
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.device import MAJOR, MKDEV
from vfio_ref.kernel.errno import EBUSY, ENODEV, EPERM
from vfio_ref.kernel.iommu import iommu_group_get, iommu_group_put
from vfio_ref.kernel.slab import kfree
from vfio_ref.vfio import REVIEW_FIX_LEVELS
from vfio_ref.vfio.base import VFIO_IOMMU

from .machine import A, B, machine


def test_a_full_lifecycle_ends_with_no_warn_and_no_leak() -> None:
    m = machine("base")
    assert m.p.bind(A) == 0
    f = m.p.open_group(A)
    assert isinstance(f, File)
    m.p.close(f)
    m.p.unbind(A)
    m.p.teardown()
    assert m.warnings() == []
    assert m.k.leaks() == []
    assert m.k.lockdep_reports == []
    assert m.k.faults == []


def test_the_group_is_counted_by_a_kref_that_each_holder_moves() -> None:
    m = machine("base")
    m.p.bind(A)
    group = m.v.vfio_group_get_from_dev(m.p.dev(A))
    assert group is not None
    # the registered device holds one reference, our lookup another
    assert group.kref.kref_read() == 2
    m.v.vfio_group_put(group)
    f = m.p.open_group(A)
    assert isinstance(f, File)
    assert group.kref.kref_read() == 2  # the open file holds one now
    m.p.close(f)
    assert group.kref.kref_read() == 1


def test_opening_a_minor_with_no_group_gives_enodev() -> None:
    m = machine("base")
    m.p.bind(A)
    # One global cdev spans every minor: a minor with no group reaches vfio_group_fops_open,
    # whose IDR lookup finds nothing.
    unused = MKDEV(MAJOR(m.v.vfio.group_devt), 7)
    assert m.p.open_devt(unused) == -ENODEV
    m.p.teardown()
    assert m.k.leaks() == []


def test_the_noiommu_open_needs_cap_sys_rawio_and_puts_its_reference_back() -> None:
    m = machine("base", noiommu=True)
    assert m.p.bind(A) == 0
    assert "TAINT_USER" in m.k.tainted
    group = m.v.vfio_group_get_from_dev(m.p.dev(A))
    assert group is not None
    before = group.kref.kref_read()
    with m.k.capabilities({CAP_SYS_ADMIN}):
        assert m.p.open_group(A) == -EPERM
    assert group.kref.kref_read() == before  # the failed open put its reference back
    m.v.vfio_group_put(group)
    f = m.p.open_group(A)  # with CAP_SYS_RAWIO it opens
    assert isinstance(f, File)
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_a_second_open_is_ebusy_and_changes_nothing() -> None:
    m = machine("base")
    m.p.bind(A)
    f = m.p.open_group(A)
    assert isinstance(f, File)
    assert m.p.open_group(A) == -EBUSY
    assert f.private_data.opened.atomic_read() == 1
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_a_device_added_to_a_group_in_use_warns_added_to_live_group() -> None:
    m = machine("base")
    m.p.bind(A)
    m.p.use_group(A)
    m.p.add_device(B, "g0")
    assert m.warnings() == [("vfio_group_nb_add_dev", "Device added to live group 0!")]
    w = m.k.warnings[0]
    assert w.macro == "dev_WARN"
    assert "vfio_iommu_group_notifier" in w.backtrace
    m.p.teardown()
    assert m.k.leaks() == []


def test_a_non_vfio_driver_bound_in_a_group_in_use_hits_the_bug_on() -> None:
    m = machine("base", devices=(A, B))
    m.p.bind(A)
    m.p.use_group(A)
    with pytest.raises(KernelBug) as bug:
        m.p.bind(B, "e1000e")
    assert "vfio_iommu_group_notifier" in bug.value.message
    assert "BUG_ON(vfio_group_nb_verify(group, dev))" in bug.value.message
    assert m.warnings() == []


def test_pci_stub_and_a_device_being_unbound_keep_the_group_viable() -> None:
    m = machine("base", devices=(A, B))
    m.p.bind(A)
    m.p.use_group(A)
    assert m.p.bind(B, "pci-stub") == 0  # an allowed driver: no BUG
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


@pytest.mark.parametrize("first", ["A", "B"])
def test_two_creators_of_one_group_leak_an_iommu_group_reference(first: str) -> None:
    """Both creators missed the lookup; the second finds the first's group in the race
    check and returns it without putting the iommu_group reference it was handed."""
    m = machine("base", devices=(A, B))
    v = m.v
    ig = m.p.groups["g0"]
    refs_a = iommu_group_get(m.p.dev(A))  # what vfio_group_find_or_alloc holds for A
    refs_b = iommu_group_get(m.p.dev(B))  # ... and for B
    assert refs_a is ig and refs_b is ig
    g1 = v.vfio_create_group(ig, VFIO_IOMMU)  # the winner keeps its caller's reference
    g2 = v.vfio_create_group(ig, VFIO_IOMMU)  # the loser: the race check finds g1
    assert g1 is g2
    v.vfio_group_put(g2)
    v.vfio_group_put(g1)  # the group goes, and with it the reference the winner kept
    m.p.teardown()
    leaks = m.k.leaks()
    assert [(leak.type, leak.allocated_by) for leak in leaks] == [("IommuGroup", "iommu_group_alloc")]
    assert "kref 1" in leaks[0].detail  # exactly the loser's reference
    assert m.warnings() == []


def test_the_notifier_takes_a_reference_and_puts_it_from_a_work_item() -> None:
    m = machine("base", devices=(A, B))
    m.p.bind(A)
    group = m.v.vfio_group_get_from_dev(m.p.dev(A))
    assert group is not None
    m.v.vfio_group_put(group)
    before = m.k.slab.allocs
    m.p.bind(B, "pci-stub")  # BIND_DRIVER and BOUND_DRIVER reach the vfio notifier
    from vfio_ref.kernel.workqueue import flush_scheduled_work, system_wq

    flush_scheduled_work(m.k)
    assert system_wq(m.k).workers_started >= 1
    assert m.k.slab.allocs - before == 2  # one vfio_group_put_work per notification
    assert group.kref.kref_read() == 1  # every notifier reference was put back
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


@pytest.mark.parametrize("level", LEVELS)
def test_the_lookup_walks_every_group_on_the_list(level: str) -> None:
    """vfio_group_get_from_iommu finds each of five groups (the list holds them newest first)
    and takes a reference on the one it returns; an iommu group with no vfio group finds none."""
    m = machine(level, review_fixes=level in REVIEW_FIX_LEVELS, devices=())
    names = [f"0000:00:0{i}.0" for i in range(1, 7)]
    for i, name in enumerate(names):
        m.p.add_group(f"g{i + 1}")
        m.p.add_device(name, f"g{i + 1}")
    for name in names[:5]:
        assert m.p.bind(name) == 0
    for name in names:
        ig = iommu_group_get(m.p.dev(name))
        group = m.v.vfio_group_get_from_iommu(ig)
        if name == names[5]:
            assert group is None  # bound to no vfio driver: no group
            continue
        assert group is not None and group.iommu_group is ig
        refs = group.users if level in ("p4", "p5") else group.kref.refcount  # patch 4: a refcount_t
        before = refs.read()
        m.v.vfio_group_put(group)
        assert refs.read() == before - 1
    assert m.k.warnings == []


@pytest.mark.parametrize("level", LEVELS)
def test_a_group_freed_while_listed_faults_the_lookup_that_walks_over_it(level: str) -> None:
    """The group-list walk is written out in the lookup (a hot path); a freed group still on
    vfio.group_list is still caught, in the lookup, at the list node it is reached through."""
    m = machine(level, review_fixes=level in REVIEW_FIX_LEVELS)
    m.p.add_group("g1")
    m.p.add_device(B, "g1")
    assert m.p.bind(A) == 0
    group = m.v.vfio_group_get_from_iommu(iommu_group_get(m.p.dev(A)))
    assert group is not None
    m.v.vfio_group_put(group)
    kfree(m.k, group)  # a buggy free: the group stays listed
    with pytest.raises(UseAfterFree) as uaf:
        m.v.vfio_group_get_from_iommu(iommu_group_get(m.p.dev(B)))
    lookup = "vfio_group_get_from_iommu" if level in ("base", "p1") else "__vfio_group_get_from_iommu"
    assert uaf.value.function == lookup
    assert uaf.value.message.splitlines()[0].startswith(
        f"BUG: KASAN: use-after-free in {lookup}: read of group->vfio_next (struct vfio_group)"
    )
    assert uaf.value.freed.function == "test_a_group_freed_while_listed_faults_the_lookup_that_walks_over_it"  # type: ignore[attr-defined]


class _AccessLog:
    def __init__(self) -> None:
        self.accesses: list[tuple[str, str, bool]] = []

    def access(self, obj: object, field: str, write: bool) -> None:
        self.accesses.append((type(obj).__name__, field, write))


@pytest.mark.parametrize("level", LEVELS)
def test_a_groups_iommu_group_kept_in_a_slot_is_freed_memory_and_watched_like_any_member(level: str) -> None:
    # struct vfio_group keeps iommu_group in a slot (the group-list walk reads it per entry):
    # a read after kfree is still a use-after-free of that member, and the explorer's
    # watched twin still reports the read and the write as a step's accesses.
    from vfio_ref.kernel import slab

    m = machine(level)
    v, k = m.v, m.k
    ig = iommu_group_get(m.p.devices[A])
    cls = v.VfioGroup
    assert "iommu_group" in cls.__slots__
    group = slab.kzalloc(k, cls)
    group.iommu_group = ig
    assert "iommu_group" not in object.__getattribute__(group, "__dict__")  # in the slot
    kfree(k, group)
    with pytest.raises(UseAfterFree) as ei:
        _ = group.iommu_group
    e = ei.value
    assert (e.field, e.access) == ("iommu_group", "read")  # type: ignore[attr-defined]
    assert "read of group->iommu_group (struct vfio_group)" in str(e)

    watched = slab.watched_class(cls)(k)
    log = _AccessLog()
    saved = slab.WATCH.report
    slab.WATCH.report = log
    try:
        watched.iommu_group = ig
        assert watched.iommu_group is ig
    finally:
        slab.WATCH.report = saved
    assert log.accesses == [(cls.__name__, "iommu_group", True), (cls.__name__, "iommu_group", False)]
    iommu_group_put(ig)
