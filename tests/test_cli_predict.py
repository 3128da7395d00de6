"""``widenet predict``: closed-form training dynamics from the command line (CliRunner)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import widenet as wn
from widenet.cli import app

dynamics = pytest.importorskip("widenet.dynamics")

runner = CliRunner()
ARCH = ("--depth", "2", "--activation", "relu", "--w-std", "1.5", "--b-std", "0.1")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((30, 5)), rng.standard_normal((12, 5))
    y, yt = rng.standard_normal((30, 3)), rng.standard_normal((12, 3))
    paths = {}
    for name, arr in (("x", x), ("xt", xt), ("y", y), ("yt", yt)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    return paths, (x, y, xt, yt)


def library(x, y, xt, times, kernel="ntk", lr=1.0, diag_reg=0.0):
    arch = wn.mlp(depth=2, activation="relu", w_std=1.5, b_std=0.1)
    x, y, xt = (torch.as_tensor(a, dtype=torch.float64) for a in (x, y, xt))
    k_tt, k_xt, k_xx = arch.kernel(x), arch.kernel(xt, x), arch.kernel(xt)
    th_tt = getattr(k_tt, kernel)
    th_xt = getattr(k_xt, kernel)
    t = torch.as_tensor(times, dtype=torch.float64)
    opts = dict(learning_rate=lr, loss="mean", diag_reg=diag_reg)
    flow = dynamics.gradient_flow_mse(
        th_tt,
        y,
        t,
        ntk_test_train=th_xt,
        f0_train=torch.zeros_like(y),
        f0_test=torch.zeros(len(xt), y.shape[1], dtype=torch.float64),
        **opts,
    )
    gp = dynamics.gp_ensemble_mse(k_tt.nngp, th_tt, k_xt.nngp, th_xt, k_xx.nngp, y, t, **opts)
    return flow, gp


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_files_match_the_library(files, tmp_path, kernel):
    paths, (x, y, xt, yt) = files
    out = tmp_path / "P.npz"
    args = ["predict", "--train", paths["x"], "--train-targets", paths["y"], "--test", paths["xt"]]
    args += ["--test-targets", paths["yt"], *ARCH, "--kernel", kernel, "--learning-rate", "2"]
    args += ["--diag-reg", "0.01", "--time", "0", "--time", "50", "--time", "inf", "--out", out]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "test MSE" in result.output
    saved = np.load(out)
    times = [0.0, 50.0, math.inf]
    np.testing.assert_array_equal(saved["times"], times)
    flow, gp = library(x, y, xt, times, kernel=kernel, lr=2.0, diag_reg=0.01)
    assert saved["test_mean"].shape == (3, 12, 3)
    assert saved["test_variance"].shape == (3, 12)
    np.testing.assert_allclose(saved["test_mean"], flow.test.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(saved["train_mean"], flow.train.numpy(), rtol=0, atol=1e-12)
    variance = torch.diagonal(gp.covariance, dim1=-2, dim2=-1).numpy()
    np.testing.assert_allclose(saved["test_variance"], variance, rtol=0, atol=1e-12)
    # the mean of the ensemble is the gradient-flow prediction from f0 = 0
    np.testing.assert_allclose(gp.mean.numpy(), flow.test.numpy(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(saved["test_mean"][0], 0.0, atol=1e-12)  # t = 0
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["times"] == [0.0, 50.0, "inf"]
    mse = ((saved["test_mean"] - yt) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(metrics["test_mse"], mse, rtol=1e-12)
    assert metrics["test_accuracy"] == pytest.approx(
        (saved["test_mean"].argmax(-1) == yt.argmax(-1)).mean(-1)
    )
    assert metrics["kernel"] == kernel and metrics["n_train"] == 30 and metrics["outputs"] == 3


def test_bundled_split_and_labels(tmp_path):
    out = tmp_path / "sub" / "P.npz"
    args = ["predict", "--train", "iris", "--n-train", "40", "--test", "iris", "--n-test", "20"]
    result = invoke(*args, *ARCH, "--time", "10", "--time", "inf", "--no-variance", "--out", out)
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert "test_variance" not in saved.files
    assert saved["test_mean"].shape == (2, 20, 3)
    # one-hot targets of a disjoint split drawn with --data-seed
    x, labels = wn.load_dataset("iris", dtype=torch.float64)
    perm = np.random.default_rng(0).permutation(len(x))
    i_train, i_test = np.sort(perm[:40]), np.sort(perm[40:60])
    assert not set(i_train) & set(i_test)
    np.testing.assert_array_equal(saved["train_targets"].argmax(-1), labels.numpy()[i_train])
    np.testing.assert_array_equal(saved["test_targets"].argmax(-1), labels.numpy()[i_test])
    flow, _ = library(x[i_train], saved["train_targets"], x[i_test], [10.0, math.inf])
    np.testing.assert_allclose(saved["test_mean"], flow.test.numpy(), rtol=0, atol=1e-12)
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert len(metrics["test_accuracy"]) == 2 and 0.5 <= metrics["test_accuracy"][-1] <= 1.0
    assert metrics["train_mse"][-1] == pytest.approx(0.0, abs=1e-6)


def test_two_classes_are_plus_minus_one_and_integer_label_files(tmp_path):
    out = tmp_path / "P.npz"
    args = ["predict", "--train", "breast_cancer", "--n-train", "30", "--test", "breast_cancer"]
    result = invoke(*args, "--n-test", "10", *ARCH, "--time", "inf", "--out", out)
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["train_targets"].shape == (30, 1)
    assert set(np.unique(saved["train_targets"])) <= {-1.0, 1.0}
    # integer labels in a file are encoded the same way
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((20, 4)))
    np.save(tmp_path / "xt.npy", rng.standard_normal((8, 4)))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 20))
    np.save(tmp_path / "yt.npy", rng.integers(0, 3, 8))
    out2 = tmp_path / "Q.npz"
    args = ["predict", "--train", tmp_path / "x.npy", "--targets", tmp_path / "y.npy"]
    args += ["--test", tmp_path / "xt.npy", "--test-targets", tmp_path / "yt.npy"]
    result = invoke(*args, *ARCH, "--time", "1", "--out", out2)
    assert result.exit_code == 0, result.output
    saved = np.load(out2)
    assert saved["train_targets"].shape == (20, 3) and saved["test_mean"].shape == (1, 8, 3)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--time", "-1"], "--time"),
        (["--time", "soon"], "--time"),
        (["--kernel", "gp"], "--kernel"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--diag-reg", "-1"], "--diag-reg"),
        (["--n-train", "100", "--n-test", "100"], "--n-train"),
        (["--test", "wine"], "--test"),
        (["--train-targets", "y.npy"], "--train-targets"),
    ],
)
def test_bad_options_name_the_option(tmp_path, extra, needle):
    args = ["predict", "--train", "iris", "--test", "iris", "--out", tmp_path / "P.npz", *extra]
    result = invoke(*args)
    assert result.exit_code == 2
    assert needle in result.output
    assert not (tmp_path / "P.npz").exists()


def test_bad_files_name_the_option(files, tmp_path):
    paths, _ = files
    base = ["predict", "--train", paths["x"], "--test", paths["xt"]]
    cases = [
        (["--out", tmp_path / "P.npy", "--train-targets", paths["y"]], "--out"),
        (["--out", tmp_path / "P.npz"], "--train-targets"),
        (["--out", tmp_path / "P.npz", "--train-targets", tmp_path / "no.npy"], "--train-targets"),
        (["--out", tmp_path / "P.npz", "--train-targets", paths["xt"]], "--train-targets"),
        (
            [
                "--out",
                tmp_path / "P.npz",
                "--train-targets",
                paths["y"],
                "--test-targets",
                paths["x"],
            ],
            "--test-targets",
        ),
    ]
    for extra, needle in cases:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert needle in result.output, (extra, result.output)
    np.save(tmp_path / "x3.npy", np.zeros((30, 3)))
    result = invoke(
        "predict",
        "--train",
        tmp_path / "x3.npy",
        "--train-targets",
        paths["y"],
        "--test",
        paths["xt"],
        "--out",
        tmp_path / "P.npz",
    )
    assert result.exit_code == 2 and "--test" in result.output
    result = invoke(
        "predict",
        "--train",
        tmp_path / "missing.npy",
        "--train-targets",
        paths["y"],
        "--test",
        paths["xt"],
        "--out",
        tmp_path / "P.npz",
    )
    assert result.exit_code == 2 and "--train" in result.output
