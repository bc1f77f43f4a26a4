"""The reductions are checked, not trusted: on generated programs, the reduced search sees
exactly the outcomes (return values, findings, final state) of the plain search over the
same space, at every bound and with none, and a higher bound never loses what a lower one
found.  ``VFIO_REF_LONG=1`` runs many more examples."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given

from vfio_ref.explorer import Exploration, explore
from vfio_ref.explorer.explore import Execution
from vfio_ref.explorer.records import Name
from vfio_ref.kernel.atomic import Atomic
from vfio_ref.kernel.file import current_files, get_unused_fd_flags, put_unused_fd
from vfio_ref.kernel.workqueue import INIT_WORK, WorkStruct, flush_scheduled_work, schedule_work, system_wq

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


def _first_users_of_boot_objects(ctx: Execution) -> None:
    """Two threads each read a counter, then queue a work item and take a descriptor: either
    can be the first to use the system workqueue and the descriptor table (a new thread runs
    alone up to its first scheduling point, so the read comes first)."""
    k = ctx.kernel
    works = [WorkStruct(), WorkStruct()]
    for w in works:
        INIT_WORK(w, lambda work: None)
    counter = Atomic(k, 0)
    queued: list[str] = ctx.data.setdefault("queued", [])  # the test's record, not shared state

    def user(name: str, work: WorkStruct) -> Callable[[], None]:
        def body() -> None:
            counter.atomic_read()
            schedule_work(k, work)
            queued.append(name)
            put_unused_fd(k, get_unused_fd_flags(k))

        return body

    t1, t2 = ctx.spawn("T1", user("T1", works[0])), ctx.spawn("T2", user("T2", works[1]))
    ctx.join(t1, t2)
    flush_scheduled_work(k)


def _boot_object_names(ctx: Execution) -> tuple[Name, Name, str]:
    """The names of the descriptor table and the system workqueue, and the thread that
    queued its work first."""
    s = ctx.sched
    return s.name(current_files(ctx.kernel)), s.name(system_wq(ctx.kernel)), ctx.data["queued"][0]


@pytest.mark.parametrize("bound", [1, None])
def test_what_the_kernel_has_from_boot_is_named_the_same_in_every_execution(bound: int | None) -> None:
    # A pruning search compares the names of what steps touch across executions, and names
    # an object after the thread that made it: the descriptor table and the system
    # workqueue are made with the kernel, not by whichever thread uses them first.
    ex = explore(_first_users_of_boot_objects, nothing, bound=bound, outcome=_boot_object_names,
                 traces=False, shrink=False, max_schedules=None)
    assert ex.stats.complete and ex.clean
    # Either thread was the first to use the workqueue, in some schedule ...
    assert {o.state[2] for o in ex.outcomes} == {"T1", "T2"}
    # ... and both objects had one name in every schedule, from before any thread ran.
    names = {o.state[:2] for o in ex.outcomes}
    assert len(names) == 1, names
    ((files, wq),) = names
    assert files[0] == -1 and wq[0] == -1
    assert files != wq
    assert ex.stats.lazy_names == 0


class _Unannounced:
    """A shared object whose primitive forgot to announce it when it was made (as the
    descriptor table did before 0.2.9): a reducing search names it on first touch."""

    def __init__(self, ctx: Execution) -> None:
        self.kernel = ctx.kernel

    def write(self) -> None:
        s = self.kernel.sched
        if s is not None:
            s.point("WRITE_ONCE", self)


def _touching(count: int) -> Callable[[Execution], None]:
    """Two threads write ``count`` unannounced objects, in opposite orders."""

    def program(ctx: Execution) -> None:
        objs = [_Unannounced(ctx) for _ in range(count)]

        def forwards() -> None:
            for o in objs:
                o.write()

        def backwards() -> None:
            for o in reversed(objs):
                o.write()

        t1, t2 = ctx.spawn("T1", forwards), ctx.spawn("T2", backwards)
        ctx.join(t1, t2)

    return program


@pytest.mark.parametrize("bound", [1, None])
def test_a_reduced_search_that_named_two_objects_on_first_touch_is_not_vouched_for(bound: int | None) -> None:
    ex = explore(_touching(2), nothing, bound=bound, traces=False, shrink=False, max_schedules=None)
    assert ex.stats.unstable_names >= 1 and ex.stats.lazy_names >= 2
    assert not ex.stats.complete and not ex.clean
    line = ex.stats.verdict_line()
    assert "NOT vouched for" in line and "exhausted" not in line
    assert f"in {ex.stats.unstable_names} of them" in line
    assert f"{ex.stats.unstable_names} schedules had two or more" in ex.stats.render()
    if bound is not None:  # a split search merges its parts' counts and says the same
        split = explore(_touching(2), nothing, bound=bound, traces=False, shrink=False, max_schedules=None, jobs=2)
        assert split.stats.jobs == 2 and split.stats.schedules == ex.stats.schedules
        assert (split.stats.unstable_names, split.stats.lazy_names) == (ex.stats.unstable_names, ex.stats.lazy_names)
        assert not split.stats.complete and "NOT vouched for" in split.stats.verdict_line()
    # Without the reduction nothing is named, and the same space is searched to the end.
    plain = explore(_touching(2), nothing, bound=bound, reduction=False, traces=False, shrink=False,
                    max_schedules=None)
    assert plain.stats.complete and plain.clean and plain.stats.lazy_names == 0
    assert "exhausted" in plain.stats.verdict_line()


def test_one_object_named_on_first_touch_has_the_same_name_in_every_schedule() -> None:
    ex = explore(_touching(1), nothing, bound=None, traces=False, shrink=False, max_schedules=None)
    assert ex.stats.lazy_names >= 1 and ex.stats.unstable_names == 0
    assert ex.stats.complete and ex.clean
    assert "exhausted" in ex.stats.verdict_line()
    assert "at most one per schedule, so it had one name in every schedule" in ex.stats.render()
