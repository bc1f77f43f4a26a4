"""Small generated programs for checking the explorer's reductions against the plain search.

A program is two or three threads (and, in one of two shapes, the main thread working too
before it joins) of a few operations each, over the substrate's own primitives: atomics,
mutexes (critical sections, nested ones so that deadlocks happen, and trylock), a refcount_t,
a watched struct with plain members and a tracked (``SharedField``) member, a list_head, a
completion, and a struct that can be kfree'd and then used (use-after-free, double free).
Every value an operation returns is recorded per thread, and the final values are the
program's state, so an outcome tells the interleaving's effect, not only its findings.

``strategy()`` draws programs with hypothesis; ``PROGRAMS`` are fixed ones that once showed a
reduction missing an outcome (kept as regressions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from vfio_ref.explorer import Execution, RawFinding
from vfio_ref.kernel import Mutex
from vfio_ref.kernel.atomic import Atomic
from vfio_ref.kernel.refcount import Refcount
from vfio_ref.kernel.shared import INIT_LIST_HEAD, SharedField, list_add, list_del, list_empty
from vfio_ref.kernel.slab import KStruct, kfree, kzalloc
from vfio_ref.kernel.wait import complete, init_completion, wait_for_completion
from vfio_ref.scenarios.harness import judge_kernel

Op = tuple[Any, ...]


class Box(KStruct):
    """A watched struct: plain members ``x`` and ``y``, a tracked member ``s``."""

    s: SharedField[int] = SharedField(0)

    def __init__(self, k: Any) -> None:
        self.kernel = k
        self.x = 0
        self.y = 0


class Node(KStruct):
    _embedded = ("node",)

    def __init__(self, k: Any) -> None:
        self.kernel = k
        self.node = INIT_LIST_HEAD(k, self, "node")


@dataclass(frozen=True)
class Spec:
    threads: tuple[tuple[Op, ...], ...]
    main_works: tuple[Op, ...] = ()  # main's own operations between the spawns and the join

    def __str__(self) -> str:
        lines = [f"T{i + 1}: " + "; ".join(map(_fmt, ops)) for i, ops in enumerate(self.threads)]
        if self.main_works:
            lines.append("main: " + "; ".join(map(_fmt, self.main_works)))
        return "\n".join(lines)


def _fmt(op: Op) -> str:
    if op[0] == "cs":
        return f"lock m{op[1]} {{ " + "; ".join(map(_fmt, op[2])) + " }"
    return " ".join(str(x) for x in op)


class _World:
    def __init__(self, ctx: Execution) -> None:
        k = ctx.kernel
        self.k = k
        self.a = [Atomic(k, 0) for _ in range(3)]
        self.m = [Mutex(k, f"m{i}") for i in range(2)]
        self.r = Refcount(k, 2)
        box = kzalloc(k, Box)
        victim = kzalloc(k, Box)
        assert box is not None and victim is not None
        self.box = box
        self.victim = victim
        self.head = INIT_LIST_HEAD(k, None, "list")
        # One node per thread (main, T1..T3), each added and deleted only by its thread: which
        # nodes are on the list is then private to each thread (the explorer sees only model
        # objects; shared state kept in plain Python lists would be invisible to it).
        self.nodes: list[Node] = []
        for _ in range(4):
            n = kzalloc(k, Node)
            assert n is not None
            self.nodes.append(n)
        self.on_list = [False] * 4
        self.done = init_completion(k)


def _run(w: _World, op: Op, log: list[Any], me: int) -> None:
    kind = op[0]
    if kind == "read":
        log.append(w.a[op[1]].atomic_read())
    elif kind == "write":
        w.a[op[1]].atomic_set(op[2])
    elif kind == "inc":
        log.append(w.a[op[1]].atomic_add_return(1))
    elif kind == "cs":
        m = w.m[op[1]]
        m.lock()
        for inner in op[2]:
            _run(w, inner, log, me)
        m.unlock()
    elif kind == "trylock":
        m = w.m[op[1]]
        ok = m.trylock()
        log.append(int(ok))
        if ok:
            w.a[2].atomic_set(op[1] + 5)
            m.unlock()
    elif kind == "get":
        w.r.refcount_inc()
    elif kind == "put":
        log.append(int(w.r.refcount_dec_and_test()))
    elif kind == "rread":
        log.append(w.r.refcount_read())
    elif kind == "rnz":
        log.append(int(w.r.refcount_inc_not_zero()))
    elif kind == "adec":
        log.append(int(w.a[op[1]].atomic_dec_and_test()))
    elif kind == "ainc":
        w.a[op[1]].atomic_inc()
    elif kind == "pread":
        log.append(getattr(w.box, op[1]))
    elif kind == "pwrite":
        setattr(w.box, op[1], op[2])
    elif kind == "sread":
        log.append(w.box.s)
    elif kind == "swrite":
        w.box.s = op[1]
    elif kind == "ladd":
        if not w.on_list[me]:
            w.on_list[me] = True
            list_add(w.nodes[me].node, w.head)
    elif kind == "ldel":
        if w.on_list[me]:
            w.on_list[me] = False
            list_del(w.nodes[me].node)
    elif kind == "lempty":
        log.append(int(list_empty(w.head)))
    elif kind == "free":
        kfree(w.k, w.victim)
    elif kind == "use":
        log.append(w.victim.x)
    elif kind == "complete":
        complete(w.done)
    elif kind == "wait":
        wait_for_completion(w.done)
    else:  # pragma: no cover - the generator makes no other kind
        raise AssertionError(op)


def program_of(spec: Spec) -> Any:
    def program(ctx: Execution) -> None:
        w = _World(ctx)
        logs: dict[str, list[Any]] = {}

        def body(name: str, me: int, ops: Sequence[Op]) -> None:
            log = logs.setdefault(name, [])
            for op in ops:
                _run(w, op, log, me)

        threads = [
            ctx.spawn(f"T{i + 1}", lambda i=i, ops=ops: body(f"T{i + 1}", i + 1, ops))  # type: ignore[misc]
            for i, ops in enumerate(spec.threads)
        ]
        body("main", 0, spec.main_works)
        ctx.join(*threads)
        ctx.data["observations"] = {n: [int(v) for v in vals] for n, vals in logs.items()}
        box = w.box
        ctx.data["state"] = (
            tuple(a.counter for a in w.a),
            w.r.refs,
            object.__getattribute__(box, "x"),
            object.__getattribute__(box, "y"),
            box.__dict__.get("_shared_s", 0),
            tuple(w.on_list),
        )

    return program


def judge(ctx: Execution) -> Sequence[RawFinding]:
    return judge_kernel(ctx.kernel, teardown_done=False, deadlock=ctx.deadlock, step_limit=ctx.step_limit_hit)


# -- the generator ----------------------------------------------------------------------------

_simple = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 2)),
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("inc"), st.integers(0, 2)),
    st.tuples(st.just("get")),
    st.tuples(st.just("put")),
    st.tuples(st.just("rread")),
    st.tuples(st.just("rnz")),
    st.tuples(st.just("adec"), st.integers(0, 2)),
    st.tuples(st.just("ainc"), st.integers(0, 2)),
    st.tuples(st.just("pread"), st.sampled_from(["x", "y"])),
    st.tuples(st.just("pwrite"), st.sampled_from(["x", "y"]), st.integers(1, 3)),
    st.tuples(st.just("sread")),
    st.tuples(st.just("swrite"), st.integers(1, 3)),
    st.tuples(st.just("ladd")),
    st.tuples(st.just("ldel")),
    st.tuples(st.just("lempty")),
    st.tuples(st.just("free")),
    st.tuples(st.just("use")),
    st.tuples(st.just("trylock"), st.integers(0, 1)),
    st.tuples(st.just("complete")),
    st.tuples(st.just("wait")),
)


def _cs(inner: st.SearchStrategy[Op]) -> st.SearchStrategy[Op]:
    return st.tuples(st.just("cs"), st.integers(0, 1), st.lists(inner, min_size=0, max_size=2).map(tuple))


_op = st.one_of(_simple, _cs(st.one_of(_simple, _cs(_simple))))


def _ops(max_ops: int) -> st.SearchStrategy[tuple[Op, ...]]:
    return st.lists(_op, min_size=1, max_size=max_ops).map(tuple)


def strategy(*, threads: int = 2, max_ops: int = 3) -> st.SearchStrategy[Spec]:
    """Programs of ``threads`` threads of 1..``max_ops`` operations; in half of them main
    works too (a running thread besides the spawned ones, instead of main blocked in join)."""
    return st.builds(
        Spec,
        st.tuples(*[_ops(max_ops)] * threads),
        st.one_of(st.just(()), st.lists(_simple, min_size=1, max_size=2).map(tuple)),
    )


# Programs that once made a reduction miss an outcome or a finding (regressions).
PROGRAMS: dict[str, Spec] = {
    # The issue's example at bound 1: T1 a2=1; read a0; a1=2, T2 a0=1; read a0; a1=3; read a0.
    "issue_bound1": Spec(
        (
            (("write", 2, 1), ("read", 0), ("write", 1, 2)),
            (("write", 0, 1), ("read", 0), ("write", 1, 3), ("read", 0)),
        )
    ),
    # sound-reduction.md 2.3: an asleep racing thread must not hide an intermediate run.
    "asleep_racer": Spec((( ("write", 1, 2), ("read", 2)), (("read", 2),)), (("write", 2, 1),)),
    # sound-reduction.md 3.2, bound 1: a sleeping step of another thread than the running one.
    "sleep_other_thread": Spec(((("read", 0), ("write", 0, 1)), (("write", 0, 2),), (("read", 0),))),
    # Bound 0 with main in join: T1 z=1; read x, T2 x=1.
    "main_in_join": Spec(((("write", 2, 1), ("read", 0)), (("write", 0, 1),))),
    # A lock that one thread never releases (it exits holding it): the other thread's
    # acquire never runs in some schedules, so the race is seen on its pending acquire.
    "held_forever": Spec(((("cs", 0, (("wait",),)),), (("cs", 0, ()), ("complete",)))),
    # A trylock can run between another thread's trylock and unlock, and fail: its race is
    # with the unlock, not (as a waiting lock's) with the other acquire.
    "two_trylocks": Spec(((("trylock", 0),), (("trylock", 0),))),
    # Two frees of one object: whichever thread frees second dies of the double free, so
    # both orders must be seen (the second free's step must record its access).
    "double_free_order": Spec(((("get",),), (("read", 0), ("free",))), (("get",), ("free",))),
    # A waiting lock's race with a release goes back to the acquire the release ends, even
    # when that acquire was a trylock.
    "trylock_vs_lock": Spec(((("trylock", 0),), (("cs", 0, (("read", 0),)),))),
    # Counter steps commute only away from zero: two puts from 3 do, from 2 they do not.
    "puts_near_zero": Spec(((("put",), ("put",)), (("put",), ("get",))), (("get",),)),
    "puts_and_read": Spec(((("put",), ("rread",)), (("get",), ("put",)))),
    # A read that closes a segment of counter steps: a later read of another thread still
    # depends on those steps (reads do not order one another).
    "get_then_reads": Spec(((("get",), ("rread",)), (("rread",),))),
    # Free against use, through plain member reads only.
    "free_vs_use": Spec(((("free",),), (("use",), ("read", 0)))),
}


def generated_settings(examples: int) -> settings:
    """Hypothesis settings for tests over generated programs: ``examples`` of them, no
    deadline (a search's time varies with the program), none refused for being slow or big."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )
