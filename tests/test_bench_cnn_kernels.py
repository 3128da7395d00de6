"""Smoke tests of benchmarks/bench_cnn_kernels.py at its --quick sizes (no timing assertions)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("bench_cnn_kernels")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "bench_cnn_kernels.json")
    return module


def test_quick_run_without_neural_tangents(bench, tmp_path):
    res = bench.main(quick=True, with_nt=False, memory=False, repeats=1)
    assert res["nt"] == {"skipped": True, "reason": "--no-nt"}
    assert res["myrtle5_all_digits"]["n"] == 10 and res["myrtle5_all_digits"]["seconds"] > 0
    for name in ("cnn-gap", "cnn-vec"):
        e = res["exponents"][name]
        assert len(e["seconds_vs_n"]) == len(e["n"]) and len(e["seconds_vs_hw"]) == len(e["hw"])
        assert all(t > 0 for t in e["seconds_vs_n"] + e["seconds_vs_hw"])
    for key in ("load_start", "load_end"):
        assert "load average" in res[key]  # every run states the load it ran under
    assert (tmp_path / "bench_cnn_kernels.json").is_file()


def test_peak_memory_probe_in_a_subprocess(bench):
    res = bench.peak_memory(12)
    assert "error" not in res, res
    # NNGP + NTK of 12 x 12 float32
    assert res["output_bytes"] == 2 * 12 * 12 * 4
    assert res["bound"] == 2 * res["output_bytes"] + res["workspace_bytes"]
    assert res["rise"] >= 0 and res["goal_met"] == (res["rise"] <= res["bound"])


def test_slope_and_summary_rows(bench):
    assert bench.slope([10, 20, 40], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    sys.path.insert(0, str(BENCH))
    try:
        from run import cnn_rows
    finally:
        sys.path.remove(str(BENCH))
    cnn = dict(
        nt=dict(rows=[dict(workload="cnn-gap", n=100, speedup=12.0, goal=10.0)]),
        peak_memory=dict(n=2000, rise=100, bound=300),
    )
    rows = cnn_rows(cnn)
    assert [r[1] for r in rows] == [12.0, 3.0] and [r[3] for r in rows] == [10.0, 1]
    assert cnn_rows(None) == [] and cnn_rows(dict(nt=dict(skipped=True))) == []
