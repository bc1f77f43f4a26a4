"""Bad input at the edges: each misuse gets one clear error naming what was wrong and what
is allowed (the CLI's exit codes are tested with the CLI)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from vfio_ref.explorer import ScheduleMismatch
from vfio_ref.kernel import ModelUsageError
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.errno import EBADF
from vfio_ref.scenarios import SCENARIO_NAMES, fault_points, run, run_fault_sweep
from vfio_ref.vfio import LEVELS, boot
from vfio_ref.vfio.ablations import ABLATIONS
from vfio_ref.vfio.platform import Platform

from . import note_figure, ops


@pytest.fixture(autouse=True)
def count_misuse() -> Iterator[None]:
    yield
    note_figure("misuses tried")


def error_of(call: Callable[[], object], kind: type[BaseException] = ModelUsageError) -> str:
    with pytest.raises(kind) as e:
        call()
    text = str(e.value)
    assert "\n" not in text.strip(), f"one message, not a dump: {text!r}"
    return text


def names_all(text: str, allowed: list[str] | tuple[str, ...]) -> bool:
    return all(re.search(rf"\b{re.escape(a)}\b", text) for a in allowed)


# --------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "call",
    [
        lambda: boot("p6"),
        lambda: run("lifecycle", "p6"),
        lambda: run_fault_sweep("p6"),
        lambda: fault_points("p6"),
        lambda: ops.Run("p6"),
    ],
    ids=["boot", "run", "run_fault_sweep", "fault_points", "ops.Run"],
)
def test_an_unknown_level_is_named_with_the_levels_there_are(call: Callable[[], object]) -> None:
    text = error_of(call)
    assert text.startswith("unknown level 'p6'")
    assert names_all(text, LEVELS)


def test_an_unknown_scenario_is_named_with_the_scenarios_there_are() -> None:
    text = error_of(lambda: run("double_close", "p5"))
    assert text.startswith("unknown scenario 'double_close'")
    assert names_all(text, SCENARIO_NAMES)


@pytest.mark.parametrize(
    "call",
    [lambda: run("lifecycle", "p5", ablation="no_refcount"), lambda: boot("p5", ablation="no_refcount")],
    ids=["run", "boot"],
)
def test_an_unknown_ablation_is_named_with_the_ablations_there_are(call: Callable[[], object]) -> None:
    text = error_of(call)
    assert text.startswith("unknown ablation 'no_refcount'")
    assert names_all(text, sorted(ABLATIONS))


@pytest.mark.parametrize(
    ("ablation", "level"), [(a, lv) for a, abl in sorted(ABLATIONS.items()) for lv in LEVELS if lv not in abl.levels]
)
def test_an_ablation_at_a_level_it_does_not_apply_to_names_the_levels_it_does(ablation: str, level: str) -> None:
    text = error_of(lambda: run("lifecycle", level, ablation=ablation))
    assert text.startswith(f"ablation {ablation!r} does not apply to level {level!r}")
    assert names_all(text, ABLATIONS[ablation].levels)


def test_a_function_a_patch_removed_names_the_patch() -> None:
    v = boot("p5")
    text = error_of(lambda: v.vfio_group_get_from_minor(0))
    assert text == "vfio_group_get_from_minor() does not exist at level p5: patch p5 removed it"


def test_an_unknown_driver_or_device_is_named_with_the_ones_there_are() -> None:
    p = Platform(boot("p5"))
    p.add_group("g0")
    p.add_device("d0", "g0")
    text = error_of(lambda: p.bind("d0", "nvme"))
    assert text == "no driver 'nvme' (drivers: vfio-pci, e1000e, pci-stub)"
    text = error_of(lambda: p.bind("d9"))
    assert text == "no device 'd9' on this platform (devices: d0)"


def test_an_unknown_step_in_a_replayed_sequence_names_the_steps_there_are() -> None:
    text = error_of(lambda: ops.replay("p5", [("frobnicate", "d0")]), ValueError)
    assert text.startswith("unknown op in step ('frobnicate', 'd0')")
    assert names_all(text, ops.OPS)


# --------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ("x", "'x' is not 'CHOICE:THREAD' (two non-negative integers)"),
        ("3:1;4:0", "'3:1;4:0' is not 'CHOICE:THREAD'"),
        ("1:-1", "'1:-1' has a negative number"),
        ("1:1,1:0", "choice point 1 appears twice"),
    ],
)
def test_a_malformed_schedule_says_which_part_and_the_form_expected(schedule: str, says: str) -> None:
    text = error_of(lambda: run("open_vs_last_put", "p5", replay=schedule), ValueError)
    assert text.startswith(f"schedule {schedule!r}: ")
    assert says in text


def test_a_schedule_longer_than_the_scenario_says_how_many_choice_points_it_has() -> None:
    text = error_of(lambda: run("open_vs_last_put", "p5", replay="99999:1"), ScheduleMismatch)
    assert re.fullmatch(
        r"schedule does not fit: it deviates at choice point 99999 but the execution had only \d+ choice points", text
    )


def test_a_schedule_naming_a_thread_the_scenario_lacks_lists_the_runnable_ones() -> None:
    text = error_of(lambda: run("open_vs_last_put", "p5", replay="3:9"), ScheduleMismatch)
    assert "at choice point 3 thread 9" in text and "does not exist" in text
    assert "runnable: 1 (T1), 2 (T2)" in text


def test_a_schedule_for_a_single_threaded_scenario_does_not_fit() -> None:
    text = error_of(lambda: run("lifecycle", "p5", replay="3:1"), ScheduleMismatch)
    assert text == "schedule does not fit: it deviates at choice point 3 but the execution had only 0 choice points"


def test_an_unknown_exploration_mode_names_the_modes() -> None:
    text = error_of(lambda: run("lifecycle", "p5", mode="bfs"), ValueError)
    assert text == "explore mode 'bfs': expected 'dfs' or 'random'"


# --------------------------------------------------------------------------------------
# Files


@pytest.fixture
def opened() -> tuple[Platform, File, File]:
    p = Platform(boot("p5"))
    p.add_group("g0")
    p.add_device("d0", "g0")
    assert p.bind("d0") == 0
    g, c = p.use_group("d0")
    return p, g, c


CLOSED = r"which is (already )?closed"


def test_closing_a_file_twice_says_it_is_already_closed(opened: tuple[Platform, File, File]) -> None:
    p, g, _ = opened
    p.close(g)
    text = error_of(lambda: p.close(g))
    assert re.search(CLOSED, text) and "close each file exactly once" in text
    assert g.name in text


@pytest.mark.parametrize("use", ["ioctl", "external_user_get", "unset_container", "private_data"])
def test_using_a_closed_group_file_says_which_file_and_why(opened: tuple[Platform, File, File], use: str) -> None:
    p, g, _ = opened
    p.close(g)
    calls: dict[str, Callable[[], object]] = {
        "ioctl": lambda: p.ioctl(g, "VFIO_GROUP_GET_STATUS"),
        "external_user_get": lambda: p.external_user_get(g),
        "unset_container": lambda: p.unset_container(g),
        "private_data": lambda: g.private_data,
    }
    text = error_of(calls[use])
    assert g.name in text and re.search(CLOSED, text)
    assert "must not be used after its last fput" in text


def test_a_closed_container_fd_given_to_set_container_is_the_kernels_ebadf(opened: tuple[Platform, File, File]) -> None:
    p, g, c = opened
    assert p.unset_container(g) == 0
    p.close(c)
    assert p.set_container(g, c) == -EBADF  # fdget of a closed descriptor: the kernel's answer


# --------------------------------------------------------------------------------------
# A kernel whose vfio is unloaded


def _unloaded(level: str) -> Platform:
    p = Platform(boot(level))
    p.add_group("g0")
    p.add_device("d0", "g0")
    p.teardown()  # ends with vfio_cleanup()
    p.add_group("g0")
    p.add_device("d0", "g0")
    return p


@pytest.mark.parametrize("level", ["base", "p5"])
def test_binding_a_vfio_driver_after_vfio_cleanup_names_the_unloaded_module(level: str) -> None:
    p = _unloaded(level)
    text = error_of(lambda: p.bind("d0"))
    assert "vfio_cleanup" in text and "vfio_init" in text


@pytest.mark.parametrize("level", ["base", "p5"])
def test_a_second_vfio_cleanup_names_the_misuse(level: str) -> None:
    p = _unloaded(level)
    text = error_of(p.vfio.vfio_cleanup)
    assert "vfio_cleanup" in text and "already" in text
