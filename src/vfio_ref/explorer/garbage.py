"""Python's cyclic garbage collector, run between two executions instead of inside them.

Every execution builds a whole simulated kernel, and a kernel is one big cycle (lists link
both ways, objects point at their kernel, devices at their parents and back), so everything
an execution built is freed by the cyclic collector, never by reference counting alone.
Left to itself the collector runs every 700 allocations: in the middle of an execution,
where it walks the execution's live objects (none of them garbage yet) and moves them into
older generations, whose collections then walk them again.  Measured on the base's
``device_fd_vs_unbind`` at one preemption (1,500 schedules, runs taken in turn): the
collector took 1.24-1.28 s of a 7.96-7.98 s search; collected once after each execution
instead, 0.61 s of 7.19-7.21 s, with the same peak memory.

:func:`collecting_between_executions` raises the young generation's threshold for a search
(the search loop's ``with``) far above what an execution allocates, and
:func:`collect_garbage` (once after each execution) collects the young generation, and the
older ones when the interpreter's own thresholds say so, so that garbage that outlives an
execution (the reduction keeps the last execution's steps) is still freed.  Nothing in the
model depends on when garbage is collected (it has no finalisers and no weak references).

A search's first full collection (after ``threshold1 * threshold2`` executions; never, in a
search shorter than that) also freezes the heap it leaves (``gc.freeze``): that heap is what
the search started from (modules, classes, the caller's data: some 20,000 objects after the
catalogue is imported) and its own live objects, with no garbage left in it, and the search's
later full collections walk only what it allocated since, where each walk of the whole heap
took 7-9 ms here.  The last search to end unfreezes the heap, so what of it has become
garbage since is collected by the next full collection, as usual.  A caller that froze
objects itself is left alone (nothing is frozen or unfrozen then).  Measured over the base's
column of the report (the gc callbacks' times; with and without the freeze at the same time,
one core each): its 124 full collections took 1.29 s without, 0.37 s with, and as many
objects were alive at the end (19,632 and 19,623).

Complexity: collect_garbage walks what was allocated since the last call and is still alive
or cyclic garbage, O(objects of one execution); every ``threshold1`` calls also the middle
generation and every ``threshold1 * threshold2`` calls the whole heap allocated since the
search began, as the interpreter would.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

# Inside an execution the young generation is collected only past this many allocations: far
# more than a catalogue execution makes (at most 12,196 at the base or p5, reduced or not),
# so that none is collected in the middle, while a runaway one (a livelock running to
# max_steps) still has its garbage collected as it goes.
INSIDE_THRESHOLD = 200_000

_lock = threading.Lock()
_holders = 0  # searches running in this process (a Dask worker runs parts on threads)
_saved: tuple[int, int, int] = (700, 10, 10)  # the thresholds before the first of them began
_active = False  # whether the collector was on then
_froze = False  # whether one of them froze the heap (the last one to end unfreezes it)


@contextlib.contextmanager
def collecting_between_executions() -> Iterator[bool]:
    """Raise the young generation's threshold to INSIDE_THRESHOLD for the searches inside;
    the last one to leave puts the thresholds back, and unfreezes the heap if one of them
    froze it (collect_garbage).  Yields whether collect_garbage should collect at all (False
    when the collector is off: the caller's choice stands)."""
    global _holders, _saved, _active, _froze
    with _lock:
        if _holders == 0:
            _saved = gc.get_threshold()
            _active = gc.isenabled() and _saved[0] > 0
            if _active:
                gc.set_threshold(INSIDE_THRESHOLD, _saved[1], _saved[2])
        _holders += 1
        active = _active
    try:
        yield active
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _froze:
                    gc.unfreeze()
                    _froze = False
                if _active:
                    gc.set_threshold(*_saved)


@contextlib.contextmanager
def frozen_for_fork() -> Iterator[None]:
    """Around a process pool that forks its workers: the parent's heap is collected once and
    frozen (``gc.freeze``) until the pool is done, as the gc module's documentation advises
    for a fork without exec.  A forked worker inherits the frozen state, so its collections
    never walk the parent's objects (each full collection did, and the first one's writes
    to their gc headers copied every page of that heap into the worker), and its searches
    freeze nothing of their own (collect_garbage: the heap is frozen already).

    A heap frozen already, by the caller or by a search running in this process
    (collect_garbage), is left alone: nothing is frozen or unfrozen then, and whoever froze
    it unfreezes it.  With the collector off nothing is collected."""
    if gc.get_freeze_count() > 0:
        yield
        return
    if gc.isenabled():
        gc.collect()  # garbage frozen now would outlive the pool (the parent's first execution)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def collect_garbage() -> None:
    """Between two executions: the young generation always, the middle one once it has
    been through ``threshold1`` young collections, the oldest once the middle one has been
    through ``threshold2`` (the interpreter's thresholds when the search began; 0 collects
    that generation every time).  After the first full collection since the heap was last
    unfrozen, the heap is frozen, unless the caller froze some of it."""
    global _froze
    _, t1, t2 = _saved
    gc.collect(0)
    if gc.get_count()[1] >= t1:
        gc.collect(1)
        if gc.get_count()[2] >= t2:
            gc.collect(2)
            if not _froze:
                with _lock:
                    if not _froze and _holders > 0 and gc.get_freeze_count() == 0:
                        gc.freeze()
                        _froze = True
