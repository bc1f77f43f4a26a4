"""What a traced step records: the whole call chain, the kernel expression it touched, the
value before and after, and marks (a kfree, a faulting access, an injected failure, the
user-space call it belongs to).

Only a traced replay comes here (the scheduler's ``tracing``): the search never pays for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..kernel.core import _SKIP_FRAMES, _is_model_file
from ..kernel.kexpr import kexpr, type_name, value_text

CHAIN_LIMIT = 24

# Frames of the substrate's own lock implementation: a trace names the kernel function that
# took the lock, not the helper it went through.
PRIMITIVES = frozenset(
    {"mutex_lock", "mutex_unlock", "spin_lock", "spin_unlock", "lock", "unlock", "down_read", "up_read",
     "down_write", "up_write", "mutex_trylock"}
)

# Kernel helpers that are one operation as their callers see it: a trace names the helper
# (``kref_put(&group->kref) 1→0``) rather than the refcount operation inside it.
WRAPPERS = frozenset(
    {
        "kref_init", "kref_get", "kref_put", "kref_put_mutex", "kref_put_lock", "kref_get_unless_zero",
        "kref_read", "kobject_get", "kobject_put", "get_device", "put_device", "device_lock", "device_unlock",
    }
)

# Platform calls that stand for what user space does (a system call, a sysfs write).
USER_CALLS: dict[str, str] = {
    "open_devt": "open",
    "open_group": "open",
    "open_container": "open",
    "close": "close",
    "dup": "dup",
    "ioctl": "ioctl",
    "bind": "echo > bind",
    "unbind": "echo > unbind",
    "request_eventfd": "ioctl",
    "wait_request": "read",
}

_VFIO_DIR_MARK = "/vfio_ref/vfio/"
_PLATFORM = "platform.py"

_level_file_cache: dict[str, bool] = {}


def _is_level_file(filename: str) -> bool:
    """A file of vfio.c's model (a level or an ablation), not the platform around it."""
    r = _level_file_cache.get(filename)
    if r is None:
        r = _level_file_cache[filename] = _VFIO_DIR_MARK in filename.replace("\\", "/") and not filename.endswith(
            _PLATFORM
        )
    return r


def _shown(code: Any) -> str | None:
    name: str = code.co_name
    if not _is_model_file(code.co_filename) or name in _SKIP_FRAMES:
        return None
    if name.startswith("_") and not name.startswith("__vfio"):
        return None
    return name


def _user_label(f: FrameType) -> str:
    fn = f.f_locals.get("fn")
    name = getattr(fn, "__name__", "?")
    args: tuple[Any, ...] = tuple(f.f_locals.get("args") or ())
    verb = USER_CALLS.get(name, "")
    if not verb:
        return ""
    first = args[0] if args else None
    if name in ("bind", "unbind"):
        return f"echo {first} > {name}"
    arg = ""
    if name == "ioctl" and len(args) >= 2:
        arg = f"{_file_name(first)}, {args[1]}"
    elif name == "open_devt" and args:
        arg = f"mknod'd node of dev_t {first}"
    elif name == "open_group" and args:
        arg = f"/dev/vfio/<group of {first}>"
    elif name == "open_container":
        arg = "/dev/vfio/vfio"
    elif first is not None:
        arg = _file_name(first)
    return f"{verb}({arg})"


def _file_name(f: Any) -> str:
    if isinstance(f, int):
        return f"fd {f}"
    return str(getattr(f, "name", f))


class FrameInfo:
    """What the stack says about a step: its call chain (kernel functions, innermost first),
    whether a vfio.c function is on it, and the user-space call it belongs to."""

    __slots__ = ("chain", "user", "user_frame", "vfio")

    def __init__(self, chain: tuple[str, ...], vfio: bool, user: str, user_frame: int) -> None:
        self.chain = chain
        self.vfio = vfio
        self.user = user
        self.user_frame = user_frame


def frame_info(skip: int = 2) -> FrameInfo:
    f: FrameType | None = sys._getframe(skip)
    chain: list[str] = []
    vfio = False
    user = ""
    user_frame = 0
    outside = 0
    other = ""  # the first function outside the model (a toy program's), when no kernel one is
    while f is not None:
        code = f.f_code
        fn = code.co_filename
        if not other and not chain and not _is_model_file(fn) and code.co_name not in _NOT_OTHER:
            other = code.co_name
        if code.co_name == "_entry" and fn.endswith(_PLATFORM) and not user:
            user = _user_label(f)
            if user:
                user_frame = f.f_locals.get("_call") or id(f)  # the call's serial number
        name = _shown(code)
        if name is not None:
            if _is_level_file(fn):
                vfio = True
            if len(chain) < CHAIN_LIMIT:
                chain.append(name)
            outside = 0
        elif chain:
            outside += 1
            if outside >= 8:
                break
        f = f.f_back
    if not chain and other:
        chain.append(other)
    return FrameInfo(tuple(chain), vfio, user, user_frame)


# Frames of the explorer and of Python that are never the function that made an operation.
_NOT_OTHER = frozenset(_SKIP_FRAMES | {"frame_info", "_proceed", "note", "point", "_thread_body", "body", "switch"})


# -- values -----------------------------------------------------------------------------------


def counter_of(obj: Any) -> int | None:
    """The value of a refcount_t or atomic_t (None for anything else)."""
    for slot in ("refs", "counter"):
        try:
            v = object.__getattribute__(obj, slot)
        except AttributeError:
            continue
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    return None


def field_of(obj: Any, field: str) -> Any:
    """The value of member ``field`` of ``obj`` (a tracked field or a plain one), read
    without a trace and without a use-after-free check."""
    try:
        d = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        d = {}
    key = "_shared_" + field
    if key in d:
        return d[key]
    if field in d:
        return d[field]
    desc = getattr(type(obj), field, None)
    if desc is not None and hasattr(desc, "default"):
        return desc.default
    try:
        return object.__getattribute__(obj, field)
    except AttributeError:
        return None


Reader = Callable[[], str]


def describe_step(op: str, obj: Any, field: str, chain: tuple[str, ...]) -> tuple[str, str, str, str, Reader | None]:
    """(caller, shown operation text without the after-value, expression, before, reader of
    the after-value) for an operation ``op`` on ``obj``."""
    inner = [f for f in chain if f != op and f not in PRIMITIVES]
    shown_op = op
    while inner and inner[0] in WRAPPERS:
        shown_op = inner.pop(0)
    caller = inner[0] if inner else "?"
    if obj is None:
        return caller, shown_op, "", "", None
    if op in ("READ_ONCE", "WRITE_ONCE") and field:
        expr = kexpr(obj, field)
        before = value_text(field_of(obj, field))
        if op == "READ_ONCE":
            return caller, f"read {expr}", expr, before, None
        return caller, f"{expr} =", expr, before, lambda: value_text(field_of(obj, field))
    lc = getattr(obj, "lock_class", None)
    if isinstance(lc, str):  # a lock is named by its lockdep class, as lockdep prints it
        return caller, f"{shown_op}({lc})", lc.lstrip("&"), "", None
    expr = kexpr(obj)
    v = counter_of(obj)
    if v is not None:
        return caller, f"{shown_op}(&{expr})", expr, str(v), lambda: str(counter_of(obj))
    return caller, f"{shown_op}(&{expr})", expr, "", None


def location_of(obj: Any, field: str) -> str:
    """The location a data race names for an access to ``obj`` (``Type.member``)."""
    if obj is None:
        return ""
    if field:
        return f"{type_name(obj)}.{field}"
    name = getattr(obj, "name", None) if type_name(obj) == "ListHead" else None
    return f"ListHead.{name}" if isinstance(name, str) else ""
