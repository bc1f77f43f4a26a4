"""Running a scenario at a level: the context it sees, the judge, and the teardown.

Every run goes through the explorer, even a single-threaded scenario: the base's deferred
put runs on a kworker, whose steps can interleave with the scenario's.  After the scenario
body the harness tears the platform down (close files, unbind, remove devices, drop the
iommu groups, flush work, vfio_cleanup), unless a model thread oopsed: a kernel that hit a
BUG, a use-after-free or a deadlock is not in a state whose leaks mean anything.

The judge turns what the checkers saw into findings, each with a stable key so the explorer
can tell the same problem in two schedules apart from two problems:

=============  =====================================================================
kind           source
=============  =====================================================================
warn           every WARN recorded (``WarnEvent``), by function and condition text
bug            KernelBug: BUG_ON, an invalid free
use-after-free UseAfterFree, by the accessed type and field and the accessing function
double-free    DoubleFree
deadlock       Deadlock raised in a thread, or the scheduler finding every thread blocked
lockdep        lock-order reports (circular, recursive, read-then-write, bad unlock)
data-race      two conflicting accesses to tracked shared data that nothing orders
leak           objects still allocated after a complete teardown
=============  =====================================================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..explorer.explore import Execution, FindingId, RawFinding
from ..explorer.scheduler import DeadlockInfo, SimThread, TraceEvent
from ..explorer.trace import SETUP_DONE
from ..kernel.core import Deadlock, Kernel, KernelFault, ModelUsageError, UseAfterFree
from ..kernel.errno import errno_name
from ..kernel.kexpr import struct_name
from ..vfio import load
from ..vfio.base import VfioBase
from ..vfio.platform import Platform
from .shapes import TraceView, chain_block, kasan_report, kcsan_report, live_objects, warn_report


class ScenarioContext:
    """What a scenario body sees: the kernel, the loaded vfio level, the platform, and
    thread spawning that works both under the explorer and free-running."""

    def __init__(self, kernel: Kernel, vfio: VfioBase, exe: Execution | None) -> None:
        self.kernel = kernel
        self.vfio = vfio
        self.platform = Platform(vfio)
        self.exe = exe
        self.observations: dict[str, list[int]] = {}
        self._threads: list[threading.Thread] = []
        self._faults: list[BaseException] = []
        self.on_begin: Callable[[], None] | None = None

    def begin(self) -> None:
        """The platform is built: what follows is the scenario proper (fault sweeps inject
        failures from here on, not into building the machine)."""
        if self.on_begin is not None:
            self.on_begin()

    def observe(self, what: str, value: int) -> int:
        """Record what the kernel returned (0 or -errno) for ``what``; the verdict keeps it.
        Returns ``value`` so a scenario can go on only when the call worked."""
        self.observations.setdefault(what, []).append(int(value))
        return value

    def spawn(self, name: str, fn: Callable[[], object]) -> Any:
        exe = self.exe
        if exe is not None:
            return exe.spawn(name, lambda: (fn(), None)[1])
        k = self.kernel
        task = k.new_task(name)
        k.smp = True

        def body() -> None:
            with k.as_task(task):
                try:
                    fn()
                except KernelFault as e:
                    k.record_fault(e)
                except BaseException as e:
                    self._faults.append(e)
                finally:
                    task.exited = True

        th = threading.Thread(target=body, name=name, daemon=True)
        th.start()
        self._threads.append(th)
        return th

    def join(self, *threads: Any) -> None:
        exe = self.exe
        if exe is not None:
            sims: list[SimThread] = list(threads)
            exe.join(*sims)
            return
        for th in threads:
            th.join(self.kernel.hang_timeout * 2)
            if th.is_alive():
                self.kernel.record_fault(Deadlock(f"hung task: thread {th.name} did not finish"))
        if self._faults:
            raise self._faults[0]


def describe_observations(obs: dict[str, list[int]]) -> str:
    parts = []
    for k, vals in obs.items():
        shown = ", ".join(errno_name(v) if v <= 0 else str(v) for v in vals)
        parts.append(f"{k}={shown}")
    return "; ".join(parts)


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def judge_kernel(
    k: Kernel,
    *,
    teardown_done: bool,
    deadlock: DeadlockInfo | str | None = None,
    step_limit: bool = False,
    trace: list[TraceEvent] | None = None,
    threads: list[str] | None = None,
) -> list[RawFinding]:
    """The findings of one finished execution (see the module docstring).

    A deadlock on a lock held by a thread that died of a fault is a consequence of that
    fault, not a problem of its own: it is told in the fault's detail, not as a finding.

    With the ``trace`` of a traced replay (and its ``threads``' names), each detail takes the
    report shape kernel developers read (:mod:`.shapes`): KASAN's access, "Allocated by" and
    "Freed by" with whole call chains; KCSAN's two accesses with theirs; a leak's references
    nobody put back, as ref_tracker lists them; and the trace gains the faulting access as a
    step of its own, and marks on the two racing accesses.  Identities never depend on it."""
    out: list[RawFinding] = []
    tr = TraceView(trace, threads or []) if trace is not None else None
    if tr is not None:
        tr.add_fault_steps(k.faults)
    for w in k.warnings:
        chain = " <- ".join(w.backtrace[:6])
        detail = f"WARN in {w.function}: {w.message} (call trace: {chain}; {w.thread})"
        if tr is not None:
            detail += "\n" + warn_report(w)
        out.append(RawFinding("warn", detail, FindingId("warn", w.function, w.message)))
    dead: DeadlockInfo | None = deadlock if isinstance(deadlock, DeadlockInfo) else None
    consequence = ""
    if dead is not None and dead.dead_holders:
        consequence = "\nthen, as a consequence: " + str(dead).replace("\n", "\n  ")
    for f in k.faults:
        if isinstance(f, ModelUsageError):
            continue
        if isinstance(f, UseAfterFree):
            detail = kasan_report(f, tr)
        else:
            chain = " <- ".join(f.backtrace[:6])
            detail = f"{f.message}" + (f"\ncall trace: {chain}" if chain else "") + f" [{f.thread}]"
            if tr is not None and f.backtrace:
                detail += "\n" + chain_block(f"Call trace of task {f.thread}:", f.backtrace)
        if consequence and f.thread in dead.dead_holders:  # type: ignore[union-attr]
            detail += consequence
        ident = FindingId(f.kind, f.function, f.what or first_line(f.message))
        out.append(RawFinding(f.kind, detail, ident))
    if dead is not None and not dead.dead_holders:
        out.append(
            RawFinding(
                "deadlock", str(dead), FindingId("deadlock", "", "all threads blocked", ",".join(sorted(dead.waits)))
            )
        )
    elif isinstance(deadlock, str):
        out.append(RawFinding("deadlock", deadlock, FindingId("deadlock", "", "all threads blocked")))
    if step_limit:
        out.append(
            RawFinding(
                "deadlock",
                "livelock: the execution ran past the step limit",
                FindingId("deadlock", "", "livelock: past the step limit"),
            )
        )
    for r in k.lockdep_reports:
        title = r.text.splitlines()[1] if "\n" in r.text else r.text
        detail = f"lockdep: {title.replace('WARNING: ', '')} ({' -> '.join(r.classes)}) in {r.function} [{r.thread}]"
        out.append(
            RawFinding(
                "lockdep", detail + "\n" + r.text, FindingId("lockdep", "", r.kind, ",".join(sorted(r.classes)))
            )
        )
    if k.hb is not None:
        for race in k.hb.races:
            out.append(
                RawFinding(
                    "data-race",
                    kcsan_report(race, tr),
                    FindingId("data-race", "", race.location, race.pair),
                )
            )
    if teardown_done:
        for obj, leak in live_objects(k):
            detail = str(leak)
            if tr is not None:
                detail += "\n" + tr.ref_tracker(obj, leak)
            out.append(RawFinding("leak", detail, FindingId("leak", leak.allocated_by, struct_name(leak.type))))
    return out


def final_state(k: Kernel) -> tuple[tuple[str, str], ...]:
    """What is still allocated at the end (type and what it holds), as a comparable value."""
    return tuple(sorted((leak.type, leak.detail) for leak in k.leaks()))


def make_program(
    body: Callable[[ScenarioContext], None],
    level: str,
    *,
    review_fixes: bool,
    ablation: str | None,
    noiommu: bool,
    fail_nth: int | None = None,
    fail_point: str | None = None,
    fail: Sequence[tuple[str, int | None]] = (),
) -> Callable[[Execution], None]:
    """The explorer program for one scenario at one level (a fresh kernel per schedule).

    Failures are injected into the scenario proper, counted from its ``begin()``:
    ``fail_nth`` the Nth injectable call, ``fail_point`` every call at a point, and each
    ``(point, nth)`` of ``fail`` the nth call at that point (every call when nth is None)."""

    def program(exe: Execution) -> None:
        k = exe.kernel
        v = load(k, level, review_fixes=review_fixes, ablation=ablation, noiommu=noiommu)
        ret = v.vfio_init()
        if ret:
            raise ModelUsageError(f"vfio_init failed: {ret}")
        s = ScenarioContext(k, v, exe)
        exe.data["ctx"] = s
        exe.data["observations"] = s.observations
        # Failures are injected into the scenario, not into booting the platform.
        fi = k.fault_inject

        def arm() -> None:
            exe.data["fault_base"] = fi._seq
            sched = exe.sched
            if sched.tracing:
                # The swimlanes fold everything before this mark: building the platform.
                sched.trace.append(TraceEvent(len(sched.trace), 0, SETUP_DONE, "the platform is built", ()))
            if fail_nth is not None:
                fi.fail_nth(fi._seq + fail_nth)
            if fail_point is not None:
                fi.fail(fail_point)
            for name, nth in fail:
                fi.fail(name, None if nth is None else fi._counts[name] + nth)

        s.on_begin = arm
        try:
            body(s)
        finally:
            exe.data["body_done"] = True
        if k.oopsed:
            exe.data["teardown"] = "skipped after an oops"
            return
        s.platform.teardown()
        exe.data["teardown"] = "done"
        exe.data["state"] = final_state(k)

    return program


def judge_execution(exe: Execution) -> list[RawFinding]:
    sched = exe.sched
    traced = sched.tracing
    return judge_kernel(
        exe.kernel,
        teardown_done=exe.data.get("teardown") == "done",
        deadlock=exe.deadlock,
        step_limit=exe.step_limit_hit,
        trace=sched.trace if traced else None,
        threads=exe.thread_names if traced else None,
    )
