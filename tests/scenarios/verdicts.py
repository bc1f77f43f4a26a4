"""The report's verdicts, computed once per test run and shared by the scenario tests.

Every scenario test reads the same verdicts ``vfio-ref report`` prints (its default space:
unbounded where that search finishes within its budget, else one preemption), so the
matrix is computed once, on every core, and what the tests check is what users see.
"""

from __future__ import annotations

from functools import cache

from vfio_ref.report import Report, build_report, default_jobs
from vfio_ref.scenarios import Verdict, run
from vfio_ref.vfio import REVIEW_FIX_LEVELS


@cache
def report(review_fixes: bool = False) -> Report:
    """The whole matrix as posted, or (``review_fixes``) the levels the review fixed."""
    levels = list(REVIEW_FIX_LEVELS) if review_fixes else None
    return build_report(levels=levels, review_fixes=review_fixes, jobs=default_jobs())


def verdict(name: str, level: str, review_fixes: bool = False) -> Verdict:
    cell = report(review_fixes).cell(name, level)
    assert cell.error is None, f"{name} at {level}: {cell.error}"
    v: Verdict = cell.verdict
    return v


def fixed(name: str, level: str) -> Verdict:
    """The verdict at ``level`` with the review's fix where the level has one."""
    return verdict(name, level, level in REVIEW_FIX_LEVELS)


# Every ablation's failure shows with one preemption (the cross-checks at two run with
# VFIO_REF_LONG=1, in test_ablations.py).
ABLATION_BOUND = 1


@cache
def ablated(scenario: str, level: str, ablation: str) -> Verdict:
    """``scenario`` at ``level`` with ``ablation`` (and the review fix where the level has one)."""
    return run(
        scenario, level, ablation=ablation, review_fixes=level in REVIEW_FIX_LEVELS, bound=ABLATION_BOUND,
        traces=False,
    )
