"""Helpers shared by the benchmark modules: report tags, quick mode, and the hook stub.

Every benchmark tags itself with where its figure goes in the Markdown report that
``vfio-ref bench`` writes (``benchmark.extra_info["report"]``):

* ``table``: the hot path (one table each), ``row`` and ``col`` (a level, or ``""``);
* ``key``: a stable name the report's goals refer to (``"refcount"``, ``"create@p5"``...);
* ``floor``: the key of the floor this figure is divided by (measured in the same run);
* ``per``: how many operations one benchmarked call performs (figures are per operation);
* ``show``: ``"op"`` (show the per-operation time) or ``"total"`` (show the whole call's
  time, e.g. the time to exhaust a scenario; the ratio is still per operation);
* ``note``: extra text for the cell (a schedule count...), ``x``: an abscissa for plots.

Floors tag themselves with ``floor_of`` (their key) instead.  Ratios are computed by the
report from the fastest round of each benchmark (the least disturbed by other load).

``QUICK`` (env ``VFIO_REF_BENCH_QUICK=1``, set by ``vfio-ref bench --quick``) shrinks the
heaviest configurations so the whole suite runs in about a minute.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

QUICK = os.environ.get("VFIO_REF_BENCH_QUICK", "") not in ("", "0")

# Floors every table can fall back on.
FLOOR_LOCK = "floor:lock"
FLOOR_GREENLET = "floor:greenlet"


def floor_scan(n: int) -> str:
    return f"floor:scan:{n}"


def is_disabled(benchmark: Any) -> bool:
    """True under ``--benchmark-disable`` (CI's smoke run: each body once, no timing)."""
    return bool(getattr(benchmark, "disabled", False))


def tag(
    benchmark: Any,
    *,
    table: str,
    row: str,
    col: str = "",
    key: str | None = None,
    floor: str | None = FLOOR_LOCK,
    per: int = 1,
    show: str = "op",
    note: str = "",
    x: float | None = None,
) -> None:
    """Say where this benchmark's figure goes in the report (see the module docstring)."""
    info: dict[str, Any] = {"table": table, "row": row, "col": col, "per": per, "show": show}
    if key is not None:
        info["key"] = key
    if floor is not None:
        info["floor"] = floor
    if note:
        info["note"] = note
    if x is not None:
        info["x"] = x
    benchmark.extra_info["report"] = info


def tag_floor(benchmark: Any, key: str, label: str, *, per: int = 1) -> None:
    """Mark this benchmark as the floor ``key`` (``label`` says what it is)."""
    benchmark.extra_info["report"] = {"floor_of": key, "label": label, "per": per}


def add_note(benchmark: Any, note: str) -> None:
    info = benchmark.extra_info.get("report")
    if info is not None:
        info["note"] = note


# -- stubbing out the scheduling hook ---------------------------------------------------------
#
# In free-running mode the hook is ``s = k.sched`` then ``if s is not None: s.point(...)``:
# an attribute load and a compare per lock, atomic, refcount and list operation.  To measure
# what it adds, the kernel modules are recompiled with ``<x>.sched`` known to be None and the
# code folded accordingly (``if s is not None: ...`` disappears, ``if s is None`` keeps its
# body), and each function's ``__code__`` is swapped for the folded one while the stub is
# active.  Nothing else changes: same functions, same objects, same line numbers.

_NONE_CMP = (ast.Is, ast.IsNot)


class _FoldSched(ast.NodeTransformer):
    """Fold one function body with every ``<expr>.sched`` load known to be None."""

    def __init__(self) -> None:
        self.none_names: set[str] = set()

    # A local bound once, from ``<expr>.sched``, is None too.
    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        saved = self.none_names
        assigned: dict[str, int] = {}
        from_sched: set[str] = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for t in sub.targets:
                    if isinstance(t, ast.Name):
                        assigned[t.id] = assigned.get(t.id, 0) + 1
                        if _is_sched_load(sub.value):
                            from_sched.add(t.id)
            elif isinstance(sub, (ast.AugAssign, ast.AnnAssign, ast.For, ast.With, ast.NamedExpr)):
                for t in ast.walk(sub.target if hasattr(sub, "target") else sub):
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
                        assigned[t.id] = assigned.get(t.id, 0) + 2
        own = {n for n in from_sched if assigned.get(n) == 1}
        # A nested function still sees the enclosing function's folded locals (closures).
        self.none_names = (saved - set(assigned)) | own
        self.generic_visit(node)
        if not node.body:
            node.body = [ast.copy_location(ast.Pass(), node)]
        self.none_names = saved
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id in self.none_names:
            return None  # the local is folded away
        return self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr == "sched" and isinstance(node.ctx, ast.Load):
            return ast.copy_location(ast.Constant(None), node)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> Any:
        if isinstance(node.ctx, ast.Load) and node.id in self.none_names:
            return ast.copy_location(ast.Constant(None), node)
        return node

    def visit_Compare(self, node: ast.Compare) -> Any:
        self.generic_visit(node)
        if (
            len(node.ops) == 1
            and isinstance(node.ops[0], _NONE_CMP)
            and _is_none(node.left)
            and _is_none(node.comparators[0])
        ):
            return ast.copy_location(ast.Constant(isinstance(node.ops[0], ast.Is)), node)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant) and isinstance(node.test.value, bool):
            return node.body if node.test.value else node.orelse
        return node

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant) and isinstance(node.test.value, bool):
            return (node.body if node.test.value else node.orelse) or None
        if not node.body:
            node.body = [ast.copy_location(ast.Pass(), node)]
        return node


def _is_sched_load(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "sched" and isinstance(node.ctx, ast.Load)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield c
            yield from _code_objects(c)


def _functions_of(mod: types.ModuleType) -> Iterator[types.FunctionType]:
    """The functions and methods defined in ``mod`` (not nested ones: they live in their
    enclosing function's code)."""
    seen: set[int] = set()

    def fn(obj: Any) -> Iterator[types.FunctionType]:
        for cand in (obj, getattr(obj, "__func__", None), getattr(obj, "fget", None), getattr(obj, "fset", None)):
            if isinstance(cand, types.FunctionType):
                cand = inspect.unwrap(cand)
                if (
                    isinstance(cand, types.FunctionType)
                    and id(cand) not in seen
                    and cand.__code__.co_filename == mod.__file__
                ):
                    seen.add(id(cand))
                    yield cand

    for obj in list(vars(mod).values()):
        if isinstance(obj, type) and obj.__module__ == mod.__name__:
            for member in list(vars(obj).values()):
                yield from fn(member)
        else:
            yield from fn(obj)


def _kernel_modules() -> list[types.ModuleType]:
    import vfio_ref.kernel as kpkg

    return [importlib.import_module(f"vfio_ref.kernel.{m.name}") for m in pkgutil.iter_modules(kpkg.__path__)]


def _folded_codes(mod: types.ModuleType) -> dict[tuple[str, int], types.CodeType]:
    assert mod.__file__ is not None
    with open(mod.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read(), mod.__file__)
    tree = ast.fix_missing_locations(_FoldSched().visit(tree))
    code = compile(tree, mod.__file__, "exec")
    # A property's getter and setter share a qualname: the first line tells them apart.
    return {(c.co_qualname, c.co_firstlineno): c for c in _code_objects(code)}


_swaps: list[tuple[types.FunctionType, types.CodeType, types.CodeType]] | None = None


def _plan() -> list[tuple[types.FunctionType, types.CodeType, types.CodeType]]:
    global _swaps
    if _swaps is None:
        swaps = []
        for mod in _kernel_modules():
            folded = _folded_codes(mod)
            for f in _functions_of(mod):
                new = folded.get((f.__code__.co_qualname, f.__code__.co_firstlineno))
                if new is None or (new.co_code == f.__code__.co_code and new.co_consts == f.__code__.co_consts):
                    continue
                if new.co_freevars != f.__code__.co_freevars:
                    continue
                swaps.append((f, f.__code__, new))
        _swaps = swaps
    return _swaps


@contextmanager
def sched_hook_stubbed() -> Iterator[int]:
    """Within the block, the kernel runs as if it had no scheduling hook (free-running mode
    only: a controlled kernel would misbehave).  Yields the number of functions changed."""
    plan = _plan()
    for f, _, new in plan:
        f.__code__ = new
    try:
        yield len(plan)
    finally:
        for f, old, _ in plan:
            f.__code__ = old


def greenlet_ping_pong(switches: int) -> tuple[Callable[[], None], Any]:
    """A call that makes ``switches`` bare greenlet switches (there and back with a partner
    that only switches back): the floor of an explorer scheduling point; and the partner."""
    from greenlet import getcurrent, greenlet

    main = getcurrent()

    def partner() -> None:
        while True:
            main.switch()

    g = greenlet(partner)
    switch = g.switch
    rng = range(switches // 2)

    def ping_pong() -> None:
        for _ in rng:
            switch()  # there and back: two switches

    return ping_pong, g


class ScanEntry:
    """An entry of the bare list scan (``floor:scan:N``): one attribute, compared by identity."""

    __slots__ = ("iommu_group",)

    def __init__(self) -> None:
        self.iommu_group = object()


def bare_scan(n: int, loops: int = 1) -> Callable[[], None]:
    """A call that scans a list of ``n`` ScanEntry ``loops`` times for the last one's attribute."""
    entries = [ScanEntry() for _ in range(n)]
    target = entries[-1].iommu_group
    rng = range(loops)

    def scan() -> None:
        for _ in rng:
            for e in entries:
                if e.iommu_group is target:
                    break

    return scan


def timed_loop(body: Callable[[], object], loops: int) -> Callable[[], None]:
    """``body`` repeated ``loops`` times, as one benchmarked call."""
    rng = range(loops)

    def run() -> None:
        for _ in rng:
            body()

    return run


# -- booting a level for the vfio benchmarks -------------------------------------------------------

# Patches 3 and 4 as posted free the group vfio_create_group returns (the bug review found),
# so anything that creates a group and goes on using it runs them with the review fix.
FIXED_IN_REVIEW = ("p3", "p4")


def level_label(level: str) -> str:
    return f"{level}+fix" if level in FIXED_IN_REVIEW else level


def boot_level(level: str, **kernel_opts: Any) -> Any:
    """vfio.c at ``level`` on a fresh free-running kernel, vfio_init() done, fault-point
    recording off (a benchmark passes millions of injectable points)."""
    from vfio_ref.vfio import boot

    v = boot(level, review_fixes=level in FIXED_IN_REVIEW, **kernel_opts)
    v.k.fault_inject.recording = False
    return v


def pci_name(i: int) -> str:
    """A distinct PCI address for device number ``i``."""
    return f"0000:{i >> 8:02x}:{(i >> 3) & 31:02x}.{i & 7}"
