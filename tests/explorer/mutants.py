"""Hand-made mutants of the explorer's reductions and of the checkers: each must be killed.

    python tests/explorer/mutants.py [NAME-FRAGMENT ...]

Each mutant rewrites one exact, unique text of the source, runs the named tests with ``-x``
(hypothesis derandomised, so a run is repeatable) and puts the source back (also when
interrupted).  Not collected by pytest; the results are recorded in docs/RELIABILITY.md.
mutmut and cosmic-ray were tried first: with the reductions' oracle being hypothesis runs of
the plain search, one mutant costs a minute, and they generate hundreds per module; these
are the mutants that matter, each the mistake a reduction or a checker is known to make.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # run as a script: the shared runner is tests/reliability's
from reliability.mutants import Mutant, run_mutants  # noqa: E402

REC = "src/vfio_ref/explorer/records.py"
DPOR = "src/vfio_ref/explorer/dpor.py"
DFS = "src/vfio_ref/explorer/dfs.py"
SCHED = "src/vfio_ref/explorer/scheduler.py"
SLAB = "src/vfio_ref/kernel/slab.py"
HB = "src/vfio_ref/kernel/hb.py"
RC = "src/vfio_ref/kernel/refcount.py"
KSCHED = "src/vfio_ref/kernel/sched.py"
EXPL = "src/vfio_ref/explorer/explore.py"
RED = "tests/explorer/test_reduction.py"
REG = "tests/explorer/test_reduction_regressions.py"
EXP = "tests/explorer/test_explorer.py"
EDGES = "tests/kernel/test_hb_edges.py"
PAR = "src/vfio_ref/explorer/parallel.py"
REPORT = "src/vfio_ref/report.py"
LOCKDEP = "src/vfio_ref/kernel/lockdep.py"
TPAR = "tests/explorer/test_parallel.py"
GARB = "src/vfio_ref/explorer/garbage.py"
PCT = "src/vfio_ref/explorer/pct.py"
RUN = "src/vfio_ref/scenarios/run.py"
TGARB = "tests/explorer/test_garbage.py"

M: list[Mutant] = [
    (
        "X1 a read and a write of one location are independent (the issue's survivor)",
        REC,
        "        if other.writes and not other.writes.isdisjoint(self.reads):\n            return True\n",
        "",
        [RED],
    ),
    (
        "X2 refcount_inc_not_zero orders like the final put (the issue's survivor)",
        RC,
        "        if old < 0 or old == INT_MAX:\n            self.refcount_warn_saturate(REFCOUNT_ADD_NOT_ZERO_OVF)\n"
        "        return True",
        "        if old < 0 or old == INT_MAX:\n            self.refcount_warn_saturate(REFCOUNT_ADD_NOT_ZERO_OVF)\n"
        "        if k.hb is not None:\n            k.hb.acquire(k.current(), self)\n        return True",
        [EDGES],
    ),
    ("X3 a race adds no backtrack point", DPOR, "        bt.add(pick)\n", "        pass\n", [RED]),
    (
        "X4 an acquire's race stays with the release",
        DPOR,
        "                    c = h.rel_acq.get(w, w) if acq else w\n",
        "                    c = w\n",
        [RED, EXP],
    ),
    (
        "X5 a trylock races like a waiting lock",
        KSCHED,
        'ACQUIRE_OPS: Final = frozenset({"mutex_lock", "spin_lock", "down_read", "down_write"})',
        'ACQUIRE_OPS: Final = frozenset({"mutex_lock", "spin_lock", "down_read", "down_write", "mutex_trylock"})',
        [RED],
    ),
    (
        "X6 counter steps commute down to zero",
        DPOR,
        "        safe = v0 - dn >= 1 and v0 + up < _INT_MAX",
        "        safe = v0 - dn >= 0 and v0 + up < _INT_MAX",
        [REG, RED],
    ),
    (
        # Was the same loop in _counter (a counter step's dependence on closed segments), which
        # is equivalent: see EQUIVALENT below.  This is the read's own loop, as the name says.
        "X7 a read does not depend on the counter steps of a closed segment",
        DPOR,
        "                for c in (*h.prev, *h.seg):\n",
        "                for c in h.seg:\n",
        [REG, RED],
    ),
    (
        "X8 blocked threads' pending steps are not checked",
        DPOR,
        "        for ev in pending:\n            self._process(ev, None)",
        "        for ev in ():\n            self._process(ev, None)",
        [RED],
    ),
    (
        "X9 every explored sibling sleeps, dependent or not",
        DPOR,
        "                self._sleep = {q: f for q, f in base.items() if not f.conflicts(fp)}",
        "                self._sleep = dict(base)",
        [RED],
    ),
    (
        "X10 under a bound, any explored sibling's step may sleep (unrestricted sleep sets)",
        DFS,
        "            if node.chosen != node.running and node.sleeper is not None and not node.sleeper.conflicts(fp):\n"
        "                sleep[node.running] = node.sleeper",
        "            if node.chosen != node.running and node.sleeper is not None and not node.sleeper.conflicts(fp):\n"
        "                sleep[node.running] = node.sleeper\n"
        "            for q in node.done:\n"
        "                if q != node.chosen and q not in sleep:\n"
        "                    sleep[q] = node.sleeper or fp",
        [RED],
    ),
    (
        "X12 a second kfree's access is not recorded",
        SLAB,
        "    if s is not None and getattr(s, \"recording\", False):\n"
        "        # The free is part of the step that makes it",
        "    if False:\n"
        "        # The free is part of the step that makes it",
        [RED],
    ),
    (
        "X13 plain member writes are not reported",
        SLAB,
        "        if s is not None and name not in skip:\n            s.access(self, name, True)",
        "        if False:\n            s.access(self, name, True)",
        [REG, RED],
    ),
    (
        "X14 a capped search says it is complete",
        EXPL,
        "        strategy.complete and not stats.capped and not stats.interrupted and not stats.sampled\n",
        "        not stats.sampled\n",
        [EXP],
    ),
    (
        "X15 objects are named when first touched (unstable across schedules)",
        SCHED,
        "        if not self.watching:\n            return\n        cur = self.current",
        "        return\n        cur = self.current",
        [RED],
    ),
]


# Mutants that cannot change any outcome of any program: no test can kill them, so they are
# not run (``--equivalent`` runs them; they survive).  Each once stood in M; why it is
# equivalent follows it.  Both make the search explore fewer schedules, never lose an outcome
# (measured against the plain search: X7' on 150 generated counter programs with no bound,
# 5 of them with fewer schedules; X11' on 450 runs of wait_event programs at bounds 2, 3 and
# none, and on the hand-made case below, 3 schedules instead of 4, the same outcomes).
EQUIVALENT: list[Mutant] = [
    # X41' (slab.py, watch_members): the structs stay watched twins once the scheduler stops
    # recording.  A twin reports an access only to WATCH.report, which is None then, and
    # otherwise reads and writes as its own class: the mutant is slower (every attribute
    # access a call into Python), never different.
    (
        "X41' the structs stay watched after the scheduler stops recording",
        SLAB,
        "            if pc is not None:\n                setclass(o, \"__class__\", pc)\n",
        "            if pc is not None:\n                pass\n",
        [RED, REG],
    ),
    # X7' (dpor.py, _counter): a counter step s of thread p skips the steps in h.prev (counter
    # steps of segments a read has closed since the last write).  Each such step c happens
    # before a read still in h.reads: the read r that closed c's segment joined c's clock (the
    # `for c in (*h.prev, *h.seg)` loop), and h.reads keeps, per thread, r or a later read of
    # r's thread; h.prev and h.reads are emptied together (by a write, or an unsafe counter
    # step).  s joins every read in h.reads of another thread (its `for t, r in h.reads` loop),
    # and p's own reads precede s in program order, so c's clock is already in s's: the loop's
    # joins change no clock, hence no happens-before.  The races it adds are (c, s) with
    # c -> r -> s, r another step (if r is c's own step, the reads loop reports it): not races
    # in source-DPOR's sense (Abdulla et al., JACM 2017, Def. 3.3: no event ordered between
    # them), whose reversal the algorithm's completeness never needs.
    (
        "X7' a counter step does not depend on the counter steps of a closed segment",
        DPOR,
        "        for c in h.prev:\n            ce = evs[c]",
        "        for c in ():\n            ce = evs[c]",
        [REG, RED],
    ),
    # X11' (dfs.py): the running thread's step t may sleep although a thread blocked at the
    # node waits on what t changes.  t's sleep acts only at the choice points of a sibling's
    # subtree, and `choose` first wakes it there (_wake_on_blocked) if a thread that cannot
    # run at that decision waits on a location t changes.  So the mutant differs only where
    # the sibling's step (independent of t) unblocked those threads: T1 waits for
    # `box.x == 1 or box.y == 1`, T2 writes y, main (running) writes x.  And there the
    # module's argument holds without the check: in a pruned schedule w, a switch away from a
    # thread X that is free in w (X disabled) but not in w' = t.(w without t) needs t to
    # change what X's wait reads at that decision, which would have woken t there; so w'
    # needs no more preemptions than w and is explored in the node's first child.
    (
        "X11' a sleeping step may enable a thread blocked at its node",
        DFS,
        "node.running_enabled and not fp.changes_any(node.blocked):",
        "node.running_enabled:",
        [REG, RED],
    ),
]

# Issue 13, 0.2.2: the split search's shared cap, the report's order, and the checkers'
# records that name their call chain from a frame kept at the call.
M += [
    (
        "X16 a part of a capped split search starts without looking at the shared count",
        PAR,
        "    if _COUNT is not None:\n        _COUNT.check()\n",
        "",
        [f"{TPAR}::test_a_capped_split_search_stops_its_parts_once_they_pass_the_cap"],
    ),
    (
        "X17 the parts of a split search never count their schedules",
        PAR,
        "            self.count.value += 1\n",
        "            pass\n",
        [f"{TPAR}::test_a_capped_split_search_stops_its_parts_once_they_pass_the_cap"],
    ),
    (
        "X18 the report hands out its small cells first",
        REPORT,
        "    return (job.level != LEVELS[0], not big)",
        "    return (job.level == LEVELS[0], big)",
        [f"{TPAR}::test_the_report_hands_out_its_biggest_cells_first"],
    ),
    (
        "X19 a lockdep dependency keeps the wrong frame",
        LOCKDEP,
        "succ[cls] = _Edge(task.name, sys._getframe(2))",
        "succ[cls] = _Edge(task.name, sys._getframe(1))",
        ["tests/kernel/test_mutex_lockdep.py", "tests/test_reports.py"],
    ),
    (
        "X20 a tracked write keeps the wrong frame",
        HB,
        "            a.w_frame = sys._getframe(2)",
        "            a.w_frame = sys._getframe(1)",
        ["tests/kernel/test_shared_hb.py", "tests/kernel/test_idr.py"],
    ),
    (
        "X21 a free keeps kfree's own frame",
        SLAB,
        "k.step(), alloc, sys._getframe(1))",
        "k.step(), alloc, sys._getframe(0))",
        ["tests/kernel/test_slab.py", "tests/test_reports.py"],
    ),
    (
        "X22 an allocation keeps track's caller's frame (kzalloc's), not kzalloc's caller's",
        SLAB,
        "k.current().name, k.step(), None if k.lean else sys._getframe(2))",
        "k.current().name, k.step(), None if k.lean else sys._getframe(1))",
        ["tests/kernel/test_slab.py", "tests/test_reports.py"],
    ),
]

# Issue 13, 0.2.3: the group-list walk written out, and the report's plain fallback.
SHARED = "src/vfio_ref/kernel/shared.py"
BASE = "src/vfio_ref/vfio/base.py"
P2 = "src/vfio_ref/vfio/p2.py"
M += [
    (
        "X23 the written-out walk is no scheduling point and no read of the list",
        SHARED,
        '    hb = _point(head, "list_for_each_entry")\n    if hb is not None:\n'
        "        hb.access(head.kernel.current(), head, head.name, False)\n    return head.next\n",
        "    return head.next\n",
        ["tests/kernel/test_shared_hb.py"],
    ),
    (
        "X24 the base's group-list lookup skips every other group",
        BASE,
        "                return group\n            node = node.next\n",
        "                return group\n            node = node.next.next if node.next is not head else head\n",
        ["tests/vfio/test_base.py"],
    ),
    (
        "X25 patch 2's group-list lookup skips every other group",
        P2,
        "                return group\n            node = node.next\n",
        "                return group\n            node = node.next.next if node.next is not head else head\n",
        ["tests/vfio/test_base.py"],
    ),
    (
        "X26 the report's fallback runs the plain search",
        REPORT,
        "reduction=AUTO_FALLBACK_REDUCTION,\n",
        "reduction=False,\n",
        ["tests/test_cli.py::test_the_reports_bounded_fallback_is_the_reduced_search_and_checked_against_the_plain_one"],
    ),
    (
        "X27 --check-reduction is not passed on to the fallback",
        REPORT,
        "coverage=job.coverage, check_reduction=job.check_reduction,\n"
        "                reduction=AUTO_FALLBACK_REDUCTION,",
        "coverage=job.coverage,\n                reduction=AUTO_FALLBACK_REDUCTION,",
        ["tests/test_cli.py::test_the_reports_bounded_fallback_is_the_reduced_search_and_checked_against_the_plain_one"],
    ),
    (
        "X28 the search loop keeps the execution alive while it collects",
        EXPL,
        "                del res  # the execution's kernel is garbage now\n",
        "",
        [TGARB],
    ),
    (
        "X29 the collector's thresholds are never given back after a search",
        GARB,
        "                if _active:\n                    gc.set_threshold(*_saved)\n",
        "                pass\n",
        [TGARB],
    ),
    (
        "X30 the first search to end gives the thresholds back while another still runs",
        GARB,
        "            if _holders == 0:\n                if _froze:",
        "            if True:\n                if _froze:",
        [TGARB],
    ),
    (
        "X33 the collector still runs every 700 allocations inside an execution",
        GARB,
        "                gc.set_threshold(INSIDE_THRESHOLD, _saved[1], _saved[2])\n",
        "                pass\n",
        [TGARB],
    ),
    (
        "X31 the oldest generation is never collected between executions",
        GARB,
        "        if gc.get_count()[2] >= t2:\n",
        "        if False:\n",
        [TGARB],
    ),
    (
        "X32 the outcome's findings print in the set's order",
        EXPL,
        "in sorted(self.findings))",
        "in self.findings)",
        [EXP],
    ),
    (
        "X34 a split search merges its parts in the reverse of the search's order",
        PAR,
        "parts = [futures[i].result() for i in range(len(units))]",
        "parts = [futures[i].result() for i in reversed(range(len(units)))]",
        [TPAR + "::test_a_split_search_of_a_generated_program_is_the_serial_one"],
    ),
    (
        "X35 a part of a split sample skips one number too many of the seed's generator",
        PCT,
        "for _ in range(start - 2):",
        "for _ in range(start - 1):",
        [TPAR + "::test_a_split_sample_of_a_generated_program_is_the_serial_one"],
    ),
    (
        "X36 a split sample's parts leave out the last run",
        PCT,
        "ends = [*starts[1:], self.runs + 1] if starts else []",
        "ends = [*starts[1:], self.runs] if starts else []",
        [EXP + "::test_a_sample_splits_into_stretches_that_cover_every_run_after_the_first_once",
         TPAR + "::test_a_split_sample_of_a_toy_is_the_serial_one"],
    ),
    (
        "X37 a fault sweep on several processes searches its points in the reverse order",
        RUN,
        "explorations = list(pool.map(search, units))",
        "explorations = list(pool.map(search, units[::-1]))",
        [TPAR + "::test_a_fault_sweep_on_two_processes_is_the_serial_one"],
    ),
    (
        "X38 a search spending its last preemption at a node with a sleeper forces at once",
        DFS,
        "        if node is not None and node.sleeper is not None and choice != node.running:\n",
        "        if False:\n",
        [RED + "::test_a_sleeper_stays_asleep_after_the_last_preemption",
         RED + "::test_at_one_preemption_the_reduction_prunes_the_bases_kworker_interleavings"],
    ),
    (
        "X39 a part's copy of a node shares its done set with the first path",
        DFS,
        "dict(self.sleep_in), set(self.done),",
        "dict(self.sleep_in), self.done,",
        [TPAR + "::test_a_part_copies_its_nodes_field_by_field_and_owns_what_its_search_changes"],
    ),
    (
        "X40 a struct built before the scheduler starts recording is never watched",
        SLAB,
        "            if wc is not c:\n                setclass(o, \"__class__\", wc)\n",
        "            if wc is not c:\n                pass\n",
        [RED, REG],
    ),
    (
        "X42 the search loop leaves an execution's records to the collector",
        EXPL,
        "                res.sched.discard_records()\n",
        "",
        [TGARB],
    ),
    (
        "X43 the last search to end leaves the heap frozen",
        GARB,
        "                    gc.unfreeze()\n",
        "                    pass\n",
        [TGARB],
    ),
    (
        "X44 a search freezes the heap over a caller's own freeze",
        GARB,
        " and _holders > 0 and gc.get_freeze_count() == 0:\n",
        " and _holders > 0:\n",
        [TGARB],
    ),
    (
        "X45 the heap is frozen before the full collection, with its garbage in it",
        GARB,
        "            gc.collect(2)\n            if not _froze:\n                with _lock:\n"
        "                    if not _froze and _holders > 0 and gc.get_freeze_count() == 0:\n"
        "                        gc.freeze()\n                        _froze = True\n",
        "            if not _froze:\n                with _lock:\n"
        "                    if not _froze and _holders > 0 and gc.get_freeze_count() == 0:\n"
        "                        gc.freeze()\n                        _froze = True\n            gc.collect(2)\n",
        [TGARB],
    ),
    (
        "X46 a search's executions still list every fault point they pass",
        EXPL,
        "                               fault_points=False)\n",
        "                               fault_points=True)\n",
        [EXP],
    ),
    (
        "X47 a kernel built for one execution alone lists no fault point",
        EXPL,
        "    fault_points: bool = True,\n",
        "    fault_points: bool = False,\n",
        [EXP],
    ),
    (
        "X48 a split search's pool forks from a heap that is not frozen",
        PAR,
        "            with frozen_for_fork(), concurrent.futures.ProcessPoolExecutor("
        "max_workers=jobs, mp_context=ctx) as pool:\n"
        "                # The shallowest",
        "            with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:\n"
        "                # The shallowest",
        [TGARB],
    ),
    (
        "X49 the report's pool forks from a heap that is not frozen",
        REPORT,
        "        with frozen_for_fork(), concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:\n",
        "        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:\n",
        [TPAR],
    ),
    (
        "X50 a pool's freeze keeps the garbage it found",
        GARB,
        "    if gc.isenabled():\n        gc.collect()  # garbage frozen now",
        "    if False:\n        gc.collect()  # garbage frozen now",
        [TGARB],
    ),
    (
        "X51 the scheduler takes a strategy's choice without checking it can run",
        SCHED,
        "        if c in tids:\n            return self.threads[c]  # threads[i].index == i\n",
        "        if c < len(self.threads):\n            return self.threads[c]  # threads[i].index == i\n",
        [EXP],
    ),
    (
        "X52 a reduced search that named two objects on first touch says it is complete",
        EXPL,
        "        and not stats.unstable_names\n    )\n",
        "    )\n",
        [RED],
    ),
    (
        "X53 a split search drops its parts' unstable names",
        PAR,
        "        stats.unstable_names += st.unstable_names\n",
        "",
        [RED],
    ),
    (
        "X54 the descriptor table is made by its first user again",
        "src/vfio_ref/kernel/file.py",
        "    return k.files\n",
        '    return k.state.get("files") or k.state.setdefault("files", FilesStruct(k))\n',
        [RED],
    ),
    (
        "X55 the system workqueue is made by its first user again",
        "src/vfio_ref/kernel/workqueue.py",
        "    return k.system_wq\n",
        '    return k.state.get("system_wq") or k.state.setdefault("system_wq", Workqueue(k))\n',
        [RED],
    ),
]


def main() -> int:
    only = sys.argv[1:]
    mutants = M
    if only[:1] == ["--equivalent"]:
        only, mutants = only[1:], EQUIVALENT
    # hypothesis derandomised, so that a run is repeatable
    return run_mutants(mutants, only, root=ROOT, pytest_args=("--hypothesis-seed=0",), timeout=1800)


if __name__ == "__main__":
    sys.exit(main())
