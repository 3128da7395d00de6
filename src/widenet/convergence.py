r"""Global convergence of gradient descent on over-parameterized two-layer ReLU networks.

Du, Zhai, Póczos & Singh (2018), "Gradient Descent Provably Optimizes Over-parameterized Neural
Networks" (ICLR 2019, arXiv:1810.02054). The model (their eq. 1) is

    f(W, a, x) = m^{-1/2} Σ_r a_r relu(w_rᵀx),   a_r ∈ {−1, +1} fixed,  w_r(0) ~ N(0, I),

with only W trained on L(W) = ½ Σ_i (f(x_i) − y_i)² (a sum, not a mean) for unit-norm inputs;
u(k) = (f(x_1), …, f(x_n)) are the predictions after k full-batch gradient-descent steps
(one "epoch" of the paper's Section 5 is one step). With S_ir = 1{w_rᵀx_i ≥ 0},

    ∂L/∂w_r = m^{-1/2} a_r Σ_i (u_i − y_i) S_ir x_i,
    H(W)_ij = (1/m) x_iᵀx_j Σ_r S_ir S_jr = [(X Xᵀ) ⊙ (S Sᵀ)]_ij / m   (eq. 5),

so that u̇ = −H(t)(u − y) under gradient flow; H(W) = J Jᵀ for J = ∂u/∂W. Its expectation over
the initialisation is H∞ (eq. 3, :func:`widenet.h_infinity`) and λ0 = λ_min(H∞) > 0 as soon as
no two inputs are parallel (Theorem 3.1).

What the paper proves, and the explicit constants used here where it writes O(·):

* Lemma 3.1 — ||H(0) − H∞||₂ ≤ λ0/4 (so λ_min(H(0)) ≥ 3λ0/4) once m ≥ 32 n² ln(2n²/δ)/λ0²
  (Hoeffding on each entry, which lies in [−1, 1], a union bound over the n² entries and
  ||·||₂ ≤ ||·||_F).
* Lemma 3.2 — every W with max_r ||w_r − w_r(0)|| ≤ R has ||H(W) − H(0)||₂ < λ0/4 and
  λ_min(H(W)) > λ0/2, for R = √(2π) δ λ0 / (16 n²) (each of the n² entries moves by at most
  4R/√(2π) in expectation; Markov's inequality). :func:`radius`.
* Lemma 3.3 / Theorem 3.2 — while λ_min(H(s)) ≥ λ0/2, gradient flow has
  ||y − u(t)||² ≤ exp(−λ0 t) ||y − u(0)||² (:func:`flow_envelope`) and
  ||w_r(t) − w_r(0)|| ≤ R' = √n ||y − u(0)|| / (√m λ0) (:func:`drift_bound`).
* Theorem 4.1 / Corollary 4.1 — gradient descent with η = O(λ0/n²) has
  ||y − u(k)||² ≤ (1 − ηλ0/2)^k ||y − u(0)||² (:func:`loss_envelope`) and drift at most
  4√n ||y − u(0)|| / (√m λ0) (Σ_k η√n/√m (1 − ηλ0/2)^{k/2} ||y − u(0)|| ≤ 4× the flow bound).
  The step size here is η = λ0/(4n²) (:func:`theorem_step_size`): it makes the quadratic term
  ||u(k+1) − u(k)||² ≤ η²n² ||y − u(k)||² at most ηλ0/4 ||y − u(k)||².
* Width — the drift bound must stay below R: with ||y − u(0)||² ≤ (||y||² + n/2)/δ
  (Markov; E f(x)² = ½ for unit x) and each of the three events given probability δ/3,
  m ≥ 16·256·27 (||y||²/n + ½) n⁶ / (2π λ0⁴ δ³) (gradient descent) or 256·27 (…)/(2π …)
  (gradient flow), and at least Lemma 3.1's width. :func:`width_bound` reports
  C n⁶/(λ0⁴ δ³) with its constant C. These are valid constants for the argument as written
  above, not the smallest ones; in practice networks converge at far smaller widths
  (``du-theory-vs-practice``).

The kernel regime: if H stayed at H(0) (or at H∞), u(k) = y + (I − ηH)^k (u(0) − y) exactly,
which is :func:`widenet.dynamics.gradient_descent_mse` with ``loss="sum"`` (its Θ/N with N = 1
is our H: J Jᵀ of the ½Σ loss); :func:`kernel_prediction`.

:func:`track` trains a :class:`TwoLayerReLU` by full-batch gradient descent with the gradient
above (two GEMMs of size n·m·d per step, no per-neuron loop) and records per step the loss, the
pattern-change ratio, the maximal drift, and (every ``gram_every`` steps) ||H(k) − H(0)||₂ and
λ_min(H(k)).

The indicator is 1{wᵀx ≥ 0} as in the paper; autograd's relu'(0) = 0 differs only on the
measure-zero event wᵀx = 0.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from widenet import dynamics
from widenet._checks import (
    as_tensor,
    check_device,
    check_finite,
    check_inputs,
    check_int,
    check_real,
)
from widenet.kernels import h_infinity

__all__ = [
    "DuRun",
    "GD_DRIFT_FACTOR",
    "TrackResult",
    "TwoLayerReLU",
    "WidthBound",
    "activation_pattern",
    "drift_bound",
    "du_bounds",
    "du_training_run",
    "flow_envelope",
    "gram",
    "gram_infinity",
    "kernel_prediction",
    "lambda0",
    "loss",
    "loss_envelope",
    "measured_rate",
    "pattern_change_ratio",
    "radius",
    "random_labels",
    "theorem_step_size",
    "track",
    "unit_inputs",
    "width_bound",
]

_F64 = torch.float64
# Gradient descent's drift bound is 4x gradient flow's (Corollary 4.1; see the module docstring).
GD_DRIFT_FACTOR = 4.0
# Inputs whose norms differ from 1 by more than this are "not unit-norm".
_UNIT_RTOL = 1e-5
# Two unit inputs with cosine above 1 - this are parallel: H∞ is numerically singular.
_PARALLEL_TOL = 1e-10


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class TwoLayerReLU(nn.Module):
    r"""f(x) = m^{-1/2} Σ_r a_r relu(w_rᵀx) (Du et al. 2018, eq. 1); only ``weight`` is trained.

    ``weight`` (m, d) holds the rows w_r(0) ~ N(0, I); ``a`` (m,) is a buffer of fixed signs
    drawn uniformly from {−1, +1}. ``antisymmetric=True`` (m even) duplicates the first m/2
    neurons with the opposite sign, w_{r+m/2} = w_r and a_{r+m/2} = −a_r, so that f ≡ 0 at
    initialisation (u(0) = 0) while H(0) keeps the same law as for m/2 independent neurons.
    Random draws come from ``generator`` (or ``seed``); weights have ``dtype`` and ``device``.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        *,
        antisymmetric: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        in_dim = check_int(in_dim, "in_dim", minimum=1)
        width = check_int(width, "width", minimum=1)
        device = None if device is None else check_device(device)
        if antisymmetric and width % 2:
            raise ValueError(f"antisymmetric initialisation needs an even width, got {width}")
        if generator is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(check_int(seed, "seed"))
            else:
                generator.seed()
        half = width // 2 if antisymmetric else width
        w = torch.randn(half, in_dim, generator=generator, dtype=_F64)
        a = torch.randint(0, 2, (half,), generator=generator).to(_F64) * 2.0 - 1.0
        if antisymmetric:
            w, a = torch.cat([w, w]), torch.cat([a, -a])
        self.weight = nn.Parameter(w.to(dtype=dtype, device=device))
        self.register_buffer("a", a.to(dtype=dtype, device=device))
        self.antisymmetric = bool(antisymmetric)

    @property
    def width(self) -> int:
        return self.weight.shape[0]

    @property
    def in_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """u = relu(X Wᵀ) a / √m, shape (n,)."""
        return torch.relu(x @ self.weight.T) @ self.a / math.sqrt(self.width)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, width={self.width}, antisymmetric={self.antisymmetric}"


def loss(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's training loss L = ½ Σ_i (u_i − y_i)² (a sum over points, not a mean)."""
    return 0.5 * ((u - y) ** 2).sum()


# --------------------------------------------------------------------------------------------
# Inputs, labels and λ0
# --------------------------------------------------------------------------------------------


def unit_inputs(x, *, non_unit: str = "normalize", name: str = "x") -> torch.Tensor:
    """Validate (n, d) inputs for the theorem, which assumes ||x_i|| = 1.

    ``non_unit="normalize"`` rescales rows whose norm is not 1 (relative tolerance 1e-5) and
    warns (UserWarning); ``"error"`` raises instead. Zero rows are always an error.
    """
    if non_unit not in ("normalize", "error"):
        raise ValueError(f"non_unit must be 'normalize' or 'error', got {non_unit!r}")
    x = check_inputs(x, name)
    norms = x.norm(dim=1)
    if bool((norms == 0).any()):
        rows = torch.nonzero(norms == 0).flatten()[:5].tolist()
        raise ValueError(f"{name} has rows of zero norm (e.g. rows {rows}); cannot normalise")
    off = (norms - 1).abs() > _UNIT_RTOL
    if bool(off.any()):
        count, worst = int(off.sum()), float((norms - 1).abs().max())
        msg = (
            f"{name}: {count} of {x.shape[0]} rows are not unit-norm (max | ||x_i|| - 1 | = "
            f"{worst:.3g}); Du et al. assume ||x_i|| = 1"
        )
        if non_unit == "error":
            raise ValueError(msg + "; normalise them or pass non_unit='normalize'")
        warnings.warn(msg + "; rescaling them to unit norm", UserWarning, stacklevel=2)
        x = x / norms[:, None]
    return x


def _labels(y, n: int, dtype, device, name: str = "y") -> torch.Tensor:
    y = as_tensor(y, name, dtype=dtype, device=device)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) (one real label per input), got {tuple(y.shape)}"
        )
    check_finite(y, name)
    return y


def random_labels(
    labels_or_n, *, kind: str = "gaussian", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Labels that carry no information about the inputs (Zhang et al. 2017), float64 (n,).

    ``kind="gaussian"``: y ~ N(0, 1) i.i.d., ``labels_or_n`` is n. ``kind="shuffled"``: a random
    permutation of the given real labels ``labels_or_n`` (a 1-D tensor or array).
    """
    if kind == "gaussian":
        n = check_int(labels_or_n, "n", minimum=1)
        return torch.randn(n, generator=generator, dtype=_F64)
    if kind == "shuffled":
        y = as_tensor(labels_or_n, "labels", dtype=_F64)
        if y.ndim != 1 or y.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor, got {tuple(y.shape)}")
        check_finite(y, "labels")
        return y[torch.randperm(y.numel(), generator=generator).to(y.device)]
    raise ValueError(f"kind must be 'gaussian' or 'shuffled', got {kind!r}")


def gram_infinity(x) -> torch.Tensor:
    """H∞ (Du et al. eq. 3) of unit-norm inputs, float64: :func:`widenet.h_infinity`."""
    return h_infinity(as_tensor(x, "x", dtype=_F64))


def _parallel_pair(x: torch.Tensor) -> tuple[int, int, float] | None:
    """The most parallel pair (i < j, cosine) if its cosine exceeds 1 − _PARALLEL_TOL."""
    xn = x.to(_F64)
    xn = xn / xn.norm(dim=1, keepdim=True)
    c = xn @ xn.T
    c.fill_diagonal_(-2.0)
    flat = int(torch.argmax(c))
    i, j = divmod(flat, c.shape[1])
    cos = float(c[i, j])
    if cos > 1 - _PARALLEL_TOL:
        return min(i, j), max(i, j), cos
    return None


def lambda0(x, *, h_inf: torch.Tensor | None = None) -> float:
    """λ0 = λ_min(H∞) (Du et al. Assumption 3.1), computed in float64.

    Raises ValueError when two inputs are parallel (Theorem 3.1's condition fails: λ0 = 0)
    or when λ0 is numerically zero (≤ n·eps·λ_max). ``h_inf`` reuses a computed H∞.
    """
    x = check_inputs(x, "x")
    pair = _parallel_pair(x)
    if pair is not None:
        i, j, cos = pair
        raise ValueError(
            f"inputs {i} and {j} are parallel (cosine {cos:.12f}): H-infinity is singular, "
            "lambda0 = 0, and Du et al.'s Theorem 3.1 (no two inputs parallel) fails; remove "
            "duplicated directions"
        )
    if h_inf is None:
        h = gram_infinity(x)
    else:
        h = as_tensor(h_inf, "h_inf", dtype=_F64)
        n = x.shape[0]
        if h.shape != (n, n):
            raise ValueError(
                f"h_inf must be H-infinity of x, shape ({n}, {n}) for the {n} rows of x, got "
                f"{tuple(h.shape)}"
            )
        check_finite(h, "h_inf")
        if not torch.allclose(h, h.T, rtol=1e-10, atol=0.0):
            raise ValueError("h_inf must be symmetric (H-infinity is a Gram matrix)")
    ev = torch.linalg.eigvalsh(h)
    lam, lmax = float(ev[0]), float(ev[-1])
    tol = h.shape[0] * torch.finfo(_F64).eps * max(lmax, 1e-300)
    if lam <= tol:
        raise ValueError(
            f"lambda0 = lambda_min(H-infinity) = {lam:.3g} is numerically zero (<= {tol:.3g}); "
            "the inputs are (nearly) parallel or degenerate, so no linear rate is guaranteed"
        )
    return lam


# --------------------------------------------------------------------------------------------
# H(W) and the activation pattern
# --------------------------------------------------------------------------------------------


def activation_pattern(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S_ir = 1{w_rᵀx_i ≥ 0}, a boolean (n, m) tensor."""
    return (x @ weight.T) >= 0


def _weight(model_or_weight) -> torch.Tensor:
    w = model_or_weight.weight if isinstance(model_or_weight, nn.Module) else model_or_weight
    return as_tensor(w, "weight").detach()


def _gram_from_pattern(s: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    # S Sᵀ counts co-active neurons: integers ≤ m, exact in (twice faster) float32 up to 2^24.
    sf = s.to(torch.float32 if s.shape[1] <= 2**24 else _F64)
    return xx * (sf @ sf.T).to(xx.dtype) / s.shape[1]


def gram(model_or_weight, x) -> torch.Tensor:
    """H(W) = (X Xᵀ) ⊙ (S Sᵀ) / m (Du et al. eq. 5), (n, n) in float64.

    ``model_or_weight`` is a :class:`TwoLayerReLU` or its (m, d) weight. Equal to the Gram
    J Jᵀ of the Jacobian of u with respect to W.
    """
    w = _weight(model_or_weight)
    x = check_inputs(x, "x").to(w.dtype)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but the weight has {w.shape[1]} columns")
    xx = x.to(_F64) @ x.to(_F64).T
    return _gram_from_pattern(activation_pattern(w, x), xx)


def pattern_change_ratio(weight0: torch.Tensor, weight: torch.Tensor, x) -> float:
    """Σ_i Σ_r 1{S_ir(0) ≠ S_ir(k)} / (m n): the fraction of flipped activations (Sec. 5)."""
    w0, w = _weight(weight0), _weight(weight)
    x = check_inputs(x, "x").to(w.dtype)
    flipped = torch.count_nonzero(activation_pattern(w0, x) != activation_pattern(w, x))
    return int(flipped) / (x.shape[0] * w.shape[0])


# --------------------------------------------------------------------------------------------
# The theorem's quantities
# --------------------------------------------------------------------------------------------


def _positive(value, name: str) -> float:
    return check_real(value, name, minimum=0.0, strict=True)


def _delta(delta) -> float:
    delta = _positive(delta, "delta")
    if delta >= 1:
        raise ValueError(f"delta (a failure probability) must be in (0, 1), got {delta}")
    return delta


def theorem_step_size(lambda0: float, n: int) -> float:
    """η = λ0/(4n²): Theorem 4.1's O(λ0/n²) with the constant of the module docstring."""
    return _positive(lambda0, "lambda0") / (4.0 * check_int(n, "n", minimum=1) ** 2)


def radius(lambda0: float, n: int, delta: float) -> float:
    """R = √(2π) δ λ0 / (16 n²) (Lemma 3.2): within it, λ_min(H(W)) > λ0/2 w.p. ≥ 1 − δ."""
    n = check_int(n, "n", minimum=1)
    return math.sqrt(2 * math.pi) * _delta(delta) * _positive(lambda0, "lambda0") / (16 * n**2)


def drift_bound(
    initial_residual: float, n: int, width: int, lambda0: float, *, discrete: bool = False
) -> float:
    """R' = √n ||y − u(0)|| / (√m λ0) (Lemma 3.3, gradient flow); 4× that for GD (Cor. 4.1).

    ``initial_residual`` is ||y − u(0)||₂ (not squared).
    """
    r0 = check_real(initial_residual, "initial_residual", minimum=0.0)
    n = check_int(n, "n", minimum=1)
    m = check_int(width, "width", minimum=1)
    flow = math.sqrt(n) * r0 / (math.sqrt(m) * _positive(lambda0, "lambda0"))
    return GD_DRIFT_FACTOR * flow if discrete else flow


def loss_envelope(steps, step_size: float, lambda0: float, initial: float) -> np.ndarray:
    """Theorem 4.1: ||y − u(k)||² ≤ (1 − ηλ0/2)^k ||y − u(0)||² at each k of ``steps``.

    ``initial`` is ||y − u(0)||² (halve everything for the loss L = ½||y − u||²).
    """
    k = np.asarray(steps, dtype=np.float64)
    rate = 1.0 - _positive(step_size, "step_size") * _positive(lambda0, "lambda0") / 2
    if rate <= 0:
        raise ValueError(f"step_size*lambda0/2 = {1 - rate:.3g} >= 1: outside Theorem 4.1")
    return check_real(initial, "initial", minimum=0.0) * rate**k


def flow_envelope(t, lambda0: float, initial: float) -> np.ndarray:
    """Theorem 3.2: ||y − u(t)||² ≤ exp(−λ0 t) ||y − u(0)||² (t = η k for GD steps)."""
    t = np.asarray(t, dtype=np.float64)
    return check_real(initial, "initial", minimum=0.0) * np.exp(-_positive(lambda0, "lambda0") * t)


@dataclass(frozen=True)
class WidthBound:
    """The width that Du et al.'s argument needs, with every constant explicit.

    ``width = max(gram_width, drift_width)``; ``drift_width = constant · n⁶/(λ0⁴ δ^delta_power)``
    (``delta_power`` is 3, or 2 with the antisymmetric initialisation, where u(0) = 0 needs no
    Markov bound on ||y − u(0)||).
    """

    n: int
    lambda0: float
    delta: float
    constant: float  # C in C n⁶ / (λ0⁴ δ^delta_power)
    gram_width: float  # Lemma 3.1: 32 n² ln(2n²/(δ/3)) / λ0² (twice that if antisymmetric)
    drift_width: float  # C n⁶ / (λ0⁴ δ^delta_power)
    width: float  # the maximum of the two (a float: it overflows int for tiny λ0)
    discrete: bool
    delta_power: int = 3


def width_bound(
    n: int,
    lambda0: float,
    delta: float = 0.1,
    *,
    label_power: float = 1.0,
    discrete: bool = True,
    antisymmetric: bool = False,
) -> WidthBound:
    """Width m ≥ C n⁶/(λ0⁴ δ³) of Theorems 3.2 (flow) / 4.1 (``discrete``, GD), constant explicit.

    ``label_power`` is ||y||²/n (1 for y ~ N(0, 1)). The derivation (module docstring) spends
    δ/3 on each of Lemma 3.1, Lemma 3.2 and Markov's bound ||y − u(0)||² ≤ (||y||² + n/2)/(δ/3)
    (``antisymmetric=True``: u(0) = 0, so ||y − u(0)||² = ||y||², δ/2 each for the lemmas, the
    bound scales as δ⁻², and Lemma 3.1 needs twice the width: H(0) averages m/2 independent
    neurons).
    """
    n = check_int(n, "n", minimum=1)
    lam = _positive(lambda0, "lambda0")
    delta = _delta(delta)
    p = check_real(label_power, "label_power", minimum=0.0)
    factor = GD_DRIFT_FACTOR**2 if discrete else 1.0
    if antisymmetric:
        # R'² = factor n ||y||²/(m λ0²) ≤ R² = 2π (δ/2)² λ0²/(256 n⁴)
        d1, c, power, pairs = delta / 2, factor * 256 * 4 * p / (2 * math.pi), 2, 2
    else:
        # R'² ≤ factor n (n p + n/2) 3/δ / (m λ0²) ≤ R² = 2π (δ/3)² λ0²/(256 n⁴)
        d1, c, power, pairs = delta / 3, factor * 256 * 27 * (p + 0.5) / (2 * math.pi), 3, 1
    gram_w = pairs * 32 * n**2 * math.log(2 * n**2 / d1) / lam**2
    drift_w = c * n**6 / (lam**4 * delta**power)
    width = max(gram_w, drift_w)
    return WidthBound(n, lam, delta, c, gram_w, drift_w, width, discrete, power)


# --------------------------------------------------------------------------------------------
# The kernel regime
# --------------------------------------------------------------------------------------------


def kernel_prediction(h, y, steps, step_size: float, *, u0=None) -> torch.Tensor:
    """u(k) = y + (I − ηH)^k (u(0) − y) for each k in ``steps``: (T, n), float64.

    The trained network's outputs if H stayed fixed (H = H∞ or H(0)); evaluated by
    :func:`widenet.dynamics.gradient_descent_mse` with ``loss="sum"`` (one eigendecomposition).
    A step size above 2/λ_max(H) is refused there.
    """
    h = as_tensor(h, "h", dtype=_F64)
    y = _labels(y, h.shape[0], _F64, h.device)
    f0 = None if u0 is None else _labels(u0, h.shape[0], _F64, h.device, "u0")
    pred = dynamics.gradient_descent_mse(
        h, y, steps, f0_train=f0, learning_rate=step_size, loss="sum"
    )
    return pred.train[..., 0]


# --------------------------------------------------------------------------------------------
# Training with tracking
# --------------------------------------------------------------------------------------------


@dataclass
class TrackResult:
    """Per-step records of :func:`track` (NumPy arrays; index k = after k steps).

    ``loss`` (K+1,) L = ½||u − y||²; ``pattern_change`` (K+1,); ``max_distance`` (K+1,)
    max_r ||w_r(k) − w_r(0)||; ``gram_steps`` the steps where H(k) was formed and, there,
    ``gram_change`` ||H(k) − H(0)||₂ and ``gram_lambda_min`` λ_min(H(k)); ``outputs`` (T, n)
    u(k) at ``output_steps``. Scalars: ``step_size`` η, ``lambda0``, ``lambda_min_h0`` and
    ``lambda_max_h0`` of H(0), ``measured_rate`` exp(slope of ln L per step over
    ``fit_steps``), ``predicted_rate`` 1 − ηλ0/2 (Theorem 4.1's bound on the same ratio),
    ``kernel_rate_hinf`` (1 − ηλ0)² and ``kernel_rate_h0`` (1 − ηλ_min(H(0)))² (the slowest
    mode's loss ratio per step in the kernel regime), ``drift_bound`` 4√n||y − u(0)||/(√m λ0),
    ``flow_drift_bound`` (1×), ``seconds`` wall time of training.
    """

    loss: np.ndarray
    pattern_change: np.ndarray
    max_distance: np.ndarray
    gram_steps: np.ndarray
    gram_change: np.ndarray
    gram_lambda_min: np.ndarray
    output_steps: np.ndarray
    outputs: np.ndarray
    step_size: float
    lambda0: float
    lambda_min_h0: float
    lambda_max_h0: float
    measured_rate: float
    predicted_rate: float
    kernel_rate_hinf: float
    kernel_rate_h0: float
    drift_bound: float
    flow_drift_bound: float
    fit_steps: tuple[int, int]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def steps(self) -> np.ndarray:
        return np.arange(len(self.loss))

    @property
    def relative_error(self) -> np.ndarray:
        """||y − u(k)||² / ||y − u(0)||²."""
        return self.loss / self.loss[0]


def measured_rate(losses, fit_steps: tuple[int, int] | None = None) -> float:
    """exp of the least-squares slope of ln L(k) against k over ``fit_steps`` = (k0, k1].

    Default: the second half of the run (the early transient of the fast modes removed).
    Zero losses are not logged (they end the fit window).
    """
    losses = np.asarray(losses, dtype=np.float64)
    k1 = len(losses) - 1
    k0, k1 = fit_steps if fit_steps is not None else (k1 // 2, k1)
    window = losses[k0 : k1 + 1]
    steps = np.arange(k0, k1 + 1)
    keep = window > 0
    if keep.sum() < 2:
        raise ValueError(f"need two positive losses in steps {k0}..{k1} to fit a rate")
    return float(np.exp(np.polyfit(steps[keep], np.log(window[keep]), 1)[0]))


def _spectral(h: torch.Tensor) -> tuple[float, float]:
    ev = torch.linalg.eigvalsh(h)
    return float(ev[0]), float(ev[-1])


def track(
    model: TwoLayerReLU,
    x,
    y,
    steps: int,
    step_size: float,
    *,
    gram_every: int = 1,
    output_steps: Sequence[int] | None = None,
    fit_steps: tuple[int, int] | None = None,
    non_unit: str = "normalize",
    lambda0_value: float | None = None,
    allow_divergent: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    progress: Callable | None = None,
) -> TrackResult:
    """Full-batch gradient descent on L = ½Σ(f(x_i) − y_i)², recording Du et al.'s quantities.

    W(k+1) = W(k) − η ∂L/∂W with ∂L/∂w_r = m^{-1/2} a_r Σ_i (u_i − y_i) 1{w_rᵀx_i ≥ 0} x_i
    (two (n·m·d) GEMMs a step). The model is trained in place, in its dtype and on its device.

    Args:
        model: a :class:`TwoLayerReLU`.
        x: (n, d) inputs (see :func:`unit_inputs` for ``non_unit``); y: (n,) real labels.
        steps: number of gradient-descent steps K (the paper's epochs).
        step_size: η > 0; above 2/λ_max(H(0)) GD diverges and ValueError is raised unless
            ``allow_divergent``.
        gram_every: form H(k) (an (n·n·m) GEMM and two eigensolves) every this many steps
            (and at the last); 0 forms only H(0).
        output_steps: steps at which u(k) is stored (default: none).
        fit_steps: window (k0, k1) of the measured rate (default: the second half).
        lambda0_value: a precomputed λ0 (else computed from x, in float64).
        callback: ``callback(k, record)`` after each step's records (k = 0 … K).
        progress: an iterable wrapper, e.g. ``ctx.progress`` (called as
            ``progress(range(K), description=...)``).
    """
    if not isinstance(model, TwoLayerReLU):
        raise TypeError(f"model must be a widenet.convergence.TwoLayerReLU, got {type(model)}")
    steps = check_int(steps, "steps", minimum=1)
    eta = _positive(step_size, "step_size")
    gram_every = check_int(gram_every, "gram_every", minimum=0)
    w = model.weight
    dtype, device = w.dtype, w.device
    x = unit_inputs(as_tensor(x, "x", dtype=dtype, device=device), non_unit=non_unit)
    n, d = x.shape
    m = model.width
    if d != model.in_dim:
        raise ValueError(f"x has {d} features but the model expects in_dim={model.in_dim}")
    if n > m * d:
        raise ValueError(
            f"n = {n} points exceed the m*d = {m}*{d} = {m * d} trained parameters: H(0) = J J^T "
            "has rank <= m*d and is singular, so no linear rate is possible; use width >= "
            f"{math.ceil(n / d)}"
        )
    y = _labels(y, n, dtype, device)
    out_steps = np.unique(np.asarray(output_steps if output_steps is not None else [], int))
    if out_steps.size and (out_steps.min() < 0 or out_steps.max() > steps):
        raise ValueError(f"output_steps must lie in [0, {steps}], got {output_steps!r}")
    lam0 = lambda0(x) if lambda0_value is None else _positive(lambda0_value, "lambda0_value")

    t0 = time.perf_counter()
    x64 = x.to(_F64)
    xx = x64 @ x64.T
    a = model.a / math.sqrt(m)
    with torch.no_grad():
        w0 = w.detach().clone()
        pre = x @ w0.T
        s0 = pre >= 0
        h0 = _gram_from_pattern(s0, xx)
        lmin0, lmax0 = _spectral(h0)
        limit = 2.0 / lmax0
        if eta > limit and not allow_divergent:
            raise ValueError(
                f"step_size = {eta:.6g} exceeds 2/lambda_max(H(0)) = {limit:.6g}: gradient "
                "descent diverges in the top eigendirection of H(0); lower it (the critical "
                f"rate 2/(lambda_min+lambda_max) is {2 / (lmin0 + lmax0):.6g}) or pass "
                "allow_divergent=True (CLI: --allow-divergent)"
            )
        losses = np.empty(steps + 1)
        flips = np.empty(steps + 1)
        drift = np.empty(steps + 1)
        g_steps, g_change, g_lmin, outs = [], [], [], []
        iterator = range(steps + 1)
        if progress is not None:
            iterator = progress(iterator, description=f"GD, width {m}")
        for k in iterator:
            if k > 0:
                pre = x @ w.T
            s = pre >= 0
            u = torch.relu(pre) @ a
            r = u - y
            losses[k] = 0.5 * float((r.double() ** 2).sum())
            flips[k] = int(torch.count_nonzero(s != s0)) / (m * n)
            drift[k] = float((w - w0).norm(dim=1).max())
            record = {"loss": losses[k], "pattern_change": flips[k], "max_distance": drift[k]}
            if k == 0 or (gram_every and (k % gram_every == 0 or k == steps)):
                h = h0 if k == 0 else _gram_from_pattern(s, xx)
                diff = h - h0
                g_steps.append(k)
                g_change.append(0.0 if k == 0 else float(torch.linalg.eigvalsh(diff).abs().max()))
                g_lmin.append(lmin0 if k == 0 else _spectral(h)[0])
                record.update(gram_change=g_change[-1], gram_lambda_min=g_lmin[-1])
            if k in out_steps:
                outs.append(u.double().cpu().numpy())
            if not math.isfinite(losses[k]):
                raise FloatingPointError(f"gradient descent diverged at step {k} (eta={eta:.3g})")
            if callback is not None:
                callback(k, record)
            if k == steps:
                break
            # ∂L/∂W = ((S ⊙ r aᵀ/√m))ᵀ X: one (m, n) x (n, d) GEMM.
            grad = (s.to(dtype) * (r[:, None] * a[None, :])).T @ x
            w.sub_(grad, alpha=eta)
    seconds = time.perf_counter() - t0
    r0 = math.sqrt(2 * losses[0])
    fit = fit_steps if fit_steps is not None else (steps // 2, steps)
    return TrackResult(
        loss=losses,
        pattern_change=flips,
        max_distance=drift,
        gram_steps=np.asarray(g_steps),
        gram_change=np.asarray(g_change),
        gram_lambda_min=np.asarray(g_lmin),
        output_steps=out_steps,
        outputs=np.asarray(outs).reshape(len(outs), n),
        step_size=eta,
        lambda0=lam0,
        lambda_min_h0=lmin0,
        lambda_max_h0=lmax0,
        measured_rate=measured_rate(losses, fit),
        predicted_rate=1.0 - eta * lam0 / 2,
        kernel_rate_hinf=(1.0 - eta * lam0) ** 2,
        kernel_rate_h0=(1.0 - eta * lmin0) ** 2,
        drift_bound=drift_bound(r0, n, m, lam0, discrete=True),
        flow_drift_bound=drift_bound(r0, n, m, lam0),
        fit_steps=tuple(int(v) for v in fit),
        seconds=seconds,
    )


@dataclass(frozen=True)
class DuRun:
    """What :func:`du_training_run` returns: the tracked run and its kernel comparison.

    ``arrays`` holds per-step records (``loss``, ``pattern_change``, ``max_distance``,
    ``gram_steps``, ``gram_change``, ``gram_lambda_min``, ``labels`` and, with ``kernel=True``,
    the trained ``outputs`` u(k), the closed-form predictions ``kernel_hinf``/``kernel_h0`` and
    their gaps ``gap_hinf``/``gap_h0`` = ‖u(k) − u_H(k)‖ / ‖y − u(0)‖ at every step);
    ``summary`` the scalars (η, λ0, rates, drift bounds, final loss and, with ``kernel=True``,
    ``prediction_gap_hinf``/``prediction_gap_h0`` = max_k ‖u(k) − u_H(k)‖ / ‖y − u(0)‖).
    """

    track: TrackResult
    arrays: dict
    summary: dict


def du_training_run(
    x,
    y,
    width: int,
    epochs: int,
    *,
    step_size: float | None = None,
    step_size_scale: float = 0.25,
    antisymmetric: bool = False,
    gram_every: int = 1,
    kernel: bool = True,
    allow_divergent: bool = False,
    non_unit: str = "normalize",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
    progress: Callable | None = None,
) -> DuRun:
    """Train Du et al.'s two-layer ReLU network by full-batch GD and compare with the theory.

    The step size is ``step_size`` or ``step_size_scale`` × the critical rate
    2/(λ_min + λ_max) of H^∞ (:func:`widenet.dynamics.critical_learning_rate`, loss
    ½Σ(f − y)²); :func:`track` records the run; with ``kernel=True`` the outputs are compared
    at every step with the kernel predictions u(k) = y − (I − η H)^k (y − u(0)) for H = H^∞
    and H = H(0) (:func:`kernel_prediction`; Du, Zhai, Poczos, Singh 2019, ICLR, arXiv:1810.02054).
    ``x`` (n, d) float64 unit-norm inputs, ``y`` (n,) labels; the network is built in ``dtype``
    with ``seed`` (on the CPU, the same on every device) and trained on ``device``; H^∞ and the
    kernel predictions are float64 on the CPU.
    """
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    device = None if device is None else check_device(device)
    h_inf = gram_infinity(x)
    lam0 = lambda0(x, h_inf=h_inf)
    eta = step_size
    if eta is None:
        eta = step_size_scale * dynamics.critical_learning_rate(h_inf, loss="sum")
    net = TwoLayerReLU(
        x.shape[1], width, antisymmetric=antisymmetric, seed=seed, dtype=dtype, device=device
    )
    xd, yd = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    u0 = net(xd).detach().double().cpu()
    h0 = gram(net, xd).cpu() if kernel else None
    steps = list(range(epochs + 1)) if kernel else None
    res = track(
        net,
        xd,
        yd,
        epochs,
        eta,
        gram_every=gram_every,
        output_steps=steps,
        lambda0_value=lam0,
        non_unit=non_unit,
        allow_divergent=allow_divergent,
        progress=progress,
    )
    arrays = {
        "loss": res.loss,
        "pattern_change": res.pattern_change,
        "max_distance": res.max_distance,
        "gram_steps": res.gram_steps,
        "gram_change": res.gram_change,
        "gram_lambda_min": res.gram_lambda_min,
        "labels": y.numpy(),
    }
    if kernel:
        arrays["outputs"] = res.outputs
        arrays["kernel_hinf"] = kernel_prediction(h_inf, y, steps, eta, u0=u0).numpy()
        arrays["kernel_h0"] = kernel_prediction(h0, y, steps, eta, u0=u0).numpy()
    summary = {
        "n": int(x.shape[0]),
        "d": int(x.shape[1]),
        "width": width,
        "epochs": epochs,
        "step_size": eta,
        "lambda0": lam0,
        "lambda_min_h0": res.lambda_min_h0,
        "lambda_max_h0": res.lambda_max_h0,
        "final_loss": float(res.loss[-1]),
        "final_relative_error": float(res.relative_error[-1]),
        "pattern_change": float(res.pattern_change[-1]),
        "max_distance": float(res.max_distance[-1]),
        "measured_rate": res.measured_rate,
        "predicted_rate": res.predicted_rate,
        "kernel_rate_hinf": res.kernel_rate_hinf,
        "kernel_rate_h0": res.kernel_rate_h0,
        "drift_bound": res.drift_bound,
        "flow_drift_bound": res.flow_drift_bound,
        "seconds": res.seconds,
    }
    if kernel:
        scale = float(np.linalg.norm(arrays["labels"] - u0.numpy()))
        for name in ("hinf", "h0"):
            gap = np.linalg.norm(res.outputs - arrays[f"kernel_{name}"], axis=1) / scale
            arrays[f"gap_{name}"] = gap
            summary[f"prediction_gap_{name}"] = float(gap.max())
    return DuRun(res, arrays, summary)


def du_bounds(
    x,
    y,
    *,
    delta: float = 0.1,
    width: int | None = None,
    seed: int = 0,
    step_size_scale: float = 0.25,
) -> dict:
    """Du et al.'s quantities on data, as one JSON-ready record.

    From H^∞ of the unit-norm inputs ``x`` (n, d) and labels ``y`` (n,): ``lambda0`` =
    λ_min(H^∞), ``lambda_max_hinf``, the critical and largest stable GD step sizes for
    L = ½Σ(f − y)² (2/(λ_min + λ_max), 2/λ_max), ``suggested_step_size`` (``step_size_scale`` ×
    critical), the theorem's step size η = O(λ0/n²) (:func:`theorem_step_size`), the radius R
    (:func:`radius`) and the width bound (:func:`width_bound`, with ``delta``). With ``width``
    m, also H(0) of a seeded random network of that width: its extreme eigenvalues,
    ‖H(0) − H^∞‖₂, the initial residual ‖y − u(0)‖ and the drift bounds (:func:`drift_bound`)
    for GD and for gradient flow. Du, Zhai, Poczos, Singh (2019), ICLR, arXiv:1810.02054.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    n, d = x.shape
    h_inf = gram_infinity(x)
    lam0 = lambda0(x, h_inf=h_inf)
    lmax = float(torch.linalg.eigvalsh(h_inf)[-1])
    crit = dynamics.critical_learning_rate(h_inf, loss="sum")
    wb = width_bound(n, lam0, delta, label_power=float((y**2).mean()))
    rows = {
        "n": n,
        "d": d,
        "lambda0": lam0,
        "lambda_max_hinf": lmax,
        "critical_learning_rate": crit,
        "max_learning_rate": 2.0 / lmax,
        "suggested_step_size": step_size_scale * crit,
        "theorem_step_size": theorem_step_size(lam0, n),
        "radius": radius(lam0, n, delta),
        "width_bound": wb.width,
        "width_bound_constant": wb.constant,
        "width_bound_lemma_3_1": wb.gram_width,
        "delta": delta,
    }
    if width is not None:
        net = TwoLayerReLU(d, width, seed=seed, dtype=torch.float64)
        h0 = gram(net, x)
        ev = torch.linalg.eigvalsh(h0)
        r0 = float((y - net(x).detach()).norm())
        rows.update(
            width=width,
            lambda_min_h0=float(ev[0]),
            lambda_max_h0=float(ev[-1]),
            max_step_size_h0=2.0 / float(ev[-1]),
            h0_minus_hinf=float(torch.linalg.matrix_norm(h0 - h_inf, 2)),
            initial_residual=r0,
            drift_bound_gd=drift_bound(r0, n, width, lam0, discrete=True),
            drift_bound_flow=drift_bound(r0, n, width, lam0),
            width_over_bound=width / wb.width,
        )
    return rows
