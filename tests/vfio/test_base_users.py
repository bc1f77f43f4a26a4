"""vfio.c at the series' base, the parts the series leaves alone: the device fd, and the group's
other users (a transient device reference, the group notifier and KVM, page pinning).

The functions are defined once, in base.py, and every level runs them: each test runs at
every level (patches 3 and 4 with the review fix, since as posted they free every group they
create).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from vfio_ref import LEVELS
from vfio_ref.explorer import Execution, RawFinding, explore
from vfio_ref.kernel import CAP_SYS_ADMIN, Task
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.errno import E2BIG, EBUSY, EINVAL, ENODEV, ENOENT, ENOMEM, EPERM
from vfio_ref.kernel.file import current_files
from vfio_ref.kernel.slab import is_freed
from vfio_ref.scenarios import ScenarioContext
from vfio_ref.scenarios.harness import judge_execution, make_program
from vfio_ref.vfio import REVIEW_FIX_LEVELS
from vfio_ref.vfio.base import (
    VFIO_GROUP_NOTIFY,
    VFIO_GROUP_NOTIFY_SET_KVM,
    VFIO_PIN_PAGES_MAX_ENTRIES,
    EventMask,
    VfioDevice,
    VfioDeviceOps,
)
from vfio_ref.vfio.platform import Kvm

from .machine import A, B, Machine, machine


def booted(level: str, **opts: Any) -> Machine:
    return machine(level, review_fixes=level in REVIEW_FIX_LEVELS, **opts)


def recording_ops(m: Machine, log: list[str], *, open_ret: int = 0) -> None:
    """Make the vfio-pci stand-in record ->open_device / ->close_device (before binding)."""
    base = m.p.vfio_pci_ops

    def open_device(dev: VfioDevice) -> int:
        log.append("open_device")
        return open_ret

    def close_device(dev: VfioDevice) -> None:
        log.append("close_device")
        assert base.close_device is not None
        base.close_device(dev)

    m.p.vfio_pci_ops = VfioDeviceOps(
        "vfio-pci", open_device=open_device, close_device=close_device, ioctl=base.ioctl, request=base.request
    )


def vdev_of(m: Machine, dev: str = A) -> VfioDevice:
    vdev: VfioDevice = m.p.dev(dev).driver_data.vdev
    return vdev


def clean(m: Machine) -> None:
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == [] and m.k.faults == [] and m.k.lockdep_reports == []


# -- the device fd --------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_a_device_fd_holds_a_container_user_and_a_device_reference(level: str) -> None:
    m = booted(level)
    log: list[str] = []
    recording_ops(m, log)
    assert m.p.bind(A) == 0
    g, _c = m.p.use_group(A)
    group, vdev = g.private_data, vdev_of(m)
    d = m.p.open_device(g, A)
    assert isinstance(d, File)
    assert d.f_op is m.v.vfio_device_fops and d.private_data is vdev
    assert current_files(m.k).lookup_fd_raw(m.p.fd(d)) is d  # installed at the descriptor returned
    assert group.container_users.atomic_read() == 2
    assert vdev.refcount.refcount_read() == 2 and vdev.open_count == 1
    assert log == ["open_device"]
    assert m.p.close(d) == 0
    assert group.container_users.atomic_read() == 1
    assert vdev.refcount.refcount_read() == 1 and vdev.open_count == 0
    assert log == ["open_device", "close_device"]
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_open_device_runs_for_the_first_open_and_close_device_for_the_last(level: str) -> None:
    m = booted(level)
    log: list[str] = []
    recording_ops(m, log)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    d1, d2 = m.p.open_device(g, A), m.p.open_device(g, A)
    assert isinstance(d1, File) and isinstance(d2, File) and d1 is not d2
    assert vdev_of(m).open_count == 2 and g.private_data.container_users.atomic_read() == 3
    m.p.close(d1)
    assert log == ["open_device"]
    m.p.close(d2)
    assert log == ["open_device", "close_device"]
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_get_device_fd_needs_a_container_with_an_iommu_and_a_known_name(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g = m.p.open_group(A)
    assert isinstance(g, File)
    assert m.p.open_device(g, A) == -EINVAL  # no container user
    c = m.p.open_container()
    assert m.p.set_container(g, c) == 0
    assert m.p.open_device(g, A) == -EINVAL  # no IOMMU driver set on the container
    assert m.p.register_type1() == 0 and m.p.set_iommu(c) == 0
    assert m.p.open_device(g, "0000:00:1f.0") == -ENODEV  # no such device in the group
    vdev = vdev_of(m)
    assert vdev.refcount.refcount_read() == 1 and vdev.open_count == 0
    assert g.private_data.container_users.atomic_read() == 1
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_noiommu_device_fd_needs_cap_sys_rawio(level: str) -> None:
    m = booted(level, noiommu=True)
    assert m.p.bind(A) == 0
    g, _c = m.p.use_group(A)
    with m.k.capabilities({CAP_SYS_ADMIN}):
        assert m.p.open_device(g, A) == -EPERM
    d = m.p.open_device(g, A)
    assert isinstance(d, File)
    assert any("vfio-noiommu device opened by user" in line for line in m.k.log)
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_failing_open_device_gives_everything_back(level: str) -> None:
    m = booted(level)
    log: list[str] = []
    recording_ops(m, log, open_ret=-ENOMEM)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    assert m.p.open_device(g, A) == -ENOMEM
    vdev = vdev_of(m)
    assert log == ["open_device"]  # err_undo_count: no close_device
    assert vdev.open_count == 0 and vdev.refcount.refcount_read() == 1
    assert g.private_data.container_users.atomic_read() == 1
    assert current_files(m.k).installed() == [m.p.fd(g), m.p.fd(_c)]
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_failing_anon_inode_file_closes_the_device_and_gives_the_descriptor_back(level: str) -> None:
    m = booted(level)
    log: list[str] = []
    recording_ops(m, log)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    m.k.fault_inject.fail("anon_inode_getfile@vfio_group_get_device_fd", nth=1)
    assert m.p.open_device(g, A) == -ENOMEM
    assert log == ["open_device", "close_device"]  # err_fd, err_close_device
    vdev = vdev_of(m)
    assert vdev.open_count == 0 and vdev.refcount.refcount_read() == 1
    d = m.p.open_device(g, A)
    assert isinstance(d, File) and m.p.fd(d) == 2  # the descriptor was put back
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_device_without_a_device_set_oopses_when_its_fd_is_opened(level: str) -> None:
    """__vfio_register_dev ignores vfio_assign_device_set()'s failure; the device fd then
    dereferences the NULL dev_set (a 5.15 bug the fault sweep can reach)."""
    from vfio_ref.kernel import KernelBug

    m = booted(level)
    m.k.fault_inject.fail("kzalloc@vfio_assign_device_set", nth=1)
    assert m.p.bind(A) == 0
    assert vdev_of(m).dev_set is None
    g, _c = m.p.use_group(A)
    with pytest.raises(KernelBug, match=r"NULL pointer dereference in vfio_group_get_device_fd: device->dev_set"):
        m.p.open_device(g, A)
    assert m.k.oopsed and len(m.k.faults) == 1


@pytest.mark.parametrize("level", LEVELS)
def test_the_last_container_user_to_go_takes_the_group_out_of_its_container(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    group, container = g.private_data, c.private_data
    d = m.p.open_device(g, A)
    assert container.kref.kref_read() == 2  # the container fd and the group
    m.p.close(g)  # the group fd goes first: the device fd still uses the container
    assert group.container is container and group.container_users.atomic_read() == 1
    m.p.close(d)
    assert group.container is None and group.container_users.atomic_read() == 0
    assert container.kref.kref_read() == 1
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_group_with_a_device_fd_open_cannot_be_reopened_until_it_is_closed(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    d = m.p.open_device(g, A)
    m.p.close(g)
    m.p.close(c)
    assert m.p.open_group(A) == -EBUSY  # the device fd keeps the group in its container
    m.p.close(d)
    g2 = m.p.open_group(A)
    assert isinstance(g2, File)
    clean(m)


def _wait_blocked_on(task_box: list[Task], obj: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not task_box or task_box[0].waiting_for is not obj:
        assert time.monotonic() < deadline, "the task never blocked"
        time.sleep(0.001)


@pytest.mark.parametrize("level", LEVELS)
def test_unbind_asks_user_space_for_the_device_and_waits_for_its_last_reference(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    d = m.p.open_device(g, A)
    assert isinstance(d, File)
    req = m.p.request_eventfd(d)
    assert not isinstance(req, int)
    got: list[int] = []

    def user() -> None:
        got.append(m.p.wait_request(req))  # the unbind's request wakes us
        assert vdev_of(m).refcount.refcount_read() == 1  # only our device fd holds it now
        m.p.close(d)
        m.p.close(g)  # the last device leaves: unregister waits for the container to go
        m.p.close(c)

    assert m.k.run_threads(lambda: m.p.unbind(A), user) == []
    assert got == [1]
    assert f"{A}: Relaying device request to user (#0)" in m.k.log
    assert m.p.dev(A).driver is None
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_without_a_request_channel_unbind_waits_until_the_user_lets_go(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    d = m.p.open_device(g, A)
    vdev = vdev_of(m)
    unbinder: list[Task] = []

    def unbind() -> None:
        unbinder.append(m.k.current())
        m.p.unbind(A)

    def user() -> None:
        _wait_blocked_on(unbinder, vdev.comp.wait)  # asked once, then waiting
        assert f"{A}: No device request channel registered, blocked until released by user" in m.k.log
        m.p.close(d)
        m.p.close(g)
        m.p.close(c)

    assert m.k.run_threads(unbind, user) == []
    clean(m)


# -- the device fd's ioctl and the request channel ---------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_the_device_fds_ioctl_goes_to_the_driver_and_close_drops_the_request_channel(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    d = m.p.open_device(g, A)
    assert m.p.ioctl(d, "VFIO_DEVICE_GET_INFO") == -25  # the stand-in answers -ENOTTY
    req = m.p.request_eventfd(d)
    pci = m.p.dev(A).driver_data
    assert pci.req_trigger is req
    m.p.close(d)  # the last close: vfio_pci's close_device drops the trigger
    assert pci.req_trigger is None
    clean(m)


# -- a transient device reference ------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_vfio_device_get_from_dev_takes_a_device_reference_and_leaves_the_group_as_it_was(level: str) -> None:
    m = booted(level, devices=(A, B))
    m.p.bind(A)
    vdev = vdev_of(m)
    group = vdev.group
    users = group.kref.kref_read() if hasattr(group, "kref") else group.users.refcount_read()
    got = m.p.device_get_from_dev(A)
    assert got is vdev and vdev.refcount.refcount_read() == 2
    after = group.kref.kref_read() if hasattr(group, "kref") else group.users.refcount_read()
    assert after == users  # the lookup's group reference was put again
    m.p.device_put(vdev)
    assert vdev.refcount.refcount_read() == 1
    assert m.p.device_get_from_dev(B) is None  # in the group, but not a vfio device
    clean(m)


# -- the group notifier and KVM ------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_a_group_notifier_needs_a_container_user_and_hears_kvm_come_and_go(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g = m.p.open_group(A)
    assert m.p.register_group_notifier(A) == -EINVAL  # no container: no container user
    c = m.p.open_container()
    m.p.set_container(g, c)
    m.p.register_type1()
    m.p.set_iommu(c)
    assert m.p.register_group_notifier(A, events=VFIO_GROUP_NOTIFY_SET_KVM | 2) == -EINVAL  # unknown event
    assert m.p.register_group_notifier(A) == 0
    group = g.private_data
    assert group.notifier.head is m.p.notifier_users[A].nb
    assert group.container_users.atomic_read() == 1  # the registration's user was transient
    ext = m.p.external_user_get(g)
    vm = Kvm("vm0")
    m.p.set_kvm(ext, vm)
    m.p.set_kvm(ext, None)
    assert m.p.heard(A) == [(VFIO_GROUP_NOTIFY_SET_KVM, vm), (VFIO_GROUP_NOTIFY_SET_KVM, None)]
    assert m.p.unregister_group_notifier(A) == 0
    assert group.notifier.head is None
    m.p.external_user_put(ext)
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_notifier_registered_after_kvm_attached_hears_it_replayed(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, _c = m.p.use_group(A)
    ext = m.p.external_user_get(g)
    vm = Kvm("vm0")
    m.p.set_kvm(ext, vm)  # nobody listens yet
    assert m.p.register_group_notifier(A) == 0
    assert m.p.heard(A) == [(VFIO_GROUP_NOTIFY_SET_KVM, vm)]
    m.p.set_kvm(ext, None)
    m.p.unregister_group_notifier(A)
    m.p.external_user_put(ext)
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_a_notifier_left_registered_warns_at_the_next_open(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    assert m.p.register_group_notifier(A) == 0
    m.p.close(g)
    m.p.close(c)
    assert m.p.unregister_group_notifier(A) == -EINVAL  # too late: nobody uses the container
    g2 = m.p.open_group(A)
    assert isinstance(g2, File)
    assert m.warnings() == [("vfio_group_fops_open", "group->notifier.head")]
    assert g2.private_data.notifier.head is None  # re-initialised: the notifier is dropped
    m.p.close(g2)
    m.p.teardown()
    assert m.warnings() == [("vfio_group_fops_open", "group->notifier.head")]
    assert m.k.leaks() == [] and m.k.faults == []


@pytest.mark.parametrize("level", LEVELS)
def test_a_notifier_left_registered_warns_when_the_group_goes(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    g, c = m.p.use_group(A)
    assert m.p.register_group_notifier(A) == 0
    m.p.close(g)
    m.p.close(c)
    m.p.unbind(A)  # the last reference: the group goes with the notifier on its chain
    from vfio_ref.kernel.workqueue import flush_scheduled_work

    flush_scheduled_work(m.k)  # the base's deferred puts
    where = "vfio_group_put" if level in ("p4", "p5") else "vfio_group_release"
    assert m.warnings() == [(where, "group->notifier.head")]
    assert m.p.unregister_group_notifier(A) == -ENODEV  # no group for the device any more
    m.p.teardown()
    assert m.k.leaks() == [] and m.k.faults == []


# -- pinning pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_pin_pages_holds_the_group_and_a_container_user_only_for_the_call(level: str) -> None:
    m = booted(level, devices=(A, B))
    m.p.bind(A)
    assert m.p.pin_pages(A) == -EINVAL  # no container user
    g, _c = m.p.use_group(A)
    group = g.private_data
    assert m.p.pin_pages(A, 4) == 4 and m.p.unpin_pages(A, 4) == 4
    assert m.p.pin_pages(A, VFIO_PIN_PAGES_MAX_ENTRIES + 1) == -E2BIG
    assert group.container_users.atomic_read() == 1
    assert m.p.bind(B) == 0
    assert m.p.pin_pages(A) == -EINVAL  # pinning is for a group of one device
    assert m.v.vfio_pin_pages(None, [0], 1, 0, [0]) == -EINVAL
    clean(m)


@pytest.mark.parametrize("level", LEVELS)
def test_register_notifier_for_a_device_without_a_group_is_enodev(level: str) -> None:
    m = booted(level)
    assert m.p.register_group_notifier(A) == -ENODEV
    assert m.p.pin_pages(A) == -ENODEV and m.p.unpin_pages(A) == -ENODEV
    assert m.v.vfio_register_notifier(m.p.dev(A), VFIO_GROUP_NOTIFY, EventMask(0), None) == -EINVAL
    clean(m)


# -- a transient user can make the last put (patch 4 and 5 run the teardown in its context) ----


def _transient_vs_unbind(user: str) -> Any:
    def body(s: ScenarioContext) -> None:
        p = s.platform
        p.add_group("g0")
        p.add_device(A, "g0")
        s.begin()
        assert p.bind(A) == 0
        group = p.dev(A).driver_data.vdev.group
        s.kernel.state["test:group"] = group
        g, c = p.use_group(A)

        def transient() -> None:
            if user == "device_get_from_dev":
                dev = p.device_get_from_dev(A)
                if dev is not None:
                    p.device_put(dev)
            elif user == "pin_pages":
                p.pin_pages(A)
            else:  # an event the group notifier does not know: refused after the group get
                p.register_group_notifier(A, events=1 << 5)

        def unbind() -> None:
            p.close(g)
            p.close(c)
            p.unbind(A)

        t1, t2 = s.spawn("T1", transient), s.spawn("T2", unbind)
        s.join(t1, t2)

    return body


@pytest.mark.parametrize("user", ["device_get_from_dev", "register_notifier"])
@pytest.mark.parametrize("level", ["p4", "p5"])
def test_a_transient_user_of_the_group_can_make_its_last_put(level: str, user: str) -> None:
    """T1 takes and drops a group reference (vfio_group_get_from_dev ... vfio_group_put)
    while T2 closes the group and unbinds its device: in some interleavings T1's put is the
    last, and the whole teardown (cdev_device_del at patch 5, the group's free) runs in T1."""
    freed_by: set[str] = set()

    def judge(exe: Execution) -> list[RawFinding]:
        group = exe.kernel.state.get("test:group")
        if group is not None and is_freed(group):
            freed_by.add(object.__getattribute__(group, "_poison").thread)
        return list(judge_execution(exe))

    program = make_program(_transient_vs_unbind(user), level, review_fixes=level == "p4", ablation=None, noiommu=False)
    ex = explore(program, judge, bound=2, traces=False)
    assert ex.clean and ex.stats.exhausted, [f.detail for f in ex.findings]
    assert freed_by == {"T1", "T2"}


@pytest.mark.parametrize("level", LEVELS)
def test_a_container_user_refused_while_the_last_other_one_leaves_strands_the_group(level: str) -> None:
    """A 5.15/5.16 race the explorer finds: vfio_pin_pages' vfio_group_add_container_user
    takes a container user, then finds the group not viable (the device being unbound is
    neither on the unbound list yet nor still gettable, the window vfio_dev_viable leaves)
    and undoes its user with a plain atomic_dec.  If the group fd's close took the other
    user in between, container_users ends at 0 without __vfio_group_unset_container: the
    group stays in its container and vfio_unregister_group_dev waits for it forever."""
    stranded: list[tuple[int, bool]] = []

    def judge(exe: Execution) -> list[RawFinding]:
        found = list(judge_execution(exe))
        group = exe.kernel.state.get("test:group")
        if exe.deadlock is not None and group is not None:
            stranded.append((group.container_users.counter, group.__dict__.get("_shared_container") is not None))
        return found

    program = make_program(
        _transient_vs_unbind("pin_pages"), level, review_fixes=level in REVIEW_FIX_LEVELS, ablation=None, noiommu=False
    )
    # One preemption is enough to strand it; at the base (its kworker is a third thread)
    # two preemptions are 16,000 schedules.
    ex = explore(program, judge, bound=1, traces=False)
    assert ex.stats.exhausted
    assert ex.kinds() == ["deadlock"]
    detail = ex.findings[0].detail
    assert "T2: blocked in wait_event(&group->container_q)" in detail
    assert "vfio_unregister_group_dev" in detail
    assert stranded and set(stranded) == {(0, True)}  # no container user, still in the container


# -- reopening a node whose inode cached the cdev ------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_reopening_a_node_goes_through_the_cached_cdev(level: str) -> None:
    m = booted(level)
    m.p.bind(A)
    devt = m.p.group_devt(A)
    f = m.p.open_devt(devt)
    assert isinstance(f, File)
    inode = f.f_inode
    assert inode.i_cdev is not None  # cached by the first open
    m.p.close(f)
    f2 = m.p.open_devt(devt)
    assert isinstance(f2, File) and f2.f_inode is inode
    clean(m)


def test_a_new_node_is_enoent_once_the_group_is_gone() -> None:
    m = booted("p5")
    m.p.bind(A)
    m.p.unbind(A)
    assert m.p.open_group(A) == -ENOENT  # devtmpfs removed /dev/vfio/0 with the device
    clean(m)
