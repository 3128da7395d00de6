"""double-descent at quick size: the random-features test error peaks at N = n and descends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widenet import lab
from widenet.experiments.double_descent import METRICS, DoubleDescentConfig, feature_counts

REQUIRED = {"n_train", "n_features", "test_error", "test_mse", "coef_norm", "threshold"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # One quick run for the module (n = 200 digits, 25 feature counts up to 4000; 100 synthetic
    # points; 12 small trained networks): ~15 s of CPU with one thread.
    out = tmp_path_factory.mktemp("dd") / "run"
    return lab.run_experiment("double-descent", quick=True, out=out, seed=0, threads=1)


def test_sizes_and_grid():
    full, quick = DoubleDescentConfig(), DoubleDescentConfig.quick()
    assert (full.n_train, quick.n_train) == (1000, 200)
    counts = feature_counts(200, 0.05, 20, 25, even=True)
    assert counts[0] == 10 and counts[-1] == 4000 and 200 in counts
    assert all(c % 2 == 0 for c in counts)
    assert 7 in feature_counts(7, 0.5, 2, 3, even=False)


def test_metrics_keys(quick_run):
    m = quick_run.metrics
    assert REQUIRED <= set(m) and set(m) == set(METRICS)
    assert m["n_train"] == m["threshold"] == 200
    assert len(m["n_features"]) == len(m["test_error"]) == len(m["coef_norm"]) == 25
    assert json.loads((quick_run.out / "metrics.json").read_text()) == m
    names = sorted(p.name for p in quick_run.figures)
    assert names == ["random_features.png", "synthetic.png", "widths.png"]


def test_peak_at_the_interpolation_threshold(quick_run):
    m = quick_run.metrics
    counts = m["n_features"]
    # The squared loss and the norm peak exactly at N = n: Φ is square and nearly singular there
    # (measured: MSE 16 at N = 200 against < 0.18 everywhere else; ‖β‖ 960 vs < 70).
    assert m["peak_n_features"] == 200
    assert counts[int(np.argmax(m["coef_norm"]))] == 200
    assert m["synthetic_peak_n_features"] == m["synthetic_n_train"]
    # The zero-one error at the peak is near chance (0.9 for 10 classes); measured 0.82-0.86,
    # Belkin et al. read ≈ 0.88 on MNIST.
    assert m["peak_error"] > 0.6
    # Interpolation from N = n on (train MSE at rounding level), not before.
    for c, tr in zip(counts, m["train_mse"], strict=True):
        assert (tr < 1e-10) == (c >= 200), (c, tr)


def test_second_descent_below_the_u_bottom(quick_run):
    m = quick_run.metrics
    # Belkin et al. Fig. 2: past the threshold the error falls below the classical optimum
    # (measured: U-bottom 0.14-0.17 at N ≈ 75-95, largest N 0.02-0.06, kernel 0.025-0.054).
    assert m["u_bottom_n_features"] < 200
    assert m["largest_n_error"] < 0.6 * m["u_bottom_error"]
    # ... towards the kernel limit: within 0.05 of it at N = 20 n.
    assert abs(m["largest_n_error"] - m["kernel_error"]) < 0.05
    assert m["kernel_error"] < 0.1
    # The norm decreases beyond the peak (more features spread the interpolating fit).
    norms = np.asarray(m["coef_norm"])
    peak = int(np.argmax(norms))
    assert norms[-1] < 0.1 * norms[peak]


def test_width_sweep(quick_run):
    m = quick_run.metrics
    assert m["width_label_noise"] == [0.0, 0.2]
    assert len(m["width_test_error"]) == 2 and len(m["width_test_error"][0]) == len(m["widths"])
    assert m["width_threshold"] == 100 * 10
    p = np.asarray(m["width_n_params"])
    assert p.min() < m["width_threshold"] < p.max()
    loss = np.asarray(m["width_train_loss"])
    # Wide networks interpolate (loss ~ 0), the narrowest cannot (p << n k).
    assert (loss[:, -1] < 1e-3).all() and (loss[:, 0] > 0.02).all()
    for row, first in zip(loss, m["width_interpolation_n_params"], strict=True):
        i = list(p).index(first)  # the first width whose training loss is below 1e-3
        assert row[i] < 1e-3 and (row[:i] >= 1e-3).all()
    # The test squared loss peaks near the threshold p = n k (measured: at p = 760 without and
    # p = 985 with label noise, of a grid 160 ... 11860) and falls far below the peak for the
    # widest networks (measured 1.8 -> 0.19 and 10.8 -> 0.21).
    for curve in m["width_test_mse"]:
        peak = int(np.argmax(curve))
        assert m["width_threshold"] / 2 <= p[peak] <= 2 * m["width_threshold"], (p[peak], curve)
        assert curve[-1] < 0.25 * curve[peak]
    # Label noise hurts the test error of the wide, interpolating networks (measured 0.31 vs
    # 0.11).
    assert m["width_test_error"][1][-1] > m["width_test_error"][0][-1] + 0.05


@pytest.mark.parametrize(
    "override, key",
    [
        ("ratio_max=0.5", "ratio_max"),
        ("width_label_noise=[1.5]", "width_label_noise"),
        ("features=rbf", "features"),
        ("dataset=sphere", "dataset"),
    ],
)
def test_bad_overrides(override, key):
    with pytest.raises(lab.ConfigError, match=key):
        lab.get("double-descent").resolve(quick=True, overrides=[override])


def test_too_many_points(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        lab.run_experiment("double-descent", out=tmp_path / "x", overrides=["n_train=1700"])


@pytest.mark.slow
def test_full_size_run(tmp_path):
    # Full size: n = 1000 digits (797 test), N = 50 ... 20000; 400 synthetic points; 10 widths x 2
    # noise levels of trained networks on 400 digits.
    run = lab.run_experiment("double-descent", out=tmp_path / "run", seed=0, threads=1)
    m = run.metrics
    assert m["n_train"] == m["threshold"] == 1000
    assert m["peak_n_features"] == 1000
    assert m["peak_error"] > 0.5
    # Measured (seed 0): U-bottom 0.044 at N = 472, 0.026 at N = 20000, kernel limit 0.018.
    assert m["largest_n_error"] < 0.75 * m["u_bottom_error"]
    assert abs(m["largest_n_error"] - m["kernel_error"]) < 0.03
    assert m["synthetic_peak_n_features"] == 400
    # Trained networks (measured): test MSE peaks 51 (clean) and 84 (20 % noise) where training
    # first interpolates, 0.08 / 0.13 at the widest; test error 0.03 vs 0.21 there.
    for curve in m["width_test_mse"]:
        assert curve[-1] < 0.1 * max(curve)
    assert m["width_test_error"][1][-1] > m["width_test_error"][0][-1] + 0.05


def test_same_seed_reproduces(tmp_path):
    tiny = ["n_train=20", "n_test=20", "n_points=3", "synthetic_n_train=20", "synthetic_n_test=20"]
    tiny += ["width_n_train=20", "width_points=2", "width_steps=5"]
    a = lab.run_experiment("double-descent", out=tmp_path / "a", overrides=tiny, seed=3)
    b = lab.run_experiment("double-descent", out=tmp_path / "b", overrides=tiny, seed=3)
    assert a.metrics == b.metrics and a.metrics["threshold"] == 20
