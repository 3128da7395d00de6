"""wn.init: every scheme's variance against its formula, torch.nn.init, and the critical point."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import widenet as wn
from widenet import init

# A 120000-entry and an 80000-entry Linear and a 1152-entry conv: fan_in != fan_out everywhere.
SHAPES = [(300, 400), (400, 200)]


def model():
    return nn.Sequential(
        nn.Linear(*SHAPES[0]), nn.Tanh(), nn.Linear(*SHAPES[1]), nn.Conv2d(8, 16, 3)
    )


def expected(scheme, fan_in, fan_out):
    """Var(W) of each scheme, written out from the papers (independent of init.py)."""
    return {
        "naive": 1 / (3 * fan_in),
        "xavier_normal": 2 / (fan_in + fan_out),
        "xavier_uniform": 2 / (fan_in + fan_out),
        "kaiming_normal": 2 / fan_in,  # relu gain sqrt(2)
        "kaiming_uniform": 2 / fan_in,
        "lecun_normal": 1 / fan_in,
        "lecun_uniform": 1 / fan_in,
        "critical": 1 / fan_in,  # tanh, sigma_b = 0: sigma_w^2 = 1
    }[scheme]


UNIFORM = {"naive", "xavier_uniform", "kaiming_uniform", "lecun_uniform"}


# Every scheme with a per-entry variance (orthogonal and ntk are tested on their own).
@pytest.mark.parametrize("scheme", [s for s in init.SCHEMES if s not in ("orthogonal", "ntk")])
def test_empirical_variance_matches_formula(scheme):
    kwargs = {"activation": "tanh"} if scheme == "critical" else {}
    m = init.initialize(model(), scheme, seed=1, **kwargs)
    for layer in (m[0], m[2], m[3]):
        w = layer.weight.detach().double().reshape(-1)
        fan_in, fan_out = init.fans(layer.weight)
        var = expected(scheme, fan_in, fan_out)
        n = w.numel()
        # The sample variance of n iid draws has relative std sqrt((kurtosis - 1) / n):
        # kurtosis 3 (normal) or 9/5 (uniform); 5 standard deviations (chi-square spread).
        kurt = 1.8 if scheme in UNIFORM else 3.0
        rel = float(w.square().mean()) / var - 1
        assert abs(rel) < 5 * math.sqrt((kurt - 1) / n), (scheme, layer, rel)
        assert abs(float(w.mean())) < 5 * math.sqrt(var / n)
        if scheme in UNIFORM:  # bounded by sqrt(3 Var) and reaching close to it
            bound = math.sqrt(3 * var)
            assert float(w.abs().max()) <= bound * (1 + 1e-6)
            assert float(w.abs().max()) > bound * (1 - 20 / n)
        assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize(
    "activation, torch_args",
    [("relu", ("relu", None)), ("leaky_relu(0.2)", ("leaky_relu", 0.2)), ("tanh", ("tanh", None))],
)
def test_kaiming_equals_torch(mode, activation, torch_args):
    nonlinearity, a = torch_args
    for dist in ("normal", "uniform"):
        lin = nn.Linear(70, 50)
        init.kaiming(lin, dist, activation=activation, mode=mode, seed=3)
        ref = torch.empty(50, 70)
        fn = nn.init.kaiming_normal_ if dist == "normal" else nn.init.kaiming_uniform_
        fn(
            ref,
            a=a or 0,
            mode=mode,
            nonlinearity=nonlinearity,
            generator=torch.Generator().manual_seed(3),
        )
        # Same generator draws; the bound is computed in another order (rounding only).
        torch.testing.assert_close(lin.weight.detach(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_equals_torch(gain):
    for dist, fn in (("normal", nn.init.xavier_normal_), ("uniform", nn.init.xavier_uniform_)):
        lin = nn.Linear(30, 80)
        init.xavier(lin, dist, gain=gain, seed=7)
        ref = fn(torch.empty(80, 30), gain=gain, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(lin.weight.detach(), ref, rtol=1e-6, atol=0)


def test_gain_matches_torch_and_he_rule():
    for name, torch_name, param in [
        ("relu", "relu", None),
        ("tanh", "tanh", None),
        ("sigmoid", "sigmoid", None),
        ("identity", "linear", None),
        ("leaky_relu(0.3)", "leaky_relu", 0.3),
        ("selu", "selu", None),
    ]:
        assert init.gain(name) == pytest.approx(nn.init.calculate_gain(torch_name, param), 1e-12)
    # Other activations: 1 / sqrt(E[phi(z)^2]); Monte Carlo with 4e6 draws (rel. std of the
    # mean of gelu(z)^2 ~ 1e-3, so 5e-3 is 5 sigma).
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mc = 1 / float(nn.functional.gelu(z).square().mean()) ** 0.5
    assert init.gain("gelu") == pytest.approx(mc, rel=5e-3)


@pytest.mark.parametrize("shape", [(40, 90), (90, 40)])
def test_orthogonal(shape):
    lin = nn.Linear(shape[1], shape[0])
    init.orthogonal(lin, gain=1.5, seed=2)
    w = lin.weight.detach().double()
    small = w @ w.T if shape[0] <= shape[1] else w.T @ w
    torch.testing.assert_close(
        small, 2.25 * torch.eye(min(shape), dtype=torch.float64), atol=1e-5, rtol=0
    )
    ref = nn.init.orthogonal_(
        torch.empty(shape), gain=1.5, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(lin.weight.detach(), ref)


def test_ntk_parameterization_matches_dense_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 1)).double()
    init.ntk(net, w_std=1.3, b_std=0.2, seed=4)
    raw = [net[i].parametrizations[n].original for i in (0, 2) for n in ("weight", "bias")]
    # The trained parameters are N(0, 1); the effective weight carries w_std / sqrt(fan_in).
    w0 = net[0].weight.detach()
    torch.testing.assert_close(w0, raw[0].detach() * 1.3 / math.sqrt(6))
    torch.testing.assert_close(net[0].bias.detach(), raw[1].detach() * 0.2)
    # The same raw parameters in widenet's own NTK-parameterized Dense network (a separate
    # implementation of the convention) give the same function and the same empirical NTK.
    dense = wn.mlp(1, "relu", w_std=1.3, b_std=0.2).network(6, 64, seed=0, dtype=torch.float64)
    with torch.no_grad():
        for layer, (w, b) in zip((dense[0], dense[2]), (raw[:2], raw[2:]), strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    x = torch.randn(10, 6, dtype=torch.float64)
    torch.testing.assert_close(net(x), dense(x))
    torch.testing.assert_close(wn.empirical_ntk(net, x), wn.empirical_ntk(dense, x))
    # Re-applying changes the scale in place; a standard scheme removes the parametrization.
    init.ntk(net, w_std=2.0, seed=4)
    assert net[0].parametrizations.weight[0].scale == pytest.approx(2 / math.sqrt(6))
    init.lecun(net, seed=0)
    assert not hasattr(net[0], "parametrizations")


def test_dense_layers_become_standard():
    net = wn.mlp(2, "relu", w_std=1.0).network(10, 300, seed=0)
    init.kaiming(net, seed=0)
    layer = net[2]
    assert (layer.weight_scale, layer.bias_scale, layer.parameterization) == (1.0, 1.0, "standard")
    assert float(layer.weight.detach().square().mean()) == pytest.approx(2 / 300, rel=0.05)
    init.ntk(net, w_std=1.5, seed=0)
    assert layer.weight_scale == pytest.approx(1.5 / math.sqrt(300))
    assert float(layer.weight.detach().square().mean()) == pytest.approx(1.0, rel=0.05)


def test_seeds():
    a = init.kaiming(model(), seed=5)
    b = init.kaiming(model(), generator=torch.Generator().manual_seed(5))
    c = init.kaiming(model(), seed=6)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert pa.abs().sum() == 0 or not torch.equal(pa, pc)


# --- the critical point ---------------------------------------------------------------------


def test_critical_point_closed_forms():
    tanh = init.critical_point("tanh")
    assert (tanh.w_var, tanh.b_var, tanh.q_star) == (pytest.approx(1.0, abs=1e-12), 0.0, 0.0)
    relu = init.critical_point("relu")
    assert (relu.w_var, relu.b_var, relu.q_star) == (2.0, 0.0, None)
    # leaky_relu(s): E[phi'(z)^2] = (1 + s^2) / 2; erf: phi'(0)^2 = 4 / pi.
    leaky = init.critical_point("leaky_relu(0.2)")
    assert leaky.w_var == pytest.approx(2 / 1.04, rel=1e-12)
    assert init.critical_point("erf").w_var == pytest.approx(math.pi / 4, rel=1e-12)
    with pytest.raises(ValueError, match="positively homogeneous"):
        init.critical_point("relu", b_var=0.1)


@pytest.mark.parametrize("activation, b_var", [("tanh", 0.05), ("tanh", 0.3), ("sigmoid", 0.0)])
def test_critical_point_by_monte_carlo(activation, b_var):
    point = init.critical_point(activation, b_var)
    assert point.b_var == b_var and point.q_star > 0
    fn = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]
    # Independent Monte Carlo of both conditions with 5e5 Gaussian draws: the q-map fixed point
    # q* = sigma_w^2 E[phi(sqrt(q*) z)^2] + sigma_b^2 and chi = sigma_w^2 E[phi'(...)^2] = 1.
    z = torch.randn(500_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = (math.sqrt(point.q_star) * z).requires_grad_()
    phi = fn(u)
    (dphi,) = torch.autograd.grad(phi.sum(), u)
    q_next = point.w_var * phi.detach().square() + point.b_var
    chi = point.w_var * dphi.square()
    for sample, target in ((q_next, point.q_star), (chi, 1.0)):
        sem = float(sample.std()) / math.sqrt(len(sample))
        assert abs(float(sample.mean()) - target) < 5 * sem, (activation, target)
    # The q-map iterated from q = 1 converges to q* (it attracts: q_slope < 1).
    assert point.q_slope < 0.6
    q = torch.tensor(1.0, dtype=torch.float64)
    for _ in range(60):  # q_slope <= 0.6 here: 0.6^60 ~ 1e-13
        q = wn.signal.q_map(activation, q, point.w_var, point.b_var)
    assert float(q) == pytest.approx(point.q_star, rel=1e-6)


def test_critical_point_tanh_line_is_increasing():
    # Along tanh's critical line sigma_w^2 grows with sigma_b^2 from (1, 0) (Poole et al. 2016,
    # Fig. 2; Schoenholz et al. 2017, Fig. 1).
    w = [init.critical_point("tanh", b).w_var for b in (0.0, 0.01, 0.05, 0.2)]
    assert np.all(np.diff(w) > 0) and w[0] == pytest.approx(1.0)


def test_critical_init_draws():
    m = init.critical(nn.Sequential(nn.Linear(500, 400)), "tanh", b_var=0.05, seed=0)
    point = init.critical_point("tanh", 0.05)
    w, b = m[0].weight.detach().double(), m[0].bias.detach().double()
    # 5 sigma of the chi-square spread (200000 weights, 400 biases).
    assert float(w.square().mean()) * 500 == pytest.approx(point.w_var, rel=5 * (2 / 2e5) ** 0.5)
    assert float(b.square().mean()) == pytest.approx(0.05, rel=5 * (2 / 400) ** 0.5)


def test_no_critical_point_error():
    with pytest.raises(ValueError, match="no critical point"):
        init.critical_point("gelu", 0.0)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: init.initialize(model(), "he"), "unknown scheme"),
        (lambda: init.xavier(model(), "gaussian"), "distribution"),
        (lambda: init.kaiming(model(), mode="fan_avg"), "mode"),
        (lambda: init.kaiming(model(), seed=1, generator=torch.Generator()), "not both"),
        (lambda: init.naive(nn.Sequential(nn.ReLU())), "no nn.Linear"),
        (lambda: init.naive("not a model"), "nn.Module"),
        (lambda: init.critical(model(), "tanh", b_var=-1.0), "b_var"),
        (lambda: init.xavier(model(), gain=0.0), "gain"),
        (lambda: init.xavier(model(), gain=1.0, activation="tanh"), "not both"),
        (lambda: init.ntk(model(), w_std=-1.0), "w_std"),
        (lambda: init.critical(nn.Linear(3, 3, bias=False), "tanh", b_var=0.1), "no bias"),
        (lambda: init.naive(model(), generator=42), "torch.Generator"),
        (lambda: init.initialize(model(), "naive", gain=2.0), "scheme 'naive'"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
