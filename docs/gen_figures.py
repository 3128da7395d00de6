"""Regenerate a docs page's figures by running its Python blocks that save a figure.

Usage: ``python docs/gen_figures.py docs/topics/architectures.md [more pages]``. Each
```python block containing ``savefig(`` is executed as written (a fresh namespace, like
tests/test_examples.py) with ``docs/images/`` as the working directory, so the PNG shown on the
page is the one the page's own code makes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def main(pages: list[str]) -> None:
    if not pages:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(ROOT / "src"))
    here = Path.cwd()
    for page in pages:
        path = Path(page).resolve()
        blocks = [b for b in BLOCK.findall(path.read_text(encoding="utf-8")) if "savefig(" in b]
        if not blocks:
            raise SystemExit(f"{page}: no Python block saves a figure")
        for code in blocks:
            os.chdir(IMAGES)
            try:
                exec(compile(code, str(path), "exec"), {"__name__": "__figure__"})  # noqa: S102
            finally:
                os.chdir(here)
            print(f"{page}: figure written into {IMAGES}")


if __name__ == "__main__":
    main(sys.argv[1:])
