"""Happens-before tracking with vector clocks, as KCSAN and FastTrack reason about races.

Ordering edges (each a release on one side and an acquire on the other):

* mutex_unlock -> the next mutex_lock of that mutex; up_write -> down_read/down_write;
  up_read -> down_write (so an rwsem writer comes after every reader that was inside);
* a refcount_t decrement is a release; the decrement that reaches zero is also an acquire;
* value-returning atomic read-modify-writes are fully ordered (void atomics, atomic_read and
  atomic_set are not: the model treats every RMW as ordered, which can only hide races);
* schedule_work -> the work function; complete -> wait_for_completion; wake_up -> the waiter;
* thread start -> its first step; a thread's end -> whoever joins it.

Tracked locations (list heads, fields declared shared) record their last write and the reads
since; an access that conflicts with one it is not ordered after is a data race.
Complexity: O(threads) per synchronising operation or tracked access.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .core import model_site, site_from

if TYPE_CHECKING:
    from .core import Kernel, Task

VC = dict[int, int]


@dataclass(frozen=True)
class DataRace:
    location: str  # Type.member
    first: str  # "write in f [T0]"
    second: str
    step: int | None
    first_function: str = ""
    second_function: str = ""
    first_access: str = ""  # "read" / "write"
    second_access: str = ""

    @property
    def pair(self) -> str:
        """The two accesses, as "read in f vs write in g", in a fixed order (the same race
        seen in either order is one race)."""
        a = f"{self.first_access} in {self.first_function}"
        b = f"{self.second_access} in {self.second_function}"
        return " vs ".join(sorted((a, b)))

    def __str__(self) -> str:
        return f"data-race on {self.location}: {self.first} vs {self.second}"


class _Access:
    """The last write of one location and the reads since, each with the frame of the
    function that made it (named only when a race is reported)."""

    __slots__ = ("reads", "w_clock", "w_frame", "w_name", "w_tid")

    def __init__(self) -> None:
        self.w_tid = -1
        self.w_clock = 0
        self.w_frame: FrameType | None = None
        self.w_name = ""
        self.reads: dict[int, tuple[int, FrameType, str]] = {}


def _join(dst: VC, src: VC) -> None:
    for k, v in src.items():
        if dst.get(k, 0) < v:
            dst[k] = v


class HappensBefore:
    """Vector clocks per task (kept on the Task), per synchronisation object, per location.

    Two kinds of synchronisation object: *exclusive* ones (a mutex, the write side of an
    rwsem, an atomic) pass a single token from holder to holder, so a release simply records
    the releaser's clock and an acquire can skip the join when it already knows that clock;
    *accumulating* ones (a refcount, the read side of an rwsem, a wait queue) collect the
    clocks of every releaser.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.sync: dict[Any, VC] = {}
        self.excl: dict[Any, tuple[VC, int, int]] = {}
        self.locs: dict[tuple[Any, str], _Access] = {}
        self.races: list[DataRace] = []
        self._seen: set[tuple[str, str, str]] = set()

    def clock(self, t: Task) -> VC:
        vc: VC | None = t.vc
        if vc is None:
            vc = t.vc = {t.tid: 1}
        return vc

    def acquire(self, t: Task, key: Any) -> None:
        """Order ``t`` after every release recorded on ``key``."""
        s = self.sync.get(key)
        if s is not None:
            _join(self.clock(t), s)
        e = self.excl.get(key)
        if e is not None:
            vc = self.clock(t)
            if vc.get(e[1], 0) < e[2]:
                _join(vc, e[0])

    def release(self, t: Task, key: Any) -> None:
        """Accumulating release: ``key`` remembers ``t``'s clock along with earlier ones."""
        vc = self.clock(t)
        s = self.sync.get(key)
        if s is None:
            self.sync[key] = dict(vc)
        else:
            _join(s, vc)
        vc[t.tid] += 1

    def release_exclusive(self, t: Task, key: Any) -> None:
        """Release of a token passed holder to holder (the releaser saw every earlier one)."""
        vc = self.clock(t)
        tid = t.tid
        c = vc[tid]
        self.excl[key] = (dict(vc), tid, c)
        vc[tid] = c + 1

    def fork(self, parent: Task, child: Task) -> None:
        pvc = self.clock(parent)
        cvc = dict(pvc)
        cvc[child.tid] = cvc.get(child.tid, 0) + 1
        child.vc = cvc
        pvc[parent.tid] += 1

    def join(self, parent: Task, child: Task) -> None:
        _join(self.clock(parent), self.clock(child))

    def access(self, t: Task, obj: Any, field: str, write: bool) -> None:
        """Record a read or write of ``obj.field`` by ``t``; report it if it races."""
        vc = self.clock(t)
        key = (obj, field)
        a = self.locs.get(key)
        if a is None:
            a = self.locs[key] = _Access()
        tid = t.tid
        if a.w_tid >= 0 and a.w_tid != tid and a.w_clock > vc.get(a.w_tid, 0):
            self._race(obj, field, "write", site_from(a.w_frame)[0], a.w_name, t, write)
        if write:
            for rtid, (rclock, rframe, rname) in a.reads.items():
                if rtid != tid and rclock > vc.get(rtid, 0):
                    self._race(obj, field, "read", site_from(rframe)[0], rname, t, write)
            a.w_tid = tid
            a.w_clock = vc[tid]
            a.w_frame = sys._getframe(2)  # the frame model_site(3) would start from
            a.w_name = t.name
            a.reads = {}
        else:
            a.reads[tid] = (vc[tid], sys._getframe(2), t.name)

    def _race(
        self, obj: Any, field: str, first_access: str, first_fn: str, first_thread: str, t: Task, write: bool
    ) -> None:
        fn = model_site(4)[0]
        access = "write" if write else "read"
        first = f"{first_access} in {first_fn} [{first_thread}]"
        second = f"{access} in {fn} [{t.name}]"
        loc = f"{type(obj).__name__}.{field}"
        key = (loc, f"{first_access} in {first_fn}", f"{access} in {fn}")
        if key in self._seen:
            return
        self._seen.add(key)
        race = DataRace(loc, first, second, self.kernel.step(), first_fn, fn, first_access, access)
        self.races.append(race)
        self.kernel.printk(f"BUG: KCSAN: {race}")
