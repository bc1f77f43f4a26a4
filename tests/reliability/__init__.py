"""Reliability tests: random operation sequences, differential runs, stress, fault sweeps, misuse.

``FIGURES`` collects what the run did (sequences, operations, fault points, misuses); the
package's conftest prints it in the test run's summary.  ``LONG`` (``VFIO_REF_LONG=1``) asks
for the longer runs: more examples, longer stress, more random fault combinations.
"""

from __future__ import annotations

import os
import threading

FIGURES: dict[str, float] = {}
LONG = os.environ.get("VFIO_REF_LONG", "") not in ("", "0")

_lock = threading.Lock()


def note_figure(name: str, amount: float = 1) -> None:
    """Add ``amount`` to figure ``name``."""
    with _lock:
        FIGURES[name] = FIGURES.get(name, 0) + amount
