"""The one protocol every search strategy follows, and schedule strings.

A strategy owns its whole iteration (after awslabs/shuttle's ``Scheduler``): ``explore()``
asks it for a new execution until it says the search is over, and within an execution the
scheduler asks it who runs at each choice point and, when the strategy records steps, tells
it every finished step and, at the end, the steps the blocked threads would take.  Nothing
outside the strategy knows how it searches.

==========================  ===========================================================
strategy (module)           what it runs
==========================  ===========================================================
ReplayStrategy (replay.py)  exactly one schedule string
DfsStrategy (dfs.py)        every schedule up to a preemption bound (or none), depth-first;
                            with the reduction, sleep sets restricted to stay sound under
                            the bound
DporStrategy (dpor.py)      source-DPOR with sleep sets: one schedule per equivalence class
                            of steps, no bound
PctStrategy (pct.py)        PCT random sampling from a seed (never claims completeness)
==========================  ===========================================================

A *schedule* is written as its deviations from the default continuation ("keep running the
running thread if it can run, else the lowest-numbered thread that can"): ``"7:1,19:0"``
means "at choice point 7 run thread 1, at choice point 19 run thread 0, default elsewhere";
``"-"`` is the default schedule.  Deviations are few and name threads by their spawn order,
so a schedule stays short and replays after unrelated edits to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .records import Choice, ChoicePoint, Event

if TYPE_CHECKING:
    from .scheduler import ControlledScheduler


class SleepBlocked(Exception):
    """Every runnable thread is asleep (or would exceed the bound): this branch is redundant."""


class Strategy(Protocol):
    """A search: its executions, and its choices within each."""

    #: True when the strategy needs every step's accesses (``executed`` / ``finished``) from
    #: the start of the execution (it may also call ``sched.start_recording()`` later).
    records: bool
    #: True when the strategy may record steps at all in this search: model structs are then
    #: built watched, so that their member accesses can be reported.
    watches: bool
    #: True while some thread is asleep: the scheduler then asks even where only one thread
    #: can run, so that a run whose only runnable thread is asleep can stop.
    sleeping: bool

    def new_execution(self) -> bool:
        """Prepare the next execution; False when the search is over."""
        ...

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        """The thread to run at ``cp`` (one of ``cp.enabled``); may raise SleepBlocked."""
        ...

    def executed(self, sched: ControlledScheduler, ev: Event) -> None:
        """A step finished (only when ``records``)."""
        ...

    def finished(self, sched: ControlledScheduler, pending: list[Event]) -> None:
        """No thread can run any more; ``pending`` are the steps the blocked ones would take
        (only when ``records``)."""
        ...

    def end_execution(self, sched: ControlledScheduler) -> None:
        """The execution is over (it ran to the end, or was cut short as redundant)."""
        ...

    @property
    def complete(self) -> bool:
        """True once the strategy has run every execution of the space it claims."""
        ...

    def describe(self) -> str:
        """The space searched and the guarantee, for the statistics' first line."""
        ...


def default_choice(cp: ChoicePoint, allowed: Sequence[int] | None = None) -> int:
    """The default continuation among ``allowed`` (default: every enabled thread)."""
    pool = cp.enabled if allowed is None else allowed
    if cp.running_enabled and cp.running in pool:
        return cp.running
    return min(pool)


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


def deviations(choices: Sequence[Choice]) -> dict[int, int]:
    """The deviations from the default continuation in an execution's choices."""
    out = {}
    for i, c in enumerate(choices):
        if c.running < 0:  # FORCED: the running thread went on
            continue
        if c.chosen != c.default:
            out[i] = c.chosen
    return out
