"""A reusable operation-sequence driver: run user-visible VFIO operations on a level and
check every step against an independent oracle of what the kernel must do.

A *sequence* is a list of steps, each a plain tuple (so a failing sequence can be pasted
back into :func:`replay`)::

    ("add_group", "g0")              the platform creates iommu group g0
    ("add_device", "d3", "g0")       a PCI device joins iommu group g0
    ("remove_device", "d3")          it is unplugged (its driver, if any, is unbound first)
    ("bind", "d0", "vfio-pci")       bind a driver: "vfio-pci", "e1000e" (non-vfio), "pci-stub"
    ("unbind", "d0")
    ("open", "d0")                   open /dev/vfio/N of d0's group        -> file f<k>
    ("open_minor", 3)                open the group node with minor 3       -> file f<k>
    ("close", "f0")
    ("open_container",)              open /dev/vfio/vfio                    -> container c<k>
    ("close_container", "c0")
    ("set_container", "f0", "c0")    VFIO_GROUP_SET_CONTAINER
    ("set_iommu", "c0")              VFIO_SET_IOMMU (type1)
    ("unset_container", "f0")        VFIO_GROUP_UNSET_CONTAINER
    ("ext_get", "f0")                vfio_group_get_external_user (KVM)    -> external user e<k>
    ("ext_put", "e0")

Labels are numbered in the order the opens and gets succeed, the same way by the oracle and
by the run, so a sequence means the same thing on every level.

:class:`Oracle` is the specification: a small state machine of the holders a vfio_group
has (vfio-bound devices, open group files, external users), its container, its minor and
the WARNs the kernel prints, written from the kernel's rules and not from the model.  It is
level-independent except where the series changes user-visible behaviour on purpose (named
where it happens).  :class:`Run` executes a sequence on a freshly booted level and, after
every step, compares the kernel's return code with the oracle's and checks the invariants
(:meth:`Run.check_state`).  A failure raises :class:`SequenceFailure`, whose message ends with
the ``ops.replay(...)`` call that reproduces it.

Fault injection: ``replay(..., fail_nth=N)`` fails the Nth injectable call counted from the
first step, ``failures=[(point, nth), ...]`` fails named points; the oracle then expects the
kernel's error handling at that point (-ENOMEM from the failed operation, which changes
nothing else; see ``WARN_ONLY_POINTS`` and ``IGNORED_POINTS`` for the exceptions).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.core import Kernel
from vfio_ref.kernel.device import MAJOR, MINOR, MKDEV, dev_name
from vfio_ref.kernel.errno import EBUSY, EINVAL, ENODEV, ENOENT, ENOMEM, ENXIO, IS_ERR, PTR_ERR, errno_name
from vfio_ref.kernel.fault import FaultPoint
from vfio_ref.kernel.shared import list_for_each_entry
from vfio_ref.kernel.slab import is_freed
from vfio_ref.kernel.workqueue import flush_scheduled_work, system_wq
from vfio_ref.vfio import boot
from vfio_ref.vfio.base import VfioBase
from vfio_ref.vfio.platform import Platform

Step = tuple[Any, ...]

VFIO_PCI = "vfio-pci"
FOREIGN = "e1000e"  # a non-vfio driver that is neither pci-stub nor a bridge
PCI_STUB = "pci-stub"
DRIVERS = (VFIO_PCI, FOREIGN, PCI_STUB)

OPS = (
    "add_group",
    "add_device",
    "remove_device",
    "bind",
    "unbind",
    "open",
    "open_minor",
    "close",
    "open_container",
    "close_container",
    "set_container",
    "set_iommu",
    "unset_container",
    "ext_get",
    "ext_put",
)

# The machine every random sequence starts from: two iommu groups, two devices in g0, one in g1.
SETUP: tuple[Step, ...] = (
    ("add_group", "g0"),
    ("add_device", "d0", "g0"),
    ("add_device", "d1", "g0"),
    ("add_group", "g1"),
    ("add_device", "d2", "g1"),
)

# The WARNs a legal sequence can make the kernel print (function, message).
LIVE_GROUP_WARN = ("vfio_group_nb_add_dev", "Device added to live group %d!")
UNBOUND_WARN = ("vfio_unregister_group_dev", "!unbound")

# What an injected failure does to the operation it fires in -- the kernel's error handling
# at that site.  Every injectable point fails with -ENOMEM; these are the exceptions:
#  * vfio_unregister_group_dev cannot fail: without its vfio_unbound_dev it WARNs and goes on;
#  * __vfio_register_dev ignores vfio_assign_device_set()'s result (the device simply gets
#    no device set);
#  * vfio_noiommu_group_alloc ignores iommu_group_set_name()'s result (the fake group stays
#    unnamed).
WARN_ONLY_POINTS = {"kzalloc@vfio_unregister_group_dev": UNBOUND_WARN}
IGNORED_POINTS = frozenset({"kzalloc@vfio_assign_device_set", "iommu_group_set_name@vfio_noiommu_group_alloc"})
# Injected failures after which the kernel oopses: a 5.15/5.16 bug the failure exposes, with
# the start of the fault's message.  __vfio_register_dev ignores vfio_assign_device_set()'s
# failure, so the device has no device set, and opening its device fd dereferences it.
OOPS_POINTS: dict[str, str] = {
    "kzalloc@vfio_assign_device_set": "BUG: kernel NULL pointer dereference in vfio_group_get_device_fd",
}
# Points of building the machine, which is not what the oracle specifies: adding an iommu
# group or a device (the platform raises ModelUsageError when they fail), and registering
# the type1 IOMMU driver (module loading: when it fails, SET_IOMMU finds no driver, -ENODEV).
PLATFORM_OPS = ("add_group", "add_device")
PLATFORM_POINTS_PREFIXES = (
    "kzalloc@bus_add_device",
    "dev_set_name@bus_add_device",
    "device_add@bus_add_device",
    "kzalloc@iommu_group_add_device",
    "kzalloc@iommu_group_alloc",
    "ida_alloc@iommu_group_alloc",
    "kzalloc@vfio_register_iommu_driver",
)
# Known gaps of the platform (not of vfio.c), each with a test marked xfail; sweeps leave
# these points out.  (Empty since the type1 stand-in fails its open with ERR_PTR(-ENOMEM).)
KNOWN_GAPS: dict[str, str] = {}
# Operations whose kernel path has an injectable failure that fails the operation.
FALLIBLE = frozenset({"bind", "open_container", "set_iommu"})


class SequenceFailure(AssertionError):
    """A step went wrong; the message ends with the replay call that reproduces it.

    ``where`` says which step (or the teardown), ``replay`` is the call to paste, and the
    original error is the exception's ``__cause__``.
    """

    def __init__(self, message: str, *, where: str = "", replay: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.replay = replay


class Blocked(Exception):
    """The oracle says this step must not be run (it would BUG or wait forever)."""


# --------------------------------------------------------------------------------------
# The oracle


@dataclass
class DevState:
    group: str
    driver: str | None = None


@dataclass
class GroupState:
    """The oracle's vfio_group of one iommu group."""

    minor: int
    file: str | None = None
    externals: set[str] = field(default_factory=set)
    container: str | None = None
    container_users: int = 0


@dataclass
class ContainerState:
    file_open: bool = True
    groups: set[str] = field(default_factory=set)
    iommu: bool = False


class Oracle:
    """What the kernel must answer and hold, step by step (see the module docstring).

    ``prefix`` names this oracle's devices (so several can share a kernel), ``minors=False``
    leaves minors out of it (they are global: with other users of the kernel, this oracle
    cannot know them), ``max_devices`` bounds how many devices are present at once.
    """

    def __init__(self, level: str, *, prefix: str = "", minors: bool = True, max_devices: int = 4) -> None:
        self.level = level
        self.prefix = prefix
        self.track_minors = minors
        self.max_devices = max_devices
        self.iommu_groups: dict[str, list[str]] = {}
        self.group_ids: dict[str, int] = {}
        self.devices: dict[str, DevState] = {}
        self.vgroups: dict[str, GroupState] = {}
        self.files: dict[str, str] = {}  # label -> iommu group name
        self.containers: dict[str, ContainerState] = {}  # alive: file open or groups attached
        self.externals: dict[str, str] = {}  # label -> iommu group name
        self.warnings: list[tuple[str, str]] = []
        self.minors_seen: set[int] = set()
        self.n_devices = 0
        self.n_files = 0
        self.n_containers = 0
        self.n_externals = 0

    # -- derived state -----------------------------------------------------------------

    def vfio_devices(self, g: str) -> list[str]:
        return [d for d in self.iommu_groups[g] if self.devices[d].driver == VFIO_PCI]

    def holders(self, g: str) -> int:
        """Who holds a reference on g's vfio_group: its vfio-bound devices (each registered
        vfio_device), its open group file, its external users."""
        vg = self.vgroups[g]
        return len(self.vfio_devices(g)) + (vg.file is not None) + len(vg.externals)

    def in_use(self, g: str) -> bool:
        vg = self.vgroups.get(g)
        return vg is not None and vg.container_users > 0

    def viable(self, g: str) -> bool:
        """Every device driver-less, bound to vfio, or bound to an allowed driver (pci-stub)."""
        return all(self.devices[d].driver in (None, VFIO_PCI, PCI_STUB) for d in self.iommu_groups[g])

    def _free_minor(self) -> int:
        used = {vg.minor for vg in self.vgroups.values()}
        m = 0
        while m in used:
            m += 1
        return m

    # -- what may run -------------------------------------------------------------------

    def blocked(self, step: Step) -> str | None:
        """Why ``step`` must not run now (it names something that is not there, would hit
        the known BUG_ON, or would wait forever), or None."""
        op, *a = step
        if op == "add_group":
            return f"iommu group {a[0]} exists" if a[0] in self.iommu_groups else None
        if op == "add_device":
            if a[0] in self.devices:
                return f"device {a[0]} exists"
            return None if a[1] in self.iommu_groups else f"no iommu group {a[1]}"
        if op in ("remove_device", "bind", "unbind", "open") and a[0] not in self.devices:
            return f"no device {a[0]}"
        if (
            op == "bind"
            and a[1] == FOREIGN
            and self.devices[a[0]].driver is None
            and self.in_use(self.devices[a[0]].group)
        ):
            return "a non-vfio driver binding in a group in use hits BUG_ON(vfio_group_nb_verify()) (known, by design)"
        if op in ("unbind", "remove_device"):
            d = self.devices[a[0]]
            vg = self.vgroups.get(d.group)
            if (
                d.driver == VFIO_PCI
                and vg is not None
                and vg.container is not None
                and len(self.vfio_devices(d.group)) == 1
            ):
                return "unbinding the last vfio device of a group with a container waits for the container to go"
        if op in ("close", "set_container", "unset_container", "ext_get") and a[0] not in self.files:
            return f"{a[0]} is not an open group file"
        if op == "set_container" and not self._container_open(a[1]):
            return f"{a[1]} is not an open container file"
        if op in ("close_container", "set_iommu") and not self._container_open(a[0]):
            return f"{a[0]} is not an open container file"
        if op == "ext_put" and a[0] not in self.externals:
            return f"{a[0]} is not an external user"
        if op not in OPS:
            return f"unknown op {op!r}: the ops are {', '.join(OPS)}"
        return None

    def _container_open(self, c: str) -> bool:
        cs = self.containers.get(c)
        return cs is not None and cs.file_open

    def candidates(self, op: str | None = None) -> list[Step]:
        """Every step (of kind ``op``, or any) that may run now, in a stable order."""
        devs = sorted(self.devices)
        files = sorted(self.files)
        conts = sorted(c for c, cs in self.containers.items() if cs.file_open)
        out: list[Step] = []
        if len(self.devices) < self.max_devices:
            new = f"{self.prefix}d{self.n_devices}"
            out += [("add_device", new, g) for g in sorted(self.iommu_groups)]
        out += [("remove_device", d) for d in devs]
        out += [("bind", d, drv) for d in devs for drv in DRIVERS]
        out += [("unbind", d) for d in devs]
        out += [("open", d) for d in devs]
        if self.track_minors:
            seen = sorted(self.minors_seen)
            out += [("open_minor", m) for m in [*seen, (seen[-1] + 1 if seen else 0)]]
        out += [("close", f) for f in files]
        if len(conts) < 2:
            out.append(("open_container",))
        out += [("close_container", c) for c in conts]
        out += [("set_container", f, c) for f in files for c in conts]
        out += [("set_iommu", c) for c in conts]
        out += [("unset_container", f) for f in files]
        out += [("ext_get", f) for f in files]
        out += [("ext_put", e) for e in sorted(self.externals)]
        return [s for s in out if (op is None or s[0] == op) and self.blocked(s) is None]

    def promising(self, step: Step) -> bool:
        """Whether ``step`` would get somewhere (succeed): random sequences prefer these,
        so that they reach groups in use, with containers and external users."""
        op, *a = step
        if op == "bind":
            return a[1] == VFIO_PCI and self.devices[a[0]].driver is None
        if op == "open":
            vg = self.vgroups.get(self.devices[a[0]].group)
            return vg is not None and vg.file is None and vg.container is None
        if op == "open_minor":
            return any(vg.minor == a[0] for vg in self.vgroups.values())
        if op == "set_container":
            return self.vgroups[self.files[a[0]]].container_users == 0
        if op == "set_iommu":
            cs = self.containers[a[0]]
            return bool(cs.groups) and not cs.iommu
        if op == "unset_container":
            return self.vgroups[self.files[a[0]]].container_users == 1
        if op == "ext_get":
            g = self.files[a[0]]
            vg = self.vgroups[g]
            return vg.container is not None and self.containers[vg.container].iommu and self.viable(g)
        return True

    # -- what happens -------------------------------------------------------------------

    def apply(self, step: Step, injected: Sequence[str] = ()) -> int:
        """Advance the state by ``step`` and return what the kernel must return.

        ``injected`` names the fault points that fired during the step: a failing one makes
        the operation fail with -ENOMEM and change nothing; a WARN-only one adds its WARN.
        """
        why = self.blocked(step)
        if why is not None:
            raise Blocked(f"{step!r}: {why}")
        warns = [WARN_ONLY_POINTS[p] for p in injected if p in WARN_ONLY_POINTS]
        failing = [p for p in injected if p not in WARN_ONLY_POINTS and p not in IGNORED_POINTS]
        if failing:
            if step[0] not in FALLIBLE:
                raise AssertionError(f"injected failure {failing} during {step!r}: the oracle knows no error path here")
            self.warnings += warns
            return -ENOMEM
        ret = getattr(self, f"_{step[0]}")(*step[1:])
        self.warnings += warns
        return int(ret)

    def _add_group(self, g: str) -> int:
        self.iommu_groups[g] = []
        self.group_ids[g] = len(self.group_ids)
        return 0

    def _add_device(self, d: str, g: str) -> int:
        self.n_devices += 1
        self.devices[d] = DevState(g)
        self.iommu_groups[g].append(d)
        if self.in_use(g):
            fn, msg = LIVE_GROUP_WARN
            self.warnings.append((fn, msg % self.group_ids[g]))
        return 0

    def _remove_device(self, d: str) -> int:
        self._unbind(d)
        self.iommu_groups[self.devices[d].group].remove(d)
        del self.devices[d]
        return 0

    def _bind(self, d: str, drv: str) -> int:
        dev = self.devices[d]
        if dev.driver is not None:
            return -EBUSY
        if drv == VFIO_PCI and dev.group not in self.vgroups:
            minor = self._free_minor()
            self.vgroups[dev.group] = GroupState(minor)
            self.minors_seen.add(minor)
        dev.driver = drv
        return 0

    def _unbind(self, d: str) -> int:
        dev = self.devices[d]
        was = dev.driver
        dev.driver = None
        if was == VFIO_PCI:
            self._maybe_release(dev.group)
        return 0

    def _open_group(self, g: str) -> int:
        vg = self.vgroups[g]
        if vg.file is not None or vg.container is not None:
            return -EBUSY
        vg.file = f"f{self.n_files}"
        self.n_files += 1
        self.files[vg.file] = g
        return 0

    def _open(self, d: str) -> int:
        g = self.devices[d].group
        if g not in self.vgroups:
            return -ENOENT  # no /dev/vfio/N to open
        return self._open_group(g)

    def _open_minor(self, minor: int) -> int:
        for g, vg in self.vgroups.items():
            if vg.minor == minor:
                return self._open_group(g)
        # Deliberate change in patch 5: up to patch 4 one cdev spans every minor, so the open
        # reaches vfio_group_fops_open, whose minor lookup fails (-ENODEV); from patch 5 each
        # group has its own cdev and nothing is mapped at a stale minor (chrdev_open: -ENXIO).
        return -ENXIO if self.level == "p5" else -ENODEV

    def _close(self, f: str) -> int:
        g = self.files.pop(f)
        vg = self.vgroups[g]
        self._dissolve(g)
        vg.file = None
        self._maybe_release(g)
        return 0

    def _open_container(self) -> int:
        self.containers[f"c{self.n_containers}"] = ContainerState()
        self.n_containers += 1
        return 0

    def _close_container(self, c: str) -> int:
        self.containers[c].file_open = False
        self._maybe_free_container(c)
        return 0

    def _set_container(self, f: str, c: str) -> int:
        g = self.files[f]
        vg = self.vgroups[g]
        if vg.container_users:
            return -EINVAL
        vg.container = c
        vg.container_users = 1
        self.containers[c].groups.add(g)
        return 0

    def _set_iommu(self, c: str) -> int:
        cs = self.containers[c]
        if not cs.groups or cs.iommu:
            return -EINVAL
        cs.iommu = True
        return 0

    def _unset_container(self, f: str) -> int:
        g = self.files[f]
        vg = self.vgroups[g]
        if vg.container_users == 0:
            return -EINVAL
        if vg.container_users > 1:
            return -EBUSY
        vg.container_users = 0
        self._detach(g)
        return 0

    def _ext_get(self, f: str) -> int:
        g = self.files[f]
        vg = self.vgroups[g]
        if vg.container_users == 0:
            return -EINVAL
        assert vg.container is not None
        if not self.containers[vg.container].iommu or not self.viable(g):
            return -EINVAL
        vg.container_users += 1
        e = f"e{self.n_externals}"
        self.n_externals += 1
        self.externals[e] = g
        vg.externals.add(e)
        return 0

    def _ext_put(self, e: str) -> int:
        g = self.externals.pop(e)
        self.vgroups[g].externals.remove(e)
        self._dissolve(g)
        self._maybe_release(g)
        return 0

    def _dissolve(self, g: str) -> None:
        vg = self.vgroups[g]
        if vg.container_users > 0:
            vg.container_users -= 1
            if vg.container_users == 0:
                self._detach(g)

    def _detach(self, g: str) -> None:
        vg = self.vgroups[g]
        assert vg.container is not None
        c = vg.container
        cs = self.containers[c]
        cs.groups.discard(g)
        if not cs.groups:
            cs.iommu = False  # detaching the last group deprivileges the container
        vg.container = None
        self._maybe_free_container(c)

    def _maybe_free_container(self, c: str) -> None:
        cs = self.containers[c]
        if not cs.file_open and not cs.groups:
            del self.containers[c]

    def _maybe_release(self, g: str) -> None:
        if g in self.vgroups and self.holders(g) == 0:
            del self.vgroups[g]


# --------------------------------------------------------------------------------------
# Running a sequence on the model


def settle(k: Kernel) -> None:
    """Let the base's deferred puts run: a step ends when its work items have run.

    flush_scheduled_work() alone is not enough in free-running mode: Workqueue._idle() reads
    the queue and the running count without the workqueue's lock, so a flush can return
    between a worker's popleft and its ``running += 1``, before the work ran (see
    test_stress.test_flush_scheduled_work_waits_for_the_work_it_flushes).  Until that is
    fixed, check idleness again under the lock.
    """
    while True:
        flush_scheduled_work(k)
        wq = system_wq(k)
        with wq._mutex:
            if not wq.queue and wq.running == 0:
                return


def group_refs(group: Any) -> int:
    """A vfio_group's reference count: its kref up to patch 3, ``users`` from patch 4."""
    if hasattr(group, "users"):  # a freed group raises UseAfterFree here, as it should
        return int(group.users.refcount_read())
    return int(group.kref.kref_read())


def group_minor(v: VfioBase, group: Any) -> int:
    """The minor of /dev/vfio/N: ``group->minor`` up to patch 4, MINOR(group->dev.devt) at 5."""
    if v.LEVEL == "p5":
        return int(MINOR(group.dev.devt))
    return int(group.minor)


def format_replay(
    level: str,
    steps: Sequence[Step],
    review_fixes: bool = False,
    ablation: str | None = None,
    fail_nth: int | None = None,
    failures: Sequence[tuple[str, int]] = (),
) -> str:
    lines = "".join(f"    {s!r},\n" for s in steps)
    opts = (", review_fixes=True" if review_fixes else "") + (f", ablation={ablation!r}" if ablation else "")
    opts += (f", fail_nth={fail_nth}" if fail_nth is not None else "") + (
        f", failures={list(failures)!r}" if failures else ""
    )
    return f"ops.replay({level!r}, [\n{lines}]{opts})"


@dataclass
class Outcome:
    """What a finished run showed: per-step returns and holder snapshots, WARNs, leaks."""

    returns: list[int | None]
    snapshots: list[dict[str, tuple[int, int]]]
    warnings: list[tuple[str, str]]
    leaks: list[tuple[str, str]]
    faults: list[str]


class Actor:
    """Runs steps for one oracle on a (possibly shared) platform: returns and own holders.

    :class:`Run` adds the whole-kernel checks; the stress test runs one Actor per thread.
    """

    def __init__(self, v: VfioBase, p: Platform, oracle: Oracle, *, concurrent: bool = False) -> None:
        self.v = v
        self.concurrent = concurrent
        self.p = p
        self.k = v.k
        self.oracle = oracle
        self.files: dict[str, File] = {}
        self.containers: dict[str, File] = {}
        self.container_objs: dict[str, Any] = {}
        self.externals: dict[str, Any] = {}
        self.steps: list[Step] = []
        self.returns: list[int | None] = []
        # Labels, numbered by success as the oracle numbers them.
        self.n_files = 0
        self.n_externals = 0

    def execute(self, step: Step) -> int:
        """Perform ``step`` on the platform and return the kernel's answer (0 or -errno)."""
        op, *a = step
        p = self.p
        if op == "add_group":
            p.add_group(a[0])
            return 0
        if op == "add_device":
            p.add_device(a[0], a[1])
            return 0
        if op == "remove_device":
            p.remove_device(a[0])
            return 0
        if op == "bind":
            return p.bind(a[0], a[1])
        if op == "unbind":
            p.unbind(a[0])
            return 0
        if op == "open":
            if self.concurrent:
                return self._open_locked(a[0])
            return self._opened(p.open_group(a[0]))
        if op == "open_minor":
            return self._opened(p.open_devt(MKDEV(MAJOR(self.v.vfio.group_devt), a[0])))
        if op == "close":
            p.close(self.files.pop(a[0]))
            return 0
        if op == "open_container":
            c = p.open_container()
            if isinstance(c, int):
                return c
            label = f"c{len(self.container_objs)}"
            self.containers[label] = c
            self.container_objs[label] = c.private_data
            return 0
        if op == "close_container":
            p.close(self.containers.pop(a[0]))
            return 0
        if op == "set_container":
            return p.set_container(self.files[a[0]], self.containers[a[1]])
        if op == "set_iommu":
            return p.set_iommu(self.containers[a[0]])
        if op == "unset_container":
            return p.unset_container(self.files[a[0]])
        if op == "ext_get":
            g = p.external_user_get(self.files[a[0]])
            if IS_ERR(g):
                return int(PTR_ERR(g))
            self.externals[f"e{self.n_externals}"] = g
            self.n_externals += 1
            return 0
        if op == "ext_put":
            p.external_user_put(self.externals.pop(a[0]))
            return 0
        raise ValueError(f"unknown op {op!r}: the ops are {', '.join(OPS)}")

    def _open_locked(self, dev: str) -> int:
        """Open ``dev``'s group with the node found through the kernel's locked lookup.

        Platform.open_group finds the node by walking vfio.group_list without
        vfio.group_lock, which is only safe while no other thread changes the list.
        """
        v = self.v
        group = v.vfio_group_get_from_dev(self.p.dev(dev))
        if group is None:
            return -ENOENT
        try:
            devt = MKDEV(MAJOR(v.vfio.group_devt), group_minor(v, group))
        finally:
            v.vfio_group_put(group)
        return self._opened(self.p.open_devt(devt))

    def _opened(self, f: File | int) -> int:
        if isinstance(f, int):
            return f
        self.files[f"f{self.n_files}"] = f
        self.n_files += 1
        return 0

    def do(self, step: Step) -> int:
        """Run ``step`` and compare its return code with the oracle's."""
        fi = self.k.fault_inject
        n0 = len(fi.injected)
        self.steps.append(step)
        why = self.oracle.blocked(step)
        if why is not None:
            raise Blocked(f"{step!r} must not run here: {why}")
        ret = self.execute(step)
        settle(self.k)
        injected = [p.name for p in fi.injected[n0:]]
        expected = self.oracle.apply(step, injected)
        self.returns.append(ret)
        assert ret == expected, (
            f"{step!r} returned {errno_name(ret)}, the kernel's rules say {errno_name(expected)}"
            + (f" (injected: {', '.join(injected)})" if injected else "")
        )
        return ret

    def check_own(self) -> None:
        """The holders of this oracle's groups, read through the kernel's own lookups."""
        o, v = self.oracle, self.v
        for g, members in o.iommu_groups.items():
            ig = self.p.groups[g]
            group = v.vfio_group_get_from_iommu(ig)
            # the platform's reference, one per member, one for the vfio_group (our lookup's
            # reference is on the vfio_group, not on the iommu group)
            expected = 1 + len(members) + (g in o.vgroups)
            assert ig.kref.kref_read() == expected, f"iommu group {g}: {ig.kref.kref_read()} refs, expected {expected}"
            if group is None:
                assert g not in o.vgroups, f"{g}: the vfio_group is gone but holders remain"
                continue
            try:
                assert g in o.vgroups, f"{g}: a vfio_group is alive with no holders"
                vg = o.vgroups[g]
                assert group_refs(group) - 1 == o.holders(g), f"{g}: refcount {group_refs(group) - 1}"
                assert group.container_users.atomic_read() == vg.container_users
                assert group.opened.atomic_read() == (vg.file is not None)
            finally:
                v.vfio_group_put(group)


class Run(Actor):
    """A freshly booted ``level`` on which a sequence runs step by step, checked throughout.

    ``check=False`` runs without comparing against the oracle (a differential run still
    records returns, holder snapshots, WARNs and leaks).  Fault injection, counted from the
    first step: ``fail_nth`` fails the Nth injectable call, ``failures`` fails each
    (point name, Nth call at that point) -- the oracle then expects the kernel's answer to
    each failure.
    """

    def __init__(
        self,
        level: str,
        *,
        review_fixes: bool = False,
        check: bool = True,
        ablation: str | None = None,
        hang_timeout: float = 3.0,
        fail_nth: int | None = None,
        failures: Sequence[tuple[str, int]] = (),
    ) -> None:
        v = boot(level, review_fixes=review_fixes, ablation=ablation, hang_timeout=hang_timeout)
        p = Platform(v)
        p.register_type1()
        super().__init__(v, p, Oracle(level))
        self.level = level
        self.review_fixes = review_fixes
        self.ablation = ablation
        self.check = check
        self.snapshots: list[dict[str, tuple[int, int]]] = []
        self.group_objs: dict[str, Any] = {}
        self.must_be_freed: list[tuple[str, Any]] = []
        self.failed = False
        self.finished = False
        self.fail_nth = fail_nth
        self.failures = list(failures)
        # After an injected failure, later steps may name what was never made (the file of
        # a failed open): those are skipped (their return is None), here and in a replay.
        self.skip_blocked = fail_nth is not None or bool(self.failures)
        self.step_points: list[list[FaultPoint]] = []  # the injectable calls each step made
        fi = self.k.fault_inject
        self.armed_at = len(fi.points)
        if fail_nth is not None:
            fi.fail_nth(self.armed_at + fail_nth)
        for name, nth in self.failures:
            fi.fail(name, nth)

    def __repr__(self) -> str:
        return format_replay(self.level, self.steps, self.review_fixes, self.ablation, self.fail_nth, self.failures)

    def _fail(self, e: BaseException, where: str) -> SequenceFailure:
        self.failed = True
        head = f"{type(e).__name__}: {e}".strip()
        return SequenceFailure(f"{head}\n  {where}\nreproduce with:\n{self!r}", where=where, replay=repr(self))

    def step(self, step: Step) -> int | None:
        """Run one step; with ``check``, compare with the oracle and check every invariant."""
        if not step or step[0] not in OPS:
            raise ValueError(f"unknown op in step {step!r}: the ops are {', '.join(OPS)}")
        n0 = len(self.k.fault_inject.points)
        if self.skip_blocked and self.check and self.oracle.blocked(step) is not None:
            self.steps.append(step)
            self.returns.append(None)
            self.snapshots.append(self.snapshots[-1] if self.snapshots else {})
            self.step_points.append([])
            return None
        try:
            if self.check:
                ret = self.do(step)
                self.check_state()
            else:
                self.steps.append(step)
                ret = self.execute(step)
                settle(self.k)
                self.returns.append(ret)
            self.snapshots.append(self.snapshot())
            self.step_points.append(self.k.fault_inject.points[n0:])
            return ret
        except SequenceFailure:
            raise
        except BaseException as e:
            raise self._fail(e, f"at step {len(self.steps) - 1}: {step!r}") from e

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """{iommu group: (vfio_group refcount, minor)} for every group on vfio.group_list."""
        names = {id(ig): n for n, ig in self.p.groups.items()}
        return {
            names.get(id(group.iommu_group), "?"): (group_refs(group), group_minor(self.v, group))
            for group in list_for_each_entry(self.v.vfio.group_list)
        }

    def check_state(self) -> None:
        """Every invariant the kernel must keep between two user-visible operations."""
        o, k, v, p = self.oracle, self.k, self.v, self.p
        assert k.faults == [], f"kernel faults: {k.faults}"
        got = [(w.function, w.message) for w in k.warnings]
        assert got == o.warnings, f"WARNs {got}, the sequence makes the kernel print exactly {o.warnings}"
        assert k.lockdep_reports == [], f"lockdep: {[r.text for r in k.lockdep_reports]}"
        for d, ds in o.devices.items():
            drv = p.dev(d).driver
            assert (drv.name if drv is not None else None) == ds.driver, f"{d} is bound to {drv}, expected {ds.driver}"
        # iommu groups: the platform's reference, one per member, one for the vfio_group
        for g, members in o.iommu_groups.items():
            ig = p.groups[g]
            assert ig.id == o.group_ids[g]
            expected = 1 + len(members) + (g in o.vgroups)
            assert ig.kref.kref_read() == expected, (
                f"iommu group {g} holds {ig.kref.kref_read()} references; its holders are the platform, "
                f"{len(members)} member(s) and {'a' if g in o.vgroups else 'no'} vfio_group: {expected}"
            )
        # vfio groups reachable from vfio.group_list: each live (a freed one raises
        # UseAfterFree on this walk), one per iommu group, counted by exactly its holders
        names = {id(ig): n for n, ig in p.groups.items()}
        live: dict[str, Any] = {}
        for group in list_for_each_entry(v.vfio.group_list):
            g = names.get(id(group.iommu_group))
            assert g is not None and g not in live, f"vfio.group_list: unexpected or duplicate group {group!r}"
            live[g] = group
        assert set(live) == set(o.vgroups), f"vfio groups {sorted(live)}, holders exist for {sorted(o.vgroups)}"
        for g, group in live.items():
            vg = o.vgroups[g]
            assert group_refs(group) == o.holders(g), (
                f"vfio_group of {g}: refcount {group_refs(group)}, holders {o.holders(g)} "
                f"({len(o.vfio_devices(g))} vfio device(s), file {vg.file}, external users {sorted(vg.externals)})"
            )
            assert group.container_users.atomic_read() == vg.container_users, f"{g}: container_users"
            assert group.opened.atomic_read() == (vg.file is not None), f"{g}: opened"
            assert group_minor(v, group) == vg.minor, f"{g}: minor {group_minor(v, group)}, expected {vg.minor}"
            devs = sorted(dev_name(dev.dev) for dev in list_for_each_entry(group.device_list))
            assert devs == sorted(o.vfio_devices(g)), f"{g}: device_list {devs}"
            assert list(list_for_each_entry(group.unbound_list)) == [], f"{g}: unbound_list not empty"
            want = self.container_objs[vg.container] if vg.container is not None else None
            assert group.container is want, f"{g}: container {group.container!r}, expected {vg.container}"
            prev = self.group_objs.get(g)
            if prev is not None and prev is not group:
                self.must_be_freed.append((f"the previous vfio_group of {g}", prev))
            self.group_objs[g] = group
        for g in [g for g in self.group_objs if g not in live]:
            self.must_be_freed.append((f"the vfio_group of {g}", self.group_objs.pop(g)))
        # minors: the IDR maps exactly the live groups (base..p4), the IDA holds exactly their minors (p5)
        minors = sorted(vg.minor for vg in o.vgroups.values())
        if v.LEVEL == "p5":
            assert sorted(v.vfio.group_ida) == minors, f"IDA {sorted(v.vfio.group_ida)}, live minors {minors}"
        else:
            idr = v.vfio.group_idr
            assert sorted(idr) == minors, f"IDR {sorted(idr)}, live minors {minors}"
            for g, group in live.items():
                assert idr.idr_find(o.vgroups[g].minor) is group
        # containers: counted by their open file and their groups; the IOMMU set while chosen
        for c, cs in o.containers.items():
            obj = self.container_objs[c]
            assert obj.kref.kref_read() == cs.file_open + len(cs.groups), f"container {c}: kref {obj.kref.kref_read()}"
            members = {names.get(id(gr.iommu_group)) for gr in list_for_each_entry(obj.group_list)}
            assert members == cs.groups, f"container {c}: groups {members}, expected {cs.groups}"
            assert (obj.iommu_driver is not None) == cs.iommu, f"container {c}: iommu_driver {obj.iommu_driver}"
        for c, obj in self.container_objs.items():
            if c not in o.containers and not any(obj is x for _, x in self.must_be_freed):
                self.must_be_freed.append((f"container {c}", obj))
        for what, obj in self.must_be_freed:
            assert is_freed(obj), f"{what} has no holders left but was not freed"

    def finish(self) -> None:
        """Tear the platform down (close, unbind, remove, unload vfio): nothing may be left."""
        if self.finished:
            return
        self.finished = True
        fi = self.k.fault_inject
        n0, i0 = len(fi.points), len(fi.injected)
        try:
            self.p.teardown()
            self.step_points.append(fi.points[n0:])
            k = self.k
            assert k.faults == [], f"kernel faults in teardown: {k.faults}"
            if self.check:
                expected = list(self.oracle.warnings)
                for p in fi.injected[i0:]:
                    assert p.name in WARN_ONLY_POINTS or p.name in IGNORED_POINTS, (
                        f"injected failure {p.name} in the teardown: the oracle knows no error path there"
                    )
                    expected += [WARN_ONLY_POINTS[p.name]] if p.name in WARN_ONLY_POINTS else []
                got = [(w.function, w.message) for w in k.warnings]
                assert got == expected, f"WARNs {got}, expected exactly {expected}"
                assert k.lockdep_reports == []
                for what, obj in [*self.must_be_freed, *self.group_objs.items(), *self.container_objs.items()]:
                    assert is_freed(obj), f"{what} survived the teardown"
            assert k.leaks() == [], "leaks after teardown:\n" + "\n".join(map(str, k.leaks()))
        except SequenceFailure:
            raise
        except BaseException as e:
            raise self._fail(e, "in the teardown") from e

    def outcome(self) -> Outcome:
        k = self.k
        return Outcome(
            returns=list(self.returns),
            snapshots=list(self.snapshots),
            warnings=[(w.function, w.message) for w in k.warnings],
            leaks=sorted((leak.type, leak.allocated_by) for leak in k.leaks()),
            faults=[f"{type(f).__name__}: {f.message.splitlines()[0]}" for f in k.faults],
        )


def replay(
    level: str,
    steps: Iterable[Step],
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    check: bool = True,
    fail_nth: int | None = None,
    failures: Sequence[tuple[str, int]] = (),
) -> Run:
    """Run ``steps`` on a fresh ``level`` (checked step by step), tear down, return the run.

    This is what a failure message asks you to paste; it raises the same SequenceFailure.
    """
    run = Run(level, review_fixes=review_fixes, ablation=ablation, check=check, fail_nth=fail_nth, failures=failures)
    for s in steps:
        run.step(tuple(s))
    run.finish()
    return run


# How often a random sequence picks each kind of step (of those that may run): enough
# binds, opens and container steps to reach groups in use with external users.
WEIGHTS: dict[str, int] = {
    "add_device": 2,
    "remove_device": 1,
    "bind": 5,
    "unbind": 3,
    "open": 4,
    "open_minor": 2,
    "close": 2,
    "open_container": 2,
    "close_container": 1,
    "set_container": 4,
    "set_iommu": 3,
    "unset_container": 2,
    "ext_get": 3,
    "ext_put": 2,
}


def choose(o: Oracle, choice: int) -> Step | None:
    """The step ``choice`` picks among those the oracle allows now (None if none may run):
    a kind of step by :data:`WEIGHTS`, then one of its steps."""
    cands = o.candidates()
    if not cands:
        return None
    kinds = sorted({s[0] for s in cands}, key=OPS.index)
    rng = random.Random(choice)
    kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
    of_kind = [s for s in cands if s[0] == kind]
    promising = [s for s in of_kind if o.promising(s)]
    if promising and rng.random() < 0.8:
        of_kind = promising
    return of_kind[rng.randrange(len(of_kind))]


def sequence(choices: Iterable[int], *, setup: Sequence[Step] = SETUP) -> list[Step]:
    """A legal sequence: ``setup``, then one step per choice (see :func:`choose`).  Legal at
    every level: which steps may run does not depend on the level."""
    o = Oracle("p5")
    steps = list(setup)
    for s in steps:
        o.apply(s)
    for c in choices:
        s = choose(o, c)
        if s is None:
            break
        o.apply(s)
        steps.append(s)
    return steps


def random_sequence(seed: int, length: int = 30) -> list[Step]:
    rng = random.Random(seed)
    return sequence(rng.randrange(1 << 30) for _ in range(length))


def is_platform_point(name: str) -> bool:
    """A point only building the machine passes (adding a device): not what the oracle specifies."""
    return name.startswith(PLATFORM_POINTS_PREFIXES)


def swept_points(run: Run) -> list[FaultPoint]:
    """The injectable calls a finished run made from its first step on (the teardown's
    included), without the platform's own: one fault sweep fails each in turn."""
    return [
        p
        for i, pts in enumerate(run.step_points)
        if i >= len(run.steps) or run.steps[i][0] not in PLATFORM_OPS
        for p in pts
        if not is_platform_point(p.name) and p.name not in KNOWN_GAPS
    ]
