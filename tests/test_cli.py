"""The ``widenet`` command line, through typer's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from widenet import __version__, lab
from widenet.cli import app

runner = CliRunner()


class TinyConfig(lab.Config):
    n: int = 10
    QUICK: ClassVar[dict] = {"n": 3}


def tiny_run(config: TinyConfig, ctx: lab.RunContext) -> dict:
    """Tiny experiment for the CLI tests."""
    fig = ctx.figure(figsize=(2, 2))
    fig.add_subplot().plot(range(config.n))
    ctx.save_figure(fig, "line")
    return {"n": config.n, "draw": float(ctx.rng.random())}


@pytest.fixture
def tiny():
    lab.register("tiny", summary="Tiny.", config=TinyConfig, metrics={"n": "n", "draw": "u"})(
        tiny_run
    )
    yield
    lab.unregister("tiny")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


COMMANDS = (
    *("list", "run", "demo", "kernel", "ntk", "h-infinity", "predict"),
    *("solve", "verify"),  # kernel stores
    *("covariate-weights", "label-shift", "weighted-fit"),  # distribution shift
    *("signal", "critical-init"),  # initialization
    *("embed", "hessian", "condense"),  # embedding principle
    *("du-bounds", "du-train"),  # Du et al.
    *("phase-point", "regime", "frequency"),  # regimes
    *("fit-predict", "random-features"),  # estimators
)


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    listed = set(re.findall(r"│ ([a-z][a-z-]*) ", result.output))
    assert listed == set(COMMANDS)
    for command in COMMANDS:
        assert invoke(command, "--help").exit_code == 0, command


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_list(tiny):
    result = invoke("list")
    assert result.exit_code == 0
    assert "kernel-convergence" in result.output and "tiny" in result.output
    verbose = invoke("list", "--verbose")
    assert verbose.exit_code == 0
    for key in ("relative_error", "slope", "ntk_change", "widths"):
        assert key in verbose.output


def test_run_unknown_name():
    result = invoke("run", "no-such-experiment")
    assert result.exit_code != 0
    assert "unknown experiment 'no-such-experiment'" in result.output
    assert "kernel-convergence" in result.output


@pytest.mark.parametrize(
    "override, expected",
    [
        ("bogus=1", "unknown config key 'bogus'"),
        ("n_points=abc", "n_points"),
        ("oops", "key=value"),
    ],
)
def test_run_bad_set(override, expected, tmp_path):
    result = invoke("run", "kernel-convergence", "--quick", "--set", override, "--out", tmp_path)
    assert result.exit_code != 0
    assert expected in result.output
    assert not any(tmp_path.iterdir())  # validated before any work


def test_run_writes_folder_then_reuses_then_forces(tiny, tmp_path):
    out = tmp_path / "r"
    first = invoke("run", "tiny", "--quick", "--out", out, "--seed", 5, "--set", "n=4")
    assert first.exit_code == 0, first.output
    assert f"Report: {(out / 'report.html').resolve()}" in first.output
    meta = yaml.safe_load((out / "config.yaml").read_text())
    assert meta["seed"] == 5 and meta["config"] == {"n": 4} and meta["quick"] is True
    again = invoke("run", "tiny", "--quick", "--out", out, "--seed", 5, "--set", "n=4")
    assert again.exit_code == 0 and "reused" in again.output
    forced = invoke("run", "tiny", "--quick", "--out", out, "--seed", 5, "--set", "n=4", "--force")
    assert forced.exit_code == 0 and "reused" not in forced.output


def test_demo_prints_absolute_report_path(tiny, tmp_path, monkeypatch):
    only_tiny = {"tiny": lab.get("tiny")}
    monkeypatch.setattr(lab, "experiments", lambda: dict(only_tiny))
    result = invoke("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    path = (tmp_path / "demo" / "report.html").resolve()
    assert f"Combined report: {path}" in result.output
    assert path.is_file() and "data:image/png;base64," in path.read_text()
    again = invoke("demo", "--out", tmp_path / "demo")
    assert "reused" in again.output
    forced = invoke("demo", "--out", tmp_path / "demo", "--force")
    assert "reused" not in forced.output


def test_demo_only_and_progress_lines(tiny, tmp_path):
    lab.register("tiny-two", summary="Two.", config=TinyConfig, metrics={})(lambda c, ctx: {})
    try:
        result = invoke("demo", "--out", tmp_path / "demo", "--only", "tiny,tiny-two")
        assert result.exit_code == 0, result.output
        assert "2 experiment(s)" in result.output
        lines = [line for line in result.output.splitlines() if line.startswith("[")]
        assert [line.split()[0] for line in lines] == ["[1/2]", "[1/2]", "[2/2]", "[2/2]"]
        assert "elapsed" in lines[0] and "ETA ?" in lines[0] and "ETA ~0:00" in lines[-1]
        assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
            "report.html",
            "tiny",
            "tiny-two",
        ]
        repeated = invoke("demo", "--out", tmp_path / "d2", "--only", "tiny", "--only", "tiny")
        assert repeated.exit_code != 0 and "more than once" in repeated.output
    finally:
        lab.unregister("tiny-two")
    unknown = invoke("demo", "--out", tmp_path / "d3", "--only", "nope")
    assert unknown.exit_code != 0 and "unknown experiment 'nope'" in unknown.output
    assert not (tmp_path / "d3").exists()


def test_demo_failure_exit_code(tiny, tmp_path, monkeypatch):
    def broken(config, ctx):
        raise RuntimeError("boom")

    lab.register("tiny-broken", summary="Broken.", config=TinyConfig, metrics={})(broken)
    try:
        exps = {"tiny": lab.get("tiny"), "tiny-broken": lab.get("tiny-broken")}
        monkeypatch.setattr(lab, "experiments", lambda: dict(exps))
        result = invoke("demo", "--out", tmp_path / "demo")
    finally:
        lab.unregister("tiny-broken")
    assert result.exit_code == 1
    assert "RuntimeError: boom" in result.output and "Combined report:" in result.output


KERNEL_ARGS = ("--depth", 2, "--activation", "relu", "--w-std", 1.414, "--b-std", 0.1)


def test_kernel_npz_and_npy(tmp_path):
    out = tmp_path / "K.npz"
    result = invoke("kernel", *KERNEL_ARGS, "--data", "digits", "--n", 30, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as k:
        assert set(k.files) == {"nngp", "ntk"}
        assert k["nngp"].shape == k["ntk"].shape == (30, 30)
        assert k["ntk"].dtype == np.float64
        np.testing.assert_allclose(k["ntk"], k["ntk"].T, rtol=1e-12)
        full = k["nngp"]
    # Tiled and float32: the same kernel.
    npy = tmp_path / "K.npy"
    args = ("--data", "digits", "--n", 30, "--tile", 7, "--dtype", "float32", "--get", "nngp")
    result = invoke("kernel", *KERNEL_ARGS, *args, "--out", npy)
    assert result.exit_code == 0, result.output
    tiled = np.load(npy)
    assert tiled.shape == (30, 30) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, full, rtol=1e-4, atol=1e-5)


def test_kernel_from_files(tmp_path):
    x = np.random.default_rng(0).standard_normal((12, 5))
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c,d,e", comments="")
    shapes = []
    for name in ("x.npy", "x.csv"):
        out = tmp_path / f"{name}.npz"
        result = invoke("kernel", "--data", tmp_path / name, "--n", 10, "--out", out)
        assert result.exit_code == 0, result.output
        with np.load(out) as k:
            shapes.append(k["ntk"].shape)
            values = k["ntk"]
        if name == "x.npy":
            first = values
    assert shapes == [(10, 10), (10, 10)]
    np.testing.assert_allclose(values, first, rtol=1e-10)  # the CSV header is skipped


def test_kernel_parameterization_and_parametrised_activation(tmp_path):
    import torch

    import widenet as wn

    x = np.random.default_rng(0).standard_normal((6, 4))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "K.npz"
    args = ("--data", tmp_path / "x.npy", "--activation", "leaky_relu(0.1)", "--b-std", 0.3)
    result = invoke("kernel", *args, "--parameterization", "standard", "--width", 64, "--out", out)
    assert result.exit_code == 0, result.output
    arch = wn.mlp(3, wn.activations.leaky_relu(0.1), 2**0.5, 0.3, parameterization="standard")
    expected = arch.kernel(torch.as_tensor(x), width=64)
    with np.load(out) as k:
        np.testing.assert_allclose(k["ntk"], expected.ntk.numpy(), rtol=1e-12)
        np.testing.assert_allclose(k["nngp"], expected.nngp.numpy(), rtol=1e-12)
    result = invoke("kernel", *args, "--parameterization", "standard", "--out", out)
    assert result.exit_code == 2 and "width" in result.output


def test_h_infinity(tmp_path):
    import torch

    import widenet as wn

    x = np.random.default_rng(0).standard_normal((7, 3))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "H.npy"
    result = invoke("h-infinity", "--data", tmp_path / "x.npy", "--out", out)
    assert result.exit_code == 0, result.output
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = wn.h_infinity(torch.as_tensor(unit)).numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-12)
    assert f"{np.linalg.eigvalsh(expected).min():.6g}" in result.output
    np.save(tmp_path / "z.npy", np.vstack([x, np.zeros((1, 3))]))
    result = invoke("h-infinity", "--data", tmp_path / "z.npy", "--out", out)
    assert result.exit_code == 2 and "zero norm" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("--data", "mnist", "--out", "K.npz"), "one of: digits"),
        (("--data", "missing.npy", "--out", "K.npz"), "does not exist"),
        (("--data", "iris", "--out", "K.txt"), ".npy or .npz"),
        (("--data", "iris", "--dtype", "float16", "--out", "K.npz"), "--dtype"),
    ],
)
def test_kernel_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("kernel", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert not Path("K.npz").exists()


def test_ntk(tmp_path):
    out = tmp_path / "T.npy"
    args = ("--width", 256, "--seed", 1, "--mode", "trace", "--data", "iris", "--n", 16)
    result = invoke("ntk", *KERNEL_ARGS, *args, "--out", out)
    assert result.exit_code == 0, result.output
    theta = np.load(out)
    assert theta.shape == (16, 16)
    # At width 256 the empirical NTK is already near the limit.
    kout = tmp_path / "K.npz"
    invoke("kernel", *KERNEL_ARGS, "--data", "iris", "--n", 16, "--out", kout)
    with np.load(kout) as k:
        rel = np.linalg.norm(theta - k["ntk"]) / np.linalg.norm(k["ntk"])
    assert rel < 0.5
    npz = tmp_path / "T.npz"
    result = invoke("ntk", "--width", 32, "--data", "sphere", "--n", 8, "--out", npz)
    assert result.exit_code == 0, result.output
    with np.load(npz) as t:
        assert t["ntk"].shape == (8, 8)


def test_help_lists_estimator_and_random_feature_commands():  # issue 7
    result = invoke("--help")
    for command in ("fit-predict", "random-features"):
        assert command in result.output
        assert invoke(command, "--help").exit_code == 0
