"""The cyclic garbage collector runs between executions, never inside one, and each
execution's garbage is gone before the next begins."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from vfio_ref.explorer import Execution, RawFinding, explore
from vfio_ref.explorer.garbage import (
    INSIDE_THRESHOLD,
    collect_garbage,
    collecting_between_executions,
    frozen_for_fork,
)
from vfio_ref.kernel import Mutex

from .toys import nothing


@contextlib.contextmanager
def _collections() -> Iterator[list[int]]:
    """The generation of every collection that starts inside the block, in order."""
    generations: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(watch)
    try:
        yield generations
    finally:
        gc.callbacks.remove(watch)


class _Cycle:
    """A stand-in for an execution's kernel: garbage only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


def _program_watching_the_collector(seen: dict[str, Any]) -> Any:
    """Two threads of two locked steps (six schedules at bound 2); each execution checks
    that the collector is off and counts the earlier executions' cycles still alive."""

    def program(ctx: Execution) -> None:
        seen["executions"] += 1
        seen["threshold_inside"].append(gc.get_threshold()[0])
        refs = seen.setdefault("cycles", [])
        seen["earlier_alive"].append(sum(r() is not None for r in refs))
        c = _Cycle()
        refs.append(weakref.ref(c))
        m = Mutex(ctx.kernel, "m")

        def body() -> None:
            for _ in range(2):
                m.lock()
                m.unlock()

        t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
        ctx.join(t1, t2)
        ctx.data["cycle"] = c  # held by the execution until it is over

    return program


@pytest.mark.parametrize(("bound", "reduction"), [(2, False), (2, True), (None, True)])
def test_no_collection_runs_inside_an_execution_and_each_executions_cycles_are_freed_before_the_next(
    bound: int | None, reduction: bool
) -> None:
    seen: dict[str, Any] = {"executions": 0, "threshold_inside": [], "earlier_alive": []}
    program = _program_watching_the_collector(seen)
    inside: list[int] = []  # per execution, the collections that ran while it did
    assert gc.isenabled()
    before = gc.get_threshold()
    with _collections() as generations:

        def running(ctx: Execution) -> None:
            n = len(generations)
            program(ctx)
            inside.append(len(generations) - n)

        ex = explore(running, nothing, bound=bound, reduction=reduction, traces=False, shrink=False)
    assert ex.stats.complete and seen["executions"] == ex.stats.schedules > 1
    assert seen["threshold_inside"] == [INSIDE_THRESHOLD] * seen["executions"]
    assert inside == [0] * seen["executions"]
    assert len(generations) >= seen["executions"]  # and one after each
    # Freed before the next execution begins: at most one earlier execution is still alive,
    # whose thread body the greenlet library keeps from its last switch (in C, out of the
    # collector's sight) until the next switch of that greenlet.
    assert seen["earlier_alive"][0] == 0
    assert max(seen["earlier_alive"]) <= 1
    assert gc.isenabled() and gc.get_threshold() == before  # given back as it was


def test_a_collector_the_caller_turned_off_stays_off_and_collects_nothing() -> None:
    seen: dict[str, Any] = {"executions": 0, "threshold_inside": [], "earlier_alive": []}
    gc.disable()
    try:
        with _collections() as runs:
            ex = explore(_program_watching_the_collector(seen), nothing, bound=2, reduction=False, traces=False,
                         shrink=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert ex.stats.schedules == seen["executions"] > 1
    assert runs == []
    # Nothing collected them: every execution met all the earlier ones' cycles alive.
    assert seen["earlier_alive"] == list(range(seen["executions"]))


def test_the_thresholds_come_back_only_when_the_last_of_several_concurrent_searches_ends() -> None:
    # A Dask worker runs parts of searches on threads: each holds the threshold up.
    before = gc.get_threshold()
    assert before[0] < INSIDE_THRESHOLD
    first, second = collecting_between_executions(), collecting_between_executions()
    assert first.__enter__() is True
    assert gc.get_threshold() == (INSIDE_THRESHOLD, *before[1:])
    assert second.__enter__() is True
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == INSIDE_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before

    barrier = threading.Barrier(2)
    states: list[int] = []

    def search() -> None:
        with collecting_between_executions():
            barrier.wait()
            states.append(gc.get_threshold()[0])
            barrier.wait()

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert states == [INSIDE_THRESHOLD] * 2 and gc.get_threshold() == before


def test_a_collector_turned_off_by_a_zero_threshold_stays_off() -> None:
    old = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with collecting_between_executions() as collect:
            assert collect is False and gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*old)


def test_a_runaway_execution_is_still_collected_inside() -> None:
    # Past INSIDE_THRESHOLD allocations the interpreter collects, as it would at 700.
    gc.collect()
    with _collections() as generations, collecting_between_executions():
        garbage = [_Cycle() for _ in range(INSIDE_THRESHOLD // 2)]
        assert generations == []
        garbage += [_Cycle() for _ in range(INSIDE_THRESHOLD)]
        assert generations != []


def test_older_generations_are_collected_as_the_interpreters_thresholds_say() -> None:
    old = gc.get_threshold()
    gc.set_threshold(700, 3, 2)
    gc.collect()
    try:
        with _collections() as generations, collecting_between_executions():
            for _ in range(12):
                collect_garbage()
    finally:
        gc.set_threshold(*old)
    # Every call the young generation; every 3rd the middle one too; every 6th all three.
    assert generations == [0, 0, 0, 1, 0, 0, 0, 1, 2] * 2


def test_an_executions_step_and_choice_records_are_freed_without_the_collector() -> None:
    # The search loop drops the scheduler's records once it has counted the execution
    # (ControlledScheduler.discard_records): the collector then finds the kernel's cycle but
    # none of the records, which reference counting has freed already.
    from vfio_ref.explorer.records import Choice, Event

    from .toys import locked_steps

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        ex = explore(locked_steps(3), nothing, bound=2, reduction=True, traces=False, shrink=False)
        gc.collect()
        kinds = {type(o) for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    assert ex.stats.exhausted and ex.stats.schedules > 1
    assert Mutex in kinds or any(issubclass(k, Mutex) for k in kinds)  # the kernel did go this way
    assert Event not in kinds and Choice not in kinds


def _program_noting_the_freeze(counts: list[int], alive: list[bool] | None = None, ref: Any = None) -> Any:
    def program(ctx: Execution) -> None:
        counts.append(gc.get_freeze_count())
        if alive is not None:
            alive.append(ref() is not None)
        _program_watching_the_collector({"executions": 0, "threshold_inside": [], "earlier_alive": []})(ctx)

    return program


@contextlib.contextmanager
def _thresholds(*t: int) -> Iterator[None]:
    old = gc.get_threshold()
    gc.set_threshold(*t)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def test_a_search_freezes_the_heap_at_its_first_full_collection_and_unfreezes_it_at_its_end() -> None:
    holder = [_Cycle()]
    ref = weakref.ref(holder[0])
    gc.collect()  # now in the oldest generation...
    assert gc.get_freeze_count() == 0
    holder.clear()  # ...and garbage that only a full collection frees
    counts: list[int] = []
    alive: list[bool] = []
    with _thresholds(700, 1, 2), _collections() as generations:
        # A full collection after every second execution (threshold1 * threshold2).
        ex = explore(_program_noting_the_freeze(counts, alive, ref), nothing, bound=2, reduction=False,
                     traces=False, shrink=False)
    assert ex.stats.exhausted and len(counts) == ex.stats.schedules > 3
    assert counts[:2] == [0, 0]  # not frozen before the first full collection...
    assert min(counts[2:]) > 0  # ...frozen after it, for the rest of the search
    assert alive[:2] == [True, True] and set(alive[2:]) == {False}  # collected, not frozen
    assert generations.count(2) == len(counts) // 2  # full collections still run
    assert gc.get_freeze_count() == 0  # the collector's again once the search is over


def test_a_search_shorter_than_a_full_collection_freezes_nothing() -> None:
    counts: list[int] = []
    with _thresholds(700, 10, 10):
        explore(_program_noting_the_freeze(counts), nothing, bound=2, reduction=False, traces=False, shrink=False)
    assert len(counts) < 100 and set(counts) == {0} and gc.get_freeze_count() == 0


def test_a_caller_that_froze_objects_itself_keeps_exactly_its_own_frozen() -> None:
    gc.collect()
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        counts: list[int] = []
        with _thresholds(700, 1, 1):
            explore(_program_noting_the_freeze(counts), nothing, bound=2, reduction=False, traces=False,
                    shrink=False)
        # Frozen objects can still be freed by reference counting, so the count may drop a
        # little; a freeze of the search's heap would raise it (by every object the search
        # holds) and an unfreeze would take it to zero.
        assert counts and max(counts) <= mine
        assert mine // 2 < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()


def test_a_collector_the_caller_turned_off_freezes_nothing() -> None:
    counts: list[int] = []
    gc.disable()
    try:
        with _thresholds(700, 1, 1):
            explore(_program_noting_the_freeze(counts), nothing, bound=2, reduction=False, traces=False,
                    shrink=False)
    finally:
        gc.enable()
    assert counts and set(counts) == {0}


def test_the_heap_is_unfrozen_only_when_the_last_of_several_concurrent_searches_ends() -> None:
    assert gc.get_freeze_count() == 0
    with _thresholds(700, 1, 1):
        first, second = collecting_between_executions(), collecting_between_executions()
        first.__enter__()
        second.__enter__()
        collect_garbage()  # the first full collection of either: frozen
        frozen = gc.get_freeze_count()
        assert frozen > 0
        fresh = [[i] for i in range(1000)]  # tracked, not frozen: a second freeze would take them
        collect_garbage()
        assert gc.get_freeze_count() <= frozen  # frozen once (reference counting may free some)
        first.__exit__(None, None, None)
        assert frozen // 2 < gc.get_freeze_count() <= frozen  # still frozen
        second.__exit__(None, None, None)
        assert gc.get_freeze_count() == 0
        del fresh


# -- a process pool that forks: the parent's heap frozen -----------------------------------------


def test_around_a_fork_the_heap_is_collected_then_frozen_and_unfrozen_after() -> None:
    holder = [_Cycle()]
    ref = weakref.ref(holder[0])
    holder.clear()  # garbage only the cyclic collector frees
    assert gc.get_freeze_count() == 0
    with frozen_for_fork():
        assert ref() is None  # collected first, not frozen with the rest
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the heap: modules, classes, the test runner's objects
    assert gc.get_freeze_count() == 0


def test_around_a_fork_a_callers_own_freeze_is_left_alone() -> None:
    gc.collect()
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        fresh = [[i] for i in range(1000)]  # tracked, not frozen: a second freeze would take them
        with frozen_for_fork():
            assert mine // 2 < gc.get_freeze_count() <= mine
        assert mine // 2 < gc.get_freeze_count() <= mine  # not unfrozen either
        del fresh
    finally:
        gc.unfreeze()


def test_around_a_fork_a_collector_the_caller_turned_off_collects_nothing() -> None:
    holder = [_Cycle()]
    ref = weakref.ref(holder[0])
    holder.clear()
    gc.disable()
    try:
        with frozen_for_fork():
            assert ref() is not None and gc.get_freeze_count() > 0
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def _judge_unfrozen_in_a_worker(parent: int) -> Any:
    def judge(ctx: Execution) -> list[RawFinding]:
        if os.getpid() != parent and gc.get_freeze_count() == 0:
            return [RawFinding("bug", "a worker's heap is not frozen", "unfrozen")]
        return []

    return judge


def test_the_workers_of_a_split_search_start_from_the_parents_frozen_heap() -> None:
    # Thresholds under which no search of a worker reaches a full collection of its own (so
    # none freezes anything itself): a worker sees the heap frozen only if it inherited it.
    with _thresholds(700, 10, 10):
        ex = explore(_program_noting_the_freeze([]), _judge_unfrozen_in_a_worker(os.getpid()), bound=2,
                     reduction=False, traces=False, shrink=False, jobs=2)
    assert ex.stats.exhausted and ex.stats.jobs == 2 and ex.stats.schedules > 1
    assert ex.clean, [f.detail for f in ex.findings]
    assert gc.get_freeze_count() == 0  # and the parent's heap is the collector's again
