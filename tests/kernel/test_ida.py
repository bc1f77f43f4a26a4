"""IDA (lib/idr.c, include/linux/idr.h as of 5.15/5.16), specified by the kernel's own tests.

The first tests re-express lib/test_ida.c (ida_check_alloc, _destroy, _leaf, _max, _conv, and
_bad_free adapted to 5.15, where a bad free WARNs) and the IDA parts of
tools/testing/radix-tree/idr-test.c (ida_simple_get_remove_test, ida_check_random, the
threaded leak test).  Then the model's own contracts: range arithmetic on C unsigned ints,
the BUG for a negative id, fault injection, the scheduling hook, and a brute-force
comparison for arbitrary ranges.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable

import pytest

from vfio_ref.kernel import Kernel, KernelBug, UseAfterFree
from vfio_ref.kernel.errno import ENOMEM, ENOSPC
from vfio_ref.kernel.ida import (
    IDA_BITMAP_BITS,
    INT_MAX,
    Ida,
    IdBitmap,
    ida_alloc,
    ida_alloc_max,
    ida_alloc_min,
    ida_alloc_range,
    ida_destroy,
    ida_free,
    ida_init,
    ida_is_empty,
    ida_simple_get,
    ida_simple_remove,
)
from vfio_ref.kernel.slab import poison

BITS_PER_LONG = 64
MINORMASK = (1 << 20) - 1
NOT_ALLOCATED = "ida_free called for id={} which is not allocated."


@pytest.fixture
def ida(k: Kernel) -> Ida:
    return Ida(k)


# -- lib/test_ida.c ---------------------------------------------------------------------


def test_ida_check_alloc(ida: Ida) -> None:
    for i in range(10000):
        assert ida.ida_alloc() == i
    ida.ida_free(20)
    ida.ida_free(21)
    got = [ida.ida_alloc() for _ in range(3)]
    assert got == [20, 21, 10000]  # freed ids are reused first, lowest first
    for i in range(5000):
        ida.ida_free(i)
    assert ida.ida_alloc_min(5000) == 10001  # lowest free at or above min, not below
    ida.ida_destroy()
    assert ida.ida_is_empty()


def test_ida_check_destroy(ida: Ida) -> None:
    assert ida.ida_is_empty()
    ida.ida_destroy()  # destroying an empty IDA is fine
    assert ida.ida_is_empty()
    for base in (0, 1, 1023, 1024, 12345678):
        assert ida.ida_alloc_min(base) == base
        assert not ida.ida_is_empty()
        ida.ida_destroy()
        assert ida.ida_is_empty()


@pytest.mark.parametrize("base", [0, 1024, 65536])
def test_ida_check_leaf(ida: Ida, base: int) -> None:
    for i in range(IDA_BITMAP_BITS):
        assert ida.ida_alloc_min(base) == base + i
    ida.ida_destroy()
    assert ida.ida_is_empty()
    assert ida.ida_alloc() == 0
    assert not ida.ida_is_empty()
    ida.ida_free(0)
    assert ida.ida_is_empty()


def test_ida_check_max(k: Kernel, ida: Ida) -> None:
    k.fault_inject.recording = False  # 131071 recorded fault points would only cost time
    j = 1
    while j <= 65536:
        base = (1 << 31) - j
        for i in range(j):
            assert ida.ida_alloc_min(base) == base + i
        assert list(ida)[-1] == INT_MAX
        assert ida.ida_alloc_min(base) == -ENOSPC  # nothing above INT_MAX, ever
        ida.ida_destroy()
        assert ida.ida_is_empty()
        j *= 2


def test_ida_check_conv(ida: Ida) -> None:
    for i in (0, IDA_BITMAP_BITS):
        assert ida.ida_alloc_min(i + 1) == i + 1
        assert ida.ida_alloc_min(i + BITS_PER_LONG) == i + BITS_PER_LONG
        ida.ida_free(i + 1)
        ida.ida_free(i + BITS_PER_LONG)
        assert ida.ida_is_empty()
    for n in (IDA_BITMAP_BITS * 2, IDA_BITMAP_BITS + BITS_PER_LONG - 4):
        for i in range(n):
            assert ida.ida_alloc() == i
        for i in reversed(range(n)):
            ida.ida_free(i)
        assert ida.ida_is_empty()


def test_ida_check_bad_free_warns_every_time_and_changes_nothing(k: Kernel, ida: Ida) -> None:
    # 6.7's test, on 5.15 semantics: each free of an id that is not allocated records one
    # plain WARN (not WARN_ONCE: every one prints) with the kernel's text, and the IDA is
    # left exactly as it was.  The first rounds free ids whose whole chunk was never
    # allocated: 5.15 oopses there, the model WARNs the same way.
    bad = [0, *(1 << i for i in range(31))]
    for held in (None, 3, 1023, (1 << 20) - 1):
        if held is not None:
            assert ida.ida_alloc_min(held) == held
        before = list(ida)
        for id in bad:
            if id in before:
                continue
            n = len(k.warnings)
            ida.ida_free(id)
            assert len(k.warnings) == n + 1
            w = k.warnings[-1]
            assert (w.function, w.message, w.macro, w.printed) == (
                "ida_free", NOT_ALLOCATED.format(id), "WARN", True
            )
            assert list(ida) == before
    assert len(k.warnings) == 4 * 32
    ida.ida_free(3)
    ida.ida_free(1023)
    ida.ida_free((1 << 20) - 1)
    assert ida.ida_is_empty()
    assert len(k.warnings) == 4 * 32  # the good frees did not warn


def test_double_free_warns_on_the_second_free_only(k: Kernel, only_warning: Callable[..., object]) -> None:
    ida = Ida(k)
    assert ida.ida_alloc() == 0
    assert ida.ida_alloc() == 1
    ida.ida_free(0)
    assert k.warnings == []
    ida.ida_free(0)
    only_warning(k, "ida_free", NOT_ALLOCATED.format(0))
    assert list(ida) == [1]


# -- tools/testing/radix-tree/idr-test.c ------------------------------------------------


def test_ida_simple_get_remove(ida: Ida) -> None:
    for i in range(10000):
        assert ida.ida_simple_get(0, 20000) == i
    assert ida.ida_simple_get(5, 30) < 0  # [5, 29] all taken
    for i in range(10000):
        ida.ida_simple_remove(i)
    assert ida.ida_is_empty()


def test_ida_simple_get_end_is_exclusive_and_zero_means_unlimited(ida: Ida) -> None:
    assert ida.ida_simple_get(7, 8) == 7
    assert ida.ida_simple_get(7, 8) == -ENOSPC
    assert ida.ida_simple_get(INT_MAX, 0) == INT_MAX
    assert ida.ida_simple_get(INT_MAX, 0) == -ENOSPC


def test_ida_check_random(ida: Ida) -> None:
    # Seeded and bounded (the kernel's runs for 10 s): flip random bits of a 2048-bit
    # model; a clear bit is freed, a set one must come back as exactly that id.
    rng = random.Random(0x1DA)
    for _round in range(3):
        model = [False] * 2048
        for _ in range(20000):
            bit = rng.getrandbits(11)
            if model[bit]:
                model[bit] = False
                ida.ida_free(bit)
            else:
                model[bit] = True
                assert ida.ida_alloc_min(bit) == bit
        assert list(ida) == [i for i, b in enumerate(model) if b]
        ida.ida_destroy()
        assert ida.ida_is_empty()


def test_threads_hammering_one_id_never_share_it_and_leave_the_ida_empty() -> None:
    # idr-test.c's ida_leak_fn: many threads alloc_range(128, 128) + free(128) on one IDA.
    # The IDA locks itself, so at most one thread holds 128 at any time, no free WARNs,
    # and it ends empty.  A tiny switch interval makes unlocked interleavings likely.
    k = Kernel(hang_timeout=5.0)
    k.fault_inject.recording = False
    ida = Ida(k)
    check = threading.Lock()
    holder: list[str | None] = [None]
    shared: list[str] = []
    got = [0]

    def worker(name: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(1500):
                if ida.ida_alloc_range(128, 128) != 128:
                    continue
                with check:
                    if holder[0] is not None:
                        shared.append(f"{name} and {holder[0]}")
                    holder[0] = name
                    got[0] += 1
                with check:
                    holder[0] = None
                ida.ida_free(128)

        return run

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        k.run_threads(*(worker(f"T{i}") for i in range(8)))
    finally:
        sys.setswitchinterval(old)
    assert k.smp
    assert shared == []
    assert k.warnings == []
    assert got[0] > 0
    assert ida.ida_is_empty()


# -- range arithmetic: C unsigned ints ----------------------------------------------------


def test_min_that_is_negative_as_an_int_gives_enospc(ida: Ida) -> None:
    assert ida.ida_alloc_range(-1, 10) == -ENOSPC
    assert ida.ida_alloc_range(1 << 31, 1 << 31) == -ENOSPC  # (int)0x80000000 < 0
    assert ida.ida_alloc_min(-5) == -ENOSPC
    assert ida.ida_is_empty()


def test_max_above_int_max_is_clamped_to_int_max(ida: Ida) -> None:
    assert ida.ida_alloc_range(INT_MAX, -1) == INT_MAX  # ~0 as the max
    assert ida.ida_alloc_range(INT_MAX, 0xFFFFFFFF) == -ENOSPC
    assert ida.ida_alloc_max(-1) == 0  # "up to ~0" is "up to INT_MAX"


def test_empty_or_exhausted_ranges_give_enospc(ida: Ida) -> None:
    assert ida.ida_alloc_range(10, 9) == -ENOSPC
    assert ida.ida_alloc_range(5, 5) == 5
    assert ida.ida_alloc_range(5, 5) == -ENOSPC
    assert ida.ida_alloc_range(4, 5) == 4
    assert ida.ida_alloc_range(4, 5) == -ENOSPC
    assert ida.ida_alloc_max(3) == 0
    assert list(ida) == [0, 4, 5]


def test_free_of_a_negative_id_is_a_bug(k: Kernel, ida: Ida) -> None:
    assert ida.ida_alloc() == 0
    for bad in (-1, 1 << 31, 0xFFFFFFFF):  # all negative as a C int
        with pytest.raises(KernelBug, match=r"kernel BUG in ida_free: BUG_ON\(\(int\)id < 0\)"):
            ida.ida_free(bad)
    assert list(ida) == [0]
    assert k.warnings == []


def test_the_top_of_the_vfio_minor_range(k: Kernel) -> None:
    # vfio (5.16) allocates group minors with ida_alloc_max(MINORMASK): every minor up to
    # MINORMASK can be handed out, none above it; a released minor is the next one handed
    # out.  (benchmarks/bench_ida.py fills all 2**20 of them.)
    ida = Ida(k)
    lo = MINORMASK - 1100  # across the last 1024-id chunk of the minor space
    for i in range(lo, MINORMASK + 1):
        assert ida.ida_alloc_range(lo, MINORMASK) == i
    assert ida.ida_alloc_range(lo, MINORMASK) == -ENOSPC
    assert ida.ida_alloc_min(lo) == MINORMASK + 1  # the first id of the next 2**20 block
    ida.ida_free(MINORMASK + 1)
    ida.ida_free(MINORMASK - 3)
    assert ida.ida_alloc_range(lo, MINORMASK) == MINORMASK - 3
    assert ida.ida_alloc_max(MINORMASK) == 0


# -- arbitrary ranges against a brute-force model -------------------------------------------


def test_arbitrary_ranges_match_a_brute_force_model(k: Kernel) -> None:
    # Dense runs sit across the bitmap tree's boundaries (1024-id leaves, 2**20-id nodes,
    # the top of the id space); random ranges start in and around them.
    k.fault_inject.recording = False
    ida = Ida(k)
    used: set[int] = set()
    held: list[int] = []

    def model_alloc(lo: int, hi: int) -> int:
        lo &= 0xFFFFFFFF
        hi &= 0xFFFFFFFF
        if lo > INT_MAX:
            return -ENOSPC
        hi = min(hi, INT_MAX)
        x = lo
        while x in used:
            x += 1
        if x > hi:
            return -ENOSPC
        used.add(x)
        held.append(x)
        return x

    for lo, n in ((1000, 2200), ((1 << 20) - 1500, 1600), (INT_MAX - 2100, 2101), (5 << 20, 1024)):
        for _ in range(n):
            assert ida.ida_alloc_range(lo, INT_MAX) == model_alloc(lo, INT_MAX)
    anchors = [0, 1, 1023, 1024, 1025, 2048, 3071, 3200, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
               5 << 20, INT_MAX - 2200, INT_MAX - 1, INT_MAX, 1 << 31, 0xFFFFFFFF, -1]
    rng = random.Random(20211001)
    for step in range(3000):
        if held and rng.random() < 0.4:
            i = rng.randrange(len(held))
            held[i], held[-1] = held[-1], held[i]
            x = held.pop()
            used.discard(x)
            ida.ida_free(x)
            continue
        lo = rng.choice(anchors) + rng.randint(-3, 3)
        r = rng.random()
        if r < 0.3:
            hi = 0xFFFFFFFF
        elif r < 0.5:
            hi = lo + rng.randint(-2, 2)
        else:
            hi = rng.choice(anchors) + rng.randint(-3, 3)
        want = model_alloc(lo, hi)
        assert ida.ida_alloc_range(lo, hi) == want, (step, lo, hi)
    assert list(ida) == sorted(used)
    assert k.warnings == []


def test_a_full_node_of_2_20_ids_is_skipped_until_an_id_in_it_is_freed() -> None:
    # The bitmap tree's top summary.  Filling a node through the API takes 2**20
    # allocations; here its 1024 leaves are written full at once and the real summary
    # update runs for each, as when a leaf fills.
    b = IdBitmap()
    node = 1 << 20
    for li in range(node >> 10, (2 * node) >> 10):
        b.leaves[li] = (1 << 1024) - 1
        b._leaf_filled(li)
    assert b.top == 0b10
    for i in range(1024):  # and the last leaf below that node, through alloc
        assert b.alloc(node - 1024, INT_MAX) == node - 1024 + i
    assert b.first_free(node - 1024) == 2 * node  # skips the full node
    assert b.alloc(node - 1024, 2 * node - 1) == -1
    assert b.clear(node + 7)
    assert b.top == 0
    assert not b.clear(node + 7)
    assert b.first_free(node - 1024) == node + 7
    assert b.alloc(node - 1024, node + 6) == -1
    assert b.alloc(node - 1024, node + 7) == node + 7
    assert b.top == 0b10
    assert b.first_free(0) == 0
    assert b.count() == node + 1024


# -- fault injection --------------------------------------------------------------------


def test_an_injected_failure_gives_enomem_and_allocates_nothing(k: Kernel, ida: Ida) -> None:
    k.fault_inject.fail("ida_alloc@test_an_injected_failure_gives_enomem_and_allocates_nothing")
    assert ida.ida_alloc() == -ENOMEM
    assert ida.ida_alloc_max(MINORMASK) == -ENOMEM
    assert ida.ida_is_empty()
    assert [p.name for p in k.fault_inject.injected] == [
        "ida_alloc@test_an_injected_failure_gives_enomem_and_allocates_nothing"
    ] * 2


def test_the_fault_point_is_named_after_the_calling_kernel_function(k: Kernel, ida: Ida) -> None:
    def vfio_group_alloc() -> int:
        return ida.ida_alloc_max(MINORMASK)

    k.fault_inject.fail("ida_alloc@vfio_group_alloc", nth=2)
    assert vfio_group_alloc() == 0
    assert vfio_group_alloc() == -ENOMEM
    assert vfio_group_alloc() == 1
    assert [(p.name, p.injected) for p in k.fault_inject.points] == [
        ("ida_alloc@vfio_group_alloc", False),
        ("ida_alloc@vfio_group_alloc", True),
        ("ida_alloc@vfio_group_alloc", False),
    ]


def test_a_full_range_stays_enospc_when_a_failure_is_injected(k: Kernel, ida: Ida) -> None:
    assert ida.ida_alloc_range(9, 9) == 9
    k.fault_inject.fail_nth(2)
    assert ida.ida_alloc_range(9, 9) == -ENOSPC  # nothing to allocate, so nothing to fail
    assert ida.ida_alloc_range(-1, 9) == -ENOSPC  # rejected before any allocation attempt
    assert len(k.fault_inject.points) == 2


# -- scheduling hook, ordering, memory --------------------------------------------------------


class RecordingSched:
    """A stand-in for the explorer's scheduler: records each point with what the IDA held."""

    def __init__(self) -> None:
        self.step_no = 0
        self.seen: list[tuple[str, list[int]]] = []

    def point(
        self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = ""
    ) -> None:
        self.step_no += 1
        self.seen.append((op, list(obj) if isinstance(obj, Ida) else []))

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        raise NotImplementedError


def test_every_operation_is_a_scheduling_point_taken_before_it_acts() -> None:
    sched = RecordingSched()
    k = Kernel(sched=sched)
    ida = Ida(k)
    assert ida.ida_alloc() == 0
    assert ida.ida_alloc_min(5) == 5
    assert ida.ida_simple_get(0, 0) == 1
    ida.ida_free(5)
    assert not ida.ida_is_empty()
    ida.ida_destroy()
    assert sched.seen == [
        ("ida_alloc", []),
        ("ida_alloc", [0]),
        ("ida_alloc", [0, 5]),
        ("ida_free", [0, 1, 5]),
        ("ida_is_empty", [0, 1]),
        ("ida_destroy", [0, 1]),
    ]


def test_under_the_explorer_each_operation_is_ordered_after_the_previous_one() -> None:
    # The IDA's internal lock: what a task did before its ida_free happens-before whatever
    # the next allocating task does after its ida_alloc.
    k = Kernel(sched=RecordingSched())
    hb = k.hb
    assert hb is not None
    ida = Ida(k)
    a, b = k.new_task("A"), k.new_task("B")
    with k.as_task(a):
        assert ida.ida_alloc() == 0
        a_before_free = hb.clock(a)[a.tid]
        ida.ida_free(0)
    with k.as_task(b):
        assert hb.clock(b).get(a.tid, 0) < a_before_free
        assert ida.ida_alloc() == 0
        assert hb.clock(b).get(a.tid, 0) >= a_before_free


def test_an_ida_embedded_in_freed_memory_is_poisoned_with_it(k: Kernel, ida: Ida) -> None:
    poison(ida, None)
    with pytest.raises(UseAfterFree):
        ida.ida_alloc()


# -- names ------------------------------------------------------------------------------------


def test_kernel_names_short_aliases_and_module_functions_agree(k: Kernel) -> None:
    ida = ida_init(k)
    assert ida_alloc(ida) == 0
    assert ida_alloc_min(ida, 10) == 10
    assert ida_alloc_max(ida, 5) == 1
    assert ida_alloc_range(ida, 3, 4) == 3
    assert ida_simple_get(ida, 0, 0) == 2
    assert ida.alloc() == 4
    assert ida.alloc_min(10) == 11
    assert ida.alloc_max(100) == 5
    assert ida.alloc_range(20, 30) == 20
    ida_free(ida, 0)
    ida.free(1)
    ida_simple_remove(ida, 2)
    assert list(ida) == [3, 4, 5, 10, 11, 20]
    assert not ida_is_empty(ida) and not ida.is_empty()
    ida_destroy(ida)
    assert ida_is_empty(ida)
    ida.alloc()
    ida.destroy()
    assert ida.is_empty()
    assert k.warnings == []
