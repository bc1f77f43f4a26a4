"""The happens-before edges of every primitive, each in both directions.

For each synchronising pair (A does X, then B does Y), A writes a tracked field before X and
B reads it after Y: with an edge that is there, no data race may be reported; for each
operation that must NOT order (an increment, a put that does not reach zero, a plain atomic
read, a write made after the release), the same accesses must be reported as a race.  A
checker that adds an edge it does not have hides races; one that misses an edge reports
correct code: both mistakes fail a row here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from vfio_ref.kernel import Kernel, Mutex
from vfio_ref.kernel.atomic import Atomic
from vfio_ref.kernel.core import Task
from vfio_ref.kernel.refcount import Refcount
from vfio_ref.kernel.rwsem import RWSemaphore
from vfio_ref.kernel.wait import (
    complete,
    init_completion,
    init_waitqueue_head,
    wait_event,
    wait_for_completion,
    wake_up,
)


class Box:
    """A struct with one tracked field (its accesses recorded as the tracked-field code
    records them under the explorer)."""

    def __init__(self, k: Kernel) -> None:
        self.kernel = k

    def write(self) -> None:
        assert self.kernel.hb is not None
        self.kernel.hb.access(self.kernel.current(), self, "x", True)

    def read(self) -> None:
        assert self.kernel.hb is not None
        self.kernel.hb.access(self.kernel.current(), self, "x", False)


def _as(k: Kernel, t: Task) -> Callable[[], Iterator[None]]:
    @contextmanager
    def ctx() -> Iterator[None]:
        with k.as_task(t):
            yield

    return ctx


Step = Callable[[Kernel, dict[str, object]], None]


def _objs(k: Kernel) -> dict[str, object]:
    c = init_completion(k)
    wq = init_waitqueue_head(k, "wq")
    return {
        "m": Mutex(k, "m"),
        "rw": RWSemaphore(k, "rw"),
        "r2": Refcount(k, 2),
        "r3": Refcount(k, 3),
        "a": Atomic(k, 0),
        "c": c,
        "wq": wq,
    }


def _lock(o: dict[str, object]) -> Mutex:
    m = o["m"]
    assert isinstance(m, Mutex)
    return m


# (name, what A does after its write, what B does before its read, whether that orders them)
CASES: list[tuple[str, Callable[[dict[str, object]], None], Callable[[dict[str, object]], None], bool]] = [
    ("mutex unlock -> lock", lambda o: (_lock(o).lock(), _lock(o).unlock()), lambda o: _lock(o).lock(), True),
    ("no lock on B's side", lambda o: (_lock(o).lock(), _lock(o).unlock()), lambda o: None, False),
    ("mutex trylock after unlock", lambda o: (_lock(o).lock(), _lock(o).unlock()),
     lambda o: _lock(o).trylock(), True),
    ("up_write -> down_read", lambda o: (o["rw"].down_write(), o["rw"].up_write()),  # type: ignore[attr-defined]
     lambda o: o["rw"].down_read(), True),  # type: ignore[attr-defined]
    ("up_read -> down_write", lambda o: (o["rw"].down_read(), o["rw"].up_read()),  # type: ignore[attr-defined]
     lambda o: o["rw"].down_write(), True),  # type: ignore[attr-defined]
    ("up_read -> down_read (readers do not order)",
     lambda o: (o["rw"].down_read(), o["rw"].up_read()),  # type: ignore[attr-defined]
     lambda o: o["rw"].down_read(), False),  # type: ignore[attr-defined]
    ("refcount put -> final put", lambda o: o["r2"].dec_and_test(),  # type: ignore[attr-defined]
     lambda o: o["r2"].dec_and_test(), True),  # type: ignore[attr-defined]
    ("refcount put -> a put that does not reach zero", lambda o: o["r3"].dec_and_test(),  # type: ignore[attr-defined]
     lambda o: o["r3"].dec_and_test(), False),  # type: ignore[attr-defined]
    ("refcount put -> refcount_inc", lambda o: o["r3"].dec_and_test(),  # type: ignore[attr-defined]
     lambda o: o["r3"].inc(), False),  # type: ignore[attr-defined]
    ("refcount put -> refcount_inc_not_zero", lambda o: o["r3"].dec_and_test(),  # type: ignore[attr-defined]
     lambda o: o["r3"].inc_not_zero(), False),  # type: ignore[attr-defined]
    ("refcount_inc -> refcount_inc_not_zero", lambda o: o["r3"].inc(),  # type: ignore[attr-defined]
     lambda o: o["r3"].inc_not_zero(), False),  # type: ignore[attr-defined]
    ("refcount put -> refcount_read", lambda o: o["r3"].dec_and_test(),  # type: ignore[attr-defined]
     lambda o: o["r3"].read(), False),  # type: ignore[attr-defined]
    # (value-returning atomics order only under the explorer: test_shared_hb.py checks that)
    ("atomic_set -> atomic_read (unordered)",
     lambda o: o["a"].atomic_set(1), lambda o: o["a"].atomic_read(), False),  # type: ignore[attr-defined]
    ("complete -> wait_for_completion", lambda o: complete(o["c"]),  # type: ignore[arg-type]
     lambda o: wait_for_completion(o["c"]), True),  # type: ignore[arg-type]
    ("wake_up -> wait_event", lambda o: wake_up(o["wq"]),  # type: ignore[arg-type]
     lambda o: wait_event(o["wq"], lambda: True), True),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("name", "a_sync", "b_sync", "orders"), CASES, ids=[c[0] for c in CASES])
def test_an_edge_is_there_exactly_when_the_kernel_has_it(
    name: str,
    a_sync: Callable[[dict[str, object]], None],
    b_sync: Callable[[dict[str, object]], None],
    orders: bool,
) -> None:
    k = Kernel(hb=True)
    a, b = k.new_task("A"), k.new_task("B")
    o = _objs(k)
    box = Box(k)
    with _as(k, a)():
        box.write()  # before A's synchronising operation
        a_sync(o)
    with _as(k, b)():
        b_sync(o)
        box.read()
    assert k.hb is not None
    got = [(r.location, r.first_access, r.second_access) for r in k.hb.races]
    assert got == ([] if orders else [("Box.x", "write", "read")]), name


def test_a_write_after_the_release_is_not_ordered_by_it() -> None:
    k = Kernel(hb=True)
    a, b = k.new_task("A"), k.new_task("B")
    m = Mutex(k, "m")
    box = Box(k)
    with _as(k, a)():
        m.lock()
        m.unlock()
        box.write()  # after the release: the next acquirer is not ordered after it
    with _as(k, b)():
        m.lock()
        box.read()
        m.unlock()
    assert k.hb is not None
    assert [(r.location, r.first_access, r.second_access) for r in k.hb.races] == [("Box.x", "write", "read")]
