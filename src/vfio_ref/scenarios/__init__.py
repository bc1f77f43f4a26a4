"""Named scenarios and their verdicts at each level.

``run(name, level, *, review_fixes=False, ablation=None)`` returns a :class:`Verdict` with
``.clean``, ``.findings`` (each with ``.kind`` and ``.detail``) and ``.trace``.
"""

from ..explorer.explore import Finding
from .catalogue import SCENARIO_NAMES, SCENARIOS, Scenario
from .harness import ScenarioContext
from .run import ReachedPoint, SweptPoint, Verdict, fault_points, parse_fail, reached_points, run, run_fault_sweep

__all__ = [
    "SCENARIOS",
    "SCENARIO_NAMES",
    "Finding",
    "ReachedPoint",
    "Scenario",
    "ScenarioContext",
    "SweptPoint",
    "Verdict",
    "fault_points",
    "parse_fail",
    "reached_points",
    "run",
    "run_fault_sweep",
]
