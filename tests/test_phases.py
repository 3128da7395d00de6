"""The phase diagram of two-layer ReLU nets (widenet.phases)."""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from widenet import phases


@pytest.mark.parametrize("alpha", [1.0, 0.3, 50.0])
def test_round_trip_gamma_to_scaling_and_back(alpha):
    rng = np.random.default_rng(0)
    for _ in range(50):
        g, gp = rng.uniform(-1, 3), rng.uniform(-2, 2)
        m = int(rng.integers(10, 10**6))
        s = phases.scaling(g, gp, m, alpha=alpha)
        # Independent: κ and κ′ straight from their definitions, with m**-γ.
        assert s.beta1 * s.beta2 / alpha == pytest.approx(m**-g, rel=1e-12)
        assert s.beta1 / s.beta2 == pytest.approx(m**-gp, rel=1e-12)
        assert s.alpha == alpha
        g2, gp2 = phases.coordinates(s.alpha, s.beta1, s.beta2, m)
        assert g2 == pytest.approx(g, abs=1e-12) and gp2 == pytest.approx(gp, abs=1e-12)
        # β are standard deviations: the variances are their squares.
        assert s.var1 == s.beta1**2 and s.var2 == s.beta2**2


def test_named_points_from_their_definitions():
    # Exact where the definition has no m-independent constant (d = 1 input).
    m = 10**6
    assert phases.coordinates(math.sqrt(m), 1.0, 1.0, m) == pytest.approx((0.5, 0.0))  # NTK
    assert phases.coordinates(m, 1.0, 1.0, m) == pytest.approx((1.0, 0.0))  # mean field
    assert phases.coordinates(1.0, m**-0.5, 1.0, m) == pytest.approx((0.5, 0.5))  # LeCun d=1
    # He (variances 2/m, 2/d) and Xavier (2/(m+1), 2/(d+m)): the constants shift γ by
    # O(log 2 / log m), so at m = 1e12 they are within 0.03 of the named point.
    m = 10**12
    he = phases.coordinates(1.0, math.sqrt(2 / m), math.sqrt(2.0), m)
    xavier = phases.coordinates(1.0, math.sqrt(2 / (m + 1)), math.sqrt(2 / (m + 1)), m)
    assert he == pytest.approx(phases.NAMED_POINTS["He"], abs=0.03)
    assert xavier == pytest.approx(phases.NAMED_POINTS["Xavier"], abs=0.03)


def test_regime_of_named_points_and_boundary():
    assert phases.regime(*phases.NAMED_POINTS["NTK"]) == "linear"
    assert phases.regime(*phases.NAMED_POINTS["LeCun"]) == "linear"
    assert phases.regime(*phases.NAMED_POINTS["He"]) == "linear"
    assert phases.regime(*phases.NAMED_POINTS["Xavier"]) == "critical"
    assert phases.regime(*phases.NAMED_POINTS["mean-field"]) == "critical"
    for point in [(1.0, -0.7), (1.0, 0.0), (1.5, 0.5), (3.0, 2.0)]:
        assert phases.regime(*point) == "critical", point
    assert phases.regime(1.75, 0.0) == "condensed"
    assert phases.regime(1.0, 0.5) == "linear"  # γ = 1 but above the diagonal
    assert phases.regime(1.5, 0.6) == "linear"
    # Tolerance: 0.01 from the line is critical only with tol >= 0.01.
    assert phases.regime(1.01, -1.0) == "condensed"
    assert phases.regime(1.01, -1.0, tol=0.02) == "critical"
    assert phases.regime(0.99, -1.0, tol=0.02) == "critical"
    assert phases.boundary_distance(2.0, 0.0) == pytest.approx(math.sqrt(0.5))
    assert phases.boundary_distance(0.0, 1.0) == pytest.approx(math.sqrt(2.0))  # the corner
    assert phases.boundary_distance(1.0, 1.0) == pytest.approx(math.sqrt(0.5))
    p = phases.PhasePoint.of(1.0, 0.0)
    assert p.regime == "critical" and set(p.names) == {"Xavier", "mean-field"}


def test_regime_against_the_inequalities_on_a_grid():
    rng = np.random.default_rng(1)
    for g, gp in rng.uniform(-1, 3, size=(2000, 2)):
        expected = "condensed" if (g > 1 and gp < g - 1) else "linear"
        assert (g < 1 or gp > g - 1) == (expected == "linear")
        assert phases.regime(g, gp, tol=0.0) == expected


def test_init_std_is_beta_and_asi_gives_zero_function():
    s = phases.scaling(0.75, 0.25, 100_000)
    gen = torch.Generator().manual_seed(0)
    a, w = phases.init_params(s, 3, asi=False, generator=gen)
    # Monte Carlo: a sample std of N normals has relative error 1/sqrt(2N): 0.22% for the 1e5
    # a_k (0.11% for the 4e5 w entries), so 1% is > 4 sigma.
    assert float(a.std()) == pytest.approx(s.beta1, rel=0.01)
    assert float(w.std()) == pytest.approx(s.beta2, rel=0.01)
    a, w = phases.init_params(phases.scaling(1.0, 0.0, 100), 2, generator=gen)
    assert torch.equal(a[:50], -a[50:]) and torch.equal(w[:50], w[50:])
    x = torch.randn(7, 2, dtype=torch.float64, generator=gen)
    # Zero up to the rounding of a sum of 100 terms of size ~0.01 in another order.
    assert float(phases.forward(a, w, x).abs().max()) < 1e-15


def test_forward_loss_and_ntk_trace_against_independent_computations():
    gen = torch.Generator().manual_seed(2)
    a, w = phases.init_params(phases.scaling(0.5, 0.0, 64), 2, asi=False, generator=gen)
    x = torch.randn(5, 2, dtype=torch.float64, generator=gen)
    y = torch.randn(5, dtype=torch.float64, generator=gen)
    alpha = 3.0
    loop = [
        sum(float(a[k]) * max(0.0, float(w[k, :2] @ x[i] + w[k, 2])) for k in range(64)) / alpha
        for i in range(5)
    ]
    assert phases.forward(a, w, x, alpha).tolist() == pytest.approx(loop, rel=1e-12)
    assert float(phases.loss(a, w, x, y, alpha)) == pytest.approx(
        0.5 * float(((torch.tensor(loop, dtype=torch.float64) - y) ** 2).mean()), rel=1e-12
    )
    # tr Θ from wn.empirical_ntk of the same function as an nn.Module (autograd Jacobians).
    net = phases.as_module(a, w, alpha)
    assert net(x).reshape(-1).tolist() == pytest.approx(loop, rel=1e-12)
    theta = wn.empirical_ntk(net, x)
    # as_module stores a/α as the weight: its gradient wrt a/α is α times that wrt a, so the
    # a-part of Θ is α² too large; the w-part is the same. Undo it on the a-block only.
    theta_w = wn.empirical_ntk(net, x, params=["0.weight", "0.bias"])
    theta_a = (theta - theta_w) / alpha**2
    assert float(phases.ntk_trace(a, w, x, alpha)) == pytest.approx(
        float(torch.trace(theta_w + theta_a)), rel=1e-10
    )


def test_relative_distance_hand_made():
    w0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    w1 = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert phases.relative_distance(w0, w1) == pytest.approx(4.0 / 5.0)
    with pytest.raises(ValueError, match="zero"):
        phases.relative_distance(torch.zeros(2, 2), w1)
    with pytest.raises(ValueError, match="same shape"):
        phases.relative_distance(w0, w1[:1])


def test_one_step_matches_autograd_gradient_descent():
    x, y = phases.PAPER_DATA
    gen = torch.Generator().manual_seed(3)
    nets = [
        (*phases.init_params(phases.scaling(g, 0.0, m), 1, generator=gen), alpha)
        for g, m, alpha in [(0.5, 40, 1.0), (1.75, 60, 2.0)]
    ]
    res = phases.train_to_tolerance(nets, x, y, loss_tol=1e-30, max_steps=1, keep_params=True)
    for j, (a, w, alpha) in enumerate(nets):
        a_, w_ = a.clone().requires_grad_(), w.clone().requires_grad_()
        ga, gw = torch.autograd.grad(phases.loss(a_, w_, x, y, alpha), [a_, w_])
        lr = min(1.0, 0.5 * 4 / float(phases.ntk_trace(a, w, x, alpha)))
        assert torch.allclose(res.a[j], a - lr * ga, rtol=1e-12, atol=1e-15)
        assert torch.allclose(res.w[j], w - lr * gw, rtol=1e-12, atol=1e-15)
        assert res.steps[j] == 1 and not res.converged[j]
        assert res.rd[j] == pytest.approx(phases.relative_distance(w, res.w[j]), rel=1e-12)


def test_training_stops_at_the_tolerance_and_rd_is_of_that_state():
    x, y = phases.PAPER_DATA
    gen = torch.Generator().manual_seed(4)
    a, w = phases.init_params(phases.scaling(1.0, 0.0, 100), 1, generator=gen)
    res = phases.train_to_tolerance([(a, w, 1.0)], x, y, loss_tol=1e-4, keep_params=True)
    assert res.converged[0] and res.final_loss[0] < 1e-4
    assert float(phases.loss(res.a[0], res.w[0], x, y)) == pytest.approx(res.final_loss[0])
    assert res.rd[0] == pytest.approx(phases.relative_distance(w, res.w[0]), rel=1e-12)
    # One step fewer is above the tolerance (the stop is the first step below it).
    again = phases.train_to_tolerance(
        [(a, w, 1.0)], x, y, loss_tol=1e-4, max_steps=int(res.steps[0]) - 1
    )
    assert not again.converged[0] and again.final_loss[0] >= 1e-4


def _reference_training(a, w, alpha, x, y, loss_tol, max_steps):
    """Independent: one network, autograd gradients, the step rule of the module docstring."""
    a, w = a.clone().requires_grad_(), w.clone().requires_grad_()
    for step in range(max_steps + 1):
        value = phases.loss(a, w, x, y, alpha)
        if float(value.detach()) < loss_tol or step == max_steps:
            return a.detach(), w.detach(), step, float(value.detach())
        ga, gw = torch.autograd.grad(value, [a, w])
        with torch.no_grad():
            lr = min(1.0, 0.5 * x.shape[0] / float(phases.ntk_trace(a, w, x, alpha)))
            a -= lr * ga
            w -= lr * gw


def _mixed_nets(d):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, d, generator=gen, dtype=torch.float64)
    y = torch.randn(5, generator=gen, dtype=torch.float64)
    if d == 1:  # spread points (random ones can nearly coincide with far-apart targets)
        x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)[:, None]
    # Widths 60 and 56 share a block (56 >= 7/8 * 60, the narrower padded with zero neurons);
    # 52, 40 and 8 do not. Different alphas, points on both sides of the critical line.
    spec = [(60, 0.5, 1.0), (56, 1.75, 2.0), (52, 1.0, 1.0), (40, 0.5, 0.5), (8, 1.0, 1.0)]
    nets = []
    for m, g, alpha in spec:
        a, w = phases.init_params(phases.scaling(g, 0.0, m), d, generator=gen)
        nets.append((a, w, alpha))
    return nets, x, y


@pytest.mark.parametrize("d, tol", [(1, 0.03), (2, 0.01), (5, 0.01)])
def test_blocks_match_one_autograd_loop_per_network(d, tol, monkeypatch):
    nets, x, y = _mixed_nets(d)
    assert phases._pack([a.shape[0] for a, _, _ in nets], 5, 2 * 60 * 5) == [[0, 1], [2], [3], [4]]
    monkeypatch.setattr(phases, "BLOCK_ELEMENTS", 2 * 60 * 5)
    max_steps = 150
    res = phases.train_to_tolerance(nets, x, y, loss_tol=tol, max_steps=max_steps, keep_params=True)
    # Networks stop at different steps, some at the tolerance and some at max_steps.
    assert len(set(res.steps.tolist())) > 2
    assert res.converged.any() and not res.converged.all()
    for j, (a, w, alpha) in enumerate(nets):
        a1, w1, steps, value = _reference_training(a, w, alpha, x, y, tol, max_steps)
        assert res.steps[j] == steps
        assert res.converged[j] == (value < tol)
        assert res.final_loss[j] == pytest.approx(value, rel=1e-9)
        assert res.a[j].shape == a.shape and res.w[j].shape == w.shape
        assert torch.allclose(res.a[j], a1, rtol=1e-9, atol=1e-12)
        assert torch.allclose(res.w[j], w1, rtol=1e-9, atol=1e-12)
        assert res.rd[j] == pytest.approx(phases.relative_distance(w, w1), rel=1e-9)
    # One network per block gives the same (the zero neurons of the padding add nothing).
    monkeypatch.setattr(phases, "BLOCK_ELEMENTS", 1)
    alone = phases.train_to_tolerance(
        nets, x, y, loss_tol=tol, max_steps=max_steps, keep_params=True
    )
    assert np.array_equal(alone.steps, res.steps)
    np.testing.assert_allclose(alone.rd, res.rd, rtol=1e-12)
    for j in range(len(nets)):
        assert torch.allclose(alone.w[j], res.w[j], rtol=1e-12, atol=1e-15)


def test_blocks_in_a_pool_of_threads_give_the_same_results(monkeypatch):
    import widenet.threads

    nets, x, y = _mixed_nets(2)
    runs = []
    threads = torch.get_num_threads()
    for busy in (True, False):  # one block after the other; a pool of two threads
        monkeypatch.setattr(widenet.threads, "machine_busy", lambda busy=busy: busy)
        torch.set_num_threads(2)
        try:
            runs.append(phases.train_to_tolerance(nets, x, y, loss_tol=1e-2, max_steps=100))
        finally:
            torch.set_num_threads(threads)
    assert np.array_equal(runs[0].steps, runs[1].steps)
    assert np.array_equal(runs[0].rd, runs[1].rd)
    assert np.array_equal(runs[0].final_loss, runs[1].final_loss)


def test_callback_every_1000_steps_with_the_networks_still_running():
    x, y = phases.PAPER_DATA
    gen = torch.Generator().manual_seed(5)
    nets = [
        (*phases.init_params(phases.scaling(g, 0.0, 40), 1, generator=gen), 1.0)
        for g in (0.5, 1.0, 1.75)
    ]
    calls = []
    res = phases.train_to_tolerance(
        nets, x, y, loss_tol=1e-6, max_steps=3500, callback=lambda s, k: calls.append((s, k))
    )
    expected = [(s, int((res.steps > s).sum())) for s in (0, 1000, 2000, 3000)]
    assert calls == [(s, k) for s, k in expected if k > 0]
    assert len(calls) >= 2 and calls[0] == (0, 3)
    again = phases.train_to_tolerance(nets, x, y, loss_tol=1e-6, max_steps=3500)
    assert np.array_equal(again.steps, res.steps) and np.array_equal(again.rd, res.rd)


def test_divergence_raises():
    x, y = phases.PAPER_DATA
    a, w = phases.init_params(phases.scaling(0.5, 0.0, 20), 1, generator=torch.Generator())
    with pytest.raises(FloatingPointError, match="diverged"):
        phases.train_to_tolerance([(a, w, 1.0)], x, y * 1e300, lr_scale=1e300, lr_max=1e300)


def test_rd_slopes_have_the_signs_of_the_regimes_small():
    # Small widths (100-800) keep this fast; the signs already separate (measured -0.50 and
    # +0.39 at these widths; the quick experiment checks the values at 500-4000).
    out = phases.measure_slopes([(0.5, 0.0), (1.75, 0.0)], [100, 200, 400, 800], seed=0)
    assert out[0]["regime"] == "linear" and out[1]["regime"] == "condensed"
    assert out[0]["converged"] and out[1]["converged"]
    assert -0.8 < out[0]["slope"] < -0.3
    assert 0.15 < out[1]["slope"] < 0.6


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: phases.scaling(0.5, 0.0, 1), "width"),
        (lambda: phases.scaling(float("nan"), 0.0, 10), "gamma"),
        (lambda: phases.scaling(0.5, 0.0, 10, alpha=0.0), "alpha"),
        (lambda: phases.scaling(400.0, 0.0, 10**6), "floating-point"),
        (lambda: phases.coordinates(1.0, -1.0, 1.0, 10), "beta1"),
        (lambda: phases.regime(1.0, 0.0, tol=-1.0), "tol"),
        (lambda: phases.init_params(phases.scaling(1, 0, 11), 1), "even"),
        (lambda: phases.init_params((1, 2), 1), "Scaling"),
        (lambda: phases.train_to_tolerance([], [[0.0]], [0.0]), "empty"),
        (lambda: phases.measure_slopes([(0.5, 0.0)], [100, 100]), "two distinct"),
        (
            lambda: phases.train_to_tolerance(
                [(torch.zeros(4, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64), 1)],
                [[0.0], [1.0]],
                [0.0, 1.0],
            ),
            "nets\\[0\\]",
        ),
        (
            lambda: phases.rd_slope(0.5, 0.0, [10, 20], x=[[0.0], [float("nan")]], y=[0, 1]),
            "NaN",
        ),
        (lambda: phases.rd_slope(0.5, 0.0, [10, 20], x=[[0.0], [1.0]], y=[0, 1, 2]), "y must"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_cli_phase_point(tmp_path):
    import json

    from typer.testing import CliRunner

    from widenet.cli import app

    out = tmp_path / "p.json"
    res = CliRunner().invoke(
        app, ["phase-point", "--gamma", "0.5", "--gamma-prime", "0.5", "--width", "100", "-o", out]
    )
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["regime"] == "linear" and set(got["named_points"]) == {"LeCun", "He"}
    # LeCun at m = 100, α = 1: β1 = m^-1/2 (variance 1/m), β2 = 1.
    assert got["beta1_std"] == pytest.approx(0.1) and got["beta1_variance"] == pytest.approx(0.01)
    assert got["beta2_std"] == pytest.approx(1.0)
    res = CliRunner().invoke(
        app,
        [
            "phase-point",
            "--gamma",
            "1.75",
            "--gamma-prime",
            "0",
            "--measure",
            "--widths",
            "100",
            "--widths",
            "200",
        ],
    )
    assert res.exit_code == 0 and "slope" in res.output
    bad = CliRunner().invoke(
        app, ["phase-point", "--gamma", "0.5", "--gamma-prime", "0", "--width", "1"]
    )
    assert bad.exit_code == 2 and "width" in bad.output
