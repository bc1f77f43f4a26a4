"""struct mutex and spinlock_t (kernel/locking/mutex.c), with lockdep and deadlock detection.

* ``mutex_lock`` sleeps until the mutex is free.  Lockdep validates the order first; locking a
  mutex the task already holds raises :class:`Deadlock` at once (it could never return).
* ``mutex_unlock`` by a task that does not hold the mutex is a lockdep 'bad unlock balance'
  and, as CONFIG_DEBUG_MUTEXES checks in ``__mutex_unlock_slowpath``, the WARN
  ``DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)``.  The kernel releases the mutex
  anyway (it clears the owner and wakes a waiter), so the model does too; the owner's own
  unlock later, when another task may hold the mutex by then, WARNs the same way.  Every such
  WARN is recorded; as in the kernel only the first debug-locks report prints (lockdep's
  report or this WARN turns ``debug_locks`` off).  A spinlock checks its owner the same way
  (``debug_spin_unlock``: 'already unlocked', 'wrong owner').
* Ordering: unlock is a release, the next lock an acquire (happens-before edge).

Free-running mode uses a real ``threading.Lock``; a task that would wait on a wait-for cycle,
or on a lock held by a task that has exited, or longer than the kernel's hang timeout, gets a
Deadlock naming the cycle instead of hanging the test run.  Under the explorer the mutex is
a plain owner field and the scheduler only runs a thread whose pending lock is free.

Cost: O(held locks) for lockdep, O(1) otherwise.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .core import Deadlock, Kernel, Task, model_site
from .lockdep import HeldLock
from .sched import note_created

if TYPE_CHECKING:
    pass


def _holders(obj: Any) -> Iterable[Task]:
    h = getattr(obj, "holders", None)
    return h() if h is not None else ()


def find_wait_cycle(t: Task) -> list[str] | None:
    """Follow waits-for edges from ``t``: a path back to ``t`` is a deadlock cycle."""
    path = [t]
    frontier: list[tuple[Task, list[Task]]] = [(t, path)]
    seen: set[int] = set()
    while frontier:
        cur, p = frontier.pop()
        obj = cur.waiting_for
        if obj is None:
            continue
        for h in _holders(obj):
            if h is t:
                names = [f"{x.name} waits for {getattr(x.waiting_for, 'lock_class', '?')}" for x in p]
                return names
            if h.tid not in seen:
                seen.add(h.tid)
                frontier.append((h, [*p, h]))
    return None


def wait_free_running(
    k: Kernel, t: Task, obj: Any, try_once: Callable[[float], bool], what: str
) -> None:
    """Block the calling real thread until ``try_once(timeout)`` succeeds, or raise Deadlock."""
    t.waiting_for = obj
    deadline = time.monotonic() + k.hang_timeout
    try:
        while not try_once(0.02):
            cycle = find_wait_cycle(t)
            if cycle is not None:
                raise Deadlock(f"deadlock: {'; '.join(cycle)} (cycle closed by {what})")
            dead = [h.name for h in _holders(obj) if getattr(h, "exited", False)]
            if dead:
                raise Deadlock(f"deadlock: {t.name} waits in {what} for a lock held by exited task(s) {dead}")
            if time.monotonic() > deadline:
                raise Deadlock(f"hung task: {t.name} blocked in {what} for more than {k.hang_timeout}s")
    finally:
        t.waiting_for = None


class Mutex:
    """A sleeping lock.  ``Mutex(kernel, name)``: ``name`` is the lockdep class."""

    __slots__ = ("_lock", "_poison", "_ready", "container", "kernel", "lock_class", "owner")

    OP_LOCK = "mutex_lock"
    OP_UNLOCK = "mutex_unlock"

    def __init__(self, kernel: Kernel, name: str = "mutex") -> None:
        self.kernel = kernel
        self.lock_class = name
        self.owner: Task | None = None
        self.container: Any = None
        self._lock = threading.Lock() if kernel.sched is None else None
        self._ready = self._is_free
        note_created(kernel.sched, self)

    def _is_free(self) -> bool:
        return self.owner is None

    def holders(self) -> tuple[Task, ...]:
        o = self.owner
        return () if o is None else (o,)

    def mutex_lock(self) -> None:
        """Take the mutex, sleeping while another task holds it."""
        k = self.kernel
        s = k.sched
        t = k.current()
        lockdep = k.lockdep_enabled
        if lockdep and t.held:
            k.lockdep.check_acquire(t, self, "w")
        if self.owner is t:
            fn, site = model_site(2)
            raise Deadlock(
                f"deadlock: {t.name} takes {self.lock_class}, which it already holds, in {fn} [{site}]",
                function=fn,
                what=f"{self.OP_LOCK}({self.lock_class}) while holding it",
            )
        if s is not None:
            s.point(self.OP_LOCK, self, self._ready)
        else:
            lk = self._lock
            assert lk is not None
            if not lk.acquire(False):
                wait_free_running(k, t, self, lambda tmo: lk.acquire(timeout=tmo), self.OP_LOCK)
        self.owner = t
        hb = k.hb
        if hb is not None:
            # hb.acquire, skipped when this task made the last release (the common case on
            # this hot path; the call alone costs ~5% of an explorer schedule).
            e = hb.excl.get(self)
            if e is not None and e[1] != t.tid:
                hb.acquire(t, self)
        if lockdep:
            t.held.append(HeldLock(self, "w", sys._getframe(1).f_code.co_name))

    def mutex_trylock(self) -> bool:
        """Take the mutex if it is free; never sleeps.  Returns True on success."""
        k = self.kernel
        t = k.current()
        s = k.sched
        if s is not None:
            s.point("mutex_trylock", self)
            if self.owner is not None:
                return False
        else:
            lk = self._lock
            assert lk is not None
            if not lk.acquire(False):
                return False
        self.owner = t
        if k.hb is not None:
            k.hb.acquire(t, self)
        if k.lockdep_enabled:
            k.lockdep.acquired(t, self, "w")
        return True

    def mutex_unlock(self) -> None:
        """Release the mutex (a release operation: it orders what came before)."""
        k = self.kernel
        s = k.sched
        t = k.current()
        if s is not None:
            s.point(self.OP_UNLOCK, self)
        if k.lockdep_enabled:
            held = t.held
            if held and held[-1].lock is self:
                held.pop()  # Lockdep.released's common case, inlined on this hot path
            else:
                k.lockdep.released(t, self)
        o = self.owner
        if o is not t:
            self._unlock_by_non_owner(k, t, o)
            if o is None:
                return  # nothing to release
        hb = k.hb
        if hb is not None:
            hb.release_exclusive(t, self)
        self.owner = None
        if self._lock is not None:
            self._lock.release()

    def _unlock_by_non_owner(self, k: Kernel, t: Task, owner: Task | None) -> None:
        """CONFIG_DEBUG_MUTEXES: the owner check of ``__mutex_unlock_slowpath``."""
        debug_locks_warn(k, "__mutex_unlock_slowpath", "DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)")

    def mutex_is_locked(self) -> bool:
        return self.owner is not None

    def mutex_destroy(self) -> None:
        """Debug check of the kernel's mutex_destroy: destroying a held mutex is a bug."""
        if self.owner is not None:
            fn, site = model_site(2)
            self.kernel.record_warn(fn, "DEBUG_LOCKS_WARN_ON(mutex_is_locked(lock))", "WARN_ON", site)

    # Short names for Python callers (DESIGN: lock(), unlock(), is_locked()).
    lock = mutex_lock
    unlock = mutex_unlock
    trylock = mutex_trylock
    is_locked = mutex_is_locked

    def __repr__(self) -> str:
        o = self.owner
        return f"<Mutex {self.lock_class} {'held by ' + o.name if o else 'free'}>"


def debug_locks_off(k: Kernel) -> bool:
    """Turn the kernel's ``debug_locks`` off; True if this call did (it was still on).

    In the kernel every lockdep report and every DEBUG_LOCKS_WARN_ON that fires turns it off,
    and only the one that turned it off prints: the model keeps the state in ``k.state``
    and counts lockdep's reports as having turned it off.
    """
    was_on = not k.state.get("debug_locks_off") and not k.lockdep.reports
    k.state["debug_locks_off"] = True
    return was_on


def debug_locks_warn(k: Kernel, function: str, message: str, macro: str = "DEBUG_LOCKS_WARN_ON") -> None:
    """Record a debug-locks report (``macro`` in kernel function ``function``), marked printed
    only if it turned ``debug_locks`` off (see :func:`debug_locks_off`).  Its site is where the
    caller of the lock primitive (the first frame outside this module) made the call."""
    printed = debug_locks_off(k)
    key = (function, "debug_locks")
    # record_warn prints a once-only WARN the first time its key is seen: set the key so that
    # the event is marked printed exactly when it turned debug_locks off.
    if printed:
        k._warn_once_seen.discard(key)
    else:
        k._warn_once_seen.add(key)
    n = 1
    f = sys._getframe(1)
    while f.f_back is not None and f.f_code.co_filename == __file__:
        f = f.f_back
        n += 1
    _, site = model_site(n + 1)
    k.record_warn(function, message, macro, site, once=True, once_key="debug_locks")


def mutex_init(k: Kernel, name: str) -> Mutex:
    """A new mutex whose lockdep class is ``name`` (the kernel keys it by init site)."""
    return Mutex(k, name)


mutex_lock = Mutex.mutex_lock
mutex_unlock = Mutex.mutex_unlock
mutex_trylock = Mutex.mutex_trylock
mutex_is_locked = Mutex.mutex_is_locked
mutex_destroy = Mutex.mutex_destroy


class SpinLock(Mutex):
    """spinlock_t: modelled as a mutex (nothing in this model runs in atomic context)."""

    __slots__ = ()
    OP_LOCK = "spin_lock"
    OP_UNLOCK = "spin_unlock"

    def spin_lock(self) -> None:
        self.mutex_lock()

    def spin_unlock(self) -> None:
        self.mutex_unlock()

    def _unlock_by_non_owner(self, k: Kernel, t: Task, owner: Task | None) -> None:
        """CONFIG_DEBUG_SPINLOCK: ``debug_spin_unlock``'s checks (each a SPIN_BUG_ON: a report
        through ``spin_bug``, the unlock goes on)."""
        if owner is None:
            debug_locks_warn(k, "debug_spin_unlock", "BUG: spinlock already unlocked", "SPIN_BUG_ON")
        debug_locks_warn(k, "debug_spin_unlock", "BUG: spinlock wrong owner", "SPIN_BUG_ON")


spin_lock = SpinLock.spin_lock
spin_unlock = SpinLock.spin_unlock
