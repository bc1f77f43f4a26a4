"""The Python examples in the README and the docs run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vfio_ref.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "EXPLORER.md", ROOT / "docs" / "TUTORIAL.md"]
CONSOLE_DOCS = [ROOT / "docs" / "TUTORIAL.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_python_example_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python example"
    for code in blocks:
        exec(compile(code, str(path), "exec"), {"__name__": "docs_example"})
    capsys.readouterr()


def console_commands(path: Path) -> list[tuple[list[str], list[str]]]:
    """Each ``$ vfio-ref ...`` line of a ```console block with the output lines shown under it."""
    out: list[tuple[list[str], list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                argv = shlex.split(line[2:])
                assert argv[0] == "vfio-ref", f"{path.name}: a console example runs vfio-ref, not {argv[0]!r}"
                out.append((argv[1:], []))
            elif line.strip():
                assert out, f"{path.name}: output before any command: {line!r}"
                out[-1][1].append(line)
    return out


@pytest.mark.parametrize("path", CONSOLE_DOCS, ids=[p.name for p in CONSOLE_DOCS])
def test_every_command_prints_the_lines_shown(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = console_commands(path)
    assert commands, f"{path.name} has no console example"
    for argv, shown in commands:
        rc = main(argv)
        printed = capsys.readouterr().out.splitlines()
        assert rc in (0, 1), f"vfio-ref {' '.join(argv)} exited {rc}"
        i = 0
        for want in shown:  # in order; "..." at the end of a shown line makes it a prefix
            prefix = want.endswith("...")
            want = want[:-3].rstrip() if prefix else want
            while i < len(printed) and not (printed[i].startswith(want) if prefix else printed[i] == want):
                i += 1
            assert i < len(printed), f"vfio-ref {' '.join(argv)}: {want!r} not printed (in this order)"
            i += 1
