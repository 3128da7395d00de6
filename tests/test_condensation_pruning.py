"""condensation-pruning: a wide ReLU net trained from small init merges into far fewer neurons."""

from __future__ import annotations

import json

import pytest
import torch

from widenet import lab
from widenet.condensation import amplitude_cover
from widenet.experiments.condensation_pruning import METRICS, CondensationPruningConfig

REQUIRED = {"width", "effective_width", "agreement", "accuracy_wide", "accuracy_merged"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # One quick run for the module (width 200, 200 full-batch GD steps on 1200 digits).
    out = tmp_path_factory.mktemp("cp") / "run"
    return lab.run_experiment("condensation-pruning", quick=True, out=out, seed=0, threads=1)


def test_sizes():
    full, quick = CondensationPruningConfig(), CondensationPruningConfig.quick()
    assert (full.width, full.threshold, full.steps) == (400, 0.9, 500)
    assert (quick.width, quick.steps) == (200, 200)


def test_metrics_keys(quick_run):
    m = quick_run.metrics
    assert set(m) == set(METRICS) and REQUIRED <= set(m)
    assert json.loads((quick_run.out / "metrics.json").read_text()) == m
    assert [p.name for p in quick_run.figures] == ["condensation.png"]
    assert sum(m["group_sizes"]) == m["width"] == 200
    assert len(m["group_sizes"]) == m["effective_width"]


def test_merged_network_is_narrow_and_agrees(quick_run):
    m = quick_run.metrics
    # Measured (seed 0): 200 -> 75 groups, 60 of them holding 99% of the amplitude.
    assert m["effective_width"] < m["width"] / 2
    assert m["groups_for_99pct"] <= m["effective_width"]
    # Measured: predictions agree on 99.7% of the 597 test points (2 points), outputs differ
    # by 2.5% (relative L2); a group's spread (cos >= 0.9) enters at second order.
    assert m["agreement"] >= 0.98
    assert m["relative_difference"] < 0.1
    # Measured accuracy 0.920 for both; 10 classes, so chance is 0.1.
    assert m["accuracy_wide"] > 0.85
    assert abs(m["accuracy_wide"] - m["accuracy_merged"]) <= 0.02
    assert m["train_loss"] < 0.01


def test_amplitude_cover_brute_force():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(30, 4, generator=gen), torch.randn(30, generator=gen)
    a = torch.randn(3, 30, generator=gen)
    amp = sorted(
        (float(a[:, k].norm() * torch.cat([w[k], b[k : k + 1]]).norm()) for k in range(30)),
        reverse=True,
    )
    for fraction in (0.5, 0.9, 0.99, 1.0):
        k = next(i + 1 for i in range(30) if sum(amp[: i + 1]) >= fraction * sum(amp) * (1 - 1e-9))
        assert amplitude_cover(a, w, b, fraction) == k
    assert amplitude_cover(torch.zeros(3, 30), w, b) == 0
    with pytest.raises(ValueError, match="fraction"):
        amplitude_cover(a, w, b, 1.5)
    with pytest.raises(ValueError, match="out_weight"):
        amplitude_cover(a[:, :5], w, b)


@pytest.mark.parametrize(
    "override, key",
    [("width=1", "width"), ("threshold=1.5", "threshold"), ("dtype=float16", "dtype")],
)
def test_bad_overrides(override, key):
    with pytest.raises(lab.ConfigError, match=key):
        lab.get("condensation-pruning").resolve(quick=True, overrides=[override])


@pytest.mark.slow
def test_full_size_run(tmp_path):
    # Full size: width 400, 500 steps (about 1 min on a busy 2-core machine). Measured (seed 0):
    # 400 -> 160 groups (140 hold 99% of the amplitude), agreement 0.998, accuracy 0.931 wide
    # and 0.930 merged. Their MNIST figure: 400 -> 58 groups at ~98.5% agreement; digits'
    # 64-dimensional inputs condense less here (see the module docstring).
    run = lab.run_experiment("condensation-pruning", out=tmp_path / "run", seed=0, threads=1)
    m = run.metrics
    assert m["width"] == 400
    assert m["effective_width"] < m["width"] / 2
    assert m["agreement"] >= 0.98
    assert abs(m["accuracy_wide"] - m["accuracy_merged"]) <= 0.02
    assert m["accuracy_wide"] > 0.88
