"""The VFIO core at each level of the series: ``base`` and patches ``p1`` ... ``p5``.

``load(kernel, level)`` builds the model of vfio.c at that level on a kernel (vfio_init not
yet called); ``boot(level)`` gives a fresh free-running kernel with the level loaded and
vfio_init() done.  ``review_fixes=True`` applies the fix agreed in review to patches 3 and 4
(it changes nothing at other levels); ``ablation=`` removes one design decision (see
:mod:`.ablations`).

Each level lives in its own module (``base.py``, ``p1.py`` ...), found by name: the module
defines one subclass of :class:`~.level.Level` for the level and, where review changed the
patch, a ``ReviewFixes`` mixin.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from .. import LEVELS as ALL_LEVELS
from ..kernel.core import Kernel, ModelUsageError
from .base import VfioBase
from .level import Level


def _discover() -> tuple[dict[str, type[VfioBase]], dict[str, type]]:
    classes: dict[str, type[VfioBase]] = {}
    fixes: dict[str, type] = {}
    for name in ALL_LEVELS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            break
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Level) and obj.__dict__.get("LEVEL") == name:
                classes[name] = obj  # type: ignore[assignment]
            if (
                isinstance(obj, type)
                and obj.__name__.endswith("ReviewFixes")
                and obj.__module__ == mod.__name__
            ):
                fixes[name] = obj
    return classes, fixes


LEVEL_CLASSES, REVIEW_FIXES = _discover()
LEVELS: tuple[str, ...] = tuple(LEVEL_CLASSES)
REVIEW_FIX_LEVELS: tuple[str, ...] = tuple(REVIEW_FIXES)


def check_level(level: str) -> None:
    if level not in LEVEL_CLASSES:
        raise ModelUsageError(f"unknown level {level!r}: the levels are {', '.join(LEVELS)}")


def ablations_table() -> dict[str, Any]:
    """The ablations by name (empty when the ablations module is not present)."""
    try:
        from .ablations import ABLATIONS
    except ModuleNotFoundError:
        return {}
    return ABLATIONS


def get_ablation(ablation: str) -> Any:
    """The Ablation called ``ablation``; an unknown name is a ModelUsageError listing them."""
    table = ablations_table()
    a = table.get(ablation)
    if a is None:
        raise ModelUsageError(
            f"unknown ablation {ablation!r}: the ablations are {', '.join(sorted(table)) or 'none'}"
        )
    return a


def check_ablation(ablation: str | None, level: str) -> Any:
    """The Ablation called ``ablation``, checked to apply at ``level`` (None for None)."""
    if ablation is None:
        return None
    a = get_ablation(ablation)
    if level not in a.levels:
        raise ModelUsageError(
            f"ablation {ablation!r} does not apply to level {level!r}: it applies to {', '.join(a.levels)}"
        )
    return a


@cache
def level_class(level: str, review_fixes: bool = False, ablation: str | None = None) -> type[VfioBase]:
    """The class modelling vfio.c at ``level``, with the review fixes and/or an ablation.

    Review fixes of every level up to ``level`` apply, newest first, as long as ``level``
    does not itself rewrite the fixed function (patch 5 rewrote vfio_create_group, so the
    patch 3/4 fixes are moot there).
    """
    check_level(level)
    a = check_ablation(ablation, level)
    cls = LEVEL_CLASSES[level]
    mixins: list[type] = []
    if a is not None:
        mixins.append(a.mixin_for(level))
    if review_fixes and level in REVIEW_FIXES:
        upto = LEVELS.index(level)
        mixins += [REVIEW_FIXES[lv] for lv in reversed(LEVELS[: upto + 1]) if lv in REVIEW_FIXES]
    if not mixins:
        return cls
    variant = ("+review-fixes" if review_fixes and level in REVIEW_FIXES else "") + (
        f"+{ablation}" if ablation else ""
    )
    name = cls.__name__ + variant.replace("+", "_").replace("-", "_")
    return type(name, (*mixins, cls), {"LEVEL": cls.LEVEL, "VARIANT": variant})


def load(
    kernel: Kernel,
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    noiommu: bool = False,
) -> VfioBase:
    """vfio.c at ``level`` on ``kernel``; call ``vfio_init()`` on it to load the module."""
    cls = level_class(level, review_fixes, ablation)
    mod = cls(kernel, noiommu=noiommu)
    setup = getattr(mod, "_ablation_setup", None)
    if setup is not None:
        setup()
    return mod


def boot(
    level: str,
    *,
    review_fixes: bool = False,
    ablation: str | None = None,
    noiommu: bool = False,
    **kernel_opts: Any,
) -> VfioBase:
    """A fresh free-running kernel with vfio.c at ``level`` loaded and vfio_init() done.

    The kernel is ``.k`` of the returned object.
    """
    k = Kernel(**kernel_opts)
    mod = load(k, level, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu)
    ret = mod.vfio_init()
    if ret:
        raise ModelUsageError(f"vfio_init() failed at level {level}: {ret}")
    return mod


__all__ = [
    "LEVELS",
    "LEVEL_CLASSES",
    "REVIEW_FIXES",
    "REVIEW_FIX_LEVELS",
    "VfioBase",
    "ablations_table",
    "boot",
    "check_ablation",
    "check_level",
    "get_ablation",
    "level_class",
    "load",
]
