"""``widenet kernel`` / ``predict`` with ``--arch`` (a preset or a YAML file of layers) and
``--in-shape`` (flat inputs as images): the outputs equal the library's kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import widenet as wn
from widenet import io
from widenet.cli import app

runner = CliRunner()

YAML = """
- conv: {kernel_size: 3, w_std: 1.414, b_std: 0.1}
- relu
- avg_pool: {kernel_size: 2}
- conv: {kernel_size: 3, w_std: 1.414}
- residual: [relu, {conv: {kernel_size: 3, w_std: 1.414}}]
- relu
- global_avg_pool
- dense: {out_features: 1}
"""


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _digits_images(n):
    x = io.load_inputs("digits", n, seed=0, standardize=None, dtype=torch.float64)
    return x.reshape(n, 1, 8, 8)


@pytest.mark.parametrize("arch", ["cnn-vec", "yaml"])
def test_kernel_with_arch_equals_library(tmp_path, arch):
    if arch == "yaml":
        path = tmp_path / "arch.yaml"
        path.write_text(YAML)
        spec, expected = path, wn.from_spec(__import__("yaml").safe_load(YAML))
    else:
        spec, expected = arch, wn.presets.cnn(readout="flatten")
    out = tmp_path / "k.npz"
    r = invoke(
        "kernel", "--arch", spec, "--data", "digits", "--n", 8, "--in-shape", "1,8,8", "-o", out
    )
    assert r.exit_code == 0, r.output
    assert f"--arch {spec}" in r.output
    got = np.load(out)
    k = expected.kernel(_digits_images(8))
    np.testing.assert_allclose(got["ntk"], k.ntk.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["nngp"], k.nngp.numpy(), rtol=1e-12)


def test_kernel_store_with_arch(tmp_path):
    out = tmp_path / "K.zarr"
    r = invoke(
        "kernel",
        "--arch",
        "cnn-vec",
        "--data",
        "digits",
        "--n",
        9,
        "--in-shape",
        "1,8,8",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    from widenet import scale

    store = scale.open_kernel(out)
    k = wn.presets.cnn(readout="flatten").kernel(_digits_images(9))
    np.testing.assert_allclose(store.load("ntk").numpy(), k.ntk.numpy(), rtol=1e-12)
    assert store.meta["architecture"]["kind"] == "serial"


def test_predict_with_arch(tmp_path):
    out = tmp_path / "p.npz"
    r = invoke(
        "predict",
        "--arch",
        "cnn-vec",
        "--train",
        "digits",
        "--n-train",
        40,
        "--n-test",
        20,
        "--in-shape",
        "1,8,8",
        "--time",
        "inf",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["architecture"]["arch"] == "cnn-vec"
    assert metrics["architecture"]["layers"] == wn.presets.cnn(readout="flatten").spec()
    assert metrics["test_accuracy"][0] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--arch", "cnn", "--depth", 2), "--arch describes the whole network; drop --depth"),
        (("--arch", "cnn"), "a spatial layer needs images"),
        (("--arch", "resnet"), "unknown preset 'resnet'"),
        (("--arch", "missing.yaml"), "no such file"),
        (("--arch", "cnn", "--in-shape", "1,8,7"), "--in-shape 1,8,7 has 56 entries"),
        (("--arch", "cnn", "--in-shape", "a,b"), "must be integers"),
    ],
)
def test_arch_errors(tmp_path, args, message):
    r = invoke("kernel", "--data", "digits", "--n", 5, "-o", tmp_path / "k.npy", *args)
    assert r.exit_code != 0
    assert message in " ".join(r.output.split()), r.output


def test_bad_yaml(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("- conv: {kernel_size: 3\n")
    r = invoke("kernel", "--arch", path, "--data", "digits", "--n", 5, "-o", tmp_path / "k.npy")
    assert r.exit_code != 0 and "not valid YAML" in r.output


@pytest.mark.parametrize(("data", "shape"), [("mnist1d", (1, 40)), ("digits-images", (1, 8, 8))])
def test_kernel_of_structured_data_sets_in_their_own_shape(tmp_path, data, shape):
    """--data mnist1d / digits-images with a convolutional --arch need no --in-shape."""
    out = tmp_path / "k.npz"
    r = invoke("kernel", "--arch", "cnn", "--data", data, "--n", 6, "-o", out)
    assert r.exit_code == 0, r.output
    x, _ = wn.load_dataset(data, n=6, seed=0, dtype=torch.float64)
    assert tuple(x.shape[1:]) == shape
    k = wn.presets.cnn().kernel(x)
    np.testing.assert_allclose(np.load(out)["ntk"], k.ntk.numpy(), rtol=1e-12)
    # an MLP takes them as flat rows
    r = invoke("kernel", "--data", data, "--n", 6, "-o", tmp_path / "flat.npz")
    assert r.exit_code == 0, r.output
    flat = wn.mlp(3, "relu", 2**0.5, 0.0).kernel(x.reshape(6, -1))
    np.testing.assert_allclose(np.load(tmp_path / "flat.npz")["ntk"], flat.ntk.numpy(), rtol=1e-12)


def test_fit_predict_with_arch_and_proba_equals_estimator(tmp_path):
    """fit-predict --arch cnn --train digits-images --proba = NTKClassifier(architecture=cnn,
    in_shape=(1, 8, 8), probability=True) on the same split."""
    from widenet.estimators import NTKClassifier

    out = tmp_path / "p.npz"
    r = invoke(
        "fit-predict", "--train", "digits-images", "--test", "digits-images",
        "--n-train", 80, "--n-test", 10, "--arch", "cnn", "--proba", "-o", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    got = np.load(out)
    x_tr, y_tr, x_te, _, _ = io.load_train_test(
        "digits-images", "digits-images", 80, 10, "onehot", None, None, None, 0
    )
    est = NTKClassifier(architecture="cnn", in_shape=(1, 8, 8), probability=True)
    est.fit(x_tr, io.decode_labels(y_tr))
    np.testing.assert_array_equal(got["predictions"], est.predict(x_te))
    np.testing.assert_allclose(got["probabilities"], est.predict_proba(x_te), rtol=1e-10)
    np.testing.assert_allclose(got["probabilities"].sum(1), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("--arch", "cnn", "--depth", "4"), "drop --depth"),
        (("--in-shape", "1,8,8"), "--in-shape goes with --arch"),
        (("--model", "regressor", "--proba"), "--proba needs --model classifier"),
    ],
)
def test_fit_predict_arch_options_refused(tmp_path, extra, match):
    r = invoke("fit-predict", "--n-train", 20, "--n-test", 5, *extra, "-o", tmp_path / "p.npz")
    assert r.exit_code == 2 and match in r.output, r.output


def test_predict_with_arch_on_mnist1d_needs_no_in_shape(tmp_path):
    out = tmp_path / "p.npz"
    r = invoke(
        "predict", "--train", "mnist1d", "--test", "mnist1d", "--n-train", 30, "--n-test", 10,
        "--arch", "cnn", "-o", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
