"""PCT: probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi, Nagarakatte,
"A randomized scheduler with probabilistic guarantees of finding bugs", ASPLOS 2010).

Threads get random distinct priorities; at ``depth - 1`` random choice points the running
thread drops below every other.  The highest-priority runnable thread runs.  A bug of depth
d among n threads and k steps is hit with probability >= 1 / (n k^(d-1)) per run.  A sample
is never a space: ``complete`` stays False and the statistics say "sampled".

Deviation from the paper: k (the number of steps) is not known in advance; it is taken
from the first execution's number of choice points, which runs the default schedule.

Run r (from 2 on) draws its change points and priorities from a generator seeded by the
r-1th number of the seed's generator, and reads nothing else but k, so any stretch of runs
can be repeated on its own (``restrict``): a sample splits over processes (parallel.py) into
parts of consecutive runs, each exactly the runs the serial sample makes there.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .records import ChoicePoint, Event
from .strategy import default_choice

if TYPE_CHECKING:
    from .scheduler import ControlledScheduler


# The most parts a sample splits into: enough for the pool to balance them, few enough that
# a part's own cost (a task, its result) stays small against its runs.
PARTS = 32


class PctStrategy:
    records = False
    watches = False
    sleeping = False

    def __init__(self, seed: int, runs: int, depth: int) -> None:
        if runs < 1:
            raise ValueError(f"PCT runs must be 1 or more, not {runs}")
        if depth < 1:
            raise ValueError(f"PCT depth must be 1 or more, not {depth}")
        self.seed = seed
        self.runs = runs
        self.depth = depth
        self._rng = random.Random(seed)
        self._run = 0
        self._k = 2
        self._change_points: set[int] = set()
        self._prio: dict[int, float] = {}
        self._low = 0.0
        self._n = 0
        self._first = True
        self._last = runs  # the last run this strategy makes (runs, unless restricted)

    # -- splitting the sample (parallel.py) ---------------------------------------------------

    def subtrees(self) -> list[tuple[int, int]]:
        """After the first run: the other runs in parts of consecutive runs (first, last),
        in run order, at most PARTS of them and none empty."""
        rest = self.runs - 1
        n = min(rest, PARTS)
        starts = [2 + rest * i // n for i in range(n)]
        ends = [*starts[1:], self.runs + 1] if starts else []
        return [(a, b - 1) for a, b in zip(starts, ends, strict=True)]

    def restrict(self, first: PctStrategy, start: int, last: int) -> None:
        """Make this strategy make only runs ``start``..``last`` of ``first``'s sample (which
        has made its first run), exactly as the whole sample makes them."""
        if (self.seed, self.runs, self.depth) != (first.seed, first.runs, first.depth):
            raise ValueError(f"a part of {first.describe()} cannot be made by {self.describe()}")
        if not (first._run >= 1 and 2 <= start <= last <= first.runs):
            raise ValueError(f"runs {start}..{last} are not a part of a {first.runs}-run sample past its first run")
        self._k = first._k
        self._rng = random.Random(self.seed)
        for _ in range(start - 2):  # the numbers runs 2..start-1 took
            self._rng.random()
        self._run = start - 1
        self._last = last

    def new_execution(self) -> bool:
        if self._run >= self._last:
            return False
        self._run += 1
        self._first = self._run == 1
        if not self._first:
            rng = random.Random(self._rng.random())
            self._change_points = set(rng.sample(range(1, self._k + 1), min(self.depth - 1, self._k)))
            self._prio = {}
            self._low = 0.0
            self._n = 0
            self._local = rng
        return True

    @property
    def complete(self) -> bool:
        return False

    def describe(self) -> str:
        return f"random (PCT) sampling, seed {self.seed}, depth {self.depth}, {self.runs} runs"

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        if self._first:
            self._k = max(self._k, cp.number + 1)
            return default_choice(cp)
        self._n += 1
        for t in cp.enabled:
            if t not in self._prio:
                self._prio[t] = 1.0 + self._local.random()
        if self._n in self._change_points:
            self._low -= 1.0
            self._prio[cp.running] = self._low
        return max(cp.enabled, key=lambda t: self._prio[t])

    def executed(self, sched: ControlledScheduler, ev: Event) -> None:
        pass

    def finished(self, sched: ControlledScheduler, pending: list[Event]) -> None:
        pass

    def end_execution(self, sched: ControlledScheduler) -> None:
        pass
