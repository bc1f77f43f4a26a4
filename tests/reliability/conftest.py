"""Print the reliability figures in the test run's summary (see ``FIGURES``)."""

from __future__ import annotations

from typing import Any

from . import FIGURES, LONG

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


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.write_sep("-", f"vfio_ref reliability figures ({'long' if LONG else 'short'} run)")
    for name in [*ORDER, *sorted(set(FIGURES) - set(ORDER))]:
        if name in FIGURES:
            value = FIGURES[name]
            tr.write_line(
                f"{name:>44}: {value:.1f}"
                if isinstance(value, float) and not value.is_integer()
                else f"{name:>44}: {int(value)}"
            )
    ops, secs = FIGURES.get("stress operations", 0), FIGURES.get("stress seconds", 0)
    if ops and secs:
        tr.write_line(f"{'stress operations per second':>44}: {ops / secs:.0f}")
