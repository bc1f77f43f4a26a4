"""Replay: run exactly one schedule (its deviations; the default continuation elsewhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import ChoicePoint, Event
from .scheduler import ScheduleMismatch
from .strategy import default_choice

if TYPE_CHECKING:
    from .scheduler import ControlledScheduler


class ReplayStrategy:
    """Follow a schedule's deviations; default everywhere else.  One execution."""

    records = False
    watches = False
    sleeping = False

    def __init__(self, devs: dict[int, int]) -> None:
        self.devs = devs
        self._runs = 0

    def new_execution(self) -> bool:
        self._runs += 1
        return self._runs == 1

    @property
    def complete(self) -> bool:
        return False  # one schedule is never a space

    def describe(self) -> str:
        return "replay of one schedule"

    def choose(self, sched: ControlledScheduler, cp: ChoicePoint) -> int:
        want = self.devs.get(cp.number)
        if want is None:
            return default_choice(cp)
        if want in cp.enabled:
            return want
        names = {t.index: t.name for t in sched.threads}
        blocked = next((t for t in sched.threads if t.index == want), None)
        why = "does not exist"
        if blocked is not None:
            why = "has finished" if blocked.done else f"is blocked in {blocked.op}"
        raise ScheduleMismatch(
            f"schedule does not fit: at choice point {cp.number} thread {want} "
            f"({names.get(want, '?')}) {why}; runnable: "
            + ", ".join(f"{t} ({names.get(t, '?')})" for t in cp.enabled)
        )

    def executed(self, sched: ControlledScheduler, ev: Event) -> None:
        pass

    def finished(self, sched: ControlledScheduler, pending: list[Event]) -> None:
        pass

    def end_execution(self, sched: ControlledScheduler) -> None:
        """A schedule that deviates past the execution's last choice point does not fit."""
        devs = self.devs
        if devs and max(devs) >= len(sched.choices):
            raise ScheduleMismatch(
                f"schedule does not fit: it deviates at choice point {max(devs)} but the execution "
                f"had only {len(sched.choices)} choice points"
            )
