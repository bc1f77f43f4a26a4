"""WARN_ON, WARN_ON_ONCE, WARN, WARN_ONCE, dev_WARN and BUG_ON.

A WARN is recorded and execution goes on; a BUG raises KernelBug.  To see what the
records say about model code (function, site, backtrace), a few functions are compiled
here as if they lived in the model's vfio package: the substrate recognises model code by
its file.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import vfio_ref
from vfio_ref.kernel import Kernel, KernelBug
from vfio_ref.kernel.bug import BUG, BUG_ON, WARN, WARN_ON, WARN_ON_ONCE, WARN_ONCE, deref, dev_WARN

_FAKE_FILE = os.path.join(os.path.dirname(vfio_ref.__file__), "vfio", "_test_fake_level.py")
_FAKE_SRC = '''
def vfio_group_nb_verify(k, bound):
    return WARN_ON(k, bound, "group->container")

def vfio_iommu_group_notifier(k, bound):
    ret = vfio_group_nb_verify(k, bound)
    return ret

def vfio_group_release(k, busy):
    WARN_ON_ONCE(k, busy, "!list_empty(&group->device_list)")

def vfio_group_put(k, busy):
    vfio_group_release(k, busy)

def vfio_dev_viable(k, bound):
    BUG_ON(k, bound, "drv && vfio_dev_driver_allowed(dev, drv)")

def vfio_device_fops_release(k, dev_set):
    return deref(k, dev_set, "device->dev_set->lock")
'''
model: dict[str, Any] = {"WARN_ON": WARN_ON, "WARN_ON_ONCE": WARN_ON_ONCE, "BUG_ON": BUG_ON, "deref": deref}
exec(compile(_FAKE_SRC, _FAKE_FILE, "exec"), model)
SITE_PREFIX = "vfio_ref/vfio/_test_fake_level.py:"


def test_warn_on_false_records_nothing_and_returns_false(k: Kernel) -> None:
    assert model["vfio_iommu_group_notifier"](k, False) is False
    assert k.warnings == [] and k.log == []


def test_warn_on_returns_the_condition_and_records_the_warning(k: Kernel, only_warning) -> None:
    with k.as_task(k.new_task("T1")):
        assert model["vfio_iommu_group_notifier"](k, object()) is True
    ev = only_warning(k, "vfio_group_nb_verify", "group->container")
    assert ev.macro == "WARN_ON"
    assert ev.thread == "T1"
    assert ev.site == SITE_PREFIX + "3"
    assert ev.backtrace == ("vfio_group_nb_verify", "vfio_iommu_group_notifier")
    assert ev.caller == "vfio_iommu_group_notifier"
    assert ev.printed
    assert str(ev) == (
        "WARNING in vfio_group_nb_verify: group->container "
        "[WARN_ON; vfio_group_nb_verify <- vfio_iommu_group_notifier; T1]"
    )
    assert k.log == ["WARNING: vfio_group_nb_verify: group->container"]


def test_warn_on_fires_every_time(k: Kernel) -> None:
    for _ in range(3):
        model["vfio_iommu_group_notifier"](k, True)
    assert [w.printed for w in k.warnings] == [True, True, True]
    assert len(k.log) == 3


def test_warn_on_once_prints_once_and_records_every_time(k: Kernel) -> None:
    for _ in range(3):
        model["vfio_group_put"](k, True)
    assert [(w.function, w.message, w.macro, w.printed) for w in k.warnings] == [
        ("vfio_group_release", "!list_empty(&group->device_list)", "WARN_ON_ONCE", True),
        ("vfio_group_release", "!list_empty(&group->device_list)", "WARN_ON_ONCE", False),
        ("vfio_group_release", "!list_empty(&group->device_list)", "WARN_ON_ONCE", False),
    ]
    assert len(k.log) == 1
    k.clear_warn_once()
    model["vfio_group_put"](k, True)
    assert k.warnings[-1].printed
    assert len(k.log) == 2


def test_warn_once_state_is_per_kernel() -> None:
    k1, k2 = Kernel(), Kernel()
    model["vfio_group_put"](k1, True)
    model["vfio_group_put"](k2, True)
    assert k1.warnings[0].printed and k2.warnings[0].printed


def vfio_group_get_external_user(k: Kernel, cond: bool) -> bool:
    return WARN(k, cond, "external user on a dying group")


def vfio_register_group_dev(k: Kernel, cond: bool) -> bool:
    return WARN_ONCE(k, cond, "no iommu group")


def test_warn_and_warn_once_from_outside_the_model(k: Kernel) -> None:
    assert vfio_group_get_external_user(k, False) is False
    assert vfio_group_get_external_user(k, True) is True
    assert vfio_register_group_dev(k, True) is True
    assert vfio_register_group_dev(k, True) is True
    got = [(w.function, w.message, w.macro, w.printed) for w in k.warnings]
    assert got == [
        ("vfio_group_get_external_user", "external user on a dying group", "WARN", True),
        ("vfio_register_group_dev", "no iommu group", "WARN_ONCE", True),
        ("vfio_register_group_dev", "no iommu group", "WARN_ONCE", False),
    ]
    assert k.warnings[0].site.startswith("test_bug.py:")


class _Dev:
    init_name = "0000:00:1f.0"


def vfio_group_nb_add_dev(k: Kernel) -> None:
    dev_WARN(k, _Dev(), "Device added to live group 3!")


def test_dev_warn_prefixes_the_device_name(k: Kernel, only_warning) -> None:
    vfio_group_nb_add_dev(k)
    ev = only_warning(k, "vfio_group_nb_add_dev", "Device added to live group 3!")
    assert ev.macro == "dev_WARN"
    assert "0000:00:1f.0: Device added to live group 3!" in k.log


def test_bug_on_false_does_nothing(k: Kernel) -> None:
    model["vfio_dev_viable"](k, False)
    assert k.log == []


def test_bug_on_raises_kernel_bug_naming_the_condition(k: Kernel) -> None:
    with pytest.raises(KernelBug) as ei:
        model["vfio_dev_viable"](k, True)
    e = ei.value
    assert e.kind == "bug"
    assert e.message == (
        "kernel BUG in vfio_dev_viable: BUG_ON(drv && vfio_dev_driver_allowed(dev, drv)) "
        f"[{SITE_PREFIX}16]"
    )
    assert e.backtrace[0] == "vfio_dev_viable"
    assert e.thread == "MainThread"
    assert k.log == [e.message]
    assert k.warnings == []  # a BUG is not a WARN


def test_bug_raises_unconditionally(k: Kernel) -> None:
    def vfio_group_unbind() -> None:
        BUG(k, "unreachable")

    with pytest.raises(KernelBug, match=r"^kernel BUG in vfio_group_unbind: unreachable") as ei:
        vfio_group_unbind()
    assert k.log == [ei.value.message]


def ida_free(k: Kernel, id: int) -> None:
    WARN_ONCE(k, True, f"ida_free called for id={id} which is not allocated.")


def test_warn_once_is_once_per_site_even_with_a_formatted_message(k: Kernel) -> None:
    ida_free(k, 3)
    ida_free(k, 4)  # same site, another text: the kernel prints nothing the second time
    assert [(w.message, w.printed) for w in k.warnings] == [
        ("ida_free called for id=3 which is not allocated.", True),
        ("ida_free called for id=4 which is not allocated.", False),
    ]
    k.clear_warn_once()
    ida_free(k, 5)
    assert k.warnings[-1].printed


def vfio_group_fops_release(k: Kernel, a: bool, b: bool) -> None:
    WARN_ON_ONCE(k, a, "!group")
    WARN_ON_ONCE(k, b, "!group")


def test_two_once_sites_with_one_text_in_one_function_each_print_once(k: Kernel) -> None:
    vfio_group_fops_release(k, True, False)
    vfio_group_fops_release(k, False, True)
    vfio_group_fops_release(k, True, True)
    assert [w.printed for w in k.warnings] == [True, True, False, False]
    assert len({w.site for w in k.warnings}) == 2


def test_a_null_dereference_oopses_naming_the_expression(k: Kernel) -> None:
    assert model["vfio_device_fops_release"](k, "set") == "set"
    with pytest.raises(KernelBug) as e:
        model["vfio_device_fops_release"](k, None)
    assert e.value.message.startswith(
        "BUG: kernel NULL pointer dereference in vfio_device_fops_release: device->dev_set->lock ["
    )
    assert SITE_PREFIX in e.value.message
    assert k.warnings == []
