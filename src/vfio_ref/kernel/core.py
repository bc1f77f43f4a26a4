"""The simulated kernel: one instance holds everything a scenario runs on.

A :class:`Kernel` owns the checkers (the WARN log, the slab's live set, lockdep, the
happens-before tracker), the fault injector, the scheduler hook, and the per-subsystem state
(chrdev map, classes, iommu group IDA, workqueue, driver core).  Nothing is global, so two
kernels never see each other, and the explorer can build a fresh one per schedule.

Two modes, fixed when the kernel is built:

* free-running (``Kernel()``): model threads are real ``threading`` threads, locks are real
  locks, and the scheduling hook is a no-op;
* controlled (``Kernel(sched=...)``, built by the explorer): exactly one model thread runs at a
  time and every scheduling point hands control to the scheduler.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .fault import FaultInjector
    from .file import FilesStruct
    from .hb import HappensBefore
    from .lockdep import Lockdep, LockdepReport
    from .sched import Scheduler
    from .slab import Leak, Slab
    from .workqueue import Workqueue

CAP_SYS_RAWIO: Final = "CAP_SYS_RAWIO"
CAP_SYS_ADMIN: Final = "CAP_SYS_ADMIN"
ALL_CAPS: Final = frozenset({CAP_SYS_RAWIO, CAP_SYS_ADMIN})

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODEL_DIRS = (os.path.join(_PKG_DIR, "kernel"), os.path.join(_PKG_DIR, "vfio"))
_SKIP_FRAMES = frozenset(
    {
        "WARN_ON", "WARN_ON_ONCE", "WARN", "WARN_ONCE", "dev_WARN", "BUG_ON", "BUG",
        "backtrace", "model_site", "__init__", "__getattribute__", "__setattr__", "point",
        "<lambda>", "<genexpr>", "<listcomp>", "<module>", "body", "_worker", "guarded",
    }
)


# --------------------------------------------------------------------------------------
# Faults: what ends a model thread the way an oops ends a kernel task.


class KernelFault(Exception):
    """Base of everything the simulated kernel raises instead of corrupting memory.

    ``kind`` is the finding kind a verdict reports it as.
    """

    kind = "bug"

    def __init__(self, message: str, *, function: str = "", what: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.thread = current_thread_name()
        self.backtrace: tuple[str, ...] = ()
        # The fault's identity, as a report names it: the kernel function where it happened
        # and what happened there (the BUG_ON condition, the freed Type.member touched...).
        self.function = function
        self.what = what


class KernelBug(KernelFault):
    """BUG_ON() fired (or an invalid free): the calling task oopses and stops."""

    kind = "bug"


class UseAfterFree(KernelFault):
    """A field of a kfree'd object was read or written (KASAN: use-after-free)."""

    kind = "use-after-free"


class DoubleFree(KernelFault):
    """kfree() of an object that was already freed (KASAN: double-free)."""

    kind = "double-free"


class Deadlock(KernelFault):
    """The calling task can never make progress: it waits for itself, or on a wait-for cycle."""

    kind = "deadlock"


class ModelUsageError(Exception):
    """A caller used the model wrongly (bad name, closed file, dead kernel...): not a kernel bug."""


# --------------------------------------------------------------------------------------
# Where in the model are we?  Backtraces name kernel functions only.


_model_file_cache: dict[str, bool] = {}
_rel_cache: dict[str, str] = {}


def _is_model_file(filename: str) -> bool:
    r = _model_file_cache.get(filename)
    if r is None:
        r = _model_file_cache[filename] = filename.startswith(_MODEL_DIRS)
    return r


def _is_model_frame(f: FrameType) -> bool:
    return _is_model_file(f.f_code.co_filename)


def _rel(filename: str) -> str:
    r = _rel_cache.get(filename)
    if r is None:
        if _is_model_file(filename):
            r = os.path.relpath(filename, os.path.dirname(_PKG_DIR))
        else:
            r = os.path.basename(filename)
        _rel_cache[filename] = r
    return r


# Per code object (keyed by id, checked by identity): what a frame running it contributes.
# Walking a stack then costs a dict lookup per frame instead of a filename test, a set test
# and a prefix test (backtraces are taken at every allocation, free and WARN).
_bt_codes: dict[int, tuple[CodeType, str | None]] = {}
_site_codes: dict[int, tuple[CodeType, str, int, str]] = {}
_SITE_SKIP, _SITE_MODEL, _SITE_OTHER = 0, 1, 2


def _bt_code(code: CodeType) -> tuple[CodeType, str | None]:
    """(code, the name a backtrace shows for it, or None when it shows nothing)."""
    name = code.co_name
    shown = (
        _is_model_file(code.co_filename)
        and name not in _SKIP_FRAMES
        and (not name.startswith("_") or name.startswith("__vfio"))
    )
    e = _bt_codes[id(code)] = (code, name if shown else None)
    return e


def _site_code(code: CodeType) -> tuple[CodeType, str, int, str]:
    """(code, name, skip / model / other, file name as model_site prints it)."""
    name = code.co_name
    if name in _SKIP_FRAMES:
        kind = _SITE_SKIP
    elif _is_model_file(code.co_filename):
        kind = _SITE_MODEL
    else:
        kind = _SITE_OTHER
    e = _site_codes[id(code)] = (code, name, kind, _rel(code.co_filename))
    return e


def backtrace(skip: int = 1, limit: int = 12) -> tuple[str, ...]:
    """Kernel function names on the calling stack, innermost first (the model's call trace)."""
    return backtrace_from(sys._getframe(skip), limit)


def backtrace_from(f: FrameType | None, limit: int = 12) -> tuple[str, ...]:
    """As :func:`backtrace`, from frame ``f`` outwards.  ``f`` may have returned since it was
    taken: a frame object keeps its callers (``f_back``), and the names are its code's, so a
    record can keep the frame and name the chain only when a report needs it."""
    out: list[str] = []
    get = _bt_codes.get
    outside = 0
    while f is not None:
        code = f.f_code
        e = get(id(code))
        if e is None or e[0] is not code:
            e = _bt_code(code)
        name = e[1]
        if name is not None:
            out.append(name)
            outside = 0
            if len(out) >= limit:
                break
        elif out:
            # Past the model's outermost frames (a test runner's stack, say): once this many
            # frames in a row are not the model's, the rest of the stack is not either.
            outside += 1
            if outside >= _BT_OUTSIDE:
                break
        f = f.f_back
    return tuple(out)


_BT_OUTSIDE = 6


class CallSite:
    """Where a record was made: the innermost kernel function and its call chain, named when
    first read.  The record keeps the frame of the function that made the call (its callers
    stay reachable from it after they return, and the names are its code's), so a record
    nobody reports on costs no stack walk.  ``function`` may be given at once instead.  A
    subclass sets ``depth``, the most names its chain keeps; a pickle carries the names."""

    __slots__ = ("_chain", "_frame", "_function")
    depth = 12  # as backtrace()

    def __init__(self, frame: FrameType | None, chain: tuple[str, ...] = (), function: str | None = None) -> None:
        assert frame is not None or function is not None
        self._frame = frame
        self._chain = chain
        self._function = function

    def _name(self) -> None:
        f = self._frame
        if f is not None:
            self._chain = backtrace_from(f, self.depth)
            if self._function is None:
                self._function = site_from(f)[0]
            self._frame = None

    @property
    def backtrace(self) -> tuple[str, ...]:
        """Kernel function names from the call outwards, innermost first (none without a frame)."""
        self._name()
        return self._chain

    @property
    def function(self) -> str:
        """The innermost kernel function of the call (as model_site names it)."""
        if self._function is None:
            self._name()
        assert self._function is not None
        return self._function


def model_site(skip: int = 1) -> tuple[str, str]:
    """(innermost kernel function, 'file:line') of the caller, skipping the substrate helpers."""
    return site_from(sys._getframe(skip))


def site_from(f: FrameType | None) -> tuple[str, str]:
    """As :func:`model_site`, from frame ``f`` outwards (the line is where each frame is now:
    at the call while it runs, at its last line once it has returned)."""
    fallback: tuple[str, str] | None = None
    get = _site_codes.get
    while f is not None:
        code = f.f_code
        e = get(id(code))
        if e is None or e[0] is not code:
            e = _site_code(code)
        kind = e[2]
        if kind == _SITE_MODEL:
            return e[1], f"{e[3]}:{f.f_lineno}"
        if kind == _SITE_OTHER and fallback is None:
            fallback = (e[1], f"{e[3]}:{f.f_lineno}")
        f = f.f_back
    return fallback if fallback is not None else ("?", "?")


def caller_outside(filename: str, skip: int = 2) -> str:
    """The first kernel function on the stack defined outside ``filename`` (the caller of a
    substrate API, e.g. ``vfio_group_alloc`` for an ida_alloc_max it made)."""
    f: FrameType | None = sys._getframe(skip)
    while f is not None:
        if f.f_code.co_filename != filename and f.f_code.co_name not in _SKIP_FRAMES:
            return f.f_code.co_name
        f = f.f_back
    return "?"


# --------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class WarnEvent:
    """One WARN that fired.

    ``function`` is the kernel function holding the WARN (``refcount_warn_saturate`` for the
    refcount_t warnings), ``message`` the kernel's condition text (WARN_ON) or message (WARN),
    ``backtrace`` the kernel functions that led there, innermost first.  ``printed`` is False
    for a WARN_ONCE the kernel would not print again (the event is recorded anyway).
    """

    function: str
    message: str
    macro: str
    thread: str
    site: str
    backtrace: tuple[str, ...]
    printed: bool = True
    step: int | None = None

    @property
    def caller(self) -> str:
        """The first function above the WARN site (who called refcount_inc, say)."""
        for name in self.backtrace:
            if name != self.function:
                return name
        return self.function

    def __str__(self) -> str:
        chain = " <- ".join(self.backtrace)
        return f"WARNING in {self.function}: {self.message} [{self.macro}; {chain}; {self.thread}]"


@dataclass(eq=False)
class Task:
    """A thread of the simulated kernel (``current``): its name, capabilities and held locks."""

    name: str
    tid: int
    caps: frozenset[str] = ALL_CAPS
    held: list[Any] = field(default_factory=list)
    waiting_for: Any = None
    kernel_id: int = 0
    exited: bool = False
    vc: dict[int, int] | None = None  # happens-before clock (explorer only)

    def capable(self, cap: str) -> bool:
        return cap in self.caps


_tls = threading.local()


def current_thread_name() -> str:
    t = getattr(_tls, "task", None)
    if t is not None:
        return str(t.name)
    return threading.current_thread().name


# --------------------------------------------------------------------------------------
# The kernel


_CHECKERS: tuple[Any, ...] | None = None


def _checkers() -> tuple[Any, ...]:
    """The checker classes a Kernel builds (imported on first use: they import this module)."""
    global _CHECKERS
    if _CHECKERS is None:
        from .fault import FaultInjector
        from .hb import HappensBefore
        from .lockdep import Lockdep
        from .slab import Slab

        _CHECKERS = (FaultInjector, HappensBefore, Lockdep, Slab)
    return _CHECKERS


_BOOT: tuple[Any, ...] | None = None


def _boot_classes() -> tuple[Any, ...]:
    """The classes of what a Kernel has from boot (imported on first use, as _checkers)."""
    global _BOOT
    if _BOOT is None:
        from .file import FilesStruct
        from .workqueue import Workqueue

        _BOOT = (FilesStruct, Workqueue)
    return _BOOT


class Kernel:
    """A fresh simulated kernel.

    Checkers:
      ``warnings``        every WARN that fired (:class:`WarnEvent`), printed or not;
      ``lockdep_reports`` lock-order problems seen (no deadlock needed);
      ``faults``          KernelFaults that ended a model thread (BUG, UAF, double free...);
      ``leaks()``         what is still allocated or referenced at the end.

    ``sched`` is None in free-running mode; the explorer passes its scheduler.  ``lockdep``
    and ``kasan`` can be switched off to measure what they cost.
    """

    def __init__(
        self,
        *,
        sched: Scheduler | None = None,
        lockdep: bool = True,
        kasan: bool = True,
        hb: bool | None = None,
        hang_timeout: float = 10.0,
    ) -> None:
        fault_cls, hb_cls, lockdep_cls, slab_cls = _checkers()
        self.sched: Scheduler | None = sched
        self.warnings: list[WarnEvent] = []
        self.faults: list[KernelFault] = []
        self.log: list[str] = []
        self.slab: Slab = slab_cls(self, kasan=kasan)
        self.lockdep_enabled = lockdep
        self.lockdep: Lockdep = lockdep_cls(self)
        self.fault_inject: FaultInjector = fault_cls(self)
        # Happens-before checking needs a single controlled timeline: on by default
        # under the explorer, off in free-running mode.
        use_hb = (sched is not None) if hb is None else hb
        self.hb: HappensBefore | None = hb_cls(self) if use_hb else None
        self.hang_timeout = hang_timeout
        # Lean: skip the allocation/free call chains the slab records (the explorer's search
        # runs lean and replays a finding's schedule in full to report it).
        self.lean = False
        self.state: dict[str, Any] = {}
        self.tainted: set[str] = set()
        self.oopsed = False
        self.dead = False  # set once the scenario has torn the platform down
        self._warn_once_seen: set[tuple[str, str]] = set()
        self._tids = itertools.count()
        self._tasks: list[Task] = []
        self._sched_task: Task | None = None  # set by the scheduler on each switch
        self._lock = threading.Lock()  # guards the kernel's own bookkeeping lists
        self.init_task = self.new_task("init")
        # Set once more than one real thread runs model code: atomics then take atomic_lock.
        self.smp = False
        self.atomic_lock = threading.Lock()
        self._os_threads: set[int] = set()
        # What exists from boot, before any model thread runs: the user-space process's
        # descriptor table (``current->files``; the model has one process) and the system
        # workqueue.  Made here rather than by their first user, which is a different thread
        # in different schedules: an explorer names an object after the thread that made it,
        # and a search that prunes compares names across executions.
        files_cls, wq_cls = _boot_classes()
        self.files: FilesStruct = files_cls(self)
        self.system_wq: Workqueue = wq_cls(self)

    # -- tasks -------------------------------------------------------------------------

    def new_task(self, name: str, caps: frozenset[str] = ALL_CAPS) -> Task:
        with self._lock:
            t = Task(name=name, tid=next(self._tids), caps=caps, kernel_id=id(self))
            self._tasks.append(t)
        return t

    def current(self) -> Task:
        """The running task (``current`` in the kernel)."""
        t = self._sched_task
        if t is not None:
            return t
        t = getattr(_tls, "task", None)
        if t is None or t.kernel_id != id(self):
            t = self.new_task(threading.current_thread().name)
            _tls.task = t
            self._os_threads.add(threading.get_ident())
            if len(self._os_threads) > 1:
                self.smp = True
        return t

    @contextmanager
    def as_task(self, task: Task) -> Iterator[Task]:
        """Run the body as ``task`` on this OS thread (free-running mode)."""
        prev = getattr(_tls, "task", None)
        _tls.task = task
        try:
            yield task
        finally:
            _tls.task = prev

    @contextmanager
    def capabilities(self, caps: frozenset[str] | set[str]) -> Iterator[None]:
        """Temporarily give the current task exactly ``caps`` (e.g. drop CAP_SYS_RAWIO)."""
        t = self.current()
        prev = t.caps
        t.caps = frozenset(caps)
        try:
            yield
        finally:
            t.caps = prev

    def capable(self, cap: str) -> bool:
        return self.current().capable(cap)

    # -- scheduling --------------------------------------------------------------------

    def step(self) -> int | None:
        s = self.sched
        return None if s is None else s.step_no

    # -- reports -----------------------------------------------------------------------

    def record_warn(
        self, function: str, message: str, macro: str, site: str, *, once: bool = False,
        once_key: str | None = None,
    ) -> WarnEvent:
        """Record a WARN.  ``once``: the kernel prints it only the first time for its call
        site, identified by ``once_key`` (default: the function and message)."""
        printed = True
        if once:
            key = (function, once_key if once_key is not None else message)
            printed = key not in self._warn_once_seen
            self._warn_once_seen.add(key)
        ev = WarnEvent(
            function=function,
            message=message,
            macro=macro,
            thread=self.current().name,
            site=site,
            backtrace=backtrace(3),
            printed=printed,
            step=self.step(),
        )
        with self._lock:
            self.warnings.append(ev)
        if printed:
            self.printk(f"WARNING: {function}: {message}")
        return ev

    def record_fault(self, exc: KernelFault) -> None:
        """Note a fault that ended a model thread (called by the thread runners)."""
        t = self._sched_task
        if t is not None:  # under the explorer: the model thread, not the OS thread
            exc.thread = t.name
        with self._lock:
            if exc not in self.faults:
                self.faults.append(exc)
        self.oopsed = True

    def printk(self, line: str) -> None:
        self.log.append(line)

    @property
    def lockdep_reports(self) -> list[LockdepReport]:
        return self.lockdep.reports

    def leaks(self) -> list[Leak]:
        """Objects still allocated (kmemleak's 'unreferenced object'), each with what holds it."""
        return self.slab.leaks()

    def clear_warn_once(self) -> None:
        """As /sys/kernel/debug/clear_warn_once: WARN_ONCE sites print again."""
        self._warn_once_seen.clear()

    # -- running model code on real threads (free-running mode) -------------------------

    def run_threads(
        self, *fns: Callable[[], object], names: tuple[str, ...] | None = None
    ) -> list[KernelFault]:
        """Run each callable on its own ``threading`` thread as its own task, join them all.

        A KernelFault raised in a thread ends that thread and is recorded in ``faults``
        (and returned); other exceptions propagate to the caller after the join.
        """
        if self.sched is not None:
            raise ModelUsageError("run_threads() is for free-running kernels; use the explorer")
        errors: list[BaseException] = []
        faults: list[KernelFault] = []
        tasks = [self.new_task(names[i] if names else f"T{i}") for i in range(len(fns))]
        self.smp = True

        def body(task: Task, fn: Callable[[], object]) -> None:
            with self.as_task(task):
                try:
                    fn()
                except KernelFault as e:
                    self.record_fault(e)
                    faults.append(e)
                except BaseException as e:
                    errors.append(e)
                finally:
                    task.exited = True

        threads = [
            threading.Thread(target=body, args=(t, fn), name=t.name, daemon=True)
            for t, fn in zip(tasks, fns, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(self.hang_timeout * 2)
            if th.is_alive():
                raise Deadlock(f"thread {th.name} did not finish within {self.hang_timeout * 2}s")
        if errors:
            raise errors[0]
        return faults
