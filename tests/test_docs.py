"""The documentation site builds (MkDocs, strict: no broken link or reference) and holds what it
promises: every CLI command, the API reference, every topic page with its worked example's
figure. Skipped where the docs tools are not installed (`pip install -e '.[docs]'`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    pytest.importorskip("material", reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_cli_reference_lists_every_command(site):
    import typer

    from widenet.cli import app

    html = (site / "cli.html").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    import click

    names = group.list_commands(click.Context(group))
    assert len(names) >= 20
    for name in names:
        assert f'id="{name}"' in html, name


def test_api_reference_and_topics(site):
    dynamics = (site / "api" / "dynamics.html").read_text(encoding="utf-8")
    assert "gradient_flow_mse" in dynamics and "doc-function" in dynamics
    # The layer algebra's reference: layers, presets, the covariance operators, from_spec.
    architectures = (site / "api" / "architectures.html").read_text(encoding="utf-8")
    for name in (
        "stax.Conv",
        "stax.Layer",
        "presets.myrtle",
        "covariance.conv_map",
        "architectures.from_spec",
    ):
        assert f'id="widenet.{name}' in architectures, name
    assert "verify" in (site / "safety.html").read_text(encoding="utf-8")
    topics = sorted((ROOT / "docs" / "topics").glob("*.md"))
    assert len(topics) >= 12
    for page in topics:
        html = (site / "topics" / f"{page.stem}.html").read_text(encoding="utf-8")
        assert "Theory" in html, page.name
        for image in re.findall(r'<img[^>]+src="([^"]+)"', html):
            assert (site / "topics" / image).resolve().is_file(), (page.name, image)
    # No page loads anything from the network (the site is built to work offline).
    index = (site / "index.html").read_text(encoding="utf-8")
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', index)
