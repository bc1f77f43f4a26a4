"""The scheduling hook: the one place where a controlled scheduler can switch threads.

Every lock, atomic and refcount operation, and every operation on shared data the kernel
protects (list_head lists, tracked fields), calls ``k.sched.point(op, obj, ready, field)``
just before it acts, when the kernel has a scheduler.  In free-running mode ``k.sched`` is
None and the primitives skip the call, so the hook costs one attribute load and a compare.

``op`` is the kernel function about to run (``"mutex_lock"``, ``"refcount_dec_and_test"``),
``obj`` the object it touches (``field`` the member, for a tracked struct field), and
``ready`` (for operations that can block) a predicate that is true when the operation can go
ahead; the scheduler runs a thread only when its pending operation is ready, and all threads
blocked is a deadlock.

Besides the scheduling points, a controlled scheduler that needs to know everything a step
touches (the explorer's reductions do) is told of three more things:

* ``created(obj)``: every object an operation can touch announces itself when it is built,
  so the explorer names it by who built it (stable across schedules);
* ``access(obj, field, write)``: a plain read or write of a model struct's member (see
  :mod:`.slab`: structs are watched while such a scheduler runs);
* ``freed(obj)``: kfree, which writes every member of the object at once.

How an operation counts for the reductions is fixed here, by its name: a *read* commutes
with other reads of the same object; an *acquire* waits for a lock and takes it (its race is with the
previous acquire, since a release and the next acquire are never both runnable); a *release* can only
enable other threads (no choice is offered right before it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

# Operations that only read what they touch: two reads of one object commute.
READ_OPS: Final = frozenset(
    {
        "refcount_read", "atomic_read", "list_empty", "list_for_each_entry", "READ_ONCE",
        "kref_read", "idr_find", "ida_is_empty", "idr_is_empty", "down_read", "up_read",
    }
)

# Operations that wait for a lock and take it (a read lock for down_read).  A trylock is not
# one of them: it never waits, so it can run between another thread's acquire and release
# (and fail), and its race with that release is a real one.
ACQUIRE_OPS: Final = frozenset({"mutex_lock", "spin_lock", "down_read", "down_write"})

# Counter operations whose result depends only on whether the counter is near zero: two of
# them commute as long as the counter stays well away from it, whatever their order (the
# explorer's DPOR uses that; see explorer/dpor.py).  Each maps to (decrements, increments).
COUNTER_OPS: Final = {
    "refcount_inc": (0, 1),
    "refcount_inc_not_zero": (0, 1),
    "refcount_dec": (1, 0),
    "refcount_dec_and_test": (1, 0),
    "atomic_inc": (0, 1),
    "atomic_inc_not_zero": (0, 1),
    "atomic_dec": (1, 0),
    "atomic_dec_and_test": (1, 0),
}

# Operations that can only enable other threads (a release): the scheduler need not offer a
# switch right before them, since nothing visible happens between them and the thread's
# next scheduling point.
RELEASE_OPS: Final = frozenset(
    {"mutex_unlock", "up_read", "up_write", "complete", "wake_up", "spin_unlock"}
)


class Scheduler(Protocol):
    """What the substrate needs from a controlled scheduler."""

    step_no: int

    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        """Called by the running thread before ``op`` on ``obj``; returns when it may go on."""
        ...

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        """Start a kernel thread (a kworker) that the scheduler runs like any other."""
        ...

    def created(self, obj: object) -> None:
        """``obj`` was just built by the running thread."""
        ...

    def freed(self, obj: object, members: list[object]) -> None:
        """``obj`` (and the ``members`` embedded in it) is being kfree'd by the running thread."""
        ...


def note_created(sched: Scheduler | None, obj: object) -> None:
    """Tell a controlled scheduler that ``obj`` exists (primitives call this when built).
    A scheduler without ``created`` (a test's recorder of points) is not told."""
    if sched is not None:
        created = getattr(sched, "created", None)
        if created is not None:
            created(obj)
