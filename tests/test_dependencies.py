"""The lower bounds declared in pyproject.toml cover the APIs the source uses.

A table maps an API (a regular expression searched in src/) to the first release of its package
that has it; the declared minimum must be at least that release, and the installed version must
satisfy the declared minimum. Add a row when code starts to use a newer API.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))

# (distribution, regular expression of the API, first release that has it, where documented)
API_MINIMUMS = [
    # sklearn.utils.validation.validate_data and the __sklearn_tags__ protocol: 1.6 release notes
    ("scikit-learn", r"\bvalidate_data\b", "1.6"),
    ("scikit-learn", r"__sklearn_tags__", "1.6"),
    # torch.func (functional_call, jvp, vmap): torch 2.0
    ("torch", r"\btorch\.func\b", "2.0"),
    # typer's rich_help_panel (help panels of `widenet --help`): typer 0.7
    ("typer", r"\brich_help_panel\b", "0.7"),
    # pydantic v2 (model_dump, AfterValidator)
    ("pydantic", r"\bmodel_dump\b|\bAfterValidator\b", "2.0"),
]


def _declared() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimums = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            minimums[req.name.lower()] = max(lows)
    return minimums


@pytest.mark.parametrize("dist, pattern, first", API_MINIMUMS, ids=[r[1] for r in API_MINIMUMS])
def test_declared_minimum_covers_the_apis_used(dist, pattern, first):
    if not re.search(pattern, SOURCE):
        pytest.skip(f"{pattern} is no longer used")
    declared = _declared().get(dist)
    assert declared is not None, f"{dist} is used but not declared in pyproject.toml"
    assert declared >= Version(first), (
        f"src/ uses {pattern!r} (new in {dist} {first}) but pyproject.toml declares "
        f"{dist}>={declared}"
    )


def test_installed_versions_satisfy_the_declared_minimums():
    for dist, low in _declared().items():
        installed = Version(version(dist))
        assert installed >= low, f"{dist} {installed} is older than the declared >= {low}"
