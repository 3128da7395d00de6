"""linear-vs-network at quick size: a network and its linearization stay close as width grows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widenet import lab
from widenet.experiments.linear_vs_network import METRICS, LinearVsNetworkConfig

QUICK_WIDTHS = [32, 64, 128, 256, 512]
# The keys promised by the issue (stable: other tools read them).
REQUIRED = {"widths", "rmse", "rmse_slope", "weight_change_slope", "ntk_change_slope"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # One quick run shared by the tests of this module (one torch thread, as the CLI uses:
    # ~15-20 s on a shared 2-core machine).
    out = tmp_path_factory.mktemp("lvn") / "run"
    return lab.run_experiment("linear-vs-network", quick=True, out=out, seed=0, threads=1)


def test_sizes():
    assert LinearVsNetworkConfig().widths == [2**k for k in range(5, 13)]
    quick = LinearVsNetworkConfig.quick()
    assert quick.widths == QUICK_WIDTHS and quick.n_train == 64 and quick.n_test == 64


def test_metrics_keys(quick_run):
    m = quick_run.metrics
    # Exactly the documented keys, the required ones among them.
    assert set(m) == set(METRICS)
    assert REQUIRED <= set(m)
    assert m["widths"] == QUICK_WIDTHS
    for key in ("rmse", "rmse_std", "weight_change", "ntk_change", "train_loss", "output_scale"):
        assert len(m[key]) == len(QUICK_WIDTHS), key
    assert len(m["seeds"]) == 1 and m["n_train"] == 64 and m["n_test"] == 64
    assert json.loads((quick_run.out / "metrics.json").read_text()) == m
    assert sorted(p.name for p in quick_run.figures) == ["scaling.png", "trajectories.png"]


def test_both_models_fit(quick_run):
    m = quick_run.metrics
    # Same learning rate and steps for both: each must actually train (otherwise a small RMSE
    # would only say that nothing moved). Measured: losses fall by 150x-6000x.
    init = np.asarray(m["initial_train_loss"])
    assert np.all(np.asarray(m["train_loss"]) < 0.05 * init)
    assert np.all(np.asarray(m["lin_train_loss"]) < 0.05 * init)
    assert 0 < m["lr"] < 2
    # The trained linearization equals the closed-form GD dynamics with the empirical NTK at
    # init (Lee et al. 2019, eq. 9): float32 training vs float64 closed form, measured 1.2e-6.
    assert m["closed_form_error"] < 1e-4


def test_network_approaches_its_linearization(quick_run):
    m = quick_run.metrics
    rmse, scale = np.asarray(m["rmse"]), np.asarray(m["output_scale"])
    # 16x the width: the gap falls 4x (slope -1/2) to 16x (slope -1); measured 5x. Ask for 3x.
    assert rmse[-1] < rmse[0] / 3
    # At width 512 the gap is a small fraction of the outputs themselves (measured 8%).
    assert rmse[-1] < 0.2 * scale[-1]
    # Lee et al. 2019: slope about -1 asymptotically, bounded by -1/2 (Theorem 2.1). In the
    # quick widths the O(1/n) regime is not yet reached; measured -0.59 (seed 0). One seed, 64
    # test points per width: about +-0.1 of seed noise on a slope over 4 octaves. The band
    # rejects no convergence (0) and anything much steeper than the 1/n law.
    assert -1.6 < m["rmse_slope"] < -0.4


def test_weights_and_kernel_barely_move(quick_run):
    m = quick_run.metrics
    w, k = np.asarray(m["weight_change"]), np.asarray(m["ntk_change"])
    assert np.all(w < 0.1) and w[-1] < 0.01  # measured 0.069 ... 0.0062
    assert k[-1] < k[0] / 2 and k[-1] < 0.1  # measured 0.19 ... 0.042
    # Weights: between -1/2 (first layer) and -1 (n x n hidden layers); measured -0.88.
    assert -1.3 < m["weight_change_slope"] < -0.4
    # NTK: between -1/2 (lazy-training bound) and -1 (leading order); measured -0.59. Same band
    # as kernel-convergence's ntk_change_slope.
    assert -1.3 < m["ntk_change_slope"] < -0.3


def test_same_seed_reproduces(tmp_path):
    overrides = ["widths=[16, 32]", "n_train=16", "n_test=8", "n_ntk=8", "steps=5"]
    a = lab.run_experiment("linear-vs-network", out=tmp_path / "a", overrides=overrides)
    b = lab.run_experiment("linear-vs-network", out=tmp_path / "b", overrides=overrides, threads=1)
    assert a.metrics == b.metrics


@pytest.mark.parametrize(
    "override, key",
    [("widths=[64]", "widths"), ("dataset=mnist", "dataset"), ("steps=0", "steps")],
)
def test_bad_overrides(override, key):
    with pytest.raises(lab.ConfigError, match=key):
        lab.get("linear-vs-network").resolve(quick=True, overrides=[override])


@pytest.mark.slow
def test_full_size_run(tmp_path):
    # The full size (widths 2^5 ... 2^12; 12 min on a busy 2-core machine, width 4096 is most of
    # it). Measured (seed 0): rmse 0.30 -> 0.014, rmse_slope -0.66, weight_change_slope -0.95,
    # ntk_change_slope -0.72. The output gap's slope stays shallower than Lee et al.'s -1 here
    # (-0.82 over 2^8 .. 2^10, -0.4 over 2^11 .. 2^12 with one seed); the bands check at least
    # the -1/2 rate of Theorem 2.1 with the seed noise of one initialisation (about +-0.1).
    run = lab.run_experiment("linear-vs-network", out=tmp_path / "run", seed=0, threads=1)
    m = run.metrics
    assert m["widths"] == [2**k for k in range(5, 13)]
    assert -1.3 < m["rmse_slope"] < -0.5
    assert -1.2 < m["weight_change_slope"] < -0.6
    assert -1.2 < m["ntk_change_slope"] < -0.5
    assert m["rmse"][-1] < m["rmse"][0] / 10
