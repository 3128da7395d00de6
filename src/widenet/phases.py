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

Training (``train_to_tolerance``) is vectorised over many networks at once: all neurons of all
networks are one flat array, with closed-form gradients of the two-layer net (no autograd), so a
whole width sweep over a (γ, γ′) grid, widths up to 40000, is a few matrix products per step.
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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from widenet._checks import as_tensor, check_device, check_finite, check_int, check_real

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

    All networks share the data ``(x, y)``; their neurons are stacked into one array and updated
    together with closed-form gradients. A network stops (and its RD of the input weights is
    recorded) at the first step where its loss is below ``loss_tol``, or after ``max_steps``
    (then ``converged`` is False). Step size per network: ``min(lr_max, lr_scale · n / tr Θ)``
    (see the module docstring). ``callback(step, n_active)`` is called every 1000 steps.
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
    n = x.shape[0]
    sq = (xt**2).sum(1)  # ‖x̃_i‖²
    a_all = torch.cat([a for a, _, _ in nets]).clone()
    w_all = torch.cat([w for _, w, _ in nets]).clone()
    w_init = w_all.clone()
    # Networks are contiguous segments of the flat arrays: per-network sums are sums over views
    # (torch.split) and per-network values are spread by repeat_interleave; both are several
    # times faster on the CPU than index_add_ / gathers through a segment index.
    sizes = [a.shape[0] for a, _, _ in nets]
    inv_alpha = torch.tensor([1.0 / alpha for _, _, alpha in nets], dtype=w0.dtype)
    inv_alpha = inv_alpha.to(w0.device)
    ids = list(range(n_nets))  # network of each active slot

    def segsum(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([part.sum(0) for part in torch.split(v, sizes)])

    def spread(v: torch.Tensor) -> torch.Tensor:
        lengths = torch.tensor(sizes, device=v.device)
        return torch.repeat_interleave(v, lengths, dim=0, output_size=sum(sizes))

    inv_alpha_n = spread(inv_alpha)

    rd = np.full(n_nets, np.nan)
    steps_taken = np.zeros(n_nets, dtype=np.int64)
    final = np.full(n_nets, np.nan)
    converged = np.zeros(n_nets, dtype=bool)
    out_a: list = [None] * n_nets
    out_w: list = [None] * n_nets

    def finish(mask_nets: torch.Tensor, losses: torch.Tensor, step: int) -> None:
        nonlocal a_all, w_all, w_init, sizes, inv_alpha, inv_alpha_n, ids
        diff2 = segsum(((w_all - w_init) ** 2).sum(1))
        ratio = (diff2 / segsum((w_init**2).sum(1))).sqrt().cpu().numpy()
        loss_np = losses.cpu().numpy()
        done = mask_nets.cpu().tolist()
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for slot in np.flatnonzero(done).tolist():
            j = ids[slot]
            rd[j], steps_taken[j] = ratio[slot], step
            final[j], converged[j] = loss_np[slot], loss_np[slot] < loss_tol
            if keep_params:
                sl = slice(int(starts[slot]), int(starts[slot + 1]))
                out_a[j], out_w[j] = a_all[sl].clone(), w_all[sl].clone()
        keep = ~spread(mask_nets)
        a_all, w_all, w_init = a_all[keep], w_all[keep], w_init[keep]
        sizes = [m for m, d in zip(sizes, done, strict=True) if not d]
        ids = [j for j, d in zip(ids, done, strict=True) if not d]
        inv_alpha = inv_alpha[~mask_nets]
        inv_alpha_n = inv_alpha_n[keep]

    def preactivations() -> torch.Tensor:
        if xt.shape[1] > 4:
            return w_all @ xt.T
        # A (N, d+1) x (d+1, n) product with tiny d+1 is faster as d+1 broadcast products.
        h = w_all[:, :1] * xt[:, 0]
        for c in range(1, xt.shape[1]):
            h = torch.addcmul(h, w_all[:, c : c + 1], xt[:, c])
        return h

    def state():
        h = preactivations()  # (N, n)
        act = torch.relu(h)
        scaled_a = a_all * inv_alpha_n
        r = segsum(act * scaled_a[:, None]) - y
        losses = 0.5 * (r**2).mean(1)
        if not bool(torch.isfinite(losses).all()):
            raise FloatingPointError("training diverged (non-finite loss); lower lr_scale/lr_max")
        return h, act, scaled_a, r, losses

    for step in range(max_steps + 1):
        h, act, scaled_a, r, losses = state()
        done = losses < loss_tol if step < max_steps else torch.ones_like(losses, dtype=bool)
        if bool(done.any()):
            finish(done, losses, step)
            if len(ids) == 0:
                break
            h, act, scaled_a, r, losses = state()
        # tr Θ per network and the step sizes.
        on = (h > 0).to(h.dtype)
        per = act**2 + (a_all**2)[:, None] * on * sq
        tr = segsum(per.sum(1))
        lr = torch.clamp(lr_scale * n / (tr * inv_alpha**2), max=lr_max)
        rn = spread(r / n)  # dL/df_i for each neuron's network
        lr_n = spread(lr)
        grad_a = (act * rn).sum(1) * inv_alpha_n
        grad_w = (on * rn * scaled_a[:, None]) @ xt
        a_all = a_all - lr_n * grad_a
        w_all = w_all - lr_n[:, None] * grad_w
        if callback is not None and step % 1000 == 0:
            callback(step, len(ids))
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
