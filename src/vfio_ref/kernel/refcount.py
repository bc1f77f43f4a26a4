"""refcount_t with the exact 5.15/5.16 semantics (include/linux/refcount.h, lib/refcount.c).

The counter is a C int.  A misuse never wraps: ``refcount_warn_saturate`` first sets the
counter to REFCOUNT_SATURATED (INT_MIN / 2), then WARNs once per case, with the kernel's text:

=========================  ==================================================
case                       message
=========================  ==================================================
REFCOUNT_ADD_NOT_ZERO_OVF  refcount_t: saturated; leaking memory.
REFCOUNT_ADD_OVF           refcount_t: saturated; leaking memory.
REFCOUNT_ADD_UAF           refcount_t: addition on 0; use-after-free.
REFCOUNT_SUB_UAF           refcount_t: underflow; use-after-free.
REFCOUNT_DEC_LEAK          refcount_t: decrement hit 0; leaking memory.
=========================  ==================================================

Every occurrence is recorded; ``printed`` marks the first of each case (WARN_ONCE).  The
saturation happens every time.

The counter and every amount are C ints: ``Refcount(kernel, n)``, ``refcount_set`` and the
``i`` of add / add_not_zero / sub_and_test take an ``int`` from INT_MIN to INT_MAX (negative
values are the kernel's "bad" range, REFCOUNT_SATURATED among them).  Anything else (a float,
a str, a bool, a value no C int can hold) is a :class:`ModelUsageError` naming the counter and
the rule: the C compiler would not have let it through, so there is no kernel behaviour to
model.

Ordering: increments are unordered; every decrement is a release, and the decrement that
reaches zero is also an acquire (so whoever frees sees every earlier holder's writes).
Every operation is a scheduling point and costs O(1).
"""

from __future__ import annotations

from typing import Any, Final

from .core import Kernel, ModelUsageError, model_site
from .sched import note_created

INT_MAX: Final = 0x7FFFFFFF
INT_MIN: Final = -0x80000000
REFCOUNT_MAX: Final = INT_MAX
REFCOUNT_SATURATED: Final = INT_MIN // 2

REFCOUNT_ADD_NOT_ZERO_OVF: Final = 0
REFCOUNT_ADD_OVF: Final = 1
REFCOUNT_ADD_UAF: Final = 2
REFCOUNT_SUB_UAF: Final = 3
REFCOUNT_DEC_LEAK: Final = 4

SATURATION_MESSAGES: Final = {
    REFCOUNT_ADD_NOT_ZERO_OVF: "refcount_t: saturated; leaking memory.",
    REFCOUNT_ADD_OVF: "refcount_t: saturated; leaking memory.",
    REFCOUNT_ADD_UAF: "refcount_t: addition on 0; use-after-free.",
    REFCOUNT_SUB_UAF: "refcount_t: underflow; use-after-free.",
    REFCOUNT_DEC_LEAK: "refcount_t: decrement hit 0; leaking memory.",
}

_WRAP: Final = 0x100000000


def _wrap(x: int) -> int:
    """``x`` as C int arithmetic leaves it (the kernel builds with -fno-strict-overflow)."""
    return (x - INT_MIN) % _WRAP + INT_MIN


def _check_int(head: str, what: str, n: object) -> None:
    """Refuse anything a C int parameter could not be (see the module docstring).  ``head``
    is the call as the message shows it, up to the offending argument."""
    if type(n) is not int:
        raise ModelUsageError(f"{head}{n!r}): {what} is a C int; a {type(n).__name__} is not one")
    if not INT_MIN <= n <= INT_MAX:
        raise ModelUsageError(
            f"{head}{n}): {what} is a C int, from INT_MIN to INT_MAX ({INT_MIN}..{INT_MAX}); "
            f"{n} does not fit"
        )


class Refcount:
    """``Refcount(kernel, n)``: a refcount_t set to ``n``."""

    __slots__ = ("_poison", "container", "kernel", "refs")

    def __init__(self, kernel: Kernel, n: int = 0) -> None:
        self.kernel = kernel
        self.refs = 0
        self.container: Any = None
        if type(n) is not int or not INT_MIN <= n <= INT_MAX:
            _check_int("Refcount(kernel, ", "the counter of a refcount_t", n)
        self.refs = n
        note_created(kernel.sched, self)

    # -- the WARN -------------------------------------------------------------------------

    def refcount_warn_saturate(self, t: int) -> None:
        """Saturate the counter, then WARN_ONCE with the message for case ``t``."""
        self.refs = REFCOUNT_SATURATED
        msg = SATURATION_MESSAGES.get(t, "refcount_t: unknown saturation event!?")
        _, site = model_site(1)
        k = self.kernel
        # Each case is its own WARN_ONCE site in the kernel: ADD_OVF and ADD_NOT_ZERO_OVF
        # share a text but each prints once.
        k.record_warn("refcount_warn_saturate", msg, "WARN_ONCE", site, once=True, once_key=f"case{t}")

    # -- plain access ---------------------------------------------------------------------

    def refcount_set(self, n: int) -> None:
        if type(n) is not int or not INT_MIN <= n <= INT_MAX:
            _check_int(f"refcount_set({self!r}, ", "the counter of a refcount_t", n)
        s = self.kernel.sched
        if s is not None:
            s.point("refcount_set", self)
        self.refs = n

    def refcount_read(self) -> int:
        """The counter as a C int (the kernel returns it as unsigned int; C's comparison
        against REFCOUNT_SATURATED converts the same way, so comparisons agree)."""
        s = self.kernel.sched
        if s is not None:
            s.point("refcount_read", self)
        return self.refs

    # -- increments (unordered) -------------------------------------------------------------

    def refcount_add(self, i: int = 1) -> None:
        """Add ``i``.  From 0: saturate + 'addition on 0'.  Past INT_MAX or from a negative
        (saturated) value: saturate + 'saturated; leaking memory'."""
        if type(i) is not int or not INT_MIN <= i <= INT_MAX:
            _check_int(f"refcount_add({self!r}, ", "the amount i", i)
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_add", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                self.refs = new = _wrap(old + i)
        else:
            old = self.refs
            self.refs = new = _wrap(old + i)
        if not old:
            self.refcount_warn_saturate(REFCOUNT_ADD_UAF)
        elif old < 0 or new < 0:
            self.refcount_warn_saturate(REFCOUNT_ADD_OVF)

    def refcount_inc(self) -> None:
        """refcount_add(1), kept separate because it is the hot path."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_inc", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                self.refs = new = old + 1 if old != INT_MAX else INT_MIN
        else:
            old = self.refs
            self.refs = new = old + 1 if old != INT_MAX else INT_MIN
        if not old:
            self.refcount_warn_saturate(REFCOUNT_ADD_UAF)
        elif old < 0 or new < 0:
            self.refcount_warn_saturate(REFCOUNT_ADD_OVF)

    def refcount_add_not_zero(self, i: int = 1) -> bool:
        """Add ``i`` unless the counter is 0 (then change nothing and return False).  A result
        past INT_MAX saturates and WARNs, but still returns True."""
        if type(i) is not int or not INT_MIN <= i <= INT_MAX:
            _check_int(f"refcount_add_not_zero({self!r}, ", "the amount i", i)
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_add_not_zero", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                if old:
                    self.refs = _wrap(old + i)
        else:
            old = self.refs
            if old:
                self.refs = _wrap(old + i)
        if not old:
            return False
        new = _wrap(old + i)
        if old < 0 or new < 0:
            self.refcount_warn_saturate(REFCOUNT_ADD_NOT_ZERO_OVF)
        return True

    def refcount_inc_not_zero(self) -> bool:
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_inc_not_zero", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                if old:
                    self.refs = old + 1 if old != INT_MAX else INT_MIN
        else:
            old = self.refs
            if old:
                self.refs = old + 1 if old != INT_MAX else INT_MIN
        if not old:
            return False
        if old < 0 or old == INT_MAX:
            self.refcount_warn_saturate(REFCOUNT_ADD_NOT_ZERO_OVF)
        return True

    # -- decrements (release; the one reaching zero is also an acquire) -----------------------

    def refcount_sub_and_test(self, i: int = 1) -> bool:
        """Subtract ``i``; True when this hit exactly zero.  Going below zero (or from a
        saturated value) saturates and WARNs 'underflow; use-after-free', returning False."""
        if type(i) is not int or not INT_MIN <= i <= INT_MAX:
            _check_int(f"refcount_sub_and_test({self!r}, ", "the amount i", i)
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_sub_and_test", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                self.refs = new = _wrap(old - i)
        else:
            old = self.refs
            self.refs = new = _wrap(old - i)
        hb = k.hb
        if hb is not None:
            t = k.current()
            hb.release(t, self)
            if old == i:
                hb.acquire(t, self)
        if old == i:
            return True
        if old < 0 or new < 0:
            self.refcount_warn_saturate(REFCOUNT_SUB_UAF)
        return False

    def refcount_dec_and_test(self) -> bool:
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_dec_and_test", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                self.refs = new = old - 1 if old != INT_MIN else INT_MAX
        else:
            old = self.refs
            self.refs = new = old - 1 if old != INT_MIN else INT_MAX
        hb = k.hb
        if hb is not None:
            t = k.current()
            hb.release(t, self)
            if old == 1:
                hb.acquire(t, self)
        if old == 1:
            return True
        if old < 0 or new < 0:
            self.refcount_warn_saturate(REFCOUNT_SUB_UAF)
        return False

    def refcount_dec(self) -> None:
        """Decrement, for a count known not to reach zero: reaching (or passing) zero
        saturates and WARNs 'decrement hit 0; leaking memory'."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_dec", self)
        if k.smp:
            with k.atomic_lock:
                old = self.refs
                self.refs = old - 1 if old != INT_MIN else INT_MAX
        else:
            old = self.refs
            self.refs = old - 1 if old != INT_MIN else INT_MAX
        if k.hb is not None:
            k.hb.release(k.current(), self)
        if old <= 1:
            self.refcount_warn_saturate(REFCOUNT_DEC_LEAK)

    def refcount_dec_if_one(self) -> bool:
        """1 -> 0 atomically; False (and no change) for any other value."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_dec_if_one", self)
        if k.smp:
            with k.atomic_lock:
                ok = self.refs == 1
                if ok:
                    self.refs = 0
        else:
            ok = self.refs == 1
            if ok:
                self.refs = 0
        if ok and k.hb is not None:
            k.hb.release(k.current(), self)
        return ok

    def refcount_dec_not_one(self) -> bool:
        """Decrement unless the count is 1 (then return False).  Saturated: True, unchanged.
        Zero: WARN 'underflow; use-after-free' and return True *without* saturating."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("refcount_dec_not_one", self)
        if k.smp:
            with k.atomic_lock:
                val = self.refs
                if val != REFCOUNT_SATURATED and val != 1 and val != 0:
                    self.refs = val - 1 if val != INT_MIN else INT_MAX
        else:
            val = self.refs
            if val != REFCOUNT_SATURATED and val != 1 and val != 0:
                self.refs = val - 1 if val != INT_MIN else INT_MAX
        if val == REFCOUNT_SATURATED:
            return True
        if val == 1:
            return False
        if val == 0:
            _, site = model_site(1)
            self.kernel.record_warn(
                "refcount_dec_not_one", SATURATION_MESSAGES[REFCOUNT_SUB_UAF], "WARN_ONCE", site, once=True
            )
            return True
        if k.hb is not None:
            k.hb.release(k.current(), self)
        return True

    def refcount_dec_and_mutex_lock(self, lock: Any) -> bool:
        """Decrement; if that reaches zero return True *with ``lock`` held*.  The final
        1 -> 0 step happens under the lock, so a lookup done under the same lock never
        sees a zero count."""
        if self.refcount_dec_not_one():
            return False
        lock.mutex_lock()
        if not self.refcount_dec_and_test():
            lock.mutex_unlock()
            return False
        return True

    def refcount_dec_and_lock(self, lock: Any) -> bool:
        """As refcount_dec_and_mutex_lock, with a spinlock."""
        if self.refcount_dec_not_one():
            return False
        lock.spin_lock()
        if not self.refcount_dec_and_test():
            lock.spin_unlock()
            return False
        return True

    # Short names (DESIGN: set, read, inc, add, inc_not_zero, dec, dec_and_test, ...).
    set = refcount_set
    read = refcount_read
    inc = refcount_inc
    add = refcount_add
    inc_not_zero = refcount_inc_not_zero
    add_not_zero = refcount_add_not_zero
    dec = refcount_dec
    dec_and_test = refcount_dec_and_test
    sub_and_test = refcount_sub_and_test
    dec_if_one = refcount_dec_if_one
    dec_not_one = refcount_dec_not_one
    dec_and_mutex_lock = refcount_dec_and_mutex_lock
    dec_and_lock = refcount_dec_and_lock

    def __repr__(self) -> str:
        return f"refcount_t({self.refs})"


refcount_set = Refcount.refcount_set
refcount_read = Refcount.refcount_read
refcount_add = Refcount.refcount_add
refcount_inc = Refcount.refcount_inc
refcount_add_not_zero = Refcount.refcount_add_not_zero
refcount_inc_not_zero = Refcount.refcount_inc_not_zero
refcount_sub_and_test = Refcount.refcount_sub_and_test
refcount_dec_and_test = Refcount.refcount_dec_and_test
refcount_dec = Refcount.refcount_dec
refcount_dec_if_one = Refcount.refcount_dec_if_one
refcount_dec_not_one = Refcount.refcount_dec_not_one
refcount_dec_and_mutex_lock = Refcount.refcount_dec_and_mutex_lock
refcount_dec_and_lock = Refcount.refcount_dec_and_lock
