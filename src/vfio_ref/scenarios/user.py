"""Scenarios written by the user: ``FILE.py:FUNCTION``, a function of a
:class:`~.harness.ScenarioContext` written as docs/EXPLORER.md shows.

The file is loaded as a module of its own (its top level runs once per process); the
function is then run like a catalogue scenario, with every checker, judge and option.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any

from ..kernel.core import ModelUsageError


def is_scenario_file(text: str) -> bool:
    """Whether ``text`` names a user scenario (``FILE.py:FUNCTION``), not a catalogue one."""
    return ":" in text and text.split(":", 1)[0].endswith(".py")


@cache
def _load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"vfio_ref_user_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ModelUsageError(f"cannot load {path!r} as a Python file")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise ModelUsageError(f"loading {path!r} failed: {type(e).__name__}: {e}") from None
    return mod


def load_scenario(text: str) -> Callable[..., None]:
    """The scenario function ``FILE.py:FUNCTION`` names; a missing file or function is a
    ModelUsageError naming what the file defines."""
    path, fn_name = text.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ModelUsageError(f"scenario file {path!r} does not exist")
    mod = _load_module(os.path.abspath(path))
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise ModelUsageError(f"{path!r} has no function {fn_name!r} (it defines: {', '.join(names) or 'none'})")
    f: Callable[..., None] = fn
    return f
