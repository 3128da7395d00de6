"""Smoke tests of the estimator, landscape, train-to-tolerance and quadrature benchmarks, the
contention helper and run.py's rows for them (no timing assertions: benchmarks measure)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name):
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "RESULTS", tmp_path, raising=False)
        return module

    return load


def test_busy_cores_start_and_stop(bench):
    contention = bench("contention")
    with contention.busy_cores(2, max_seconds=60) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)  # terminated on exit
    # Bounded in time on their own: a spinner whose block outlives it exits by itself.
    with contention.busy_cores(1, max_seconds=0.2) as procs:
        deadline = time.monotonic() + 30
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[0].poll() == 0
    with pytest.raises(ValueError, match="max_seconds"):
        with contention.busy_cores(1, max_seconds=0):
            pass


def test_bench_quadrature_tiny(bench, tmp_path):
    res = bench("bench_quadrature").main(n=30, strip=5)
    assert res["max_rel_diff"] < 1e-8 and res["speedup_full"] > 0
    assert (tmp_path / "bench_quadrature.json").is_file()


def test_bench_estimators_quick(bench, tmp_path):
    res = bench("bench_estimators").main(quick=True, repeats=1)
    assert res["accuracy"]["ntk"] > 0.9  # digits, 150 test points; a broken fit is ~0.1
    assert set(res["ratios"]) == {
        "fit: SVC / NTKClassifier",
        "predict: SVC / NTKClassifier",
        "fit: KernelRidge / NTKRegressor",
    }
    assert (tmp_path / "bench_estimators.json").is_file()


def test_run_rows_for_the_new_benchmarks(bench):
    run = bench("run")
    extra = {
        "bench_estimators": {"ratios": {"fit: SVC / NTKClassifier": 0.5}, "goal": 1 / 3},
        "bench_quadrature": {"config": {"n": 1000}, "speedup_full": 40.0, "goal": 20.0},
        "bench_train_to_tolerance": {"speedup": 2.0, "goal": 1.0},
        "bench_landscape": None,
    }
    rows = run.summary_rows(None, None, None, extra=extra)
    assert rows == [
        ("bench_estimators: fit: SVC / NTKClassifier", 0.5, ">=", 1 / 3),
        ("bench_quadrature n=1000: direct rule / series", 40.0, ">=", 20),
        ("bench_train_to_tolerance: loop / widenet", 2.0, ">=", 1.0),
    ]
