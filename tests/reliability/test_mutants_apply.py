"""The hand-made mutant sets (tests/reliability/mutants.py, tests/explorer/mutants.py) name
exact source text; a refactor that moves that text leaves a mutant that no longer applies
and is reported "NOT APPLIED" only when someone runs the set.  This checks, without running
any mutant, that each one's text is in its file exactly once."""

from __future__ import annotations

import pytest

from . import ROOT, load_file

SETS = ("tests/reliability/mutants.py", "tests/explorer/mutants.py")


@pytest.mark.parametrize("rel", SETS)
def test_every_mutant_still_applies_to_exactly_one_place(rel: str) -> None:
    mod = load_file(rel)
    mutants = [*mod.M, *getattr(mod, "EQUIVALENT", [])]
    assert mutants
    stale = []
    for name, path, old, new, tests in mutants:
        n = (ROOT / path).read_text().count(old)
        if n != 1:
            stale.append(f"{name}: {n} matches in {path}")
        assert old != new, name
        assert tests, f"{name} names no test to kill it"
    assert stale == []
