"""What the simulated kernel's primitives cost, relative to a bare threading.Lock.

Run: ``pytest benchmarks/bench_primitives.py`` (pytest-benchmark); with
``--benchmark-disable`` every benchmark body still runs once, as a smoke test.

Each benchmarked body repeats its operation LOOP times so the harness's per-call cost
vanishes; ``extra_info`` carries ns per operation and the ratio to the floor (a bare
``threading.Lock`` acquire + release, the cheapest thing a real lock can cost in Python).
ns per operation is the best round the harness measured; with the harness disabled, the
best of a short timeit run of the same body.
"""

from __future__ import annotations

import threading
import timeit
from collections.abc import Callable
from typing import Any

import pytest

from _bench import FLOOR_LOCK, tag, tag_floor
from vfio_ref.kernel import Kernel, Kref, KStruct, Mutex, Refcount, kzalloc

LOOP = 200
TABLE = "Primitives (free-running kernel)"


def _timeit_ns(body: Callable[[], None], repeat: int = 7) -> float:
    """ns per operation of ``body`` (best of several timeit runs)."""
    return min(timeit.repeat(body, number=20, repeat=repeat)) / 20 / LOOP * 1e9


_MEASURED: dict[str, float] = {}  # ns per op, by benchmark, as measured in this session


def _floor_body() -> Callable[[], None]:
    lk = threading.Lock()

    def body() -> None:
        for _ in range(LOOP):
            lk.acquire()
            lk.release()

    return body


def _record(benchmark: Any, body: Callable[[], None], name: str) -> float:
    """Put ns/op and the ratio to the floor in extra_info; return ns/op.

    With the harness on, ns/op is the best round it measured (the least disturbed by
    whatever else the machine runs); disabled, a short timeit run of the same body.
    """
    stats = getattr(benchmark, "stats", None)
    ns = stats.stats.min / LOOP * 1e9 if stats is not None else _timeit_ns(body)
    _MEASURED[name] = ns
    floor = _MEASURED.get("floor")
    if floor is None:  # the floor benchmark did not run first (deselected)
        floor = _MEASURED["floor"] = _timeit_ns(_floor_body(), repeat=25)
    benchmark.extra_info["ns_per_op"] = round(ns, 1)
    benchmark.extra_info["floor_ns_per_op"] = round(floor, 1)
    benchmark.extra_info["ratio_to_floor"] = round(ns / floor, 2)
    return ns


def test_floor_threading_lock(benchmark: Any) -> None:
    _MEASURED.pop("floor", None)
    body = _floor_body()
    tag_floor(benchmark, FLOOR_LOCK, "a bare threading.Lock acquire + release", per=LOOP)
    benchmark(body)
    _record(benchmark, body, "floor")


def test_refcount_inc_dec_and_test(benchmark: Any) -> None:
    k = Kernel()
    r = Refcount(k, 1)

    def body() -> None:
        for _ in range(LOOP):
            r.refcount_inc()
            r.refcount_dec_and_test()

    tag(benchmark, table=TABLE, row="refcount_inc + refcount_dec_and_test", key="refcount", per=LOOP)
    benchmark(body)
    _record(benchmark, body, "refcount")
    assert r.read() == 1 and k.warnings == []


def test_kref_get_put(benchmark: Any) -> None:
    k = Kernel()
    kref = Kref(k)
    kref.kref_init()
    released: list[Kref] = []

    def body() -> None:
        for _ in range(LOOP):
            kref.kref_get()
            kref.kref_put(released.append)

    tag(benchmark, table=TABLE, row="kref_get + kref_put", key="kref", per=LOOP)
    benchmark(body)
    _record(benchmark, body, "kref")
    assert kref.kref_read() == 1 and released == []


@pytest.mark.parametrize("lockdep", [True, False], ids=["lockdep_on", "lockdep_off"])
def test_mutex_lock_unlock(benchmark: Any, lockdep: bool) -> None:
    k = Kernel(lockdep=lockdep)
    outer = Mutex(k, "&vfio.group_lock")  # one lock already held: the usual nesting depth
    m = Mutex(k, "&group->unbound_lock")
    outer.lock()

    def body() -> None:
        for _ in range(LOOP):
            m.mutex_lock()
            m.mutex_unlock()

    on = "on" if lockdep else "off"
    tag(benchmark, table=TABLE, row=f"mutex_lock + mutex_unlock, lockdep {on}", key=f"mutex-{on}", per=LOOP)
    benchmark(body)
    _record(benchmark, body, f"mutex_lockdep_{'on' if lockdep else 'off'}")
    outer.unlock()
    assert not m.is_locked() and k.lockdep_reports == []


class VfioGroup(KStruct):
    def __init__(self, kernel: Kernel, *args: Any, **kwargs: Any) -> None:
        super().__init__(kernel)
        self.minor = 3
        self.container_users = 0


class PlainGroup:
    def __init__(self) -> None:
        self.minor = 3
        self.container_users = 0


def _field_body(obj: Any) -> Callable[[], None]:
    def body() -> None:
        for _ in range(LOOP):
            obj.container_users = obj.minor

    return body


def test_field_access_plain_object(benchmark: Any) -> None:
    body = _field_body(PlainGroup())
    tag(benchmark, table=TABLE, row="field read + write, plain Python object", key="field-plain", per=LOOP)
    benchmark(body)
    _record(benchmark, body, "plain_field")


def test_field_access_live_slab_object(benchmark: Any) -> None:
    k = Kernel()
    g = kzalloc(k, VfioGroup)
    assert g is not None
    body = _field_body(g)
    tag(benchmark, table=TABLE, row="field read + write, live slab object", key="field-slab", per=LOOP)
    benchmark(body)
    ns = _record(benchmark, body, "slab_field")
    # A live object keeps its own class: KASAN costs nothing until it is freed.
    plain = _MEASURED.get("plain_field")
    if plain is None:
        plain = _timeit_ns(_field_body(PlainGroup()))
    benchmark.extra_info["ratio_to_plain_object"] = round(ns / plain, 2)
    assert g.container_users == 3


def test_sched_hook_free_running(benchmark: Any) -> None:
    # What every lock, atomic, refcount and list operation pays for the explorer in
    # free-running mode: load k.sched, compare with None (the primitives' own pattern).
    k = Kernel()
    r = Refcount(k, 1)

    def body() -> None:
        for _ in range(LOOP):
            s = k.sched
            if s is not None:
                s.point("refcount_read", r)

    tag(benchmark, table=TABLE, row="scheduling hook, free-running (load k.sched, compare)", key="hook", per=LOOP)
    benchmark(body)
    _record(benchmark, body, "hook")
