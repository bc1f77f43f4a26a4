"""Source-DPOR with sleep sets: every equivalence class of schedules, no preemption bound.

Abdulla, Aronis, Jonsson, Sagonas, "Optimal dynamic partial order reduction" (POPL 2014)
and "Source sets: a foundation for optimal dynamic partial order reduction" (JACM 2017),
Algorithm 1 ("source-DPOR").  Two schedules are equivalent when one is the other with
adjacent independent steps swapped (Mazurkiewicz traces); the search runs at least one
schedule of every class, so every outcome reachable by any interleaving (return codes,
findings, final state) is seen, as long as the dependence relation covers everything the
steps do (:class:`~.records.Footprint`: operations, plain member accesses, kfree, thread
start/end/join, and what wait conditions read).

The search keeps a stack of :class:`DporNode`, one per choice point of the current execution.
After each new step e' of thread p the happens-before relation is updated with vector clocks
(one per step), and every step e of another thread that races with e' (they conflict and e
does not already happen before p) is *reversed*: with v = the steps after e that do not
happen after e, followed by e', some *initial* of v (a thread whose first step in v has no
predecessor in v) must be tried at the node before e; if none of the initials is in that
node's backtrack set, one is added.

Deviations from the paper, each for a feature the paper's model does not have:

* locks: a release and the next acquire are never both runnable, so an acquire's race with
  a release is taken to be with the acquire (or successful trylock) that the release ends
  (as nidhugg does); a trylock never waits, so its own race with a release is a real one;
* counters: steps of refcount_t / atomic_t that cannot tell their order apart (away from
  zero) are independent (see ``_counter``);
* blocking: a race whose reversal would start with a thread that cannot run at the node
  before e (e enabled it: spawn, exit/join, a release, a wait condition) is not a race;
* threads still blocked when no thread can run have their pending step checked for races as
  if it had run, so an acquire that never happened is still reversed with the holder's;
* wakeup trees (the paper's optimal variant) are not built: sleep-set-blocked executions
  are cut short and counted as redundant.

Cost: the search is stateless (every execution reruns the program from the start), but the
bookkeeping is not redone for the replayed prefix: the steps of the current execution, their
clocks and the access histories persist across executions, each step with an undo log, and
going back to a node undoes the steps after it.  The scheduler records steps only from the
node where the new execution diverges (``start_recording``).

Invariants (asserted): ``backtrack`` holds only threads enabled at the node; ``done`` is a
subset of ``backtrack``; the replayed prefix meets every node with the same enabled threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import ACQ, CTR, FREE, REL, SYNC, TRY, Access, Event, Footprint, Loc
from .scheduler import ScheduleMismatch
from .strategy import SleepBlocked, default_choice

if TYPE_CHECKING:
    from .records import ChoicePoint
    from .scheduler import ControlledScheduler

Clock = dict[int, int]


@dataclass
class DporNode:
    """A choice point of the current execution (numbered like the scheduler's)."""

    choice: int
    enabled: tuple[int, ...]
    running: int
    running_enabled: bool
    sleep_in: dict[int, Footprint]
    backtrack: set[int]
    chosen: int
    event: int = -1  # the index of the step the chosen thread took here
    done: dict[int, list[Access]] = field(default_factory=dict)  # explored here: their steps
    explored: set[int] = field(default_factory=set)
    _fps: dict[int, Footprint] = field(default_factory=dict)

    def footprint(self, t: int) -> Footprint:
        """The step ``t`` took here, summarised (built when first needed)."""
        fp = self._fps.get(t)
        if fp is None:
            fp = self._fps[t] = Footprint(self.done[t])
        return fp

    def check(self) -> None:
        assert self.backtrack <= set(self.enabled), self
        assert self.explored <= self.backtrack, self
        assert self.chosen in self.backtrack and self.chosen not in self.sleep_in, self


class _History:
    """Who touched one location: the last write and, per thread, the reads since; for a
    counter, the open *segment* of commuting counter steps since then (see _counter)."""

    __slots__ = ("acq", "dn", "prev", "reads", "rel_acq", "seg", "up", "v0", "w")

    def __init__(self) -> None:
        self.w = -1
        self.reads: dict[int, int] = {}
        self.acq: dict[int, int] = {}  # per thread, its last acquire (locks only)
        self.rel_acq: dict[int, int] = {}  # a release step -> the acquire step it ends
        self.seg: list[int] = []  # counter steps since w that commute with one another
        self.prev: list[int] = []  # counter steps since w of segments a read has closed
        self.v0 = 0  # the counter's value when the segment opened
        self.dn = 0  # decrements in the segment
        self.up = 0  # increments in the segment

    def state(self) -> tuple[Any, ...]:
        return (self.w, self.reads, self.seg, self.prev, self.v0, self.dn, self.up)

    def restore(self, st: tuple[Any, ...]) -> None:
        self.w, self.reads, self.seg, self.prev, self.v0, self.dn, self.up = st


def _join(dst: Clock, src: Clock) -> None:
    for t, c in src.items():
        if dst.get(t, 0) < c:
            dst[t] = c


_MISSING = object()
_INT_MAX = 0x7FFFFFFF
# An undo entry: (a dict, a key, the value it had or _MISSING), or (a _History, None, (w, reads)).
Undo = tuple[Any, Any, Any]


class DporStrategy:
    """Source-DPOR with sleep sets over the whole (unbounded) schedule space."""

    def __init__(self) -> None:
        self.records = True
        self.watches = True
        self.nodes: list[DporNode] = []
        self._started = False
        self._exhausted = False
        self.sleeping = False
        self.races = 0
        self.reversals = 0
        # The current execution's steps, and what each changed (to go back past it).
        self.trace: list[Event] = []
        self._undo: list[list[Undo]] = []
        self._tclock: dict[int, Clock] = {}
        self._hist: dict[Loc, _History] = {}
        self._exist: dict[object, _History] = {}
        self._reset()

    def _reset(self) -> None:
        self._i = 0
        self._sleep: dict[int, Footprint] = {}
        self._node: DporNode | None = None
        # The first execution records from its start; the others from where they diverge.
        self._fresh = self.records = not self.nodes
        self.sleeping = False

    # -- the iteration ---------------------------------------------------------------------

    def new_execution(self) -> bool:
        if self._started and not self._advance():
            self._exhausted = True
            return False
        self._started = True
        if self.nodes:
            self._rewind(self.nodes[-1].event)
        self._reset()
        return True

    def _advance(self) -> bool:
        nodes = self.nodes
        while nodes:
            n = nodes[-1]
            n.explored.add(n.chosen)
            todo = sorted(t for t in n.backtrack if t not in n.explored and t not in n.sleep_in)
            if todo:
                n.chosen = todo[0]
                n.check()
                return True
            nodes.pop()
        return False

    def _rewind(self, index: int) -> None:
        """Undo the steps from ``index`` on: the histories are as they were before it."""
        assert index >= 0
        undo = self._undo
        while len(self.trace) > index:
            self.trace.pop()
            for target, key, old in reversed(undo.pop()):
                if key is None:
                    target.restore(old)
                elif old is _MISSING:
                    del target[key]
                else:
                    target[key] = old

    @property
    def complete(self) -> bool:
        return self._exhausted

    def describe(self) -> str:
        return "every schedule (no preemption bound); source-DPOR with sleep sets"

    # -- within an execution ---------------------------------------------------------------

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        sleep = self._sleep
        awake = [t for t in cp.enabled if t not in sleep] if sleep else list(cp.enabled)
        if not awake:
            raise SleepBlocked()
        if cp.number < 0:
            return awake[0]
        i = self._i
        self._i = i + 1
        nodes = self.nodes
        if i < len(nodes):
            node = nodes[i]
            if node.choice != cp.number or node.enabled != cp.enabled or node.running != cp.running:
                raise ScheduleMismatch(
                    f"nondeterministic program: search node {i} was choice point {node.choice} with "
                    f"threads {list(node.enabled)} runnable, now choice point {cp.number} with {list(cp.enabled)}"
                )
            choice = node.chosen
            if i == len(nodes) - 1:
                # The execution diverges here from the previous one: record from now on.
                self._fresh = True
                self._sleep = dict(node.sleep_in)
                sched.start_recording()
        else:
            choice = default_choice(cp, awake)
            node = DporNode(cp.number, cp.enabled, cp.running, cp.running_enabled, dict(sleep), {choice}, choice)
            node.event = sched.n_events  # the chosen thread's step is the next one
            nodes.append(node)
        self._node = node
        return choice

    def executed(self, sched: ControlledScheduler, ev: Event) -> None:
        if not self._fresh:
            return  # a replayed step: already in the trace
        # A step often touches one member many times: the first of each kind of access is
        # enough for the dependence (same location, same read/write, same kind).
        acc = ev.accesses = list(dict.fromkeys(ev.accesses))
        assert ev.index == len(self.trace), (ev.index, len(self.trace))
        node = self._node
        if node is not None and ev.choice == node.choice:
            self._node = None
            assert node.event == ev.index, (node.event, ev.index)
            node.done[node.chosen] = acc
            node._fps.pop(node.chosen, None)
            if node.sleep_in or node.explored:
                fp = Footprint(acc)
                base = dict(node.sleep_in)
                for q in node.explored:
                    if q != node.chosen:
                        base[q] = node.footprint(q)
                self._sleep = {q: f for q, f in base.items() if not f.conflicts(fp)}
            else:
                self._sleep = {}
        elif self._sleep:
            fp = Footprint(acc)
            self._sleep = {q: f for q, f in self._sleep.items() if q != ev.tid and not f.conflicts(fp)}
        self.sleeping = bool(self._sleep)
        self.trace.append(ev)
        undo: list[Undo] = []
        self._undo.append(undo)
        self._process(ev, undo)

    def finished(self, sched: ControlledScheduler, pending: list[Event]) -> None:
        if not self._fresh:
            return  # the same end as last time: its pending steps were checked then
        for ev in pending:
            self._process(ev, None)

    # -- happens-before and races ----------------------------------------------------------

    def _process(self, ev: Event, undo: list[Undo] | None) -> None:
        """Give ``ev`` its vector clock, reverse the races it closes, and (unless ``undo``
        is None: a pending step is only checked) record its accesses, logging in ``undo``
        how to take them back."""
        evs = self.trace
        p = ev.tid
        idx = ev.index
        tclock = self._tclock
        prev = tclock.get(p)
        clock: Clock = dict(prev) if prev is not None else {}
        hist = self._hist
        # A thread's start and a join order the step after the spawn / the joined ends before
        # anything else is looked at: they are the step's own predecessors, never races.
        for loc, write, kind in ev.accesses:
            if kind == SYNC and not write:
                h = hist.get(loc)
                if h is not None and h.w >= 0:
                    _join(clock, evs[h.w].clock)
        base: Clock = dict(clock)
        found: set[int] = set()
        exist = self._exist
        seen: set[object] = set()
        commit = undo is not None
        for loc, write, kind in ev.accesses:
            obj = loc[0]
            # The object exists: every step that touches it reads that; kfree writes it.
            if kind == FREE or obj not in seen:
                ex = exist.get(obj)
                if ex is None:
                    ex = _History()
                    if commit:
                        undo.append((exist, obj, _MISSING))  # type: ignore[union-attr]
                        exist[obj] = ex
                w = ex.w
                if w >= 0:
                    we = evs[w]
                    if we.tid != p:
                        if base.get(we.tid, 0) < we.seq:
                            found.add(w)
                        _join(clock, we.clock)
                if kind == FREE:
                    for t, r in ex.reads.items():
                        if t != p:
                            re = evs[r]
                            if base.get(t, 0) < re.seq:
                                found.add(r)
                            _join(clock, re.clock)
                    if commit:
                        undo.append((ex, None, ex.state()))  # type: ignore[union-attr]
                        ex.w = idx
                        ex.reads = {}
                    continue
                seen.add(obj)
                if commit:
                    undo.append((ex.reads, p, ex.reads.get(p, _MISSING)))  # type: ignore[union-attr]
                    ex.reads[p] = idx
            if kind == SYNC and not write:
                continue
            h = hist.get(loc)
            if h is None:
                h = _History()
                if commit:
                    undo.append((hist, loc, _MISSING))  # type: ignore[union-attr]
                    hist[loc] = h
            if kind == CTR:
                self._counter(h, ev, base, clock, found, undo)
                continue
            if h.seg or h.prev:
                # Any other access to a counter depends on each of its counter steps since the
                # last write: a read closes the open segment, a write ends them all.
                for c in (*h.prev, *h.seg):
                    ce = evs[c]
                    if ce.tid != p:
                        if base.get(ce.tid, 0) < ce.seq:
                            found.add(c)
                        _join(clock, ce.clock)
                if commit:
                    undo.append((h, None, h.state()))  # type: ignore[union-attr]
                    if write:
                        h.seg = []
                        h.prev = []
                    elif h.seg:
                        h.prev = [*h.prev, *h.seg]
                        h.seg = []
            acq = kind == ACQ
            w = h.w
            if w >= 0:
                we = evs[w]
                if we.tid != p:
                    c = h.rel_acq.get(w, w) if acq else w
                    ce = evs[c]
                    if base.get(ce.tid, 0) < ce.seq:
                        found.add(c)
                    _join(clock, we.clock)
            if write:
                for t, r in h.reads.items():
                    if t != p:
                        c = h.rel_acq.get(r, r) if acq else r
                        ce = evs[c]
                        if base.get(ce.tid, 0) < ce.seq:
                            found.add(c)
                        _join(clock, evs[r].clock)
            if commit:
                u = undo
                assert u is not None
                if write:
                    u.append((h, None, h.state()))
                    h.w = idx
                    h.reads = {}
                else:
                    u.append((h.reads, p, h.reads.get(p, _MISSING)))
                    h.reads[p] = idx
                if acq or kind == TRY:
                    u.append((h.acq, p, h.acq.get(p, _MISSING)))
                    h.acq[p] = idx
                elif kind == REL:
                    u.append((h.rel_acq, idx, _MISSING))
                    h.rel_acq[idx] = h.acq.get(p, idx)
        clock[p] = ev.seq
        ev.clock = clock
        if commit:
            undo.append((tclock, p, prev if prev is not None else _MISSING))  # type: ignore[union-attr]
            tclock[p] = clock
        if found:
            self.races += len(found)
            for c in sorted(found):
                self._reverse(evs, c, ev)

    def _counter(
        self, h: _History, ev: Event, base: Clock, clock: Clock, found: set[int], undo: list[Undo] | None
    ) -> None:
        """A counter step (refcount_inc, refcount_dec_and_test, atomic_inc...: COUNTER_OPS).

        Such steps commute when the counter stays away from zero whatever their order: a
        *segment* of them that opens at value v0 and holds D decrements and I increments is
        safe while v0 - D >= 1 and v0 + I < INT_MAX (then every decrement in any order sees at
        least 2, so none returns "hit zero" or warns, and no increment sees 0 or overflows).
        A step that keeps its segment safe depends only on what came before the segment (the
        last write, the reads since, the steps of segments closed since); one that would make
        it unsafe depends on all of it and ends it, as a write does; a read depends on every
        counter step since the last write and closes the open segment.  Whether a step joins the segment
        depends only on how many steps of it came first, so swapping two steps of a safe
        segment gives the same relation, as the equivalence of schedules requires.
        """
        evs = self.trace
        p = ev.tid
        assert ev.counter is not None
        dec, inc, value = ev.counter
        w = h.w
        if w >= 0:
            we = evs[w]
            if we.tid != p:
                if base.get(we.tid, 0) < we.seq:
                    found.add(w)
                _join(clock, we.clock)
        for t, r in h.reads.items():
            if t != p:
                re = evs[r]
                if base.get(t, 0) < re.seq:
                    found.add(r)
                _join(clock, re.clock)
        for c in h.prev:
            ce = evs[c]
            if ce.tid != p:
                if base.get(ce.tid, 0) < ce.seq:
                    found.add(c)
                _join(clock, ce.clock)
        if h.seg:
            v0, dn, up = h.v0, h.dn + dec, h.up + inc
        else:
            v0, dn, up = value, dec, inc
        safe = v0 - dn >= 1 and v0 + up < _INT_MAX
        if not safe:
            for c in h.seg:
                ce = evs[c]
                if ce.tid != p:
                    if base.get(ce.tid, 0) < ce.seq:
                        found.add(c)
                    _join(clock, ce.clock)
        if undo is None:
            return
        undo.append((h, None, h.state()))
        if safe:
            h.seg = [*h.seg, ev.index]
            h.v0, h.dn, h.up = v0, dn, up
        else:
            h.w = ev.index
            h.reads = {}
            h.seg = []
            h.prev = []

    def _reverse(self, evs: list[Event], c: int, ev: Event) -> None:
        """The race (evs[c], ev): make sure the node before evs[c] tries an initial of
        v = (the steps after evs[c] that do not happen after it) . ev."""
        ec = evs[c]
        if ec.choice < 0 or ec.choice >= len(self.nodes):
            return  # only one thread could run before it: nothing can go first
        node = self.nodes[ec.choice]
        assert node.choice == ec.choice
        if len(node.backtrack) >= len(node.enabled):
            return
        tc, sc = ec.tid, ec.seq
        first: dict[int, Event] = {}
        minseq: dict[int, int] = {}
        for j in range(c + 1, ev.index):
            ej = evs[j]
            if ej.clock.get(tc, 0) < sc:
                t = ej.tid
                if t not in first:
                    first[t] = ej
                    minseq[t] = ej.seq
        p = ev.tid
        if p not in first:
            first[p] = ev
        initials = []
        for r in node.enabled:
            x = first.get(r)
            if x is None:
                continue
            xc = x.clock
            for s, ms in minseq.items():
                if s != r and xc.get(s, 0) >= ms:
                    break
            else:
                initials.append(r)
        if not initials:
            return  # the reversal cannot start at that node (ev's thread was enabled by evs[c])
        bt = node.backtrack
        for r in initials:
            if r in bt:
                return
        awake = [r for r in initials if r not in node.sleep_in]
        pick = p if p in awake else (awake[0] if awake else initials[0])
        bt.add(pick)
        self.reversals += 1
        node.check()

    def end_execution(self, sched: ControlledScheduler) -> None:
        pass
