"""Swimlane rendering of a trace: one column per thread, one row per step.

Each cell names the kernel function that made the operation and what it touched by its
kernel expression, with the value before and after (``vfio_group_put: kref_put(&group->kref)
2→1``).  A ``kfree``, the faulting access, an injected failure and the two accesses of a
data race are steps of their own, tagged ``<==``; the first step of each user-space call is
preceded by the call (``» ioctl(VFIO_GROUP_SET_CONTAINER)``).  A line marks every context
switch and why it happened.

Folded by default (``full=True`` shows everything): the platform's setup (the steps before
the scenario's ``begin()``), and runs of driver-core traffic no vfio.c function takes part in
(the bus notifier's rwsem and reads, say).  Steps keep their numbers when folded, so a step
named in a report is the same with or without ``--full-trace``.  ``chains=True`` prints each
step's whole call chain under it.  Cells are never cut: a table wider than ``width`` (the
terminal's, when printing to one) wraps its cells instead.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from .scheduler import TraceEvent

SETUP_DONE = "setup-done"  # the op of the trace mark a scenario leaves when its setup is done

TAGS = {
    "kfree": "FREED",
    "fault": "FAULT",
    "inject": "FAILURE INJECTED",
    "race": "DATA RACE",
}


def cell_text(ev: TraceEvent) -> str:
    """The text of one step, as its cell shows it."""
    caller = ev.caller or (ev.functions[0] if ev.functions else "?")
    text = f"{caller}: {ev.what}"
    tag = TAGS.get(ev.mark)
    if tag:
        text += f"  <== {tag}"
    return text


def chain_text(ev: TraceEvent) -> str:
    return "  <- " + " <- ".join(ev.functions) if ev.functions else ""


def terminal_width() -> int | None:
    """The terminal's width when standard output is one (None: no limit)."""
    try:
        if sys.stdout is not None and sys.stdout.isatty():
            return shutil.get_terminal_size((120, 24)).columns
    except (OSError, ValueError):
        return None
    return None


def _folded(ev: TraceEvent) -> bool:
    return not ev.vfio and not ev.mark and not ev.user


def render_swimlanes(
    trace: Sequence[TraceEvent],
    threads: Sequence[str],
    *,
    width: int | None = None,
    last: str = "",
    full: bool = False,
    chains: bool = False,
) -> str:
    """A text table of ``trace``; ``last`` (the finding) is printed under the final row.
    ``width`` limits the table's width (default: the terminal's; no limit when the output
    is not a terminal); see the module docstring for what is folded."""
    if width is None:
        width = terminal_width()
    marks = [i for i, ev in enumerate(trace) if ev.op == SETUP_DONE]
    setup_end = marks[-1] if marks else -1
    numbered: list[tuple[int, TraceEvent]] = []
    n = 0
    setup_folded = 0
    for i, ev in enumerate(trace):
        if ev.op == SETUP_DONE:
            continue
        n += 1
        if i < setup_end and not full:
            setup_folded += 1
            continue
        numbered.append((n, ev))

    def name(i: int) -> str:
        return threads[i] if i < len(threads) else str(i)

    # Rows: (step number or None, thread, text lines).
    rows: list[tuple[str, int | None, list[str]]] = []
    prev_thread: int | None = None
    pending_fold = 0
    fold_from = 0

    def flush_fold() -> None:
        nonlocal pending_fold
        if pending_fold:
            steps = f"step {fold_from}" if pending_fold == 1 else f"steps {fold_from}-{fold_from + pending_fold - 1}"
            note = f"({steps}: driver-core traffic without vfio.c folded; --full-trace shows it)"
            rows.append(("note", None, [note]))
            pending_fold = 0

    # A program with no vfio.c at all (a toy of the explorer's tests) folds nothing.
    fold = not full and any(ev.vfio for _, ev in numbered)
    for no, ev in numbered:
        if fold and _folded(ev):
            if not pending_fold:
                fold_from = no
            pending_fold += 1
            continue
        flush_fold()
        if prev_thread is not None and ev.thread != prev_thread:
            why = {"preempt": "preempted", "block": "blocked", "exit": "ended"}.get(ev.switch, "switch")
            rows.append(("note", None, [f"~~ {name(prev_thread)} {why}; switch to {name(ev.thread)} ~~"]))
        prev_thread = ev.thread
        if ev.user:
            rows.append(("", ev.thread, [f"\u00bb {ev.user}"]))
        lines = [cell_text(ev)]
        if chains and ev.functions:
            lines.append(chain_text(ev))
        rows.append((str(no), ev.thread, lines))
    flush_fold()

    shown = {th for _, th, _ in rows if th is not None}
    cols = [i for i in range(len(threads)) if i in shown] or list(range(len(threads)))
    colw = {i: len(name(i)) for i in cols}
    for _, th, lines in rows:
        if th is not None and th in colw:
            colw[th] = max(colw[th], *(len(x) for x in lines))
    prefix = 8  # "12345 | "
    sep = 3  # " | "
    if width is not None:
        total = prefix + sum(colw.values()) + sep * (len(cols) - 1)
        if total > width:
            room = max(20, (width - prefix - sep * (len(cols) - 1)) // max(1, len(cols)))
            colw = {i: min(w, room) for i, w in colw.items()}

    def fmt(step: str, th: int | None, lines: list[str]) -> list[str]:
        wrapped: list[str] = []
        w = colw.get(th, 0) if th is not None else 0
        for line in lines:
            if th is not None and len(line) > w:
                wrapped.extend(textwrap.wrap(line, w, subsequent_indent="    ", break_on_hyphens=False) or [""])
            else:
                wrapped.append(line)
        out = []
        for k, line in enumerate(wrapped):
            cells = [line if i == th else "" for i in cols]
            label = step if k == 0 else ""
            body = " | ".join(f"{c:<{colw[i]}}" for c, i in zip(cells, cols, strict=True))
            out.append(f"{label:>5} | {body}".rstrip())
        return out

    header = "step  | " + " | ".join(f"{name(i):<{colw[i]}}" for i in cols)
    rule = "-" * len(header.rstrip())
    out = [header.rstrip(), rule]
    if setup_folded:
        out.append(f"      (steps 1-{setup_folded}: building the platform, folded; --full-trace shows them)")
    for step, th, lines in rows:
        if step == "note":
            out.append("      " + lines[0])
        else:
            out.extend(fmt(step, th, lines))
    if last:
        out.append(rule)
        out.append(last)
    return "\n".join(out)


def render_finding(f: Any, *, full: bool = False, chains: bool = False, width: int | None = None) -> str:
    """The swimlanes of an exploration's finding (its ``events``), ending with its summary,
    as ``scenarios.run()`` prints them."""
    head = f.detail.splitlines()[0] if f.detail else ""
    return render_swimlanes(f.events, f.threads, last=f"{f.kind}: {head}", full=full, chains=chains, width=width)
