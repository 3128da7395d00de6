r"""Activations and their Gaussian "dual" maps, the building block of every infinite-width kernel.

For a pre-activation pair (u, v) ~ N(0, [[q1, c], [c, q2]]) an activation phi has two duals

    T(q1, c, q2)     = E[phi(u) phi(v)]        (the NNGP map; Neal 1996, Lee et al. 2018)
    Tdot(q1, c, q2)  = E[phi'(u) phi'(v)]      (the NTK map; Jacot et al. 2018)

and by Price's theorem Tdot = dT/dc. Closed forms (rho = c / sqrt(q1 q2), theta = arccos rho):

- ``abrelu(a, b)``: phi(x) = a min(x, 0) + b max(x, 0), i.e. phi = a x + (b - a) relu(x):
  T = a b c + (b - a)^2 sqrt(q1 q2) (sin theta + (pi - theta) cos theta) / (2 pi)  (Cho & Saul 2009)
  Tdot = a b + (b - a)^2 (pi - theta) / (2 pi).
  ``relu`` is (0, 1), ``leaky_relu(s)`` is (s, 1), ``identity`` is (1, 1).
- ``erf``: T = (2/pi) arcsin(2c / sqrt((1 + 2 q1)(1 + 2 q2)))                  (Williams 1997)
  Tdot = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2).
- ``sin``: T = exp(-(q1 + q2)/2) sinh(c), Tdot = exp(-(q1 + q2)/2) cosh(c); ``cos`` swaps them.
- ``gelu`` (exact, phi(x) = x Phi(x)), with a_i = 1 + q_i and s = sqrt(a1 a2 - c^2):
  T = c/4 + c arcsin(c / sqrt(a1 a2)) / (2 pi) + (q1 q2 - c^2 + c^2/a1 + c^2/a2) / (2 pi s)
  Tdot = 1/4 + arcsin(c / sqrt(a1 a2)) / (2 pi) + c (a1 + a2 + 1 - c^2/a1 - c^2/a2) / (2 pi s^3).
  (Derived by Stein's lemma from Phi(u) = P(z <= u), z ~ N(0, 1); Tdot is dT/dc.)

Any other elementwise function (``tanh``, ``sigmoid``, ``softplus`` or a user's callable) has
numerical duals. The default (``rule="series"``) is Mehler's Hermite expansion

    T(q1, c, q2) = sum_k c_k(q1) c_k(q2) rho^k,   c_k(q) = E[phi(sqrt(q) z) He_k(z)] / sqrt(k!),

whose coefficients are 1-D integrals computed once per distinct variance of a call (a kernel
tile's rows and columns at one layer), so an entry costs K multiply-adds instead of a 2-D
quadrature: at n = 1000 the tanh kernel is >= 20x faster than the direct rule (see
``benchmarks/bench_quadrature.py``). K is chosen per call so that the truncation error is at
most 1e-13 relative (a bound from Parseval's identity); entries with |rho| = 1 are exact 1-D
integrals; where more than 2048 terms would be needed (kinks, or |rho| ~ 1 with a large
variance) the call falls back to the direct rule below. Measured against the independent
401-node reference (``tests/test_activations.py``, ``tests/test_activation_series.py``), for
q <= 25 and every rho in [-1, 1]: tanh, sigmoid, softplus, SiLU, erf <= 2e-13 (T and Tdot);
tanh^2 <= 1e-13 / 3e-11; relu as a callable within the direct rule's figures below.

The direct rule (``rule="trapezoid"``, or any call with ``nodes=``) is a
two-dimensional quadrature on u = sqrt(q1) z1, v = sqrt(q2)(rho z1 + sqrt(1 - rho^2) z2),
z1, z2 ~ N(0, 1), and autograd for phi'. It is the trapezoidal rule on [-8.5, 8.5]
with a node count per dimension that grows with the largest variance q of the call (60 nodes
for q <= 1, 100 for q <= 4, 220 for q <= 25, at most 400). It converges exponentially for
phi analytic in a strip, and unlike Gauss-Hermite keeps doing so when phi(sqrt(q) z) has
complex singularities near the real axis (tanh, sigmoid at large q). Measured against an
independent 401-node reference (``tests/test_activations.py``), errors relative to
sqrt(T(q1, q1, q1) T(q2, q2, q2)) for q <= 25 and every rho in [-1, 1]:

    tanh                 T <= 2e-10, Tdot <= 7e-8
    sigmoid, softplus, SiLU, erf     T and Tdot <= 2e-13
    tanh^2 (a product of poles)      T <= 1e-8,  Tdot <= 5e-6
    relu, leaky_relu (kinks; q <= 1) T <= 3e-3,  Tdot <= 2e-2 (algebraic convergence)

``rule="gauss-hermite"`` (64 nodes by default) is also available: as accurate for small
variances, but for tanh it reaches only 1e-4 / 4e-3 (T / Tdot) at q <= 4 and 2e-2 / 0.5 at
q <= 25. Past q ~ 100 the node cap bounds the trapezoidal rule too: pass ``nodes=`` or prefer a
closed form.

Numerical care: rho is clamped to [-1, 1] (rounding can push |c| past sqrt(q1 q2)); zero
variances give rho = 0 and a zero NNGP for homogeneous activations; differences such as
q1 q2 - c^2 are formed as q1 q2 (1 - rho^2) so that they never go negative or cancel
catastrophically; sin/cos use exponents that are never positive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

Dual = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], tuple]

_TWO_PI = 2.0 * math.pi


def correlation(q1: torch.Tensor, c: torch.Tensor, q2: torch.Tensor):
    """Return (rho, sqrt(q1 q2)) with rho clamped to [-1, 1] and rho = 0 where q1 q2 = 0."""
    norm = torch.sqrt(q1 * q2)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    rho = torch.where(norm > 0, c / safe, torch.zeros_like(c)).clamp_(-1.0, 1.0)
    return rho, norm


@dataclass(frozen=True)
class Activation:
    """An elementwise activation with its dual maps.

    ``fn`` is applied by the finite network; ``dual(q1, c, q2, need_dot)`` returns
    ``(E[phi(u) phi(v)], E[phi'(u) phi'(v)] or None)`` elementwise (broadcasting) for
    (u, v) ~ N(0, [[q1, c], [c, q2]]). ``closed_form`` is False for quadrature duals.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False)
    dual: Dual = field(compare=False, repr=False)
    closed_form: bool = True
    params: tuple = ()
    # Optional: the same map computed in place, allowed to overwrite (and return) ``c``, which
    # must then hold the full broadcast shape and dtype. The kernel recursion uses it on the
    # tiles it owns; ``dual`` must give bit-identical results (the diagonals go through it).
    dual_inplace: Dual | None = field(default=None, compare=False, repr=False)
    # (a, b) when phi(x) = a min(x, 0) + b max(x, 0) (relu, leaky_relu, abrelu, identity):
    # lets the FC recursion fuse its layers (widenet.kernels); None otherwise.
    abrelu: tuple[float, float] | None = field(default=None, compare=False, repr=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# --- closed forms -------------------------------------------------------------------------


def _abrelu_dual_inplace(a: float, b: float) -> Dual:
    """The (a, b)-ReLU duals with few passes over c, reusing c's memory when a * b == 0."""
    jump = (b - a) ** 2
    scale = jump / _TWO_PI
    ab = a * b

    def dual(q1, c, q2, need_dot):
        if jump == 0.0:  # linear: no arccos needed
            return c.mul_(ab), (torch.full_like(c, ab) if need_dot else None)
        # sqrt(q1 q2) (not sqrt(q1) sqrt(q2)): a symmetric diagonal c = q gives rho = 1 exactly.
        norm = torch.mul(q1, q2).sqrt_()
        neg_rho = c.div_(norm) if ab == 0.0 else torch.div(c, norm)  # keep c for a b c
        if bool((q1 == 0).any()) or bool((q2 == 0).any()):
            neg_rho = torch.where(norm > 0, neg_rho, torch.zeros_like(neg_rho))
        neg_rho.clamp_(-1.0, 1.0).neg_()
        pi_minus = torch.arccos(neg_rho)  # pi - arccos(rho)
        # sqrt(1 - rho^2) + (pi - theta) rho, then times sqrt(q1 q2) (b - a)^2 / (2 pi).
        nngp = torch.addcmul(neg_rho.new_ones(()), neg_rho, neg_rho, value=-1.0).sqrt_()
        nngp.addcmul_(pi_minus, neg_rho, value=-1.0).mul_(norm).mul_(scale)
        if ab != 0.0:
            nngp.add_(c, alpha=ab)
        dot = None
        if need_dot:
            dot = pi_minus.mul_(scale)
            if ab != 0.0:
                dot.add_(ab)
        return nngp, dot

    return dual


def _abrelu_duals(a: float, b: float) -> tuple[Dual, Dual]:
    """(dual, dual_inplace) for phi(x) = a min(x, 0) + b max(x, 0); the first copies c."""
    inplace = _abrelu_dual_inplace(a, b)

    def dual(q1, c, q2, need_dot):
        q1, c, q2 = (torch.as_tensor(t) for t in (q1, c, q2))
        shape = torch.broadcast_shapes(q1.shape, c.shape, q2.shape)
        dtype = torch.promote_types(torch.promote_types(q1.dtype, c.dtype), q2.dtype)
        own = torch.empty(shape, dtype=dtype, device=c.device).copy_(c)
        return inplace(q1.to(dtype), own, q2.to(dtype), need_dot)

    return dual, inplace


def _abrelu_activation(name: str, fn, a: float, b: float, params: tuple = ()) -> Activation:
    dual, inplace = _abrelu_duals(a, b)
    return Activation(name, fn, dual, params=params, dual_inplace=inplace, abrelu=(a, b))


def abrelu(a: float, b: float) -> Activation:
    """phi(x) = a min(x, 0) + b max(x, 0) (neural-tangents' ``ABRelu``)."""
    a, b = float(a), float(b)
    for name, v in (("a", a), ("b", b)):
        if not math.isfinite(v):
            raise ValueError(f"abrelu: {name} must be finite, got {v!r}")

    def fn(x):
        return a * torch.clamp(x, max=0) + b * torch.clamp(x, min=0)

    return _abrelu_activation(f"abrelu(a={a!r}, b={b!r})", fn, a, b, params=(a, b))


def relu() -> Activation:
    return _abrelu_activation("relu", torch.relu, 0.0, 1.0)


def leaky_relu(slope: float = 0.01) -> Activation:
    """phi(x) = max(x, slope x) as ``torch.nn.functional.leaky_relu`` (default slope 0.01)."""
    slope = float(slope)
    if not math.isfinite(slope):
        raise ValueError(f"leaky_relu: slope must be finite, got {slope!r}")

    def fn(x):
        return torch.nn.functional.leaky_relu(x, slope)

    return _abrelu_activation(f"leaky_relu(slope={slope!r})", fn, slope, 1.0, params=(slope,))


def identity() -> Activation:
    return _abrelu_activation("identity", lambda x: x, 1.0, 1.0)


def _erf_dual(q1, c, q2, need_dot):
    rho, norm = correlation(q1, c, q2)
    a1, a2 = 1.0 + 2.0 * q1, 1.0 + 2.0 * q2
    nngp = torch.arcsin((2.0 * c / torch.sqrt(a1 * a2)).clamp_(-1.0, 1.0)) * (2.0 / math.pi)
    dot = None
    if need_dot:
        det = 4.0 * norm * norm * (1.0 - rho * rho) + 2.0 * (q1 + q2) + 1.0
        dot = (4.0 / math.pi) * torch.rsqrt(det)
    return nngp, dot


def erf() -> Activation:
    return Activation("erf", torch.erf, _erf_dual)


def _trig_parts(q1, c, q2):
    # e^{-(q1+q2)/2} sinh(c) = (e^{-(q1+q2-2c)/2} - e^{-(q1+q2+2c)/2}) / 2, both exponents <= 0.
    s = q1 + q2
    plus = torch.exp(-0.5 * (s - 2.0 * c))
    minus = torch.exp(-0.5 * (s + 2.0 * c))
    return 0.5 * (plus - minus), 0.5 * (plus + minus)


def _sin_dual(q1, c, q2, need_dot):
    sinh, cosh = _trig_parts(q1, c, q2)
    return sinh, (cosh if need_dot else None)


def _cos_dual(q1, c, q2, need_dot):
    sinh, cosh = _trig_parts(q1, c, q2)
    return cosh, (sinh if need_dot else None)


def sin() -> Activation:
    return Activation("sin", torch.sin, _sin_dual)


def cos() -> Activation:
    return Activation("cos", torch.cos, _cos_dual)


def _gelu_dual(q1, c, q2, need_dot):
    rho, norm = correlation(q1, c, q2)
    a1, a2 = 1.0 + q1, 1.0 + q2
    s2 = norm * norm * (1.0 - rho * rho) + q1 + q2 + 1.0  # = a1 a2 - c^2 > 0
    s = torch.sqrt(s2)
    asin = torch.arcsin((c * torch.rsqrt(a1 * a2)).clamp_(-1.0, 1.0))
    c2 = c * c
    inv = 1.0 / a1 + 1.0 / a2
    nngp = c * (0.25 + asin / _TWO_PI) + (q1 * q2 - c2 + c2 * inv) / (_TWO_PI * s)
    dot = None
    if need_dot:
        dot = 0.25 + asin / _TWO_PI + c * (a1 + a2 + 1.0 - c2 * inv) / (_TWO_PI * s * s2)
    return nngp, dot


def gelu() -> Activation:
    """Exact GELU, phi(x) = x Phi(x) (``torch.nn.functional.gelu`` with approximate='none')."""
    return Activation("gelu", torch.nn.functional.gelu, _gelu_dual)


# --- quadrature for any elementwise function ------------------------------------------------

QUADRATURE_RULES = ("series", "trapezoid", "gauss-hermite")
MAX_NODES = 400
# Half-width of the trapezoid grid: P(|z| > 8.5) = 2e-17 for z ~ N(0, 1).
_TRAPEZOID_HALF_WIDTH = 8.5


def _nodes_for(q_max: float) -> int:
    """Trapezoid nodes per dimension for the largest variance ``q_max`` of a call.

    The rule's error for phi analytic in |Im x| < a decays like exp(-2 pi a / (sqrt(q) h));
    h ~ 0.28 / sqrt(max(q, 1)) makes it < 1e-9 for tanh (a = pi / 2). Quantised in steps of 20
    so that blocks with similar variances use the same rule.
    """
    return min(20 * math.ceil(2.0 * math.sqrt(max(q_max, 0.25))) + 20, MAX_NODES)


def _rule(rule: str, nodes: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z_k and weights w_k with E[g(z)] ~= sum_k w_k g(z_k) for z ~ N(0, 1)."""
    if rule == "gauss-hermite":
        z, w = np.polynomial.hermite_e.hermegauss(nodes)
        w = w / math.sqrt(2.0 * math.pi)
    else:
        z = np.linspace(-_TRAPEZOID_HALF_WIDTH, _TRAPEZOID_HALF_WIDTH, nodes)
        w = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * (z[1] - z[0])
    return (
        torch.as_tensor(z, dtype=dtype, device=device),
        torch.as_tensor(w, dtype=dtype, device=device),
    )


def _derivative(fn: Callable) -> Callable:
    grad = torch.func.grad(lambda t: fn(t).sum())
    return lambda x: grad(x)


def _quadrature_dual(fn: Callable, dfn: Callable, rule: str, nodes: int | None) -> Dual:
    def dual(q1, c, q2, need_dot):
        q1, c, q2 = torch.broadcast_tensors(q1, c, q2)
        n = nodes
        if n is None:
            q_max = float(torch.maximum(q1.max(), q2.max())) if c.numel() else 0.0
            n = _nodes_for(q_max) if rule == "trapezoid" else 64
        z, w = _rule(rule, n, c.dtype, c.device)
        rho, _ = correlation(q1, c, q2)
        # u = sqrt(q1) z1, v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2).
        s1, s2 = torch.sqrt(q1).unsqueeze(-1), torch.sqrt(q2).unsqueeze(-1)
        rho = rho.unsqueeze(-1)
        perp = torch.sqrt((1.0 - rho * rho).clamp_(min=0.0))
        nngp = torch.zeros_like(c)
        dot = torch.zeros_like(c) if need_dot else None
        # Outer sum over z1 nodes keeps memory at (entries x nodes).
        for zi, wi in zip(z, w, strict=True):
            u = s1 * zi
            v = s2 * (rho * zi + perp * z)
            nngp += wi * fn(u).squeeze(-1) * (fn(v) @ w)
            if need_dot:
                dot += wi * dfn(u).squeeze(-1) * (dfn(v) @ w)
        return nngp, dot

    return dual


# --- the Hermite (Mehler) series of the duals ---------------------------------------------------

# Series terms at most; past this the call falls back to the direct 2-D quadrature.
MAX_SERIES_TERMS = 2048
# Relative truncation error the series is cut at (see :func:`hermite_series_dual`).
SERIES_TOL = 1e-13
# 1-D trapezoid grid of the coefficients: step 0.01 on [-12, 12]. The integrands
# phi(sqrt(q) z) He_k(z) e^{-z^2/2} / sqrt(k!) decay like e^{-z^2/4} past the oscillatory
# region |z| < 2 sqrt(k) (e^{-36} ~ 2e-16 at the ends), oscillate with wavelength
# ~ 2 pi / sqrt(k) >= 0.14 for k <= 2048, and tanh's poles at distance pi / (2 sqrt(q)) cost
# ~ exp(-2 pi^2 / (2 sqrt(q) 0.01)) (< 1e-40 for q <= 100).
_SERIES_HALF_WIDTH = 12.0
_SERIES_STEP = 0.01
_SERIES_CHUNK = 128


def _series_grid(dtype, device):
    z = np.arange(-_SERIES_HALF_WIDTH, _SERIES_HALF_WIDTH + _SERIES_STEP / 2, _SERIES_STEP)
    w = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * _SERIES_STEP
    return torch.as_tensor(z, dtype=dtype, device=device), torch.as_tensor(
        w, dtype=dtype, device=device
    )


_HERMITE_TABLES: dict = {}


def _hermite_chunk(i: int, device) -> torch.Tensor:
    """Rows k = i*CHUNK .. (i+1)*CHUNK - 1 of psi_k(z) = He_k(z) / sqrt(k!) on the grid, as
    (grid, CHUNK), float64; computed once per device (three-term recurrence) and cached."""
    key = str(torch.device(device))
    table = _HERMITE_TABLES.setdefault(key, {"chunks": [], "state": None})
    while len(table["chunks"]) <= i:
        z, _ = _series_grid(torch.float64, device)
        if table["state"] is None:
            table["state"] = (torch.zeros_like(z), torch.ones_like(z), 0)  # psi_{-1}, psi_0
        prev, cur, k = table["state"]
        rows = []
        for _ in range(_SERIES_CHUNK):
            rows.append(cur)
            # psi_{k+1} = (z psi_k - sqrt(k) psi_{k-1}) / sqrt(k + 1)
            prev, cur = cur, (z * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
            k += 1
        table["state"] = (prev, cur, k)
        table["chunks"].append(torch.stack(rows, 1))
    return table["chunks"][i]


def hermite_coefficients(
    fn: Callable, q: torch.Tensor, rho_max: float, *, tol: float = SERIES_TOL
) -> torch.Tensor | None:
    """c_k(q) = E[phi(sqrt(q) z) He_k(z)] / sqrt(k!), k = 0..K, for every variance in ``q``.

    ``q`` is 1-D (float64); returns (len(q), K + 1) with the smallest K whose truncation bound
    rho_max^{K+1} (E[phi(sqrt(q) z)^2] - sum_{j<=K} c_j^2) <= tol E[phi(sqrt(q) z)^2] holds
    for every q (Parseval: sum_j c_j^2 = E[phi^2]), or None when K would exceed
    :data:`MAX_SERIES_TERMS`. Integrals by the 1-D trapezoid rule above; the normalised
    Hermite polynomials come from their three-term recurrence (stable, no factorials).
    """
    z, w = _series_grid(torch.float64, q.device)
    values = fn(torch.sqrt(q)[:, None] * z)  # (m, N)
    if values.shape != (q.shape[0], z.shape[0]):
        raise ValueError("a quadrature activation must be elementwise (shape-preserving)")
    phi = values.to(torch.float64) * w
    energy = (phi * values.to(torch.float64)).sum(1)  # E[phi^2]
    floor = torch.clamp(energy, min=1e-300)
    chunks, total = [], torch.zeros_like(q)
    for i in range(MAX_SERIES_TERMS // _SERIES_CHUNK):
        block = phi @ _hermite_chunk(i, q.device)  # (m, chunk)
        chunks.append(block)
        # The bound after each term j: rho_max^{j+1} (E - sum_{i<=j} c_i^2) / E.
        partial = total[:, None] + torch.cumsum(block * block, 1)
        total = partial[:, -1]
        j = torch.arange(
            i * _SERIES_CHUNK, (i + 1) * _SERIES_CHUNK, dtype=torch.float64, device=q.device
        )
        bound = rho_max ** (j + 1.0) * torch.clamp(energy[:, None] - partial, min=0.0)
        ok = (bound <= tol * floor[:, None]).all(0)
        if bool(ok.any()):
            last = int(j[int(torch.nonzero(ok)[0])])
            return torch.cat(chunks, 1)[:, : last + 1]
    return None


def _pair_coefficients(fn, q1: torch.Tensor, q2: torch.Tensor, rho_max: float):
    """Hermite coefficients (one K for both) for each entry of q1 and of q2, or None."""
    flat = torch.cat([q1.reshape(-1), q2.reshape(-1)]).to(torch.float64)
    values, inverse = torch.unique(flat, return_inverse=True)
    coef = hermite_coefficients(fn, values, rho_max)
    if coef is None:
        return None
    n1 = q1.numel()
    return (
        coef[inverse[:n1]].reshape(*q1.shape, -1),
        coef[inverse[n1:]].reshape(*q2.shape, -1),
    )


def hermite_series_dual(fn: Callable, dfn: Callable, fallback: Dual) -> Dual:
    r"""The duals by Mehler's formula: E[phi(u) phi(v)] = sum_k c_k(q1) c_k(q2) rho^k.

    For (u, v) ~ N(0, [[q1, c], [c, q2]]), u = sqrt(q1) z1, v = sqrt(q2) z2 with corr(z1, z2)
    = rho, and Mehler's expansion of the bivariate normal density in Hermite polynomials gives
    T = sum_k c_k(q1) c_k(q2) rho^k with c_k(q) = E[phi(sqrt(q) z) He_k(z)] / sqrt(k!) (and the
    same with phi' for Tdot). The coefficients are one-dimensional integrals, computed once per
    distinct variance of a call (i.e. per layer of a kernel tile: the rows' and the columns'
    variances), so each kernel entry costs K + 1 multiply-adds (Horner in rho) instead of a
    2-D quadrature of phi. K is chosen per call from the largest |rho| among the entries with
    |rho| < 1 so that the truncation error is at most SERIES_TOL (1e-13) times
    sqrt(E[phi(u)^2] E[phi(v)^2]) (Cauchy-Schwarz on the tail, bounded by Parseval); entries
    with |rho| = 1 exactly (each point with itself) are the 1-D integral E[phi(u) phi(±u')]
    on the same grid. When K would exceed MAX_SERIES_TERMS (kinked phi such as ReLU, whose
    coefficients decay algebraically, or a large variance with |rho| near 1) the call uses
    ``fallback``, the 2-D quadrature, so accuracy is never below it.
    """

    def one_dim(f, q1, rho, q2):
        z, w = _series_grid(torch.float64, q1.device)
        a = f(torch.sqrt(q1.to(torch.float64))[:, None] * z).to(torch.float64)
        b = f((torch.sign(rho) * torch.sqrt(q2)).to(torch.float64)[:, None] * z)
        return (a * b.to(torch.float64)) @ w

    def series(f, q1, rho, q2, rho_max):
        edge = rho.abs() == 1.0
        if bool(edge.all()):  # e.g. the variances of the inputs themselves: only 1-D integrals
            b1, b2 = torch.broadcast_to(q1, rho.shape), torch.broadcast_to(q2, rho.shape)
            return one_dim(f, b1.reshape(-1), rho.reshape(-1), b2.reshape(-1)).reshape(rho.shape)
        pair = _pair_coefficients(f, q1, q2, rho_max)
        if pair is None:
            return None
        c1, c2 = (p.to(rho.dtype) for p in pair)
        terms = c1.shape[-1]
        out = torch.zeros(rho.shape, dtype=rho.dtype, device=rho.device)
        for k in range(terms - 1, -1, -1):  # Horner: ((c_K rho + c_{K-1}) rho + ...) + c_0
            out.mul_(rho).addcmul_(c1[..., k], c2[..., k])
        if bool(edge.any()):
            idx = torch.nonzero(edge, as_tuple=True)
            b1, b2 = torch.broadcast_to(q1, rho.shape), torch.broadcast_to(q2, rho.shape)
            out[idx] = one_dim(f, b1[idx], rho[idx], b2[idx]).to(rho.dtype)
        return out

    def dual(q1, c, q2, need_dot):
        q1, c, q2 = (torch.as_tensor(t) for t in (q1, c, q2))
        rho, _ = correlation(q1, c, q2)
        inner = rho.abs()[rho.abs() < 1.0]
        rho_max = float(inner.max()) if inner.numel() else 0.0
        nngp = series(fn, q1, rho, q2, rho_max)
        dot = series(dfn, q1, rho, q2, rho_max) if need_dot and nngp is not None else None
        if nngp is None or (need_dot and dot is None):
            return fallback(q1, c, q2, need_dot)
        return nngp.to(c.dtype), (dot.to(c.dtype) if need_dot else None)

    return dual


def quadrature(
    fn: Callable[[torch.Tensor], torch.Tensor],
    name: str | None = None,
    *,
    derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rule: str | None = None,
    nodes: int | None = None,
) -> Activation:
    """An activation whose duals are Gaussian integrals of ``fn``, computed numerically.

    ``fn`` must be an elementwise torch function; its derivative comes from autograd unless
    ``derivative`` is given. ``rule``: "series" (the default unless ``nodes`` is given: the
    Hermite series of :func:`hermite_series_dual`, falling back to "trapezoid" where the
    series would need more than MAX_SERIES_TERMS terms), "trapezoid" (the direct 2-D rule;
    ``nodes`` per dimension chosen from the largest variance unless given) or "gauss-hermite"
    (``nodes`` default 64). See the module docstring for the accuracy of each.
    """
    if not callable(fn):
        raise TypeError(f"activation must be a name or a callable, got {fn!r}")
    if rule is None:
        rule = "series" if nodes is None else "trapezoid"
    if rule not in QUADRATURE_RULES:
        raise ValueError(f"rule must be one of {QUADRATURE_RULES}, got {rule!r}")
    if nodes is not None and rule == "series":
        raise ValueError("nodes applies to rule='trapezoid' or 'gauss-hermite', not 'series'")
    if nodes is not None and (
        isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= MAX_NODES
    ):
        # numpy's Gauss-Hermite weights underflow to NaN beyond ~300 nodes.
        raise ValueError(f"nodes must be an integer in [2, {MAX_NODES}] or None, got {nodes!r}")
    dfn = derivative if derivative is not None else _derivative(fn)
    label = name or getattr(fn, "__name__", "custom")
    if rule == "series":
        dual = hermite_series_dual(fn, dfn, _quadrature_dual(fn, dfn, "trapezoid", None))
    else:
        dual = _quadrature_dual(fn, dfn, rule, nodes)
    return Activation(label, fn, dual, closed_form=False)


_CLOSED = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "identity": identity,
    "linear": identity,
    "erf": erf,
    "gelu": gelu,
    "sin": sin,
    "cos": cos,
}


def _dsigmoid(x):
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _dsilu(x):
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


# name -> (phi, phi'): explicit derivatives spare autograd on every quadrature node.
_QUADRATURE = {
    "tanh": (torch.tanh, lambda x: 1.0 - torch.tanh(x).square()),
    "sigmoid": (torch.sigmoid, _dsigmoid),
    "softplus": (torch.nn.functional.softplus, torch.sigmoid),
    "silu": (torch.nn.functional.silu, _dsilu),
    "elu": (torch.nn.functional.elu, lambda x: torch.where(x > 0, 1.0, torch.exp(x.clamp(max=0)))),
}
NAMES = tuple(_CLOSED) + tuple(_QUADRATURE)


_WITH_PARAMS = {"leaky_relu": (leaky_relu, ("slope",)), "abrelu": (abrelu, ("a", "b"))}
_CALL = re.compile(r"^([a-z_]+)\((.*)\)$")


def _parse_call(text: str) -> Activation:
    """``leaky_relu(0.1)``, ``leaky_relu(slope=0.1)``, ``abrelu(a=-0.5, b=2)`` (as in names)."""
    name, args = _CALL.match(text).groups()
    if name not in _WITH_PARAMS:
        raise ValueError(
            f"activation {text!r}: only leaky_relu(...) and abrelu(...) take arguments"
        )
    make, keys = _WITH_PARAMS[name]
    values = {}
    for i, part in enumerate(p.strip() for p in args.split(",") if p.strip()):
        key, _, raw = part.rpartition("=")
        key = key.strip() or (keys[i] if i < len(keys) else "")
        if key not in keys or key in values:
            raise ValueError(f"activation {text!r}: expected arguments {', '.join(keys)}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"activation {text!r}: {key} must be a number, got {raw!r}") from None
    if name == "abrelu" and len(values) != 2:
        raise ValueError(f"activation {text!r}: abrelu needs both a and b")
    return make(**values)


def get(activation) -> Activation:
    """Resolve ``activation`` (a name, an ``Activation`` or an elementwise callable).

    Names with parameters read as the activations' own names: ``"leaky_relu(0.1)"``,
    ``"abrelu(a=-0.5, b=2)"``, so ``get(act.name)`` rebuilds ``act`` for these.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower().replace(" ", "")
        if key in _CLOSED:
            return _CLOSED[key]()
        if key in _QUADRATURE:
            fn, derivative = _QUADRATURE[key]
            return quadrature(fn, key, derivative=derivative)
        if _CALL.match(key):
            return _parse_call(key)
        if key == "abrelu":
            raise ValueError(
                "activation 'abrelu' needs its slopes: 'abrelu(a, b)' or "
                "widenet.activations.abrelu(a, b)"
            )
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(NAMES)}, "
            "'leaky_relu(slope)' or 'abrelu(a, b)'"
        )
    if callable(activation):
        return quadrature(activation)
    raise TypeError(
        f"activation must be a name, a widenet Activation or a callable, got {activation!r}"
    )
