"""widenet.convergence (Du et al. 2018) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import convergence as cv

F64 = torch.float64


def sphere(n, d, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


def labels(n, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------------------------
# The model and H(W)


def test_model_forward_is_the_papers_sum():
    x = sphere(7, 5)
    net = cv.TwoLayerReLU(5, 13, seed=0, dtype=F64)
    w, a = net.weight.detach(), net.a
    brute = torch.stack(
        [
            sum(a[r] * max(float(w[r] @ x[i]), 0.0) for r in range(13)) / math.sqrt(13)
            for i in range(7)
        ]
    )
    torch.testing.assert_close(net(x).detach(), brute, rtol=1e-12, atol=1e-12)
    assert set(a.tolist()) <= {-1.0, 1.0}
    assert net.weight.requires_grad and not net.a.requires_grad


def test_antisymmetric_init_gives_zero_output():
    x = sphere(20, 6)
    net = cv.TwoLayerReLU(6, 40, antisymmetric=True, seed=3, dtype=F64)
    # Pairs cancel exactly; only the GEMM's summation order leaves rounding (sum of 40 terms).
    assert float(net(x).detach().abs().max()) < 1e-14
    torch.testing.assert_close(net.weight[:20], net.weight[20:])
    torch.testing.assert_close(net.a[:20], -net.a[20:])


def test_same_seed_same_network():
    a, b = cv.TwoLayerReLU(4, 8, seed=5), cv.TwoLayerReLU(4, 8, seed=5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.a, b.a)


def test_gram_matches_brute_force_double_loop():
    x = sphere(6, 4, seed=2)
    net = cv.TwoLayerReLU(4, 30, seed=1, dtype=F64)
    w = net.weight.detach()
    brute = torch.zeros(6, 6, dtype=F64)
    for i in range(6):
        for j in range(6):
            count = sum(float(w[r] @ x[i]) >= 0 and float(w[r] @ x[j]) >= 0 for r in range(30))
            brute[i, j] = float(x[i] @ x[j]) * count / 30
    torch.testing.assert_close(cv.gram(net, x), brute, rtol=1e-14, atol=1e-14)


def test_gram_is_the_autograd_jacobian_gram():
    x = sphere(9, 5, seed=4)
    net = cv.TwoLayerReLU(5, 64, seed=2, dtype=F64)
    jac = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(net, {"weight": w}, (x,)), net.weight.detach()
    ).reshape(9, -1)
    # relu'(0) = 0 in autograd vs 1{. >= 0} in the paper differ only when w_r.x_i = 0 exactly.
    torch.testing.assert_close(cv.gram(net, x), jac @ jac.T, rtol=1e-12, atol=1e-12)
    # ... and widenet's empirical NTK of the same module agrees (trace over one output).
    torch.testing.assert_close(cv.gram(net, x), wn.empirical_ntk(net, x), rtol=1e-10, atol=1e-12)


def test_gram_tends_to_h_infinity_at_rate_one_over_sqrt_m():
    n, d = 8, 5
    x = sphere(n, d, seed=7)
    h_inf = cv.gram_infinity(x)
    torch.testing.assert_close(h_inf, wn.h_infinity(x))
    # Per-entry standard deviation of H(0)_ij: sd of x_i.x_j 1{..}1{..} over one neuron / sqrt(m),
    # with E[(x_i.x_j)^2 1 1] = (x_i.x_j)^2 * P(both active) = |x_i.x_j| * H_inf_ij for xx >= 0.
    xx = x @ x.T
    p_both = (math.pi - torch.arccos(xx.clamp(-1, 1))) / (2 * math.pi)
    var1 = xx**2 * p_both - h_inf**2
    rms = []
    for m in (100, 1600, 25600):
        errs = []
        for seed in range(8):
            net = cv.TwoLayerReLU(d, m, seed=100 + seed, dtype=F64)
            dev = cv.gram(net, x) - h_inf
            z = dev / (var1.clamp_min(1e-12) / m).sqrt()
            # Each entry is a mean of m i.i.d. terms: |z| > 5.5 has probability < 4e-8 per entry
            # (Gaussian tail; the Berry-Esseen correction is small for m >= 100 with bounded
            # terms), and there are 8 * 36 distinct entries per width.
            assert float(z.abs().max()) < 5.5
            errs.append(float((dev**2).mean()))
        rms.append(math.sqrt(np.mean(errs)))
    slope = np.polyfit(np.log([100, 1600, 25600]), np.log(rms), 1)[0]
    # E||H(0) - H_inf||_F^2 = sum(var1)/m exactly; the estimate from 8 draws of 64 entries has a
    # relative error of ~10%, so the fitted slope over a 256x range of m is -0.5 +- 0.05.
    assert abs(slope + 0.5) < 0.06
    expected = math.sqrt(float(var1.mean()))
    for m, r in zip((100, 1600, 25600), rms, strict=True):
        assert 0.75 < r * math.sqrt(m) / expected < 1.3


# --------------------------------------------------------------------------------------------
# lambda0 and the theorem's quantities


def test_lambda0_and_parallel_inputs():
    x = sphere(30, 10)
    lam = cv.lambda0(x)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(wn.h_infinity(x))[0]), rel=1e-12)
    assert lam > 0
    bad = x.clone()
    bad[17] = bad[4]
    with pytest.raises(ValueError, match="inputs 4 and 17 are parallel"):
        cv.lambda0(bad)
    # Antiparallel inputs are allowed: H_inf_ij = 0 for x_j = -x_i (Theorem 3.1).
    anti = x.clone()
    anti[17] = -anti[4]
    assert cv.lambda0(anti) > 0
    # A (given) H_inf of rank 1: lambda0 = 0 up to rounding, refused as numerically zero.
    with pytest.raises(ValueError, match="numerically zero"):
        cv.lambda0(x, h_inf=torch.full((30, 30), 0.5, dtype=F64))


def test_theorem_constants_by_hand():
    lam, n, delta = 0.2, 10, 0.1
    assert cv.theorem_step_size(lam, n) == pytest.approx(0.2 / 400)
    assert cv.radius(lam, n, delta) == pytest.approx(math.sqrt(2 * math.pi) * 0.1 * 0.2 / 1600)
    assert cv.drift_bound(3.0, n, 100, lam) == pytest.approx(math.sqrt(10) * 3 / (10 * 0.2))
    assert cv.drift_bound(3.0, n, 100, lam, discrete=True) == pytest.approx(
        4 * math.sqrt(10) * 3 / (10 * 0.2)
    )
    wb = cv.width_bound(n, lam, delta)
    c = 16 * 256 * 27 * 1.5 / (2 * math.pi)
    assert wb.constant == pytest.approx(c)
    assert wb.drift_width == pytest.approx(c * 1e6 / (0.2**4 * 1e-3))
    assert wb.gram_width == pytest.approx(32 * 100 * math.log(2 * 100 / (delta / 3)) / 0.04)
    assert wb.width == max(wb.gram_width, wb.drift_width)
    # The drift width is exactly where the GD drift bound (with Markov's residual) meets R.
    resid = math.sqrt((n * 1.0 + n / 2) / (delta / 3))
    r_prime = cv.drift_bound(resid, n, math.ceil(wb.drift_width), lam, discrete=True)
    assert r_prime == pytest.approx(cv.radius(lam, n, delta / 3), rel=1e-6)
    assert cv.width_bound(n, lam, delta, discrete=False).constant == pytest.approx(c / 16)
    # Antisymmetric init: ||y - u(0)||^2 = ||y||^2 = n exactly, delta/2 for each lemma.
    anti = cv.width_bound(n, lam, delta, antisymmetric=True)
    r_prime = cv.drift_bound(math.sqrt(n), n, math.ceil(anti.drift_width), lam, discrete=True)
    assert r_prime == pytest.approx(cv.radius(lam, n, delta / 2), rel=1e-6)
    assert anti.delta_power == 2 and wb.delta_power == 3
    k = np.arange(5)
    np.testing.assert_allclose(cv.loss_envelope(k, 0.5, lam, 2.0), 2.0 * 0.95**k)
    np.testing.assert_allclose(cv.flow_envelope([0, 1, 2], lam, 2.0), 2 * np.exp([0, -0.2, -0.4]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cv.radius(0.1, 10, 1.5), "delta"),
        (lambda: cv.width_bound(10, 0.0), "lambda0"),
        (lambda: cv.theorem_step_size(-1.0, 3), "lambda0"),
        (lambda: cv.loss_envelope([1], 100.0, 0.5, 1.0), "Theorem 4.1"),
        (lambda: cv.drift_bound(-1.0, 3, 3, 0.1), "initial_residual"),
    ],
)
def test_bad_theorem_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_measured_rate_of_a_geometric_sequence():
    losses = 3.0 * 0.9 ** np.arange(41)
    assert cv.measured_rate(losses) == pytest.approx(0.9, rel=1e-12)
    assert cv.measured_rate(losses, (0, 10)) == pytest.approx(0.9, rel=1e-12)


# --------------------------------------------------------------------------------------------
# track: gradient descent and its records


def test_track_step_equals_autograd_gradient_step():
    x, y = sphere(12, 6), labels(12)
    net = cv.TwoLayerReLU(6, 50, seed=0, dtype=F64)
    ref = cv.TwoLayerReLU(6, 50, seed=0, dtype=F64)
    eta = 0.3
    for _ in range(3):
        loss = cv.loss(ref(x), y)
        (grad,) = torch.autograd.grad(loss, ref.weight)
        with torch.no_grad():
            ref.weight.sub_(eta * grad)
    res = cv.track(net, x, y, 3, eta)
    torch.testing.assert_close(net.weight, ref.weight, rtol=1e-13, atol=1e-13)
    assert res.loss[-1] == pytest.approx(float(cv.loss(ref(x), y).detach()), rel=1e-12)


def test_track_records_against_brute_force():
    x, y = sphere(10, 4, seed=3), labels(10, seed=4)
    net = cv.TwoLayerReLU(4, 40, seed=1, dtype=F64)
    w0 = net.weight.detach().clone()
    h0 = cv.gram(net, x)
    res = cv.track(net, x, y, 20, 0.5, gram_every=7, output_steps=[0, 20])
    w = net.weight.detach()
    flips = sum(
        (float(w0[r] @ x[i]) >= 0) != (float(w[r] @ x[i]) >= 0)
        for r in range(40)
        for i in range(10)
    )
    assert res.pattern_change[-1] == pytest.approx(flips / 400, abs=1e-15)
    assert res.pattern_change[0] == 0.0 and res.max_distance[0] == 0.0
    assert res.max_distance[-1] == pytest.approx(
        max(float((w[r] - w0[r]).norm()) for r in range(40)), rel=1e-12
    )
    assert res.gram_steps.tolist() == [0, 7, 14, 20]
    h = cv.gram(w, x)
    assert res.gram_change[-1] == pytest.approx(
        float(torch.linalg.matrix_norm(h - h0, 2)), rel=1e-9
    )
    assert res.gram_lambda_min[-1] == pytest.approx(float(torch.linalg.eigvalsh(h)[0]), rel=1e-9)
    assert res.gram_lambda_min[0] == pytest.approx(float(torch.linalg.eigvalsh(h0)[0]), rel=1e-9)
    np.testing.assert_allclose(res.outputs[-1], net(x).detach().numpy(), rtol=1e-12, atol=1e-12)
    assert res.predicted_rate == pytest.approx(1 - 0.5 * res.lambda0 / 2)
    assert res.drift_bound == pytest.approx(4 * res.flow_drift_bound)


def test_kernel_prediction_is_the_linear_recursion():
    x, y = sphere(15, 5), labels(15)
    h = cv.gram_infinity(x)
    u0 = labels(15, seed=9) * 0.1
    eta = 0.7
    pred = cv.kernel_prediction(h, y, [0, 1, 5, 30], eta, u0=u0)
    u, brute = u0.clone(), {}
    for k in range(31):
        brute[k] = u.clone()
        u = u - eta * h @ (u - y)
    for row, k in enumerate([0, 1, 5, 30]):
        torch.testing.assert_close(pred[row], brute[k], rtol=1e-10, atol=1e-12)


def test_wide_network_obeys_the_theorem_and_the_kernel_prediction():
    # n = 20 unit points in d = 10, width 20000 (the bound itself is astronomically larger):
    # the theorem's conclusions hold along the whole run.
    n, d, m = 20, 10, 20000
    x, y = sphere(n, d, seed=11), labels(n, seed=12)
    net = cv.TwoLayerReLU(d, m, seed=13, dtype=F64)
    h0 = cv.gram(net, x)
    u0 = net(x).detach()
    eta = 0.5 * wn.dynamics.critical_learning_rate(h0, loss="sum")
    res = cv.track(net, x, y, 60, eta, gram_every=10, output_steps=list(range(61)))
    envelope = cv.loss_envelope(res.steps, eta, res.lambda0, 2 * res.loss[0]) / 2
    assert np.all(res.loss <= envelope * (1 + 1e-9))
    assert (
        np.all(res.max_distance <= res.drift_bound) and res.max_distance[-1] < res.flow_drift_bound
    )
    assert np.all(res.gram_lambda_min >= res.lambda0 / 2)
    # In the kernel regime the loss falls at least as fast as H(0)'s slowest mode predicts
    # (the residual is spread over all modes; measured rates within 3% of the prediction).
    assert res.measured_rate <= res.kernel_rate_h0 * 1.03
    # u(k) follows the closed form with H(0) to within the O(1/sqrt(m)) kernel change.
    pred = cv.kernel_prediction(h0, y, res.output_steps, eta, u0=u0).numpy()
    scale = float((y - u0).norm())
    gap = np.linalg.norm(res.outputs - pred, axis=1).max() / scale
    assert gap < 0.02  # measured 0.004; ||H(k)-H(0)|| / lambda0 is ~1% here


def test_random_labels_are_fitted():
    x = sphere(30, 30, seed=5, dtype=F64)
    g = torch.Generator().manual_seed(0)
    gauss = cv.random_labels(30, generator=g)
    assert gauss.shape == (30,) and gauss.dtype == F64
    real = torch.linspace(-1, 1, 30, dtype=F64)
    shuffled = cv.random_labels(real, kind="shuffled", generator=g)
    assert torch.equal(shuffled.sort().values, real) and not torch.equal(shuffled, real)
    for y in (gauss, shuffled):
        net = cv.TwoLayerReLU(30, 2000, seed=1, dtype=F64)
        h_inf = cv.gram_infinity(x)
        eta = wn.dynamics.critical_learning_rate(h_inf, loss="sum") / 2
        res = cv.track(net, x, y, 200, eta, gram_every=0)
        assert res.relative_error[-1] < 1e-6  # kernel rate ~0.7/step: ~1e-30 ideal, measured ~1e-20


# --------------------------------------------------------------------------------------------
# Bad input


def test_non_unit_inputs_warn_and_normalise_or_error():
    x = sphere(8, 4) * 3.0
    y = labels(8)
    with pytest.warns(UserWarning, match="not unit-norm"):
        ok = cv.unit_inputs(x)
    torch.testing.assert_close(ok.norm(dim=1), torch.ones(8, dtype=F64))
    with pytest.raises(ValueError, match="not unit-norm"):
        cv.unit_inputs(x, non_unit="error")
    with pytest.raises(ValueError, match="not unit-norm"):
        cv.track(cv.TwoLayerReLU(4, 10, seed=0, dtype=F64), x, y, 1, 0.1, non_unit="error")
    with pytest.raises(ValueError, match="zero norm"):
        cv.unit_inputs(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non_unit"):
        cv.unit_inputs(x, non_unit="clip")


def test_track_refuses_bad_input():
    x, y = sphere(8, 4), labels(8)
    net = cv.TwoLayerReLU(4, 10, seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"exceed the m\*d"):
        cv.track(cv.TwoLayerReLU(4, 1, seed=0, dtype=F64), x, y, 1, 0.1)
    with pytest.raises(ValueError, match=r"exceeds 2/lambda_max\(H\(0\)\)"):
        cv.track(net, x, y, 1, 100.0)
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        cv.track(net, x, bad, 1, 0.1)
    with pytest.raises(ValueError, match=r"y must have shape \(8,\)"):
        cv.track(net, x, y[:5], 1, 0.1)
    with pytest.raises(ValueError, match="in_dim=4"):
        cv.track(net, sphere(8, 5), y, 1, 0.1)
    with pytest.raises(ValueError, match="parallel"):
        cv.track(net, torch.cat([x[:7], x[:1]]), y, 1, 0.1)
    with pytest.raises(ValueError, match="step_size"):
        cv.track(net, x, y, 1, 0.0)
    with pytest.raises(ValueError, match="steps"):
        cv.track(net, x, y, 0, 0.1)
    with pytest.raises(TypeError, match="TwoLayerReLU"):
        cv.track(torch.nn.Linear(4, 1), x, y, 1, 0.1)
    with pytest.raises(ValueError, match="output_steps"):
        cv.track(net, x, y, 2, 0.1, output_steps=[5])
    with pytest.raises(ValueError, match="even width"):
        cv.TwoLayerReLU(4, 7, antisymmetric=True)
    with pytest.raises(ValueError, match="kind"):
        cv.random_labels(5, kind="uniform")


def test_divergent_step_is_allowed_on_request():
    x, y = sphere(8, 4), labels(8)
    net = cv.TwoLayerReLU(4, 200, seed=0, dtype=F64)
    lmax = float(torch.linalg.eigvalsh(cv.gram(net, x))[-1])
    res = cv.track(net, x, y, 6, 4.0 / lmax, allow_divergent=True, gram_every=0)
    assert res.loss[-1] > 10 * res.loss[0]  # the top mode grows by ~|1 - 4|^2 = 9 per step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_track_on_cuda_matches_cpu():
    x, y = sphere(20, 8), labels(20)
    cpu = cv.TwoLayerReLU(8, 100, seed=0, dtype=F64)
    gpu = cv.TwoLayerReLU(8, 100, seed=0, dtype=F64, device="cuda")
    a = cv.track(cpu, x, y, 5, 0.3)
    b = cv.track(gpu, x.cuda(), y.cuda(), 5, 0.3)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
