"""IDR: map small integer ids to pointers (lib/idr.c and include/linux/idr.h, 5.15/5.16).

The base vfio keeps minor -> struct vfio_group in one (``idr_alloc(..., 0, MINORMASK + 1)``
under ``vfio.group_lock``).  Contract kept, as in the kernel:

* ``idr_alloc`` hands out the lowest unused id of [start, end) and stores the pointer there
  (NULL may be stored; the id is in use all the same);
* the caller serialises writers (alloc, remove, replace, destroy) with a lock of its own.
  Readers (``idr_find``) may run beside a writer, as the kernel allows under RCU.  Under the
  explorer every writer is a tracked write of the IDR, so two writers that no lock orders
  are reported as a data race; free-running, an internal lock keeps the model's own
  structure whole when several threads run (it hides nothing the race report would show);
* every operation is a scheduling point.

The ids are kept in the same three-level bitmap tree as the IDA
(:class:`~vfio_ref.kernel.ida.IdBitmap`), the pointers in a dict beside it.

Complexity (n = ids in use):

========================  =========================================
``idr_alloc``             O(1) (the IDA's lowest-free search)
``idr_find``              O(1)
``idr_remove``            O(1)
``idr_replace``           O(1)
``idr_is_empty``          O(1)
``idr_destroy``           O(1) (the old maps are dropped whole)
``len(idr)``              O(1) model helper
``iter(idr)``             O(n + leaves · log leaves) model helper
========================  =========================================

Deliberate simplifications: the IDR base (idr_init_base), cyclic allocation, preloading and
idr_get_next are not modelled (vfio uses none of them).  As for the IDA, any allocation
attempt can be failed by fault injection (point ``"idr_alloc@<calling function>"``), and a
range with no free id stays -ENOSPC even then.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .atomic import s32
from .bug import WARN_ON_ONCE
from .core import Kernel, caller_outside
from .errno import EINVAL, ENOENT, ENOMEM, ENOSPC, ERR_PTR
from .ida import INT_MAX, IdBitmap
from .sched import note_created


class Idr:
    """struct idr.  ``Idr(kernel)`` is an empty IDR (DEFINE_IDR / idr_init).

    ``name`` only labels the IDR in reports and fault-injection details.
    """

    __slots__ = ("_ids", "_lock", "_poison", "_ptrs", "container", "kernel", "name")

    def __init__(self, kernel: Kernel, name: str = "idr") -> None:
        self.kernel = kernel
        self.name = name
        self.container: Any = None
        self._ids = IdBitmap()
        self._ptrs: dict[int, Any] = {}
        self._lock = threading.Lock()  # model-internal, see the module docstring
        note_created(kernel.sched, self)

    def _write(self, op: str) -> None:
        """Scheduling point before a writer; under the explorer, a tracked write of the IDR."""
        k = self.kernel
        s = k.sched
        if s is not None:
            s.point(op, self)
            hb = k.hb
            if hb is not None:
                hb.access(k.current(), self, "idr", True)

    def idr_alloc(self, ptr: Any, start: int, end: int) -> int:
        """Store ``ptr`` at the lowest unused id in [start, end) and return that id.

        ``start`` and ``end`` are C ints; ``end <= 0`` means "up to INT_MAX inclusive".
        ``start < 0`` WARNs once (WARN_ON_ONCE) and returns -EINVAL; no unused id in the
        range gives -ENOSPC; an injected allocation failure gives -ENOMEM.  On error
        nothing is stored.  Caller holds the lock that serialises writers.
        """
        self._write("idr_alloc")
        k = self.kernel
        start = s32(start)
        if WARN_ON_ONCE(k, start < 0, "start < 0"):
            return -EINVAL
        end = s32(end)
        max = end - 1 if end > 0 else INT_MAX
        fail = k.fault_inject.should_fail("idr_alloc", caller_outside(__file__), self.name)
        if k.smp:
            with self._lock:
                return self._alloc(ptr, start, max, fail)
        return self._alloc(ptr, start, max, fail)

    def _alloc(self, ptr: Any, start: int, max: int, fail: bool) -> int:
        ids = self._ids
        id = ids.first_free(start)
        if id > max:
            return -ENOSPC
        if fail:
            return -ENOMEM
        ids.set(id)
        self._ptrs[id] = ptr
        return id

    def idr_find(self, id: int) -> Any:
        """The pointer stored at ``id``, or None (NULL) when ``id`` is unused or holds NULL."""
        s = self.kernel.sched
        if s is not None:
            s.point("idr_find", self)
        return self._ptrs.get(id)

    def idr_remove(self, id: int) -> Any:
        """Release ``id`` and return the pointer it held; None, without a warning, if unused."""
        self._write("idr_remove")
        if self.kernel.smp:
            with self._lock:
                return self._remove(id)
        return self._remove(id)

    def _remove(self, id: int) -> Any:
        ptrs = self._ptrs
        if id not in ptrs:
            return None
        self._ids.clear(id)
        return ptrs.pop(id)

    def idr_replace(self, ptr: Any, id: int) -> Any:
        """Store ``ptr`` at ``id``, which is in use, and return the old pointer;
        ERR_PTR(-ENOENT) if ``id`` is not in use (then nothing changes)."""
        self._write("idr_replace")
        if self.kernel.smp:
            with self._lock:
                return self._replace(ptr, id)
        return self._replace(ptr, id)

    def _replace(self, ptr: Any, id: int) -> Any:
        ptrs = self._ptrs
        if id not in ptrs:
            return ERR_PTR(-ENOENT)
        old = ptrs[id]
        ptrs[id] = ptr
        return old

    def idr_destroy(self) -> None:
        """Release every id (the objects pointed to are the caller's to free); the IDR is
        empty afterwards and can be used again."""
        self._write("idr_destroy")
        if self.kernel.smp:
            with self._lock:
                self._ids.reset()
                self._ptrs = {}
        else:
            self._ids.reset()
            self._ptrs = {}

    def idr_is_empty(self) -> bool:
        """True when no id is in use (an id holding NULL is in use)."""
        s = self.kernel.sched
        if s is not None:
            s.point("idr_is_empty", self)
        return not self._ptrs

    # -- model helpers: no scheduling point, for tests and reports ------------------------

    def __len__(self) -> int:
        """The number of ids in use."""
        return len(self._ptrs)

    def __iter__(self) -> Iterator[int]:
        """The ids in use, in increasing order."""
        return iter(list(self._ids))

    def __repr__(self) -> str:
        return f"<idr {self.name}: {len(self._ptrs)} ids>"

    alloc = idr_alloc
    find = idr_find
    remove = idr_remove
    replace = idr_replace
    destroy = idr_destroy
    is_empty = idr_is_empty


def idr_init(k: Kernel, name: str = "idr") -> Idr:
    """An empty IDR (the kernel initialises one in place; the model returns it)."""
    return Idr(k, name)


idr_alloc = Idr.idr_alloc
idr_find = Idr.idr_find
idr_remove = Idr.idr_remove
idr_replace = Idr.idr_replace
idr_destroy = Idr.idr_destroy
idr_is_empty = Idr.idr_is_empty
