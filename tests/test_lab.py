"""The lab infrastructure, exercised with small toy experiments defined here."""

from __future__ import annotations

import json
import re
import struct
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml

from widenet import lab
from widenet.data import load_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ToyConfig(lab.Config):
    n: int = 200
    scale: float = 1.0
    widths: list[int] = [8, 16, 32]
    label: str = "toy"
    QUICK: ClassVar[dict] = {"n": 20, "widths": [8, 16]}


TOY_METRICS = {
    "n": "number of draws",
    "mean": "mean of the draws",
    "widths": "the widths",
    "per_width": "a NumPy array, one value per width",
}


def toy_run(config: ToyConfig, ctx: lab.RunContext) -> dict:
    """A deterministic toy experiment: random draws from the seeded generators, one figure."""
    draws = ctx.rng.standard_normal(config.n) * config.scale
    noise = torch.randn(len(config.widths), dtype=torch.float64)
    values = [
        float(w) + float(e)
        for w, e in ctx.progress(zip(config.widths, noise, strict=True), total=2)
    ]
    fig = ctx.figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot(config.widths, values, "o-")
    ax.set_title("<b>not bold</b> & escaped")
    ctx.save_figure(fig, "toy plot")
    return {
        "n": config.n,
        "mean": np.float64(draws.mean()),
        "widths": config.widths,
        "per_width": np.asarray(values),
        "device": str(ctx.device),
    }


def nan_run(config: ToyConfig, ctx: lab.RunContext) -> dict:
    return {"bad": float("nan")}


def object_run(config: ToyConfig, ctx: lab.RunContext) -> dict:
    return {"bad": object()}


@pytest.fixture
def toy():
    lab.register("toy", summary="A toy <experiment>.", config=ToyConfig, metrics=TOY_METRICS)(
        toy_run
    )
    yield lab.get("toy")
    lab.unregister("toy")


@pytest.fixture
def broken():
    lab.register("toy-nan", summary="NaN metric.", config=ToyConfig, metrics={})(nan_run)
    lab.register("toy-object", summary="Object metric.", config=ToyConfig, metrics={})(object_run)
    yield
    lab.unregister("toy-nan")
    lab.unregister("toy-object")


# --------------------------------------------------------------------------------------------
# Registry and configs


def test_registry_lists_builtin_and_toy(toy):
    names = lab.experiments()
    assert "kernel-convergence" in names
    assert "toy" in names
    assert list(names) == sorted(names)
    exp = lab.get("toy")
    assert exp.summary == "A toy <experiment>."
    assert exp.metrics == TOY_METRICS
    assert "deterministic toy experiment" in exp.doc


def test_unknown_experiment_lists_available(toy):
    with pytest.raises(lab.UnknownExperimentError, match="available: .*toy"):
        lab.get("nope")


def test_register_refuses_duplicate_and_bad_names(toy):
    with pytest.raises(ValueError, match="already registered"):
        lab.register("toy", summary="x", config=ToyConfig, metrics={})(nan_run)
    with pytest.raises(ValueError, match="kebab-case"):
        lab.register("Bad Name", summary="x", config=ToyConfig, metrics={})
    with pytest.raises(TypeError, match="lab.Config"):
        lab.register("toy2", summary="x", config=dict, metrics={})


def test_quick_and_overrides(toy):
    assert toy.resolve().n == 200
    assert toy.resolve(quick=True).n == 20
    assert ToyConfig.quick().widths == [8, 16]
    cfg = toy.resolve(quick=True, overrides=["n=50", "widths=[64,128]", "scale=1e-3"])
    assert (cfg.n, cfg.widths, cfg.scale) == (50, [64, 128], 1e-3)
    assert toy.resolve(overrides={"label": "x=y"}).label == "x=y"
    assert toy.resolve(overrides=["label=a=b"]).label == "a=b"  # split on the first '='


def test_override_unknown_key_names_key_and_valid_keys(toy):
    with pytest.raises(lab.ConfigError) as err:
        toy.resolve(overrides=["nn=3"])
    msg = str(err.value)
    assert "'nn'" in msg
    for key in ("n", "scale", "widths", "label"):
        assert key in msg


@pytest.mark.parametrize(
    "override, key",
    [("n=abc", "n"), ("widths=5", "widths"), ("widths=[a, b]", "widths"), ("scale=[1]", "scale")],
)
def test_override_wrong_type_names_key(toy, override, key):
    with pytest.raises(lab.ConfigError, match=rf"\b{key}\b.*Valid keys"):
        toy.resolve(overrides=[override])


def test_override_malformed(toy):
    with pytest.raises(lab.ConfigError, match="key=value"):
        toy.resolve(overrides=["n"])
    with pytest.raises(lab.ConfigError, match="cannot parse"):
        toy.resolve(overrides=["widths=[1,"])


# --------------------------------------------------------------------------------------------
# Run folders


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_run_folder_contents(toy, tmp_path):
    out = tmp_path / "run"
    result = lab.run_experiment("toy", quick=True, out=out, seed=3, overrides=["scale=2"])
    assert result.out == out and not result.skipped
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "figures",
        "metrics.json",
        "report.html",
    ]
    # No staging folder left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]

    meta = yaml.safe_load((out / "config.yaml").read_text())
    assert meta["experiment"] == "toy" and meta["seed"] == 3 and meta["quick"] is True
    assert meta["config"] == {"n": 20, "scale": 2.0, "widths": [8, 16], "label": "toy"}
    for key in ("python", "torch", "numpy", "widenet", "platform", "device"):
        assert meta["versions"][key]
    for key in ("command", "started", "finished", "wall_seconds"):
        assert key in meta

    metrics = json.loads((out / "metrics.json").read_text())
    assert isinstance(metrics, dict)
    assert metrics["n"] == 20 and metrics["widths"] == [8, 16]
    assert isinstance(metrics["mean"], float) and len(metrics["per_width"]) == 2

    figures = list((out / "figures").glob("*.png"))
    assert [p.name for p in figures] == ["toy-plot.png"]
    w, h = _png_size(figures[0])
    assert w > 100 and h > 100

    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    assert "A toy &lt;experiment&gt;." in html  # escaped summary
    assert "number of draws" in html  # metrics doc
    assert meta["versions"]["torch"] in html
    assert f"<code>{out}</code>" in html and ".partial" not in html


def test_same_seed_same_metrics_different_seed_differs(toy, tmp_path):
    a = lab.run_experiment("toy", quick=True, out=tmp_path / "a", seed=7)
    b = lab.run_experiment("toy", quick=True, out=tmp_path / "b", seed=7)
    c = lab.run_experiment("toy", quick=True, out=tmp_path / "c", seed=8)
    assert (tmp_path / "a/metrics.json").read_bytes() == (tmp_path / "b/metrics.json").read_bytes()
    assert a.metrics == b.metrics
    assert a.metrics["mean"] != c.metrics["mean"]
    assert a.metrics["per_width"] != c.metrics["per_width"]  # torch is seeded too


def test_default_out_is_timestamped(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lab.run_experiment("toy", quick=True)
    assert re.fullmatch(r"toy-\d{8}T\d{6}Z", result.out.name)
    assert result.out.parent == lab.Path("runs")
    assert (tmp_path / result.out / "report.html").is_file()
    # A run started in the same second gets its own folder rather than replacing this one.
    taken = lab.default_out("toy")
    taken.mkdir()
    assert lab.default_out("toy") not in (taken, result.out)


def test_non_json_metrics_are_errors_and_leave_nothing(broken, tmp_path):
    with pytest.raises(ValueError, match=r"\['bad'\].*finite"):
        lab.run_experiment("toy-nan", quick=True, out=tmp_path / "nan")
    with pytest.raises(TypeError, match=r"\['bad'\].*object"):
        lab.run_experiment("toy-object", quick=True, out=tmp_path / "obj")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_nothing(tmp_path):
    def interrupted(config, ctx):
        ctx.save_figure(ctx.figure(), "half")
        raise KeyboardInterrupt

    lab.register("toy-interrupt", summary="x", config=ToyConfig, metrics={})(interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            lab.run_experiment("toy-interrupt", quick=True, out=tmp_path / "int")
    finally:
        lab.unregister("toy-interrupt")
    assert list(tmp_path.iterdir()) == []


def test_existing_run_skip_force_and_foreign_folder(toy, tmp_path):
    out = tmp_path / "run"
    first = lab.run_experiment("toy", quick=True, out=out)
    again = lab.run_experiment("toy", quick=True, out=out)
    assert again.skipped and again.metrics == first.metrics and again.finished == first.finished
    forced = lab.run_experiment("toy", quick=True, out=out, force=True)
    assert not forced.skipped and forced.finished >= first.finished
    changed = lab.run_experiment("toy", quick=True, out=out, overrides=["n=21"])
    assert not changed.skipped and changed.metrics["n"] == 21
    assert lab.load_run(out).metrics["n"] == 21

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a widenet run"):
        lab.run_experiment("toy", quick=True, out=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_to_jsonable():
    got = lab.to_jsonable({"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": (np.int64(3),)})
    assert got == {"a": 1.5, "b": [1, 2], "c": [3]}
    assert json.dumps(got, allow_nan=False)
    with pytest.raises(ValueError, match=r"metrics\['x'\]\[1\]"):
        lab.to_jsonable({"x": [1.0, float("inf")]})
    with pytest.raises(TypeError, match="non-string key"):
        lab.to_jsonable({1: 2})


# --------------------------------------------------------------------------------------------
# Demo


def test_demo_combined_report_skip_and_force(toy, tmp_path):
    lab.register("toy-b", summary="Second toy.", config=ToyConfig, metrics=TOY_METRICS)(toy_run)
    try:
        path, results = lab.run_demo(tmp_path / "demo", names=["toy", "toy-b"])
        assert path.is_absolute() and path == (tmp_path / "demo" / "report.html").resolve()
        assert [r.skipped for r in results] == [False, False]
        html = path.read_text()
        assert html.count("data:image/png;base64,") == 2
        assert 'href="#exp-toy"' in html and 'href="#exp-toy-b"' in html
        assert "https://" not in html and "http://" not in html
        for name in ("toy", "toy-b"):
            assert (tmp_path / "demo" / name / "report.html").is_file()

        # Re-running is idempotent and skips complete runs with the same config ...
        _, again = lab.run_demo(tmp_path / "demo", names=["toy", "toy-b"])
        assert [r.skipped for r in again] == [True, True]
        assert [r.metrics for r in again] == [r.metrics for r in results]
        # ... a different seed is a different config ...
        _, reseeded = lab.run_demo(tmp_path / "demo", names=["toy"], seed=1)
        assert [r.skipped for r in reseeded] == [False]
        # ... and force re-runs.
        _, forced = lab.run_demo(tmp_path / "demo", names=["toy", "toy-b"], force=True)
        assert [r.skipped for r in forced] == [False, False]
    finally:
        lab.unregister("toy-b")


def test_demo_continues_after_a_failing_experiment(toy, broken, tmp_path):
    path, results = lab.run_demo(tmp_path / "demo", names=["toy-nan", "toy"])
    assert results[0].error and "finite" in results[0].error
    assert results[1].error is None and not results[1].skipped
    assert not (tmp_path / "demo" / "toy-nan").exists()
    html = path.read_text()
    assert "Failed:" in html and "data:image/png;base64," in html


def test_demo_bad_name_fails_before_running(toy, tmp_path):
    with pytest.raises(lab.UnknownExperimentError):
        lab.run_demo(tmp_path / "demo", names=["toy", "nope"])
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------------------------
# Data


@pytest.mark.parametrize("name, d", [("digits", 64), ("iris", 4), ("wine", 13)])
def test_load_dataset(name, d):
    x, y = load_dataset(name, n=30, seed=1)
    assert x.shape == (30, d) and x.dtype == torch.float32 and y.shape == (30,)
    x2, _ = load_dataset(name, n=30, seed=1)
    assert torch.equal(x, x2)
    full, _ = load_dataset(name)
    assert torch.allclose(full.mean(0), torch.zeros(d), atol=1e-5)


def test_load_sphere_and_errors():
    x, y = load_dataset("sphere", n=10, dim=5, dtype=torch.float64)
    assert x.shape == (10, 5) and torch.allclose(x.norm(dim=1), torch.ones(10, dtype=x.dtype))
    with pytest.raises(ValueError, match="available"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="exceeds"):
        load_dataset("iris", n=1000)
