"""Bad input at the edges: each misuse gets one clear error naming what was wrong and what
is allowed (the CLI's exit codes are tested with the CLI)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from vfio_ref.explorer import ScheduleMismatch
from vfio_ref.kernel import KernelBug, ModelUsageError
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.errno import EBADF, ENOENT, IS_ERR, PTR_ERR
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


def test_closing_a_descriptor_twice_is_the_kernels_ebadf(opened: tuple[Platform, File, File]) -> None:
    p, g, _ = opened
    assert p.close(g) == 0
    assert p.close(g) == -EBADF  # close(2) of a descriptor that names nothing


@pytest.mark.parametrize("use", ["ioctl", "external_user_get", "unset_container", "dup"])
def test_using_a_closed_group_descriptor_is_the_kernels_ebadf(opened: tuple[Platform, File, File], use: str) -> None:
    p, g, _ = opened
    p.close(g)
    calls: dict[str, Callable[[], object]] = {
        "ioctl": lambda: p.ioctl(g, "VFIO_GROUP_GET_STATUS"),
        "external_user_get": lambda: p.external_user_get(g),  # KVM's fdget fails
        "unset_container": lambda: p.unset_container(g),
        "dup": lambda: p.dup(g),
    }
    ret = calls[use]()
    assert ret == -EBADF or (IS_ERR(ret) and PTR_ERR(ret) == -EBADF)


def test_a_released_struct_file_says_which_file_and_why(opened: tuple[Platform, File, File]) -> None:
    p, g, _ = opened
    p.close(g)
    text = error_of(lambda: g.private_data)  # the struct file itself is gone
    assert g.name in text and re.search(CLOSED, text)
    assert "must not be used after its last fput" in text


def test_a_closed_handle_whose_descriptor_now_names_another_file_is_refused(
    opened: tuple[Platform, File, File],
) -> None:
    p, g, _ = opened
    fd = p.fd(g)
    p.close(g)
    c2 = p.open_container()
    assert isinstance(c2, File) and p.fd(c2) == fd  # the lowest free descriptor again
    text = error_of(lambda: p.close(g))
    assert g.name in text and c2.name in text and f"descriptor {fd}" in text
    assert p.close(fd) == 0  # by number, as in C: it closes what the number names now


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



@pytest.mark.parametrize("level", ["base", "p5"])
def test_after_vfio_cleanup_the_container_node_is_gone_and_type1_cannot_load(level: str) -> None:
    p = _unloaded(level)
    assert p.open_container() == -ENOENT  # /dev/vfio/vfio went with the misc device
    text = error_of(p.register_type1)
    assert "vfio_cleanup" in text and "unloaded" in text
    assert p.open_group("d0") == -ENOENT


# --------------------------------------------------------------------------------------
# Misuse of the platform: an error naming the object and the rule, never a traceback from
# inside the package, never a false finding


@pytest.fixture
def platform() -> Platform:
    p = Platform(boot("p5"))
    p.add_group("g0")
    p.add_device("d0", "g0")
    return p


def test_a_second_iommu_group_of_one_name_is_refused(platform: Platform) -> None:
    first = platform.groups["g0"]
    text = error_of(lambda: platform.add_group("g0"))
    assert text == "add_group('g0'): the platform already has an iommu group 'g0'"
    assert platform.groups["g0"] is first
    platform.teardown()
    assert platform.k.leaks() == []  # the first group was not overwritten into a leak


def test_a_second_device_of_one_name_is_the_kernels_eexist_and_no_leak(platform: Platform) -> None:
    first = platform.devices["d0"]
    text = error_of(lambda: platform.add_device("d0", "g0"))
    assert text == "could not add device d0: -EEXIST from the kernel"
    assert platform.devices["d0"] is first
    platform.teardown()
    assert platform.k.leaks() == [] and platform.k.warnings == []


def test_a_device_for_an_unknown_group_is_refused_before_it_is_added(platform: Platform) -> None:
    text = error_of(lambda: platform.add_device("d1", "nosuch"))
    assert text == "add_device('d1', 'nosuch'): no iommu group 'nosuch' on this platform (groups: g0)"
    assert "d1" not in platform.devices and [d.name for d in platform.pci.devices] == ["d0"]
    platform.teardown()
    assert platform.k.leaks() == []


def test_removing_an_unknown_device_names_the_devices_there_are(platform: Platform) -> None:
    text = error_of(lambda: platform.remove_device("nosuch"))
    assert text == "no device 'nosuch' on this platform (devices: d0)"


def test_putting_an_external_user_twice_is_refused(platform: Platform) -> None:
    assert platform.bind("d0") == 0
    g, _ = platform.use_group("d0")
    ext = platform.external_user_get(g)
    assert not IS_ERR(ext)
    platform.external_user_put(ext)
    text = error_of(lambda: platform.external_user_put(ext))
    assert "not an external user KVM holds" in text and "each is put once" in text
    platform.teardown()
    assert platform.k.leaks() == [] and platform.k.warnings == []


def test_closing_the_errno_a_failed_open_returned_is_the_kernels_ebadf(platform: Platform) -> None:
    ret = platform.open_group("d0")  # no vfio driver bound: no /dev/vfio node
    assert ret == -ENOENT
    assert platform.close(ret) == -EBADF  # close(-2), as a C program would call it


@pytest.mark.parametrize("devt", ["x", None, 1.5, True])
def test_a_dev_t_that_is_not_an_int_is_refused(platform: Platform, devt: object) -> None:
    text = error_of(lambda: platform.open_devt(devt))  # type: ignore[arg-type]
    assert text.startswith(f"open_devt({devt!r}): a dev_t is an int")


@pytest.mark.parametrize("handle", ["g0", None, 2.0])
def test_a_handle_that_is_neither_a_file_nor_a_descriptor_is_refused(platform: Platform, handle: object) -> None:
    text = error_of(lambda: platform.close(handle))  # type: ignore[arg-type]
    assert text == f"{handle!r} is not a file or a descriptor of this process"


def test_a_kernel_bug_reaching_a_platform_call_is_recorded_and_teardown_is_refused() -> None:
    p = Platform(boot("p5"))
    p.add_group("g0")
    p.add_device("d0", "g0")
    p.add_device("d1", "g0")
    assert p.bind("d0") == 0
    p.use_group("d0")
    with pytest.raises(KernelBug) as bug:
        p.bind("d1", "e1000e")  # BUG_ON in the iommu group notifier
    assert p.k.faults == [bug.value] and p.k.oopsed
    text = error_of(p.teardown)
    assert text.startswith("teardown() after the kernel oopsed (kernel BUG in vfio_iommu_group_notifier")


def test_the_new_user_space_calls_name_what_they_expect(platform: Platform) -> None:
    assert platform.bind("d0") == 0
    g, _ = platform.use_group("d0")
    assert "takes a device name" in error_of(lambda: platform.open_device(g, 3))  # type: ignore[arg-type]
    assert "takes an int" in error_of(lambda: platform.ioctl(g, "VFIO_GROUP_SET_CONTAINER", "c"))
    assert "expected the eventfd" in error_of(lambda: platform.wait_request(None))  # type: ignore[arg-type]
    assert "expected the vfio_device" in error_of(lambda: platform.device_put(None))  # type: ignore[arg-type]
    text = error_of(lambda: platform.set_kvm(object(), None))
    assert "only on a group it holds as an external user" in text
    assert platform.request_eventfd(g) == -25  # a group fd has no VFIO_DEVICE_SET_IRQS: -ENOTTY
    text = error_of(lambda: platform.register_group_notifier("d9"))
    assert text == "no device 'd9' on this platform (devices: d0)"
    platform.teardown()
    assert platform.k.leaks() == [] and platform.k.warnings == []


def test_kfree_of_an_object_the_slab_never_made_is_a_kasan_invalid_free() -> None:
    from vfio_ref.kernel import Kernel, kfree

    k = Kernel()
    with pytest.raises(KernelBug, match="invalid-free"):
        kfree(k, object())
