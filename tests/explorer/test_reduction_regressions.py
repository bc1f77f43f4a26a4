"""One small fixed program per soundness rule of the reductions that the generated programs
of test_reduction.py did not pin down (each rule was broken by a hand-made mutant that no
test noticed: see mutants.py).  Each program is compared as test_reduction.py compares the
generated ones: the reduced search sees exactly the outcomes and findings of the plain search
over the same space, at every bound (the DFS's restricted sleep sets) and with none (DPOR)."""

from __future__ import annotations

from typing import Any

from .programs import Spec
from .test_reduction import BOUNDS, _check


def _outcomes_agree(spec: Spec) -> set[Any]:
    """The reduced and plain searches agree at every bound; the unbounded outcomes."""
    for bound in BOUNDS:
        plain, _ = _check(spec, bound)
    return set(plain.outcomes)


def _seen(outcomes: set[Any], thread: str) -> set[tuple[int, ...]]:
    return {dict(o.observations)[thread] for o in outcomes}


def test_two_puts_that_reach_zero_do_not_commute() -> None:
    """Counter steps commute only while the counter stays away from zero (dpor.py, _counter)."""
    # The refcount starts at 2: whichever put runs second hits zero, so each thread must be
    # seen both ways.  A segment v0=2 with two decrements reaches 0 and is not safe.
    spec = Spec(((("put",),), (("put",),)))
    outcomes = _outcomes_agree(spec)
    assert _seen(outcomes, "T1") == {(0,), (1,)} and _seen(outcomes, "T2") == {(0,), (1,)}


def test_a_put_and_a_get_from_one_do_not_commute_down_to_zero() -> None:
    """An increment and a decrement commute only when no order takes the counter to zero."""
    # From 2, main's put leaves 1: a put then (T1) hits zero unless T2's get came first.
    spec = Spec(((("put",),), (("get",),)), (("put",),))
    _outcomes_agree(spec)


def test_a_read_of_another_thread_depends_on_the_counter_steps_a_read_closed() -> None:
    """A read depends on every counter step since the last write, also those of a segment
    that another read closed (reads do not order one another)."""
    # T1's rread closes the segment holding its get; T2's rread must still see 2 or 3.
    spec = Spec(((("get",), ("rread",)), (("rread",),)))
    outcomes = _outcomes_agree(spec)
    assert _seen(outcomes, "T2") == {(2,), (3,)}


def test_a_plain_member_write_orders_against_a_plain_read_of_another_thread() -> None:
    """A step's plain member writes are part of its footprint (slab.py's watched setattr)."""
    # Each thread's first step is an atomic read of its own: the plain accesses come in the
    # second steps, whose order is a real choice.  T2 reads box.x as 0 or as T1's 1.
    spec = Spec(((("read", 0), ("pwrite", "x", 1)), (("read", 1), ("pread", "x"))))
    outcomes = _outcomes_agree(spec)
    assert _seen(outcomes, "T2") == {(0, 0), (0, 1)}


def test_two_plain_member_writes_of_one_member_do_not_commute() -> None:
    """Two plain writes of one member conflict: the final value depends on their order."""
    spec = Spec(((("read", 0), ("pwrite", "y", 1)), (("read", 1), ("pwrite", "y", 2))))
    outcomes = _outcomes_agree(spec)
    assert {o.state[3] for o in outcomes} == {1, 2}
