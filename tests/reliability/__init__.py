"""Reliability tests: random operation sequences, differential runs, stress, fault sweeps, misuse.

``FIGURES`` collects what the run did (sequences, operations, fault points, misuses); the
package's conftest prints it in the test run's summary.  ``LONG`` (``VFIO_REF_LONG=1``) asks
for the longer runs: more examples, longer stress, more random fault combinations.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

FIGURES: dict[str, float] = {}
LONG = os.environ.get("VFIO_REF_LONG", "") not in ("", "0")

_lock = threading.Lock()


def note_figure(name: str, amount: float = 1) -> None:
    """Add ``amount`` to figure ``name``."""
    with _lock:
        FIGURES[name] = FIGURES.get(name, 0) + amount


ROOT = Path(__file__).resolve().parents[2]


def load_file(rel: str) -> ModuleType:
    """The module at ``rel`` (a path from the repository's root), loaded afresh: scripts the
    tests check without their being a package (benchmarks/crosscheck_table.py, the mutant
    sets)."""
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").removesuffix(".py"), ROOT / rel)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
