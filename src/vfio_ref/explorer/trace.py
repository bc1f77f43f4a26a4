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
    width: int = 46,
    last: str = "",
    full: bool = False,
) -> str:
    """A text table of ``trace``; ``last`` (the finding) is printed under the final row.

    Operations before a :data:`SETUP_DONE` mark (building the platform) are folded into one
    line unless ``full``."""
    cols = len(threads)
    marks = [i for i, ev in enumerate(trace) if ev.op == SETUP_DONE]
    folded = 0
    if marks and not full:
        folded = marks[-1]
        trace = trace[marks[-1] + 1 :]
    header = "step  | " + " | ".join(f"{name[:width]:<{width}}" for name in threads)
    rule = "-" * len(header)
    out = [header, rule]
    if folded:
        out.append(f"      ({folded} operations building the platform folded; --full-trace shows them)")
    prev_thread: int | None = None
    for ev in trace:
        if prev_thread is not None and ev.thread != prev_thread:
            why = {"preempt": "preempted", "block": "blocked", "exit": "ended"}.get(ev.switch, "switch")
            out.append(
                f"      ~~ {threads[prev_thread] if prev_thread < cols else prev_thread} {why};"
                f" switch to {threads[ev.thread] if ev.thread < cols else ev.thread} ~~"
            )
        prev_thread = ev.thread
        cells = [""] * cols
        text = _cell(ev)
        if ev.thread < cols:
            cells[ev.thread] = text[:width]
        out.append(f"{ev.step:>5} | " + " | ".join(f"{c:<{width}}" for c in cells))
    if last:
        out.append(rule)
        out.append(last)
    return "\n".join(out)
