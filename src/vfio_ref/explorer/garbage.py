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

:func:`collecting_between_executions` turns the automatic collector off for a search (the
search loop's ``with``) and :func:`collect_garbage` (once after each execution) collects the
young generation, and the older ones when the interpreter's own thresholds say so, so that
garbage that outlives an execution (the reduction keeps the last execution's steps) is still
freed.  Nothing in the model depends on when garbage is collected (it has no finalisers and
no weak references).

Complexity: collect_garbage walks what was allocated since the last call and is still alive
or cyclic garbage, O(objects of one execution); every ``threshold1`` calls also the middle
generation and every ``threshold1 * threshold2`` calls the whole heap, as the interpreter
would.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holders = 0  # searches running in this process (a Dask worker runs parts on threads)
_was_enabled = False  # the collector's state before the first of them began


@contextlib.contextmanager
def collecting_between_executions() -> Iterator[bool]:
    """Turn automatic collection off for the searches inside; the last one to leave turns
    it back on if it was on when the first began.  Yields whether collect_garbage should
    collect at all (False when the collector was off already: the caller's choice stands)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
        _holders += 1
        active = _was_enabled
        gc.disable()
    try:
        yield active
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()


def collect_garbage() -> None:
    """Between two executions: the young generation always, the middle one once it has
    been through ``threshold1`` young collections, the oldest once the middle one has been
    through ``threshold2`` (``gc.get_threshold()``; a threshold of 0 collects it every time)."""
    _, t1, t2 = gc.get_threshold()
    gc.collect(0)
    if gc.get_count()[1] >= t1:
        gc.collect(1)
        if gc.get_count()[2] >= t2:
            gc.collect(2)
