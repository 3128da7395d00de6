"""Finite networks from ``arch.network`` and the Monte-Carlo check of the closed-form kernels.

The empirical NTK here is computed from scratch with ``torch.func`` (J J^T of the scalar output's
per-sample parameter gradient); it deliberately does not use ``widenet.empirical_ntk`` so that the
check is independent of the rest of the library.
"""

from __future__ import annotations

import math

import pytest
import torch
from montecarlo import empirical_ntk, mc_stats

import widenet as wn
from widenet import layers

D = 5  # input dimension
N = 8  # number of points


def _points(n=N, d=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# Tolerance of every Monte-Carlo check: |mean - closed form| <= 5 standard errors (a 5-sigma
# band on the Frobenius norm of the mean's error; seeds are fixed so the test is deterministic)
# plus the finite-width bias, which is O(depth / width) for the NTK (Hanin & Nica 2019) and
# O(1 / width) for the NNGP; C_BIAS = 4 with depth 2 is a generous constant for it.
C_BIAS = 4.0


def _ntk_samples(arch, x, width, seeds):
    return torch.stack(
        [empirical_ntk(arch.network(D, width, seed=s, dtype=torch.float64), x) for s in seeds]
    )


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_mc_ntk_converges_ntk_parameterization(activation):
    x = _points()
    arch = wn.mlp(2, activation, w_std=1.2, b_std=0.2)
    k = arch.kernel(x)
    widths = (64, 512)
    rms = []
    for width in widths:
        err, se, dev = mc_stats(_ntk_samples(arch, x, width, range(6)), k.ntk)
        assert err <= 5 * se + C_BIAS / width, (activation, width, err, se)
        rms.append(dev)
    # The per-network NTK concentrates on the closed form with fluctuations ~ 1/sqrt(width):
    # 8x the width should shrink the rms deviation ~ sqrt(8) = 2.8x; demand 1.8x (robust to the
    # sampling error of a 6-seed rms, which is ~ 30 % here).
    assert rms[1] < rms[0] / 1.8, (activation, rms)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_mc_nngp_matches_closed_form(activation):
    x = _points()
    out_dim = 256  # many i.i.d. readouts per network: 256 samples of f(x1) f(x2) per seed
    arch = wn.mlp(2, activation, w_std=1.2, b_std=0.2, out_dim=out_dim)
    k = arch.kernel(x, get="nngp").nngp
    rms = []
    for width in (64, 512):
        outs, feats = [], []
        for s in range(12):
            net = arch.network(D, width, seed=s, dtype=torch.float64)
            with torch.no_grad():
                f = net(x)
                h = net[:-1](x)  # last hidden layer's post-activations
            outs.append(f @ f.T / out_dim)
            # E[f f^T | hidden layer] over the readout: w_std^2 h h^T / width + b_std^2.
            feats.append(1.2**2 * h @ h.T / width + 0.2**2)
        err, se, _ = mc_stats(torch.stack(outs), k)
        assert err <= 5 * se + C_BIAS / width, (activation, width, err, se)
        err_h, se_h, dev = mc_stats(torch.stack(feats), k)
        assert err_h <= 5 * se_h + C_BIAS / width, (activation, width, err_h, se_h)
        rms.append(dev)
    # The conditional NNGP concentrates like 1/sqrt(width): expect ~2.8x, demand 1.8x.
    assert rms[1] < rms[0] / 1.8, (activation, rms)


def test_mc_ntk_standard_parameterization():
    x = _points()
    arch = wn.mlp(2, "relu", w_std=1.2, b_std=0.2, parameterization="standard")
    for width in (128, 512):
        k = arch.kernel(x, width=width)
        err, se, _ = mc_stats(_ntk_samples(arch, x, width, range(6)), k.ntk)
        # Same 5-sigma + O(1/width) band, relative to the closed form at this width.
        assert err <= 5 * se + C_BIAS / width, (width, err, se)
        # The NNGP does not depend on the parameterization.
        ntk_param = wn.mlp(2, "relu", w_std=1.2, b_std=0.2).kernel(x, get="nngp").nngp
        torch.testing.assert_close(k.nngp, ntk_param, rtol=1e-12, atol=0)
        # Standard-parameterization NTK grows with the width (its leading term is linear in n).
        k2 = arch.kernel(x, width=2 * width, get="ntk").ntk
        assert bool((k2 > k.ntk).all())
        assert 1.5 < float(k2.trace() / k.ntk.trace()) < 2.0


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "gelu"])
def test_mc_ntk_converges_slow(activation):
    x = _points(n=10)
    arch = wn.mlp(3, activation, w_std=1.3, b_std=0.3)
    k = arch.kernel(x)
    rms = []
    for width in (64, 256, 1024):
        err, se, dev = mc_stats(_ntk_samples(arch, x, width, range(16)), k.ntk)
        assert err <= 5 * se + 1.5 * C_BIAS / width, (activation, width, err, se)
        rms.append(dev)
    # 4x width each step: expect 2x; demand 1.5x.
    assert rms[1] < rms[0] / 1.5 and rms[2] < rms[1] / 1.5, rms


# --- structure and initialisation -----------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_network_structure_and_determinism(parameterization):
    arch = wn.mlp(3, "tanh", w_std=1.5, b_std=0.1, out_dim=4, parameterization=parameterization)
    net = arch.network(7, 16, seed=3)
    assert isinstance(net, torch.nn.Sequential)
    assert len(net) == 2 * 3 + 1
    for i in range(3):
        assert isinstance(net[2 * i], layers.Dense) and isinstance(net[2 * i + 1], wn.Elementwise)
        assert net[2 * i].out_features == 16
    assert net[0].in_features == 7 and net[-1].in_features == 16 and net[-1].out_features == 4
    assert isinstance(net[-1], layers.Dense)
    assert all(m.parameterization == parameterization for m in net if isinstance(m, layers.Dense))
    assert net[0].weight.dtype == torch.float32
    same = arch.network(7, 16, seed=3)
    other = arch.network(7, 16, seed=4)
    for p, q, r in zip(net.parameters(), same.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
        assert not torch.equal(p, r)
    x = torch.randn(5, 7)
    assert torch.equal(net(x), same(x))
    assert net(x).shape == (5, 4)
    net64 = arch.network(7, 16, seed=3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in net64.parameters())
    assert torch.equal(net64[0].weight, arch.network(7, 16, seed=3, dtype=torch.float64)[0].weight)


def _check_normal(t: torch.Tensor, std: float):
    # For m i.i.d. N(0, std^2) draws the sample mean has sd std/sqrt(m) and the sample std has
    # sd ~ std/sqrt(2m); allow 5 of those.
    m = t.numel()
    assert abs(float(t.mean())) < 5 * std / math.sqrt(m)
    assert abs(float(t.std()) - std) < 5 * std / math.sqrt(2 * m)


def test_init_ntk_parameterization_is_standard_normal():
    net = wn.mlp(1, "relu", w_std=2.0, b_std=0.5).network(400, 500, seed=0, dtype=torch.float64)
    _check_normal(net[0].weight.detach(), 1.0)
    _check_normal(net[0].bias.detach(), 1.0)
    _check_normal(net[2].weight.detach(), 1.0)
    assert net[0].weight_scale == pytest.approx(2.0 / math.sqrt(400))
    assert net[0].bias_scale == 0.5


def test_init_standard_parameterization_scales():
    arch = wn.mlp(1, "relu", w_std=2.0, b_std=0.5, parameterization="standard")
    net = arch.network(400, 500, seed=0, dtype=torch.float64)
    _check_normal(net[0].weight.detach(), 2.0 / math.sqrt(400))
    _check_normal(net[0].bias.detach(), 0.5)
    _check_normal(net[2].weight.detach(), 2.0 / math.sqrt(500))
    assert net[0].weight_scale == 1.0 and net[0].bias_scale == 1.0


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_forward_formula(parameterization):
    gen = torch.Generator().manual_seed(0)
    layer = layers.Dense(
        6, 3, w_std=1.7, b_std=0.4, parameterization=parameterization, generator=gen
    ).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    w, b = layer.weight.detach(), layer.bias.detach()
    if parameterization == "ntk":
        expected = 1.7 / math.sqrt(6) * x @ w.T + 0.4 * b
    else:
        expected = x @ w.T + b
    torch.testing.assert_close(layer(x), expected, rtol=1e-14, atol=1e-14)


def test_network_on_device_argument_cpu():
    net = wn.mlp(1).network(3, 4, seed=0, device="cpu")
    assert net[0].weight.device.type == "cpu"
