"""Small programs with known answers, for testing the explorer itself."""

from __future__ import annotations

from collections.abc import Sequence

from vfio_ref.explorer import Execution, RawFinding
from vfio_ref.kernel import Mutex
from vfio_ref.kernel.atomic import Atomic
from vfio_ref.scenarios.harness import judge_kernel


def lost_update(ctx: Execution) -> None:
    """Two threads read-modify-write a counter with no lock: an update can be lost."""
    a = Atomic(ctx.kernel, 0)

    def body() -> None:
        v = a.atomic_read()
        a.atomic_set(v + 1)

    t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
    ctx.join(t1, t2)
    ctx.data["v"] = a.counter


def judge_lost_update(ctx: Execution) -> Sequence[RawFinding]:
    v = ctx.data.get("v")
    return [] if v == 2 else [RawFinding("bug", f"lost update: counter is {v}, not 2", "lost-update")]


def ab_ba(ctx: Execution) -> None:
    """T1 takes A then B, T2 takes B then A: lockdep sees it in any schedule; some deadlock."""
    k = ctx.kernel
    a, b = Mutex(k, "A"), Mutex(k, "B")

    def one() -> None:
        a.lock()
        b.lock()
        b.unlock()
        a.unlock()

    def two() -> None:
        b.lock()
        a.lock()
        a.unlock()
        b.unlock()

    t1, t2 = ctx.spawn("T1", one), ctx.spawn("T2", two)
    ctx.join(t1, t2)


def locked_steps(n: int) -> object:
    """Two threads of ``n`` locked steps each on one mutex: correct, all dependent."""

    def program(ctx: Execution) -> None:
        m = Mutex(ctx.kernel, "m")

        def body() -> None:
            for _ in range(n):
                m.lock()
                m.unlock()

        t1, t2 = ctx.spawn("T1", body), ctx.spawn("T2", body)
        ctx.join(t1, t2)

    return program


def independent_steps(n: int) -> object:
    """Two threads of ``n`` steps each, on their own mutexes: everything commutes."""

    def program(ctx: Execution) -> None:
        k = ctx.kernel

        def body(name: str) -> None:
            m = Mutex(k, name)
            for _ in range(n):
                m.lock()
                m.unlock()

        t1 = ctx.spawn("T1", lambda: body("m1"))
        t2 = ctx.spawn("T2", lambda: body("m2"))
        ctx.join(t1, t2)

    return program


def judge_all(ctx: Execution) -> Sequence[RawFinding]:
    dl = ctx.deadlock
    return judge_kernel(ctx.kernel, teardown_done=False, deadlock=str(dl) if dl is not None else None)


def nothing(ctx: Execution) -> Sequence[RawFinding]:
    return []


def lock_handoff(ctx: Execution) -> None:
    """T1 writes a flag under a mutex, T2 reads it under the same mutex, each after a step on
    a mutex of its own: T2 sees 0 or 1, depending on which thread takes the mutex first."""
    k = ctx.kernel
    m = Mutex(k, "m")
    flag = Atomic(k, 0)
    seen: list[int] = []

    def private_step(name: str) -> None:
        own = Mutex(k, name)
        own.lock()
        own.unlock()

    def writer() -> None:
        private_step("own1")
        m.lock()
        flag.atomic_set(1)
        m.unlock()

    def reader() -> None:
        private_step("own2")
        m.lock()
        seen.append(flag.atomic_read())
        m.unlock()

    t1, t2 = ctx.spawn("T1", writer), ctx.spawn("T2", reader)
    ctx.join(t1, t2)
    ctx.data["seen"] = seen[0]


def wait_on_freed_mutex(ctx: Execution) -> None:
    """T1 frees a struct while T2 waits for the mutex inside it."""
    from vfio_ref.kernel.slab import KStruct, kfree, kzalloc

    k = ctx.kernel

    class Box(KStruct):
        _embedded = ("m",)  # the mutex is part of the struct: freed with it

        def __init__(self, k: object) -> None:
            self.m = Mutex(k, "box->m")  # type: ignore[arg-type]

    box = kzalloc(k, Box)
    assert box is not None
    box.m.lock()

    def freer() -> None:
        kfree(k, box)

    def waiter() -> None:
        box.m.lock()

    t2 = ctx.spawn("T2", waiter)
    t1 = ctx.spawn("T1", freer)
    ctx.join(t1, t2)
