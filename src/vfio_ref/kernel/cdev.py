"""Character devices: struct cdev, dev_t regions, the chrdev map, chrdev_open, inodes and files.

Modelled on 5.15/5.16 fs/char_dev.c and drivers/base/map.c, plus the char-device parts of
fs/open.c (do_dentry_open), fs/file_table.c (__fput) and fs/inode.c (evict, cd_forget).

Lifetimes, as in the kernel
---------------------------
* ``cdev_init`` gives the cdev's kobject its first reference.  The cdev's default release
  frees nothing: it unlinks the inodes that cached the cdev and drops the reference the
  cdev holds on its parent kobject.  (``cdev_alloc``'d cdevs have a release that also
  kfree()s the cdev.)
* ``cdev_add`` makes the device numbers openable at once, then takes a reference on the
  parent kobject (``cdev_set_parent``, done by ``cdev_device_add``: the struct device).
* ``cdev_del`` stops new lookups, then drops the init reference.  Files already open keep
  working: each open file holds a cdev reference (taken by ``chrdev_open``, dropped by
  ``fput`` after the driver's ->release).
* Hence the chain patch 5 relies on: an open file pins the cdev, the cdev pins its parent
  device, so a struct embedding both lives until the last close *and* the last put_device.
* ``cdev_device_add`` maps the node before ``device_add`` runs: a concurrent open can reach
  the fops before it returns, and even when it then fails (5.15/5.16 then ``cdev_del``
  unconditionally, devt or not).  ``cdev_device_del`` is ``device_del`` then ``cdev_del``.
* An inode caches the cdev it opened (``i_cdev``); a later open through the same inode
  skips the map, so it can reach a cdev that ``cdev_del`` has already unmapped, as long as
  some file still holds it.  Fresh lookups of an unmapped number fail with -ENXIO.

Ablation ``cdev_without_parent_ref``: with ``k.state["cdev_parent_ref"] = False`` (set it
before the first ``cdev_add``), ``cdev_add`` takes no parent reference and the cdev's
release drops none, i.e. a cdev that holds no reference on its device.  A file closed after
the device's final put_device then touches freed memory (UseAfterFree in ``cdev_put``).

Locks (per kernel, as the kernel's statics)
-------------------------------------------
* ``chrdevs_lock`` (a Mutex): the region table and the cdev map.  The kernel's cdev_map is
  a kobj_map whose lock is this same mutex; lookups, maps and unmaps all take it.
* ``cdev_lock`` (a SpinLock): ``inode->i_cdev`` and the cdev's inode list.  chrdev_open
  never holds both: it drops cdev_lock around the map lookup.

Fault injection: ``"cdev_add@<caller>"`` (the map's allocation) and
``"alloc_chrdev_region@<caller>"`` / ``"register_chrdev_region@<caller>"`` (the region's
allocation), each -ENOMEM; ``<caller>`` is the first function outside this module.

Costs (m = mappings wider than one minor, usually 0 or 1; s = elementary segments a wide
mapping spans; b = regions in one major's hash bucket, usually 0 or 1)
------------------------------------------------------------------------------------------
=======================================  =============================================
alloc/register/unregister_chrdev_region  O(b) per major spanned (dynamic major: O(149))
cdev_add / cdev_del, count == 1          O(1) map work, plus two lock and one ref op
cdev_add / cdev_del, count > 1           O(log m + s)
kobj_lookup / chrdev_open                O(1) for a one-minor mapping, O(log m) wider
fput                                     O(1)
the cdev's release                       O(inodes still caching it)
=======================================  =============================================

struct file and its references
------------------------------
A :class:`File` is counted by ``f_count`` (an atomic: the kernel's is an atomic_long_t).
The open that creates it holds the first reference; a descriptor table that installs it
holds that one (fd_install consumes it), every ``fget``/``fdget`` takes another, ``dup``
another (see :mod:`.file`).  ``fput`` drops one; only the last runs ``__fput``: the
driver's ->release, then the cdev reference is dropped.  So an ioctl, which runs under
``fdget``, can never see ->release run under it, whatever another thread closes.

Deliberate simplifications: modules are not modelled (try_module_get always succeeds,
module_put and fops_put do nothing, so fops_get fails only for NULL fops); there is no
request_module for an unmapped number; the last ``fput`` runs ``__fput`` at once (the
kernel defers it to task_work, which runs before the same task returns to user space:
the same task, the same order, nothing in between that user space can see); inodes and
files are not slab objects (no fault point, never a leak).  A fresh inode made by
``vfs_open_chrdev`` is evicted when its file closes or its open fails, as an uncached
dentry would be; an inode given to ``vfs_open_inode`` belongs to the caller (an inode
that stays cached, as a device node's does, keeps its ``i_cdev`` between opens).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sortedcontainers import SortedList

from .atomic import Atomic, atomic_dec_and_test
from .bug import WARN_ON
from .core import Kernel, ModelUsageError, caller_outside
from .device import (
    MAJOR,
    MINOR,
    MINORMASK,
    MKDEV,
    Device,
    Kobject,
    device_add,
    device_del,
    kobject_get,
    kobject_get_unless_zero,
    kobject_init,
    kobject_put,
)
from .errno import EBUSY, EINVAL, ENOMEM, ENOTTY, ENXIO, ERR_PTR, IS_ERR, PTR_ERR
from .mutex import Mutex, SpinLock
from .shared import ListHead, list_add, list_del, list_empty
from .slab import KStruct, kfree, kzalloc

CHRDEV_MAJOR_MAX: Final = 512
CHRDEV_MAJOR_HASH_SIZE: Final = 255
CHRDEV_MAJOR_DYN_END: Final = 234
CHRDEV_MAJOR_DYN_EXT_START: Final = 511
CHRDEV_MAJOR_DYN_EXT_END: Final = 384

# The ablation knob: k.state[CDEV_PARENT_REF] = False removes the cdev's parent reference.
CDEV_PARENT_REF: Final = "cdev_parent_ref"


def _parent_ref(k: Kernel) -> bool:
    return bool(k.state.get(CDEV_PARENT_REF, True))


def _devt_str(dev: int) -> str:
    return f"{MAJOR(dev)}:{MINOR(dev)}"


# --------------------------------------------------------------------------------------
# File operations


OpenFn = Callable[["Inode", "File"], int]
ReleaseFn = Callable[["Inode", "File"], int]
IoctlFn = Callable[["File", Any, Any], Any]  # the model names ioctl commands by string


@dataclass(frozen=True, eq=False)
class FileOperations:
    """struct file_operations (the members the model uses).  Compared by identity, as the
    kernel compares ``filp->f_op`` against a driver's fops.

    ``open(inode, file)`` and ``release(inode, file)`` return 0 or -errno (a release's
    result is ignored, as __fput ignores it); ``unlocked_ioctl(file, cmd, arg)`` returns
    what the ioctl returns.  ``owner`` is the module (not modelled beyond being stored).
    """

    owner: object = None
    open: OpenFn | None = None
    release: ReleaseFn | None = None
    unlocked_ioctl: IoctlFn | None = None
    name: str = "fops"

    def __repr__(self) -> str:
        return f"<file_operations {self.name}>"


def fops_get(fops: FileOperations | None) -> FileOperations | None:
    """Take the fops' module reference: here just the fops themselves (NULL stays NULL)."""
    return fops


def fops_put(fops: FileOperations | None) -> None:
    """Drop the module reference fops_get took (nothing to do: modules are not modelled)."""


# --------------------------------------------------------------------------------------
# struct cdev


class Cdev(KStruct):
    """struct cdev.  ``container`` is the struct that embeds it (a vfio_group in patch 5),
    for ``container_of``; the kobject and the inode list share its memory, so a kfree of
    the container poisons them too.  Construct it zeroed; ``cdev_init`` prepares it.
    """

    __slots__ = ("_poison", "container", "count", "dev", "kernel", "kobj", "list", "ops", "owner")
    _embedded = ("kobj", "list")

    def __init__(self, kernel: Kernel, container: Any = None) -> None:
        self.kernel = kernel
        self.container = container
        self.kobj = Kobject(kernel, self)
        self.ops: FileOperations | None = None
        self.owner: object = None
        self.dev = 0
        self.count = 0
        self.list = ListHead(kernel, self, "cdev->list")

    def leak_detail(self) -> str:
        return f"cdev {_devt_str(self.dev)} count={self.count} kref={self.kobj.kref.refcount.refs}"

    def __repr__(self) -> str:
        return f"<cdev {_devt_str(self.dev)}+{self.count}>"


def cdev_purge(cdev: Cdev) -> None:
    """Under cdev_lock, unlink every inode that caches ``cdev`` and clear its i_cdev."""
    st = chrdev_state(cdev.kernel)
    st.cdev_lock.spin_lock()
    while not list_empty(cdev.list):
        node = cdev.list.next
        assert node is not None
        inode: Inode = node.container
        _list_del_init(inode.i_devices)
        inode.i_cdev = None
    st.cdev_lock.spin_unlock()


def cdev_default_release(kobj: Kobject) -> None:
    """Release of an embedded cdev (ktype_cdev_default): purge the inode links, then drop
    the parent reference cdev_add took.  The memory is the container's: nothing is freed."""
    p: Cdev = kobj.container
    parent = kobj.parent
    cdev_purge(p)
    if _parent_ref(p.kernel):
        kobject_put(parent)


def cdev_dynamic_release(kobj: Kobject) -> None:
    """Release of a cdev_alloc'd cdev: purge, kfree the cdev, then drop the parent."""
    p: Cdev = kobj.container
    k = p.kernel
    parent = kobj.parent
    cdev_purge(p)
    kfree(k, p)
    if _parent_ref(k):
        kobject_put(parent)


def cdev_alloc(k: Kernel) -> Cdev | None:
    """A kzalloc'd cdev whose kobject holds one reference and whose release kfree()s it,
    or None when the allocation fails (point ``kzalloc@cdev_alloc``)."""
    p = kzalloc(k, Cdev)
    if p is not None:
        kobject_init(p.kobj, cdev_dynamic_release)
    return p


def cdev_init(cdev: Cdev, fops: FileOperations | None) -> None:
    """Zero ``cdev`` (a fresh kobject and inode list), give its kobject one reference with
    the default (non-freeing) release, and store ``fops``."""
    k = cdev.kernel
    cdev.kobj = Kobject(k, cdev)
    cdev.list = ListHead(k, cdev, "cdev->list")
    cdev.owner = None
    cdev.dev = 0
    cdev.count = 0
    kobject_init(cdev.kobj, cdev_default_release)
    cdev.ops = fops


def cdev_set_parent(p: Cdev, kobj: Kobject) -> None:
    """Make ``kobj`` the cdev's parent (WARN if it was never initialised).  The reference
    itself is taken by cdev_add; call this first."""
    WARN_ON(p.kernel, not kobj.state_initialized, "!kobj->state_initialized")
    p.kobj.parent = kobj


def cdev_add(p: Cdev, dev: int, count: int) -> int:
    """Map [dev, dev+count) to ``p`` (openable from now on), then take a reference on the
    parent kobject.  0, or -ENOMEM (injected; nothing is mapped and no reference taken)."""
    if count < 1:
        raise ModelUsageError(f"cdev_add({p!r}, {_devt_str(dev)}, {count}): count must be at least 1")
    p.dev = dev
    p.count = count
    error = kobj_map(p.kernel, dev, count, p)
    if error:
        return error
    if _parent_ref(p.kernel):
        kobject_get(p.kobj.parent)
    return 0


def cdev_del(p: Cdev) -> None:
    """Unmap the cdev's numbers (no new lookups find it), then drop its init reference.
    Open files keep their references: their fops stay callable after this returns."""
    kobj_unmap(p.kernel, p.dev, p.count)
    kobject_put(p.kobj)


def cdev_device_add(cdev: Cdev, dev: Device) -> int:
    """cdev_add for ``dev->devt`` with ``dev`` as parent, then device_add.  The node is
    openable before device_add runs.  If device_add fails, cdev_del (5.15/5.16 do so even
    when devt is 0) and return its error; the caller still owns its device reference."""
    rc = 0
    if dev.devt:
        cdev_set_parent(cdev, dev.kobj)
        rc = cdev_add(cdev, dev.devt, 1)
        if rc:
            return rc
    rc = device_add(dev)
    if rc:
        cdev_del(cdev)
    return rc


def cdev_device_del(cdev: Cdev, dev: Device) -> None:
    """device_del, then cdev_del if the device has a devt.  Files already open stay usable."""
    device_del(dev)
    if dev.devt:
        cdev_del(cdev)


def cdev_get(p: Cdev) -> Kobject | None:
    """A new reference on the cdev's kobject, unless its count already reached zero
    (then None).  The module reference is not modelled."""
    return kobject_get_unless_zero(p.kobj)


def cdev_put(p: Cdev | None) -> None:
    """Drop a reference cdev_get took (NULL is ignored); the last one runs the release."""
    if p is not None:
        owner = p.owner
        kobject_put(p.kobj)
        _module_put(owner)


def _module_put(owner: object) -> None:
    """module_put: modules are not modelled."""


# --------------------------------------------------------------------------------------
# Per-kernel state


class ChrdevState:
    """One kernel's char-device statics: the two locks, the region table and the map."""

    def __init__(self, k: Kernel) -> None:
        self.kernel = k
        self.chrdevs_lock = Mutex(k, "chrdevs_lock")
        self.cdev_lock = SpinLock(k, "cdev_lock")
        # chrdevs[major % 255]: regions sorted by (major, baseminor), as the kernel keeps them.
        self.chrdevs: dict[int, list[CharDeviceStruct]] = {}
        self.cdev_map = CdevMap()
        self.file_ids = itertools.count(1)


def chrdev_state(k: Kernel) -> ChrdevState:
    """The kernel's char-device state, created on first use."""
    st: ChrdevState | None = k.state.get("chrdev")
    if st is None:
        st = k.state.setdefault("chrdev", ChrdevState(k))
    return st


# --------------------------------------------------------------------------------------
# dev_t regions (char_device_struct)


class CharDeviceStruct(KStruct):
    """A registered range of device numbers: [baseminor, baseminor+minorct) of ``major``."""

    def __init__(self, kernel: Kernel, major: int, baseminor: int, minorct: int, name: str) -> None:
        self.kernel = kernel
        self.major = major
        self.baseminor = baseminor
        self.minorct = minorct
        self.name = name

    def leak_detail(self) -> str:
        return f"chrdev region {self.major}:{self.baseminor}+{self.minorct} {self.name!r}"

    def __repr__(self) -> str:
        return f"<char_device_struct {self.name} {self.major}:{self.baseminor}+{self.minorct}>"


def major_to_index(major: int) -> int:
    return major % CHRDEV_MAJOR_HASH_SIZE


def find_dynamic_major(st: ChrdevState) -> int:
    """The first free dynamic major: 254 down to 234 where the whole hash bucket is empty
    (so a major 255 higher in use hides it, as in the kernel), then 511 down to 384 where
    that exact major is unused; -EBUSY when all are taken.  Called with chrdevs_lock."""
    for i in range(CHRDEV_MAJOR_HASH_SIZE - 1, CHRDEV_MAJOR_DYN_END - 1, -1):
        if not st.chrdevs.get(i):
            return i
    for i in range(CHRDEV_MAJOR_DYN_EXT_START, CHRDEV_MAJOR_DYN_EXT_END - 1, -1):
        if not any(cd.major == i for cd in st.chrdevs.get(major_to_index(i), ())):
            return i
    return -EBUSY


def __register_chrdev_region(
    k: Kernel, major: int, baseminor: int, minorct: int, name: str, point: str, caller: str
) -> Any:
    """Register one major's minor range (major 0: a dynamic major).  The region, or
    ERR_PTR(-EINVAL) (major or range out of bounds), ERR_PTR(-ENOMEM) (injected at
    ``point@caller``), ERR_PTR(-EBUSY) (overlap, or no dynamic major left)."""
    if major >= CHRDEV_MAJOR_MAX:
        k.printk(
            f'CHRDEV "{name}" major requested ({major}) is greater than the maximum ({CHRDEV_MAJOR_MAX - 1})'
        )
        return ERR_PTR(-EINVAL)
    if minorct > MINORMASK + 1 - baseminor:
        k.printk(
            f'CHRDEV "{name}" minor range requested ({baseminor}-{baseminor + minorct - 1}) is out of '
            f"range of maximum range (0-{MINORMASK}) for a single major"
        )
        return ERR_PTR(-EINVAL)
    if k.fault_inject.should_fail(point, caller, name):
        return ERR_PTR(-ENOMEM)
    cd = CharDeviceStruct(k, 0, baseminor, minorct, name)
    k.slab.track(cd, caller)

    st = chrdev_state(k)
    st.chrdevs_lock.mutex_lock()
    ret = -EBUSY
    if major == 0:
        ret = find_dynamic_major(st)
        if ret < 0:
            k.printk(f'CHRDEV "{name}" dynamic allocation region is full')
            st.chrdevs_lock.mutex_unlock()
            kfree(k, cd)
            return ERR_PTR(ret)
        major = ret
        ret = -EBUSY
    bucket = st.chrdevs.setdefault(major_to_index(major), [])
    # Walk the bucket (sorted by major, then baseminor) to the insertion point; a range of
    # the same major that intersects the new one is a clash.
    pos = len(bucket)
    for i, curr in enumerate(bucket):
        if curr.major < major:
            continue
        if curr.major > major:
            pos = i
            break
        if curr.baseminor + curr.minorct <= baseminor:
            continue
        if curr.baseminor >= baseminor + minorct:
            pos = i
            break
        st.chrdevs_lock.mutex_unlock()
        kfree(k, cd)
        return ERR_PTR(ret)
    cd.major = major
    bucket.insert(pos, cd)
    st.chrdevs_lock.mutex_unlock()
    return cd


def __unregister_chrdev_region(
    k: Kernel, major: int, baseminor: int, minorct: int
) -> CharDeviceStruct | None:
    """Unlink the region registered with exactly these numbers, if any, and return it."""
    st = chrdev_state(k)
    st.chrdevs_lock.mutex_lock()
    found = None
    bucket = st.chrdevs.get(major_to_index(major), [])
    for i, cd in enumerate(bucket):
        if cd.major == major and cd.baseminor == baseminor and cd.minorct == minorct:
            found = bucket.pop(i)
            break
    st.chrdevs_lock.mutex_unlock()
    return found


def register_chrdev_region(k: Kernel, from_: int, count: int, name: str) -> int:
    """Register [from_, from_+count), one region per major it spans.  0, or the first
    error (the majors already registered are unregistered again)."""
    caller = caller_outside(__file__)
    to = from_ + count
    n = from_
    err = 0
    while n < to:
        nxt = min(MKDEV(MAJOR(n) + 1, 0), to)
        cd = __register_chrdev_region(k, MAJOR(n), MINOR(n), nxt - n, name, "register_chrdev_region", caller)
        if IS_ERR(cd):
            err = PTR_ERR(cd)
            break
        n = nxt
    if not err:
        return 0
    failed_at = n
    n = from_
    while n < failed_at:
        nxt = MKDEV(MAJOR(n) + 1, 0)
        kfree(k, __unregister_chrdev_region(k, MAJOR(n), MINOR(n), nxt - n))
        n = nxt
    return err


def alloc_chrdev_region(k: Kernel, baseminor: int, count: int, name: str) -> tuple[int, int]:
    """Register ``count`` minors from ``baseminor`` under a dynamic major, unique in this
    kernel.  ``(0, first dev_t)``, or ``(-errno, 0)``: -ENOMEM (injected at
    ``alloc_chrdev_region@<caller>``), -EINVAL, -EBUSY (no dynamic major left)."""
    cd = __register_chrdev_region(
        k, 0, baseminor, count, name, "alloc_chrdev_region", caller_outside(__file__)
    )
    if IS_ERR(cd):
        return PTR_ERR(cd), 0
    return 0, MKDEV(cd.major, cd.baseminor)


def unregister_chrdev_region(k: Kernel, from_: int, count: int) -> None:
    """Unregister what register/alloc_chrdev_region registered for [from_, from_+count);
    pieces that are not registered with exactly these bounds are ignored."""
    to = from_ + count
    n = from_
    while n < to:
        nxt = min(MKDEV(MAJOR(n) + 1, 0), to)
        kfree(k, __unregister_chrdev_region(k, MAJOR(n), MINOR(n), nxt - n))
        n = nxt


# --------------------------------------------------------------------------------------
# The cdev map (kobj_map): which cdev answers for a dev_t


class Probe:
    """One mapping: [dev, dev+range) answered by ``cdev``; ``seq`` orders mappings in time."""

    __slots__ = ("cdev", "dev", "range", "seq")

    def __init__(self, dev: int, range_: int, cdev: Cdev, seq: int) -> None:
        self.dev = dev
        self.range = range_
        self.cdev = cdev
        self.seq = seq

    def __repr__(self) -> str:
        return f"<probe {_devt_str(self.dev)}+{self.range} -> {self.cdev!r}>"


def _insert_by_preference(lst: list[Probe], p: Probe) -> None:
    # The kernel keeps each bucket sorted by range and puts a new mapping before the
    # existing ones of the same range: narrowest first, newest first among equals.
    i = 0
    while i < len(lst) and lst[i].range < p.range:
        i += 1
    lst.insert(i, p)


class CdevMap:
    """The kernel's cdev_map, with the lookup order of kobj_lookup.

    A lookup answers with the narrowest mapping covering the number, the newest among
    equally narrow ones (overlaps are allowed: kobj_map never refuses).  Unmapping
    (dev, range) removes the newest mapping with exactly those bounds, whichever cdev it
    belongs to, as kobj_unmap does.

    One-minor mappings (patch 5: one per group) live in a dict, newest last.  Wider ones
    (the base: one for all 2**20 minors) live in an elementary-segment index: sorted
    segment starts, each with the mappings covering the whole segment, narrowest first.
    A boundary is kept only where the covering set changes, so the index stays as small
    as the mappings.  The caller holds chrdevs_lock.
    """

    def __init__(self) -> None:
        self._exact: dict[int, list[Probe]] = {}
        self._starts: Any = SortedList()
        self._segs: dict[int, list[Probe]] = {}
        self._seq = itertools.count()
        self.mappings = 0

    # -- the elementary-segment index ----------------------------------------------------

    def _covering(self, x: int) -> list[Probe]:
        i = self._starts.bisect_right(x) - 1
        return self._segs[self._starts[i]] if i >= 0 else []

    def _split(self, x: int) -> None:
        if x not in self._segs:
            self._segs[x] = list(self._covering(x))
            self._starts.add(x)

    def _merge(self, x: int) -> None:
        segs = self._segs.get(x)
        if segs is None:
            return
        i = self._starts.index(x)
        prev = self._segs[self._starts[i - 1]] if i > 0 else []
        if segs == prev:
            del self._segs[x]
            self._starts.remove(x)

    # -- the map ---------------------------------------------------------------------------

    def map(self, dev: int, range_: int, cdev: Cdev) -> Probe:
        p = Probe(dev, range_, cdev, next(self._seq))
        if range_ == 1:
            self._exact.setdefault(dev, []).append(p)
        else:
            end = dev + range_
            self._split(dev)
            self._split(end)
            for s in self._starts.irange(dev, end, inclusive=(True, False)):
                _insert_by_preference(self._segs[s], p)
        self.mappings += 1
        return p

    def unmap(self, dev: int, range_: int) -> Probe | None:
        if range_ == 1:
            lst = self._exact.get(dev)
            if not lst:
                return None
            p = lst.pop()
            if not lst:
                del self._exact[dev]
        else:
            first = self._segs.get(dev, [])
            found = next((q for q in first if q.dev == dev and q.range == range_), None)
            if found is None:
                return None
            p = found
            for s in list(self._starts.irange(dev, dev + range_, inclusive=(True, False))):
                self._segs[s].remove(p)
            self._merge(dev)
            self._merge(dev + range_)
        self.mappings -= 1
        return p

    def find(self, dev: int) -> Probe | None:
        """The mapping kobj_lookup would pick for ``dev``, or None."""
        lst = self._exact.get(dev)
        if lst:
            return lst[-1]
        cov = self._covering(dev)
        return cov[0] if cov else None

    def segments(self) -> int:
        """Model helper: how many segment starts the wide index keeps."""
        return len(self._starts)


def kobj_map(k: Kernel, dev: int, range_: int, cdev: Cdev) -> int:
    """Map [dev, dev+range_) to ``cdev`` under chrdevs_lock.  0, or -ENOMEM when the
    probe allocation is made to fail (point ``cdev_add@<caller>``)."""
    if k.fault_inject.should_fail("cdev_add", caller_outside(__file__), f"{_devt_str(dev)}+{range_}"):
        return -ENOMEM
    st = chrdev_state(k)
    st.chrdevs_lock.mutex_lock()
    st.cdev_map.map(dev, range_, cdev)
    st.chrdevs_lock.mutex_unlock()
    return 0


def kobj_unmap(k: Kernel, dev: int, range_: int) -> None:
    """Remove the newest mapping of exactly [dev, dev+range_), if any, under chrdevs_lock."""
    st = chrdev_state(k)
    st.chrdevs_lock.mutex_lock()
    st.cdev_map.unmap(dev, range_)
    st.chrdevs_lock.mutex_unlock()


def kobj_lookup(k: Kernel, dev: int) -> Cdev | None:
    """The cdev the map picks for ``dev``, with a reference taken (cdev_get) while
    chrdevs_lock is held; None when nothing covers ``dev`` or the picked cdev's count
    already reached zero (the kernel then tries no wider mapping)."""
    st = chrdev_state(k)
    st.chrdevs_lock.mutex_lock()
    p = st.cdev_map.find(dev)
    cdev = p.cdev if p is not None and cdev_get(p.cdev) is not None else None
    st.chrdevs_lock.mutex_unlock()
    return cdev


# --------------------------------------------------------------------------------------
# Inodes and files


class Inode:
    """A char-special inode (init_special_inode): ``i_rdev``, ``i_fop`` = def_chr_fops,
    and ``i_cdev``, the cdev cached by the first successful lookup (under cdev_lock;
    cleared when that cdev is released or the inode evicted).  ``i_devices`` links the
    inode on the cached cdev's list."""

    __slots__ = ("i_cdev", "i_devices", "i_fop", "i_rdev", "kernel", "name")

    def __init__(self, kernel: Kernel, rdev: int, name: str | None = None) -> None:
        self.kernel = kernel
        self.i_rdev = rdev
        self.i_cdev: Cdev | None = None
        self.i_fop: FileOperations = def_chr_fops
        self.i_devices = ListHead(kernel, self, "inode->i_devices")
        self.name = name if name is not None else f"/dev/char/{_devt_str(rdev)}"

    def __repr__(self) -> str:
        return f"<inode {self.name}>"


def iminor(inode: Inode) -> int:
    return MINOR(inode.i_rdev)


def imajor(inode: Inode) -> int:
    return MAJOR(inode.i_rdev)


def _list_del_init(entry: ListHead) -> None:
    # list_del_init: unlink (a no-op for an entry on no list) and leave it self-linked.
    list_del(entry)
    entry.next = entry
    entry.prev = entry


def cd_forget(inode: Inode) -> None:
    """Under cdev_lock, unlink ``inode`` from its cdev's list and clear i_cdev."""
    st = chrdev_state(inode.kernel)
    st.cdev_lock.spin_lock()
    _list_del_init(inode.i_devices)
    inode.i_cdev = None
    st.cdev_lock.spin_unlock()


def evict(inode: Inode) -> None:
    """The inode's last reference is gone: forget its cdev link (after an unlocked peek,
    as evict() does)."""
    if inode.i_cdev is not None:
        cd_forget(inode)


_OPEN, _CLOSING, _CLOSED = "open", "closing", "closed"


class File:
    """struct file: ``f_op``, ``private_data``, ``f_inode`` and the reference count
    ``f_count``.

    It is open from a successful ``vfs_open_*`` (or ``anon_inode_getfile``), holding one
    reference, until its last ``fput``, which runs the driver's ->release and drops the
    cdev reference.  Using it afterwards, including a further fput, raises
    ModelUsageError: a struct file is gone after its last fput.
    """

    __slots__ = (
        "_f_inode", "_f_op", "_owns_inode", "_private_data", "_state", "f_count", "kernel", "name",
    )

    def __init__(self, kernel: Kernel, inode: Inode, name: str | None = None) -> None:
        self.kernel = kernel
        self._f_inode = inode
        self._f_op: FileOperations | None = None
        self._private_data: Any = None
        self._state = _OPEN
        self._owns_inode = False
        # alloc_empty_file: the opener's reference.
        self.f_count = Atomic(kernel, 1)
        self.f_count.container = self
        serial = next(chrdev_state(kernel).file_ids)
        self.name = f"file#{serial} {name if name is not None else inode.name}"

    def _check(self, what: str) -> None:
        if self._state == _CLOSED:
            raise ModelUsageError(
                f"{what} on {self.name}, which is closed: a struct file must not be used after its "
                "last fput (close each file exactly once, and only while it is open)"
            )

    @property
    def f_op(self) -> FileOperations | None:
        self._check("f_op")
        return self._f_op

    @f_op.setter
    def f_op(self, fops: FileOperations | None) -> None:
        self._check("f_op")
        self._f_op = fops

    @property
    def private_data(self) -> Any:
        self._check("private_data")
        return self._private_data

    @private_data.setter
    def private_data(self, value: Any) -> None:
        self._check("private_data")
        self._private_data = value

    @property
    def f_inode(self) -> Inode:
        self._check("f_inode")
        return self._f_inode

    @property
    def closed(self) -> bool:
        """True once fput ran (a model helper; reading it never raises)."""
        return self._state == _CLOSED

    def close(self) -> None:
        """Drop the caller's reference (fput): what close(2) does for a file that no
        descriptor table holds (a table's descriptors are closed with ``close_fd``)."""
        fput(self)

    def __repr__(self) -> str:
        return f"<{self.name} ({self._state})>"


def replace_fops(filp: File, fops: FileOperations) -> None:
    """Swap the file's operations (the old ones' module reference is dropped)."""
    fops_put(filp.f_op)
    filp.f_op = fops


def chrdev_open(inode: Inode, filp: File) -> int:
    """def_chr_fops' open: find the cdev (cached in the inode, else looked up in the map
    and cached), take a reference on it for the file, install its fops and call their
    ->open.  0 (the file keeps the reference), or -ENXIO (nothing mapped, or the cdev is
    going away, or it has no fops) or the driver's open error (the reference is dropped).
    """
    st = chrdev_state(inode.kernel)
    new: Cdev | None = None
    ret = 0
    st.cdev_lock.spin_lock()
    p = inode.i_cdev
    if p is None:
        st.cdev_lock.spin_unlock()
        new = kobj_lookup(inode.kernel, inode.i_rdev)
        if new is None:
            return -ENXIO
        st.cdev_lock.spin_lock()
        # Another opener of this inode may have cached a cdev while the lock was dropped.
        p = inode.i_cdev
        if p is None:
            inode.i_cdev = p = new
            list_add(inode.i_devices, p.list)
            new = None
        elif cdev_get(p) is None:
            ret = -ENXIO
    elif cdev_get(p) is None:
        ret = -ENXIO
    st.cdev_lock.spin_unlock()
    cdev_put(new)
    if ret:
        return ret

    ret = -ENXIO
    fops = fops_get(p.ops)
    if fops is None:
        cdev_put(p)
        return ret
    replace_fops(filp, fops)
    f_op = filp.f_op
    if f_op is not None and f_op.open is not None:
        ret = f_op.open(inode, filp)
        if ret:
            cdev_put(p)
            return ret
    return 0


def_chr_fops: Final = FileOperations(open=chrdev_open, name="def_chr_fops")


def vfs_open_inode(k: Kernel, inode: Inode, *, name: str | None = None) -> File | int:
    """Open ``inode`` (do_dentry_open): a new file with the inode's fops, whose ->open runs.
    The File, or the negative errno of a failed open (the file is then discarded without
    ->release, as the kernel does).  The inode stays the caller's."""
    if inode.kernel is not k:
        raise ModelUsageError(f"vfs_open_inode: {inode!r} belongs to another kernel")
    f = File(k, inode, name)
    f.f_op = fops_get(inode.i_fop)
    f_op = f.f_op
    err = 0
    try:
        if f_op is not None and f_op.open is not None:
            err = f_op.open(inode, f)
    except BaseException:
        f._state = _CLOSED
        raise
    if err:
        fops_put(f._f_op)
        f._state = _CLOSED
        return err
    return f


def vfs_open_chrdev(k: Kernel, devt: int, *, name: str | None = None) -> File | int:
    """open(2) of a char device node for ``devt`` through a fresh inode (a /dev path
    lookup or a mknod'd node), so the cdev is looked up in the map.  The File, or the
    negative errno (-ENXIO when nothing is mapped).  The inode is evicted with the file."""
    inode = Inode(k, devt, name)
    res = vfs_open_inode(k, inode)
    if isinstance(res, File):
        res._owns_inode = True
    else:
        evict(inode)
    return res


def __fput(file: File) -> None:
    inode = file._f_inode
    fop = file._f_op
    if fop is not None and fop.release is not None:
        fop.release(inode, file)
    # The reference chrdev_open took; the inode still caches that cdev, since neither a
    # release (the count is not zero) nor an eviction (the file pins the inode) cleared it.
    if inode.i_cdev is not None:
        cdev_put(inode.i_cdev)
    fops_put(fop)
    if file._owns_inode:
        evict(inode)


def fput(file: File) -> None:
    """Drop one reference; the last one runs ``__fput``: f_op->release, then the cdev
    reference, and the file is closed.  A file already closed (or closing) is a
    ModelUsageError: nothing may hold a reference to a struct file after its last fput."""
    if file._state != _OPEN:
        raise ModelUsageError(
            f"fput of {file.name}, which is already {file._state}: a struct file is released once "
            "(close each file exactly once)"
        )
    if not atomic_dec_and_test(file.f_count):
        return
    file._state = _CLOSING
    try:
        __fput(file)
    finally:
        file._state = _CLOSED


def vfs_ioctl(file: File, cmd: Any, arg: Any = 0) -> Any:
    """ioctl(2) on an open file: its unlocked_ioctl's result, or -ENOTTY if it has none."""
    file._check("ioctl")
    f_op = file.f_op
    if f_op is None or f_op.unlocked_ioctl is None:
        return -ENOTTY
    return f_op.unlocked_ioctl(file, cmd, arg)


__all__ = [
    "CDEV_PARENT_REF",
    "CHRDEV_MAJOR_DYN_END",
    "CHRDEV_MAJOR_DYN_EXT_END",
    "CHRDEV_MAJOR_DYN_EXT_START",
    "CHRDEV_MAJOR_HASH_SIZE",
    "CHRDEV_MAJOR_MAX",
    "Cdev",
    "CdevMap",
    "CharDeviceStruct",
    "ChrdevState",
    "File",
    "FileOperations",
    "Inode",
    "Probe",
    "alloc_chrdev_region",
    "cd_forget",
    "cdev_add",
    "cdev_alloc",
    "cdev_default_release",
    "cdev_del",
    "cdev_device_add",
    "cdev_device_del",
    "cdev_dynamic_release",
    "cdev_get",
    "cdev_init",
    "cdev_purge",
    "cdev_put",
    "cdev_set_parent",
    "chrdev_open",
    "chrdev_state",
    "def_chr_fops",
    "evict",
    "find_dynamic_major",
    "fops_get",
    "fops_put",
    "fput",
    "imajor",
    "iminor",
    "kobj_lookup",
    "kobj_map",
    "kobj_unmap",
    "major_to_index",
    "register_chrdev_region",
    "replace_fops",
    "unregister_chrdev_region",
    "vfs_ioctl",
    "vfs_open_chrdev",
    "vfs_open_inode",
]
