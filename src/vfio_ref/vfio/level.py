"""How a patch level is put together: one class per level, one method per kernel function.

``VfioBase`` holds drivers/vfio/vfio.c at the series' base; each patch module subclasses the
level before it and defines only the functions (and structs) its diff touches, so the module
reads like the patch.  Calls inside the model go through ``self``, so a function redefined by
a later patch is the one every caller reaches at that level.

Two details make C names work as Python methods:

* kernel functions whose names start with two underscores (``__vfio_register_dev``) are
  mangled by Python inside a class body; :class:`Level` re-links every mangled spelling to
  the most derived definition, so overriding them works as for any other name;
* a function a patch deletes is listed in the level's ``REMOVED``; calling it at that level
  raises :class:`ModelUsageError` naming the level that removed it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from ..kernel.core import ModelUsageError

# Kernel functions of vfio.c whose names begin with "__".
DUNDER_NAMES: tuple[str, ...] = (
    "__vfio_register_dev",
    "__vfio_group_get_from_iommu",
    "__vfio_group_unset_container",
    "__vfio_container_attach_groups",
)


def _removed_stub(level: str, name: str) -> Callable[..., Any]:
    def removed(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise ModelUsageError(f"{name}() does not exist at level {self.LEVEL}: patch {level} removed it")

    removed.__name__ = name
    removed.__qualname__ = name
    removed._removed_by = level  # type: ignore[attr-defined]
    return removed


# Entry points a driver reaches only while the vfio module is loaded (vfio_init() done and no
# vfio_cleanup() since): in the kernel a module that depends on vfio cannot even be loaded
# without it, so the model treats such a call as a misuse, not as a kernel path.
NEEDS_LOADED_MODULE: tuple[str, ...] = (
    "vfio_register_group_dev",
    "vfio_register_emulated_iommu_dev",
)


def _module_guard(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` (vfio_init, vfio_cleanup or an entry point) with the module-lifetime check."""

    @functools.wraps(fn)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = self.__dict__.get("module_loaded", False)
        if name == "vfio_init":
            if loaded:
                raise ModelUsageError(f"vfio_init() at level {self.LEVEL}: the vfio module is already loaded")
            ret = fn(self, *args, **kwargs)
            self.module_loaded = ret == 0
            return ret
        if not loaded:
            when = "since vfio_cleanup() unloaded it" if "module_loaded" in self.__dict__ else "yet"
            if name == "vfio_cleanup":
                what = "already unloaded by vfio_cleanup()" if when.startswith("since") else "not loaded yet"
                raise ModelUsageError(
                    f"vfio_cleanup() at level {self.LEVEL}: the vfio module is {what}; vfio_init() loads it"
                )
            raise ModelUsageError(
                f"{name}() at level {self.LEVEL}: the vfio module is not loaded {when}; "
                "call vfio_init() first (a driver cannot use vfio after vfio_cleanup())"
            )
        ret = fn(self, *args, **kwargs)
        if name == "vfio_cleanup":
            self.module_loaded = False
        return ret

    guarded._module_guard = True  # type: ignore[attr-defined]
    return guarded


class Level:
    """Base of every level class.  ``LEVEL`` names it; ``REMOVED`` lists deleted functions."""

    LEVEL: ClassVar[str] = "?"
    TITLE: ClassVar[str] = ""
    REMOVED: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("vfio_init", "vfio_cleanup", *NEEDS_LOADED_MODULE):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_module_guard", False):
                setattr(cls, name, _module_guard(name, fn))
        for name in cls.__dict__.get("REMOVED", ()):
            setattr(cls, name, _removed_stub(cls.LEVEL, name))
        for name in DUNDER_NAMES:
            impl = None
            for c in cls.__mro__:
                impl = c.__dict__.get(f"_{c.__name__.lstrip('_')}{name}")
                if impl is not None:
                    break
            if impl is None:
                continue
            for c in cls.__mro__:
                setattr(cls, f"_{c.__name__.lstrip('_')}{name}", impl)

    def is_loaded(self) -> bool:
        """Whether the vfio module is loaded: vfio_init() succeeded and no vfio_cleanup() since."""
        return bool(self.__dict__.get("module_loaded", False))

    # -- introspection for `vfio-ref show` / `vfio-ref diff` ------------------------------------

    @classmethod
    def resolve(cls, name: str) -> tuple[type, Any] | None:
        """(defining class, function or struct) of kernel name ``name`` at this level."""
        structs = cls.structs()
        if name in structs:
            obj = structs[name]
            return obj, obj
        if name.startswith("_") and name not in DUNDER_NAMES:
            return None  # the model's own helpers and Python's dunders are not kernel functions
        for c in cls.__mro__:
            if c is Level or c is object:
                break
            if name.startswith("__"):
                attr = f"_{c.__name__.lstrip('_')}{name}"
            else:
                attr = name
            if attr in c.__dict__:
                fn = c.__dict__[attr]
                # Only a function is a kernel function: LEVEL, TITLE, STRUCTS, REMOVED and the
                # classmethods here are the level's own bookkeeping.
                if not inspect.isfunction(fn) or getattr(fn, "_removed_by", None):
                    return None
                if name.startswith("__"):
                    # The hook above copies a "__" function into every later level's class;
                    # it is defined by the level whose class its source is in.
                    owner = fn.__qualname__.split(".")[0]
                    c = next((k for k in cls.__mro__ if k.__name__ == owner), c)
                return c, fn
        return None

    @classmethod
    def structs(cls) -> dict[str, type]:
        """The struct classes in force at this level, by kernel name (``struct vfio_group``)."""
        out: dict[str, type] = {}
        for c in reversed(cls.__mro__):
            out.update(c.__dict__.get("STRUCTS", {}))
            for name in c.__dict__.get("REMOVED", ()):
                out.pop(name, None)
        return out

    @classmethod
    def function_names(cls) -> list[str]:
        """Every kernel function defined at this level (removed ones excluded), sorted."""
        names: set[str] = set()
        for c in cls.__mro__:
            if not issubclass(c, Level) or c is Level:
                continue
            for attr, val in c.__dict__.items():
                if not inspect.isfunction(val) or attr.startswith("_Level"):
                    continue
                kname = attr
                prefix = f"_{c.__name__.lstrip('_')}__"
                if attr.startswith(prefix):
                    kname = "__" + attr[len(prefix) :]
                elif attr.startswith("_"):
                    continue
                names.add(kname)
        return sorted(n for n in names if cls.resolve(n) is not None)

    @classmethod
    def source_of(cls, name: str) -> str:
        """The effective source of kernel function or struct ``name`` at this level."""
        found = cls.resolve(name)
        if found is None:
            raise ModelUsageError(
                f"{name!r} is not a modelled function or struct at level {cls.LEVEL}; "
                f"see `vfio-ref show {cls.LEVEL} --list`"
            )
        owner, obj = found
        src = inspect.getsource(obj)
        where = inspect.getsourcefile(obj) or "?"
        return (
            f"# {name} at {cls.LEVEL}: defined by {getattr(owner, 'LEVEL', owner.__name__)} ({where})\n"
            + (inspect.cleandoc("\n" + src) if src.startswith(" ") else src)
        )
