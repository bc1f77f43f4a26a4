"""IDR (lib/idr.c, include/linux/idr.h as of 5.15/5.16): the base vfio's minor -> group map.

Re-expresses the parts of tools/testing/radix-tree/idr-test.c that the model covers
(idr_checks, idr_null_test, idr_replace_test), then the model's own contracts: the
WARN_ON_ONCE for a negative start, fault injection, the scheduling hook, and the rule that
the caller serialises writers (unserialised writers are a data race under the explorer).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vfio_ref.kernel import Kernel, Mutex
from vfio_ref.kernel.errno import EINVAL, ENOENT, ENOMEM, ENOSPC, ERR_PTR, IS_ERR, PTR_ERR
from vfio_ref.kernel.ida import INT_MAX
from vfio_ref.kernel.idr import (
    Idr,
    idr_alloc,
    idr_destroy,
    idr_find,
    idr_init,
    idr_is_empty,
    idr_remove,
    idr_replace,
)

MINORMASK = (1 << 20) - 1
RADIX_TREE_MAP_SIZE = 64


class Item:
    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"Item({self.index})"


DUMMY = Item(-16)


@pytest.fixture
def idr(k: Kernel) -> Idr:
    return Idr(k)


# -- idr-test.c ---------------------------------------------------------------------------


def test_idr_checks_lowest_free_and_harmless_removal_of_absent_ids(k: Kernel, idr: Idr) -> None:
    items = [Item(i) for i in range(10000)]
    for it in items:
        assert idr.idr_alloc(it, 0, 20000) == it.index
    assert idr.idr_alloc(DUMMY, 5, 30) == -ENOSPC  # every id in [5, 30) is taken
    for it in items[:5000]:
        assert idr.idr_find(it.index) is it
        assert idr.idr_remove(it.index) is it
    assert idr.idr_remove(3) is None  # already removed: no warning
    assert idr.idr_find(3) is None
    assert idr.idr_find(5000) is items[5000]
    idr.idr_destroy()
    assert idr.idr_is_empty()
    assert idr.idr_remove(3) is None
    assert idr.idr_remove(0) is None

    assert idr.idr_alloc(DUMMY, 0, 0) == 0
    assert idr.idr_remove(1) is None
    for i in range(1, RADIX_TREE_MAP_SIZE):
        assert idr.idr_alloc(DUMMY, 0, 0) == i
    assert idr.idr_remove(1 << 30) is None
    assert idr.idr_remove(-1) is None
    idr.idr_destroy()
    assert k.warnings == []


def test_idr_checks_near_int_max(idr: Idr) -> None:
    # end = i + 10 wraps to a negative int near INT_MAX, which means "up to INT_MAX"
    for i in range(INT_MAX - 3, INT_MAX + 1):
        assert idr.idr_alloc(Item(i), i, i + 10) == i
    i = INT_MAX + 1
    assert idr.idr_alloc(DUMMY, i - 2, i) == -ENOSPC  # end wraps to INT_MIN: up to INT_MAX
    assert idr.idr_alloc(DUMMY, i - 2, i + 10) == -ENOSPC
    assert list(idr) == [INT_MAX - 3, INT_MAX - 2, INT_MAX - 1, INT_MAX]
    idr.idr_destroy()
    idr.idr_destroy()
    assert idr.idr_is_empty()


def test_idr_checks_start_at_one(idr: Idr) -> None:
    for i in range(1, 10000):
        assert idr.idr_alloc(Item(i), 1, 20000) == i
    assert idr.idr_find(0) is None


def test_idr_null_test_null_pointers_hold_ids(idr: Idr) -> None:
    assert idr.idr_is_empty()
    assert idr.idr_alloc(None, 0, 0) == 0
    assert not idr.idr_is_empty()
    assert idr.idr_remove(0) is None
    assert idr.idr_is_empty()

    assert idr.idr_alloc(None, 0, 0) == 0
    idr.idr_destroy()
    assert idr.idr_is_empty()

    for i in range(10):
        assert idr.idr_alloc(None, 0, 0) == i
    assert idr.idr_replace(DUMMY, 3) is None
    assert idr.idr_replace(DUMMY, 4) is None
    assert idr.idr_replace(None, 4) is DUMMY
    assert idr.idr_replace(DUMMY, 11) is ERR_PTR(-ENOENT)
    assert idr.idr_remove(5) is None
    assert idr.idr_alloc(None, 0, 0) == 5
    idr.idr_remove(5)
    for i in range(9):
        idr.idr_remove(i)
        assert not idr.idr_is_empty()
    idr.idr_remove(8)
    assert not idr.idr_is_empty()
    idr.idr_remove(9)
    assert idr.idr_is_empty()

    assert idr.idr_alloc(None, 0, 0) == 0
    assert idr.idr_replace(DUMMY, 3) is ERR_PTR(-ENOENT)
    assert idr.idr_replace(DUMMY, 0) is None
    assert idr.idr_replace(None, 0) is DUMMY
    idr.idr_destroy()
    assert idr.idr_is_empty()

    for i in range(1, 10):
        assert idr.idr_alloc(None, 1, 0) == i
    idr.idr_destroy()
    assert idr.idr_is_empty()


def test_idr_replace_test(idr: Idr) -> None:
    old = Item(-1)
    assert idr.idr_alloc(old, 10, 11) == 10
    assert idr.idr_replace(idr, 10) is old
    assert idr.idr_find(10) is idr
    err = idr.idr_replace(DUMMY, 9)
    assert IS_ERR(err) and PTR_ERR(err) == -ENOENT
    assert idr.idr_find(9) is None  # a failed replace stores nothing
    assert list(idr) == [10]


# -- the model's contracts ----------------------------------------------------------------


def test_a_negative_start_warns_once_and_gives_einval(k: Kernel, idr: Idr) -> None:
    assert idr.idr_alloc(DUMMY, -1, 10) == -EINVAL
    assert [(w.function, w.message, w.macro, w.printed) for w in k.warnings] == [
        ("idr_alloc", "start < 0", "WARN_ON_ONCE", True)
    ]
    assert idr.idr_alloc(DUMMY, 1 << 31, 0) == -EINVAL  # negative as a C int
    assert len(k.warnings) == 2 and k.warnings[1].printed is False  # recorded, not printed
    assert idr.idr_is_empty()


def test_the_base_vfio_minor_range(idr: Idr) -> None:
    # The base allocates minors with idr_alloc(group, 0, MINORMASK + 1): MINORMASK is the
    # last minor, and nothing above it is ever handed out.
    for i in range(MINORMASK - 1, MINORMASK + 1):
        assert idr.idr_alloc(Item(i), MINORMASK - 1, MINORMASK + 1) == i
    assert idr.idr_alloc(DUMMY, MINORMASK - 1, MINORMASK + 1) == -ENOSPC
    assert idr.idr_alloc(DUMMY, 0, MINORMASK + 1) == 0


def test_end_before_start_gives_enospc(idr: Idr) -> None:
    assert idr.idr_alloc(DUMMY, 10, 10) == -ENOSPC
    assert idr.idr_alloc(DUMMY, 10, 5) == -ENOSPC
    assert idr.idr_is_empty()


def test_an_injected_failure_gives_enomem_and_stores_nothing(k: Kernel, idr: Idr) -> None:
    k.fault_inject.fail("idr_alloc@test_an_injected_failure_gives_enomem_and_stores_nothing")
    assert idr.idr_alloc(DUMMY, 0, MINORMASK + 1) == -ENOMEM
    assert idr.idr_is_empty()
    assert idr.idr_find(0) is None


def test_the_fault_point_is_named_after_the_calling_kernel_function(k: Kernel, idr: Idr) -> None:
    def vfio_create_group() -> int:
        return idr.idr_alloc(DUMMY, 0, MINORMASK + 1)

    k.fault_inject.fail("idr_alloc@vfio_create_group", nth=1)
    assert vfio_create_group() == -ENOMEM
    assert vfio_create_group() == 0
    assert [p.name for p in k.fault_inject.points] == ["idr_alloc@vfio_create_group"] * 2


class RecordingSched:
    """A stand-in for the explorer's scheduler: records each scheduling point."""

    def __init__(self) -> None:
        self.step_no = 0
        self.ops: list[str] = []

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        self.step_no += 1
        if isinstance(obj, Idr):
            self.ops.append(f"{op} {len(obj)}")  # how many ids were in use before it acted

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        raise NotImplementedError


def test_every_operation_is_a_scheduling_point_taken_before_it_acts() -> None:
    sched = RecordingSched()
    idr = Idr(Kernel(sched=sched))
    assert idr.idr_alloc(DUMMY, 0, 0) == 0
    assert idr.idr_find(0) is DUMMY
    assert idr.idr_replace(None, 0) is DUMMY
    assert idr.idr_remove(0) is None
    assert idr.idr_is_empty()
    idr.idr_destroy()
    assert sched.ops == [
        "idr_alloc 0", "idr_find 1", "idr_replace 1", "idr_remove 1", "idr_is_empty 0", "idr_destroy 0",
    ]


def test_unserialised_writers_are_a_data_race_under_the_explorer() -> None:
    k = Kernel(sched=RecordingSched())
    assert k.hb is not None
    idr = Idr(k)
    a, b = k.new_task("A"), k.new_task("B")
    with k.as_task(a):
        assert idr.idr_alloc(DUMMY, 0, 0) == 0
    with k.as_task(b):
        assert idr.idr_remove(0) is DUMMY
    [race] = k.hb.races
    assert race.location == "Idr.idr"
    assert race.first.startswith("write in idr_alloc [A]")
    assert race.second.startswith("write in idr_remove [B]")


def test_writers_serialised_by_a_lock_and_lockless_readers_do_not_race() -> None:
    # vfio.group_lock around every writer, as the base does; idr_find is an RCU reader.
    k = Kernel(sched=RecordingSched())
    assert k.hb is not None
    idr = Idr(k)
    group_lock = Mutex(k, "vfio.group_lock")
    a, b, c = k.new_task("A"), k.new_task("B"), k.new_task("C")
    with k.as_task(a):
        group_lock.mutex_lock()
        assert idr.idr_alloc(DUMMY, 0, 0) == 0
        group_lock.mutex_unlock()
    with k.as_task(c):
        assert idr.idr_find(0) is DUMMY
    with k.as_task(b):
        group_lock.mutex_lock()
        assert idr.idr_remove(0) is DUMMY
        group_lock.mutex_unlock()
    assert k.hb.races == []


def test_free_running_threads_serialised_by_a_mutex_share_one_idr() -> None:
    k = Kernel(hang_timeout=5.0)
    k.fault_inject.recording = False
    idr = Idr(k)
    lock = Mutex(k, "vfio.group_lock")
    seen: list[int] = []

    def worker() -> None:
        me = Item(0)
        for _ in range(300):
            lock.mutex_lock()
            id = idr.idr_alloc(me, 0, MINORMASK + 1)
            lock.mutex_unlock()
            seen.append(id)
            assert idr.idr_find(id) is me
            lock.mutex_lock()
            assert idr.idr_replace(me, id) is me
            assert idr.idr_remove(id) is me
            lock.mutex_unlock()

    assert k.run_threads(*(worker for _ in range(4))) == []
    assert k.smp
    assert len(seen) == 1200 and min(seen) == 0 and max(seen) < 4
    assert idr.idr_is_empty()
    assert k.warnings == []


def test_kernel_names_short_aliases_and_module_functions_agree(k: Kernel) -> None:
    idr = idr_init(k)
    x, y = Item(1), Item(2)
    assert idr_alloc(idr, x, 0, 0) == 0
    assert idr.alloc(y, 0, 0) == 1
    assert idr_find(idr, 0) is x and idr.find(1) is y
    assert idr_replace(idr, y, 0) is x and idr.replace(x, 1) is y
    assert idr_remove(idr, 0) is y and idr.remove(1) is x
    assert idr_is_empty(idr) and idr.is_empty()
    idr.alloc(x, 0, 0)
    idr_destroy(idr)
    assert idr.is_empty()
    idr.alloc(x, 0, 0)
    idr.destroy()
    assert len(idr) == 0
