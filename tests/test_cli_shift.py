"""The distribution-shift commands: covariate-weights, label-shift, weighted-fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from widenet import shift
from widenet.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    # Two Gaussian blobs per class; the target has a different class prior and a shifted mean.
    d = tmp_path_factory.mktemp("shiftcli")
    rng = np.random.default_rng(0)
    centers = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    ys = rng.choice(3, 600, p=[0.4, 0.3, 0.3])
    yt = rng.choice(3, 400, p=[0.1, 0.2, 0.7])
    xs = centers[ys] + rng.standard_normal((600, 2))
    xt = centers[yt] + rng.standard_normal((400, 2))
    np.save(d / "xs.npy", xs)
    np.save(d / "xt.npy", xt)
    np.save(d / "ys.npy", ys)
    np.savetxt(d / "yt.csv", yt, fmt="%d", delimiter=",")
    return d, xs, ys, xt, yt


def test_help_lists_the_commands():
    result = invoke("--help")
    for command in ("covariate-weights", "label-shift", "weighted-fit"):
        assert command in result.output
        assert invoke(command, "--help").exit_code == 0


def test_covariate_weights_bundled_induced_shift(tmp_path):
    out = tmp_path / "w.npz"
    result = invoke(
        "covariate-weights", "--source", "digits", "--target", "digits", "--beta", "2",
        "--c", "0.01", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(out)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert arrays["weights"].shape == arrays["true_weights"].shape == (summary["n_source"],)
    assert arrays["weights"].mean() == pytest.approx(1.0)
    # The relative error of the weights (measured 0.27) and the ESS, also printed.
    assert summary["relative_error"] < 0.6
    assert summary["ess"] == pytest.approx(shift.effective_sample_size(arrays["weights"]))
    assert "ess_fraction" in result.output


def test_covariate_weights_files_match_the_library(files, tmp_path):
    d, xs, _, xt, _ = files
    out = tmp_path / "w.npy"
    result = invoke(
        "covariate-weights", "--source", d / "xs.npy", "--target", d / "xt.npy", "--clip", "4",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ref = shift.covariate_shift_weights(xs, xt, LogisticRegression(max_iter=5000), clip=4.0)
    np.testing.assert_allclose(np.load(out), ref.weights, rtol=1e-6)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_clipped"] == ref.n_clipped and summary["clip"] == 4.0


def test_label_shift_bundled_tweak_one(tmp_path):
    out = tmp_path / "ls.json"
    result = invoke(
        "label-shift", "--source", "digits", "--target", "digits", "--tweak-one", "3:0.6",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["classes"] == list(range(10))
    # Class 3 has weight 0.6 / 0.1 ~ 6, the others 0.4 / 9 / 0.1 ~ 0.44 (measured MSE 0.02).
    assert payload["weight_mse"] < 0.2
    assert np.argmax(payload["weights"]) == 3
    assert payload["test"]["p_value"] < 1e-10 and payload["test"]["dof"] == 9
    assert "p-value" in result.output


def test_label_shift_features_and_black_box_modes(files, tmp_path):
    d, xs, ys, xt, yt = files
    out = tmp_path / "a.json"
    args = ["--source", d / "xs.npy", "--source-labels", d / "ys.npy", "--target", d / "xt.npy"]
    result = invoke("label-shift", *args, "--soft", "--out", out)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    # True w = q/p = [0.25, 0.67, 2.33]; 240 held-out + 400 target points: error ~0.1-0.2.
    np.testing.assert_allclose(payload["weights"], [0.25, 2 / 3, 7 / 3], atol=0.4)
    # Black-box mode: the user's predictions, compared with wn.shift.bbse directly.
    model = LogisticRegression().fit(xs[:300], ys[:300])
    np.save(tmp_path / "ps.npy", model.predict(xs[300:]))
    np.save(tmp_path / "ys_ho.npy", ys[300:])
    np.save(tmp_path / "pt.npy", model.predict(xt))
    out2 = tmp_path / "b.json"
    result = invoke(
        "label-shift", "--source-pred", tmp_path / "ps.npy", "--source-labels",
        tmp_path / "ys_ho.npy", "--target-pred", tmp_path / "pt.npy", "--test", "g",
        "--out", out2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ref = shift.bbse(model.predict(xs[300:]), ys[300:], model.predict(xt))
    payload = json.loads(out2.read_text())
    np.testing.assert_allclose(payload["weights"], ref.weights, rtol=1e-12)
    assert payload["test"]["method"] == "g"


def test_weighted_fit(files, tmp_path):
    d, xs, ys, xt, yt = files
    w = np.random.default_rng(1).random(600) * 3
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "p.npy"
    result = invoke(
        "weighted-fit", "--train", d / "xs.npy", "--labels", d / "ys.npy", "--predict",
        d / "xt.npy", "--weights", tmp_path / "w.npy", "--test-labels", d / "yt.csv",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ref = shift.fit_weighted_sklearn(LogisticRegression(max_iter=5000), xs, ys, w)
    np.testing.assert_array_equal(np.load(out), ref.predict(xt))
    assert "accuracy" in result.output
    # A torch MLP with per-label weights from a label-shift result.
    (tmp_path / "ls.json").write_text(json.dumps({"classes": [0, 1, 2], "weights": [1, 2, -1]}))
    result = invoke(
        "weighted-fit", "--train", d / "xs.npy", "--labels", d / "ys.npy", "--predict",
        d / "xt.npy", "--label-weights", tmp_path / "ls.json", "--model", "mlp", "--steps",
        "30", "--out", tmp_path / "p.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(tmp_path / "p.npz")
    assert arrays["probabilities"].shape == (400, 3)
    # Class 2 has weight max(-1, 0) = 0: the weighted fit never predicts it.
    assert 2 not in arrays["predictions"]


def test_errors(files, tmp_path):
    d, xs, ys, xt, yt = files
    np.save(tmp_path / "x3.npy", np.zeros((5, 3)))
    cases = [
        (
            ["covariate-weights", "--source", d / "xs.npy", "--target", tmp_path / "x3.npy"],
            "2 features but --target has 3",
        ),
        (["covariate-weights", "--source", "digits", "--target", d / "xt.npy"], "two .npy/.csv"),
        (["covariate-weights", "--source", "digits", "--target", "iris"], "same bundled set"),
        (["label-shift", "--source", d / "xs.npy", "--target", d / "xt.npy"], "--source-labels"),
        (
            ["label-shift", "--source", "digits", "--target", "digits", "--tweak-one", "3"],
            "CLASS:RHO",
        ),
        (["label-shift", "--source-pred", d / "ys.npy", "--target-pred", d / "ys.npy"], "needs"),
    ]  # fmt: skip
    for args, message in cases:
        out = tmp_path / ("o.json" if args[0] == "label-shift" else "o.npy")
        result = invoke(*args, "--out", out)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (message, result.output)
    # A black box that never predicts class 2: singular confusion matrix, a one-line error.
    np.save(tmp_path / "pred.npy", np.minimum(ys, 1))
    result = invoke(
        "label-shift", "--source-pred", tmp_path / "pred.npy", "--source-labels", d / "ys.npy",
        "--target-pred", tmp_path / "pred.npy", "--out", tmp_path / "s.json",
    )  # fmt: skip
    assert result.exit_code == 2 and "singular" in result.output
    np.save(tmp_path / "neg.npy", -np.ones(600))
    result = invoke(
        "weighted-fit", "--train", d / "xs.npy", "--labels", d / "ys.npy", "--predict",
        d / "xt.npy", "--weights", tmp_path / "neg.npy", "--out", tmp_path / "p.npy",
    )  # fmt: skip
    assert result.exit_code == 2 and "must be >= 0" in result.output
