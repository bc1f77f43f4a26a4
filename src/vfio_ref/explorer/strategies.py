"""Scheduling strategies: replay a schedule, bounded depth-first search, PCT.

A *schedule* is written as its deviations from the default continuation ("keep running the
running thread if it can run, else the lowest-numbered thread that can"): ``"7:1,19:0"``
means "at choice point 7 run thread 1, at choice point 19 run thread 0, default elsewhere";
``"-"`` is the default schedule.  Deviations are few and name threads by their spawn order,
so a schedule stays short and replays after unrelated edits to the model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..kernel.sched import READ_OPS, RELEASE_OPS
from .scheduler import FORCED, ControlledScheduler, ScheduleMismatch, SimThread


def default_choice(enabled: list[SimThread], cur: SimThread) -> SimThread:
    if cur in enabled:
        return cur
    return min(enabled, key=lambda t: t.index)


def parse_schedule(text: str) -> dict[int, int]:
    """'7:1,19:0' -> {7: 1, 19: 0}; '-' or '' -> {}.  Bad text raises ValueError naming the rule."""
    text = text.strip()
    if text in ("", "-"):
        return {}
    out: dict[int, int] = {}
    for part in text.split(","):
        try:
            a, b = part.split(":")
            cp, th = int(a), int(b)
        except ValueError:
            raise ValueError(
                f"schedule {text!r}: {part!r} is not 'CHOICE:THREAD' (two non-negative integers)"
            ) from None
        if cp < 0 or th < 0:
            raise ValueError(f"schedule {text!r}: {part!r} has a negative number")
        if cp in out:
            raise ValueError(f"schedule {text!r}: choice point {cp} appears twice")
        out[cp] = th
    return out


def format_schedule(devs: dict[int, int]) -> str:
    if not devs:
        return "-"
    return ",".join(f"{cp}:{th}" for cp, th in sorted(devs.items()))


def deviations(sched: ControlledScheduler) -> dict[int, int]:
    """The deviations from the default continuation in an execution's choices."""
    out = {}
    for i, choice in enumerate(sched.choices):
        if choice is FORCED:
            continue
        enabled, cur, cur_enabled, chosen = choice
        default = cur.index if cur_enabled else min(t.index for t in enabled)
        if chosen.index != default:
            out[i] = chosen.index
    return out


class ReplayStrategy:
    """Follow a schedule's deviations; default everywhere else."""

    def __init__(self, devs: dict[int, int]) -> None:
        self.devs = devs
        self.n = 0

    def choose(self, sched: ControlledScheduler, enabled: list[SimThread], cur: SimThread) -> SimThread:
        i = self.n
        self.n += 1
        want = self.devs.get(i)
        if want is None:
            return default_choice(enabled, cur)
        for t in enabled:
            if t.index == want:
                return t
        names = {t.index: t.name for t in sched.threads}
        blocked = next((t for t in sched.threads if t.index == want), None)
        why = "does not exist"
        if blocked is not None:
            why = "has finished" if blocked.done else f"is blocked in {blocked.op}"
        raise ScheduleMismatch(
            f"schedule does not fit: at choice point {i} thread {want} "
            f"({names.get(want, '?')}) {why}; runnable: "
            + ", ".join(f"{t.index} ({t.name})" for t in enabled)
        )


class SleepBlocked(Exception):
    """Every runnable thread is asleep (or would exceed the bound): this branch is redundant."""


Key = tuple[str, int, bool]


@dataclass
class Node:
    """A choice point with at least two allowed choices: where the search can branch.

    ``backtrack`` is the set of threads the search must try here: every allowed choice for a
    plain search; for the reduced search, the first choice plus the threads whose operations
    were later found racing with an operation made after this point (DPOR).
    """

    candidates: tuple[int, ...]
    enabled: tuple[int, ...]
    cur: int
    chosen: int
    ops: dict[int, Key]
    backtrack: set[int]
    done: set[int] = field(default_factory=set)


# Lock acquisitions (their races get a contention point as well; see DfsStrategy._contend).
LOCK_OPS = frozenset({"mutex_lock", "spin_lock", "down_write", "down_read", "mutex_trylock"})

# Operations taken as dependent on every other: a thread's start and a join.
_GLOBAL = frozenset({"start", "join"})


def independent(a: Key, b: Key) -> bool:
    """Two operations commute: different objects, or both only read.  A thread that has not
    started yet has no known next operation, and a join depends on every thread's end: both
    are taken as dependent on everything."""
    if a[0] in _GLOBAL or b[0] in _GLOBAL:
        return False
    return a[1] != b[1] or (not a[2] and not b[2])


VC = dict[int, int]


def _join(dst: VC, src: VC) -> None:
    for t, c in src.items():
        if dst.get(t, 0) < c:
            dst[t] = c


class DfsStrategy:
    """One execution of a preemption-bounded depth-first search.

    ``nodes`` is the search stack shared across executions: the prefix to follow, then new
    nodes appended as the execution goes on.  Only choice points with two or more allowed
    choices become nodes: once the preemption budget is spent, or when every other runnable
    thread is asleep, the choice is forced.

    With ``reduction`` two partial-order reductions work together:

    * sleep sets: a thread whose pending operation was already explored from an equivalent
      state sleeps, and wakes as soon as an operation dependent with it is executed;
    * dynamic partial-order reduction (Flanagan & Godefroid, POPL'05): a node first tries
      one thread; each executed operation is checked against the earlier operations on the
      same object by other threads that it is not already ordered after (vector clocks over
      program order and dependence), and for each such race the node just before the earlier
      operation is told to also try the later operation's thread.

    With a preemption bound the combination is not guaranteed complete (Coons et al.,
    OOPSLA'13), and plain field accesses are not operations, so a kfree is reordered only
    against the locks, refcounts and lists it conflicts with.  The test suite checks, for
    every concurrent scenario at every level, that the reduced search reaches the same
    outcomes and the same finding kinds as the plain bounded search; it can report fewer
    distinct sites of one kind (``vfio-ref explore --no-reduction`` lists them all).
    """

    def __init__(self, nodes: list[Node], bound: int, reduction: bool) -> None:
        self.nodes = nodes
        self.prefix_len = len(nodes)
        self.bound = bound
        self.reduction = reduction
        self.i = 0
        self.preempts = 0
        self.sleep: dict[int, Key] = {}
        self.recent: list[Key] = []
        self.last_node = -1
        self.clocks: dict[int, VC] = {}
        # per object: (last write: (thread, index, clock, node) or None, reads since by thread)
        self.acc: dict[int, tuple[tuple[int, int, VC, int] | None, dict[int, tuple[int, VC, int]]]] = {}


    # -- what the scheduler tells us -----------------------------------------------------------

    def spawned(self, parent: int, child: int) -> None:
        self.clocks[child] = dict(self.clocks.get(parent, {}))

    def joined(self, parent: int, child: int) -> None:
        c = self.clocks.setdefault(parent, {})
        _join(c, self.clocks.get(child, {}))

    def executed(self, key: Key, tid: int) -> None:
        if self.sleep:
            self.recent.append(key)
        if not self.reduction:
            return
        op, oid, write = key
        c = self.clocks.get(tid)
        if c is None:
            c = self.clocks[tid] = {}
        acc = self.acc.get(oid)
        if acc is not None and op in RELEASE_OPS:
            # Releasing a lock this thread holds: the next acquirer is ordered after all of it
            # (its clock carries the release's), but the race to reverse is between the two
            # acquires (a release and the next acquire are never co-enabled), so the entry
            # keeps the acquire's index and search node.
            w, reads = acc
            if w is not None and w[0] == tid:
                idx = c.get(tid, 0) + 1
                c[tid] = idx
                self.acc[oid] = ((tid, w[1], dict(c), w[3]), reads)
                return
            mine = reads.get(tid)
            if mine is not None:
                idx = c.get(tid, 0) + 1
                c[tid] = idx
                reads[tid] = (mine[0], dict(c), mine[2])
                return
        if acc is not None:
            w, reads = acc
            if w is not None and w[0] != tid:
                if c.get(w[0], 0) < w[1]:
                    self._race(w[3], tid)
                    if op in LOCK_OPS:
                        self._contend(w[3], w[0], tid)
                _join(c, w[2])
            if write:
                for rt, (ridx, rclock, rnode) in reads.items():
                    if rt != tid:
                        if c.get(rt, 0) < ridx:
                            self._race(rnode, tid)
                            if op in LOCK_OPS:
                                self._contend(rnode, rt, tid)
                        _join(c, rclock)
        idx = c.get(tid, 0) + 1
        c[tid] = idx
        if write:
            self.acc[oid] = ((tid, idx, dict(c), self.last_node), {})
        elif acc is None:
            self.acc[oid] = (None, {tid: (idx, dict(c), self.last_node)})
        else:
            acc[1][tid] = (idx, dict(c), self.last_node)

    def _contend(self, node_idx: int, holder: int, tid: int) -> None:
        """Two threads' acquires of one lock race.  Besides reversing them, try ``tid`` at the
        first choice point after ``holder`` took the lock, while it still holds it: ``tid``
        then blocks on the lock and the switch back costs no preemption.  Under a preemption
        bound that interleaving is otherwise out of reach (Coons et al., OOPSLA'13), and it
        is the one where ``tid`` waits at a point it could not be preempted at for free."""
        nxt = node_idx + 1
        if nxt < len(self.nodes):
            node = self.nodes[nxt]
            if node.cur == holder and tid in node.candidates:
                node.backtrack.add(tid)

    def _race(self, node_idx: int, tid: int) -> None:
        """An operation of ``tid`` races with one made after node ``node_idx``: try ``tid``
        there (or, when it could not run there, every allowed choice)."""
        if node_idx < 0:
            return
        node = self.nodes[node_idx]
        if tid in node.candidates:
            node.backtrack.add(tid)
        elif tid not in node.enabled:
            node.backtrack.update(node.candidates)

    # -- the choice -----------------------------------------------------------------------------

    def choose(self, sched: ControlledScheduler, enabled: list[SimThread], cur: SimThread) -> SimThread:
        sleep = self.sleep
        if sleep:
            recent = self.recent
            if recent:
                for u, uk in list(sleep.items()):
                    for r in recent:
                        if not independent(uk, r):
                            del sleep[u]
                            break
                self.recent = []
            candidates = [t for t in enabled if t.index not in sleep]
        else:
            candidates = enabled
        cur_enabled = cur in enabled
        if cur_enabled and self.preempts >= self.bound:
            candidates = [cur] if cur in candidates else []
        if not candidates:
            raise SleepBlocked()
        if len(candidates) == 1:
            choice = candidates[0]
        else:
            i = self.i
            self.i = i + 1
            self.last_node = i
            if i < self.prefix_len:
                node = self.nodes[i]
                want = node.chosen
                found = None
                for t in candidates:
                    if t.index == want:
                        found = t
                        break
                if found is None:
                    raise ScheduleMismatch(
                        f"nondeterministic program: thread {want} cannot run at search node {i}"
                    )
                choice = found
            else:
                choice = cur if cur in candidates else min(candidates, key=lambda t: t.index)
                cand = tuple([t.index for t in candidates])
                node = Node(
                    cand,
                    tuple([t.index for t in enabled]),
                    cur.index,
                    choice.index,
                    {t.index: (t.op, sched.oid(t.obj), t.op not in READ_OPS) for t in candidates},
                    {choice.index} if self.reduction else set(cand),
                )
                self.nodes.append(node)
            if self.reduction and node.done:
                ck = node.ops[choice.index]
                for u in node.done:
                    uk = node.ops[u]
                    if u != choice.index and independent(uk, ck):
                        sleep[u] = uk
        if cur_enabled and choice is not cur:
            self.preempts += 1
        # Budget spent and nothing asleep: every later choice keeps the running thread.
        sched.forced = self.preempts >= self.bound and not sleep
        return choice


def backtrack(nodes: list[Node], bound: int) -> bool:
    """Move the search stack to its next unexplored branch; False when exhausted."""
    while nodes:
        node = nodes[-1]
        node.done.add(node.chosen)
        for t in node.candidates:
            if t in node.backtrack and t not in node.done:
                node.chosen = t
                return True
        nodes.pop()
    return False


class PctStrategy:
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS'10).

    Threads get random distinct priorities; at ``depth - 1`` random choice points the running
    thread drops below every other.  The highest-priority runnable thread runs.  A bug of
    depth d among n threads and k steps is hit with probability >= 1 / (n k^(d-1)) per run.
    """

    def __init__(self, rng: random.Random, depth: int, expected_points: int) -> None:
        self.rng = rng
        self.depth = depth
        k = max(2, expected_points)
        self.change_points = set(rng.sample(range(1, k + 1), min(depth - 1, k)))
        self.prio: dict[int, float] = {}
        self.i = 0
        self.low = 0.0

    def choose(self, sched: ControlledScheduler, enabled: list[SimThread], cur: SimThread) -> SimThread:
        self.i += 1
        for t in enabled:
            if t.index not in self.prio:
                self.prio[t.index] = 1.0 + self.rng.random()
        if self.i in self.change_points:
            self.low -= 1.0
            self.prio[cur.index] = self.low
        return max(enabled, key=lambda t: self.prio[t.index])

