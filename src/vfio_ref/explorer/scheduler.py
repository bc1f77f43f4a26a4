"""The controlled scheduler: model threads as greenlets, one running at a time.

Every scheduling point of the substrate (``k.sched.point(op, obj, ready)``) comes here.  The
running thread records its pending operation; the scheduler computes which threads are
enabled (not finished, and their pending operation ready: a free mutex, a true wait
condition...) and asks its *strategy* which one runs next.  Continuing the running thread
costs no switch at all; running another is one greenlet switch.  A point where only one
thread is enabled, or before a release operation (unlock, up_read, wake_up), is not a
choice; every other point is a *choice point*, numbered from 0, and a schedule is the list of
choices made at them.

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
from typing import Any, Protocol

from greenlet import GreenletExit, greenlet

from ..kernel.core import ALL_CAPS, Kernel, KernelFault, Task, backtrace
from ..kernel.sched import READ_OPS, RELEASE_OPS


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


# Frames of the substrate's own lock implementation: a trace names the kernel function that
# took the lock, not the helper it went through.
_PRIMITIVES = frozenset(
    {"mutex_lock", "mutex_unlock", "spin_lock", "spin_unlock", "lock", "unlock", "down_read", "up_read",
     "down_write", "up_write", "mutex_trylock"}
)


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
        "daemon",
        "done",
        "entered",
        "fault",
        "fn",
        "glet",
        "index",
        "name",
        "obj",
        "op",
        "ready",
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
        self.ready: Callable[[], bool] | None = None
        self.glet: Any = None
        self.body: Callable[[], None] | None = None  # what the greenlet runs when first entered
        self.entered = False

    def enabled(self) -> bool:
        if self.done:
            return False
        return _ready(self.ready)

    def __repr__(self) -> str:
        return f"<SimThread {self.index} {self.name} {'done' if self.done else self.op}>"


@dataclass
class TraceEvent:
    step: int
    thread: int
    op: str
    what: str
    functions: tuple[str, ...]
    switch: str = ""  # "" | "preempt" | "block" | "exit" : how control came to this thread


@dataclass
class DeadlockInfo:
    threads: list[str] = field(default_factory=list)
    cycle: list[str] = field(default_factory=list)  # T1, T2, T1: each waits for a lock the next holds

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


Choice = tuple[list["SimThread"], "SimThread", bool, "SimThread"]
FORCED: Choice = ([], None, True, None)  # type: ignore[assignment]


class Strategy(Protocol):
    def choose(self, sched: ControlledScheduler, enabled: list[SimThread], cur: SimThread) -> SimThread: ...


def describe(op: str, obj: Any) -> str:
    """A short, human description of an operation for traces: what it touches and its value."""
    if obj is None:
        return op
    cls = type(obj).__name__
    if hasattr(obj, "refs") and cls.endswith("Refcount"):
        c = getattr(obj, "container", None)
        owner = type(c).__name__ if c is not None else "refcount"
        return f"{op}({owner} refs={obj.refs})"
    if cls.endswith("Atomic"):
        c = getattr(obj, "container", None)
        return f"{op}({type(c).__name__ if c is not None else 'atomic'}={obj.counter})"
    lc = getattr(obj, "lock_class", None)
    if lc is not None:
        return f"{op}({lc})"
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return f"{op}({name})"
    return f"{op}({cls})"


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
        self.threads: list[SimThread] = []
        self.live: list[SimThread] = []
        self.current: SimThread | None = None
        self.step_no = 0
        # One tuple per choice point: (enabled threads, running thread, whether it could go
        # on, chosen thread).
        # FORCED marks a choice point the running thread kept without asking the strategy.
        self.choices: list[Choice] = []
        self.trace: list[TraceEvent] = []
        self.deadlock: DeadlockInfo | None = None
        self.step_limit_hit = False
        self._main: Any = None
        self._pending_switch = ""
        self.preemptions = 0
        # Called with ((op, object number, is_write), thread) each time a thread performs an
        # operation.
        self.on_exec: Callable[[tuple[str, int, bool], int], None] | None = None
        self._slow = trace
        # True while the scheduler evaluates wait conditions: reads they make are not
        # operations of any thread (no scheduling point, no race check).
        self.evaluating = False
        # Set by a strategy when every further choice is "the running thread goes on if it
        # can" (a search that has spent its preemption budget and has nothing asleep).
        self.forced = False
        self._oids: dict[int, int] = {}
        self._keep: list[object] = []
        self._priming: SimThread | None = None
        self._prime_return: Any = None

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
            sp = getattr(self.strategy, "spawned", None)
            if sp is not None:
                sp(parent.index, th.index)
            self._prime(th, parent)
        return th

    def _prime(self, th: SimThread, parent: SimThread) -> None:
        """Run a new thread up to its first scheduling point, inside the spawner's step.

        What a thread does before its first operation is its own business (no shared state
        is touched without a scheduling point), so running it now changes nothing visible,
        and the scheduler then knows the thread's real first operation instead of an
        opaque "start" that would conflict with everything.
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

        return body

    def join(self, *threads: SimThread) -> None:
        """Block the running thread until ``threads`` have finished (thread end -> join edge)."""

        def all_done() -> bool:
            for t in threads:
                if not t.done:
                    return False
            return True

        self.point("join", None, all_done)
        k = self.kernel
        cur = self.current
        jn = getattr(self.strategy, "joined", None)
        if jn is not None and cur is not None:
            for t in threads:
                jn(cur.index, t.index)
        if k is not None and k.hb is not None and cur is not None:
            for t in threads:
                k.hb.join(cur.task, t.task)

    # -- the scheduling point -----------------------------------------------------------------

    def point(self, op: str, obj: object, ready: Callable[[], bool] | None = None) -> None:
        if self.evaluating:
            return
        cur = self.current
        assert cur is not None
        if cur is self._priming:
            # A new thread reached its first operation: note it and hand back to the spawner.
            cur.op = op
            cur.obj = obj
            cur.ready = ready
            self._prime_return.switch()
            # Chosen by the scheduler later: perform the operation.
            if self._slow:
                self._proceed(cur, op, obj)
            return
        n = self.step_no + 1
        self.step_no = n
        if n > self.max_steps:
            self.step_limit_hit = True
            raise StepLimitExceeded(f"more than {self.max_steps} scheduling points in one execution")
        if op in RELEASE_OPS:
            if self._slow:
                self._proceed(cur, op, obj)
            return
        cur.op = op
        cur.obj = obj
        cur.ready = ready
        live = self.live
        if self.forced and _ready(ready):
            # The search has spent its preemptions and the running thread can go on, so it
            # does, without asking the strategy.  The point still counts as a choice point
            # when another thread could run, so choice numbers match a replay's.
            self.evaluating = True
            for t in live:
                if t is not cur and _ready(t.ready):
                    self.choices.append(FORCED)
                    break
            self.evaluating = False
            if self._slow:
                self._proceed(cur, op, obj)
            return
        if len(live) == 1:
            if ready is None or ready():
                if self._slow:
                    self._proceed(cur, op, obj)
                return
            self._block_forever()
            return
        enabled = []
        self.evaluating = True
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
        if len(enabled) == 1:
            chosen = enabled[0]
            cur_enabled = chosen is cur
        else:
            cur_enabled = cur in enabled
            chosen = self.strategy.choose(self, enabled, cur)
            self.choices.append((enabled, cur, cur_enabled, chosen))
        if chosen is not cur:
            if cur_enabled:
                self.preemptions += 1
                self._pending_switch = "preempt"
            else:
                self._pending_switch = "block"
            self._switch_to(chosen)
            # Somebody switched back to us: we are enabled and chosen.
        if self._slow:
            self._proceed(cur, op, obj)

    def _proceed(self, cur: SimThread, op: str, obj: object) -> None:
        """The running thread performs ``op`` now: trace it, tell the strategy."""
        if self.tracing:
            fns = tuple(f for f in backtrace(3, 6) if f != op and f not in _PRIMITIVES)[:3]
            self.trace.append(
                TraceEvent(self.step_no, cur.index, op, describe(op, obj), fns, self._pending_switch)
            )
            self._pending_switch = ""
        ex = self.on_exec
        if ex is not None:
            n = self._oids.get(id(obj))
            if n is None:
                n = self.oid(obj)
            ex((op, n, op not in READ_OPS), cur.index)

    def oid(self, obj: object) -> int:
        """A number for ``obj`` that is the same in every execution of a schedule prefix:
        objects are numbered in the order they are first touched (Python ids are not
        stable across executions, which rebuild every object)."""
        i = id(obj)
        n = self._oids.get(i)
        if n is None:
            n = self._oids[i] = len(self._oids)
            self._keep.append(obj)  # so its id cannot be reused by another object
        return n

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
        first = self.spawn(name, main_fn)
        self.current = first
        k = self.kernel
        assert k is not None
        try:
            k._sched_task = first.task
            self._enter(first)
            while True:
                live = self.live
                if not live:
                    break
                self.evaluating = True
                enabled = [t for t in live if t.enabled()]
                self.evaluating = False
                if not enabled:
                    if all(t.daemon for t in live):
                        break
                    self._record_deadlock()
                    break
                prev = self.current
                assert prev is not None
                if len(enabled) == 1:
                    chosen = enabled[0]
                else:
                    chosen = self.strategy.choose(self, enabled, prev)
                    self.choices.append((enabled, prev, False, chosen))
                if not self._pending_switch:
                    self._pending_switch = "block"
                self._switch_to(chosen)
        except StepLimitExceeded:
            self.step_limit_hit = True
        finally:
            self._kill_all()
            k._sched_task = None

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
            holders = [f"{n} (which died of a fault holding it)" if n in faulted else n for n in holders]
            where = " <- ".join(_greenlet_backtrace(t.glet))
            what = describe(t.op, t.obj)
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
