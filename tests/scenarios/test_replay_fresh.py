"""Every finding of the report replays from what it prints, in a fresh process.

The report (as posted, and with the review fixes) is computed once for the test run
(``verdicts.py``), and each ablation is explored on the scenario that shows it (one
preemption; with the review fix at p3/p4), which is where the data races are.  Each finding
is then replayed by a new Python process that knows only what a user would copy from the
output: the scenario, the level, ``--review-fixes``, ``--ablation``, the schedule and, for a
fault sweep's finding, the failure to inject (``--fail``).  The replay must produce the
same finding (the same ``FindingId``), data races included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from vfio_ref.scenarios import Verdict
from vfio_ref.scenarios.catalogue import FAULT_SWEEP_OF
from vfio_ref.vfio import REVIEW_FIX_LEVELS, ablations_table

from . import verdicts

REPLAYER = """
import json, sys
from dataclasses import asdict
from vfio_ref.scenarios import run
out = []
for job in json.load(sys.stdin):
    v = run(job["scenario"], job["level"], review_fixes=job["fixes"], ablation=job["ablation"],
            replay=job["schedule"], fail=job["fail"], traces=False)
    out.append([asdict(f.ident) for f in v.findings])
json.dump(out, sys.stdout)
"""


def _verdicts() -> list[tuple[str, str, bool, str | None, Verdict]]:
    out: list[tuple[str, str, bool, str | None, Verdict]] = []
    for fixes in (False, True):
        rep = verdicts.report(fixes)
        for (name, level), cell in sorted(rep.cells.items()):
            assert cell.error is None, f"{name} at {level}: {cell.error}"
            out.append((name, level, fixes, None, cell.verdict))
    for a_name, a in sorted(ablations_table().items()):
        for level in a.levels:
            out.append((a.shows, level, level in REVIEW_FIX_LEVELS, a_name, verdicts.ablated(a.shows, level, a_name)))
    return out


def _jobs() -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = []
    for name, level, fixes, ablation, v in _verdicts():
        for f in v.findings:
            sweep = name == "fault_sweep"
            assert not sweep or f.fail is not None, f"{level}: a sweep finding without its failure: {f}"
            jobs.append(
                {
                    "scenario": FAULT_SWEEP_OF if sweep else name,
                    "level": level,
                    "fixes": fixes,
                    "ablation": ablation,
                    "schedule": f.schedule,
                    "fail": [f.fail] if sweep else [],
                    "ident": asdict(f.ident),
                    "kind": f.kind,
                }
            )
    return jobs


def test_every_finding_of_the_report_replays_in_a_fresh_process() -> None:
    jobs = _jobs()
    kinds = {j["kind"] for j in jobs}
    # The report has findings of these kinds; each must replay (data races are the hard ones).
    assert {"use-after-free", "leak", "warn", "data-race"} <= kinds, kinds
    p = subprocess.run(
        [sys.executable, "-c", REPLAYER], input=json.dumps(jobs), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    replayed = json.loads(p.stdout)
    assert len(replayed) == len(jobs)
    missed = [
        (j["scenario"], j["level"], j["fixes"], j["schedule"], j["ident"])
        for j, got in zip(jobs, replayed, strict=True)
        if j["ident"] not in got
    ]
    assert missed == [], f"{len(missed)} of {len(jobs)} findings did not replay: {missed[:5]}"
