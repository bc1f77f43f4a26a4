"""The explorer: systematic and random search, replay, shrinking, deadlocks, statistics."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from vfio_ref.explorer import (
    FindingId,
    Outcome,
    ScheduleMismatch,
    explore,
    parse_schedule,
    render_swimlanes,
    replay_findings,
    run_once,
)
from vfio_ref.explorer.records import ChoicePoint
from vfio_ref.explorer.replay import ReplayStrategy
from vfio_ref.explorer.scheduler import ControlledScheduler
from vfio_ref.explorer.strategy import format_schedule

from .toys import (
    ab_ba,
    independent_steps,
    judge_all,
    judge_lost_update,
    lock_handoff,
    locked_steps,
    lost_update,
    nothing,
    wait_on_freed_mutex,
)


def test_the_default_schedule_of_a_racy_counter_is_fine_but_one_preemption_loses_an_update() -> None:
    assert explore(lost_update, judge_lost_update, bound=0).clean
    ex = explore(lost_update, judge_lost_update, bound=1)
    assert [f.key for f in ex.findings] == ["bug:lost-update"]
    f = ex.findings[0]
    assert f.preemptions == 1
    assert len(parse_schedule(f.schedule)) == 1  # shrunk to one deviation
    assert ex.stats.exhausted


def test_a_finding_replays_exactly_from_its_schedule_string() -> None:
    ex = explore(lost_update, judge_lost_update, bound=2)
    sched = ex.findings[0].schedule
    for _ in range(20):
        res = replay_findings(lost_update, judge_lost_update, sched)
        assert [r.key for r in res.findings] == ["bug:lost-update"]
    one = explore(lost_update, judge_lost_update, replay="-")
    assert not one.findings and not one.clean  # one schedule is not a searched space


def test_an_ab_ba_order_is_a_lockdep_report_in_every_schedule_and_a_deadlock_in_some() -> None:
    clean_run = explore(ab_ba, judge_all, bound=0)
    assert [f.kind for f in clean_run.findings] == ["lockdep"]  # no deadlock needed to see it
    ex = explore(ab_ba, judge_all, bound=2)
    assert ex.kinds() == ["deadlock", "lockdep"]
    dl = next(f for f in ex.findings if f.kind == "deadlock")
    # every blocked thread, what it waits for and who holds it
    assert "T1: blocked in mutex_lock(B) held by T2" in dl.detail
    assert "T2: blocked in mutex_lock(A) held by T1" in dl.detail
    assert "holds A" in dl.detail and "holds B" in dl.detail
    assert "wait-for cycle: T1 -> T2 -> T1" in dl.detail or "wait-for cycle: T2 -> T1 -> T2" in dl.detail


def test_the_bounded_space_of_two_threads_of_twenty_locked_steps_has_762_schedules() -> None:
    """The number of interleavings of 2 x 20 dependent steps with at most 2 preemptions."""
    ex = explore(locked_steps(20), nothing, bound=2, reduction=False)
    assert ex.stats.schedules == 762 and ex.stats.exhausted
    assert ex.clean


def test_sleep_sets_do_not_rerun_interleavings_of_independent_steps() -> None:
    """Two threads of five steps on their own mutexes.  Pinned counts: with no bound every
    schedule is equivalent, so DPOR runs one; under bound 2 the restricted sleep sets run 18
    of the plain search's 42 (only the running thread's step may sleep)."""
    plain = explore(independent_steps(5), nothing, bound=2, reduction=False)
    reduced = explore(independent_steps(5), nothing, bound=2, reduction=True)
    assert (plain.stats.schedules, reduced.stats.schedules) == (42, 18)
    assert plain.stats.exhausted and reduced.stats.exhausted
    unbounded = explore(independent_steps(5), nothing, bound=None, reduction=True)
    assert unbounded.stats.schedules == 1 and unbounded.stats.exhausted
    assert explore(independent_steps(5), nothing, bound=None, reduction=False).stats.schedules == 252


@pytest.mark.parametrize(("program", "judge"), [(lost_update, judge_lost_update), (ab_ba, judge_all)])
def test_reduction_finds_what_plain_search_finds_on_toys(program: Any, judge: Any) -> None:
    for bound in (2, None):
        keys = {f.key for f in explore(program, judge, bound=bound, reduction=False, traces=False).findings}
        assert keys == {f.key for f in explore(program, judge, bound=bound, reduction=True, traces=False).findings}


def test_reduction_reverses_two_acquires_of_one_lock_not_a_release_and_an_acquire() -> None:
    """The reader taking the mutex first is the only way it sees 0.  A release and the next
    acquire are never both runnable, so DPOR must flag the race between the two acquires."""
    for reduction in (False, True):
        seen: set[int] = set()

        def judge(ctx: Any, seen: set[int] = seen) -> list[Any]:
            seen.add(ctx.data["seen"])
            return []

        for bound in (2, None):
            seen.clear()
            ex = explore(lock_handoff, judge, bound=bound, reduction=reduction, traces=False)
            assert ex.stats.exhausted
            assert seen == {0, 1}, f"reduction={reduction} bound={bound}"


def test_a_thread_waiting_on_a_mutex_in_freed_memory_meets_the_use_after_free_itself() -> None:
    """The scheduler evaluates the waiter's condition (is the mutex free?) on freed memory:
    that must not crash the scheduler, and the use after free is reported for the waiter."""
    ex = explore(wait_on_freed_mutex, judge_all, bound=2)
    assert [f.kind for f in ex.findings] == ["use-after-free"]
    assert [f.kind for f in explore(wait_on_freed_mutex, judge_all, bound=None).findings] == ["use-after-free"]
    detail = ex.findings[0].detail
    assert detail.startswith("BUG: KASAN: use-after-free in mutex_lock: write of box->m->owner (struct box)")
    assert "Freed by task T1 in freer" in detail and detail.endswith("[T2]")


def test_random_mode_is_reproducible_from_its_seed() -> None:
    a = explore(lost_update, judge_lost_update, random=True, seed=7, runs=40, traces=False)
    b = explore(lost_update, judge_lost_update, random=True, seed=7, runs=40, traces=False)
    assert [(f.key, f.schedule) for f in a.findings] == [(f.key, f.schedule) for f in b.findings]
    assert a.findings and a.stats.schedules == 40
    # A sample is never a complete search, and says so.
    assert not a.stats.complete and a.stats.sampled
    assert "sampled" in a.stats.verdict_line() and "exhausted" not in a.stats.verdict_line()


@pytest.mark.parametrize("runs", [2, 3, 32, 33, 34, 200])
def test_a_sample_splits_into_stretches_that_cover_every_run_after_the_first_once(runs: int) -> None:
    from vfio_ref.explorer.pct import PARTS, PctStrategy

    parts = PctStrategy(0, runs, 3).subtrees()
    assert [r for a, b in parts for r in range(a, b + 1)] == list(range(2, runs + 1))
    assert len(parts) == min(runs - 1, PARTS) and all(a <= b for a, b in parts)


def test_a_part_of_a_sample_is_refused_by_another_sample_or_outside_its_runs() -> None:
    from vfio_ref.explorer.pct import PctStrategy

    first = PctStrategy(7, 10, 3)
    with pytest.raises(ValueError, match="past its first run"):
        PctStrategy(7, 10, 3).restrict(first, 2, 5)  # first has not made its first run yet
    first.new_execution()
    first._run = 1  # as after the first run
    with pytest.raises(ValueError, match="cannot be made by random \\(PCT\\) sampling, seed 8"):
        PctStrategy(8, 10, 3).restrict(first, 2, 5)
    for start, last in ((1, 5), (5, 4), (2, 11)):
        with pytest.raises(ValueError, match=f"runs {start}..{last} are not a part of a 10-run sample"):
            PctStrategy(7, 10, 3).restrict(first, start, last)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7-1", "is not 'CHOICE:THREAD'"),
        ("1:1,1:0", "appears twice"),
        ("x:1", "is not 'CHOICE:THREAD'"),
    ],
)
def test_a_malformed_schedule_is_rejected_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_a_schedule_that_does_not_fit_the_program_is_rejected() -> None:
    with pytest.raises(ScheduleMismatch, match=r"thread 7 .* does not exist"):
        explore(lost_update, judge_lost_update, replay="1:7")
    with pytest.raises(ScheduleMismatch, match="only 2 choice points"):
        explore(lost_update, judge_lost_update, replay="30:1")


class _Choosing(ReplayStrategy):
    """Chooses ``pick`` at every choice point, runnable or not (a strategy's bug)."""

    def __init__(self, pick: int) -> None:
        super().__init__({})
        self.pick = pick

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        return self.pick


@pytest.mark.parametrize("pick", [0, 7], ids=["blocked-in-join", "no-such-thread"])
def test_a_strategy_choosing_a_thread_that_cannot_run_is_refused(pick: int) -> None:
    # Thread 0 (main) waits in its join while T1 and T2 run; there is no thread 7.
    with pytest.raises(ScheduleMismatch, match=rf"strategy chose thread {pick}, which cannot run; runnable: \[1, 2\]"):
        run_once(lost_update, judge_lost_update, _Choosing(pick))


def test_a_strategy_choosing_the_other_runnable_thread_switches_to_it() -> None:
    # From the first choice on, T2 (2) whenever it can run: it does its whole body first.
    res = run_once(lost_update, judge_lost_update, _Choosing(2))
    assert [c.chosen for c in res.sched.choices][:2] == [2, 2]
    assert res.sched.threads[2].done and res.sched.threads[1].done


def test_schedules_round_trip_through_their_text() -> None:
    devs = {3: 1, 17: 0}
    assert parse_schedule(format_schedule(devs)) == devs
    assert format_schedule({}) == "-" and parse_schedule("-") == {}


def test_a_trace_reads_as_swimlanes_with_each_context_switch_marked() -> None:
    ex = explore(lost_update, judge_lost_update, bound=1)
    f = ex.findings[0]
    text = render_swimlanes(f.events, f.threads, last=str(f))
    header = text.splitlines()[0]
    assert "main" in header and "T1" in header and "T2" in header
    assert "preempted; switch to" in text
    assert "atomic_read" in text and "atomic_set" in text
    assert text.rstrip().endswith(str(f))


def test_statistics_are_reported_as_coyote_prints_them() -> None:
    ex = explore(locked_steps(3), nothing, bound=1)
    text = ex.stats.render()
    assert "Explored" in text and "schedules" in text
    assert text.splitlines()[0] == (
        "... Searched every schedule with at most 1 preemptions; depth-first with sleep sets restricted "
        f"for the bound: exhausted ({ex.stats.schedules} schedules)."
    )
    assert ex.stats.points_min <= ex.stats.points_avg <= ex.stats.points_max


def test_a_capped_search_is_not_complete_and_says_where_it_stopped() -> None:
    ex = explore(locked_steps(5), nothing, bound=2, reduction=False, max_schedules=10)
    assert ex.stats.schedules == 10 and ex.stats.capped
    assert not ex.stats.complete and not ex.clean  # no findings, but the space was not exhausted
    assert "NOT exhausted: stopped at the cap of 10 schedules" in ex.stats.verdict_line()
    with pytest.raises(ValueError, match="max_schedules must be 1 or more"):
        explore(locked_steps(1), nothing, max_schedules=0)


def test_no_bound_means_every_schedule() -> None:
    """2 x 5 dependent steps: C(10, 5) = 252 interleavings, all of them distinct."""
    plain = explore(locked_steps(5), nothing, bound=None, reduction=False)
    reduced = explore(locked_steps(5), nothing, bound=None, reduction=True)
    assert plain.stats.schedules == 252 and plain.stats.complete
    assert reduced.stats.schedules == 252 and reduced.stats.complete  # all dependent: no reduction
    assert "no preemption bound" in reduced.stats.verdict_line()
    assert "source-DPOR" in reduced.stats.space


def test_a_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="preemption bound must be 0 or more"):
        explore(lost_update, judge_lost_update, bound=-1)


def test_every_outcome_is_kept_with_its_return_codes() -> None:
    def program(ctx: Any) -> None:
        lost_update(ctx)
        ctx.data["observations"] = {"v": [ctx.data["v"]]}

    ex = explore(program, judge_lost_update, bound=None)
    assert sorted(r["v"] for r in ex.returns()) == [[1], [2]]
    assert sum(i.count for i in ex.outcomes.values()) == ex.stats.distinct


def test_an_outcome_prints_its_findings_in_sorted_order_whatever_the_sets_order() -> None:
    # A split search unpickles outcomes built in a worker; a frozenset's iteration order
    # follows its insertion history, so an unsorted repr printed two equal outcomes apart.
    idents = [FindingId("warn", f"f{i:02}", "x") for i in range(40)]
    shuffled = idents[::-1]
    a = Outcome((), frozenset(idents))
    b = Outcome((), frozenset(shuffled))
    assert a == b
    text = repr(a)
    assert text == repr(b) == repr(pickle.loads(pickle.dumps(b)))
    positions = [text.index(f"function='{f.function}'") for f in idents]
    assert positions == sorted(positions)
    assert text.startswith("Outcome(observations=(), findings={FindingId(kind='warn', function='f00'")


def _allocating_threads(seen: list[tuple[int, int]]) -> Any:
    """Two threads that each kzalloc a struct (an injectable point); each execution notes how
    many points its kernel listed and how many allocations it injected to fail."""
    from vfio_ref.kernel import Mutex
    from vfio_ref.kernel.slab import kfree, kzalloc

    def program(ctx: Any) -> None:
        k = ctx.kernel

        def body() -> None:
            m = kzalloc(k, Mutex, "m")
            if m is not None:
                m.lock()
                m.unlock()
                kfree(k, m)

        t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
        ctx.join(t1, t2)
        seen.append((len(k.fault_inject.points), len(k.fault_inject.injected)))

    return program


def test_a_searchs_executions_do_not_list_the_fault_points_they_pass_but_still_inject() -> None:
    from vfio_ref.explorer import run_once
    from vfio_ref.explorer.replay import ReplayStrategy

    seen: list[tuple[int, int]] = []
    ex = explore(_allocating_threads(seen), nothing, bound=1, traces=False, shrink=False)
    assert ex.stats.exhausted and len(seen) == ex.stats.schedules > 1
    assert {points for points, _ in seen} == {0} and {inj for _, inj in seen} == {0}
    # One execution on its own lists them (`vfio-ref list faults` reads that)...
    seen.clear()
    run_once(_allocating_threads(seen), nothing, ReplayStrategy({}))
    assert seen == [(2, 0)]

    # ...and a search still injects the failures it is asked for.
    def failing(ctx: Any) -> None:
        ctx.kernel.fault_inject.fail("kzalloc@?")  # a test function is no kernel function: "?"
        _allocating_threads(seen)(ctx)

    seen.clear()
    explore(failing, nothing, bound=1, traces=False, shrink=False)
    assert seen and set(seen) == {(0, 2)}
