"""refcount_t as in Linux 5.15/5.16 (include/linux/refcount.h, lib/refcount.c).

The first group re-states, in our own words, the refcount cases of the kernel's LKDTM
(drivers/misc/lkdtm/refcount.c) and the dmesg text the LKDTM selftests expect: every misuse
leaves the counter at REFCOUNT_SATURATED (or, for the *_not_zero forms on 0, untouched),
and fires the one WARN of refcount_warn_saturate for its case.  As the selftest runner does
(it writes clear_warn_once before each test), every case starts on a fresh kernel.

Then: WARN_ONCE per case, refcount_dec_not_one, refcount_dec_and_mutex_lock,
refcount_dec_and_lock, and a concurrency check in free-running mode.
"""

from __future__ import annotations

import pytest

from vfio_ref.kernel import Kernel, Mutex, Refcount, SpinLock
from vfio_ref.kernel.refcount import REFCOUNT_MAX, REFCOUNT_SATURATED

SATURATED_MSG = "refcount_t: saturated; leaking memory."
ADD_ON_ZERO_MSG = "refcount_t: addition on 0; use-after-free."
UNDERFLOW_MSG = "refcount_t: underflow; use-after-free."
DEC_LEAK_MSG = "refcount_t: decrement hit 0; leaking memory."


def test_constants_match_the_kernel() -> None:
    assert REFCOUNT_MAX == 0x7FFFFFFF
    # INT_MIN / 2: in the middle of the "bad" range, far from both zero and INT_MAX.
    assert REFCOUNT_SATURATED == -0x40000000
    # refcount_read() hands it out as unsigned int 0xC0000000.
    assert REFCOUNT_SATURATED & 0xFFFFFFFF == 0xC0000000


def test_normal_use_warns_nothing(k: Kernel) -> None:
    r = Refcount(k, 1)
    r.inc()
    r.add(3)
    assert r.read() == 5
    assert r.inc_not_zero() is True
    assert r.add_not_zero(2) is True
    r.dec()
    assert r.read() == 7
    assert r.sub_and_test(5) is False
    assert r.dec_and_test() is False
    assert r.dec_and_test() is True
    assert r.read() == 0
    r.set(9)
    assert r.read() == 9
    assert k.warnings == []


# --------------------------------------------------------------------------------------
# LKDTM: overflow


def test_lkdtm_REFCOUNT_INC_OVERFLOW(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_MAX - 1)
    r.dec()
    r.inc()  # back to MAX - 1: fine
    r.inc()  # MAX - 1 -> MAX: still fine, no WARN yet
    assert r.read() == REFCOUNT_MAX
    assert k.warnings == []
    r.inc()  # would wrap: saturate instead
    assert r.read() == REFCOUNT_SATURATED  # "Overflow detected: saturated"
    ev = only_warning(k, "refcount_warn_saturate", SATURATED_MSG)
    assert ev.caller == "refcount_inc"
    assert ev.macro == "WARN_ONCE" and ev.printed


def test_lkdtm_REFCOUNT_ADD_OVERFLOW(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_MAX - 1)
    for _ in range(4):
        r.dec()
    r.add(4)  # back to MAX - 1
    assert r.read() == REFCOUNT_MAX - 1
    assert k.warnings == []
    r.add(4)
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_add"


def test_lkdtm_REFCOUNT_INC_NOT_ZERO_OVERFLOW(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_MAX)
    assert r.inc_not_zero() is True  # the reference was taken (and leaked)
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_inc_not_zero"


def test_lkdtm_REFCOUNT_ADD_NOT_ZERO_OVERFLOW(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_MAX)
    assert r.add_not_zero(6) is True
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_add_not_zero"


# --------------------------------------------------------------------------------------
# LKDTM: reaching or passing zero


def test_lkdtm_REFCOUNT_DEC_ZERO(k: Kernel, only_warning) -> None:
    r = Refcount(k, 2)
    r.dec()
    assert r.read() == 1 and k.warnings == []
    r.dec()  # refcount_dec must never be the one that reaches zero
    assert r.read() == REFCOUNT_SATURATED  # "Zero detected: saturated"
    assert only_warning(k, "refcount_warn_saturate", DEC_LEAK_MSG).caller == "refcount_dec"


def test_lkdtm_REFCOUNT_DEC_NEGATIVE(k: Kernel, only_warning) -> None:
    r = Refcount(k, 0)
    r.dec()
    assert r.read() == REFCOUNT_SATURATED  # "Negative detected: saturated"
    # refcount_dec's only check is old <= 1, so going below zero is reported as DEC_LEAK.
    assert only_warning(k, "refcount_warn_saturate", DEC_LEAK_MSG).caller == "refcount_dec"


def test_lkdtm_REFCOUNT_DEC_AND_TEST_NEGATIVE(k: Kernel, only_warning) -> None:
    r = Refcount(k, 0)
    assert r.dec_and_test() is False
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG).caller == "refcount_dec_and_test"


def test_lkdtm_REFCOUNT_SUB_AND_TEST_NEGATIVE(k: Kernel, only_warning) -> None:
    r = Refcount(k, 3)
    assert r.sub_and_test(5) is False
    assert r.read() == REFCOUNT_SATURATED  # moved: not still at 3
    assert only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG).caller == "refcount_sub_and_test"


def test_sub_and_test_zero_on_zero_is_the_5_15_behaviour(k: Kernel) -> None:
    # 5.15/5.16 test only old == i, so subtracting 0 from 0 "hits zero" silently; the
    # 2024 change (and LKDTM's later REFCOUNT_SUB_AND_TEST_ZERO) made it an underflow.
    r = Refcount(k, 0)
    assert r.sub_and_test(0) is True
    assert r.read() == 0
    assert k.warnings == []


def test_lkdtm_REFCOUNT_INC_ZERO(k: Kernel, only_warning) -> None:
    r = Refcount(k, 0)
    # The safe form must refuse and leave the counter alone ("Correctly stayed at zero").
    assert r.inc_not_zero() is False
    assert r.read() == 0
    assert k.warnings == []
    r.inc()
    assert r.read() == REFCOUNT_SATURATED  # "Zero detected: saturated", never 1
    assert only_warning(k, "refcount_warn_saturate", ADD_ON_ZERO_MSG).caller == "refcount_inc"


def test_lkdtm_REFCOUNT_ADD_ZERO(k: Kernel, only_warning) -> None:
    r = Refcount(k, 0)
    assert r.add_not_zero(3) is False
    assert r.read() == 0
    assert k.warnings == []
    r.add(3)
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", ADD_ON_ZERO_MSG).caller == "refcount_add"


# --------------------------------------------------------------------------------------
# LKDTM: operations on an already saturated counter ("Saturation detected: still saturated")


def test_lkdtm_REFCOUNT_INC_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    r.inc()
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_inc"


def test_lkdtm_REFCOUNT_DEC_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    r.dec()
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", DEC_LEAK_MSG).caller == "refcount_dec"


def test_lkdtm_REFCOUNT_ADD_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    r.add(8)
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_add"


def test_lkdtm_REFCOUNT_INC_NOT_ZERO_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    assert r.inc_not_zero() is True
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_inc_not_zero"


def test_lkdtm_REFCOUNT_ADD_NOT_ZERO_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    assert r.add_not_zero(7) is True
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", SATURATED_MSG).caller == "refcount_add_not_zero"


def test_lkdtm_REFCOUNT_DEC_AND_TEST_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    assert r.dec_and_test() is False
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG).caller == "refcount_dec_and_test"


def test_lkdtm_REFCOUNT_SUB_AND_TEST_SATURATED(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    assert r.sub_and_test(8) is False
    assert r.read() == REFCOUNT_SATURATED
    assert only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG).caller == "refcount_sub_and_test"


# --------------------------------------------------------------------------------------
# WARN_ONCE: printed once per case, recorded every time; saturation every time


def test_each_case_prints_once_but_every_occurrence_is_recorded(k: Kernel) -> None:
    a, b = Refcount(k, 0), Refcount(k, 0)
    a.inc()
    b.inc()
    assert a.read() == b.read() == REFCOUNT_SATURATED  # the second one saturates too
    assert [(w.message, w.printed) for w in k.warnings] == [
        (ADD_ON_ZERO_MSG, True),
        (ADD_ON_ZERO_MSG, False),
    ]
    assert sum("addition on 0" in line for line in k.log) == 1


def test_clear_warn_once_prints_again(k: Kernel) -> None:
    Refcount(k, 0).dec_and_test()
    Refcount(k, 0).dec_and_test()
    k.clear_warn_once()
    Refcount(k, 0).dec_and_test()
    assert [w.printed for w in k.warnings] == [True, False, True]
    assert all(w.message == UNDERFLOW_MSG for w in k.warnings)


def test_different_cases_are_different_once_sites(k: Kernel) -> None:
    Refcount(k, 0).inc()  # ADD_UAF
    Refcount(k, 0).dec()  # DEC_LEAK
    Refcount(k, 0).dec_and_test()  # SUB_UAF
    assert [(w.message, w.printed) for w in k.warnings] == [
        (ADD_ON_ZERO_MSG, True),
        (DEC_LEAK_MSG, True),
        (UNDERFLOW_MSG, True),
    ]


def test_the_two_saturated_cases_share_a_text_but_not_a_once_site(k: Kernel) -> None:
    # REFCOUNT_ADD_OVF and REFCOUNT_ADD_NOT_ZERO_OVF print the same text from two separate
    # WARN_ONCE sites in refcount_warn_saturate: each prints once.
    Refcount(k, REFCOUNT_MAX).inc()  # ADD_OVF
    Refcount(k, REFCOUNT_MAX).inc_not_zero()  # ADD_NOT_ZERO_OVF
    Refcount(k, REFCOUNT_MAX).add(2)  # ADD_OVF again
    Refcount(k, REFCOUNT_MAX).add_not_zero(2)  # ADD_NOT_ZERO_OVF again
    assert [(w.message, w.printed) for w in k.warnings] == [
        (SATURATED_MSG, True),
        (SATURATED_MSG, True),
        (SATURATED_MSG, False),
        (SATURATED_MSG, False),
    ]


# --------------------------------------------------------------------------------------
# refcount_dec_not_one, refcount_dec_if_one


def test_dec_not_one_decrements_other_values(k: Kernel) -> None:
    r = Refcount(k, 5)
    assert r.dec_not_one() is True
    assert r.read() == 4
    assert k.warnings == []


def test_dec_not_one_refuses_the_last_reference(k: Kernel) -> None:
    r = Refcount(k, 1)
    assert r.dec_not_one() is False
    assert r.read() == 1
    assert k.warnings == []


def test_dec_not_one_leaves_a_saturated_counter_alone(k: Kernel) -> None:
    r = Refcount(k, REFCOUNT_SATURATED)
    assert r.dec_not_one() is True
    assert r.read() == REFCOUNT_SATURATED
    assert k.warnings == []


def test_dec_not_one_on_zero_warns_underflow_without_saturating(k: Kernel, only_warning) -> None:
    r = Refcount(k, 0)
    assert r.dec_not_one() is True
    assert r.read() == 0  # this path, unlike refcount_warn_saturate, does not saturate
    ev = only_warning(k, "refcount_dec_not_one", UNDERFLOW_MSG)
    assert ev.macro == "WARN_ONCE" and ev.printed
    # It is its own WARN_ONCE site, separate from refcount_warn_saturate's SUB_UAF case.
    Refcount(k, 0).dec_and_test()
    Refcount(k, 0).dec_not_one()
    assert [(w.function, w.printed) for w in k.warnings] == [
        ("refcount_dec_not_one", True),
        ("refcount_warn_saturate", True),
        ("refcount_dec_not_one", False),
    ]


def test_dec_if_one(k: Kernel) -> None:
    r = Refcount(k, 2)
    assert r.dec_if_one() is False
    assert r.read() == 2
    r.set(1)
    assert r.dec_if_one() is True
    assert r.read() == 0
    assert r.dec_if_one() is False
    assert r.read() == 0
    assert k.warnings == []


# --------------------------------------------------------------------------------------
# refcount_dec_and_mutex_lock / refcount_dec_and_lock


def test_dec_and_mutex_lock_above_one_just_decrements(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    r = Refcount(k, 3)
    assert r.dec_and_mutex_lock(m) is False
    assert r.read() == 2
    assert not m.is_locked()
    assert k.warnings == [] and k.lockdep_reports == []


def test_dec_and_mutex_lock_last_reference_returns_with_the_mutex_held(k: Kernel) -> None:
    m = Mutex(k, "&vfio.group_lock")
    r = Refcount(k, 1)
    assert r.dec_and_mutex_lock(m) is True
    assert r.read() == 0
    assert m.is_locked()
    assert m.owner is k.current()  # held by the caller, who must unlock it
    m.unlock()
    assert not m.is_locked()
    assert k.warnings == [] and k.lockdep_reports == []


def test_dec_and_mutex_lock_on_zero_warns_and_does_not_lock(k: Kernel, only_warning) -> None:
    m = Mutex(k, "&vfio.group_lock")
    r = Refcount(k, 0)
    assert r.dec_and_mutex_lock(m) is False
    assert not m.is_locked()
    assert r.read() == 0
    ev = only_warning(k, "refcount_dec_not_one", UNDERFLOW_MSG)
    assert ev.caller == "refcount_dec_and_mutex_lock"


class _LockThatLetsALookupIn:
    """A mutex stand-in: while the putter waits for it, a lookup takes a new reference
    (as another thread holding the lock would), so the 1 -> 0 step must not happen."""

    def __init__(self, r: Refcount) -> None:
        self.r = r
        self.calls: list[str] = []

    def mutex_lock(self) -> None:
        self.calls.append("lock")
        self.r.inc()

    def mutex_unlock(self) -> None:
        self.calls.append("unlock")


def test_dec_and_mutex_lock_backs_off_when_a_reference_was_taken_meanwhile(k: Kernel) -> None:
    r = Refcount(k, 1)
    lock = _LockThatLetsALookupIn(r)
    assert r.dec_and_mutex_lock(lock) is False
    assert lock.calls == ["lock", "unlock"]  # took the lock, saw 2 -> 1, dropped the lock
    assert r.read() == 1
    assert k.warnings == []


def test_dec_and_lock_with_a_spinlock(k: Kernel, only_warning) -> None:
    lock = SpinLock(k, "&iommu_group_lock")
    r = Refcount(k, 2)
    assert r.dec_and_lock(lock) is False
    assert not lock.is_locked() and r.read() == 1
    assert r.dec_and_lock(lock) is True
    assert lock.is_locked() and r.read() == 0
    lock.spin_unlock()
    assert not lock.is_locked()
    assert k.warnings == []
    # and on zero: underflow WARN, no lock
    assert r.dec_and_lock(lock) is False
    assert not lock.is_locked() and r.read() == 0
    assert only_warning(k, "refcount_dec_not_one", UNDERFLOW_MSG).caller == "refcount_dec_and_lock"


# --------------------------------------------------------------------------------------
# Free-running threads: the read-modify-writes are atomic


def test_concurrent_gets_and_puts_balance(k: Kernel) -> None:
    r = Refcount(k, 1)
    zero_hits: list[int] = []
    n = 4000

    def user() -> None:
        for _ in range(n):
            r.inc()
        for _ in range(n):
            if r.dec_and_test():
                zero_hits.append(1)

    faults = k.run_threads(user, user, user, user)
    assert faults == []
    assert r.read() == 1
    assert zero_hits == []  # the initial reference was never dropped
    assert r.dec_and_test() is True
    assert k.warnings == []


@pytest.mark.parametrize("start", [REFCOUNT_MAX, REFCOUNT_SATURATED, 0])
def test_a_misused_counter_never_wraps_back_to_a_small_value(k: Kernel, start: int) -> None:
    r = Refcount(k, start)
    for _ in range(3):
        r.inc()
        r.dec()
    assert r.read() == REFCOUNT_SATURATED


# --------------------------------------------------------------------------------------
# A refcount_t is a C int (what is not one is refused: tests/reliability/test_refusals.py)

INT_MIN = -0x80000000


@pytest.mark.parametrize("value", [REFCOUNT_MAX, INT_MIN, REFCOUNT_SATURATED, 0, -1])
def test_every_c_int_is_a_counter_value(k: Kernel, value: int) -> None:
    assert Refcount(k, value).read() == value
    r = Refcount(k)
    r.set(value)
    assert r.read() == value and k.warnings == []


def test_the_largest_counter_saturates_on_the_next_inc(k: Kernel, only_warning) -> None:
    # Refcount(k, 2**31) is refused; 2**31 - 1 is the largest there is, and inc from
    # it saturates with the overflow WARN instead of reaching 2**31.
    r = Refcount(k, 2**31 - 1)
    r.inc()
    assert r.read() == REFCOUNT_SATURATED
    ev = only_warning(k, "refcount_warn_saturate", SATURATED_MSG)
    assert ev.caller == "refcount_inc" and ev.macro == "WARN_ONCE"


def test_arithmetic_wraps_as_a_c_int_before_the_checks(k: Kernel, only_warning) -> None:
    # sub_and_test(-1) at INT_MAX: C's old - i wraps to INT_MIN, so it is an underflow.
    r = Refcount(k, REFCOUNT_MAX)
    assert r.sub_and_test(-1) is False
    assert r.read() == REFCOUNT_SATURATED
    only_warning(k, "refcount_warn_saturate", UNDERFLOW_MSG)


def test_add_not_zero_past_int_max_saturates(k: Kernel, only_warning) -> None:
    r = Refcount(k, REFCOUNT_MAX - 1)
    assert r.add_not_zero(2) is True
    assert r.read() == REFCOUNT_SATURATED
    only_warning(k, "refcount_warn_saturate", SATURATED_MSG)
