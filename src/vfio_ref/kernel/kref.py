"""struct kref (include/linux/kref.h): a refcount_t with a release callback.

* ``kref_init`` sets 1; ``kref_get`` is refcount_inc (so a get from 0 WARNs 'addition on 0').
* ``kref_put(release)`` calls ``release(kref)`` when the count reaches zero and returns 1.
* ``kref_put_mutex(release, lock)`` makes the final 1 -> 0 step under ``lock`` and calls
  ``release`` with the lock held; release must drop it.  A lookup that takes ``lock`` can
  therefore never find the object at zero.
* ``kref_get_unless_zero`` is refcount_inc_not_zero: the caller must check the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import Kernel
from .refcount import Refcount
from .sched import note_created


class Kref:
    __slots__ = ("_poison", "container", "refcount")
    _embedded = ("refcount",)

    def __init__(self, kernel: Kernel) -> None:
        self.refcount = Refcount(kernel, 0)
        self.refcount.container = self  # so a report can name it (group->kref)
        self.container: Any = None
        note_created(kernel.sched, self)

    def kref_init(self) -> None:
        self.refcount.refcount_set(1)

    def kref_read(self) -> int:
        return self.refcount.refcount_read()

    def kref_get(self) -> None:
        self.refcount.refcount_inc()

    def kref_put(self, release: Callable[[Kref], None]) -> int:
        if self.refcount.refcount_dec_and_test():
            release(self)
            return 1
        return 0

    def kref_put_mutex(self, release: Callable[[Kref], None], lock: Any) -> int:
        if self.refcount.refcount_dec_and_mutex_lock(lock):
            release(self)
            return 1
        return 0

    def kref_put_lock(self, release: Callable[[Kref], None], lock: Any) -> int:
        if self.refcount.refcount_dec_and_lock(lock):
            release(self)
            return 1
        return 0

    def kref_get_unless_zero(self) -> bool:
        return self.refcount.refcount_inc_not_zero()

    def __repr__(self) -> str:
        return f"kref({self.refcount.refs})"


kref_init = Kref.kref_init
kref_read = Kref.kref_read
kref_get = Kref.kref_get
kref_put = Kref.kref_put
kref_put_mutex = Kref.kref_put_mutex
kref_put_lock = Kref.kref_put_lock
kref_get_unless_zero = Kref.kref_get_unless_zero
