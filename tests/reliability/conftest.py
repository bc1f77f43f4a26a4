"""Hand the reliability figures (see ``FIGURES``) to the run's summary: tests/conftest.py
prints them, and under pytest-xdist each worker sends its own to the controller."""

from __future__ import annotations

from typing import Any

from . import FIGURES


def pytest_sessionfinish(session: Any) -> None:
    out = getattr(session.config, "workeroutput", None)
    if out is not None:  # an xdist worker: the controller adds these up
        out["vfio_ref_figures"] = dict(FIGURES)
