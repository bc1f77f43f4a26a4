"""Shared fixtures for the test suite.

``k`` is a fresh free-running simulated kernel with a short hang timeout, so a test that
would block forever ends in a Deadlock within a second instead of hanging the run.
``only_warning`` asserts that exactly one WARN fired and returns it for further checks.
"""

from __future__ import annotations

from collections.abc import Callable

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
