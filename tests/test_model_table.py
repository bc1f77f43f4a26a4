"""docs/MODEL.md's table of vfio.c is kept true: what it calls modelled or simplified is
defined at exactly the levels it names, what it leaves out is defined nowhere, and every
function a level defines is in the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vfio_ref import LEVELS
from vfio_ref.vfio import level_class

TABLE = Path(__file__).resolve().parent.parent / "docs" / "MODEL.md"
ROW = re.compile(r"^\| `(?P<name>[A-Za-z_0-9]+)` \|(?P<levels>[^|]+)\|(?P<status>[^|]+)\|(?P<why>[^|]*)\|$")
STATUSES = ("modelled", "simplified", "not modelled")


def parse_levels(text: str) -> set[str]:
    """'all', 'none', 'base', 'base-p4', 'base-p3, p5' -> the set of levels."""
    text = text.strip()
    if text == "all":
        return set(LEVELS)
    if text == "none":
        return set()
    out: set[str] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.update(LEVELS[LEVELS.index(lo) : LEVELS.index(hi) + 1])
        else:
            assert part in LEVELS, f"unknown level {part!r}"
            out.add(part)
    return out


def rows() -> list[tuple[str, set[str], str, str]]:
    out = []
    for line in TABLE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            out.append((m["name"], parse_levels(m["levels"]), m["status"].strip(), m["why"].strip()))
    return out


ROWS = rows()


def test_the_table_has_one_row_per_function_and_a_known_status() -> None:
    names = [r[0] for r in ROWS]
    assert len(names) > 80 and len(names) == len(set(names))
    for name, levels, status, why in ROWS:
        assert status in STATUSES, name
        assert bool(why) == (status != "modelled"), f"{name}: a reason goes with every status but modelled"
        assert (status == "not modelled") == (not levels), name


@pytest.mark.parametrize(("name", "levels", "status"), [(n, lv, s) for n, lv, s, _ in ROWS], ids=[r[0] for r in ROWS])
def test_each_function_is_defined_at_exactly_the_levels_the_table_names(
    name: str, levels: set[str], status: str
) -> None:
    for level in LEVELS:
        defined = level_class(level).resolve(name) is not None
        assert defined == (level in levels), f"{name} at {level}: the table says {status} at {sorted(levels)}"


@pytest.mark.parametrize("level", LEVELS)
def test_every_function_a_level_defines_is_in_the_table(level: str) -> None:
    listed = {n for n, lv, _, _ in ROWS if level in lv}
    assert set(level_class(level).function_names()) == listed
