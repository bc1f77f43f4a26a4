"""Depth-first search over every schedule up to a preemption bound (or with none).

A *preemption* is a switch away from a thread that could go on; switching away from a
blocked or finished thread is free (Musuvathi and Qadeer, "Iterative context bounding for
systematic testing of multithreaded programs", PLDI 2007).  The search is a DFS over the
choice points, each a :class:`DfsNode` on a stack kept across executions: an execution
replays the stack's choices, then takes the default at every new node, and the next
execution moves the deepest node with an untried choice to it.

The reduction: sleep sets (Godefroid, "Partial-order methods for the verification of
concurrent systems", 1996), restricted so that they stay sound under a preemption bound.
Unrestricted sleep sets are not: a pruned schedule's equivalent may need more preemptions
than the bound allows (Coons, Musuvathi, McKinley, "Bounded partial-order reduction",
OOPSLA 2013).  The restriction (``../shared/reference/sound-reduction.md`` §3.2):

* only the *running* thread's step may go to sleep, and only when it could go on and was
  tried first at the node (the default continuation, which costs no preemption);
* not when the step can enable a thread that cannot run at the node: it changes what that
  thread waits on (releases its lock, wakes its wait queue, ends the thread it joins,
  writes what its wait condition reads);
* a sleeper wakes on any step dependent with its own, and as soon as a thread that cannot
  run waits on something the sleeper's step changes.

Why that is sound: a schedule w pruned at a sibling of the node runs the sleeping step t
before anything dependent with it.  Moving t to the front of w gives an equivalent schedule
w' that starts with the node's first child, and w' needs no more preemptions than w: t
belonged to the running thread (no switch to pay at the node), t enables nobody (every
switch away from a thread costs in w' what it cost in w, or nothing when t has blocked that
thread), and removing t from the middle of w merges its two switches into at most one.
The differential tests check the reduced search against the plain one on generated programs.

Invariants (asserted): a node's ``order`` holds only threads enabled and awake there; its
``done`` is a subset of ``order``; ``chosen`` is in ``order`` and not in ``done``; the
replayed prefix meets every node with the same enabled threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .records import ChoicePoint, Event, Footprint, Loc
from .scheduler import ScheduleMismatch
from .strategy import SleepBlocked, default_choice

if TYPE_CHECKING:
    from .scheduler import ControlledScheduler


@dataclass
class DfsNode:
    """A choice point where the search branches."""

    choice: int  # the choice point's number in the execution
    enabled: tuple[int, ...]
    running: int
    running_enabled: bool
    order: tuple[int, ...]  # the threads to try here, the default first
    chosen: int
    sleep_in: dict[int, Footprint]  # asleep on arrival (never chosen here)
    done: set[int] = field(default_factory=set)
    # The running thread's first step here, when it may sleep for the siblings (reduction).
    sleeper: Footprint | None = None
    sleeper_known: bool = False
    blocked: frozenset[Loc] = frozenset()  # what the threads that cannot run here wait on

    def copy(self) -> DfsNode:
        """A copy whose mutable fields (``done``, ``sleep_in``) are its own; footprints are
        immutable and shared.  O(len(done) + len(sleep_in)); copy.deepcopy walked every
        footprint, and restricting the 190 parts of the base's device_fd_vs_unbind at bound 1
        to their nodes took 1.0 s (4% of the search) where this takes 0.03 s."""
        return DfsNode(
            self.choice, self.enabled, self.running, self.running_enabled, self.order, self.chosen,
            dict(self.sleep_in), set(self.done), self.sleeper, self.sleeper_known, self.blocked,
        )

    def check(self) -> None:
        assert self.chosen in self.order and self.chosen not in self.done, self
        assert self.done <= set(self.order), self
        assert set(self.order) <= set(self.enabled) and not set(self.order) & set(self.sleep_in), self


class DfsStrategy:
    """Every schedule with at most ``bound`` preemptions (``None``: any number), depth-first;
    with ``reduction``, the restricted sleep sets described in the module docstring."""

    def __init__(self, bound: int | None, reduction: bool) -> None:
        if bound is not None and bound < 0:
            raise ValueError(f"preemption bound must be 0 or more, or None (no bound), not {bound}")
        self.bound = bound
        self.reduction = reduction
        # The reduction records steps: from the start in the first execution, from where
        # an execution diverges from the previous one in the others (the replayed prefix's
        # sleep sets are kept on its nodes).
        self.records = reduction
        self.watches = reduction
        self.nodes: list[DfsNode] = []
        self._started = False
        self._exhausted = False
        # Per execution:
        self._i = 0
        self._preempts = 0
        self._sleep: dict[int, Footprint] = {}
        self._node: DfsNode | None = None  # the node whose step is running
        self.sleeping = False
        self._diverge = 0
        self._last: list[int] = []  # the previous execution's choice at each choice point
        self._floor = 0  # with _restricted: the node whose one choice this search covers
        self._restricted = False

    # -- splitting the search (parallel.py) ---------------------------------------------------

    def subtrees(self) -> list[tuple[int, int]]:
        """After the first execution: the parts the rest of the search splits into, in the
        order the search takes them (the deepest node's other choices first): (node index,
        choice).  Each is independent of the others (its sleep sets come from its own path)."""
        return [(i, c) for i in reversed(range(len(self.nodes))) for c in self.nodes[i].order[1:]]

    def restrict(self, first: DfsStrategy, node: int, choice: int) -> None:
        """Make this strategy search only the subtree where ``first``'s node ``node`` takes
        ``choice`` (``first`` has run the first execution), exactly as the whole search would."""
        nodes = [n.copy() for n in first.nodes[: node + 1]]
        top = nodes[node]
        top.done = set(top.order[: top.order.index(choice)])
        top.chosen = choice
        top.check()
        self.nodes = nodes
        self._floor = node
        self._restricted = True
        self._last = list(first._last)
        self._started = False

    # -- the iteration ---------------------------------------------------------------------

    def new_execution(self) -> bool:
        if self._started and not self._advance():
            self._exhausted = True
            return False
        self._started = True
        self._i = 0
        self._preempts = 0
        self._sleep = {}
        self._node = None
        self.sleeping = False
        self.records = self.reduction and not self.nodes
        # Choice points before the deepest node are replayed from the previous execution.
        self._diverge = self.nodes[-1].choice if self.nodes else 0
        return True

    def _advance(self) -> bool:
        nodes = self.nodes
        while nodes:
            n = nodes[-1]
            n.done.add(n.chosen)
            if self._restricted and len(nodes) - 1 == self._floor:
                return False  # this subtree is done; the node's other choices are other parts
            for t in n.order:
                if t not in n.done:
                    n.chosen = t
                    n.check()
                    return True
            nodes.pop()
        return False

    @property
    def complete(self) -> bool:
        return self._exhausted

    def describe(self) -> str:
        space = "every schedule" + (
            " (no preemption bound)" if self.bound is None else f" with at most {self.bound} preemptions"
        )
        how = "depth-first with sleep sets restricted for the bound" if self.reduction else "plain depth-first"
        return f"{space}; {how}"

    # -- within an execution ---------------------------------------------------------------

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        if cp.number >= 0 and cp.number < self._diverge:
            # The replayed prefix: the previous execution's choices (no sleep sets to keep:
            # the nodes on the way hold theirs).
            choice = self._last[cp.number]
            if choice not in cp.enabled:
                raise ScheduleMismatch(
                    f"nondeterministic program: at choice point {cp.number} thread {choice} ran last time, "
                    f"now only {list(cp.enabled)} can"
                )
            if self._i < len(self.nodes) and self.nodes[self._i].choice == cp.number:
                self._i += 1
            self._count(sched, cp, choice)
            return choice
        sleep = self._sleep
        if sleep:
            self._wake_on_blocked(sched)
            sleep = self._sleep
        awake = [t for t in cp.enabled if t not in sleep] if sleep else list(cp.enabled)
        bound = self.bound
        if cp.running_enabled and bound is not None and self._preempts >= bound:
            awake = [cp.running] if cp.running in awake else []
        if not awake:
            raise SleepBlocked()
        if cp.number < 0 or len(awake) == 1:
            choice = awake[0]
        else:
            i = self._i
            self._i = i + 1
            if i < len(self.nodes):
                node = self.nodes[i]
                if node.choice != cp.number or node.enabled != cp.enabled or node.running != cp.running:
                    raise ScheduleMismatch(
                        f"nondeterministic program: search node {i} was choice point {node.choice} with "
                        f"threads {list(node.enabled)} runnable, now choice point {cp.number} with {list(cp.enabled)}"
                    )
                choice = node.chosen
                if self.reduction:
                    # The execution diverges here from the previous one: record from now on.
                    self._sleep = dict(node.sleep_in)
                    sched.start_recording()
            else:
                first = default_choice(cp, awake)
                order = (first, *sorted(t for t in awake if t != first))
                node = DfsNode(cp.number, cp.enabled, cp.running, cp.running_enabled, order, first, dict(sleep))
                if self.reduction:
                    node.blocked = frozenset(sched.blocked_locs())
                self.nodes.append(node)
                choice = first
            self._node = node
        self._count(sched, cp, choice)
        return choice

    def _count(self, sched: ControlledScheduler, cp: ChoicePoint, choice: int) -> None:
        if cp.running_enabled and choice != cp.running:
            self._preempts += 1
        node = self._node
        if node is not None and node.sleeper is not None and choice != node.running:
            # The running thread's step goes to sleep once this step has run (executed):
            # the choices after the last preemption must still be asked, so that the sleeper
            # cuts short the schedules it makes redundant.  (Forcing here at once had the
            # reduction prune nothing at one preemption.)
            return
        if self.bound is not None and self._preempts >= self.bound and not self._sleep:
            # Budget spent, nothing asleep: every later choice keeps the running thread.
            sched.forced = True
            sched.stop_recording()

    def _wake_on_blocked(self, sched: ControlledScheduler) -> None:
        locs = sched.blocked_locs()
        if locs:
            self._sleep = {q: f for q, f in self._sleep.items() if not f.changes_any(locs)}
            self.sleeping = bool(self._sleep)

    def executed(self, sched: ControlledScheduler, ev: Event) -> None:
        node = self._node
        if node is not None and ev.choice == node.choice:
            fp = Footprint(ev.accesses)
            self._node = None
            if not node.sleeper_known and node.chosen == node.order[0]:
                node.sleeper_known = True
                if node.chosen == node.running and node.running_enabled and not fp.changes_any(node.blocked):
                    node.sleeper = fp
            sleep = {q: f for q, f in node.sleep_in.items() if not f.conflicts(fp)}
            if node.chosen != node.running and node.sleeper is not None and not node.sleeper.conflicts(fp):
                sleep[node.running] = node.sleeper
            self._sleep = sleep
        elif self._sleep:
            fp = Footprint(ev.accesses)
            self._sleep = {q: f for q, f in self._sleep.items() if q != ev.tid and not f.conflicts(fp)}
        self.sleeping = bool(self._sleep)

    def finished(self, sched: ControlledScheduler, pending: list[Event]) -> None:
        pass

    def end_execution(self, sched: ControlledScheduler) -> None:
        # FORCED points kept the running thread: replaying them must do the same.
        last = []
        for c in sched.choices:
            last.append(c.chosen if c.running >= 0 else -1)
        self._last = last
