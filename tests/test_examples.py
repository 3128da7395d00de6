"""Every Python block of README.md and of the documentation pages runs as written.

Each ```python block is executed on its own (a fresh module, so it must import what it uses
and make its own small data) in a temporary working directory, with one torch thread. A block
preceded by ``<!-- example: slow -->`` runs only with ``-m slow``; ``<!-- example: skip -->``
marks a block that is not meant to run (none should need it).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*example:\s*(\w+)\s*-->\s*\n)?```python\n(.*?)```", re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line number, marker, code) of each ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(1) or "", m.group(2))
        for m in BLOCK.finditer(text)
    ]


def _cases():
    for page in PAGES:
        if not page.is_file():
            continue
        for line, marker, code in python_blocks(page):
            marks = []
            if marker == "slow":
                marks.append(pytest.mark.slow)
            elif marker == "skip":
                continue
            name = f"{page.relative_to(ROOT)}:{line}"
            yield pytest.param(page, line, code, id=name, marks=marks)


CASES = list(_cases())


def test_blocks_found():
    # The README has Python examples; if the pattern stopped matching, the test below would
    # silently run nothing.
    readme = [c for c in CASES if c.values[0].name == "README.md"]
    assert len(readme) >= 10


@pytest.mark.parametrize(("page", "line", "code"), CASES)
def test_example_runs(page, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # The block runs as the body of a module of its own (registered in sys.modules, as a
    # script's __main__ is), so that what needs its defining module works: dataclasses, pickle.
    module = types.ModuleType("__example__")
    monkeypatch.setitem(sys.modules, "__example__", module)
    try:
        exec(compile(code, f"{page.name}:{line}", "exec"), module.__dict__)  # noqa: S102
    finally:
        torch.set_num_threads(threads)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
