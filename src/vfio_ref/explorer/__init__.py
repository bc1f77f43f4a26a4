"""The interleaving explorer: controlled scheduling of model threads, search and replay."""

from .explore import (
    DEFAULT_MAX_SCHEDULES,
    Execution,
    Exploration,
    Finding,
    FindingId,
    Outcome,
    RawFinding,
    ReductionCheck,
    RunResult,
    ScheduleMismatch,
    Stats,
    explore,
    finish_finding,
    make_strategy,
    replay_findings,
    run_once,
    shrink_schedule,
)
from .strategy import format_schedule, parse_schedule
from .trace import render_finding, render_swimlanes

__all__ = [
    "DEFAULT_MAX_SCHEDULES",
    "Execution",
    "Exploration",
    "Finding",
    "FindingId",
    "Outcome",
    "RawFinding",
    "ReductionCheck",
    "RunResult",
    "ScheduleMismatch",
    "Stats",
    "explore",
    "finish_finding",
    "format_schedule",
    "make_strategy",
    "parse_schedule",
    "render_finding",
    "render_swimlanes",
    "replay_findings",
    "run_once",
    "shrink_schedule",
]
