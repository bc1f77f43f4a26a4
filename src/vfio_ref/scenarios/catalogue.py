"""The scenarios every level must run (../shared/DESIGN.md, "Scenarios every level must run").

Each scenario is a function of a :class:`~.harness.ScenarioContext`: it builds the platform
it needs, does its operations (in threads it spawns, for the concurrent ones) and records
what the kernel returned with ``s.observe``.  It never decides a verdict: the harness runs
it under the explorer, tears the platform down, and the checkers say what went wrong.

"In use" means the group file is open and a container is set through it (container_users
> 0).  "A vfio driver" is the platform's vfio-pci stand-in, whose probe calls
vfio_register_group_dev and whose remove calls vfio_unregister_group_dev.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..kernel.cdev import File
from ..kernel.core import CAP_SYS_ADMIN
from .harness import ScenarioContext

ScenarioFn = Callable[[ScenarioContext], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    fn: ScenarioFn
    threads: int = 1  # model threads besides the main one
    noiommu: bool = False


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, summary: str, *, threads: int = 1, noiommu: bool = False
) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(name, summary, fn, threads, noiommu)
        return fn

    return register


A = "0000:00:01.0"
B = "0000:00:01.1"


def _open(s: ScenarioContext, what: str, dev: str = A) -> File | int:
    f = s.platform.open_group(dev)
    s.observe(what, f if isinstance(f, int) else 0)
    return f


@scenario(
    "lifecycle", "one iommu group with one device: bind a vfio driver, open the group file, close it, unbind"
)
def lifecycle(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    if s.observe("bind", p.bind(A)):
        return  # (under fault injection) the probe failed: nothing bound, nothing to open
    f = _open(s, "open")
    if isinstance(f, File):
        p.close(f)
    p.unbind(A)


@scenario(
    "noiommu_lifecycle",
    "a device with no iommu group, unsafe no-IOMMU mode on: bind, open with CAP_SYS_RAWIO, close, unbind",
    noiommu=True,
)
def noiommu_lifecycle(s: ScenarioContext) -> None:
    p = s.platform
    p.add_device(A, iommu=False)
    s.begin()
    s.observe("bind", p.bind(A))
    f = _open(s, "open")
    if isinstance(f, File):
        p.close(f)
    p.unbind(A)


@scenario(
    "noiommu_unprivileged_open",
    "as noiommu_lifecycle, but the open is made without CAP_SYS_RAWIO (-EPERM, reference put back)",
    noiommu=True,
)
def noiommu_unprivileged_open(s: ScenarioContext) -> None:
    p = s.platform
    p.add_device(A, iommu=False)
    s.begin()
    s.observe("bind", p.bind(A))
    with s.kernel.capabilities({CAP_SYS_ADMIN}):
        f = _open(s, "open")
    if isinstance(f, File):
        p.close(f)
    p.unbind(A)


@scenario("double_open", "lifecycle, with a second open while the first is held (-EBUSY)")
def double_open(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    f = _open(s, "open")
    f2 = _open(s, "second_open")
    if isinstance(f2, File):
        p.close(f2)
    if isinstance(f, File):
        p.close(f)
    p.unbind(A)


@scenario("external_user", "the group in use; an external user (KVM) takes and puts its reference; close")
def external_user(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    ext = p.external_user_get(g)
    s.observe("external_user_get", ext.err if hasattr(ext, "err") else 0)
    if not hasattr(ext, "err"):
        p.external_user_put(ext)
    p.close(g)
    p.close(c)
    p.unbind(A)


@scenario(
    "unbalanced_put", "the group in use; a buggy caller puts the group twice without holding a reference"
)
def unbalanced_put(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    group = g.private_data
    s.vfio.vfio_group_put(group)
    s.vfio.vfio_group_put(group)
    p.close(g)
    p.close(c)
    p.unbind(A)


@scenario("live_group_add_device", "the group in use; a second device is added to the same iommu group")
def live_group_add_device(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    p.add_device(B, "g0")
    p.close(g)
    p.close(c)
    p.unbind(A)


@scenario(
    "live_group_bind_foreign_driver",
    "two devices in one group, one bound to a vfio driver, the group in use; a non-vfio driver binds the other",
)
def live_group_bind_foreign_driver(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    p.add_device(B, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    s.observe("bind_foreign", p.bind(B, "e1000e"))
    p.close(g)
    p.close(c)
    p.unbind(B)
    p.unbind(A)


@scenario("create_race", "two devices in one iommu group; a vfio driver binds to both at once", threads=2)
def create_race(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    p.add_device(B, "g0")
    s.begin()
    t1 = s.spawn("T1", lambda: s.observe("bind_A", p.bind(A)))
    t2 = s.spawn("T2", lambda: s.observe("bind_B", p.bind(B)))
    s.join(t1, t2)
    p.unbind(A)
    p.unbind(B)


@scenario(
    "notifier_vs_release",
    "two devices in one group, A bound to vfio; T1 unbinds A (the last group reference) while T2 binds a "
    "non-vfio driver to B and unbinds it",
    threads=2,
)
def notifier_vs_release(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    p.add_device(B, "g0")
    s.begin()
    s.observe("bind", p.bind(A))

    def t2() -> None:
        s.observe("bind_foreign", p.bind(B, "e1000e"))
        p.unbind(B)

    t1 = s.spawn("T1", lambda: p.unbind(A))
    tt2 = s.spawn("T2", t2)
    s.join(t1, tt2)


@scenario(
    "open_vs_last_put",
    "A bound to vfio; T1 opens the group's character device while T2 unbinds A",
    threads=2,
)
def open_vs_last_put(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    devt = p.group_devt(A)

    def opener() -> None:
        f = p.open_devt(devt)
        s.observe("open", f if isinstance(f, int) else 0)
        if isinstance(f, File):
            p.close(f)

    t1 = s.spawn("T1", opener)
    t2 = s.spawn("T2", lambda: p.unbind(A))
    s.join(t1, t2)


@scenario(
    "lookup_vs_last_put",
    "A bound to vfio; T1 binds a vfio driver to B (its registration looks the group up) while T2 unbinds A",
    threads=2,
)
def lookup_vs_last_put(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    p.add_device(B, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    t1 = s.spawn("T1", lambda: s.observe("bind_B", p.bind(B)))
    t2 = s.spawn("T2", lambda: p.unbind(A))
    s.join(t1, t2)
    p.unbind(B)


@scenario(
    "minor_reuse",
    "bind, unbind, bind again: the new group's minor, and opening the old dev_t reaches the new group or fails",
)
def minor_reuse(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    old = p.group_devt(A)
    p.unbind(A)
    s.observe("rebind", p.bind(A))
    new = p.group_devt(A)
    s.observe("minor_reused", int(old == new))
    f = p.open_devt(old)
    s.observe("open_old_devt", f if isinstance(f, int) else 0)
    if isinstance(f, File):
        s.observe("old_devt_reaches_new_group", int(f.private_data is _group_of(s, A)))
        p.close(f)
    p.unbind(A)


@scenario(
    "device_fd_vs_unbind",
    "the group in use and a device fd open; T1 unbinds the device while T2, user space, answers the "
    "driver's request by closing the device fd; then the group fd and the container are closed",
    threads=2,
)
def device_fd_vs_unbind(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    d = p.open_device(g, A)
    s.observe("device_fd", d if isinstance(d, int) else 0)
    if not isinstance(d, File):
        return
    req = p.request_eventfd(d)
    if isinstance(req, int):
        s.observe("request_eventfd", req)
        return

    def user() -> None:
        # user space's request handler: the kernel wants the device back, so let it go
        s.observe("request", p.wait_request(req))
        s.observe("close_device_fd", p.close(d))

    t1 = s.spawn("T1", lambda: p.unbind(A))
    t2 = s.spawn("T2", user)
    s.join(t2)
    # the last device of the group is going: the unbind waits for the group to leave its
    # container, which closing the group fd (its last container user) does
    s.observe("close_group_fd", p.close(g))
    p.close(c)
    s.join(t1)


@scenario(
    "ioctl_vs_close",
    "A bound to vfio, its group fd and a container open; T1 sets the container through the group fd "
    "while T2 closes that fd",
    threads=2,
)
def ioctl_vs_close(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g = _open(s, "open")
    c = p.open_container()
    s.observe("open_container", c if isinstance(c, int) else 0)
    if not isinstance(g, File) or not isinstance(c, File):
        return
    t1 = s.spawn("T1", lambda: s.observe("set_container", p.set_container(g, c)))
    t2 = s.spawn("T2", lambda: s.observe("close", p.close(g)))
    s.join(t1, t2)
    p.close(c)
    p.unbind(A)


@scenario(
    "device_fd_vs_group_close",
    "the group in use and a device fd open (two container users); T1 closes the device fd while T2 "
    "closes the group fd: whichever is last takes the group out of its container",
    threads=2,
)
def device_fd_vs_group_close(s: ScenarioContext) -> None:
    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    d = p.open_device(g, A)
    s.observe("device_fd", d if isinstance(d, int) else 0)
    if not isinstance(d, File):
        return
    t1 = s.spawn("T1", lambda: s.observe("close_device_fd", p.close(d)))
    t2 = s.spawn("T2", lambda: s.observe("close_group_fd", p.close(g)))
    s.join(t1, t2)
    p.close(c)
    p.unbind(A)


@scenario(
    "notifier_left_registered",
    "the group in use; a user of the device registers a group notifier (KVM attaches and detaches) and "
    "never unregisters it: the group file is closed and reopened, then the group goes away with one "
    "still registered",
)
def notifier_left_registered(s: ScenarioContext) -> None:
    from ..vfio.platform import Kvm

    p = s.platform
    p.add_group("g0")
    p.add_device(A, "g0")
    s.begin()
    s.observe("bind", p.bind(A))
    g, c = p.use_group(A)
    s.observe("register", p.register_group_notifier(A))
    ext = p.external_user_get(g)
    s.observe("external_user_get", ext.err if hasattr(ext, "err") else 0)
    if not hasattr(ext, "err"):
        p.set_kvm(ext, Kvm("vm0"))
        p.set_kvm(ext, None)
        p.external_user_put(ext)
    s.observe("heard", len(p.heard(A)))
    # the user of the group closes it; the notifier stays on the group's chain
    p.close(g)
    p.close(c)
    g2, c2 = p.use_group(A)  # the reopen finds the notifier still registered
    s.observe("register_again", p.register_group_notifier(A))
    p.close(g2)
    p.close(c2)
    p.unbind(A)  # the group goes away with the notifier still registered
    s.observe("unregister_after_the_group_went", p.unregister_group_notifier(A))


def _group_of(s: ScenarioContext, dev: str) -> object:
    from ..vfio.platform import _groups_of

    d = s.platform.dev(dev)
    for g in _groups_of(s.vfio):
        if g.iommu_group is d.iommu_group:
            return g
    return None


# fault_sweep is not a body of its own: the harness runs `lifecycle` once per injectable
# failure point, with that point failed (see harness.run_fault_sweep).
FAULT_SWEEP_OF = "lifecycle"
SCENARIO_NAMES: tuple[str, ...] = (
    "lifecycle",
    "noiommu_lifecycle",
    "noiommu_unprivileged_open",
    "double_open",
    "external_user",
    "unbalanced_put",
    "live_group_add_device",
    "live_group_bind_foreign_driver",
    "create_race",
    "notifier_vs_release",
    "open_vs_last_put",
    "lookup_vs_last_put",
    "fault_sweep",
    "minor_reuse",
    "device_fd_vs_unbind",
    "ioctl_vs_close",
    "device_fd_vs_group_close",
    "notifier_left_registered",
)
