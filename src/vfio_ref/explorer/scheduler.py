"""The controlled scheduler: model threads as greenlets, one running at a time.

Every scheduling point of the substrate (``k.sched.point(op, obj, ready, field)``) comes
here.  The running thread records its pending operation; the scheduler computes which
threads are enabled (not finished, and their pending operation ready: a free mutex, a true
wait condition...) and asks its *strategy* which one runs next.  Continuing the running
thread costs no switch at all; running another is one greenlet switch.  A point where only
one thread is enabled, or before a release operation (unlock, up_read, wake_up), is not a
choice; every other point is a *choice point*, numbered from 0, and a schedule is the list of
choices made at them.

When the strategy asks for them (``strategy.records``), the scheduler also cuts the
execution into *steps* (:class:`~.records.Event`): everything a thread does from one of its
points to the next, with every access it made (the operation, plain member accesses of
watched structs, kfree, releases, thread start/end/join), and hands each finished step to
the strategy.  A blocked thread's wait condition is evaluated with its reads recorded, so a
step that makes it true is known to depend on the wait.

All threads blocked while some have not finished is a deadlock: the scheduler records every
blocked thread with what it waits for, who holds it, and where it is.

Threads never run concurrently, so the substrate's real locks are not used here: a kernel
built with ``sched=`` keeps lock state in plain fields.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit, greenlet

from ..kernel import slab
from ..kernel.core import ALL_CAPS, Kernel, KernelFault, Task
from ..kernel.sched import ACQUIRE_OPS, COUNTER_OPS, READ_OPS, RELEASE_OPS

if TYPE_CHECKING:
    from .strategy import Strategy

from ..kernel.kexpr import kexpr
from .records import (
    ACQ,
    CTR,
    FREE,
    OP,
    PLAIN,
    REL,
    SYNC,
    TRY,
    Access,
    Choice,
    ChoicePoint,
    Event,
    Loc,
    Name,
    thread_loc,
)
from .tracing import FrameInfo, counter_of, describe_step, frame_info, location_of


class StepLimitExceeded(Exception):
    """An execution ran more scheduling points than the explorer allows (a livelock?)."""


class ScheduleMismatch(Exception):
    """A replayed schedule does not fit the program: it names a thread that cannot run."""


# -- greenlet pool --------------------------------------------------------------------------
# The first switch into a new greenlet costs about 8 us here, a switch into a parked one about
# 0.3 us, and every schedule starts two or three threads: finished threads' greenlets are kept
# parked, per OS thread, and given the next thread body to run.

_pools = threading.local()
_POOL_MAX = 64


def _pool() -> list[Any]:
    p: list[Any] | None = getattr(_pools, "free", None)
    if p is None:
        p = _pools.free = []
    return p


def _worker(body: Callable[[], None] | None) -> None:
    """A pooled greenlet's life: run a body, park (handing its result or exception to the
    parent, as a greenlet ending would), run the next body it is given."""
    me = greenlet.getcurrent()
    while body is not None:
        failure: BaseException | None = None
        try:
            body()
        except BaseException as e:  # handed to the parent, as if this greenlet had died of it
            failure = e
        body = None
        free = _pool()
        if len(free) < _POOL_MAX:
            free.append(me)
        if failure is not None:
            body = me.parent.throw(failure)
        else:
            body = me.parent.switch()


def _take_greenlet(parent: Any) -> Any:
    free = _pool()
    if free:
        g = free.pop()
        g.parent = parent
        return g
    return greenlet(_worker, parent=parent)


def _give_back(g: Any) -> None:
    """Return a greenlet that was handed out but never entered."""
    free = _pool()
    if len(free) < _POOL_MAX and g not in free:
        free.append(g)


_new_tuple = tuple.__new__


def _ready(r: Callable[[], bool] | None) -> bool:
    """Whether a pending operation can go ahead.  A condition that reads freed memory (a
    thread waiting on a mutex inside a freed struct) lets the thread run: it then meets the
    use-after-free itself, in its own context, where it is reported."""
    if r is None:
        return True
    try:
        return r()
    except KernelFault:
        return True


class SimThread:
    """A model thread: a greenlet plus the operation it is about to perform."""

    __slots__ = (
        "body",
        "created",
        "daemon",
        "done",
        "entered",
        "fault",
        "field",
        "fn",
        "glet",
        "index",
        "joins",
        "name",
        "obj",
        "op",
        "pred",
        "ready",
        "seq",
        "started",
        "task",
    )

    def __init__(self, index: int, name: str, task: Task, fn: Callable[[], None], daemon: bool) -> None:
        self.index = index
        self.name = name
        self.task = task
        self.fn = fn
        self.daemon = daemon
        self.done = False
        self.started = False
        self.fault: KernelFault | None = None
        self.op = "start"
        self.obj: Any = None
        self.field = ""
        self.ready: Callable[[], bool] | None = None
        self.glet: Any = None
        self.body: Callable[[], None] | None = None  # what the greenlet runs when first entered
        self.entered = False
        self.seq = 0  # steps taken
        self.created = 0  # objects built (they are named (index, created))
        self.pred: list[Access] = []  # what its wait condition read when last evaluated
        self.joins: tuple[int, ...] = ()  # the threads a pending join waits for

    def enabled(self) -> bool:
        if self.done:
            return False
        return _ready(self.ready)

    def __repr__(self) -> str:
        return f"<SimThread {self.index} {self.name} {'done' if self.done else self.op}>"


@dataclass
class TraceEvent:
    """One step of a traced execution.

    ``functions`` is the whole call chain (kernel functions, innermost first); ``caller`` the
    kernel function that made the operation; ``expr`` the kernel expression it touched
    (``group->users``); ``before`` / ``after`` its value around the operation (a counter, a
    field); ``what`` all of it as one line.  ``mark`` sets a step apart: ``kfree``,
    ``fault`` (the faulting access), ``inject`` (an injected failure), ``race`` (one of the
    two accesses of a data race).  ``user`` names the user-space call a step starts
    (``ioctl(VFIO_GROUP_SET_CONTAINER)``); ``vfio`` is False for driver-core traffic no vfio.c
    function takes part in (folded in the swimlanes); ``location`` is what a data race on
    the touched member would name (``VfioGroup.container``)."""

    step: int
    thread: int
    op: str
    what: str
    functions: tuple[str, ...]
    switch: str = ""  # "" | "preempt" | "block" | "exit" : how control came to this thread
    caller: str = ""
    expr: str = ""
    before: str = ""
    after: str = ""
    mark: str = ""
    user: str = ""
    vfio: bool = True
    location: str = ""
    oid: int = 0  # id() of the object touched, to follow one object through a trace


@dataclass
class DeadlockInfo:
    threads: list[str] = field(default_factory=list)
    cycle: list[str] = field(default_factory=list)  # T1, T2, T1: each waits for a lock the next holds
    waits: list[str] = field(default_factory=list)  # what each blocked thread waits in, e.g. mutex_lock(A)
    dead_holders: list[str] = field(default_factory=list)  # holders that died of a fault

    def __str__(self) -> str:
        lines = ["deadlock: all threads blocked:", *(f"  {t}" for t in self.threads)]
        if self.cycle:
            lines.append("  wait-for cycle: " + " -> ".join(self.cycle))
        return "\n".join(lines)


def _find_cycle(waits: dict[str, list[str]]) -> list[str]:
    """A cycle in the wait-for graph (thread -> threads holding what it waits for), as
    [a, b, ..., a]; empty when there is none (say, a wait for a thread that never wakes it)."""
    for start in waits:
        path = [start]
        seen = {start}
        node = start
        while True:
            nxt = next((h for h in waits.get(node, []) if h in waits), None)
            if nxt is None:
                break
            if nxt in seen:
                return [*path[path.index(nxt) :], nxt]
            path.append(nxt)
            seen.add(nxt)
            node = nxt
    return []


FORCED: Choice = Choice((), -1, True, -1)  # a choice point the running thread kept without asking


def describe(op: str, obj: Any) -> str:
    """A short description of an operation for traces and deadlock reports: the operation
    and the kernel expression it touches (``mutex_lock(&vfio.group_lock)``), with a
    counter's value."""
    if obj is None:
        return op
    lc = getattr(obj, "lock_class", None)
    if isinstance(lc, str):  # a lock is named by its lockdep class, as lockdep prints it
        return f"{op}({lc})"
    v = counter_of(obj)
    text = f"{op}(&{kexpr(obj)})"
    return text if v is None else f"{text} ({v})"


class ControlledScheduler:
    """Runs one execution of a program under a strategy."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        trace: bool = False,
        max_steps: int = 200_000,
    ) -> None:
        self.strategy = strategy
        self.tracing = trace
        self.max_steps = max_steps
        self.kernel: Kernel | None = None
        self.threads: list[SimThread] = []  # every thread spawned; threads[i].index == i
        self.live: list[SimThread] = []
        self.current: SimThread | None = None
        self.step_no = 0
        # One record per numbered choice point, in order (FORCED: kept without asking).
        self.choices: list[Choice] = []
        self._trace: list[TraceEvent] = []
        self._unsettled: tuple[TraceEvent, Callable[[], str]] | None = None
        self.deadlock: DeadlockInfo | None = None
        self.step_limit_hit = False
        self._main: Any = None
        self._pending_switch = ""
        self.preemptions = 0
        self._slow = trace
        # True while the scheduler evaluates wait conditions: reads they make are not
        # operations of any thread (no scheduling point, no race check); with ``pred`` set
        # they are collected there.
        self.evaluating = False
        self.pred: list[Access] | None = None
        # Set by a strategy when every further choice is "the running thread goes on if it
        # can" (a search that has spent its preemption budget and has nothing asleep).
        self.forced = False
        # Steps and their accesses, when the strategy records them.  A strategy that replays
        # a prefix it has already seen starts recording where the prefix ends
        # (start_recording); steps are numbered from the start either way.
        self.recording = strategy.records
        # Structs are built watched (their member accesses reported) whenever the strategy
        # may record, from the start: an object built while a replayed prefix is not
        # recorded is touched later, when it is.
        self.watching = strategy.watches
        self.events: list[Event] = []  # the recorded steps
        self.n_events = 0
        self.cur_ev: Event | None = None
        self.last_choice = -1  # the numbered choice point that started the next step, or -1
        self.disabled: list[SimThread] = []  # live threads that could not run at the last decision
        self._names: dict[int, Any] = {}
        self._keep: list[object] = []
        self._created_early = 0
        self.lazy_names = 0
        self._priming: SimThread | None = None
        self._prime_return: Any = None

    # -- naming objects ------------------------------------------------------------------

    def created(self, obj: object) -> None:
        """``obj`` was built by the running thread: name it (thread, n-th object it built).
        Names are only needed by a strategy that records steps."""
        if not self.watching:
            return
        cur = self.current
        if cur is None:
            name: Name = (-1, self._created_early)
            self._created_early += 1
        else:
            name = (cur.index, cur.created)
            cur.created += 1
        self._names[id(obj)] = name
        self._keep.append(obj)  # so its id cannot be reused by another object

    def name(self, obj: object) -> Name:
        n = self._names.get(id(obj))
        if n is None:
            # Never announced (a model object built without the substrate's hooks): named on
            # first touch, which is not stable across executions.  Counted and reported.
            n = self._names[id(obj)] = (-2, self.lazy_names)
            self.lazy_names += 1
            self._keep.append(obj)
        return n

    def oid(self, obj: object) -> Name:
        return self.name(obj)

    # -- what steps touch ----------------------------------------------------------------

    def access(self, obj: object, member: str, write: bool) -> None:
        """A plain access of a watched struct's member by the running thread."""
        if self.evaluating:
            pred = self.pred
            if pred is not None and not write:
                pred.append(((self.name(obj), member), False, PLAIN))
            return
        ev = self.cur_ev
        if ev is not None:
            n = self._names.get(id(obj))
            ev.accesses.append(((n if n is not None else self.name(obj), member), write, PLAIN))

    def freed(self, obj: object, members: list[object]) -> None:
        """kfree of ``obj``: the running step writes all of it and of what is embedded in it."""
        ev = self.cur_ev
        if ev is not None and self.recording:
            top = self.name(obj)
            ev.accesses.append(((top, "*"), True, FREE))
            names = self._names
            for i, o in enumerate(members):
                n: Any = names.get(id(o))
                if n is None:
                    # A member that never announced itself (a struct with no kernel of its own,
                    # say a notifier_block): named after its place in the freed object.
                    n = names[id(o)] = ("in", top, i)
                    self._keep.append(o)
                ev.accesses.append(((n, "*"), True, FREE))

    def blocked_locs(self) -> set[Loc]:
        """What the threads that could not run at the last decision wait on: the location of
        their pending operation (a lock, a wait queue, the ends of the threads a join waits
        for) and what their wait condition read.  A step that changes one of these can make
        such a thread runnable."""
        out: set[Loc] = set()
        for t in self.disabled:
            if t.op == "join":
                for j in t.joins:
                    out.add(thread_loc(j, "exit"))
            elif t.obj is not None:
                out.add((self.name(t.obj), t.field))
            for a in t.pred:
                out.add(a[0])
        return out

    def _begin_event(self, th: SimThread) -> None:
        """``th`` performs its pending operation now: a new step starts."""
        if not self.recording:
            th.seq += 1
            self.n_events += 1
            return
        ev = self._make_event(th)
        self.events.append(ev)
        self.cur_ev = ev
        th.seq += 1
        self.n_events += 1

    def _make_event(self, th: SimThread) -> Event:
        """The step ``th`` would take now, with the accesses known at its start."""
        op = th.op
        acc: list[Access] = []
        if th.seq == 0 and th.index != 0:
            acc.append((thread_loc(th.index, "spawn"), False, SYNC))
        if op == "join":
            for t in th.joins:
                acc.append((thread_loc(t, "exit"), False, SYNC))
        elif th.obj is not None:
            ctr = COUNTER_OPS.get(op)
            if ctr is not None:
                obj = th.obj
                value = _counter_value(obj)
                if value is not None:
                    acc.append(((self.name(obj), th.field), True, CTR))
                    ev = Event(self.n_events, th.index, th.seq + 1, acc, self.last_choice)
                    ev.counter = (ctr[0], ctr[1], value)
                    if th.pred:
                        acc.extend(th.pred)
                        th.pred = []
                    return ev
            kind = ACQ if op in ACQUIRE_OPS else TRY if op == "mutex_trylock" else OP
            acc.append(((self.name(th.obj), th.field), op not in READ_OPS, kind))
        if th.pred:
            acc.extend(th.pred)
            th.pred = []
        return Event(self.n_events, th.index, th.seq + 1, acc, self.last_choice)

    def start_recording(self) -> None:
        """From the next step on, record every step (a strategy calls this where the prefix
        it replays ends).  The wait conditions of the threads are read again, recorded."""
        if self.recording:
            return
        self.recording = True
        if self.watching:
            slab.WATCH.report = self
            slab.watch_members(True)
        self.evaluating = True
        disabled = []
        for t in self.live:
            if not self._evaluate(t):
                disabled.append(t)
        self.evaluating = False
        self.disabled = disabled

    def stop_recording(self) -> None:
        self.recording = False
        if slab.WATCH.report is self:
            slab.WATCH.report = None
            slab.watch_members(False)
        self.cur_ev = None

    def discard_records(self) -> None:
        """Drop the execution's step and choice records and the object names (the search
        loop, once it has counted the execution).  They hang off the scheduler, which is part
        of the execution's one big cycle: dropped here they are freed by reference counting,
        and the collector's pass after the execution walks half as many objects (lookup_vs_last_put
        at the base, reduced: 1,057 to 582 per execution, 0.55 ms to 0.37 ms).  A strategy
        keeping the last execution's steps (source-DPOR) holds its own reference to them."""
        self.events = []
        self.choices = []
        self._names = {}
        self._keep = []

    def _end_event(self) -> None:
        ev = self.cur_ev
        if ev is not None:
            self.cur_ev = None
            self.strategy.executed(self, ev)

    def _check(self, ready: Callable[[], bool] | None) -> bool:
        """Whether a pending operation can go ahead, read as the scheduler (a wait condition's
        reads are not operations of the thread that waits)."""
        if ready is None:
            return True
        self.evaluating = True
        try:
            return _ready(ready)
        finally:
            self.evaluating = False

    def _evaluate(self, t: SimThread) -> bool:
        """Whether ``t``'s pending operation can go ahead; with recording on, what its wait
        condition read is kept on the thread."""
        r = t.ready
        if r is None:
            return True
        if not self.recording:
            try:
                return r()
            except KernelFault:
                return True
        pred: list[Access] = []
        self.pred = pred
        try:
            ok = r()
        except KernelFault:  # see _ready
            ok = True
        finally:
            self.pred = None
        t.pred = pred
        return ok

    # -- threads ----------------------------------------------------------------------------

    def attach(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def spawn(
        self, name: str, fn: Callable[[], None], *, daemon: bool = False, caps: frozenset[str] = ALL_CAPS
    ) -> SimThread:
        k = self.kernel
        assert k is not None
        task = k.new_task(name, caps)
        th = SimThread(len(self.threads), name, task, fn, daemon)
        th.body = self._thread_body(th)
        th.glet = _take_greenlet(self._main)
        self.threads.append(th)
        self.live.append(th)
        parent = self.current
        if k.hb is not None and parent is not None:
            k.hb.fork(parent.task, task)
        if parent is not None:
            ev = self.cur_ev
            if ev is not None:
                ev.accesses.append((thread_loc(th.index, "spawn"), True, SYNC))
            self._prime(th, parent)
        return th

    def _prime(self, th: SimThread, parent: SimThread) -> None:
        """Run a new thread up to its first scheduling point, inside the spawner's step.

        What the thread does before its first operation becomes part of the spawner's step
        (its accesses are recorded there), and the scheduler then knows the thread's real
        first operation instead of an opaque "start" that would conflict with everything.
        """
        k = self.kernel
        assert k is not None
        me = greenlet.getcurrent()
        th.glet.parent = me
        self._priming = th
        self._prime_return = me
        self.current = th
        k._sched_task = th.task
        try:
            self._enter(th)
        finally:
            self._priming = None
            self.current = parent
            k._sched_task = parent.task
            if not th.done:
                th.glet.parent = self._main
            self._pending_switch = ""

    def spawn_daemon(self, name: str, fn: Callable[[], None]) -> None:
        self.spawn(name, fn, daemon=True)

    def _thread_body(self, th: SimThread) -> Callable[[], None]:
        def body() -> None:
            th.started = True
            try:
                th.fn()
            except GreenletExit:
                return
            except KernelFault as e:
                th.fault = e
                k = self.kernel
                assert k is not None
                k.record_fault(e)
            finally:
                th.done = True
                if th in self.live:
                    self.live.remove(th)
                self._pending_switch = "exit"
                if self.recording and self.current is th:
                    ev = self.cur_ev
                    if ev is not None:
                        ev.accesses.append((thread_loc(th.index, "exit"), True, SYNC))
                    self._end_event()

        return body

    def join(self, *threads: SimThread) -> None:
        """Block the running thread until ``threads`` have finished (thread end -> join edge)."""

        def all_done() -> bool:
            for t in threads:
                if not t.done:
                    return False
            return True

        cur = self.current
        if cur is not None:
            cur.joins = tuple(t.index for t in threads)
        self.point("join", None, all_done)
        k = self.kernel
        if k is not None and k.hb is not None and cur is not None:
            for t in threads:
                k.hb.join(cur.task, t.task)

    # -- the scheduling point -----------------------------------------------------------------

    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None, field: str = "") -> None:
        if self.evaluating:
            pred = self.pred
            if pred is not None and obj is not None:
                pred.append(((self.name(obj), field), False, OP))
            return
        cur = self.current
        assert cur is not None
        if cur is self._priming:
            # A new thread reached its first operation: note it and hand back to the spawner.
            cur.op = op
            cur.obj = obj
            cur.field = field
            cur.ready = ready
            self._prime_return.switch()
            # Chosen by the scheduler later: perform the operation.
            self._begin_event(cur)
            if self._slow:
                self._proceed(cur, op, obj)
            return
        n = self.step_no + 1
        self.step_no = n
        if n > self.max_steps:
            self.step_limit_hit = True
            raise StepLimitExceeded(f"more than {self.max_steps} scheduling points in one execution")
        if op in RELEASE_OPS:
            if self.recording:
                ev = self.cur_ev
                if ev is not None:
                    ev.accesses.append(((self.name(obj), field), op not in READ_OPS, REL))
            if self._slow:
                self._proceed(cur, op, obj)
            return
        if self.recording:
            self._end_event()
        cur.op = op
        cur.obj = obj
        cur.field = field
        cur.ready = ready
        live = self.live
        if self.forced and self._check(ready):
            # The search has spent its preemptions and the running thread can go on, so it
            # does, without asking the strategy.  The point still counts as a choice point
            # when another thread could run, so choice numbers match a replay's.
            self.evaluating = True
            for t in live:
                if t is not cur and _ready(t.ready):
                    self.choices.append(FORCED)
                    break
            self.evaluating = False
            self._begin_event(cur)
            if self._slow:
                self._proceed(cur, op, obj)
            return
        recording = self.recording
        if len(live) == 1 and not recording:
            if self._check(ready):
                self.last_choice = -1
                self._begin_event(cur)
                if self._slow:
                    self._proceed(cur, op, obj)
                return
            self._block_forever()
            return
        enabled = []
        self.evaluating = True
        if recording:
            disabled = []
            for t in live:
                if self._evaluate(t):
                    enabled.append(t)
                else:
                    disabled.append(t)
            self.disabled = disabled
        else:
            for t in live:
                r = t.ready
                if r is None:
                    enabled.append(t)
                else:
                    try:
                        if r():
                            enabled.append(t)
                    except KernelFault:  # see _ready
                        enabled.append(t)
        self.evaluating = False
        if not enabled:
            self._block_forever()
            return
        cur_enabled = cur in enabled
        chosen = self._decide(enabled, cur, cur_enabled)
        if chosen is not cur:
            if cur_enabled:
                self.preemptions += 1
                self._pending_switch = "preempt"
            else:
                self._pending_switch = "block"
            self._switch_to(chosen)
            # Somebody switched back to us: we are enabled and chosen.
        self._begin_event(cur)
        if self._slow:
            self._proceed(cur, op, obj)

    def _decide(self, enabled: list[SimThread], cur: SimThread, cur_enabled: bool) -> SimThread:
        """Who runs next among ``enabled`` (ascending): a numbered choice point when two or
        more can run; the strategy is asked there, and where one can run while it has
        threads asleep."""
        if len(enabled) == 1:
            self.last_choice = -1
            if self.strategy.sleeping:
                self.strategy.choose(self, ChoicePoint(-1, (enabled[0].index,), cur.index, cur_enabled))
            return enabled[0]
        # Two runnable threads is the common case: their indices without a comprehension's call.
        tids = (enabled[0].index, enabled[1].index) if len(enabled) == 2 else tuple([t.index for t in enabled])
        choices = self.choices
        i = len(choices)
        self.last_choice = i
        ci = cur.index
        # tuple.__new__ builds the records without NamedTuple's Python-level __new__ (a hot path).
        c = self.strategy.choose(self, _new_tuple(ChoicePoint, (i, tids, ci, cur_enabled)))
        choices.append(_new_tuple(Choice, (tids, ci, cur_enabled, c)))
        if c == ci and cur_enabled:
            return cur
        if c in tids:
            return self.threads[c]  # threads[i].index == i
        raise ScheduleMismatch(f"strategy chose thread {c}, which cannot run; runnable: {list(tids)}")

    def _proceed(self, cur: SimThread, op: str, obj: object) -> None:
        """The running thread performs ``op`` now: trace it."""
        if self.tracing:
            self.evaluating = True  # describing the operation is not an access of the thread
            try:
                self._settle()
                field = "" if op in RELEASE_OPS else cur.field
                fi = frame_info(3)
                caller, text, expr, before, reader = describe_step(op, obj, field, fi.chain)
                ev = TraceEvent(
                    self.step_no, cur.index, op, text, fi.chain, self._pending_switch, caller, expr, before,
                    vfio=fi.vfio, location=location_of(obj, field), oid=id(obj) if obj is not None else 0,
                )
                self._user_mark(cur, ev, fi)
                if reader is None:
                    if before:
                        ev.what = f"{text} ({before})"
                else:
                    self._unsettled = (ev, reader)
                self._trace.append(ev)
            finally:
                self.evaluating = False
            self._pending_switch = ""

    # -- tracing helpers ------------------------------------------------------------------------

    @property
    def trace(self) -> list[TraceEvent]:
        """The traced steps so far (each step's value after it is filled in when read)."""
        self._settle()
        return self._trace

    @trace.setter
    def trace(self, events: list[TraceEvent]) -> None:
        self._trace = events
        self._unsettled = None

    def _settle(self) -> None:
        """The operation of the last traced step has been done: note the value it left."""
        pending = getattr(self, "_unsettled", None)
        if pending is not None:
            self._unsettled = None
            ev, reader = pending
            ev.after = reader()
            ev.what = f"{ev.what} {ev.before}\u2192{ev.after}" if ev.op != "WRITE_ONCE" else (
                f"{ev.what} {ev.after} (was {ev.before})"
            )

    def _user_mark(self, cur: SimThread, ev: TraceEvent, fi: FrameInfo) -> None:
        """Mark ``ev`` when it is the first step of a user-space call of its thread."""
        calls: dict[int, int] = self.__dict__.setdefault("_user_calls", {})
        if fi.user and calls.get(cur.index) != fi.user_frame:
            ev.user = fi.user
        calls[cur.index] = fi.user_frame

    def note(self, mark: str, what: str = "", *, obj: object = None) -> None:
        """Trace an event of the running thread that is not a scheduling point: a kfree
        (``obj``), an injected failure.  Only when tracing, never while evaluating wait
        conditions."""
        if not self.tracing or self.evaluating:
            return
        cur = self.current
        if cur is None:
            return
        self.evaluating = True
        try:
            expr = ""
            if obj is not None:
                expr = kexpr(obj)
                what = what or f"{mark}({expr})"
            self._settle()
            fi = frame_info(2)
            chain = tuple(f for f in fi.chain if f not in ("kfree", "should_fail"))
            ev = TraceEvent(
                self.step_no, cur.index, mark, what, fi.chain, "", chain[0] if chain else "?", expr,
                mark=mark, vfio=fi.vfio,
            )
            self._user_mark(cur, ev, fi)
            self._trace.append(ev)
        finally:
            self.evaluating = False

    def _switch_to(self, th: SimThread) -> None:
        self.current = th
        k = self.kernel
        assert k is not None
        k._sched_task = th.task
        if th.entered:
            th.glet.switch()
        else:
            self._enter(th)

    @staticmethod
    def _enter(th: SimThread) -> None:
        """The first switch into a thread: its pooled greenlet starts running its body."""
        th.entered = True
        body, th.body = th.body, None
        th.glet.switch(body)

    def _block_forever(self) -> None:
        """No thread can run: hand control to the main loop, which will find the deadlock."""
        self._main.switch()
        # Only resumed by being thrown GreenletExit.

    # -- the execution ----------------------------------------------------------------------

    def run(self, main_fn: Callable[[], None], name: str = "main") -> None:
        """Run ``main_fn`` as the first thread and everything it spawns, to the end."""
        self._main = greenlet.getcurrent()
        k = self.kernel
        assert k is not None
        if self.watching:
            slab.WATCH.sched = self
            slab.WATCH.report = self if self.recording else None
            slab.WATCH.objs = []
        first = self.spawn(name, main_fn)
        self.current = first
        try:
            k._sched_task = first.task
            self._begin_event(first)
            self._enter(first)
            while True:
                live = self.live
                if not live:
                    break
                self.evaluating = True
                enabled = [t for t in live if not t.done and self._evaluate(t)]
                self.evaluating = False
                if self.recording:
                    self.disabled = [t for t in live if t not in enabled]
                if not enabled:
                    if self.recording:
                        self.strategy.finished(self, self._pending_steps())
                    if all(t.daemon for t in live):
                        break
                    self._record_deadlock()
                    break
                prev = self.current
                assert prev is not None
                chosen = self._decide(enabled, prev, False)
                if not self._pending_switch:
                    self._pending_switch = "block"
                self._switch_to(chosen)
        except StepLimitExceeded:
            self.step_limit_hit = True
        finally:
            if slab.WATCH.sched is self:
                slab.WATCH.sched = None
                slab.WATCH.report = None
                slab.WATCH.objs = []
            self._kill_all()
            k._sched_task = None

    def _pending_steps(self) -> list[Event]:
        """The steps the threads still blocked at the end would take (not executed)."""
        saved_choice = self.last_choice
        self.last_choice = -1
        out = [self._make_event(t) for t in self.live]
        self.last_choice = saved_choice
        return out

    def _record_deadlock(self) -> None:
        info = DeadlockInfo()
        waits: dict[str, list[str]] = {}
        for t in self.live:
            holders = []
            h = getattr(t.obj, "holders", None)
            if h is not None:
                holders = [x.name for x in h()]
            waits[t.name] = holders
            faulted = {th.task.name for th in self.threads if th.done and th.fault is not None}
            info.dead_holders.extend(n for n in holders if n in faulted and n not in info.dead_holders)
            holders = [f"{n} (which died of a fault holding it)" if n in faulted else n for n in holders]
            where = " <- ".join(_greenlet_backtrace(t.glet))
            what = describe(t.op, t.obj)
            target = getattr(t.obj, "lock_class", type(t.obj).__name__)
            info.waits.append(f"{t.op}({target})" if t.obj is not None else t.op)
            held = ", ".join(getattr(x.lock, "lock_class", "?") for x in t.task.held) or "nothing"
            line = f"{t.name}: blocked in {what}"
            if holders:
                line += f" held by {', '.join(holders)}"
            line += f"; holds {held}; at {where}"
            info.threads.append(line)
        info.cycle = _find_cycle(waits)
        self.deadlock = info

    def _kill_all(self) -> None:
        for t in self.threads:
            g = t.glet
            if g is not None:
                if not t.entered:
                    _give_back(g)  # handed out, never started
                elif not t.done:
                    with contextlib.suppress(GreenletExit):
                        g.throw(GreenletExit)
            t.done = True
        self.live = []


def _counter_value(obj: Any) -> int | None:
    """The value of a refcount_t or atomic_t about to be changed (None for anything else)."""
    for slot in ("refs", "counter"):
        try:
            v = object.__getattribute__(obj, slot)
        except AttributeError:
            continue
        return v if isinstance(v, int) else None
    return None


def _greenlet_backtrace(g: Any) -> list[str]:
    """Kernel function names on a suspended greenlet's stack, innermost first."""
    f = getattr(g, "gr_frame", None)
    out: list[str] = []
    from ..kernel.core import _is_model_frame

    while f is not None and len(out) < 8:
        name = f.f_code.co_name
        if _is_model_frame(f) and not name.startswith("_") and name not in ("point", "<lambda>"):
            out.append(name)
        f = f.f_back
    return out
