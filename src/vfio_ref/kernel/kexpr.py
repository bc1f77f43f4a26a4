"""Kernel expressions for the model's objects: ``group->users``, ``group->dev.kobj.kref``.

A trace or a report names what an operation touched the way the C names it: the variable
a kernel function would hold the struct in (``group`` for a ``struct vfio_group *``), then
the member path down to the refcount, lock, list or field (``->`` after the pointer, ``.``
through embedded structs).  Objects point at the struct that embeds them (``container``),
which is how the path is found; the member's name is the attribute that holds the object.

Only reports use this (a traced replay or a KASAN report, never the search), so nothing here
is on a hot path.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

# The variable vfio.c and the driver core hold each struct in.  A type not listed is named
# after its class (CamelCase to snake_case).
VAR_NAMES: dict[str, str] = {
    "VfioGroup": "group",
    "VfioDevice": "device",
    "VfioContainer": "container",
    "VfioUnboundDev": "unbound",
    "VfioGroupPutWork": "do_work",
    "VfioPciDevice": "vdev",
    "IommuGroup": "iommu_group",
    "Device": "dev",
    "Cdev": "cdev",
    "File": "filep",
    "Inode": "inode",
    "Kobject": "kobj",
    "Vfio": "vfio",
    "BlockingNotifierHead": "nh",
    "NotifierBlock": "nb",
    "Kvm": "kvm",
}

# Structs that are static variables of a file (``vfio.group_lock``): a ``.`` after them.
STATIC_STRUCTS = frozenset({"Vfio"})

# Members that belong to the model, not to the struct: never shown.
MODEL_MEMBERS = frozenset({"kernel", "container", "_poison", "__class__", "__dict__"})

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def type_name(obj: Any) -> str:
    """The class name of ``obj`` as the model defined it (not its watched or freed twin)."""
    cls = type(obj)
    name = cls.__name__
    if name.startswith("Freed") and len(cls.__mro__) > 1:
        return cls.__mro__[1].__name__
    return name


def var_name(obj: Any) -> str:
    """The variable a kernel function holds ``obj`` in (``group`` for a VfioGroup)."""
    return var_for_type(type_name(obj))


def var_for_type(t: str) -> str:
    """The variable a kernel function holds a struct of type name ``t`` in."""
    return VAR_NAMES.get(t) or _CAMEL.sub("_", t).lower()


def struct_name(t: str) -> str:
    """``struct vfio_group`` for a type name ``VfioGroup``."""
    return "struct " + _CAMEL.sub("_", t).lower()


def _members(c: Any) -> dict[str, Any]:
    try:
        d: dict[str, Any] = dict(object.__getattribute__(c, "__dict__"))
    except AttributeError:
        d = {}
    for klass in type(c).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if slot not in d:
                with contextlib.suppress(AttributeError):
                    d[slot] = object.__getattribute__(c, slot)
    return d


def member_of(c: Any, obj: Any) -> str | None:
    """The name of ``c``'s member that holds ``obj`` (None when none does)."""
    for name, v in _members(c).items():
        if v is obj and name not in MODEL_MEMBERS:
            return name.removeprefix("_shared_")
    return None


def _container(obj: Any) -> Any:
    """The struct that embeds ``obj`` (its ``container`` back pointer), never a tracked
    field of the same name (``group->container`` is a member, not a back pointer)."""
    attr = getattr(type(obj), "container", None)
    if attr is not None and hasattr(attr, "__set__") and not isinstance(attr, _MEMBER_DESCRIPTOR):
        return None
    try:
        return object.__getattribute__(obj, "container")
    except AttributeError:
        return None


class _Slotted:
    __slots__ = ("x",)


_MEMBER_DESCRIPTOR = type(_Slotted.__dict__["x"])


def kexpr(obj: Any, field: str = "", depth: int = 0) -> str:
    """The kernel expression of ``obj`` (and of its member ``field``, when given)."""
    base = _kexpr(obj, depth)
    if not field:
        return base
    if type_name(obj) in STATIC_STRUCTS or is_embedded(obj):
        return f"{base}.{field}"
    return f"{base}->{field}"


def is_embedded(obj: Any) -> bool:
    """Whether ``obj`` is a member of the struct it points back at (``group->cdev``)."""
    c = _container(obj)
    return c is not None and member_of(c, obj) is not None


def _kexpr(obj: Any, depth: int) -> str:
    t = type_name(obj)
    if t == "Refcount":
        c = _container(obj)
        if c is not None and type_name(c) == "Kref":
            return _kexpr(c, depth + 1)
    lc = _lock_class(obj)
    if lc:
        return lc.lstrip("&")
    c = _container(obj)
    if c is not None and depth < 6:
        m = member_of(c, obj)
        if m is not None:
            outer = _container(c)
            if outer is not None and member_of(outer, c) is not None:
                return f"{_kexpr(c, depth + 1)}.{m}"
            if type_name(c) in STATIC_STRUCTS:
                return f"{var_name(c)}.{m}"
            return f"{var_name(c)}->{m}"
    name = _plain_name(obj)
    if name:
        return name
    return var_name(obj)


def _lock_class(obj: Any) -> str:
    try:
        lc = object.__getattribute__(obj, "lock_class")
    except AttributeError:
        return ""
    return lc if isinstance(lc, str) else ""


def _plain_name(obj: Any) -> str:
    try:
        name = object.__getattribute__(obj, "name")
    except AttributeError:
        return ""
    if not isinstance(name, str) or not name:
        return ""
    if "->" in name or ("." in name and not name[0].isdigit()):
        return name  # a list head named by its kernel expression ("vfio.group_list")
    return ""


def value_text(v: Any) -> str:
    """A value as a report shows it: NULL, a number, or the struct a pointer points at."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return repr(v)
    t = type_name(v)
    if t in ("tuple", "list", "dict", "set", "frozenset"):
        return t
    return f"&{_CAMEL.sub('_', t).lower()}" if t not in VAR_NAMES else f"<{var_name(v)}>"
