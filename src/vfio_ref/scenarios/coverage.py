"""Which modelled vfio.c functions, and which of their branches, explored schedules reached.

"Clean" says nothing found in the schedules explored; coverage says what those schedules
ran.  While a :class:`Coverage` is active, every line executed in a function of vfio.c's
model (the level modules and the ablations, not the simulated kernel or the platform) is
recorded with the line executed before it in the same call (an *arc*).  A *branch* is one
way out of an ``if`` (or ``elif``) of such a function: into its body ("true"), or past it
("false": into its ``else``, or to whatever runs next).  A branch was taken when an arc
leaves the condition's lines for that target.

It runs Python's line tracer over every schedule, so it is slow (``docs/EXPLORER.md``
gives the measured cost) and off unless asked for.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

_VFIO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vfio")
_NOT_VFIO_C = ("platform.py", "source.py", "level.py", "__init__.py")


def _is_vfio_c(filename: str) -> bool:
    return filename.startswith(_VFIO_DIR) and not filename.endswith(_NOT_VFIO_C)


@dataclass(frozen=True)
class Branch:
    where: str  # the model's file (p5.py)
    line: int  # the condition's first line
    test_lines: tuple[int, int]  # first and last line of the condition
    label: str  # "if IS_ERR(group)"
    true_line: int
    false_line: int | None  # the else's first line (None: whatever runs next)
    end_line: int  # the last line of the if statement's body


@dataclass
class FunctionInfo:
    name: str
    code: CodeType
    branches: list[Branch]


def _branches(fn: Any) -> list[Branch]:
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return []
    src = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    off = start - 1
    where = os.path.basename(inspect.getsourcefile(fn) or "?")
    out: list[Branch] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            label = "if " + ast.unparse(test)
            if len(label) > 70:
                label = label[:67] + "..."
            out.append(
                Branch(
                    where,
                    test.lineno + off,
                    (test.lineno + off, (test.end_lineno or test.lineno) + off),
                    label,
                    node.body[0].lineno + off,
                    node.orelse[0].lineno + off if node.orelse else None,
                    (node.body[-1].end_lineno or node.body[-1].lineno) + off,
                )
            )
    out.sort(key=lambda b: b.line)
    return out


def vfio_functions(level: str, review_fixes: bool = False, ablation: str | None = None) -> list[FunctionInfo]:
    """The modelled vfio.c functions in force at a level (with its fixes or ablation)."""
    from ..vfio import level_class

    cls = level_class(level, review_fixes, ablation)
    out = []
    for name in cls.function_names():
        found = cls.resolve(name)
        if found is None:
            continue
        fn = inspect.unwrap(found[1])
        code = getattr(fn, "__code__", None)
        if code is None or not _is_vfio_c(code.co_filename):
            continue
        out.append(FunctionInfo(name, code, _branches(fn)))
    return out


@dataclass
class FunctionCoverage:
    reached: bool
    branches: int
    taken: int
    missed: list[str] = field(default_factory=list)


@dataclass
class CoverageReport:
    """What the explored schedules reached of vfio.c at a level."""

    level: str
    by_function: dict[str, FunctionCoverage]

    @property
    def functions(self) -> int:
        return len(self.by_function)

    @property
    def reached(self) -> int:
        return sum(1 for f in self.by_function.values() if f.reached)

    @property
    def branches(self) -> int:
        return sum(f.branches for f in self.by_function.values())

    @property
    def branches_taken(self) -> int:
        return sum(f.taken for f in self.by_function.values())

    def cell(self) -> str:
        """``fn 20/31 br 30/58``: functions reached and branches taken."""
        return f"fn {self.reached}/{self.functions} br {self.branches_taken}/{self.branches}"

    def render(self, *, missed: bool = True) -> str:
        lines = [
            f"coverage of vfio.c at {self.level} over the explored schedules: {self.reached} of {self.functions} "
            f"modelled functions reached, {self.branches_taken} of {self.branches} branches taken"
        ]
        if missed:
            never = [n for n, f in self.by_function.items() if not f.reached]
            if never:
                lines.append("  functions never reached: " + ", ".join(never))
            for n, f in self.by_function.items():
                if f.reached and f.missed:
                    lines.append(f"  {n}: never " + "; never ".join(f.missed))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "functions": self.functions,
            "reached": self.reached,
            "branches": self.branches,
            "branches_taken": self.branches_taken,
            "by_function": {
                n: {"reached": f.reached, "branches": f.branches, "taken": f.taken, "missed": list(f.missed)}
                for n, f in self.by_function.items()
            },
        }


class Coverage:
    """A line tracer over vfio.c's model, as a context manager; ``report()`` after."""

    def __init__(self, level: str, review_fixes: bool = False, ablation: str | None = None) -> None:
        self.level = level
        self.functions = vfio_functions(level, review_fixes, ablation)
        self._codes = {id(f.code): f for f in self.functions}
        self.arcs: dict[int, set[tuple[int, int]]] = {id(f.code): set() for f in self.functions}
        self.calls: set[int] = set()
        self._prev: Any = None

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        key = id(code)
        arcs = self.arcs.get(key)
        if arcs is None or self._codes[key].code is not code:
            return None
        self.calls.add(key)
        last = [code.co_firstlineno]

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                ln = frame.f_lineno
                arcs.add((last[0], ln))
                last[0] = ln
            return local

        return local

    def __enter__(self) -> Coverage:
        self._prev = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._prev)

    def report(self) -> CoverageReport:
        out: dict[str, FunctionCoverage] = {}
        for f in self.functions:
            key = id(f.code)
            arcs = self.arcs[key]
            reached = key in self.calls
            fc = FunctionCoverage(reached, 2 * len(f.branches), 0)
            for b in f.branches:
                lo, hi = b.test_lines
                outs = {dst for src, dst in arcs if lo <= src <= hi and not lo <= dst <= hi}
                took_true = b.true_line in outs
                if b.false_line is not None:
                    took_false = b.false_line in outs
                else:
                    took_false = any(d != b.true_line and not b.true_line <= d <= b.end_line for d in outs)
                for taken, side in ((took_true, "true"), (took_false, "false")):
                    if taken:
                        fc.taken += 1
                    else:
                        fc.missed.append(f"`{b.label}` {side} ({b.where}:{b.line})")
            out[f.name] = fc
        return CoverageReport(self.level, out)


def merge(reports: list[CoverageReport]) -> CoverageReport:
    """The union of several reports at one level (a fault sweep's points)."""
    first = reports[0]
    by: dict[str, FunctionCoverage] = {}
    for name in first.by_function:
        fcs = [r.by_function[name] for r in reports if name in r.by_function]
        missed = set.intersection(*(set(f.missed) for f in fcs)) if fcs else set()
        total = fcs[0].branches if fcs else 0
        by[name] = FunctionCoverage(any(f.reached for f in fcs), total, total - len(missed),
                                    [m for m in fcs[0].missed if m in missed])
    return CoverageReport(first.level, by)
