"""IDA: allocate the lowest free integer id in a range (lib/idr.c, ida_alloc_range & co).

PLACEHOLDER: a simple implementation with the final API; to be replaced by the fast one.
"""

from __future__ import annotations

from typing import Any

from .core import Kernel, caller_outside
from .errno import ENOMEM, ENOSPC

INT_MAX = 0x7FFFFFFF


class Ida:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.used: set[int] = set()
        self.container: Any = None

    def ida_alloc_range(self, min: int, max: int) -> int:
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("ida_alloc", self)
        if k.fault_inject.should_fail("ida_alloc", caller_outside(__file__), ""):
            return -ENOMEM
        if max < 0 or max > INT_MAX:
            max = INT_MAX
        if min < 0:
            return -ENOSPC
        i = min
        while i <= max:
            if i not in self.used:
                self.used.add(i)
                return i
            i += 1
        return -ENOSPC

    def ida_alloc(self) -> int:
        return self.ida_alloc_range(0, INT_MAX)

    def ida_alloc_min(self, min: int) -> int:
        return self.ida_alloc_range(min, INT_MAX)

    def ida_alloc_max(self, max: int) -> int:
        return self.ida_alloc_range(0, max)

    def ida_free(self, id: int) -> None:
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point("ida_free", self)
        if id not in self.used:
            msg = f"ida_free called for id={id} which is not allocated."
            k.record_warn("ida_free", msg, "WARN", "ida.py")
            return
        self.used.discard(id)

    def ida_destroy(self) -> None:
        self.used.clear()

    def ida_is_empty(self) -> bool:
        return not self.used

    alloc = ida_alloc
    alloc_min = ida_alloc_min
    alloc_max = ida_alloc_max
    alloc_range = ida_alloc_range
    free = ida_free
    destroy = ida_destroy
    is_empty = ida_is_empty


def ida_init(k: Kernel) -> Ida:
    return Ida(k)


ida_alloc = Ida.ida_alloc
ida_alloc_min = Ida.ida_alloc_min
ida_alloc_max = Ida.ida_alloc_max
ida_alloc_range = Ida.ida_alloc_range
ida_free = Ida.ida_free
ida_destroy = Ida.ida_destroy
ida_is_empty = Ida.ida_is_empty
