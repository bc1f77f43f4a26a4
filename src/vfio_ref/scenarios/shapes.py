"""Findings in the report shapes the kernel prints, built from the checkers' records and,
in a traced replay, from its trace.

* use-after-free, as KASAN: the faulting access (function, kernel expression, read or
  write, by which task, its call chain), then "Allocated by" and "Freed by" with whole call
  chains, and the step of the trace that freed it;
* data race, as KCSAN: both accesses, each with its task, step and call chain (the two
  steps are marked in the trace);
* leak, as kmemleak's "unreferenced object" followed by ref_tracker's list: for each
  reference still held, the step and call chain that took it and found no put.

Only the first line of each detail is read back by anything (the one-line summaries of the
swimlanes and the matrix); identities are built from structured fields, never from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..explorer.scheduler import TraceEvent
from ..explorer.trace import SETUP_DONE
from ..kernel.core import KernelFault, UseAfterFree, WarnEvent
from ..kernel.hb import DataRace
from ..kernel.kexpr import kexpr, struct_name, type_name, var_for_type, var_name
from ..kernel.slab import AllocInfo, FreeInfo, KStruct, Leak, embedded_members


def chain_block(title: str, chain: Iterable[str]) -> str:
    """A title line and one kernel function per line, innermost first (as a stack dump)."""
    return "\n".join([title, *(f"  {fn}" for fn in chain)])


def expr_of(type_: str, member: str) -> str:
    """``group->device_lock`` for member ``device_lock`` of a ``VfioGroup`` (a list head's
    name is already its kernel expression)."""
    if type_ == "ListHead" or not type_:
        return member
    return f"{var_for_type(type_)}->{member}"


class TraceView:
    """A traced replay's steps, numbered as the swimlanes number them."""

    def __init__(self, trace: list[TraceEvent], threads: Sequence[str]) -> None:
        self.trace = trace
        self.threads = list(threads)

    def number(self, ev: TraceEvent) -> int:
        n = 0
        for e in self.trace:
            if e.op == SETUP_DONE:
                continue
            n += 1
            if e is ev:
                return n
        return 0

    def tid(self, thread: str) -> int:
        return self.threads.index(thread) if thread in self.threads else -1

    def add_fault_steps(self, faults: Iterable[KernelFault]) -> None:
        """Put each fault in the trace as a step of its own, right after its thread's last
        step (a thread runs alone from one scheduling point to the next, so nothing of
        another thread happened in between)."""
        for f in faults:
            tid = self.tid(f.thread)
            if tid < 0 or any(e.mark == "fault" and e.thread == tid for e in self.trace):
                continue
            at = max((i for i, e in enumerate(self.trace) if e.thread == tid), default=len(self.trace) - 1)
            what = fault_step_text(f)
            chain = tuple(f.backtrace)
            self.trace.insert(
                at + 1,
                TraceEvent(
                    self.trace[at].step if self.trace else 0, tid, "fault", what, chain, "",
                    f.function or (chain[0] if chain else "?"), mark="fault",
                ),
            )

    def freeing_step(self, info: FreeInfo) -> TraceEvent | None:
        tid = self.tid(info.thread)
        hits = [e for e in self.trace if e.mark == "kfree" and e.thread == tid and info.function in e.functions]
        return hits[-1] if hits else None

    def fault_step(self, f: KernelFault) -> TraceEvent | None:
        tid = self.tid(f.thread)
        return next((e for e in self.trace if e.mark == "fault" and e.thread == tid), None)

    # -- data races ---------------------------------------------------------------------------

    def race_steps(self, race: DataRace) -> tuple[TraceEvent | None, TraceEvent | None]:
        """The two racing accesses among the steps (the second is the one that found the
        race, at ``race.step``); both are marked."""
        loc = race.location
        cands = [e for e in self.trace if e.location == loc]
        second: TraceEvent | None = None
        for e in cands:
            if race.step is not None and e.step > race.step:
                break
            if race.second_function in e.functions:
                second = e
        first: TraceEvent | None = None
        if second is not None:
            for e in cands:
                if e is second:
                    break
                if e.thread != second.thread and race.first_function in e.functions:
                    first = e
        for hit in (first, second):
            if hit is not None:
                hit.mark = "race"
        return first, second

    # -- leaks --------------------------------------------------------------------------------

    def ref_tracker(self, obj: Any, leak: Leak) -> str:
        """For each reference counter of ``obj``: the references still held, each with the
        step that took it and its call chain.  A put gives back the latest reference its own
        task took, else the latest one outstanding (the model keeps no tracker per reference,
        so this pairing is how the references are told apart)."""
        counters = refcounts_of(obj)
        lines: list[str] = []
        for cid, expr in counters:
            held: list[TraceEvent] = []
            gets = puts = 0
            for e in self.trace:
                if e.oid != cid or not e.after or not e.before:
                    continue
                try:
                    delta = int(e.after) - int(e.before)
                except ValueError:
                    continue
                if delta > 0:
                    gets += 1
                    held.extend([e] * delta)
                elif delta < 0:
                    puts += 1
                    for _ in range(-delta):
                        if not held:
                            break
                        mine = [i for i, h in enumerate(held) if h.thread == e.thread]
                        held.pop(mine[-1] if mine else -1)
            if not held:
                continue
            lines.append(
                f"ref_tracker: {expr} has {len(held)} reference{'s' if len(held) > 1 else ''} never put "
                f"({gets} taken, {puts} put back in the trace); taken at:"
            )
            for h in held:
                who = self.threads[h.thread] if 0 <= h.thread < len(self.threads) else str(h.thread)
                lines.append(f"  step {self.number(h)} [{who}]: {h.caller}: {h.what}")
                lines.extend(f"    {fn}" for fn in h.functions)
        if not lines:
            return "ref_tracker: no reference of it was taken in the traced steps (it was never put)"
        lines.append("(a put is paired with the latest reference its own task took, else the latest outstanding)")
        return "\n".join(lines)


def refcounts_of(obj: Any) -> list[tuple[int, str]]:
    """(id, kernel expression) of every refcount_t of ``obj`` and of the structs embedded
    in it (a kref's, a kobject's)."""
    out: list[tuple[int, str]] = []
    for m in [obj, *embedded_members(obj)]:
        if type_name(m) == "Refcount" and all(id(m) != i for i, _ in out):
            out.append((id(m), kexpr(m)))
    if not out:
        for name, v in vars(obj).items() if hasattr(obj, "__dict__") else ():
            if type_name(v) == "Refcount":
                out.append((id(v), f"{var_name(obj)}->{name}"))
    return out


def live_objects(k: Any) -> list[tuple[Any, Leak]]:
    """Each object still allocated, with its leak record (kmemleak's report)."""
    out = []
    for obj, info in k.slab.live.values():
        detail = obj.leak_detail() if isinstance(obj, KStruct) else ""
        out.append((obj, Leak(info.type, info.function, info.thread, detail, info.backtrace)))
    return out


# -- the reports ---------------------------------------------------------------------------------


def accessed_expr(f: UseAfterFree, container_type: str, field: str) -> tuple[str, str]:
    """(kernel expression of the member touched, the struct it belongs to) of a
    use-after-free: ``group->cdev.owner`` in ``struct cdev, inside struct vfio_group``."""
    obj = getattr(f, "accessed", None)
    if obj is None:
        return expr_of(container_type, field), struct_name(container_type) if container_type else "?"
    t = type_name(obj)
    where = struct_name(t)
    if container_type and container_type != t:
        where += f", inside {struct_name(container_type)}"
    return kexpr(obj, field), where


def fault_step_text(f: KernelFault) -> str:
    if isinstance(f, UseAfterFree):
        field = getattr(f, "field", "")
        info: FreeInfo | None = getattr(f, "freed", None)
        t = info.type if info is not None else ""
        access = getattr(f, "access", "read")
        return f"{access} {accessed_expr(f, t, field)[0]}: use-after-free"
    return f"{f.kind}: {f.message.splitlines()[0]}"


def kasan_report(f: UseAfterFree, tr: TraceView | None) -> str:
    """KASAN's shape: the bad access, then who allocated and who freed the object."""
    info: FreeInfo | None = getattr(f, "freed", None)
    field = getattr(f, "field", "")
    access = getattr(f, "access", "read")
    head = f.message.splitlines()[0]
    if tr is None:
        # The search's lean run: the message as the checker wrote it (no call chains).
        return f.message + ("\ncall trace: " + " <- ".join(f.backtrace[:6]) if f.backtrace else "") + f" [{f.thread}]"
    t = info.type if info is not None else ""
    lines = [head]
    at = tr.fault_step(f)
    step = f" at step {tr.number(at)}" if at is not None else ""
    expr, where = accessed_expr(f, t, field)
    lines.append(chain_block(f"{access.capitalize()} of {expr} ({where}) by task {f.thread}{step}:", f.backtrace))
    if info is not None:
        a: AllocInfo | None = info.allocated
        if a is not None:
            lines.append("")
            lines.append(chain_block(f"Allocated by task {a.thread} in {a.function}:", a.backtrace))
        fs = tr.freeing_step(info)
        lines.append("")
        lines.append(
            chain_block(
                f"Freed by task {info.thread} in {info.function}"
                + (f" at step {tr.number(fs)}" if fs is not None else "")
                + ":",
                ("kfree", *info.backtrace),
            )
        )
    lines.append("")
    lines.append(f"The buggy address belongs to the object of {struct_name(t)}, freed: {expr} ({access}).")
    return "\n".join(lines)


def kcsan_report(race: DataRace, tr: TraceView | None) -> str:
    """KCSAN's shape: the title, then both accesses with their tasks and call chains."""
    loc = race.location
    t, _, member = loc.partition(".")
    expr = expr_of(t, member)
    head = f"data-race on {expr}: {race.first} vs {race.second}"
    if tr is None:
        return head
    first, second = tr.race_steps(race)
    lines = [head, f"BUG: KCSAN: data-race in {race.first_function} / {race.second_function}", ""]
    for label, access, fn, ev in (
        ("first", race.first_access, race.first_function, first),
        ("second", race.second_access, race.second_function, second),
    ):
        if ev is not None:
            who = tr.threads[ev.thread] if 0 <= ev.thread < len(tr.threads) else "?"
            lines.append(chain_block(f"{access} to {expr} by task {who} at step {tr.number(ev)}:", ev.functions))
        else:
            lines.append(f"{access} to {expr} in {fn} ({label} access; not among the traced steps)")
        lines.append("")
    lines.append("no lock, atomic or refcount ordering is common to the two accesses.")
    return "\n".join(lines)


def warn_report(w: WarnEvent) -> str:
    """The kernel's WARNING shape: where it fired, the condition, the call trace."""
    return chain_block(
        f"WARNING: at {w.site} {w.function} [task {w.thread}]: {w.message}"
        + ("" if w.printed else " (not printed again: WARN_ONCE)")
        + "\nCall trace:",
        w.backtrace,
    )
