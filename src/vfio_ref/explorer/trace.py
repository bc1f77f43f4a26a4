"""Swimlane rendering of a trace: one column per thread, one row per operation.

Each cell shows the kernel function that made the operation and what it touched (the lock's
class, the refcount and its value before the operation).  A line marks every context switch
and why it happened (a preemption, or the running thread blocked or ended).
"""

from __future__ import annotations

from collections.abc import Sequence

from .scheduler import TraceEvent

SETUP_DONE = "setup-done"  # the op of the trace mark a scenario leaves when its setup is done


def _cell(ev: TraceEvent) -> str:
    fn = ev.functions[0] if ev.functions else "?"
    return f"{fn}: {ev.what}"


def render_swimlanes(
    trace: Sequence[TraceEvent],
    threads: Sequence[str],
    *,
    width: int = 60,
    last: str = "",
    full: bool = False,
) -> str:
    """A text table of ``trace``; ``last`` (the finding) is printed under the final row.

    Operations before a :data:`SETUP_DONE` mark (building the platform) are folded into one
    line unless ``full``.  Each column is as wide as its longest cell, at most ``width``;
    threads with nothing in the shown part get no column."""
    marks = [i for i, ev in enumerate(trace) if ev.op == SETUP_DONE]
    folded = 0
    if marks and not full:
        folded = marks[-1]
        trace = trace[marks[-1] + 1 :]
    trace = [ev for ev in trace if ev.op != SETUP_DONE]
    cols = [i for i in range(len(threads)) if any(ev.thread == i for ev in trace)] or list(range(len(threads)))
    colw = {i: len(threads[i][:width]) for i in cols}
    for ev in trace:
        if ev.thread in colw:
            colw[ev.thread] = min(width, max(colw[ev.thread], len(_cell(ev))))

    def name(i: int) -> str:
        return threads[i] if i < len(threads) else str(i)

    header = "step  | " + " | ".join(f"{name(i)[:width]:<{colw[i]}}" for i in cols)
    rule = "-" * len(header)
    out = [header, rule]
    if folded:
        out.append(f"      ({folded} operations building the platform folded; --full-trace shows them)")
    prev_thread: int | None = None
    for ev in trace:
        if prev_thread is not None and ev.thread != prev_thread:
            why = {"preempt": "preempted", "block": "blocked", "exit": "ended"}.get(ev.switch, "switch")
            out.append(f"      ~~ {name(prev_thread)} {why}; switch to {name(ev.thread)} ~~")
        prev_thread = ev.thread
        text = _cell(ev)
        cells = [text[: colw[i]] if i == ev.thread else "" for i in cols]
        out.append(f"{ev.step:>5} | " + " | ".join(f"{c:<{colw[i]}}" for c, i in zip(cells, cols, strict=True)))
    if last:
        out.append(rule)
        out.append(last)
    return "\n".join(out)
