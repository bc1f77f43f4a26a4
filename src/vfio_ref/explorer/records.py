"""Typed records at the seams of the explorer: what a step touched, a step, a choice.

A *step* (an :class:`Event`) is everything one thread does from one scheduling point to its
next: the operation at the point (a lock, a refcount decrement...), then every plain member
access, kfree, and release (an unlock offers no choice before it) until the thread reaches
its next point, blocks or ends.  Its *footprint* is the list of :class:`Access` records it
made.  Two steps of different threads are *dependent* when their footprints conflict
(:meth:`Footprint.conflicts`): the reductions may reorder independent steps only.

Objects are named by who built them (:data:`Name`): ``(thread, n)`` for the n-th object the
thread built in this execution, so the same object has the same name in every execution that
shares the prefix that built it, whatever the other threads did meanwhile.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# (index of the thread that built the object, or -1 before any thread ran; the count of
# objects it had built before).  (-2, n) is a name given on first touch to an object that
# never announced itself; it is not stable across executions, and the explorer counts them.
Name = tuple[int, int]
# (object, member): member "" is the object's own operations (a mutex's lock and unlock),
# a field name is that member, "*" is the whole object (kfree).
Loc = tuple[Name | tuple[str, int], str]

# Kinds of access.
PLAIN: Final = 0  # a member read or written directly
OP: Final = 1  # the operation at a scheduling point (an atomic, a refcount, a list op...)
ACQ: Final = 2  # a lock taken (mutex_lock, spin_lock, trylock, down_read, down_write)
REL: Final = 3  # a release (unlock, up_read/write, complete, wake_up)
FREE: Final = 4  # kfree of the whole object
SYNC: Final = 5  # thread start (the child reads its spawn), end (exit), join (reads the exits)
CTR: Final = 6  # a counter step that may commute with others (see dpor.py): a write
TRY: Final = 7  # a trylock: it never waits (its races are its own), but a release can end it

KIND_NAMES: Final = ("plain", "op", "acquire", "release", "free", "sync", "counter", "trylock")


# One access of a step: (loc, write, kind): ``loc`` read or written, of ``kind``.  A bare
# tuple, not a NamedTuple: a step makes a few of them per scheduling point, and building a
# NamedTuple costs ten times a tuple display (measured: 0.75 s of a 15 s exploration).
Access = tuple[Loc, bool, int]


def thread_loc(tid: int, what: str) -> Loc:
    """The location of a thread's start ("spawn") or end ("exit")."""
    return (("thread", tid), what)


class Event:
    """One step of one thread in one execution.

    Invariants: ``index`` is the step's position in the execution; ``seq`` counts the
    thread's steps from 1; ``choice`` is the number of the choice point that started it (-1
    when only one thread could run there); ``clock`` (filled by the DPOR bookkeeping) maps
    each thread to the number of its steps that happen before this one, this one included.
    """

    __slots__ = ("accesses", "choice", "clock", "counter", "index", "seq", "tid")

    def __init__(self, index: int, tid: int, seq: int, accesses: list[Access], choice: int) -> None:
        self.index = index
        self.tid = tid
        self.seq = seq
        self.accesses = accesses
        self.choice = choice
        self.clock: dict[int, int] = {}
        # For a step that starts with a counter operation (kind CTR): (decrements, increments,
        # the counter's value before it).
        self.counter: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"<step {self.index}: T{self.tid}#{self.seq} choice {self.choice} {len(self.accesses)} accesses>"


class ChoicePoint(NamedTuple):
    """A scheduling decision: ``enabled`` threads (ascending), the ``running`` thread and
    whether it could go on.  ``number`` is the choice point's number (points where two or
    more threads could run are numbered from 0), or -1 where only one thread can run (the
    scheduler asks a strategy then only while it has threads asleep)."""

    number: int
    enabled: tuple[int, ...]
    running: int
    running_enabled: bool


class Choice(NamedTuple):
    """What was chosen at a numbered choice point (a schedule is made of these)."""

    enabled: tuple[int, ...]
    running: int
    running_enabled: bool
    chosen: int

    @property
    def default(self) -> int:
        """The default continuation: the running thread if it can go on, else the lowest."""
        return self.running if self.running_enabled else self.enabled[0]


class Footprint:
    """A step's accesses, summarised for the dependence test.

    Any access to ``(obj, member)`` also reads ``(obj, "*")`` (the object exists), so a kfree
    (a write of ``(obj, "*")``) conflicts with every access to the object.  ``changes``:
    every location the step modifies, its releases included (an up_read reads the rwsem
    for dependence, but changes it for a writer waiting on it).
    """

    __slots__ = ("changes", "objs", "reads", "wild", "writes")

    def __init__(self, accesses: list[Access]) -> None:
        reads: set[Loc] = set()
        writes: set[Loc] = set()
        objs: set[object] = set()
        wild: set[object] = set()
        rels: set[Loc] = set()
        for loc, write, kind in accesses:
            if kind == FREE:
                wild.add(loc[0])
            else:
                objs.add(loc[0])
                if write:
                    writes.add(loc)
                else:
                    reads.add(loc)
                if kind == REL:
                    rels.add(loc)
        self.reads = frozenset(reads)
        self.writes = frozenset(writes)
        self.objs = frozenset(objs | wild)
        self.wild = frozenset(wild)
        self.changes = self.writes | rels

    def conflicts(self, other: Footprint) -> bool:
        """Whether the two steps are dependent (touch one location, one of them writing)."""
        if self.writes and not (self.writes.isdisjoint(other.writes) and self.writes.isdisjoint(other.reads)):
            return True
        if other.writes and not other.writes.isdisjoint(self.reads):
            return True
        if self.wild and not self.wild.isdisjoint(other.objs):
            return True
        return bool(other.wild) and not other.wild.isdisjoint(self.objs)

    def changes_any(self, locs: frozenset[Loc] | set[Loc]) -> bool:
        """Whether the step modifies (writes, releases or frees) one of ``locs``."""
        if not locs:
            return False
        if not self.changes.isdisjoint(locs):
            return True
        return bool(self.wild) and any(loc[0] in self.wild for loc in locs)


EMPTY_FOOTPRINT: Final = Footprint([])
