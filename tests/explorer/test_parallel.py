"""Exploring on several processes, or on a Dask cluster: the serial search's result exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given

from vfio_ref.explorer import Exploration, explore
from vfio_ref.kernel.core import ModelUsageError
from vfio_ref.report import build_report
from vfio_ref.scenarios import run
from vfio_ref.scenarios.catalogue import SCENARIOS
from vfio_ref.scenarios.harness import judge_execution, make_program

from .programs import Spec, generated_settings, judge, program_of, strategy
from .toys import ab_ba, judge_all, locked_steps, nothing

LONG = os.environ.get("VFIO_REF_LONG") == "1"


def signature(ex: Exploration) -> tuple[Any, ...]:
    """Everything a split search must reproduce: counts, outcomes with their counts and
    first schedules, findings with their schedules and counts."""
    return (
        ex.stats.schedules,
        ex.stats.distinct,
        ex.stats.redundant,
        ex.stats.complete,
        sorted((f.ident, f.schedule, f.count) for f in ex.findings),
        sorted((repr(o), i.count, i.schedule) for o, i in ex.outcomes.items()),
    )


@pytest.mark.parametrize(("bound", "reduction"), [(1, False), (2, False), (2, True), (3, True)])
@pytest.mark.parametrize("toy", ["ab_ba", "locked_steps"])
def test_a_split_search_of_a_toy_is_the_serial_one(toy: str, bound: int, reduction: bool) -> None:
    program, judge = (ab_ba, judge_all) if toy == "ab_ba" else (locked_steps(6), nothing)
    serial = explore(program, judge, bound=bound, reduction=reduction, traces=False, shrink=False)
    split = explore(program, judge, bound=bound, reduction=reduction, traces=False, shrink=False, jobs=2)
    assert signature(split) == signature(serial)
    assert split.stats.jobs == 2 and serial.stats.jobs == 1


def test_a_part_copies_its_nodes_field_by_field_and_owns_what_its_search_changes() -> None:
    # restrict() copies the first path's nodes with DfsNode.copy (not copy.deepcopy): every
    # field must come across, and the sets the part's search mutates must be its own (a Dask
    # worker runs several parts on threads of one process, against one first path).
    from vfio_ref.explorer.dfs import DfsNode
    from vfio_ref.explorer.records import Footprint

    fp = Footprint([((1, "x"), True, 0)])
    node = DfsNode(7, (0, 1, 2), 1, True, (1, 0, 2), 0, {2: fp}, {1}, fp, True, frozenset({(3, "y")}))
    twin = node.copy()
    for f in dataclasses.fields(DfsNode):
        assert getattr(twin, f.name) == getattr(node, f.name), f.name
    assert twin.done is not node.done and twin.sleep_in is not node.sleep_in
    twin.done.add(0)
    twin.sleep_in.clear()
    assert node.done == {1} and node.sleep_in == {2: fp}


def test_a_split_search_of_a_scenario_is_the_serial_one_findings_and_schedules_included() -> None:
    sc = SCENARIOS["create_race"]
    program = make_program(sc.fn, "base", review_fixes=False, ablation=None, noiommu=False)
    serial = explore(program, judge_execution, bound=1, traces=False)
    split = explore(program, judge_execution, bound=1, traces=False, jobs=2)
    assert serial.kinds() == ["leak"]
    assert signature(split) == signature(serial)


# Generated programs (tests/explorer/programs.py), which the catalogue does not have: the
# split search must be the serial one on them too, outcome by outcome.
EXAMPLES = 60 if LONG else 12


def _split_is_serial(spec: Spec, spaces: Sequence[tuple[int | None, bool]]) -> None:
    program = program_of(spec)
    for bound, reduction in spaces:
        kw: dict[str, Any] = dict(bound=bound, reduction=reduction, traces=False, shrink=False, max_schedules=None)
        split, serial = explore(program, judge, jobs=2, **kw), explore(program, judge, **kw)
        assert serial.stats.complete and split.stats.jobs == 2, spec
        assert signature(split) == signature(serial), spec


@generated_settings(EXAMPLES)
@given(strategy(threads=2, max_ops=3))
def test_a_split_search_of_a_generated_program_is_the_serial_one(spec: Spec) -> None:
    _split_is_serial(spec, ((1, False), (2, True), (None, False)))


@generated_settings(EXAMPLES // 2)
@given(strategy(threads=3, max_ops=2))
def test_a_split_search_of_a_generated_three_thread_program_is_the_serial_one(spec: Spec) -> None:
    _split_is_serial(spec, ((1, False), (2, True)))


def test_a_capped_split_search_is_the_serial_capped_one() -> None:
    program = locked_steps(6)
    serial = explore(program, nothing, bound=2, reduction=False, max_schedules=20, traces=False)
    split = explore(program, nothing, bound=2, reduction=False, max_schedules=20, traces=False, jobs=2)
    assert signature(split) == signature(serial) and not split.stats.complete


def test_a_capped_split_search_stops_its_parts_once_they_pass_the_cap(tmp_path: pathlib.Path) -> None:
    # Each execution leaves a mark in a file, whichever process runs it.  Every part of the
    # split search may run up to the cap on its own; together they stop as soon as they pass
    # it, and the search is then run serially, up to the cap.
    marks = tmp_path / "executions"
    inner = locked_steps(20)

    def program(ctx: Any) -> None:
        with open(marks, "a") as f:
            f.write("x")
        inner(ctx)

    serial = explore(program, nothing, bound=2, reduction=False, max_schedules=20, traces=False)
    assert len(marks.read_text()) == 20
    marks.write_text("")
    split = explore(program, nothing, bound=2, reduction=False, max_schedules=20, traces=False, jobs=2)
    assert signature(split) == signature(serial)
    whole = explore(inner, nothing, bound=2, reduction=False, max_schedules=None, traces=False, jobs=2)
    assert whole.stats.schedules == 762  # split, with no counter, its parts would run hundreds
    # The first execution, the parts up to one past the cap (each process may finish the
    # execution it is in), then the serial search's 20.
    assert len(marks.read_text()) <= 1 + (20 + 2) + 20


# -- a random (PCT) sample, split into stretches of runs ---------------------------------------


@pytest.mark.parametrize("runs", [1, 2, 3, 34, 101])
@pytest.mark.parametrize("toy", ["ab_ba", "locked_steps"])
def test_a_split_sample_of_a_toy_is_the_serial_one(toy: str, runs: int) -> None:
    # 34 and 101 runs: more runs than parts (33 left after the first run fill 32 parts, one
    # of two runs; 100 fill 32 parts of three or four).
    program, judge = (ab_ba, judge_all) if toy == "ab_ba" else (locked_steps(6), nothing)
    kw: dict[str, Any] = dict(random=True, seed=7, runs=runs, traces=False, shrink=False)
    serial, split = explore(program, judge, **kw), explore(program, judge, jobs=2, **kw)
    assert signature(split) == signature(serial)
    assert split.stats.jobs == 2 and split.stats.sampled and not split.stats.complete
    assert split.stats.space == serial.stats.space and split.stats.seed == 7


def test_a_split_sample_of_a_scenario_is_the_serial_one_findings_and_schedules_included() -> None:
    serial = run("create_race", "base", random=True, seed=3, runs=40, traces=False)
    split = run("create_race", "base", random=True, seed=3, runs=40, traces=False, jobs=2)
    assert serial.kinds() == ["leak"] and not serial.complete
    assert [(f.ident, f.schedule, f.count) for f in split.findings] == [
        (f.ident, f.schedule, f.count) for f in serial.findings
    ]
    assert split.stats[0].schedules == serial.stats[0].schedules == 40 and not split.complete


@generated_settings(EXAMPLES)
@given(strategy(threads=3, max_ops=3))
def test_a_split_sample_of_a_generated_program_is_the_serial_one(spec: Spec) -> None:
    program = program_of(spec)
    kw: dict[str, Any] = dict(random=True, seed=len(repr(spec)), runs=40, traces=False, shrink=False)
    assert signature(explore(program, judge, jobs=2, **kw)) == signature(explore(program, judge, **kw)), spec


def test_a_capped_split_sample_is_the_serial_capped_one() -> None:
    kw: dict[str, Any] = dict(random=True, seed=5, runs=60, max_schedules=10, traces=False, shrink=False)
    serial, split = explore(locked_steps(6), nothing, **kw), explore(locked_steps(6), nothing, jobs=2, **kw)
    assert signature(split) == signature(serial) and serial.stats.schedules == 10


# -- a fault sweep, its points searched on several processes ------------------------------------


def _sweep_signature(v: Any) -> tuple[Any, ...]:
    return (
        [(f.ident, f.schedule, f.count, f.fail, f.injected, f.detail) for f in v.findings],
        [(s.point, s.nth, s.reachable, s.verdict, s.kinds) for s in v.swept],
        [(s.schedules, s.distinct, s.buggy, s.complete) for s in v.stats],
        v.kinds(),
    )


@contextlib.contextmanager
def _spying_on_the_freeze(monkeypatch: pytest.MonkeyPatch, module: Any) -> Iterator[list[int]]:
    """``module``'s frozen_for_fork, noting the frozen count inside each use."""
    real = module.frozen_for_fork
    seen: list[int] = []

    @contextlib.contextmanager
    def spy() -> Iterator[None]:
        with real():
            seen.append(gc.get_freeze_count())
            yield

    monkeypatch.setattr(module, "frozen_for_fork", spy)
    yield seen


def test_a_fault_sweep_on_two_processes_is_the_serial_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    run_module = sys.modules["vfio_ref.scenarios.run"]  # the package's ``run`` is the function
    serial = run("fault_sweep", "base", bound=1, traces=True)
    with _spying_on_the_freeze(monkeypatch, run_module) as frozen:
        split = run("fault_sweep", "base", bound=1, traces=True, jobs=2)
    assert len(frozen) == 1 and frozen[0] > 0  # its pool forked from a frozen heap
    assert gc.get_freeze_count() == 0
    assert serial.kinds() == ["leak", "warn"] and len(serial.swept) > 2
    assert _sweep_signature(split) == _sweep_signature(serial)
    assert [f.trace for f in split.findings] == [f.trace for f in serial.findings]
    assert split.stats[0].jobs == 2 and serial.stats[0].jobs == 1


def test_a_fault_sweep_traces_only_this_process() -> None:
    with pytest.raises(ModelUsageError, match="coverage traces this process"):
        run("fault_sweep", "p5", coverage=True, jobs=2)


def test_the_report_on_two_processes_is_the_one_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import vfio_ref.report as report_module

    args: dict[str, Any] = {"scenarios": ["lifecycle", "open_vs_last_put"], "levels": ["p1", "p5"]}
    one = build_report(**args, jobs=1)
    with _spying_on_the_freeze(monkeypatch, report_module) as frozen:
        two = build_report(**args, jobs=2)
    assert len(frozen) == 1 and frozen[0] > 0  # its pool forked from a frozen heap
    assert gc.get_freeze_count() == 0
    assert one.to_json(findings=True) == two.to_json(findings=True)


def test_the_report_hands_out_its_biggest_cells_first() -> None:
    # The base's cells (a kworker in every scenario) first, then the concurrent scenarios'
    # and the fault sweep's, then the rest: measured at the default settings, the two biggest
    # cells (device_fd_vs_unbind and lookup_vs_last_put at the base, 30 s each of 144 s on
    # one core) were handed out last among the base's when only some scenarios were "big".
    from vfio_ref.report import _Job, _size_rank

    def job(name: str, level: str) -> _Job:
        return _Job(name, level, False, None, "auto", None, False, False)

    jobs = [job("lifecycle", "p5"), job("create_race", "p5"), job("fault_sweep", "p1"),
            job("lifecycle", "base"), job("device_fd_vs_unbind", "base"), job("mine.py:f", "p2")]
    order = [(j.scenario, j.level) for j in sorted(jobs, key=_size_rank)]
    assert order == [("device_fd_vs_unbind", "base"), ("lifecycle", "base"), ("create_race", "p5"),
                     ("fault_sweep", "p1"), ("mine.py:f", "p2"), ("lifecycle", "p5")]


# -- a Dask cluster, local to this machine ------------------------------------------------------

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Any:
    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        yield lc
    finally:
        lc.close()


def test_a_search_on_a_cluster_is_the_serial_one(cluster: Any) -> None:
    serial = run("create_race", "p1", bound=1, traces=False)
    remote = run("create_race", "p1", bound=1, traces=False, cluster=cluster.scheduler_address)
    assert [(f.ident, f.schedule, f.count) for f in remote.findings] == [
        (f.ident, f.schedule, f.count) for f in serial.findings
    ]
    assert remote.stats[0].schedules == serial.stats[0].schedules and remote.complete


def test_a_sample_on_a_cluster_is_the_serial_one(cluster: Any) -> None:
    serial = run("create_race", "base", random=True, seed=3, runs=30, traces=False)
    remote = run("create_race", "base", random=True, seed=3, runs=30, traces=False, cluster=cluster.scheduler_address)
    assert [(f.ident, f.schedule, f.count) for f in remote.findings] == [
        (f.ident, f.schedule, f.count) for f in serial.findings
    ]
    assert remote.stats[0].schedules == 30 and remote.stats[0].sampled and not remote.complete


def test_a_fault_sweep_on_a_cluster_is_the_serial_one(cluster: Any) -> None:
    serial = run("fault_sweep", "base", bound=1, traces=False)
    remote = run("fault_sweep", "base", bound=1, traces=False, cluster=cluster.scheduler_address)
    assert _sweep_signature(remote) == _sweep_signature(serial)


def test_the_report_on_a_cluster_is_the_local_one(cluster: Any) -> None:
    args: dict[str, Any] = {"scenarios": ["lifecycle", "create_race"], "levels": ["p2", "p5"]}
    assert build_report(**args, cluster=cluster.scheduler_address).to_json() == build_report(**args).to_json()


def _dies_once(marker: str, x: int) -> int:
    """Kills its worker the first time it runs (as a lost machine would)."""
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return x * x


def test_a_unit_whose_worker_dies_is_run_again_by_dask(cluster: Any, tmp_path: pathlib.Path) -> None:
    import functools

    from vfio_ref.cluster import map_in_order

    fn = functools.partial(_dies_once, str(tmp_path / "marker"))
    assert map_in_order(cluster.scheduler_address, fn, [3]) == [9]
