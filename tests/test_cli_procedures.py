"""The procedures that used to live only in the command line, now library functions, checked
against independent computations (closed forms in float64, autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import widenet as wn
from widenet import convergence, dynamics, landscape


def _problem(seed=0, n=8, m=5, d=3, k=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return x, y, xt


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_infinite_width_predict_matches_the_closed_form(kernel):
    x, y, xt = _problem()
    arch = wn.mlp(depth=2, activation="relu", w_std=2**0.5, b_std=0.1)
    times = [0.0, 0.5, 30.0, np.inf]
    lr = 0.7
    pred = dynamics.infinite_width_predict(
        arch, x, y, xt, times, kernel=kernel, learning_rate=lr, variance=True
    )
    # Independent: f(t) = K_xt K^-1 (I - expm(-lr K t / N)) y with N = y.numel(), in float64 by
    # scipy's expm (not the eigendecomposition gradient_flow_mse uses).
    k = getattr(arch.kernel(x), kernel).numpy()
    kxt = getattr(arch.kernel(xt, x), kernel).numpy()
    n_all = y.numel()
    for i, t in enumerate(times):
        if np.isinf(t):
            decay = np.zeros_like(k)
        else:
            decay = scipy.linalg.expm(-lr * k * t / n_all)
        train = (np.eye(len(k)) - decay) @ y.numpy()
        test = kxt @ np.linalg.solve(k, train)
        # rtol 1e-7: K's condition number here is ~1e3, float64 solves and expm agree to ~1e-12
        np.testing.assert_allclose(pred.train_mean[i].numpy(), train, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(pred.test_mean[i].numpy(), test, rtol=1e-7, atol=1e-10)
    assert pred.test_variance.shape == (len(times), len(xt))
    # At t = 0 nothing is learnt: the variance is the prior NNGP variance K(x, x).
    prior = arch.kernel(xt, get="nngp").nngp.diagonal().numpy()
    np.testing.assert_allclose(pred.test_variance[0].numpy(), prior, rtol=1e-9)
    if kernel == "nngp":
        # Training the readout only, the converged ensemble is the exact GP posterior
        # (Lee et al. 2019, sec. 2.3.1): K_xx - K_xt K^-1 K_tx.
        kxx = arch.kernel(xt, get="nngp").nngp.numpy()
        post = np.diag(kxx - kxt @ np.linalg.solve(k, kxt.T))
        np.testing.assert_allclose(pred.test_variance[-1].numpy(), post, rtol=1e-6, atol=1e-10)


def test_infinite_width_predict_bad_inputs():
    x, y, xt = _problem()
    arch = wn.mlp(depth=1)
    with pytest.raises(ValueError, match="kernel must be ntk or nngp"):
        dynamics.infinite_width_predict(arch, x, y, xt, [1.0], kernel="rbf")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        dynamics.infinite_width_predict(arch, x, y, xt, [1.0], learning_rate=0.0)
    with pytest.raises(ValueError, match="diag_reg must be >= 0"):
        dynamics.infinite_width_predict(arch, x, y, xt, [1.0], diag_reg=-1.0)


def test_hessian_summary_matches_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    summary, eig = landscape.hessian_summary(net, x, y)
    # Independent: the loss 1/(2n) sum |f - y|^2 as a function of the flat parameter vector,
    # differentiated twice by torch.autograd.functional.hessian.
    shapes = [p.shape for p in net.parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(theta):
        w1, b1, w2, b2 = torch.split(theta, [int(np.prod(s)) for s in shapes])
        h = torch.tanh(x @ w1.reshape(shapes[0]).T + b1)
        f = h @ w2.reshape(shapes[2]).T + b2
        return 0.5 * ((f - y) ** 2).sum() / len(x)

    h = torch.autograd.functional.hessian(loss, theta0)
    g = torch.autograd.functional.jacobian(loss, theta0)
    lam = torch.linalg.eigvalsh(h).numpy()
    assert summary["num_parameters"] == theta0.numel() == 17
    np.testing.assert_allclose(summary["loss"], float(loss(theta0)), rtol=1e-12)
    np.testing.assert_allclose(summary["grad_norm"], float(g.norm()), rtol=1e-10)
    np.testing.assert_allclose(eig, lam, rtol=1e-8, atol=1e-12)
    tol = summary["inertia"]["tol"]
    assert summary["inertia"]["negative"] == int((lam < -tol).sum())
    assert summary["inertia"]["positive"] == int((lam > tol).sum())
    # Lanczos mode: the extreme eigenvalues of the same spectrum.
    ext, eig2 = landscape.hessian_summary(net, x, y, lanczos=2)
    np.testing.assert_allclose(ext["largest"], lam[-2:], rtol=1e-6)
    np.testing.assert_allclose(ext["smallest"], lam[:2], rtol=1e-6, atol=1e-9)
    assert eig2.shape == (4,) and "inertia" not in ext


def test_du_training_run_records_and_matches_kernel_theory():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    run = convergence.du_training_run(
        x, y, 4000, 30, step_size_scale=0.25, seed=0, dtype=torch.float64
    )
    # The step size: 0.25 x the critical rate 2 / (lambda_min + lambda_max) of H-infinity
    # (loss 1/2 sum (f - y)^2), recomputed here with numpy's eigensolver.
    lam = np.linalg.eigvalsh(convergence.gram_infinity(x).numpy())
    assert run.summary["step_size"] == pytest.approx(0.25 * 2 / (lam[0] + lam[-1]), rel=1e-10)
    assert run.arrays["loss"].shape == (31,) and run.arrays["outputs"].shape == (31, 6)
    # The kernel prediction with H(0) is exact at step 0 and, at width 4000, stays within a
    # few percent of the trained outputs (Du et al. 2019, Theorem 4.1: the patterns barely
    # change); the loss decreases.
    np.testing.assert_allclose(run.arrays["kernel_h0"][0], run.arrays["outputs"][0], rtol=1e-12)
    assert run.summary["prediction_gap_h0"] < 0.05
    assert run.arrays["loss"][-1] < run.arrays["loss"][0]
    # The per-step gaps, recomputed: ||u(k) - u_H(k)|| / ||y - u(0)||, u(0) the outputs at k = 0
    # (rtol 1e-9: u(0) from the forward pass and from the tracked run agree to ~1e-15).
    scale = np.linalg.norm(y.numpy() - run.arrays["outputs"][0])
    for name in ("hinf", "h0"):
        gap = np.linalg.norm(run.arrays["outputs"] - run.arrays[f"kernel_{name}"], axis=1) / scale
        np.testing.assert_allclose(run.arrays[f"gap_{name}"], gap, rtol=1e-9, atol=1e-15)
        assert run.summary[f"prediction_gap_{name}"] == float(run.arrays[f"gap_{name}"].max())
    # device=: through check_device, and "cpu" gives the same run as the default.
    same = convergence.du_training_run(
        x, y, 4000, 30, step_size_scale=0.25, seed=0, dtype=torch.float64, device="cpu"
    )
    np.testing.assert_array_equal(same.arrays["outputs"], run.arrays["outputs"])
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        convergence.du_training_run(x, y, 8, 2, device="gpu")


def test_du_bounds_against_the_explicit_gram_matrices():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    rows = convergence.du_bounds(x, y, delta=0.1, width=300, seed=3)
    # H-infinity_ij = x_i.x_j (pi - arccos(x_i.x_j)) / (2 pi) (Du et al. 2019, eq. 3), numpy.
    xn = x.numpy()
    c = np.clip(xn @ xn.T, -1.0, 1.0)
    lam = np.linalg.eigvalsh(c * (np.pi - np.arccos(c)) / (2 * np.pi))
    # rtol 1e-7: np.arccos near c = 1 is accurate to ~sqrt(eps) ~ 1e-8 absolute (the library
    # uses a better-conditioned form), and lambda0 ~ 0.09 here: 5e-9 relative measured.
    assert rows["lambda0"] == pytest.approx(lam[0], rel=1e-7)
    assert rows["lambda_max_hinf"] == pytest.approx(lam[-1], rel=1e-7)
    assert rows["critical_learning_rate"] == pytest.approx(2 / (lam[0] + lam[-1]), rel=1e-7)
    assert rows["max_learning_rate"] == pytest.approx(2 / lam[-1], rel=1e-7)
    # H(0)_ij = x_i.x_j (1/m) sum_r 1{w_r.x_i >= 0} 1{w_r.x_j >= 0} of the same seeded network.
    net = convergence.TwoLayerReLU(3, 300, seed=3, dtype=torch.float64)
    s = (xn @ net.weight.detach().numpy().T >= 0).astype(float)
    h0 = (xn @ xn.T) * (s @ s.T) / 300
    ev = np.linalg.eigvalsh(h0)
    assert rows["lambda_min_h0"] == pytest.approx(ev[0], rel=1e-9, abs=1e-12)
    assert rows["lambda_max_h0"] == pytest.approx(ev[-1], rel=1e-9)
    assert rows["width_over_bound"] == pytest.approx(300 / rows["width_bound"], rel=1e-12)


def test_label_shift_from_classifier_with_a_perfect_black_box():
    """Separable classes make the fitted classifier exact, so C_hat is diagonal and BBSE's
    weights must be the ratio of the target's and the held-out source's class frequencies,
    counted here directly."""
    from sklearn.linear_model import LogisticRegression

    from widenet import shift

    rng = np.random.default_rng(0)
    ys = np.repeat([0, 1, 2], [100, 100, 100])
    yt = np.repeat([0, 1, 2], [30, 60, 90])
    centres = np.eye(3) * 20.0

    def points(y):
        return centres[y] + 0.1 * rng.standard_normal((len(y), 3))

    xs, xt = points(ys), points(yt)
    res = shift.label_shift_from_classifier(
        LogisticRegression(max_iter=1000), xs, ys, xt, holdout=0.5, seed=1
    )
    perm = np.random.default_rng(1).permutation(300)
    held = ys[perm[:150]]
    p = np.bincount(held, minlength=3) / 150
    q = np.bincount(yt, minlength=3) / len(yt)
    np.testing.assert_allclose(res.estimate.confusion, np.diag(p), atol=1e-12)
    np.testing.assert_allclose(res.estimate.weights, q / p, rtol=1e-10)
    # The shift test: Pearson's chi2 of the 2 x k table of predicted-label counts (scipy).
    from scipy.stats import chi2_contingency

    table = [np.bincount(held, minlength=3), np.bincount(yt, minlength=3)]
    ref = chi2_contingency(table, correction=False)
    assert res.test.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert res.test.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    summary = res.summary()
    assert summary["test"]["method"] == "chi2" and len(summary["confusion"]) == 3
    with pytest.raises(ValueError, match="holdout"):
        shift.label_shift_from_classifier(LogisticRegression(), xs, ys, xt, holdout=1.0)
