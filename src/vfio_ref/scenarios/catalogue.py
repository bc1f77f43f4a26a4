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
)
