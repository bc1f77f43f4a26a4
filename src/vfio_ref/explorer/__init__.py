"""The interleaving explorer: controlled scheduling of model threads, search and replay."""

from .explore import (
    Execution,
    Exploration,
    Finding,
    RawFinding,
    RunResult,
    ScheduleMismatch,
    Stats,
    explore,
    replay_findings,
    run_once,
    shrink_schedule,
)
from .strategies import format_schedule, parse_schedule
from .trace import render_swimlanes

__all__ = [
    "Execution",
    "Exploration",
    "Finding",
    "RawFinding",
    "RunResult",
    "ScheduleMismatch",
    "Stats",
    "explore",
    "format_schedule",
    "parse_schedule",
    "render_swimlanes",
    "replay_findings",
    "run_once",
    "shrink_schedule",
]
