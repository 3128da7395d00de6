"""Smoke tests of the benchmark scripts at their --quick sizes (no timing assertions)."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_path(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    yield tmp_path


def _load(name, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    monkeypatch.setattr(module, "RESULTS", tmp_path / f"{name}.json")
    return module


def test_eager_reference_matches_widenet():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_kernels import eager_fc_relu_kernels
    finally:
        sys.path.remove(str(BENCH))
    import widenet as wn

    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nngp, ntk = eager_fc_relu_kernels(x, 3, math.sqrt(2.0), 0.1)
    k = wn.mlp(3, "relu", math.sqrt(2.0), 0.1).kernel(x, tile=16)
    torch.testing.assert_close(nngp, k.nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ntk, k.ntk, rtol=1e-12, atol=1e-12)


def test_bench_kernels_quick(bench_path, monkeypatch):
    module = _load("bench_kernels", bench_path, monkeypatch)
    res = module.main(quick=True, repeats=1)
    for key in ("config", "agreement", "seconds", "ratios", "tile_seconds_float32", "best_tile"):
        assert key in res
    assert {"speedup_vs_eager", "widenet_over_floor", "goal_met"} <= res.keys()
    for dtype in ("float32", "float64"):
        for method in ("widenet x2=None", "widenet x2=x", "eager", "gemm", "floor"):
            assert res["seconds"][dtype][method] > 0
        assert res["agreement"][dtype]["nngp x2=None"] <= 1e-5
        assert res["agreement"][dtype]["ntk x2=None"] <= 1e-5
    assert res["agreement"]["float64"]["ntk x2=x"] <= 1e-8
    assert (bench_path / "bench_kernels.json").is_file()


def test_bench_empirical_quick(bench_path, monkeypatch):
    try:
        module = _load("bench_empirical_ntk", bench_path, monkeypatch)
    except ImportError as e:
        pytest.skip(f"bench_empirical_ntk not importable: {e}")
    res = module.main(quick=True)
    assert {"speedup_vs_tutorial", "auto_over_gemm_floor", "rows"} <= res.keys()
    assert res["tutorial_rel_diff"] <= 1e-4


def test_run_summary_rows():
    sys.path.insert(0, str(BENCH))
    try:
        from run import summary_rows
    finally:
        sys.path.remove(str(BENCH))
    kernels = dict(
        config=dict(n=10),
        speedup_vs_eager=5.0,
        ratios=dict(float32={"eager / widenet x2=x": 3.0}),
        widenet_over_floor=7.0,
    )
    nt = dict(skipped=False, comparisons=[dict(workload="closed_form", n=10, speedup=3.0)])
    rows = summary_rows(kernels, None, nt)
    assert [r[1] for r in rows] == [5.0, 3.0, 7.0, 3.0]
    assert summary_rows(None, None, dict(skipped=True, reason="x")) == []
    # Issue 20's goals against neural-tangents: 5x quiet, 2.5x with one busy process per core.
    nt = dict(skipped=False, comparisons=[dict(workload="closed_form", n=4000, speedup=3.0)])
    assert [r[3] for r in summary_rows(None, None, nt)] == [5.0]
    assert [r[3] for r in summary_rows(None, None, nt, contention=True)] == [2.5]
