"""The scheduling hook: the one place where a controlled scheduler can switch threads.

Every lock, atomic and refcount operation, and every operation on shared data the kernel
protects (list_head lists, tracked fields), calls ``k.sched.point(op, obj, ready)`` just
before it acts, when the kernel has a scheduler.  In free-running mode ``k.sched`` is None
and the primitives skip the call, so the hook costs one attribute load and a compare.

``op`` is the kernel function about to run (``"mutex_lock"``, ``"refcount_dec_and_test"``),
``obj`` the object it touches, and ``ready`` (for operations that can block) a predicate
that is true when the operation can go ahead; the scheduler runs a thread only when its
pending operation is ready, and all threads blocked is a deadlock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

# Operations that only read what they touch: two reads of one object commute.
READ_OPS: Final = frozenset(
    {
        "refcount_read", "atomic_read", "list_empty", "list_for_each_entry", "READ_ONCE",
        "kref_read", "idr_find", "ida_is_empty", "idr_is_empty", "down_read",
    }
)

# Operations that can only enable other threads (a release): the scheduler need not offer a
# switch right before them, since nothing visible happens between them and the thread's
# next scheduling point.
RELEASE_OPS: Final = frozenset(
    {"mutex_unlock", "up_read", "up_write", "complete", "wake_up", "spin_unlock"}
)


class Scheduler(Protocol):
    """What the substrate needs from a controlled scheduler."""

    step_no: int

    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None) -> None:
        """Called by the running thread before ``op`` on ``obj``; returns when it may go on."""
        ...

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        """Start a kernel thread (a kworker) that the scheduler runs like any other."""
        ...
