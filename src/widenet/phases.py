"""The phase diagram of two-layer ReLU networks: linear, critical and condensed regimes.

The network (Luo, Xu, Ma, Zhang 2021, eq. 1) is

    f(x) = (1/α) Σ_{k=1}^{m} a_k relu(w_kᵀ x̃),    x̃ = (x, 1),
    a_k ~ N(0, β1²),   w_k ~ N(0, β2² I_{d+1}),

trained by gradient descent on the loss ``L = (1/2n) Σ_i (f(x_i) − y_i)²``. **β1 and β2 are
standard deviations** (the variances are β1², β2², :attr:`Scaling.var1`, :attr:`Scaling.var2`)
everywhere in this module, as in the paper's N(0, β²). An implementation that passes a power
of m as the standard deviation where the text means the variance (or the reverse) is off by a
factor 2 in every exponent, i.e. sits at another (γ, γ′); ``torch.randn(...) * beta`` here.
With

    κ = β1 β2 / α,   κ′ = β1 / β2,   γ = −log κ / log m,   γ′ = −log κ′ / log m,

the rescaled gradient flow depends on (α, β1, β2) only through (κ, κ′) (and a time scale), so
the regime of training as m → ∞ is a function of (γ, γ′) (Luo et al., Sec. 3):

* **linear** when γ < 1 or γ′ > γ − 1: the input weights barely move, RD → 0 (NTK-like);
* **condensed** when γ > 1 and γ′ < γ − 1: RD → ∞, the input weights condense onto a few
  orientations;
* **critical** on the boundary {γ = 1, γ′ ≤ 0} ∪ {γ ≥ 1, γ′ = γ − 1}: RD = O(1) (mean field).

The order parameter is ``RD(θ_w) = ‖θ_w(T) − θ_w(0)‖ / ‖θ_w(0)‖`` over all input weights
(bias included) at the time T when the loss first falls below a tolerance, and the regime is
read off the slope S_w of log RD against log m over a width sweep (S_w < 0 linear, ≈ 0
critical, > 0 condensed).

Normalisation (``scaling``). Since only (κ, κ′) matter, a point (γ, γ′, m) is mapped back to
α fixed (default α = 1, the time scale then matching the raw gradient flow) and

    β1 = sqrt(α κ κ′) = sqrt(α) m^{−(γ+γ′)/2},   β2 = sqrt(α κ / κ′) = sqrt(α) m^{−(γ−γ′)/2}.

Named points: NTK (α = √m, β1 = β2 = 1) is (1/2, 0); LeCun (w ~ N(0, 1/d), a ~ N(0, 1/m)) and
He (variances 2/d, 2/m) are (1/2, 1/2); Xavier (variances 2/(d+m), 2/(m+1)) and mean field
(α = m, β1 = β2 = 1) are (1, 0), on the boundary.

Training (``train_to_tolerance``) is vectorised over many networks at once, with closed-form
gradients of the two-layer net (no autograd): networks of similar width are batched in blocks
(k networks × M neurons, padded with zero neurons, which stay zero), a few batched products and
in-place passes per step, each block's arrays small enough to stay in a core's cache, so a
whole width sweep over a (γ, γ′) grid, widths up to 40000, costs ~20 ns of one core per
neuron and step on the four points of :data:`PAPER_DATA`.
The step size of each network is ``min(lr_max, lr_scale · n / tr Θ)`` with Θ its current NTK
Gram matrix on the data: since λ_max(Θ) ≤ tr Θ, the linearised step contracts every mode
(η λ/n ≤ lr_scale), whatever the scale of Θ (which varies as m^{1−γ} across the diagram); the
cap ``lr_max`` bounds the step where Θ is tiny (small initialisation), where the dynamics is the
O(1)-rate escape of a, w from zero rather than the kernel's. RD at the loss tolerance does not
depend on the time parameterisation, so a per-network step is legitimate.

ASI (anti-symmetric initialisation, Zhang, Xu, Luo, Ma 2020): the m neurons are m/2 pairs
(a_k, w_k), (−a_k, w_k), so f ≡ 0 at initialisation and the fit does not start from a random
function whose size depends on (γ, γ′); the pairs are trained as independent neurons.

References
----------
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71):1−47. arXiv:2007.07497.
Zhang, Xu, Luo, Ma (2020). A type of generalization error induced by initialization in deep
neural networks. MSML. arXiv:1905.07777 (the ASI trick).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from widenet._checks import as_tensor, check_device, check_finite, check_int, check_real
from widenet.threads import map_blocks

__all__ = [
    "NAMED_POINTS",
    "PAPER_DATA",
    "REGIMES",
    "PhasePoint",
    "Scaling",
    "TrainResult",
    "as_module",
    "boundary_distance",
    "coordinates",
    "forward",
    "init_params",
    "loss",
    "measure_slopes",
    "ntk_trace",
    "regime",
    "relative_distance",
    "rd_slope",
    "scaling",
    "train_to_tolerance",
]

REGIMES = ("linear", "critical", "condensed")

# (γ, γ′) of the common initialisations (Luo et al. 2021, Fig. 1 and Table 1).
NAMED_POINTS: dict[str, tuple[float, float]] = {
    "NTK": (0.5, 0.0),
    "LeCun": (0.5, 0.5),
    "He": (0.5, 0.5),
    "Xavier": (1.0, 0.0),
    "mean-field": (1.0, 0.0),
}

# The 1-D problem of the phase-diagram experiment: four training points on [−1, 1] (our
# choice of values; Luo et al. use four 1-D points, Fig. 2-3) with targets of both signs, so
# that an ASI network (f ≡ 0 at init) has to bend to fit them.
PAPER_DATA = (
    torch.tensor([[-1.0], [-1.0 / 3.0], [1.0 / 3.0], [1.0]], dtype=torch.float64),
    torch.tensor([0.4, -0.2, 0.3, 0.1], dtype=torch.float64),
)


# --------------------------------------------------------------------------------------------
# Coordinates and regimes


@dataclass(frozen=True)
class Scaling:
    """A point of the diagram at width m: (α, β1, β2) with β the *standard deviations*."""

    width: int
    alpha: float
    beta1: float  # std of the output weights a_k
    beta2: float  # std of every entry of the input weights w_k (bias included)

    @property
    def kappa(self) -> float:
        return self.beta1 * self.beta2 / self.alpha

    @property
    def kappa_prime(self) -> float:
        return self.beta1 / self.beta2

    @property
    def gamma(self) -> float:
        return -math.log(self.kappa) / math.log(self.width)

    @property
    def gamma_prime(self) -> float:
        return -math.log(self.kappa_prime) / math.log(self.width)

    @property
    def var1(self) -> float:
        """Variance β1² of a_k."""
        return self.beta1**2

    @property
    def var2(self) -> float:
        """Variance β2² of each entry of w_k."""
        return self.beta2**2


def _check_width(width) -> int:
    width = check_int(width, "width", minimum=2)
    return width


def coordinates(alpha, beta1, beta2, width) -> tuple[float, float]:
    """(γ, γ′) of a network of width m with output scale α and init stds β1 (a), β2 (w).

    γ = −log(β1 β2 / α) / log m, γ′ = −log(β1 / β2) / log m (Luo et al. 2021, eq. 7).
    """
    width = _check_width(width)
    for value, name in ((alpha, "alpha"), (beta1, "beta1"), (beta2, "beta2")):
        check_real(value, name, minimum=0.0, strict=True)
    s = Scaling(width, float(alpha), float(beta1), float(beta2))
    return s.gamma, s.gamma_prime


def scaling(gamma, gamma_prime, width, *, alpha: float = 1.0) -> Scaling:
    """The (α, β1, β2) of the point (γ, γ′) at width m, with α fixed (see the module doc).

    β1 = sqrt(α κ κ′), β2 = sqrt(α κ / κ′) with κ = m^−γ, κ′ = m^−γ′ (standard deviations).
    """
    gamma = check_real(gamma, "gamma")
    gamma_prime = check_real(gamma_prime, "gamma_prime")
    width = _check_width(width)
    alpha = check_real(alpha, "alpha", minimum=0.0, strict=True)
    log_m = math.log(width)
    beta1 = math.sqrt(alpha) * math.exp(-0.5 * (gamma + gamma_prime) * log_m)
    beta2 = math.sqrt(alpha) * math.exp(-0.5 * (gamma - gamma_prime) * log_m)
    if not (0.0 < beta1 < math.inf and 0.0 < beta2 < math.inf):
        raise ValueError(
            f"(gamma, gamma_prime) = ({gamma}, {gamma_prime}) at width {width} gives "
            f"beta1 = {beta1:.3g}, beta2 = {beta2:.3g}, outside floating-point range"
        )
    return Scaling(width, alpha, beta1, beta2)


def boundary_distance(gamma, gamma_prime) -> float:
    """Euclidean distance from (γ, γ′) to the critical line {γ=1, γ′≤0} ∪ {γ≥1, γ′=γ−1}."""
    g = check_real(gamma, "gamma") - 1.0
    gp = check_real(gamma_prime, "gamma_prime")
    vertical = abs(g) if gp <= 0.0 else math.hypot(g, gp)
    s = max(0.0, 0.5 * (g + gp))  # projection on the ray (1 + s, s), s >= 0
    return min(vertical, math.hypot(g - s, gp - s))


def regime(gamma, gamma_prime, *, tol: float = 1e-9) -> str:
    """``"linear"``, ``"critical"`` or ``"condensed"``: the regime of (γ, γ′) as m → ∞.

    Condensed: γ > 1 and γ′ < γ − 1; linear: γ < 1 or γ′ > γ − 1; critical: within ``tol``
    (Euclidean distance in the (γ, γ′) plane) of the boundary between them.
    """
    tol = check_real(tol, "tol", minimum=0.0)
    if boundary_distance(gamma, gamma_prime) <= tol:
        return "critical"
    return "condensed" if gamma > 1.0 and gamma_prime < gamma - 1.0 else "linear"


@dataclass(frozen=True)
class PhasePoint:
    """A point of the diagram, its theoretical regime and the named initialisations there."""

    gamma: float
    gamma_prime: float
    regime: str
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, gamma, gamma_prime, *, tol: float = 1e-9) -> PhasePoint:
        names = tuple(
            k
            for k, (g, gp) in NAMED_POINTS.items()
            if abs(g - gamma) <= max(tol, 1e-12) and abs(gp - gamma_prime) <= max(tol, 1e-12)
        )
        return cls(float(gamma), float(gamma_prime), regime(gamma, gamma_prime, tol=tol), names)


# --------------------------------------------------------------------------------------------
# The network


def _augment(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def _data(x, y, dtype=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_tensor(x, "x", dtype=dtype, device=device)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be (n_samples, n_features) with n >= 1, got {tuple(x.shape)}")
    check_finite(x, "x")
    y = as_tensor(y, "y", dtype=x.dtype, device=x.device).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have {x.shape[0]} values (one per row of x), got {y.shape[0]}")
    check_finite(y, "y")
    return x, y


def init_params(
    s: Scaling,
    in_dim: int,
    *,
    asi: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a (m,), w (m, d+1))`` with a ~ N(0, β1²), w ~ N(0, β2² I); ``asi``: pairs (a, w), (−a, w).

    Drawn on the CPU from ``generator`` (the same network on every device), then moved.
    """
    if not isinstance(s, Scaling):
        raise TypeError(f"s must be a phases.Scaling, got {type(s).__name__}")
    in_dim = check_int(in_dim, "in_dim", minimum=1)
    device = None if device is None else check_device(device)
    m = s.width
    if asi and m % 2:
        raise ValueError(f"ASI pairs the neurons, so the width must be even, got {m}")
    half = m // 2 if asi else m
    a = torch.randn(half, generator=generator, dtype=torch.float64) * s.beta1
    w = torch.randn(half, in_dim + 1, generator=generator, dtype=torch.float64) * s.beta2
    if asi:
        a, w = torch.cat([a, -a]), torch.cat([w, w])
    return a.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def forward(a, w, x, alpha: float = 1.0) -> torch.Tensor:
    """f(x) = (1/α) Σ_k a_k relu(w_kᵀ x̃) for x of shape (n, d); returns (n,)."""
    xt = _augment(x)
    return torch.relu(xt @ w.T) @ a / alpha


def as_module(a, w, alpha: float = 1.0) -> torch.nn.Sequential:
    """The network as ``nn.Sequential(Linear(d, m), ReLU(), Linear(m, 1, bias=False))``.

    The first layer holds w (bias = last column), the second a / α: the same function, for
    tools that take a module (``wn.empirical_ntk``, ``wn.regime.classify``).
    """
    a = as_tensor(a, "a")
    w = as_tensor(w, "w", dtype=a.dtype, device=a.device)
    if a.ndim != 1 or w.ndim != 2 or w.shape[0] != a.shape[0] or w.shape[1] < 2:
        raise ValueError(f"a must be (m,) and w (m, d+1), got {tuple(a.shape)}, {tuple(w.shape)}")
    alpha = check_real(alpha, "alpha", minimum=0.0, strict=True)
    m, d = w.shape[0], w.shape[1] - 1
    first = torch.nn.Linear(d, m, dtype=a.dtype, device=a.device)
    second = torch.nn.Linear(m, 1, bias=False, dtype=a.dtype, device=a.device)
    with torch.no_grad():
        first.weight.copy_(w[:, :d])
        first.bias.copy_(w[:, d])
        second.weight.copy_(a[None, :] / alpha)
    return torch.nn.Sequential(first, torch.nn.ReLU(), second)


def loss(a, w, x, y, alpha: float = 1.0) -> torch.Tensor:
    """L = (1/2n) Σ_i (f(x_i) − y_i)²."""
    return 0.5 * ((forward(a, w, x, alpha) - y) ** 2).mean()


def ntk_trace(a, w, x, alpha: float = 1.0) -> torch.Tensor:
    """tr Θ = Σ_i Σ_k [relu(w_kᵀx̃_i)² + a_k² 1(w_kᵀx̃_i > 0) ‖x̃_i‖²] / α²."""
    xt = _augment(x)
    h = xt @ w.T
    per = torch.relu(h) ** 2 + (a**2)[None, :] * (h > 0) * (xt**2).sum(1, keepdim=True)
    return per.sum() / alpha**2


def relative_distance(w0, w1) -> float:
    """RD = ‖w1 − w0‖_F / ‖w0‖_F (Luo et al. 2021, eq. 12)."""
    w0 = as_tensor(w0, "w0")
    w1 = as_tensor(w1, "w1", dtype=w0.dtype, device=w0.device)
    if w0.shape != w1.shape:
        raise ValueError(f"w0 and w1 must have the same shape, got {w0.shape} and {w1.shape}")
    norm = torch.linalg.vector_norm(w0)
    if float(norm) == 0.0:
        raise ValueError("w0 is zero: the relative distance is undefined")
    return float(torch.linalg.vector_norm(w1 - w0) / norm)


# --------------------------------------------------------------------------------------------
# Vectorised training of many networks to a loss tolerance


@dataclass
class TrainResult:
    """Per network: RD at the stop, steps taken, final loss, whether the tolerance was met."""

    rd: np.ndarray
    steps: np.ndarray
    final_loss: np.ndarray
    converged: np.ndarray
    a: list[torch.Tensor] = field(default_factory=list, repr=False)
    w: list[torch.Tensor] = field(default_factory=list, repr=False)


# Blocks of networks: on the CPU, a block's (k, n, M) array (preactivations, activations) holds at
# most this many numbers (1 MiB in float64), so that all of a step's passes over them run in a
# core's L2 cache. Off the CPU a block is a whole class of similar widths.
BLOCK_ELEMENTS = 1 << 17
# Networks share a block (padded with zero neurons to its widest) when their width is at least
# this fraction of the widest: at most 1/8 of a block is padding.
_PAD_RATIO = 0.875


@dataclass
class _Block:
    """Networks ``ids`` (widths ``widths``), padded with zero neurons to a common width M."""

    ids: list[int]
    widths: list[int]
    a: torch.Tensor  # (k, M)
    w: torch.Tensor  # (k, d+1, M): neurons along the last (contiguous) axis
    w_init: torch.Tensor  # (k, d+1, M)
    inv_alpha: torch.Tensor  # (k,)


class _Work:
    """A block's arrays for one step, allocated once and reused by every step (``out=``, in
    place) so that they stay in cache; ``h`` (k, n, M) holds h, then relu(h), then 1(h > 0)."""

    def __init__(self, b: _Block, xt: torch.Tensor):
        k, d1, m = b.w.shape
        n = xt.shape[0]
        new = b.a.new_empty
        self.h, self.p, self.scaled_a, self.tmp = new(k, n, m), new(k, d1, m), new(k, m), new(k, m)
        self.lhs = new(k, d1, n)
        self.h_t = self.h.transpose(1, 2)
        self.h_flat = self.h.view(k, 1, n * m)
        self.h_flat_t = self.h_flat.transpose(1, 2)
        self.scaled_a_row, self.tmp_row = self.scaled_a[:, None, :], self.tmp[:, None, :]
        self.w_rows, self.p_rows = b.w.unbind(1), self.p.unbind(1)
        self.xt = xt.expand(k, n, d1)
        self.inv_alpha, self.inv_alpha2 = b.inv_alpha[:, None], b.inv_alpha.square()


def _pack(widths: list[int], n: int, limit: float) -> list[list[int]]:
    """Networks grouped into blocks: widest first, a network joins the current block while the
    block stays within ``limit`` numbers in its (k, n, M) array and its padding within 1/8."""
    groups: list[list[int]] = []
    for j in sorted(range(len(widths)), key=lambda j: -widths[j]):
        if groups:
            g = groups[-1]
            top = widths[g[0]]
            if (len(g) + 1) * top * n <= limit and widths[j] >= _PAD_RATIO * top:
                g.append(j)
                continue
        groups.append([j])
    return groups


def _make_block(nets, ids: list[int]) -> _Block:
    widths = [nets[j][0].shape[0] for j in ids]
    top = max(widths)
    a0, w0 = nets[ids[0]][0], nets[ids[0]][1]
    a = torch.zeros(len(ids), top, dtype=a0.dtype, device=a0.device)
    w = torch.zeros(len(ids), w0.shape[1], top, dtype=w0.dtype, device=w0.device)
    for i, j in enumerate(ids):
        a[i, : widths[i]] = nets[j][0]
        w[i, :, : widths[i]] = nets[j][1].T
    inv_alpha = torch.tensor([1.0 / nets[j][2] for j in ids], dtype=a0.dtype, device=a0.device)
    return _Block(ids, widths, a, w, w.clone(), inv_alpha)


def train_to_tolerance(
    nets: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    x,
    y,
    *,
    loss_tol: float = 1e-5,
    max_steps: int = 200_000,
    lr_scale: float = 0.5,
    lr_max: float = 1.0,
    keep_params: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Full-batch gradient descent of many two-layer nets ``(a, w, α)`` until each reaches L < tol.

    All networks share the data ``(x, y)`` and are trained by batched closed-form gradients:

        r = f(x) − y,   ∂L/∂a_k = (1/nα) Σ_i r_i relu(w_kᵀx̃_i),
        ∂L/∂w_k = (a_k/nα) Σ_i r_i 1(w_kᵀx̃_i > 0) x̃_i.

    A network stops (and its RD of the input weights is recorded) at the first step where its
    loss is below ``loss_tol``, or after ``max_steps`` (then ``converged`` is False). Step size
    per network: ``min(lr_max, lr_scale · n / tr Θ)`` (see the module docstring).
    ``callback(step, n_active)`` is called every 1000 steps.

    Networks of similar width form blocks (padded with zero neurons, which stay zero and add
    nothing to f, tr Θ or RD), trained as (k, n, M) batches: on the CPU a block's arrays fit a
    core's L2 cache (:data:`BLOCK_ELEMENTS`) and every block runs all its steps at once (up to
    the next callback), the blocks in the pool of :func:`widenet.threads.map_blocks`.
    """
    if len(nets) == 0:
        raise ValueError("nets is empty")
    w0 = nets[0][1]
    x, y = _data(x, y, dtype=w0.dtype, device=w0.device)
    loss_tol = check_real(loss_tol, "loss_tol", minimum=0.0, strict=True)
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    lr_scale = check_real(lr_scale, "lr_scale", minimum=0.0, strict=True)
    lr_max = check_real(lr_max, "lr_max", minimum=0.0, strict=True)
    n_nets = len(nets)
    for j, (a, w, alpha) in enumerate(nets):
        if a.ndim != 1 or w.ndim != 2 or w.shape != (a.shape[0], x.shape[1] + 1):
            raise ValueError(
                f"nets[{j}]: a must be (m,) and w (m, {x.shape[1] + 1}), got "
                f"{tuple(a.shape)} and {tuple(w.shape)}"
            )
        if a.dtype != w0.dtype or w.device != w0.device:
            raise ValueError(f"nets[{j}] has another dtype or device than nets[0]")
        check_real(alpha, f"nets[{j}] alpha", minimum=0.0, strict=True)

    xt = _augment(x)
    n, d = x.shape
    sq = (xt**2).sum(1)  # ‖x̃_i‖²
    on_cpu = w0.device.type == "cpu"
    limit = BLOCK_ELEMENTS if on_cpu else math.inf
    blocks = [_make_block(nets, g) for g in _pack([a.shape[0] for a, _, _ in nets], n, limit)]

    rd = np.full(n_nets, np.nan)
    steps_taken = np.zeros(n_nets, dtype=np.int64)
    final = np.full(n_nets, np.nan)
    converged = np.zeros(n_nets, dtype=bool)
    out_a: list = [None] * n_nets
    out_w: list = [None] * n_nets

    xt_rows = xt.T.contiguous()  # (d+1, n)

    def forward(b: _Block, ws: _Work) -> torch.Tensor:
        """relu(h) into ``ws.h`` (k, n, M), a_k/α into ``ws.scaled_a``; returns r = f − y."""
        torch.bmm(ws.xt, b.w, out=ws.h)  # h_ki = w_k·x̃_i
        ws.h.clamp_min_(0.0)
        torch.mul(b.a, ws.inv_alpha, out=ws.scaled_a)
        # f_i = Σ_k (a_k/α) relu(h_ki): a (1, M) x (M, n) product per network (the faster
        # orientation on the CPU, ~3x faster than the (n, M) x (M, 1) one).
        return torch.bmm(ws.scaled_a_row, ws.h_t).view(-1, n).sub_(y)

    def finish(b: _Block, flags: list[bool], losses: list[float], step: int) -> _Block | None:
        diff2 = ((b.w - b.w_init) ** 2).sum((1, 2))
        ratio = (diff2 / (b.w_init**2).sum((1, 2))).sqrt().cpu().numpy()
        for i in np.flatnonzero(flags).tolist():
            j = b.ids[i]
            rd[j], steps_taken[j] = ratio[i], step
            final[j], converged[j] = losses[i], losses[i] < loss_tol
            if keep_params:
                out_a[j] = b.a[i, : b.widths[i]].clone()
                out_w[j] = b.w[i, :, : b.widths[i]].T.contiguous()
        if all(flags):
            return None
        keep = torch.tensor([not f for f in flags], device=b.a.device)
        ids = [j for j, f in zip(b.ids, flags, strict=True) if not f]
        widths = [m for m, f in zip(b.widths, flags, strict=True) if not f]
        return _Block(ids, widths, b.a[keep], b.w[keep], b.w_init[keep], b.inv_alpha[keep])

    def advance(b: _Block, start: int, stop: int) -> _Block | None:
        """Steps start, ..., stop − 1 of block b; None once all its networks have stopped."""
        ws = _Work(b, xt)
        for step in range(start, stop):
            r = forward(b, ws)
            losses = [0.5 * math.fsum(v * v for v in row) / n for row in r.tolist()]
            if not all(map(math.isfinite, losses)):
                raise FloatingPointError(
                    "training diverged (non-finite loss); lower lr_scale/lr_max"
                )
            if step == max_steps or min(losses) < loss_tol:
                b = finish(b, [step == max_steps or v < loss_tol for v in losses], losses, step)
                if b is None:
                    return None
                ws = _Work(b, xt)  # the survivors' (once per network that stops)
                r = forward(b, ws)
            h, p, tmp = ws.h, ws.p, ws.tmp
            # tr Θ = Σ_ki relu(h_ki)² + Σ_i ‖x̃_i‖² Σ_k a_k² 1(h_ki > 0), over α².
            tr = torch.bmm(ws.h_flat, ws.h_flat_t).view(-1)
            torch.mul(b.a, b.a, out=tmp)
            h.sign_()  # 1(h > 0), as relu(h) >= 0
            tr.add_(torch.bmm(ws.tmp_row, ws.h_t).view(-1, n) @ sq)
            lr = torch.div(lr_scale * n, tr.mul_(ws.inv_alpha2)).clamp_(max=lr_max)
            # p_k = lr Σ_i 1(h_ki > 0) (r_i/n) x̃_i: the input-weight step over a_k/α; the output
            # weight's gradient Σ_i (r_i/n) relu(h_ki) is w_k·p_k/lr (relu(h) = 1(h > 0) h).
            torch.mul(r.mul_((lr / n)[:, None])[:, None, :], xt_rows, out=ws.lhs)
            torch.bmm(ws.lhs, h, out=p)  # (k, d+1, M)
            torch.mul(ws.w_rows[0], ws.p_rows[0], out=tmp)
            for c in range(1, d + 1):
                tmp.addcmul_(ws.w_rows[c], ws.p_rows[c])
            b.a.addcmul_(tmp, ws.inv_alpha, value=-1.0)
            b.w.addcmul_(p, ws.scaled_a_row, value=-1.0)
        return b

    # Blocks are independent: each runs up to the next callback step (steps 0, 1000, 2000, ...)
    # or to the end, then the survivors go on.
    step = 0
    while blocks:
        stop = max_steps + 1
        if callback is not None:
            stop = min(stop, 1000 * (step // 1000 + (step > 0)) + 1)
        work = functools.partial(advance, start=step, stop=stop)
        blocks = [b for b in map_blocks(work, blocks, w0.device) if b is not None]
        step = stop
        last = stop - 1
        if callback is not None and blocks and last % 1000 == 0:
            callback(last, sum(len(b.ids) for b in blocks))
    return TrainResult(rd, steps_taken, final, converged, out_a, out_w)


def _slope(widths, values) -> float:
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def measure_slopes(
    points: Sequence[tuple[float, float]],
    widths: Sequence[int],
    x=None,
    y=None,
    *,
    seed: int = 0,
    asi: bool = True,
    alpha: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device=None,
    **train_kwargs,
) -> list[dict]:
    """S_w (slope of log RD vs log m) at each (γ, γ′) of ``points`` over ``widths``.

    All networks (points × widths) are trained together by :func:`train_to_tolerance` on the
    data (default :data:`PAPER_DATA`). Network (point p, width m) is drawn from the seed
    ``seed + 1000 p + i`` (i the width's index). Returns one dict per point: ``gamma``,
    ``gamma_prime``, ``slope``, ``regime`` (theoretical), ``widths``, ``rd``, ``steps``,
    ``converged`` (all widths reached the loss tolerance), ``final_loss``.
    """
    if x is None and y is None:
        x, y = PAPER_DATA
    x, y = _data(x, y, dtype=dtype, device=device)
    widths = [_check_width(m) for m in widths]
    if len(set(widths)) < 2:
        raise ValueError("widths must hold at least two distinct widths to fit a slope")
    if len(points) == 0:
        raise ValueError("points is empty")
    nets = []
    for p, (g, gp) in enumerate(points):
        for i, m in enumerate(widths):
            s = scaling(g, gp, m, alpha=alpha)
            gen = torch.Generator().manual_seed(int(seed) + 1000 * p + i)
            a, w = init_params(s, x.shape[1], asi=asi, generator=gen, dtype=dtype, device=device)
            nets.append((a, w, alpha))
    res = train_to_tolerance(nets, x, y, **train_kwargs)
    out = []
    k = len(widths)
    for p, (g, gp) in enumerate(points):
        sl = slice(p * k, (p + 1) * k)
        out.append(
            {
                "gamma": float(g),
                "gamma_prime": float(gp),
                "slope": _slope(widths, res.rd[sl]),
                "regime": regime(g, gp),
                "widths": widths,
                "rd": res.rd[sl].tolist(),
                "steps": res.steps[sl].tolist(),
                "converged": bool(res.converged[sl].all()),
                "final_loss": res.final_loss[sl].tolist(),
            }
        )
    return out


def rd_slope(gamma, gamma_prime, widths, x=None, y=None, **kwargs) -> dict:
    """S_w at one point (γ, γ′): :func:`measure_slopes` for a single point."""
    return measure_slopes([(gamma, gamma_prime)], widths, x, y, **kwargs)[0]
