"""Smoke test of benchmarks/bench_dynamics.py at its --quick size (no timing assertions)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NT_PYTHON = Path("/tmp/neural-tangents-venv/bin/python")


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("bench_dynamics")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "dynamics.json")
    return module


def test_quick_widenet_only(bench, tmp_path):
    res = bench.main(quick=True, with_nt=False, repeats=1)
    assert res["widenet_seconds"] > 0
    assert res["nt"]["skipped"]
    # the last time is far past the slowest mode: the train predictions reach the targets
    assert res["train_residual_last_time"] < 1e-3
    assert (tmp_path / "dynamics.json").is_file()


def test_quick_inputs_and_prediction(bench):
    inputs = bench.make_inputs(40, 10, 3, 5)
    assert inputs["k_train_train"].shape == (40, 40) and inputs["k_test_train"].shape == (10, 40)
    assert all(a.dtype == np.float64 for a in inputs.values())
    pred = bench.widenet_predict({k: torch.from_numpy(v) for k, v in inputs.items()})
    assert pred.test.shape == (5, 10, 3) and pred.train.shape == (5, 40, 3)


@pytest.mark.skipif(not NT_PYTHON.is_file(), reason="no neural-tangents venv")
def test_quick_against_neural_tangents(bench):
    res = bench.main(quick=True, nt_python=str(NT_PYTHON), repeats=1)
    if res["nt"]["skipped"]:
        pytest.skip(f"neural-tangents unavailable: {res['nt']['reason']}")
    assert res["nt"]["seconds"] > 0 and res["nt"]["speedup"] > 0
    for value in res["nt"]["agreement"].values():
        assert value <= 1e-6


def test_run_summary_has_dynamics_row():
    sys.path.insert(0, str(BENCH))
    try:
        from run import summary_rows
    finally:
        sys.path.remove(str(BENCH))
    dynamics = dict(config=dict(n_train=10), nt=dict(skipped=False, speedup=1.5))
    rows = summary_rows(None, None, None, dynamics)
    assert [r[1] for r in rows] == [1.5]
    assert summary_rows(None, None, None, dict(nt=dict(skipped=True))) == []
