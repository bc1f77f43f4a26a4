"""PCT: probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi, Nagarakatte,
"A randomized scheduler with probabilistic guarantees of finding bugs", ASPLOS 2010).

Threads get random distinct priorities; at ``depth - 1`` random choice points the running
thread drops below every other.  The highest-priority runnable thread runs.  A bug of depth
d among n threads and k steps is hit with probability >= 1 / (n k^(d-1)) per run.  A sample
is never a space: ``complete`` stays False and the statistics say "sampled".

Deviation from the paper: k (the number of steps) is not known in advance; it is taken
from the first execution's number of choice points, which runs the default schedule.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .records import ChoicePoint, Event
from .strategy import default_choice

if TYPE_CHECKING:
    from .scheduler import ControlledScheduler


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

    def new_execution(self) -> bool:
        if self._run >= self.runs:
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
