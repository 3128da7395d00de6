"""MkDocs hook: generate the CLI reference page from the Typer app before each build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_pre_build(config, **kwargs) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_cli.py"), str(ROOT / "docs" / "cli.md")],
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
