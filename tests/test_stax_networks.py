"""Independent check of the composable kernels: the mean empirical NNGP/NTK of ``arch.network``
over many seeds converges to ``arch.kernel`` as the width grows, at the Monte-Carlo rate.

As in ``test_networks.py`` the empirical NTK is J J^T computed from scratch with ``torch.func``
(independent of ``widenet.empirical``), and the NNGP is checked through the readout's
conditional covariance w^2 h h^T / width + b^2 of the last hidden features h.
"""

from __future__ import annotations

import pytest
import torch
from montecarlo import empirical_ntk, mc_stats

import widenet as wn

F64 = torch.float64
W_OUT, B_OUT = 1.2, 0.2  # readout of every architecture below


def conditional_nngp(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """E[f f^T | last hidden features h] over the readout: w^2 h h^T / fan_in + b^2."""
    with torch.no_grad():
        h = net[:-1](x)
    return W_OUT**2 * h @ h.T / h.shape[1] + B_OUT**2


# Tolerance, derived as for the MLP (test_networks.py): |mean - closed form| <= 5 standard errors
# (a 5-sigma band on the Frobenius norm of the mean's error; seeds are fixed, so the test is
# deterministic) plus the finite-width bias, O(depth / width) for the NTK (Hanin & Nica 2019) and
# O(1 / width) for the NNGP, the width being the channel count; C_BIAS = 4 as for the MLP (the
# measured bias terms are far below it: err <= 1.3 se at widths 32 and 256).
C_BIAS = 4.0


def _readout():
    return wn.Dense(1, w_std=W_OUT, b_std=B_OUT)


CNN_GAP = wn.serial(
    wn.Conv(kernel_size=3, w_std=1.4, b_std=0.1),
    wn.Relu(),
    wn.Conv(kernel_size=3, w_std=1.4, b_std=0.1),
    wn.Relu(),
    wn.GlobalAvgPool(),
    _readout(),
)
RESIDUAL = wn.serial(
    wn.Conv(kernel_size=3, w_std=1.2, b_std=0.1),
    wn.Residual(wn.Relu(), wn.Conv(kernel_size=3, w_std=1.4)),
    wn.AvgPool(2, stride=1),
    wn.Relu(),
    wn.Flatten(),
    _readout(),
)
SEQUENCE = wn.serial(
    wn.Conv(kernel_size=4, stride=2, padding="circular", w_std=1.3, b_std=0.2),
    wn.LayerNorm(),
    wn.Erf(),
    wn.Conv(kernel_size=2, padding="valid", w_std=1.5, b_std=None),
    wn.Gelu(),
    wn.GlobalAvgPool(),
    _readout(),
)
# Wrong kernels the Monte-Carlo means must reject (so that the check can fail).
WRONG = {
    "cnn_gap": wn.serial(*CNN_GAP.layers[:4], wn.Flatten(), _readout()),
    "residual": wn.serial(RESIDUAL.layers[0], *RESIDUAL.layers[1].layers, *RESIDUAL.layers[2:]),
    "sequence": wn.serial(SEQUENCE.layers[0], *SEQUENCE.layers[2:]),
}
ARCHS = {"cnn_gap": CNN_GAP, "residual": RESIDUAL, "sequence": SEQUENCE}


def _inputs(name, n=6):
    g = torch.Generator().manual_seed(1)
    shape = (n, 3, 11) if name == "sequence" else (n, 2, 5, 5)
    return torch.randn(*shape, generator=g, dtype=F64)


def _samples(arch, x, width, seeds):
    nets = [arch.network(in_shape=x.shape[1:], width=width, seed=s, dtype=F64) for s in seeds]
    ntk = torch.stack([empirical_ntk(net, x) for net in nets])
    nngp = torch.stack([conditional_nngp(net, x) for net in nets])
    return nngp, ntk


def _check(name, widths, seeds, rms_factor, bias_factor=1.0):
    arch, x = ARCHS[name], _inputs(name)
    k = arch.kernel(x)
    rms = {"nngp": [], "ntk": []}
    for width in widths:
        nngp, ntk = _samples(arch, x, width, seeds)
        for what, samples, target in (("nngp", nngp, k.nngp), ("ntk", ntk, k.ntk)):
            err, se, dev = mc_stats(samples, target)
            assert err <= 5 * se + bias_factor * C_BIAS / width, (name, what, width, err, se)
            rms[what].append(dev)
    # The wrong kernel lies far outside the same band at the largest width.
    wrong = WRONG[name].kernel(x).ntk
    err, se, _ = mc_stats(ntk, wrong)
    assert err > 5 * se + bias_factor * C_BIAS / widths[-1], (name, "wrong kernel", err, se)
    # Per-network kernels concentrate like 1/sqrt(width).
    for what, r in rms.items():
        for a, b in zip(r, r[1:], strict=False):
            assert b < a / rms_factor, (name, what, r)


@pytest.mark.parametrize("name", list(ARCHS))
def test_mc_kernels_converge(name):
    # 8x the width should shrink the rms deviation ~ sqrt(8) = 2.8x (measured 4-5x); demand
    # 1.8x, robust to the ~30 % sampling error of a 6-seed rms.
    _check(name, (32, 256), range(6), rms_factor=1.8)


def test_mc_ntk_standard_parameterization_cnn():
    arch = wn.serial(
        wn.Conv(kernel_size=3, w_std=1.4, b_std=0.1, parameterization="standard"),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=W_OUT, b_std=B_OUT, parameterization="standard"),
    )
    x = _inputs("cnn_gap")
    width = 128
    k = arch.kernel(x, width=width)
    _, ntk = _samples(arch, x, width, range(6))
    err, se, _ = mc_stats(ntk, k.ntk)
    assert err <= 5 * se + C_BIAS / width, (err, se)
    # The standard-parameterization NTK grows with the width, the NNGP does not.
    k2 = arch.kernel(x, width=2 * width)
    assert 1.5 < float(k2.ntk.trace() / k.ntk.trace()) < 2.0
    torch.testing.assert_close(k2.nngp, k.nngp, rtol=1e-13, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_mc_kernels_converge_slow(name):
    # 4x width each step: expect 2x; demand 1.5x. 16 seeds. Measured: all three pass; residual
    # 247 s and sequence 48 s wall on the 2-core development machine at load ~12.
    _check(name, (64, 256, 1024), range(16), rms_factor=1.5, bias_factor=1.5)
