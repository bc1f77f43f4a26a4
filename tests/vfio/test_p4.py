"""Patch 4: the group's count is a refcount_t ``users``, and the last put takes
vfio.group_lock atomically with the decrement (refcount_dec_and_mutex_lock)."""

from __future__ import annotations

from typing import Any

import pytest

from vfio_ref.kernel import Refcount, UseAfterFree
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.slab import kzalloc

from .machine import A, machine
from .recorder import recorded_machine


def test_users_is_a_refcount_t_and_the_kref_is_gone() -> None:
    m = machine("p4", review_fixes=True)
    assert m.p.bind(A) == 0
    f = m.p.open_group(A)
    assert isinstance(f, File)
    group = f.private_data
    assert isinstance(group.users, Refcount)
    assert not hasattr(group, "kref")
    assert group.users.refcount_read() == 2  # the device and the file
    m.p.close(f)
    m.p.teardown()
    assert m.warnings() == [] and m.k.leaks() == []


def test_a_get_on_a_group_whose_users_reached_zero_warns_addition_on_zero() -> None:
    m = machine("p4", review_fixes=True)
    group = kzalloc(m.k, m.v.VfioGroup)  # users is 0, as after the last put
    assert group is not None and group.users.refcount_read() == 0
    m.v.vfio_group_get(group)
    assert m.warnings() == [("refcount_warn_saturate", "refcount_t: addition on 0; use-after-free.")]
    assert m.k.warnings[0].caller == "refcount_inc"
    assert "vfio_group_get" in m.k.warnings[0].backtrace
    from vfio_ref.kernel import REFCOUNT_SATURATED

    assert group.users.refcount_read() == REFCOUNT_SATURATED  # saturated, not 1


@pytest.mark.parametrize(("level", "counter"), [("p3", "kref"), ("p4", "users")])
def test_the_last_put_decrements_with_the_group_lock_held(level: str, counter: str) -> None:
    """The 1 -> 0 step happens under vfio.group_lock, so a lookup under the same lock can
    never find the group at zero (kref_put_mutex before, refcount_dec_and_mutex_lock now)."""
    state: dict[str, Any] = {}

    def probe(op: str, obj: Any) -> Any:
        rc = state.get("rc")
        if op == "refcount_dec_and_test" and obj is rc and rc.refs == 1:
            return ("final", state["v"].vfio.group_lock.is_locked())
        return None

    v, p, rec = recorded_machine(level, probe=probe, review_fixes=True)
    state["v"] = v
    p.add_group("g0")
    p.add_device(A, "g0")
    assert p.bind(A) == 0
    group = v.vfio_group_get_from_dev(p.dev(A))
    assert group is not None
    state["rc"] = group.kref.refcount if counter == "kref" else group.users
    v.vfio_group_put(group)
    p.unbind(A)  # the device's put is the last
    finals = [e.extra for e in rec.events if e.extra is not None]
    assert finals == [("final", True)]
    # and no other decrement of this counter took the lock: only the last one does
    before_last = rec.index("refcount_dec_not_one", obj=state["rc"])
    assert rec.events[before_last].op == "refcount_dec_not_one"


def test_as_posted_patch_4_still_frees_the_group_it_creates() -> None:
    m = machine("p4")
    with pytest.raises(UseAfterFree, match=r"vfio_group_get_device: read of group->device_lock"):
        m.p.bind(A)
