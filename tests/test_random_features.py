"""Random features: kernel limits by Monte Carlo; min-norm and ridge fits vs independent solves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import random_features as rf


def _data(n=30, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def test_fourier_features_approximate_the_gaussian_kernel():
    x = _data(20, 4)
    k = rf.gaussian_kernel(x, bandwidth=1.5)
    # Independent closed form with a double loop.
    ref = torch.tensor(
        [[math.exp(-float((a - b).square().sum()) / (2 * 1.5**2)) for b in x] for a in x],
        dtype=torch.float64,
    )
    torch.testing.assert_close(k, ref, rtol=1e-12, atol=1e-14)
    for n in (200, 20000):
        phi = rf.fourier_features(4, n, bandwidth=1.5, seed=1)(x)
        assert phi.shape == (20, n)
        err = float((phi @ phi.T - k).abs().max())
        # Each entry averages N/2 terms cos(ω·(x-x')) of variance <= 1/2: std <= 1/sqrt(N).
        # The max over 400 entries is ~3.5 std; 5/sqrt(N) bounds it.
        assert err < 5 / math.sqrt(n), (n, err)
    # The diagonal is exact: cos² + sin² = 1 for each pair.
    torch.testing.assert_close(torch.diagonal(phi @ phi.T), torch.ones(20, dtype=torch.float64))


@pytest.mark.parametrize("b_std", [0.0, 0.5])
def test_relu_features_approximate_the_depth1_nngp(b_std):
    x = _data(15, 6)
    n = 40000
    phi = rf.relu_features(6, n, w_std=1.0, b_std=b_std, seed=3)(x)
    # NNGP of a one-hidden-layer ReLU net with w_std = 1: E[relu(u) relu(u')] + b_std², with
    # (u, u') the same first-layer pre-activations as the features.
    ref = wn.mlp(1, "relu", w_std=1.0, b_std=b_std).kernel(x, get="nngp").nngp - b_std**2
    err = float((phi @ phi.T - ref).abs().max() / ref.abs().max())
    # Monte Carlo over N features: relative std ~ sqrt(Var(relu(u)relu(u'))/N)/E ≈ 1.5/sqrt(N)
    # ≈ 0.0075; 0.04 leaves > 5 std for the max over 225 entries.
    assert err < 0.04, err


def test_min_norm_least_squares_equals_pinv_and_has_smallest_norm():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(20, 50, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    beta = rf.min_norm_least_squares(phi, y)
    # Independent: NumPy's pseudo-inverse (SVD).
    ref = np.linalg.pinv(phi.numpy()) @ y.numpy()
    np.testing.assert_allclose(beta.numpy(), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(phi @ beta, y, rtol=0, atol=1e-10)  # interpolates (N > n)
    # Any other interpolant beta + z with z in the null space of phi has a larger norm.
    null = torch.linalg.svd(phi, full_matrices=True).Vh[20:].T  # (50, 30)
    for _ in range(5):
        z = null @ torch.randn(30, 3, generator=g, dtype=torch.float64)
        other = beta + 0.1 * z
        torch.testing.assert_close(phi @ other, y, rtol=0, atol=1e-9)
        assert torch.linalg.norm(other) > torch.linalg.norm(beta)
    # Over-determined (N < n): the ordinary least-squares solution, vector y stays a vector.
    phi2, y2 = phi[:, :10], y[:, 0]
    b2 = rf.min_norm_least_squares(phi2, y2)
    assert b2.shape == (10,)
    np.testing.assert_allclose(b2.numpy(), np.linalg.lstsq(phi2, y2, rcond=None)[0], rtol=1e-9)


def test_min_norm_rank_deficient():
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(12, 4, generator=g, dtype=torch.float64)
    phi = torch.cat([phi, phi[:, :2]], dim=1)  # duplicated columns: rank 4 of 6
    y = torch.randn(12, generator=g, dtype=torch.float64)
    ref = np.linalg.pinv(phi.numpy()) @ y.numpy()
    np.testing.assert_allclose(rf.min_norm_least_squares(phi, y).numpy(), ref, rtol=1e-8)


@pytest.mark.parametrize("shape", [(30, 10), (10, 30)])
def test_ridge_equals_the_explicit_solution(shape):
    g = torch.Generator().manual_seed(2)
    phi = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape[0], 2, generator=g, dtype=torch.float64)
    lam = 0.3
    # Independent: sklearn's Ridge without intercept minimises the same objective.
    from sklearn.linear_model import Ridge

    ref = Ridge(alpha=lam, fit_intercept=False, solver="svd").fit(phi, y).coef_.T
    np.testing.assert_allclose(rf.ridge(phi, y, lam).numpy(), ref, rtol=1e-9, atol=1e-12)
    # lam -> 0 tends to the min-norm solution.
    small = rf.ridge(phi, y, 1e-10)
    torch.testing.assert_close(small, rf.min_norm_least_squares(phi, y), rtol=1e-5, atol=1e-6)


def test_sweep_peaks_at_the_threshold():
    # Noisy linear targets, Fourier features: the min-norm test error peaks at N = n (the
    # interpolation threshold), where Φ is square and nearly singular (‖β‖ blows up).
    g = torch.Generator().manual_seed(0)
    n, d = 60, 5
    x = torch.randn(n + 200, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w / math.sqrt(d) + 0.3 * torch.randn(n + 200, 1, generator=g, dtype=torch.float64)
    counts = [6, 12, 20, 30, 40, 50, 56, 60, 64, 70, 80, 120, 240, 600, 1200]
    res = rf.sweep(x[:n], y[:n], x[n:], y[n:], counts, kind="fourier", bandwidth=3.0, seed=0)
    assert res.threshold == n and res.n_features == counts
    peak = counts[int(np.argmax(res.test_mse))]
    assert 50 <= peak <= 70, (peak, res.test_mse)
    assert counts[int(np.argmax(res.coef_norm))] == peak
    # Interpolation from N = n on: training error ~ 0.
    for n_feat, mse in zip(counts, res.train_mse, strict=True):
        if n_feat >= n + 4:
            assert mse < 1e-12, (n_feat, mse)
    # Past the peak the error descends again (second descent), far below the peak.
    assert res.test_mse[-1] < 0.2 * max(res.test_mse)
    # ReLU features and ridge run through the same loop; ridge removes the peak.
    r2 = rf.sweep(x[:n], y[:n], x[n:], y[n:], [30, 60, 120], kind="relu", penalty=1e-1)
    assert max(r2.test_mse) < 0.2 * max(res.test_mse)


def test_zero_one_loss():
    pred = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert rf.zero_one_loss(pred, y) == pytest.approx(1 / 3)
    assert rf.zero_one_loss(torch.tensor([0.5, -2.0]), torch.tensor([1.0, 1.0])) == 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_features must be even"):
        rf.fourier_features(3, 5)
    with pytest.raises(ValueError, match="bandwidth"):
        rf.fourier_features(3, 4, bandwidth=0.0)
    with pytest.raises(ValueError, match="n_features"):
        rf.relu_features(3, 0)
    with pytest.raises(ValueError, match="seed"):
        rf.relu_features(3, 4, seed=-1)
    feats = rf.relu_features(3, 4)
    with pytest.raises(ValueError, match="x has 2 features"):
        feats(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        feats(torch.full((5, 3), float("nan")))
    with pytest.raises(ValueError, match="y must have shape"):
        rf.min_norm_least_squares(torch.zeros(5, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="phi"):
        rf.min_norm_least_squares(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="penalty"):
        rf.ridge(torch.zeros(5, 3), torch.zeros(5), 0.0)
    with pytest.raises(ValueError, match="kind"):
        rf.sweep(
            torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2), torch.zeros(2), [2], kind="x"
        )
    with pytest.raises(ValueError, match="n_features is empty"):
        rf.sweep(torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2), torch.zeros(2), [])


def test_reproducible_and_dtype():
    a = rf.fourier_features(3, 8, seed=5, dtype=torch.float32)
    b = rf.fourier_features(3, 8, seed=5, dtype=torch.float32)
    assert a.frequencies.dtype == torch.float32
    torch.testing.assert_close(a.frequencies, b.frequencies, rtol=0, atol=0)
    assert not torch.equal(a.frequencies, rf.fourier_features(3, 8, seed=6).frequencies.float())


# ---- the command line: widenet random-features ----


def test_cli_random_features(tmp_path):
    import json

    from typer.testing import CliRunner

    from widenet.cli import app

    out = tmp_path / "rf.json"
    args = ["random-features", "--train", "digits", "--test", "digits", "--n-train", "60"]
    args += ["--n-test", "100", "-N", "30", "-N", "60", "-N", "240", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["n_features"] == [30, 60, 240] and res["threshold"] == 60
    assert int(np.argmax(res["test_mse"])) == 1  # the peak at N = n
    # The same numbers as the library on the same split (the CLI adds nothing of its own).
    from widenet.io import load_train_test as _predict_data

    x, y, xt, yt, _ = _predict_data("digits", "digits", 60, 100, "onehot", None, None, None, 0)
    t = torch.as_tensor
    ref = rf.sweep(t(x), t(y), t(xt), t(yt), [30, 60, 240], bandwidth=10.0)
    np.testing.assert_allclose(res["test_mse"], ref.test_mse, rtol=1e-10)
    bad = CliRunner().invoke(app, ["random-features", "-N", "31", "--out", str(out)])
    assert bad.exit_code == 2 and "even" in bad.output
    bad = CliRunner().invoke(app, ["random-features", "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code == 2 and ".json" in bad.output
