"""The Hermite-series duals (rule="series", the default of quadrature activations).

References: the independent 2-D trapezoid rule of test_activations (itself checked against
scipy.integrate.quad), closed forms (erf, relu), Monte Carlo, and the direct quadrature path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_activations import _scale, ref_dual

import widenet as wn
from widenet import activations as A

F64 = torch.float64


def _points(qs, rhos):
    pts = [(a, r * math.sqrt(a * b), b) for a in qs for b in qs for r in rhos]
    return pts, tuple(torch.tensor(v, dtype=F64) for v in zip(*pts, strict=True))


@pytest.mark.parametrize("q", [1.0, 4.0, 25.0])
def test_series_near_rho_one_against_reference(q):
    # |rho| close to 1 (near-duplicate inputs) needs the most terms: the accuracy bound of the
    # docstring (1e-13 truncation + the coefficients' quadrature) must hold there too.
    # Measured: <= 2e-13 (T) and <= 3e-13 (Tdot) relative, or the trapezoid fallback's own
    # documented error at q = 25; bounds 1e-12 and the fallback's documented 2e-10 / 7e-8.
    pts, (q1, c, q2) = _points((q, q / 3), (-0.999, -0.9, 0.3, 0.99, 0.9999))
    t, d = A.get("tanh").dual(q1, c, q2, True)
    tol_t, tol_d = (1e-12, 1e-12) if q <= 4 else (2e-10, 7e-8)
    for i, (a, cc, b) in enumerate(pts):
        for f, got, tol in (
            (np.tanh, t[i], tol_t),
            (lambda x: 1 - np.tanh(x) ** 2, d[i], tol_d),
        ):
            err = abs(float(got) - ref_dual(f, a, cc, b)) / _scale(f, a, b)
            assert err < tol, (a, cc, b, err)


def test_series_matches_closed_forms_and_parseval():
    _, (q1, c, q2) = _points((0.2, 1.0, 3.0), (-1.0, -0.7, 0.0, 0.5, 0.95, 1.0))
    t_s, d_s = A.quadrature(torch.erf).dual(q1, c, q2, True)
    t_c, d_c = A.erf().dual(q1, c, q2, True)
    # erf is entire: the series is exact to its 1e-13 truncation; measured 6e-14.
    torch.testing.assert_close(t_s, t_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(d_s, d_c, rtol=0, atol=1e-12)
    # ReLU (kinks: coefficients decay algebraically) still meets the closed form to the
    # quadrature's documented level (5e-3 / 3e-2), by the series or by the fallback.
    t_s, d_s = A.quadrature(torch.relu).dual(q1, c, q2, True)
    t_c, d_c = A.relu().dual(q1, c, q2, True)
    assert float((t_s - t_c).abs().max()) < 5e-3 and float((d_s - d_c).abs().max()) < 3e-2
    # Parseval: sum_k c_k(q)^2 = E[phi(sqrt(q) z)^2] (= T(q, q, q)) to the truncation bound.
    q = torch.tensor([0.5, 2.0], dtype=F64)
    coef = A.hermite_coefficients(torch.tanh, q, 1.0)
    var = A.get("tanh").dual(q, q, q, False)[0]
    torch.testing.assert_close((coef * coef).sum(1), var, rtol=1e-12, atol=0)


def test_series_against_monte_carlo():
    # An independent estimator: 2e6 Gaussian pairs. Standard errors ~1.4e-4 (T, values in
    # [0, 1]) and ~1.4e-5 (Tdot, values <= 1/16); the bounds are ~7-10 of them.
    g = torch.Generator().manual_seed(0)
    q1, q2, rho = 2.0, 0.7, 0.6
    z1, z2 = torch.randn(2, 2_000_000, generator=g, dtype=F64)
    u = math.sqrt(q1) * z1
    v = math.sqrt(q2) * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
    sig = torch.sigmoid
    mc = float((sig(u) * sig(v)).mean())
    mc_dot = float((sig(u) * (1 - sig(u)) * sig(v) * (1 - sig(v))).mean())
    c = torch.tensor(rho * math.sqrt(q1 * q2), dtype=F64)
    t, d = A.get("sigmoid").dual(torch.tensor(q1, dtype=F64), c, torch.tensor(q2, dtype=F64), True)
    assert abs(float(t) - mc) < 1e-3 and abs(float(d) - mc_dot) < 1.5e-4


def test_fallback_is_the_trapezoid_rule(monkeypatch):
    _, (q1, c, q2) = _points((0.5, 2.0), (-0.9, 0.2, 0.99))
    trapezoid = A.quadrature(torch.tanh, rule="trapezoid").dual(q1, c, q2, True)
    monkeypatch.setattr(A, "MAX_SERIES_TERMS", A._SERIES_CHUNK)  # too few terms: fall back
    series = A.quadrature(torch.tanh).dual(q1, c, q2, True)
    for a, b in zip(series, trapezoid, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_series_kernel_equals_trapezoid_kernel_and_float32():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    new = wn.mlp(2, "tanh").kernel(x, x[:30])
    old = wn.mlp(2, A.quadrature(torch.tanh, rule="trapezoid")).kernel(x, x[:30])
    # The trapezoid's own error at these variances (q <= 2) is <= 1e-10 (documented table).
    torch.testing.assert_close(new.ntk, old.ntk, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(new.nngp, old.nngp, rtol=1e-9, atol=1e-10)
    k32 = wn.mlp(2, "tanh").kernel(x.float())
    assert k32.ntk.dtype == torch.float32
    torch.testing.assert_close(
        k32.ntk.double(), wn.mlp(2, "tanh").kernel(x).ntk, rtol=1e-5, atol=1e-5
    )


def test_rule_errors():
    with pytest.raises(ValueError, match="nodes applies"):
        A.quadrature(torch.tanh, rule="series", nodes=40)
    with pytest.raises(ValueError, match="elementwise"):
        A.quadrature(lambda x: x.sum(-1)).dual(
            torch.tensor([1.0], dtype=F64),
            torch.tensor([0.5], dtype=F64),
            torch.tensor([1.0], dtype=F64),
            False,
        )
