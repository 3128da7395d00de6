"""embedding-hessian: a width-2 minimum split into widths 3, 4, 5 (Zhang et al. 2021, Fig. 3)."""

from __future__ import annotations

import json

import pytest

from widenet import lab
from widenet.experiments.embedding_hessian import METRICS, EmbeddingHessianConfig

REQUIRED = {"widths", "negative", "zero", "positive", "grad_norm"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # One quick run for the module (12 points; ~10 s of CPU, most of it finding the minimum).
    out = tmp_path_factory.mktemp("emb-hess") / "run"
    return lab.run_experiment("embedding-hessian", quick=True, out=out, seed=0, threads=1)


def _check_claims(m):
    assert m["widths"] == [2, 3, 4, 5]
    # the width-2 point is a strict minimum: all 7 eigenvalues positive
    assert (m["negative"][0], m["zero"][0], m["positive"][0]) == (0, 0, 7)
    for i in range(1, 4):
        # each split adds exactly one zero eigenvalue (the share direction)...
        assert m["zero"][i] == m["zero"][i - 1] + 1
        # ...and no count decreases (Theorem 6.2 of Zhang et al. 2022)
        assert m["negative"][i] >= m["negative"][i - 1]
        assert m["positive"][i] >= m["positive"][i - 1]
        assert m["negative"][i] + m["zero"][i] + m["positive"][i] == m["num_parameters"][i]
        # the exact Sylvester prediction from the splitting matrix
        assert (m["negative"][i], m["zero"][i], m["positive"][i]) == (
            m["predicted_negative"][i],
            m["predicted_zero"][i],
            m["predicted_positive"][i],
        )
    assert m["negative"][-1] >= 1  # the minimum became a saddle of the wider networks
    # critical at every width: the finder's certificate carried over (same order)
    assert max(m["grad_norm"]) <= 1e-10
    assert max(m["loss"]) - min(m["loss"]) <= 1e-14  # output preserved
    # zeros are rounding, the rest far above the tolerance
    for (zero_max, nonzero_min), tol in zip(m["zero_gap"], m["tol"], strict=True):
        assert zero_max <= 1e-4 * tol and nonzero_min >= 1e2 * tol


def test_sizes():
    full, quick = EmbeddingHessianConfig(), EmbeddingHessianConfig.quick()
    assert (full.width, full.widths, full.n) == (2, [3, 4, 5], 40)
    assert (quick.widths, quick.n) == ([3, 4, 5], 12)
    with pytest.raises(ValueError, match="grow by one"):
        EmbeddingHessianConfig(widths=[3, 5])
    with pytest.raises(ValueError, match="alpha must differ"):
        EmbeddingHessianConfig(alpha=1.0)


def test_metrics_keys_and_figure(quick_run):
    m = quick_run.metrics
    assert set(m) == set(METRICS) and REQUIRED <= set(m)
    assert json.loads((quick_run.out / "metrics.json").read_text()) == m
    assert [p.name for p in quick_run.figures] == ["spectra.png"]


def test_quick_claims(quick_run):
    _check_claims(quick_run.metrics)


@pytest.mark.slow
def test_full_size_claims(tmp_path):
    run = lab.run_experiment("embedding-hessian", out=tmp_path / "run", seed=0, threads=1)
    _check_claims(run.metrics)
