"""atomic_t (include/linux/atomic.h): a 32-bit counter with atomic read-modify-write.

Values wrap as a C int: arithmetic, and also a value set from outside the int range (as C
converts ``atomic_set(&v, 0xFFFFFFFF)`` to -1).  A value that is not an ``int`` at all (a
float, a str, a bool) is a :class:`ModelUsageError` naming the call: C would not compile it.
Every operation is a scheduling point.  For happens-before, the
read-modify-write operations are treated as fully ordered (the kernel guarantees that for
value-returning ones only), atomic_read / atomic_set as unordered.

Free-running with several real threads, the read-modify-writes take the kernel's
``atomic_lock`` (as architectures without atomics hash atomics onto spinlocks); with one
thread they need none.  Each operation is O(1).
"""

from __future__ import annotations

from typing import Any

from .core import Kernel, ModelUsageError
from .sched import note_created

INT_MAX = 0x7FFFFFFF
INT_MIN = -0x80000000


def s32(x: int) -> int:
    """Wrap ``x`` to a C int."""
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def _check_int(head: str, n: object) -> None:
    if type(n) is not int:
        raise ModelUsageError(f"{head}{n!r}): an atomic_t value is a C int; a {type(n).__name__} is not one")


class Atomic:
    __slots__ = ("_poison", "container", "counter", "kernel")

    def __init__(self, kernel: Kernel, value: int = 0) -> None:
        if type(value) is not int:
            _check_int("Atomic(kernel, ", value)
        self.kernel = kernel
        self.counter = s32(value)
        self.container: Any = None
        note_created(kernel.sched, self)

    def _rmw(self, op: str, fn: Any) -> int:
        """Apply fn(old) -> new atomically; return old."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point(op, self)
            old = self.counter
            self.counter = s32(fn(old))
            hb = k.hb
            if hb is not None:
                t = k.current()
                hb.acquire(t, self)
                hb.release_exclusive(t, self)
            return old
        if k.smp:
            with k.atomic_lock:
                old = self.counter
                self.counter = s32(fn(old))
            return old
        old = self.counter
        self.counter = s32(fn(old))
        return old

    def atomic_read(self) -> int:
        s = self.kernel.sched
        if s is not None:
            s.point("atomic_read", self)
        return self.counter

    def atomic_set(self, i: int) -> None:
        if type(i) is not int:
            _check_int(f"atomic_set({self!r}, ", i)
        s = self.kernel.sched
        if s is not None:
            s.point("atomic_set", self)
        self.counter = s32(i)

    def atomic_inc(self) -> None:
        self._rmw("atomic_inc", lambda v: v + 1)

    def atomic_dec(self) -> None:
        self._rmw("atomic_dec", lambda v: v - 1)

    def atomic_add_return(self, i: int) -> int:
        if type(i) is not int:
            _check_int(f"atomic_add_return({self!r}, ", i)
        return s32(self._rmw("atomic_add_return", lambda v: v + i) + i)

    def atomic_dec_and_test(self) -> bool:
        return self._rmw("atomic_dec_and_test", lambda v: v - 1) == 1

    def atomic_cmpxchg(self, old: int, new: int) -> int:
        """If the value is ``old`` make it ``new``; return the value found."""
        for v in (old, new):
            if type(v) is not int:
                _check_int(f"atomic_cmpxchg({self!r}, ", v)
        return self._rmw("atomic_cmpxchg", lambda v: new if v == old else v)

    def atomic_inc_not_zero(self) -> bool:
        return self._rmw("atomic_inc_not_zero", lambda v: v + 1 if v != 0 else v) != 0

    def atomic_dec_if_positive(self) -> int:
        """Decrement if the result stays >= 0; return old - 1 either way (as the kernel).
        The subtraction wraps as a C int, so INT_MIN becomes INT_MAX and is stored."""
        return s32(self._rmw("atomic_dec_if_positive", lambda v: s32(v - 1) if s32(v - 1) >= 0 else v) - 1)

    def __repr__(self) -> str:
        return f"atomic_t({self.counter})"


atomic_read = Atomic.atomic_read
atomic_set = Atomic.atomic_set
atomic_inc = Atomic.atomic_inc
atomic_dec = Atomic.atomic_dec
atomic_add_return = Atomic.atomic_add_return
atomic_dec_and_test = Atomic.atomic_dec_and_test
atomic_cmpxchg = Atomic.atomic_cmpxchg
atomic_inc_not_zero = Atomic.atomic_inc_not_zero
atomic_dec_if_positive = Atomic.atomic_dec_if_positive
