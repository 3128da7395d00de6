"""du-convergence and du-theory-vs-practice (Du et al. 2018) at quick size, and full size (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from widenet import convergence as cv
from widenet import lab
from widenet.cli import app
from widenet.experiments import du_convergence, du_theory

CONVERGENCE_KEYS = {
    "widths",
    "step_size",
    "lambda0",
    "final_log10_error",
    "pattern_change",
    "max_distance",
    "measured_rate",
    "predicted_rate",
}
PER_WIDTH = CONVERGENCE_KEYS - {"widths", "step_size", "lambda0"}


@pytest.fixture(scope="module")
def convergence_run(tmp_path_factory):
    # n = d = 200, widths 250/1000/4000, 50 epochs: ~10 s on an idle 2-core machine.
    out = tmp_path_factory.mktemp("du") / "conv"
    return lab.run_experiment("du-convergence", quick=True, out=out, seed=0, threads=1)


@pytest.fixture(scope="module")
def theory_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("du") / "theory"
    return lab.run_experiment("du-theory-vs-practice", quick=True, out=out, seed=0, threads=1)


def test_sizes():
    full, quick = du_convergence.DuConvergenceConfig(), du_convergence.DuConvergenceConfig.quick()
    assert (full.n, full.d, full.widths, full.epochs) == (
        1000,
        1000,
        [500, 1000, 2000, 4000, 8000],
        100,
    )
    assert (quick.n, quick.d, quick.widths, quick.epochs) == (200, 200, [250, 1000, 4000], 50)


def test_convergence_metrics(convergence_run):
    m = convergence_run.metrics
    assert set(m) == set(du_convergence.METRICS)
    assert CONVERGENCE_KEYS <= set(m)
    assert m["widths"] == [250, 1000, 4000]
    for key in PER_WIDTH:
        assert len(m[key]) == 3, key
    assert json.loads((convergence_run.out / "metrics.json").read_text()) == m
    names = sorted(p.name for p in convergence_run.figures)
    assert names == ["log_error.png", "max_distance.png", "paper_vs_ours.png", "pattern_change.png"]
    # The recorded step size is the documented choice: 1/4 of H_inf's critical rate.
    assert m["step_size"] == pytest.approx(0.25 * m["critical_learning_rate"], rel=1e-12)
    assert m["step_size"] * m["lambda_max"] < 2  # stable for the infinite-width kernel


def test_convergence_science_at_quick_size(convergence_run):
    m = convergence_run.metrics
    # Flips and drift are monotone in m and scale like m^-1/2 (measured slopes -0.51 and
    # -0.49 over a 16x range of widths); +-0.15 allows the fluctuation of three widths.
    assert m["monotone"]["pattern_change"] and m["monotone"]["max_distance"]
    assert abs(m["pattern_change_slope"] + 0.5) < 0.15
    assert abs(m["max_distance_slope"] + 0.5) < 0.15
    # Wider trains at least as far (measured -2.17, -2.47, -2.48: the two widest nets are both
    # in the kernel regime, so only the narrowest is clearly behind).
    assert m["final_log10_error"][0] > m["final_log10_error"][-1] + 0.1
    for i in range(3):
        # Theorem 4.1's bound on the loss ratio holds with room (the kernel rate is ~2x faster).
        assert m["measured_rate"][i] < m["predicted_rate"][i]
        # ... and the rate is the kernel regime's: the slowest H(0) mode, within 3%.
        assert m["measured_rate"][i] == pytest.approx(m["kernel_rate_h0"][i], rel=0.03)
        assert m["max_distance"][i] < m["drift_bound"][i]
        assert m["lambda_min_final"][i] > m["lambda0"] / 2
    # The H_inf closed form predicts the widest net's final loss to within 0.2 in log10.
    assert abs(m["kernel_log10_error"][-1] - m["final_log10_error"][-1]) < 0.2


def test_theory_metrics(theory_run):
    m = theory_run.metrics
    assert set(m) == set(du_theory.METRICS)
    assert m["pairs"] == [[50, 500], [50, 5000], [100, 2000]]
    assert set(m["random_labels"]) == {"true", "shuffled", "gaussian"}
    names = sorted(p.name for p in theory_run.figures)
    assert names == ["drift_and_gram.png", "random_labels.png", "rates_and_predictions.png"]


def test_theory_vs_practice_at_quick_size(theory_run):
    m = theory_run.metrics
    for i in range(3):
        # The widths are ~1e-17 of the theorem's sufficient width, yet its conclusions hold:
        assert m["width_over_bound"][i] < 1e-10
        assert m["envelope_holds"][i]
        assert m["measured_rate"][i] < m["predicted_rate"][i]
        assert m["min_lambda_min"][i] > m["lambda0"][i] / 2
        # the drift is far below its bound (measured 60-100x) but far above the radius R the
        # proof needs (R ~ 1e-6): the proof's sufficient condition is very loose.
        assert m["max_distance"][i] < m["drift_bound"][i] / 10
        assert m["max_distance"][i] > m["radius"][i]
        # u(k) follows the H_inf closed form to a few % of the initial residual (measured
        # 0.007-0.024; the finite-width kernel error is O(n/sqrt(m)) relative to lambda0).
        assert m["prediction_gap_hinf"][i] < 0.05
        assert m["theorem_step_size"][i] < m["step_size"][i] / 1000
    # Same n = 50, ten times wider: closer to the kernel prediction, by about sqrt(10).
    assert m["prediction_gap_hinf"][1] < m["prediction_gap_hinf"][0] / 2
    assert m["max_distance"][1] < m["max_distance"][0] / 2
    # Random labels (shuffled parities, Gaussian) are fitted as well as the true ones
    # (measured L/L(0): true 1e-12, shuffled 7e-7, Gaussian 2e-10 after 400 steps).
    assert max(m["random_labels"].values()) < 1e-5


@pytest.mark.parametrize(
    "name, override, key",
    [
        ("du-convergence", "widths=[500]", "widths"),
        ("du-convergence", "step_size_scale=2", "step_size_scale"),
        ("du-convergence", "dtype=float16", "dtype"),
        ("du-theory-vs-practice", "pairs=[[1, 5]]", "pairs"),
        ("du-theory-vs-practice", "pairs=[]", "pairs"),
        ("du-theory-vs-practice", "delta=1.5", "delta"),
    ],
)
def test_bad_overrides(name, override, key):
    with pytest.raises(lab.ConfigError, match=key):
        lab.get(name).resolve(quick=True, overrides=[override])


def test_same_seed_reproduces(tmp_path):
    overrides = ["n=20", "d=10", "widths=[20, 40]", "epochs=4", "gram_every=2"]
    a = lab.run_experiment("du-convergence", out=tmp_path / "a", overrides=overrides)
    b = lab.run_experiment("du-convergence", out=tmp_path / "b", overrides=overrides)
    assert a.metrics == b.metrics


# --------------------------------------------------------------------------------------------
# The command line


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_cli_help_lists_the_commands():
    result = invoke("--help")
    for command in ("du-bounds", "du-train"):
        assert command in result.output
        assert invoke(command, "--help").exit_code == 0


def test_cli_du_bounds(tmp_path):
    out = tmp_path / "b.json"
    result = invoke(
        "du-bounds", "--data", "sphere", "--n", 40, "--dim", 30, "--width", 200, "--out", out
    )
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    # The same numbers from the library, independently of the command's plumbing.
    from widenet.data import load_dataset

    x, _ = load_dataset("sphere", n=40, seed=0, dim=30, dtype=torch.float64)
    lam0 = cv.lambda0(x)
    assert got["lambda0"] == pytest.approx(lam0, rel=1e-12)
    assert got["theorem_step_size"] == pytest.approx(lam0 / (4 * 40**2), rel=1e-12)
    assert got["width_bound"] >= got["width_bound_lemma_3_1"]
    net = cv.TwoLayerReLU(30, 200, seed=0, dtype=torch.float64)
    h0 = cv.gram(net, x)
    assert got["lambda_min_h0"] == pytest.approx(float(torch.linalg.eigvalsh(h0)[0]), rel=1e-10)
    assert got["drift_bound_gd"] == pytest.approx(4 * got["drift_bound_flow"])


def test_cli_du_train(tmp_path):
    out = tmp_path / "r.npz"
    args = ["du-train", "--data", "digits", "--n", 60, "--labels", "shuffled", "--width", 500]
    result = invoke(*args, "--epochs", 30, "--gram-every", 10, "--dtype", "float64", "--out", out)
    assert result.exit_code == 0, result.output
    assert "not unit-norm" in result.output  # digits rows are normalised with a warning
    rec = np.load(out)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert rec["loss"].shape == (31,) and rec["gram_steps"].tolist() == [0, 10, 20, 30]
    assert rec["outputs"].shape == rec["kernel_hinf"].shape == (31, 60)
    assert summary["final_loss"] == pytest.approx(float(rec["loss"][-1]))
    assert summary["final_relative_error"] < 0.5  # shuffled labels are being fitted
    # The labels are a permutation of the digits' parities.
    assert sorted(np.unique(rec["labels"]).tolist()) == [-1.0, 1.0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--non-unit", "error", "--data", "digits"], "not unit-norm"),
        (["--step-size", "100", "--data", "sphere"], "exceeds 2/lambda_max"),
        (["--labels", "true", "--data", "sphere"], None),
        (["--width", "1", "--data", "sphere", "--dim", "2"], "exceed the m"),
        (["--out", "r.npy", "--data", "sphere"], "must end in .npz"),
    ],
)
def test_cli_du_train_bad_input(tmp_path, extra, message):
    base = ["du-train", "--n", 20, "--dim", 5, "--width", 30, "--epochs", 2]
    if "--out" not in extra:
        base += ["--out", tmp_path / "r.npz"]
    result = invoke(*base, *extra)
    if message is None:  # sphere 'labels' are its first coordinate: allowed, standardized
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2
    assert message in result.output


def test_cli_nan_labels_and_parallel_inputs(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 4))
    x[7] = x[2] * 3.0  # parallel to row 2
    np.save(tmp_path / "x.npy", x)
    result = invoke("du-bounds", "--data", tmp_path / "x.npy")
    assert result.exit_code == 2 and "inputs 2 and 7 are parallel" in result.output
    y = np.ones(10)
    y[4] = np.nan
    np.save(tmp_path / "y.npy", y)
    x[7] = -x[2] + 0.5
    np.save(tmp_path / "x.npy", x)
    result = invoke(
        "du-train",
        "--data",
        tmp_path / "x.npy",
        "--labels",
        tmp_path / "y.npy",
        "--out",
        tmp_path / "r.npz",
    )
    assert result.exit_code == 2 and "finite" in result.output


@pytest.mark.slow
def test_full_size_du_convergence(tmp_path):
    # The paper's size: n = d = 1000, m = 500 ... 8000, 100 epochs (~5 min when the 2-core
    # machine is idle, ~10 min when busy). Measured numbers: see the module docstring.
    run = lab.run_experiment("du-convergence", out=tmp_path / "run", seed=0, threads=1)
    m = run.metrics
    assert m["widths"] == [500, 1000, 2000, 4000, 8000]
    # What must hold (the issue): wider => lower final error, fewer flips, smaller drift,
    # each monotone in m; flips and drift shrink roughly like m^-1/2.
    assert m["monotone"] == {
        "final_log10_error": True,
        "pattern_change": True,
        "max_distance": True,
    }
    assert abs(m["pattern_change_slope"] + 0.5) < 0.1
    assert abs(m["max_distance_slope"] + 0.5) < 0.1
    assert all(r < p for r, p in zip(m["measured_rate"], m["predicted_rate"], strict=True))
    # Flips and drift within a factor 2 of the paper's readings at every width.
    for i, w in enumerate(m["widths"]):
        _, flips, dist = du_convergence.PAPER_FIG1[w]
        assert 0.5 < m["pattern_change"][i] / flips < 2
        assert 0.5 < m["max_distance"][i] / dist < 2


@pytest.mark.slow
def test_full_size_du_theory(tmp_path):
    # d = 100, (n, m) up to (300, 30000), 300 steps; random labels 3000 steps (~12-20 min on a
    # busy 2-core machine). Measured numbers: see the module docstring.
    run = lab.run_experiment("du-theory-vs-practice", out=tmp_path / "run", seed=0, threads=1)
    m = run.metrics
    assert all(m["envelope_holds"])
    assert all(np.asarray(m["min_lambda_min"]) > np.asarray(m["lambda0"]) / 2)
    assert all(np.asarray(m["max_distance"]) < np.asarray(m["drift_bound"]))
    assert max(m["prediction_gap_hinf"]) < 0.05
    assert m["prediction_gap_hinf"][1] < m["prediction_gap_hinf"][0]
    assert m["prediction_gap_hinf"][3] < m["prediction_gap_hinf"][2]
    assert max(m["random_labels"].values()) < 1e-5
