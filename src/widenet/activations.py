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

Any other elementwise function (``tanh``, ``sigmoid``, ``softplus`` or a user's callable) uses a
two-dimensional quadrature on u = sqrt(q1) z1, v = sqrt(q2)(rho z1 + sqrt(1 - rho^2) z2),
z1, z2 ~ N(0, 1), and autograd for phi'. The default rule is the trapezoidal rule on [-8.5, 8.5]
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
    return Activation(name, fn, dual, params=params, dual_inplace=inplace)


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

QUADRATURE_RULES = ("trapezoid", "gauss-hermite")
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


def quadrature(
    fn: Callable[[torch.Tensor], torch.Tensor],
    name: str | None = None,
    *,
    derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rule: str = "trapezoid",
    nodes: int | None = None,
) -> Activation:
    """An activation whose duals come from a 2-D quadrature rule on the Gaussian measure.

    ``fn`` must be an elementwise torch function; its derivative comes from autograd unless
    ``derivative`` is given. ``rule``: "trapezoid" (default; ``nodes`` per dimension chosen from
    the largest variance unless given) or "gauss-hermite" (``nodes`` default 64). See the module
    docstring for the accuracy of each.
    """
    if not callable(fn):
        raise TypeError(f"activation must be a name or a callable, got {fn!r}")
    if rule not in QUADRATURE_RULES:
        raise ValueError(f"rule must be one of {QUADRATURE_RULES}, got {rule!r}")
    if nodes is not None and (
        isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= MAX_NODES
    ):
        # numpy's Gauss-Hermite weights underflow to NaN beyond ~300 nodes.
        raise ValueError(f"nodes must be an integer in [2, {MAX_NODES}] or None, got {nodes!r}")
    dfn = derivative if derivative is not None else _derivative(fn)
    label = name or getattr(fn, "__name__", "custom")
    return Activation(label, fn, _quadrature_dual(fn, dfn, rule, nodes), closed_form=False)


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
