"""The reductions are checked, not trusted: on generated programs, the reduced search sees
exactly the outcomes (return values, findings, final state) of the plain search over the
same space, at every bound and with none, and a higher bound never loses what a lower one
found.  ``VFIO_REF_LONG=1`` runs many more examples."""

from __future__ import annotations

import os

import pytest
from hypothesis import given

from vfio_ref.explorer import Exploration, explore

from .programs import PROGRAMS, Spec, generated_settings, judge, program_of, strategy
from .toys import independent_steps, nothing

LONG = os.environ.get("VFIO_REF_LONG") == "1"
EXAMPLES = 300 if LONG else 40
BOUNDS: tuple[int | None, ...] = (0, 1, 2, 3, None)


def _explore(spec: Spec, bound: int | None, reduction: bool) -> Exploration:
    return explore(
        program_of(spec), judge, bound=bound, reduction=reduction, traces=False, shrink=False, max_schedules=None
    )


def _check(spec: Spec, bound: int | None) -> tuple[Exploration, Exploration]:
    plain = _explore(spec, bound, False)
    reduced = _explore(spec, bound, True)
    assert plain.stats.complete and reduced.stats.complete
    missing = set(plain.outcomes) - set(reduced.outcomes)
    extra = set(reduced.outcomes) - set(plain.outcomes)
    assert not missing and not extra, (
        f"bound {bound}: the reduced search misses {sorted(map(repr, missing))}"
        f" and has {sorted(map(repr, extra))} that the plain one lacks, for:\n{spec}"
    )
    assert {f.ident for f in plain.findings} == {f.ident for f in reduced.findings}, str(spec)
    assert reduced.stats.schedules <= plain.stats.schedules, str(spec)
    assert reduced.stats.lazy_names == 0
    return plain, reduced


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("bound", BOUNDS)
def test_the_reduced_search_sees_what_the_plain_search_sees_on_known_hard_programs(
    name: str, bound: int | None
) -> None:
    _check(PROGRAMS[name], bound)


_SETTINGS = generated_settings(EXAMPLES)


@_SETTINGS
@given(strategy(threads=2, max_ops=3))
def test_two_thread_programs_agree_at_every_bound_and_unbounded(spec: Spec) -> None:
    for bound in BOUNDS:
        _check(spec, bound)


# Three threads: half as many examples.
_SETTINGS_3 = generated_settings(EXAMPLES // 2)


@_SETTINGS_3
@given(strategy(threads=3, max_ops=2))
def test_three_thread_programs_agree_at_every_bound_and_unbounded(spec: Spec) -> None:
    for bound in (0, 1, 2, None):
        _check(spec, bound)


@_SETTINGS
@given(strategy(threads=2, max_ops=3))
def test_a_higher_bound_never_loses_an_outcome(spec: Spec) -> None:
    seen: set[object] = set()
    for bound in (0, 1, 2, None):
        now = set(_explore(spec, bound, True).outcomes)
        assert seen <= now, f"bound {bound} lost {seen - now} for:\n{spec}"
        seen = now


def test_a_sleeper_stays_asleep_after_the_last_preemption() -> None:
    """The step the running thread was tried with first sleeps in its siblings also where
    the sibling spends the last preemption: there every later choice keeps the running
    thread, and the search once stopped asking the strategy (and so stopped pruning) at once.
    Two threads of independent steps at one preemption: the schedules that run the sleeping
    step straight after the preempting thread ends are cut short."""
    plain = explore(independent_steps(3), nothing, bound=1, reduction=False, traces=False, shrink=False)
    reduced = explore(independent_steps(3), nothing, bound=1, reduction=True, traces=False, shrink=False)
    assert set(reduced.outcomes) == set(plain.outcomes)
    assert (plain.stats.schedules, plain.stats.redundant) == (6, 0)
    assert (reduced.stats.schedules, reduced.stats.redundant) == (6, 2)


def test_at_one_preemption_the_reduction_prunes_the_bases_kworker_interleavings() -> None:
    """What the report's bounded fallback (report.AUTO_FALLBACK_REDUCTION) rests on: at the
    base, the deferred put's kworker preempting a thread whose step it commutes with is run
    once, not at each of the steps (ioctl_vs_close: 594 schedules plain)."""
    from vfio_ref.scenarios import run

    plain = run("ioctl_vs_close", "base", bound=1, reduction=False)
    reduced = run("ioctl_vs_close", "base", bound=1, reduction=True)
    assert plain.complete and reduced.complete
    assert plain.returns == reduced.returns and plain.kinds() == reduced.kinds()
    assert sum(s.schedules for s in plain.stats) == 594
    assert sum(s.schedules for s in reduced.stats) < 594
