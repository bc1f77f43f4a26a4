"""kzalloc / kfree with KASAN-like poisoning and a kmemleak-like live set (mm/slab_common.c).

Model structs derive from :class:`KStruct`.  ``kzalloc(k, VfioGroup)`` builds one (fields
zeroed by its constructor), registers it as live with the allocating kernel function, and
passes the fault injector first: a failed allocation returns None, as the kernel returns NULL.

``kfree`` poisons the object by switching its class to a poisoned twin whose attribute access
raises :class:`UseAfterFree` naming the type, the field, who freed it and who touched it.
Live objects keep their own class, so poisoning costs nothing on their field accesses.
Structs embedded in a freed one (its ``_embedded`` fields: a struct device, a cdev, a mutex,
a list node) are poisoned with it: they share the container's memory.

Under a controlled scheduler that asks for them (the explorer's reductions), structs are
*watched*: built as a twin class whose member reads and writes are reported to the scheduler
(``access``), so that it knows every plain access a step makes, and ``kfree`` reports the
whole object written (``freed``).  Members declared ``SharedField`` are reported by their own
scheduling points instead.  Free-running kernels build the plain class.

Complexity: kzalloc O(1), kfree O(embedded fields), leaks() O(live objects).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .core import CallSite, DoubleFree, Kernel, KernelBug, UseAfterFree, backtrace, model_site
from .errno import IS_ERR
from .kexpr import is_embedded, kexpr, struct_name
from .sched import Scheduler, note_created

if TYPE_CHECKING:
    pass

T = TypeVar("T", bound="KStruct")

# How many kernel functions an allocation's or a free's call chain keeps (KASAN keeps whole
# stacks; the model's are rarely deeper than this).  Not recorded at all in lean mode.
CHAIN_DEPTH = 16


class AllocInfo(CallSite):
    """Who allocated an object: its type, the kernel function, the task, the step, and the
    call chain."""

    __slots__ = ("step", "thread", "type")
    depth = CHAIN_DEPTH

    def __init__(
        self, type: str, function: str, thread: str, step: int | None, frame: FrameType | None = None,
        chain: tuple[str, ...] = (),
    ) -> None:
        super().__init__(frame, chain, function)
        self.type = type
        self.thread = thread
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        return (AllocInfo, (self.type, self.function, self.thread, self.step, None, self.backtrace))

    def __repr__(self) -> str:
        return f"AllocInfo({self.type}, {self.function}, {self.thread}, step {self.step})"


class FreeInfo(CallSite):
    """Who freed an object, as AllocInfo says who allocated it, and that allocation.  With a
    frame, the freeing function is named from it when first read."""

    __slots__ = ("allocated", "step", "thread", "type")
    depth = CHAIN_DEPTH

    def __init__(
        self, type: str, function: str | None, thread: str, step: int | None, allocated: AllocInfo | None,
        frame: FrameType | None = None, chain: tuple[str, ...] = (),
    ) -> None:
        super().__init__(frame, chain, function)
        self.type = type
        self.thread = thread
        self.step = step
        self.allocated = allocated

    def __reduce__(self) -> tuple[Any, ...]:
        return (FreeInfo, (self.type, self.function, self.thread, self.step, self.allocated, None, self.backtrace))

    def __repr__(self) -> str:
        return f"FreeInfo({self.type}, {self.function}, {self.thread}, step {self.step})"


@dataclass(frozen=True)
class Leak:
    """One object still alive when the scenario ended (kmemleak: 'unreferenced object')."""

    type: str
    allocated_by: str
    thread: str
    detail: str
    backtrace: tuple[str, ...]

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"unreferenced object {struct_name(self.type)}{extra}, allocated by {self.allocated_by} [{self.thread}]"


class KStruct:
    """Base of model structs.  ``_embedded`` names fields whose objects share this memory.

    ``_poison`` holds the FreeInfo once freed; it is the only attribute a freed object
    still answers.
    """

    _embedded: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Every model struct is built with its kernel first: under a scheduler that watches
        # plain accesses it is built as the watched twin while that scheduler records steps
        # (and turned into it when the scheduler starts recording: watch_members), and the
        # scheduler learns it exists.
        s: Scheduler | None = getattr(args[0], "sched", None) if args else None
        if s is not None and WATCH.sched is s:
            obj: Any = object.__new__(watched_class(cls) if WATCH.report is s else cls)
            WATCH.objs.append(obj)
        else:
            obj = object.__new__(cls)
        note_created(s, obj)
        return obj

    def __init__(self, kernel: Kernel, *args: Any, **kwargs: Any) -> None:
        self.kernel = kernel

    def leak_detail(self) -> str:
        """What a leak report should say about this object (its refcounts, its name)."""
        return ""


class _Watch:
    """``sched``: the scheduler whose structs are watched (None: nobody is watching);
    ``report``: the scheduler their member accesses are reported to, only while it records
    steps (None otherwise); ``objs``: the structs built under ``sched``, in order.

    Invariant (kept by KStruct.__new__ and watch_members): while ``report`` is ``sched``,
    every live struct of ``objs`` is its watched twin; while it is None, none is, so an
    unrecorded access is a plain attribute access (a watched one, even unreported, is a call
    into Python: watched throughout, a reduced search's schedule cost 6-7% more)."""

    __slots__ = ("objs", "report", "sched")

    def __init__(self) -> None:
        self.sched: Any = None
        self.report: Any = None
        self.objs: list[Any] = []


# One explorer execution runs at a time in a process (its threads are greenlets of one OS
# thread); it sets WATCH.sched while it runs and clears it after.
WATCH = _Watch()

# Members that are not the struct's state: the class machinery, and the poison marker.
_NEVER_WATCHED = frozenset({"__class__", "__dict__", "_poison", "_embedded", "__slots__"})
_watched: dict[type, type] = {}


def watched_class(cls: type) -> type:
    """The watched twin of ``cls``: same layout and name, member accesses reported."""
    wc = _watched.get(cls)
    if wc is not None:
        return wc
    from .shared import SharedField

    skip = _NEVER_WATCHED | frozenset(
        name for klass in cls.__mro__ for name, v in vars(klass).items() if isinstance(v, SharedField)
    )
    get = object.__getattribute__
    put = object.__setattr__

    def __getattribute__(self: Any, name: str) -> Any:
        s = WATCH.report
        if s is not None and name not in skip:
            s.access(self, name, False)
        return get(self, name)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        s = WATCH.report
        if s is not None and name not in skip:
            s.access(self, name, True)
        put(self, name, value)

    wc = type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__getattribute__": __getattribute__,
            "__setattr__": __setattr__,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )
    _watched[cls] = wc
    _watched[wc] = wc
    _unwatched[wc] = cls
    return wc


_unwatched: dict[type, type] = {}  # watched twin -> the class it watches


def watch_members(on: bool) -> None:
    """Turn every live struct of ``WATCH.objs`` into its watched twin (``on``, when the
    scheduler starts recording) or back into its own class (when it stops).  A freed struct
    keeps its poisoned class.  O(structs built in the execution): about 0.3 µs each."""
    setclass = object.__setattr__  # a watched twin's own __setattr__ would be a detour
    if on:
        watched = _watched
        for o in WATCH.objs:
            c = type(o)
            wc = watched.get(c)
            if wc is None:
                if c in _poisoned_set:
                    continue
                wc = watched_class(c)
            if wc is not c:
                setclass(o, "__class__", wc)
    else:
        unwatched = _unwatched
        for o in WATCH.objs:
            pc = unwatched.get(type(o))
            if pc is not None:
                setclass(o, "__class__", pc)


_poisoned: dict[type, type] = {}
_ALLOWED_ON_FREED = frozenset({"__class__", "_poison", "__dict__", "_embedded", "__slots__"})


def _freed_getattribute(self: Any, name: str) -> Any:
    if name in _ALLOWED_ON_FREED:
        return object.__getattribute__(self, name)
    s = WATCH.report
    if s is not None:
        s.access(self, name, False)  # the faulting access is part of the step that makes it
    raise _uaf(self, name, "read")


def _freed_setattr(self: Any, name: str, value: Any) -> None:
    if name == "_poison":
        object.__setattr__(self, name, value)
        return
    s = WATCH.report
    if s is not None:
        s.access(self, name, True)
    raise _uaf(self, name, "write")


def _freed_repr(self: Any) -> str:
    orig = type(self).__mro__[1].__name__
    return f"<freed {orig} at {id(self):#x}>"


def _chain(bt: tuple[str, ...]) -> str:
    """' (a <- b <- c)', or nothing when no call chain was recorded (the explorer's search)."""
    return f" ({' <- '.join(bt)})" if bt else ""


# The model's own members of a struct (its kernel pointer): touching one is how the model
# reaches a tracked member, never an access the C makes.
_MODEL_MEMBERS = frozenset({"kernel"})


def _tracked_member(depth: int) -> tuple[str, str, int] | None:
    """When the access was made by a tracked field's accessor (a SharedField reading the
    struct's kernel pointer), the member the C accesses, read or write, and the depth of
    the accessor's caller (relative to this function's caller)."""
    f: FrameType | None = sys._getframe(depth + 1)
    for d in range(depth, depth + 4):
        if f is None:
            return None
        code = f.f_code
        if code.co_name in ("__get__", "__set__") and code.co_filename.endswith("shared.py"):
            desc = f.f_locals.get("self")
            name = getattr(desc, "name", None)
            if isinstance(name, str):
                return name, "read" if code.co_name == "__get__" else "write", d + 1
        f = f.f_back
    return None


def _uaf(obj: Any, field: str, access: str) -> UseAfterFree:
    info: FreeInfo | None = object.__getattribute__(obj, "_poison")
    fn, site = model_site(3)
    if field in _MODEL_MEMBERS:
        tracked = _tracked_member(2)
        if tracked is not None:
            field, access, depth = tracked
            fn, site = model_site(depth + 1)
    tname = info.type if info else type(obj).__mro__[1].__name__
    # group->device_lock; group->cdev.list through an embedded struct; the struct itself when
    # the model touched what C does not have: its own bookkeeping (``.kernel``), or the back
    # pointer of an embedded struct (C's container_of is arithmetic, not a read).
    model_only = field in _MODEL_MEMBERS or (field == "container" and is_embedded(obj))
    member = kexpr(obj, "" if model_only else field)
    lines = [f"BUG: KASAN: use-after-free in {fn}: {access} of {member} ({struct_name(tname)}) [{site}]"]
    if info is not None:
        if info.allocated is not None:
            a = info.allocated
            lines.append(f"Allocated by task {a.thread} in {a.function}{_chain(a.backtrace)}")
        lines.append(
            f"Freed by task {info.thread} in {info.function}{_chain(info.backtrace)}"
            + (f" at step {info.step}" if info.step is not None else "")
        )
    exc = UseAfterFree("\n".join(lines), function=fn, what=f"{access} of {member}")
    exc.backtrace = backtrace(3)
    exc.freed = info  # type: ignore[attr-defined]
    exc.field = field  # type: ignore[attr-defined]
    exc.access = access  # type: ignore[attr-defined]
    exc.accessed = obj  # type: ignore[attr-defined]  # the freed struct touched (maybe embedded in another)
    return exc


def poisoned_class(cls: type) -> type:
    """The poisoned twin of ``cls``: same layout, every field access raises UseAfterFree."""
    pc = _poisoned.get(cls)
    if pc is None:
        pc = type(
            f"Freed{cls.__name__}",
            (cls,),
            {
                "__slots__": (),
                "__getattribute__": _freed_getattribute,
                "__setattr__": _freed_setattr,
                "__repr__": _freed_repr,
            },
        )
        _poisoned[cls] = pc
    return pc


def is_freed(obj: object) -> bool:
    return type(obj) in _poisoned_set


_poisoned_set: set[type] = set()


# Per struct type: its poisoned twin, the fields embedded in it, and whether ordinary attribute
# reads and writes reach its members (computed once).
_poison_plans: dict[type, tuple[type, tuple[str, ...], bool]] = {}


def _poison_plan(cls: type) -> tuple[type, tuple[str, ...], bool]:
    pc = poisoned_class(cls)
    _poisoned_set.add(pc)
    # The explorer's watched twins report every member access: poisoning one goes around them.
    c: Any = cls
    plain = c.__getattribute__ is object.__getattribute__ and c.__setattr__ is object.__setattr__
    plan = _poison_plans[cls] = (pc, tuple(getattr(cls, "_embedded", ())), plain)
    return plan


def embedded_members(obj: Any) -> list[Any]:
    """Everything embedded in ``obj``'s memory (its ``_embedded`` members, recursively)."""
    out: list[Any] = []
    getfield = object.__getattribute__
    for name in getattr(type(obj), "_embedded", ()):
        inner = getfield(obj, name)
        if inner is not None and not isinstance(inner, (int, str, tuple)):
            out.append(inner)
            out.extend(embedded_members(inner))
    return out


def poison(obj: Any, info: FreeInfo | None) -> None:
    """Turn ``obj`` and everything embedded in it into freed memory (one loop over the
    embedded members, no recursion: kfree's cost with KASAN on).

    A struct of a plain class is poisoned with ordinary attribute writes: on CPython 3.11
    ``o.__class__ = pc`` costs a third and ``o._poison = info`` a fifteenth of the same
    write through ``object.__setattr__``, which only the explorer's watched twins need."""
    getfield = object.__getattribute__
    setfield = object.__setattr__
    plans = _poison_plans
    todo = [obj]
    while todo:
        o = todo.pop()
        cls = type(o)
        plan = plans.get(cls)
        if plan is None:
            if cls in _poisoned_set:
                continue
            plan = _poison_plan(cls)
        pc, embedded, plain = plan
        get = getattr if plain else getfield
        for name in embedded:
            inner = get(o, name)
            if inner is not None and not isinstance(inner, (int, str, tuple)):
                todo.append(inner)
        if plain:
            o._poison = info
            o.__class__ = pc
        else:
            setfield(o, "_poison", info)
            setfield(o, "__class__", pc)


class Slab:
    """The kernel's view of its heap: which model objects are live, and who allocated them."""

    def __init__(self, kernel: Kernel, *, kasan: bool = True) -> None:
        self.kernel = kernel
        self.kasan = kasan
        self.live: dict[int, tuple[object, AllocInfo]] = {}
        self.allocs = 0
        self.frees = 0

    def track(self, obj: object, function: str) -> AllocInfo:
        k = self.kernel
        # The frame backtrace(3) would start from: kzalloc's caller.
        info = AllocInfo(type(obj).__name__, function, k.current().name, k.step(), None if k.lean else sys._getframe(2))
        self.live[id(obj)] = (obj, info)
        self.allocs += 1
        return info

    def untrack(self, obj: object) -> AllocInfo | None:
        entry = self.live.pop(id(obj), None)
        self.frees += 1
        return None if entry is None else entry[1]

    def leaks(self) -> list[Leak]:
        out = []
        for obj, info in self.live.values():
            detail = obj.leak_detail() if isinstance(obj, KStruct) else ""
            out.append(Leak(info.type, info.function, info.thread, detail, info.backtrace))
        return out


def kzalloc(k: Kernel, cls: type[T], *args: Any, **kwargs: Any) -> T | None:
    """Allocate a zeroed ``cls`` (constructed as ``cls(k, *args)``); None when injected to fail."""
    fn, _ = model_site(2)
    if k.fault_inject.should_fail("kzalloc", fn, cls.__name__):
        return None
    obj = cls(k, *args, **kwargs)
    k.slab.track(obj, fn)
    return obj


def kmalloc(k: Kernel, cls: type[T], *args: Any, **kwargs: Any) -> T | None:
    """As kzalloc (model structs are always built zeroed); its own fault-injection kind."""
    fn, _ = model_site(2)
    if k.fault_inject.should_fail("kmalloc", fn, cls.__name__):
        return None
    obj = cls(k, *args, **kwargs)
    k.slab.track(obj, fn)
    return obj


def kfree(k: Kernel, obj: object) -> None:
    """Free ``obj``: NULL is ignored, a second free raises DoubleFree, an ERR_PTR is a BUG."""
    if obj is None:
        return
    if IS_ERR(obj):
        fn, site = model_site(2)
        exc = KernelBug(
            f"BUG: KASAN: invalid-free in {fn}: kfree({obj!r}) [{site}]", function=fn, what="invalid-free"
        )
        exc.backtrace = backtrace(2)
        raise exc
    s = k.sched
    if s is not None and getattr(s, "recording", False):
        # The free is part of the step that makes it, a second free included (the explorer
        # must see two frees of one object as conflicting, whichever comes second).
        s.freed(obj, embedded_members(obj))
    if type(obj) in _poisoned_set:
        info: FreeInfo | None = object.__getattribute__(obj, "_poison")
        fn, site = model_site(2)
        orig = type(obj).__mro__[1].__name__
        msg = f"BUG: KASAN: double-free in {fn}: {orig} [{site}]"
        if info is not None:
            msg += f"\nFreed by task {info.thread} in {info.function}{_chain(info.backtrace)}"
        exc2 = DoubleFree(msg, function=fn, what=f"double-free of {orig}")
        exc2.backtrace = backtrace(2)
        raise exc2
    if id(obj) not in k.slab.live:
        # Not an object this slab handed out (a struct built without kzalloc, or not a model
        # object at all): KASAN's "invalid-free".
        fn, site = model_site(2)
        exc3 = KernelBug(
            f"BUG: KASAN: invalid-free in {fn}: kfree({type(obj).__name__} object kzalloc never returned) [{site}]",
            function=fn,
            what="invalid-free",
        )
        exc3.backtrace = backtrace(2)
        raise exc3
    if s is not None and getattr(s, "tracing", False):
        s.note("kfree", obj=obj)  # type: ignore[attr-defined]  # a step of a traced replay
    alloc = k.slab.untrack(obj)
    if not k.slab.kasan:
        return
    # Lean: the freeing function now, no chain.  Else the frame model_site(2) and backtrace(2)
    # would start from (kfree's caller), named when a report reads it.
    if k.lean:
        info = FreeInfo(type(obj).__name__, model_site(2)[0], k.current().name, k.step(), alloc)
    else:
        info = FreeInfo(type(obj).__name__, None, k.current().name, k.step(), alloc, sys._getframe(1))
    poison(obj, info)


def container_of(member: Any, cls: type[T], field: str) -> Any:
    """The struct of type ``cls`` that embeds ``member`` as ``field``.

    Embedded objects record their container when it is built (see :func:`embed`).
    """
    owner = member.container
    if type(owner) is not cls and not isinstance(owner, cls):
        raise TypeError(f"container_of({member!r}, {cls.__name__}, {field}): embedded in {owner!r}")
    return owner
