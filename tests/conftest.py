"""Shared fixtures for the test suite.

``k`` is a fresh free-running simulated kernel with a short hang timeout, so a test that
would block forever ends in a Deadlock within a second instead of hanging the run.
``only_warning`` asserts that exactly one WARN fired and returns it for further checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vfio_ref.kernel import Kernel, WarnEvent

HANG_TIMEOUT = 0.5


@pytest.fixture
def k() -> Kernel:
    return Kernel(hang_timeout=HANG_TIMEOUT)


OnlyWarning = Callable[[Kernel, str, str], WarnEvent]


def _only_warning(kernel: Kernel, function: str, message: str) -> WarnEvent:
    got = [(w.function, w.message) for w in kernel.warnings]
    assert got == [(function, message)], f"expected exactly one WARN {function}: {message!r}, got {got}"
    return kernel.warnings[0]


@pytest.fixture
def only_warning() -> OnlyWarning:
    """``only_warning(k, function, message)``: the one and only WARN that fired on ``k``."""
    return _only_warning


# -- the reliability figures (tests/reliability), in the run's summary --------------------------

ORDER = (
    "sequences run",
    "sequence steps",
    "interleavings explored",
    "stress operations",
    "stress seconds",
    "fault points swept",
    "fault combinations run",
    "misuses tried",
)


def _figures() -> dict[str, float]:
    from reliability import FIGURES  # tests/ is on sys.path: the package the tests import

    figures: dict[str, float] = FIGURES
    return figures


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: a worker finished; add its figures to this process's."""
    figures = _figures()
    for name, value in getattr(node, "workeroutput", {}).get("vfio_ref_figures", {}).items():
        figures[name] = figures.get(name, 0) + value


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    from reliability import LONG

    figures = _figures()
    if not figures:
        return
    tr = terminalreporter
    tr.write_sep("-", f"vfio_ref reliability figures ({'long' if LONG else 'short'} run)")
    for name in [*ORDER, *sorted(set(figures) - set(ORDER))]:
        if name in figures:
            value = figures[name]
            tr.write_line(
                f"{name:>44}: {value:.1f}"
                if isinstance(value, float) and not value.is_integer()
                else f"{name:>44}: {int(value)}"
            )
    ops, secs = figures.get("stress operations", 0), figures.get("stress seconds", 0)
    if ops and secs:
        tr.write_line(f"{'stress operations per second':>44}: {ops / secs:.0f}")
