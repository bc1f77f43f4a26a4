"""Whole scenarios: the lifecycle in free-running mode, and ``vfio-ref report``.

Lifecycle (one iommu group with one device: bind a vfio driver, open the group file, close
it, unbind; then the full teardown and the leak check), built on a fresh kernel each call,
in free-running mode, at every level, three ways:

* as it runs;
* with the scheduling hook stubbed out: the kernel's code recompiled with ``k.sched`` known
  to be None (see ``_bench.sched_hook_stubbed``), so the hook's load + compare is gone;
* with slab poisoning off: ``Kernel(kasan=False)``, kfree frees without poisoning (no
  freed-object class switch, no free-time call chain).

Each cost may add at most 5% (as it runs vs. the stubbed run).  Patches 3 and 4 run with the
review fix (as posted, the lifecycle is a use-after-free).

``vfio-ref report`` at default settings (every scenario at every level, each searched as
docs/EXPLORER.md says) runs once with ``--jobs 2`` and once with ``--jobs 1``: wall-clock
figures, side by side (issue 4 wants the report well under a minute; issue 13 under 20 s on
two cores, and 1.8x the serial throughput).  Quick mode reports patches 1 and 5 only; the
smoke run (``--benchmark-disable``) one scenario at one level.

Run: ``pytest benchmarks/bench_scenarios.py``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest

from _bench import FIXED_IN_REVIEW, QUICK, is_disabled, level_label, sched_hook_stubbed, tag
from vfio_ref import LEVELS
from vfio_ref.kernel import Kernel
from vfio_ref.scenarios.catalogue import SCENARIOS
from vfio_ref.scenarios.harness import ScenarioContext, judge_kernel
from vfio_ref.vfio import load

LIFECYCLE = "Lifecycle scenario, free-running (fresh kernel, scenario, teardown, leak check)"
VARIANTS = {
    "as-is": "as it runs",
    "nohook": "scheduling hook stubbed out",
    "nokasan": "slab poisoning off (kasan=False)",
}


def _lifecycle(level: str, kasan: bool) -> Kernel:
    k = Kernel(kasan=kasan)
    v = load(k, level, review_fixes=level in FIXED_IN_REVIEW)
    assert v.vfio_init() == 0
    s = ScenarioContext(k, v, None)
    SCENARIOS["lifecycle"].fn(s)
    s.platform.teardown()
    return k


@contextlib.contextmanager
def _nothing() -> Iterator[int]:
    yield 0


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("level", LEVELS)
def test_lifecycle_free_running(benchmark: Any, level: str, variant: str) -> None:
    kasan = variant != "nokasan"
    stub = sched_hook_stubbed() if variant == "nohook" else _nothing()

    def body() -> None:
        _lifecycle(level, kasan)

    tag(
        benchmark,
        table=LIFECYCLE,
        row=VARIANTS[variant],
        col=level_label(level),
        key=f"lifecycle-{variant}@{level}",
    )
    with stub:
        k = _lifecycle(level, kasan)
        assert judge_kernel(k, teardown_done=True) == []
        benchmark(body)


@pytest.mark.parametrize("jobs", [2, 1], ids=["jobs2", "jobs1"])
def test_vfio_ref_report(benchmark: Any, jobs: int) -> None:
    from vfio_ref.cli import main as cli_main

    if is_disabled(benchmark):
        argv, what = ["report", "--scenario", "lifecycle", "--level", "p5"], "lifecycle at p5 (smoke run)"
    elif QUICK:
        argv, what = ["report", "--level", "p1", "--level", "p5"], "p1 and p5 only (quick mode)"
    else:
        argv, what = ["report"], "default settings"
    argv += ["--jobs", str(jobs)]
    out = io.StringIO()

    def report() -> None:
        out.seek(0)
        out.truncate()
        with contextlib.redirect_stdout(out):
            assert cli_main(argv) == 0

    key = "report" if jobs == 2 else "report-serial"  # issue 13: --jobs 2 beside the serial figure
    tag(benchmark, table="vfio-ref report", row=f"vfio-ref {' '.join(argv)}", key=key, show="total")
    benchmark.pedantic(report, rounds=1, iterations=1)
    last = out.getvalue().strip().splitlines()[-1]
    benchmark.extra_info["report"]["note"] = f"{what}; {last.split(' in ')[0]}"
