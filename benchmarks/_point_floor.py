"""Stand-in scheduling points: what bounds the explorer's point from below.

Issue 13 asks for one scheduling point (with a switch) at most 3x a bare greenlet switch.
These stand-ins run the point's benchmark program (two threads alternating on an atomic
read, 1,000 reads each, the main thread waiting in a join) through a point that does only
part of what the explorer's does, so that bench_paired.py can time each against a greenlet
switch in the same run.  Each rung adds to the one before:

* ``protocol``: the operation's call (``atomic_read`` calls ``sched.point``), the point's
  call, the strategy's ``choose`` on a plain tuple, the choice appended, the switch.  The
  least a point can be that lets a strategy decide and keeps the schedule;
* ``wait``: + the step count and its limit, the release-operation test, the running thread's
  pending operation stored (``op``, ``obj``, ``field``, ``ready``) and the runnable set read
  from every live thread's wait condition (the main thread's is the join's);
* ``records``: + the choice point and the choice as the explorer's typed records
  (``ChoicePoint`` and ``Choice``, built with ``tuple.__new__`` as the explorer builds
  them), the preemption count and the step begun.

The explorer's point does all of that and also tests the modes a search can be in (priming
a new thread, recording steps for the reduction, forced after the preemptions are spent,
tracing), guards a wait condition that faults, and calls ``_decide``, ``_switch_to`` and
``_begin_event`` as functions of their own.  Nothing here is used by the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenlet import greenlet

from vfio_ref.explorer.records import Choice, ChoicePoint

RUNGS = ("protocol", "wait", "records")
READS = 1000  # per thread, as bench_explorer's POINTS_PER_THREAD
_RELEASE_OPS = frozenset({"mutex_unlock", "up_read", "up_write"})
_new = tuple.__new__


class _Thread:
    __slots__ = ("done", "field", "glet", "index", "obj", "op", "ready", "seq")

    def __init__(self, index: int) -> None:
        self.index = index
        self.glet: Any = None
        self.ready: Callable[[], bool] | None = None
        self.op = ""
        self.obj: object = None
        self.field = ""
        self.done = False
        self.seq = 0


class _Switching:
    """As bench_explorer's ``_AlwaysSwitch``: the other runnable thread, with one comparison."""

    def choose(self, sched: object, cp: Any) -> int:
        first: int = cp[1][0]
        return first if first != cp[2] else int(cp[1][1])


class _Sched:
    """The state every rung keeps; ``point`` is each rung's, written out whole (a helper
    for the lines two rungs share would be a call the explorer's point does not make)."""

    def __init__(self) -> None:
        self.strategy = _Switching()
        self.choices: list[Any] = []
        self.threads: list[_Thread] = []  # threads[i].index == i
        self.live: list[_Thread] = []
        self.current: _Thread | None = None
        self.step_no = 0
        self.max_steps = 200_000
        self.evaluating = False
        self.preemptions = 0
        self.n_events = 0
        self.pending_switch = ""

    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        raise NotImplementedError


class _Protocol(_Sched):
    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        cur = self.current
        assert cur is not None
        live = self.live
        if len(live) < 3:  # one worker left (the main thread waits): it goes on
            return
        tids = (live[1].index, live[2].index)  # both workers can run: no wait condition read
        choices = self.choices
        c = self.strategy.choose(self, (len(choices), tids, cur.index))
        choices.append(c)
        th = self.threads[c]
        if th is not cur:
            self.current = th
            th.glet.switch()


class _Wait(_Sched):
    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        if self.evaluating:
            return
        cur = self.current
        assert cur is not None
        n = self.step_no + 1
        self.step_no = n
        if n > self.max_steps:
            raise RuntimeError("step limit")
        if op in _RELEASE_OPS:
            return
        cur.op = op
        cur.obj = obj
        cur.field = field
        cur.ready = ready
        enabled = []
        self.evaluating = True
        for t in self.live:
            r = t.ready
            if r is None or r():
                enabled.append(t)
        self.evaluating = False
        if len(enabled) < 2:
            return
        tids = (enabled[0].index, enabled[1].index)
        choices = self.choices
        c = self.strategy.choose(self, (len(choices), tids, cur.index))
        choices.append(c)
        th = self.threads[c]
        if th is not cur:
            self.current = th
            th.glet.switch()


class _Records(_Sched):
    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        if self.evaluating:
            return
        cur = self.current
        assert cur is not None
        n = self.step_no + 1
        self.step_no = n
        if n > self.max_steps:
            raise RuntimeError("step limit")
        if op in _RELEASE_OPS:
            return
        cur.op = op
        cur.obj = obj
        cur.field = field
        cur.ready = ready
        enabled = []
        self.evaluating = True
        for t in self.live:
            r = t.ready
            if r is None or r():
                enabled.append(t)
        self.evaluating = False
        if len(enabled) >= 2:
            tids = (enabled[0].index, enabled[1].index)
            cur_enabled = cur in enabled
            choices = self.choices
            ci = cur.index
            c = self.strategy.choose(self, _new(ChoicePoint, (len(choices), tids, ci, cur_enabled)))
            choices.append(_new(Choice, (tids, ci, cur_enabled, c)))
            th = self.threads[c]
            if th is not cur:
                if cur_enabled:
                    self.preemptions += 1
                    self.pending_switch = "preempt"
                self.current = th
                th.glet.switch()
        cur.seq += 1
        self.n_events += 1


_CLASSES: dict[str, type[_Sched]] = {"protocol": _Protocol, "wait": _Wait, "records": _Records}


class _Atomic:
    __slots__ = ("counter", "sched")

    def __init__(self, sched: _Sched) -> None:
        self.sched: _Sched | None = sched
        self.counter = 0

    def atomic_read(self) -> int:
        s = self.sched
        if s is not None:
            s.point("atomic_read", self)
        return self.counter


def stand_in_execution(rung: str) -> Callable[[], int]:
    """A call that runs the point benchmark's program once through the ``rung`` stand-in and
    returns how many choices it made (one at every point but the last worker's alone: the
    threads pass 2 * READS points, and every choice switches)."""
    if rung not in _CLASSES:
        raise ValueError(f"point stand-in: no rung {rung!r}; the rungs are {', '.join(RUNGS)}")
    cls = _CLASSES[rung]

    def execution() -> int:
        s = cls()
        main = _Thread(0)
        workers = (_Thread(1), _Thread(2))

        def all_done() -> bool:
            for t in workers:
                if not t.done:
                    return False
            return True

        main.ready = all_done  # the main thread waits in a join on both workers
        atomic = _Atomic(s)

        def body() -> None:
            read = atomic.atomic_read
            for _ in range(READS):
                read()
            me = s.current
            assert me is not None
            me.done = True
            s.live.remove(me)  # and back to the parent, below: it runs the other worker on

        for w in workers:
            w.glet = greenlet(body)
        s.threads = [main, *workers]
        s.live = [main, *workers]
        while True:
            rest = [w for w in workers if not w.done]
            if not rest:
                break
            s.current = rest[0]
            rest[0].glet.switch()
        return len(s.choices)

    return execution
