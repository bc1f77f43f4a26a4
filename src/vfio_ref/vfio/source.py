"""The source of the whole model, for ``vfio-ref show`` and ``vfio-ref diff``.

A *variant* is a level with, optionally, the review fixes and an ablation, spelt
``LEVEL[+fix][+ABLATION]`` (``p3+fix``, ``p5+open_refcount_inc``).  ``show`` finds a name
among vfio.c's functions and structs at that variant first, then among the simulated
kernel's functions (``cdev_add``, ``chrdev_open``, ``fput``: the substrate under every
level, the same at all of them) and the platform's (the vfio-pci-like driver, user space).
An ablation that lives in the substrate (a switch on the kernel, not a function of vfio.c)
shows as that switch.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..kernel.core import ModelUsageError

FIX_WORDS = ("fix", "fixes", "review-fixes", "review_fixes")


@dataclass(frozen=True)
class Variant:
    level: str
    review_fixes: bool = False
    ablation: str | None = None

    @property
    def spelling(self) -> str:
        return self.level + ("+fix" if self.review_fixes else "") + (f"+{self.ablation}" if self.ablation else "")

    def cls(self) -> Any:
        from . import level_class

        return level_class(self.level, self.review_fixes, self.ablation)


def parse_variant(text: str, *, review_fixes: bool = False, ablation: str | None = None) -> Variant:
    """``p3``, ``p3+fix``, ``p5+open_refcount_inc``: checked (level, fixes, ablation)."""
    from . import REVIEW_FIX_LEVELS, check_ablation, check_level

    level, *extras = text.split("+")
    check_level(level)
    fixes = review_fixes
    abl = ablation
    for x in extras:
        if x in FIX_WORDS:
            fixes = True
        elif abl is None or abl == x:
            abl = x
        else:
            raise ModelUsageError(f"{text!r} names two ablations ({abl}, {x}): a variant has at most one")
    if fixes and level not in REVIEW_FIX_LEVELS:
        raise ModelUsageError(
            f"{text!r}: review fixes exist for {', '.join(REVIEW_FIX_LEVELS)} only, not {level}"
        )
    check_ablation(abl, level)
    return Variant(level, fixes, abl)


# -- the simulated kernel's functions ---------------------------------------------------------


@dataclass(frozen=True)
class KernelFunction:
    name: str
    qualname: str
    module: str  # vfio_ref.kernel.cdev
    obj: Any

    @property
    def where(self) -> str:
        return self.module.replace(".", "/") + ".py"


_SUBSTRATE_PACKAGES = ("vfio_ref.kernel",)
_EXTRA_MODULES = ("vfio_ref.vfio.platform",)


@cache
def kernel_functions() -> dict[str, tuple[KernelFunction, ...]]:
    """Every public function of the simulated kernel and the platform, and every public
    method of their classes, by name."""
    mods = []
    for pkg_name in _SUBSTRATE_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            mods.append(importlib.import_module(f"{pkg_name}.{info.name}"))
    mods.extend(importlib.import_module(m) for m in _EXTRA_MODULES)
    out: dict[str, list[KernelFunction]] = {}
    seen: set[int] = set()

    def add(name: str, qual: str, mod: str, obj: Any) -> None:
        if name.startswith("_") or id(obj) in seen:
            return
        seen.add(id(obj))
        out.setdefault(name, []).append(KernelFunction(name, qual, mod, obj))

    for mod in mods:
        for name, obj in vars(mod).items():
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                add(name, obj.__qualname__, mod.__name__, obj)
            elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for mname, m in vars(obj).items():
                    if inspect.isfunction(m):
                        add(mname, m.__qualname__, mod.__name__, m)
    return {k: tuple(v) for k, v in out.items()}


def kernel_source(name: str) -> str | None:
    """The source of the simulated kernel's function(s) called ``name`` (None: no such)."""
    found = kernel_functions().get(name)
    if not found:
        return None
    parts = []
    for kf in found:
        try:
            src = inspect.getsource(kf.obj)
        except (OSError, TypeError):
            continue
        where = "the platform (drivers and user space around vfio.c)" if "platform" in kf.module else (
            "the simulated kernel, the same at every level"
        )
        parts.append(f"# {kf.qualname}: {where} ({kf.where})\n" + inspect.cleandoc("\n" + src) + "\n")
    return "\n".join(parts) if parts else None


def substrate_switch(v: Variant) -> str | None:
    """The source of an ablation that switches the substrate (None when it has none)."""
    if v.ablation is None:
        return None
    from . import get_ablation

    mixin = get_ablation(v.ablation).mixin_for(v.level)
    setup = mixin.__dict__.get("_ablation_setup")
    if setup is None:
        return None
    return f"# ablation {v.ablation}: a switch on the simulated kernel ({mixin.__name__})\n" + inspect.cleandoc(
        "\n" + inspect.getsource(setup)
    ) + "\n"


def show(v: Variant, name: str) -> str:
    """The effective source of ``name`` at variant ``v`` (see the module docstring)."""
    cls = v.cls()
    name = name.removeprefix("struct ")
    if cls.resolve(name) is not None:
        text: str = cls.source_of(name)
        return text
    src = kernel_source(name)
    if src is not None:
        return src
    raise ModelUsageError(
        f"{name!r} is neither a function or struct of vfio.c at {v.spelling} nor a function of the simulated "
        f"kernel; see `vfio-ref show {v.spelling} --list`"
    )


def diff_names(a: Variant, b: Variant) -> list[str]:
    """vfio.c's functions and structs at either variant (sorted)."""
    ca, cb = a.cls(), b.cls()

    def names(c: Any) -> set[str]:
        out = set(c.function_names()) | set(c.structs())
        # functions an ablation or a review fix overrides (mixins are not levels)
        for klass in c.__mro__:
            if klass.__module__.endswith(("ablations", "fixes")) or "Fix" in klass.__name__:
                out.update(n for n, f in vars(klass).items() if inspect.isfunction(f) and not n.startswith("_"))
        return {n for n in out if c.resolve(n) is not None}

    return sorted(names(ca) | names(cb))
