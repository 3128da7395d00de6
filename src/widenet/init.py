r"""Initialization schemes for any ``torch.nn.Module``, and the critical (edge-of-chaos) point.

Every scheme draws the *effective* weight of each weighted layer (``nn.Linear`` and its
subclasses such as widenet's ``Dense``, ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d``) from
a distribution with the stated variance; other modules (norms, embeddings) are left as they are.
fan_in = in_features (times the kernel size for a convolution), fan_out = out_features (idem),
computed as ``torch.nn.init`` does. Biases are set to 0 unless the scheme says otherwise.

================== ========================================== ===================================
scheme             Var(W_ij)                                   paper
================== ========================================== ===================================
naive              1 / (3 fan_in)  (U[-1/sqrt(fan_in), +])     Glorot & Bengio 2010, eq. 1 (the
                                                               "commonly used heuristic")
xavier_normal      gain^2 * 2 / (fan_in + fan_out)             Glorot & Bengio 2010, eq. 16
xavier_uniform     same, U[-a, a] with a = sqrt(3 Var)         Glorot & Bengio 2010, eq. 16
kaiming_normal     gain^2 / fan  (fan = fan_in or fan_out)     He, Zhang, Ren & Sun 2015, eq. 10/14
kaiming_uniform    same, uniform                               He et al. 2015
lecun_normal       1 / fan_in                                  LeCun, Bottou, Orr & Müller 1998
lecun_uniform      same, uniform                               LeCun et al. 1998
orthogonal         gain^2 / max(fan_in, fan_out) on average;   Saxe, McClelland & Ganguli 2014
                   W W^T = gain^2 I (rows orthonormal)
ntk                weight = w_std / sqrt(fan_in) * W,          Jacot, Gabriel & Hongler 2018
                   W ~ N(0, 1) the trained parameter
critical           sigma_w^2 / fan_in, bias ~ N(0, sigma_b^2)  Poole et al. 2016; Schoenholz et
                   with (sigma_w^2, sigma_b^2) on chi = 1      al. 2017
================== ========================================== ===================================

``gain`` of the Kaiming and Xavier schemes comes from the activation as in
``torch.nn.init.calculate_gain`` (relu sqrt(2), leaky_relu(s) sqrt(2 / (1 + s^2)), tanh 5/3,
sigmoid and identity 1, selu 3/4), so that a seed gives torch's own draws; any other activation
(gelu, erf, silu, softplus, elu, a callable) gets He et al.'s forward condition
gain^2 E[phi(z)^2] = 1, z ~ N(0, 1) (the rule that gives relu's 2 and leaky_relu's 2 / (1 + s^2)).

The critical point (Poole, Lahiri, Raghu, Sohl-Dickstein & Ganguli 2016; Schoenholz, Gilmer,
Ganguli & Sohl-Dickstein 2017). In a wide network with W ~ N(0, sigma_w^2 / fan_in),
b ~ N(0, sigma_b^2) the pre-activation variance follows the q-map and a gradient's squared norm
is multiplied, layer to layer, by chi:

    q^l   = sigma_w^2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2          (the length / q-map)
    chi   = sigma_w^2 E[phi'(sqrt(q*) z)^2]                           (at its fixed point q*)

chi < 1 is the ordered phase (gradients vanish exponentially with depth), chi > 1 the chaotic
one (they explode); chi = 1 is the edge of chaos. Both expectations are the activation's dual
maps at c = q (``T(q, q, q)`` and ``Tdot(q, q, q)`` in :mod:`widenet.activations`), so for
every activation widenet knows they come in closed form or by its tested quadrature. Along the
critical line, parametrised by the fixed point q*,

    sigma_w^2 = 1 / Tdot(q*),      sigma_b^2 = q* - T(q*) / Tdot(q*),

so :func:`critical_point` solves the second equation for q* given sigma_b^2 (a 1-D root). Closed
forms: tanh (and any odd phi with phi'(0) = 1) at sigma_b = 0 has q* = 0 and sigma_w^2 = 1;
a positively homogeneous phi (relu, leaky_relu, abrelu) has a linear q-map, so chi = 1 needs
sigma_w^2 = 1 / E[phi'(z)^2] (2 for relu) and sigma_b = 0, where every q is a fixed point.

Random draws: pass ``generator=`` (a CPU ``torch.Generator``) or ``seed=``; values are drawn on
the CPU in module order and copied to the parameter's device, so a seed gives the same network
on every device; with neither, torch's global generator is used (as ``torch.nn.init``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from widenet import activations as _act
from widenet._checks import check_int, check_real
from widenet.layers import Dense

SCHEMES = (
    "naive",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
    "ntk",
    "critical",
)
FAN_MODES = ("fan_in", "fan_out")

# torch.nn.init.calculate_gain's table, by widenet activation name.
_TORCH_GAINS = {
    "identity": 1.0,
    "linear": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "selu": 0.75,
}


# --- the weighted layers of a model ---------------------------------------------------------


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` / ``nn.Conv*`` / ``nn.ConvTranspose*`` in order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]


def _layers_or_fail(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = weighted_layers(model)
    if not layers:
        raise ValueError(
            "model has no nn.Linear or nn.Conv* layer to initialize "
            f"(modules: {', '.join(type(m).__name__ for m in model.modules())})"
        )
    return layers


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight as ``torch.nn.init``: dims 1 and 0 times the kernel size."""
    if weight.ndim < 2:
        raise ValueError(
            f"fans need a weight with >= 2 dimensions, got shape {tuple(weight.shape)}"
        )
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


class Scaled(nn.Module):
    """The parametrization ``weight = scale * original`` of :func:`ntk` for any module."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def _scaled(module: nn.Module, name: str) -> Scaled | None:
    """Our Scaled parametrization of ``module.<name>``, None if there is none, error if foreign."""
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    if len(plist) == 1 and isinstance(plist[0], Scaled):
        return plist[0]
    raise ValueError(
        f"{type(module).__name__}.{name} carries a parametrization widenet did not set "
        f"({[type(p).__name__ for p in plist]}); remove it before re-initializing"
    )


def effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight, bias) the forward pass uses: with ``Dense``'s or :func:`ntk`'s scale applied."""
    w, b = module.weight, module.bias
    if isinstance(module, Dense):
        w = w * module.weight_scale
        b = None if b is None else b * module.bias_scale
    return w, b


def _to_standard(module: nn.Module) -> None:
    """Drop an NTK scaling so that the stored parameter is the effective one."""
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None and _scaled(module, name) is not None:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if isinstance(module, Dense):
        module.weight_scale = module.bias_scale = 1.0
        module.parameterization = "standard"


def _generator(generator, seed) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass generator= or seed=, not both")
    if seed is not None:
        return torch.Generator().manual_seed(check_int(seed, "seed"))
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator (draws are made on the CPU so that a "
                f"seed gives the same network on every device), got one on {generator.device}"
            )
    return generator


def _draw(shape, dtype, distribution: str, variance: float, gen) -> torch.Tensor:
    """Zero-mean draws with the given variance, on the CPU."""
    out = torch.empty(shape, dtype=dtype)
    if variance == 0.0:
        return out.zero_()
    if distribution == "normal":
        return out.normal_(0.0, math.sqrt(variance), generator=gen)
    bound = math.sqrt(3.0 * variance)
    return out.uniform_(-bound, bound, generator=gen)


def _copy(param: torch.Tensor, values: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(values.to(param.device))


# (fan_in, fan_out) -> (distribution, weight variance, bias variance)
Rule = Callable[[int, int], tuple[str, float, float]]


def _apply(model: nn.Module, rule: Rule, gen) -> nn.Module:
    for _, m in _layers_or_fail(model):
        _to_standard(m)
        fan_in, fan_out = fans(m.weight)
        distribution, w_var, b_var = rule(fan_in, fan_out)
        _copy(m.weight, _draw(m.weight.shape, m.weight.dtype, distribution, w_var, gen))
        if m.bias is not None:
            _copy(m.bias, _draw(m.bias.shape, m.bias.dtype, "normal", b_var, gen))
        elif b_var > 0:
            raise ValueError(f"{type(m).__name__} has no bias to draw with variance {b_var}")
        if isinstance(m, Dense):
            m.w_std, m.b_std = math.sqrt(w_var * fan_in), math.sqrt(b_var)
    return model


def _check_distribution(distribution: str) -> str:
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    return distribution


# --- gains ----------------------------------------------------------------------------------


def second_moment(activation, q: float = 1.0) -> tuple[float, float]:
    """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) for z ~ N(0, 1): the duals at c = q1 = q2 = q."""
    act = _act.get(activation)
    t = torch.tensor(float(q), dtype=torch.float64)
    nngp, dot = act.dual(t, t.clone(), t, True)
    return float(nngp), float(dot)


def gain(activation) -> float:
    """The Kaiming/Xavier gain: torch's ``calculate_gain`` where it has one, else He's rule.

    ``leaky_relu(s)`` gives sqrt(2 / (1 + s^2)) (torch's); names outside torch's table (gelu,
    erf, silu, softplus, elu, sin, cos, a callable) give 1 / sqrt(E[phi(z)^2]), z ~ N(0, 1),
    He et al.'s condition that a layer preserves the second moment of unit-variance inputs.
    """
    if isinstance(activation, str) and activation.strip().lower() == "selu":
        return _TORCH_GAINS["selu"]
    act = _act.get(activation)
    if act.name in _TORCH_GAINS:
        return _TORCH_GAINS[act.name]
    if act.name.startswith("leaky_relu"):
        return math.sqrt(2.0 / (1.0 + act.params[0] ** 2))
    moment, _ = second_moment(act, 1.0)
    if not moment > 0:
        raise ValueError(f"activation {act.name}: E[phi(z)^2] = {moment}, no gain can fix that")
    return 1.0 / math.sqrt(moment)


def _resolve_gain(gain_value, activation) -> float:
    if gain_value is not None and activation is not None:
        raise ValueError("pass gain= or activation=, not both")
    if gain_value is None:
        return gain(activation if activation is not None else "identity")
    return check_real(gain_value, "gain", minimum=0.0, strict=True)


# --- the schemes ----------------------------------------------------------------------------


def naive(model: nn.Module, *, generator=None, seed=None) -> nn.Module:
    """W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)], Var = 1/(3 fan_in); biases 0.

    The "commonly used heuristic" of Glorot & Bengio (2010, eq. 1), which they show makes the
    back-propagated gradients of deep sigmoid/tanh networks shrink towards the input layer.
    """
    gen = _generator(generator, seed)
    return _apply(model, lambda fi, fo: ("uniform", 1.0 / (3.0 * fi), 0.0), gen)


def xavier(
    model: nn.Module,
    distribution: str = "uniform",
    *,
    gain: float | None = None,
    activation=None,
    generator=None,
    seed=None,
) -> nn.Module:
    """Glorot & Bengio (2010, eq. 16): Var(W) = gain^2 * 2 / (fan_in + fan_out); biases 0.

    "uniform" draws U[-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)) (their normalized
    initialization), "normal" N(0, Var). ``gain`` directly, or from ``activation`` (see
    :func:`gain`); default 1. Same draws as ``torch.nn.init.xavier_{uniform,normal}_``.
    """
    distribution = _check_distribution(distribution)
    g2 = _resolve_gain(gain, activation) ** 2
    gen = _generator(generator, seed)
    return _apply(model, lambda fi, fo: (distribution, g2 * 2.0 / (fi + fo), 0.0), gen)


def kaiming(
    model: nn.Module,
    distribution: str = "normal",
    *,
    activation="relu",
    mode: str = "fan_in",
    gain: float | None = None,
    generator=None,
    seed=None,
) -> nn.Module:
    """He, Zhang, Ren & Sun (2015): Var(W) = gain^2 / fan; biases 0.

    ``mode="fan_in"`` preserves the forward variance (their eq. 10), ``"fan_out"`` the backward
    one (eq. 14). ``gain`` from ``activation`` (default relu: sqrt(2)) unless given. Same draws
    as ``torch.nn.init.kaiming_{normal,uniform}_`` with that gain.
    """
    distribution = _check_distribution(distribution)
    if mode not in FAN_MODES:
        raise ValueError(f"mode must be one of {FAN_MODES}, got {mode!r}")
    g2 = _resolve_gain(gain, None if gain is not None else activation) ** 2
    gen = _generator(generator, seed)
    pick = 0 if mode == "fan_in" else 1
    return _apply(model, lambda fi, fo: (distribution, g2 / (fi, fo)[pick], 0.0), gen)


def lecun(model: nn.Module, distribution: str = "normal", *, generator=None, seed=None):
    """LeCun, Bottou, Orr & Müller (1998, "Efficient BackProp"): Var(W) = 1 / fan_in; biases 0."""
    distribution = _check_distribution(distribution)
    gen = _generator(generator, seed)
    return _apply(model, lambda fi, fo: (distribution, 1.0 / fi, 0.0), gen)


def orthogonal(model: nn.Module, *, gain: float = 1.0, generator=None, seed=None) -> nn.Module:
    """Saxe, McClelland & Ganguli (2014): W (flattened to fan_out x fan_in/...) has orthonormal
    rows (or columns, whichever are fewer) times ``gain``; biases 0.

    W W^T = gain^2 I when out <= in, so every singular value is ``gain`` and a deep linear
    network is an exact isometry (dynamical isometry); entries have mean square
    gain^2 / max(rows, cols). Drawn by ``torch.nn.init.orthogonal_`` (QR of a Gaussian matrix).
    """
    gain = check_real(gain, "gain", minimum=0.0, strict=True)
    gen = _generator(generator, seed)
    for _, m in _layers_or_fail(model):
        _to_standard(m)
        w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
        _copy(m.weight, nn.init.orthogonal_(w, gain=gain, generator=gen))
        if m.bias is not None:
            _copy(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, Dense):
            m.w_std, m.b_std = gain, 0.0
    return model


def ntk(
    model: nn.Module, *, w_std: float = 1.0, b_std: float = 0.0, generator=None, seed=None
) -> nn.Module:
    """The NTK parameterization (Jacot, Gabriel & Hongler 2018; neural-tangents' stax).

    Each layer computes (w_std / sqrt(fan_in)) W x + b_std b with the trained parameters
    W, b ~ N(0, 1): the effective weight has variance w_std^2 / fan_in as in the standard
    parameterization, but gradients see O(1) parameters, so the NTK has a width-independent
    limit. widenet ``Dense`` layers get their scales set; any other Linear/Conv gets a
    ``torch.nn.utils.parametrize`` parametrization ``weight = scale * original``.
    """
    w_std = check_real(w_std, "w_std", minimum=0.0)
    b_std = check_real(b_std, "b_std", minimum=0.0)
    gen = _generator(generator, seed)
    for _, m in _layers_or_fail(model):
        fan_in, _ = fans(m.weight)
        scales = {"weight": w_std / math.sqrt(fan_in), "bias": b_std}
        if isinstance(m, Dense):
            _to_standard(m)
            m.weight_scale, m.bias_scale = scales["weight"], scales["bias"]
            m.parameterization, m.w_std, m.b_std = "ntk", w_std, b_std
        for name, scale in scales.items():
            if getattr(m, name, None) is None:
                continue
            if not isinstance(m, Dense):
                existing = _scaled(m, name)
                if existing is None:
                    parametrize.register_parametrization(m, name, Scaled(scale))
                else:
                    existing.scale = scale
                raw = m.parametrizations[name].original
            else:
                raw = getattr(m, name)
            _copy(raw, _draw(raw.shape, raw.dtype, "normal", 1.0, gen))
    return model


# --- the critical point ---------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPoint:
    """(sigma_w^2, sigma_b^2) on the edge of chaos chi = 1 for ``activation``.

    ``q_star``: the fixed point of the q-map there (None when every q is one: homogeneous phi);
    ``chi``: sigma_w^2 E[phi'(sqrt(q*) z)^2] recomputed at the solution (1 up to the root's
    tolerance); ``q_slope``: dq^l/dq^{l-1} at q* (< 1: the fixed point attracts).
    """

    activation: str
    w_var: float
    b_var: float
    q_star: float | None
    chi: float
    q_slope: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _moments(act: _act.Activation, q: torch.Tensor):
    return act.dual(q, q.clone(), q, True)


def _is_homogeneous(act: _act.Activation) -> bool:
    """phi(a x) = a phi(x) for a > 0: T(q)/q and Tdot(q) do not depend on q."""
    t, dot = _moments(act, torch.tensor([0.5, 2.0], dtype=torch.float64))
    return bool(
        torch.isclose(t[0] / 0.5, t[1] / 2.0, rtol=1e-9)
        and torch.isclose(dot[0], dot[1], rtol=1e-9)
    )


def q_slope(activation, w_var: float, q: float, step: float = 1e-5) -> float:
    """d q^l / d q^{l-1} = sigma_w^2 dT(q, q, q)/dq (central difference; forward at q = 0)."""
    act = _act.get(activation)
    lo, hi = max(q - step, 0.0), q + step
    t, _ = _moments(act, torch.tensor([lo, hi], dtype=torch.float64))
    return float(w_var * (t[1] - t[0]) / (hi - lo))


def critical_point(activation, b_var: float = 0.0, *, q_max: float = 1e4) -> CriticalPoint:
    """The edge-of-chaos (sigma_w^2, sigma_b^2) of ``activation`` with the given sigma_b^2.

    Solves sigma_b^2 = q* - T(q*)/Tdot(q*) for the smallest fixed point q* in (0, q_max], then
    sigma_w^2 = 1/Tdot(q*) (see the module docstring). A clear error when the line does not
    reach ``b_var`` (e.g. any b_var > 0 for relu).
    """
    act = _act.get(activation)
    b_var = check_real(b_var, "b_var", minimum=0.0)
    q_max = check_real(q_max, "q_max", minimum=0.0, strict=True)
    if _is_homogeneous(act):
        _, dot = second_moment(act, 1.0)
        if b_var != 0.0:
            raise ValueError(
                f"activation {act.name} is positively homogeneous: its q-map is linear, "
                f"q^l = chi q^(l-1) + sigma_b^2, so at chi = 1 the variance grows without bound "
                f"unless sigma_b^2 = 0; the only critical point is (sigma_w^2, sigma_b^2) = "
                f"({1.0 / dot:.6g}, 0), got b_var={b_var!r}"
            )
        return CriticalPoint(act.name, 1.0 / dot, 0.0, None, 1.0, 1.0)
    t0, dot0 = second_moment(act, 0.0)
    if b_var == 0.0 and t0 == 0.0 and dot0 > 0:
        # phi(0) = 0: q* = 0 is a fixed point of the q-map at sigma_w^2 = 1/phi'(0)^2; it is the
        # critical point if it attracts from above (tanh, erf: T(q) < q phi'(0)^2), not when
        # the map pushes small q away (gelu, silu), whose critical q* is then positive.
        w_var = 1.0 / dot0
        small = 1e-3
        if w_var * second_moment(act, small)[0] <= small:
            return CriticalPoint(act.name, w_var, 0.0, 0.0, 1.0, q_slope(act, w_var, 0.0))

    def excess(q):  # sigma_b^2(q*) - b_var along the critical line
        t, dot = _moments(act, torch.as_tensor(q, dtype=torch.float64))
        return q - t / dot - b_var

    grid = torch.cat([torch.zeros(1), torch.logspace(-6, math.log10(q_max), 120)]).double()
    # Two calls: the quadrature's node count follows the largest q of a call.
    values = torch.cat([excess(grid[grid <= 25.0]), excess(grid[grid > 25.0])])
    ok = torch.isfinite(values)
    sign = torch.nonzero(ok[:-1] & ok[1:] & (values[:-1] < 0) & (values[1:] >= 0)).reshape(-1)
    if len(sign) == 0:
        raise ValueError(
            f"activation {act.name}: no critical point with b_var={b_var!r} for q* in "
            f"(0, {q_max:g}] (sigma_b^2 along the critical line spans "
            f"[{float(values[ok].min()) + b_var:.4g}, {float(values[ok].max()) + b_var:.4g}]; "
            "b_var must lie above its value at q* = 0, where the q-map pushes q away from 0)"
        )
    from scipy.optimize import brentq

    i = int(sign[0])
    q_star = brentq(
        lambda q: float(excess(torch.tensor(q, dtype=torch.float64))),
        float(grid[i]),
        float(grid[i + 1]),
        xtol=1e-14,
        rtol=1e-13,
    )
    t, dot = second_moment(act, q_star)
    w_var = 1.0 / dot
    return CriticalPoint(act.name, w_var, b_var, q_star, w_var * dot, q_slope(act, w_var, q_star))


def critical(
    model: nn.Module, activation="tanh", *, b_var: float = 0.0, generator=None, seed=None
) -> nn.Module:
    """Edge-of-chaos initialization (Poole et al. 2016; Schoenholz et al. 2017).

    W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2) with (sigma_w^2, sigma_b^2) from
    :func:`critical_point` for ``activation`` and ``b_var`` = sigma_b^2: chi = 1, so gradients
    neither vanish nor explode exponentially with depth (depth scale xi = -1/log chi -> inf).
    """
    point = critical_point(activation, b_var)
    gen = _generator(generator, seed)
    return _apply(model, lambda fi, fo: ("normal", point.w_var / fi, point.b_var), gen)


_BY_NAME = {
    "naive": naive,
    "xavier_normal": lambda model, **kw: xavier(model, "normal", **kw),
    "xavier_uniform": lambda model, **kw: xavier(model, "uniform", **kw),
    "kaiming_normal": lambda model, **kw: kaiming(model, "normal", **kw),
    "kaiming_uniform": lambda model, **kw: kaiming(model, "uniform", **kw),
    "lecun_normal": lambda model, **kw: lecun(model, "normal", **kw),
    "lecun_uniform": lambda model, **kw: lecun(model, "uniform", **kw),
    "orthogonal": orthogonal,
    "ntk": ntk,
    "critical": critical,
}


def initialize(model: nn.Module, scheme: str, **kwargs) -> nn.Module:
    """Apply the scheme named ``scheme`` (one of :data:`SCHEMES`) with its keyword arguments."""
    if scheme not in _BY_NAME:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    try:
        return _BY_NAME[scheme](model, **kwargs)
    except TypeError as err:
        raise TypeError(f"scheme {scheme!r}: {err}") from None
