"""atomic_t (include/linux/atomic.h): a C int with atomic read-modify-writes.

The kernel builds with -fno-strict-overflow, so int arithmetic wraps at 32 bits; atomic_t
has no saturation (that is what refcount_t adds).
"""

from __future__ import annotations

import pytest

from vfio_ref.kernel import Atomic, Kernel
from vfio_ref.kernel.atomic import INT_MAX, INT_MIN, s32


def test_read_set_inc_dec(k: Kernel) -> None:
    a = Atomic(k)
    assert a.atomic_read() == 0
    a.atomic_set(41)
    a.atomic_inc()
    assert a.atomic_read() == 42
    a.atomic_dec()
    a.atomic_dec()
    assert a.atomic_read() == 40
    assert a.atomic_add_return(5) == 45
    assert a.atomic_add_return(-50) == -5


def test_cmpxchg_stores_only_on_a_match_and_returns_what_it_found(k: Kernel) -> None:
    a = Atomic(k, 7)
    assert a.atomic_cmpxchg(7, 9) == 7  # matched: swapped
    assert a.atomic_read() == 9
    assert a.atomic_cmpxchg(7, 11) == 9  # no match: returns the current value, stores nothing
    assert a.atomic_read() == 9


def test_dec_and_test(k: Kernel) -> None:
    a = Atomic(k, 2)
    assert a.atomic_dec_and_test() is False
    assert a.atomic_dec_and_test() is True
    assert a.atomic_read() == 0
    assert a.atomic_dec_and_test() is False  # no refcount_t checks: 0 -> -1 silently
    assert a.atomic_read() == -1
    assert k.warnings == []


@pytest.mark.parametrize(
    ("start", "returned", "stored"),
    [
        (3, 2, 2),
        (1, 0, 0),
        (0, -1, 0),  # would go negative: returns old - 1 but does not store it
        (-5, -6, -5),
    ],
)
def test_dec_if_positive(k: Kernel, start: int, returned: int, stored: int) -> None:
    a = Atomic(k, start)
    assert a.atomic_dec_if_positive() == returned
    assert a.atomic_read() == stored


def test_dec_if_positive_at_int_min_wraps_like_the_c(k: Kernel) -> None:
    # INT_MIN - 1 wraps to INT_MAX, which is not negative, so the generic
    # atomic_dec_if_positive stores it.
    a = Atomic(k, INT_MIN)
    assert a.atomic_dec_if_positive() == INT_MAX
    assert a.atomic_read() == INT_MAX


def test_inc_not_zero(k: Kernel) -> None:
    a = Atomic(k, 0)
    assert a.atomic_inc_not_zero() is False
    assert a.atomic_read() == 0
    a.atomic_set(5)
    assert a.atomic_inc_not_zero() is True
    assert a.atomic_read() == 6
    a.atomic_set(-1)
    assert a.atomic_inc_not_zero() is True  # only zero is refused
    assert a.atomic_read() == 0


def test_values_wrap_at_32_bits(k: Kernel) -> None:
    a = Atomic(k, INT_MAX)
    a.atomic_inc()
    assert a.atomic_read() == INT_MIN
    a.atomic_dec()
    assert a.atomic_read() == INT_MAX
    assert a.atomic_add_return(2) == INT_MIN + 1
    a.atomic_set(0xFFFFFFFF)
    assert a.atomic_read() == -1
    assert Atomic(k, 2**32 + 5).atomic_read() == 5
    assert a.atomic_cmpxchg(-1, 2**31) == -1
    assert a.atomic_read() == INT_MIN


def test_s32() -> None:
    assert s32(0) == 0
    assert s32(INT_MAX + 1) == INT_MIN
    assert s32(INT_MIN - 1) == INT_MAX
    assert s32(-1) == -1
    assert s32(2**40 + 3) == 3


def test_concurrent_increments_are_not_lost(k: Kernel) -> None:
    a = Atomic(k)
    n = 5000

    def inc() -> None:
        for _ in range(n):
            a.atomic_inc()
            a.atomic_add_return(1)

    assert k.run_threads(inc, inc, inc, inc) == []
    assert a.atomic_read() == 4 * 2 * n

