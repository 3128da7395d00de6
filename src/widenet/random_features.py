r"""Random-features regression: random ReLU and random Fourier features, min-norm and ridge fits.

A random-features model is linear in N fixed random features, h(x) = Σ_j β_j φ_j(x), with only
β trained. Two families (Rahimi & Recht 2007, "Random features for large-scale kernel machines";
Belkin, Hsu, Ma & Mandal 2019, "Reconciling modern machine-learning practice and the classical
bias–variance trade-off", PNAS, Sec. 2):

* **Random ReLU features** (a two-layer network whose first layer is frozen at initialisation):

      φ_j(x) = relu(w_std · w_jᵀx/√d + b_std · b_j) / √N,    w_j ~ N(0, I_d), b_j ~ N(0, 1),

  so that φ(x)ᵀφ(x') → E[relu(u) relu(u')] as N → ∞, with (u, u') the first-layer
  pre-activations: the NNGP of ``wn.mlp(1, "relu", w_std, b_std)`` minus its last-layer b_std²
  (the arc-cosine kernel of Cho & Saul 2009 when b_std = 0).

* **Random Fourier features** for the Gaussian kernel k(x, x') = exp(−‖x − x'‖² / (2σ²)):

      φ(x) = [cos(ω_jᵀx), sin(ω_jᵀx)]_{j=1..N/2} / √(N/2),    ω_j ~ N(0, σ⁻² I_d),

  whose inner product (1/M) Σ_j cos(ω_jᵀ(x − x')) is an unbiased Monte Carlo estimate of k
  (Bochner's theorem), with variance O(1/N).

**Count convention.** N is always the number of *real* features, the columns of Φ and the
number of trained coefficients per output. Fourier features come in cos/sin pairs, so N must be
even and uses N/2 frequencies. With n training points the interpolation threshold is N = n: below
it least squares cannot fit the n targets, above it infinitely many β interpolate.

**Fits.** :func:`min_norm_least_squares` returns β = Φ⁺ y, the least-squares solution of smallest
Euclidean norm (the interpolant of smallest norm when N ≥ n), from LAPACK's ``gelsd`` (SVD-based)
on the CPU or the SVD pseudo-inverse elsewhere — never an explicit inverse. :func:`ridge` solves
(ΦᵀΦ + λI) β = Φᵀy, through the n×n dual system Φᵀ(ΦΦᵀ + λI)⁻¹y when N > n (Cholesky solves).
:func:`sweep` fits both for a list of N and reports the train/test zero-one and squared losses and
‖β‖, the three curves of Belkin et al. 2019, Fig. 2 ("double descent").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from widenet._checks import (
    as_tensor,
    check_device,
    check_finite,
    check_inputs,
    check_int,
    check_real,
)

__all__ = [
    "FEATURES",
    "FourierFeatures",
    "ReLUFeatures",
    "SweepResult",
    "feature_counts",
    "fourier_features",
    "gaussian_kernel",
    "min_norm_least_squares",
    "relu_features",
    "ridge",
    "sweep",
    "zero_one_loss",
]

FEATURES = ("relu", "fourier")
_F64 = torch.float64


def _generator(seed) -> torch.Generator:
    return torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))


@dataclass(frozen=True)
class ReLUFeatures:
    """A fixed draw of random ReLU features; ``features(x)`` is Φ (n, N). See the module doc."""

    weights: torch.Tensor  # (d, N), N(0, 1) entries
    biases: torch.Tensor  # (N,)
    w_std: float
    b_std: float

    @property
    def n_features(self) -> int:
        return self.weights.shape[1]

    def features(self, x) -> torch.Tensor:
        x = _inputs(x, self.weights)
        pre = self.w_std * (x @ self.weights) / math.sqrt(x.shape[1]) + self.b_std * self.biases
        return torch.relu(pre) / math.sqrt(self.n_features)

    __call__ = features


@dataclass(frozen=True)
class FourierFeatures:
    """A fixed draw of random Fourier features (N/2 cos/sin pairs); ``features(x)`` is Φ (n, N)."""

    frequencies: torch.Tensor  # (d, N/2), N(0, σ⁻²) entries
    bandwidth: float

    @property
    def n_features(self) -> int:
        return 2 * self.frequencies.shape[1]

    def features(self, x) -> torch.Tensor:
        x = _inputs(x, self.frequencies)
        proj = x @ self.frequencies
        scale = math.sqrt(self.frequencies.shape[1])
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=1) / scale

    __call__ = features


def _inputs(x, weights: torch.Tensor) -> torch.Tensor:
    x = check_inputs(x, "x", dtype=weights.dtype, device=weights.device)
    if x.shape[1] != weights.shape[0]:
        raise ValueError(
            f"x has {x.shape[1]} features but the random features were drawn for "
            f"{weights.shape[0]} input dimensions"
        )
    return x


def relu_features(
    in_dim: int,
    n_features: int,
    *,
    w_std: float = 1.0,
    b_std: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = _F64,
    device=None,
) -> ReLUFeatures:
    """Draw N = ``n_features`` random ReLU features for ``in_dim``-dimensional inputs.

    φ_j(x) = relu(w_std · w_jᵀx/√d + b_std · b_j) / √N with w_j, b_j standard normal (drawn on
    the CPU from ``seed``, so a seed gives the same features on every device).
    """
    d = check_int(in_dim, "in_dim", minimum=1)
    device = None if device is None else check_device(device)
    n = check_int(n_features, "n_features", minimum=1)
    w_std = check_real(w_std, "w_std", minimum=0.0, strict=True)
    b_std = check_real(b_std, "b_std", minimum=0.0)
    gen = _generator(seed)
    w = torch.randn(d, n, generator=gen, dtype=_F64).to(dtype=dtype, device=device)
    b = torch.randn(n, generator=gen, dtype=_F64).to(dtype=dtype, device=device)
    return ReLUFeatures(w, b, w_std, b_std)


def fourier_features(
    in_dim: int,
    n_features: int,
    *,
    bandwidth: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = _F64,
    device=None,
) -> FourierFeatures:
    """Draw N = ``n_features`` random Fourier features (N/2 frequencies, N even) for the kernel
    exp(−‖x − x'‖² / (2 ``bandwidth``²)); ω_j ~ N(0, bandwidth⁻² I) drawn on the CPU from ``seed``.
    """
    d = check_int(in_dim, "in_dim", minimum=1)
    device = None if device is None else check_device(device)
    n = check_int(n_features, "n_features", minimum=2)
    if n % 2:
        raise ValueError(
            f"n_features must be even for Fourier features (N/2 cos/sin pairs), got {n}"
        )
    sigma = check_real(bandwidth, "bandwidth", minimum=0.0, strict=True)
    gen = _generator(seed)
    omega = torch.randn(d, n // 2, generator=gen, dtype=_F64) / sigma
    return FourierFeatures(omega.to(dtype=dtype, device=device), sigma)


def gaussian_kernel(x1, x2=None, *, bandwidth: float = 1.0) -> torch.Tensor:
    """exp(−‖x1_i − x2_j‖² / (2 bandwidth²)): the N → ∞ limit of the Fourier features' Φ Φᵀ."""
    x1 = check_inputs(x1, "x1")
    x2 = x1 if x2 is None else check_inputs(x2, "x2", dtype=x1.dtype, device=x1.device)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"x1 and x2 must have the same number of features, got {x1.shape[1]} and {x2.shape[1]}"
        )
    sigma = check_real(bandwidth, "bandwidth", minimum=0.0, strict=True)
    return torch.exp(-torch.cdist(x1, x2).square() / (2 * sigma**2))


def _system(phi, y) -> tuple[torch.Tensor, torch.Tensor, bool]:
    phi = as_tensor(phi, "phi")
    if phi.ndim != 2 or phi.shape[0] == 0 or phi.shape[1] == 0:
        raise ValueError(f"phi must be a non-empty (n, N) matrix, got shape {tuple(phi.shape)}")
    check_finite(phi, "phi")
    y = as_tensor(y, "y", dtype=phi.dtype, device=phi.device)
    vector = y.ndim == 1
    if vector:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != phi.shape[0]:
        raise ValueError(
            f"y must have shape ({phi.shape[0]},) or ({phi.shape[0]}, k) to match phi's "
            f"{phi.shape[0]} rows, got {tuple(y.shape)}"
        )
    check_finite(y, "y")
    return phi, y, vector


def min_norm_least_squares(phi, y) -> torch.Tensor:
    """β = Φ⁺ y: the minimum-norm minimiser of ‖Φβ − y‖² (the min-norm interpolant if N ≥ n).

    On the CPU ``torch.linalg.lstsq(driver="gelsd")`` (SVD with the default rcond, singular
    values below max(n, N)·eps·σ_max treated as zero); elsewhere ``torch.linalg.pinv(Φ) @ y``
    (cuSOLVER has no rank-revealing lstsq). ``phi``: (n, N); ``y``: (n,) or (n, k); the result
    is (N,) or (N, k) in phi's dtype.
    """
    phi, y, vector = _system(phi, y)
    if phi.device.type == "cpu":
        beta = torch.linalg.lstsq(phi, y, driver="gelsd").solution
    else:
        beta = torch.linalg.pinv(phi) @ y
    return beta[:, 0] if vector else beta


def ridge(phi, y, penalty: float) -> torch.Tensor:
    """β = argmin ‖Φβ − y‖² + λ‖β‖² = (ΦᵀΦ + λI)⁻¹Φᵀy = Φᵀ(ΦΦᵀ + λI)⁻¹y, λ = ``penalty`` > 0.

    Solved by Cholesky on the smaller of the N×N primal and n×n dual systems (both positive
    definite for λ > 0); λ → 0⁺ tends to :func:`min_norm_least_squares`.
    """
    phi, y, vector = _system(phi, y)
    lam = check_real(penalty, "penalty", minimum=0.0, strict=True)
    n, N = phi.shape
    if N <= n:
        gram = phi.T @ phi + lam * torch.eye(N, dtype=phi.dtype, device=phi.device)
        beta = torch.cholesky_solve(phi.T @ y, torch.linalg.cholesky(gram))
    else:
        gram = phi @ phi.T + lam * torch.eye(n, dtype=phi.dtype, device=phi.device)
        beta = phi.T @ torch.cholesky_solve(y, torch.linalg.cholesky(gram))
    return beta[:, 0] if vector else beta


def zero_one_loss(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction misclassified: argmax over k ≥ 2 output columns, else the sign of ±1 targets."""
    if pred.ndim == 2 and pred.shape[1] > 1:
        return float((pred.argmax(1) != y.argmax(1)).double().mean())
    return float((torch.sign(pred.reshape(-1)) != torch.sign(y.reshape(-1))).double().mean())


@dataclass
class SweepResult:
    """Curves over ``n_features`` (lists, one entry per N); ``threshold`` is n (N = n)."""

    n_features: list[int]
    train_error: list[float]  # zero-one
    test_error: list[float]
    train_mse: list[float]  # mean over every entry of (f − y)²
    test_mse: list[float]
    coef_norm: list[float]  # ‖β‖ (Frobenius for k outputs)
    threshold: int
    seeds: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sweep(
    x_train,
    y_train,
    x_test,
    y_test,
    n_features: Sequence[int],
    *,
    kind: str = "fourier",
    penalty: float = 0.0,
    seed: int = 0,
    bandwidth: float = 1.0,
    w_std: float = 1.0,
    b_std: float = 0.0,
    dtype: torch.dtype = _F64,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> SweepResult:
    """Fit random-features regression for every N in ``n_features`` and measure it.

    Features of ``kind`` ("fourier": :func:`fourier_features` with ``bandwidth``; "relu":
    :func:`relu_features` with ``w_std``, ``b_std``) are drawn with seed ``seed + i`` for the i-th
    N; ``penalty`` = 0 fits the min-norm least-squares solution, > 0 ridge. ``y_*`` are (n,) or
    (n, k) targets (one-hot or ±1 for the zero-one loss). ``progress`` wraps the loop (e.g. the
    lab's ``ctx.progress``). Returns the curves of Belkin et al. 2019, Fig. 2.
    """
    if kind not in FEATURES:
        raise ValueError(f"kind must be one of {FEATURES}, got {kind!r}")
    x = check_inputs(x_train, "x_train", dtype=dtype)
    xt = check_inputs(x_test, "x_test", dtype=dtype, device=x.device)
    if xt.shape[1] != x.shape[1]:
        raise ValueError(f"x_test has {xt.shape[1]} features, x_train {x.shape[1]}")
    _, y, _ = _system(torch.zeros(x.shape[0], 1, dtype=dtype, device=x.device), y_train)
    _, yt, _ = _system(torch.zeros(xt.shape[0], 1, dtype=dtype, device=x.device), y_test)
    if yt.shape[1] != y.shape[1]:
        raise ValueError(f"y_test has {yt.shape[1]} columns, y_train {y.shape[1]}")
    counts = [check_int(n, "n_features", minimum=1) for n in n_features]
    if not counts:
        raise ValueError("n_features is empty; give at least one feature count")
    penalty = check_real(penalty, "penalty", minimum=0.0)
    seed = check_int(seed, "seed", minimum=0)
    out = SweepResult([], [], [], [], [], [], threshold=x.shape[0])
    items = list(enumerate(counts))
    for i, n in progress(items) if progress is not None else items:
        if kind == "fourier":
            feats = fourier_features(
                x.shape[1], n, bandwidth=bandwidth, seed=seed + i, dtype=dtype, device=x.device
            )
        else:
            feats = relu_features(
                x.shape[1],
                n,
                w_std=w_std,
                b_std=b_std,
                seed=seed + i,
                dtype=dtype,
                device=x.device,
            )
        phi, phi_t = feats(x), feats(xt)
        beta = ridge(phi, y, penalty) if penalty > 0 else min_norm_least_squares(phi, y)
        pred, pred_t = phi @ beta, phi_t @ beta
        out.n_features.append(n)
        out.train_error.append(zero_one_loss(pred, y))
        out.test_error.append(zero_one_loss(pred_t, yt))
        out.train_mse.append(float((pred - y).square().mean()))
        out.test_mse.append(float((pred_t - yt).square().mean()))
        out.coef_norm.append(float(torch.linalg.norm(beta)))
        out.seeds.append(seed + i)
    return out


def feature_counts(n: int, ratio_min: float, ratio_max: float, points: int, even: bool) -> list:
    """Feature counts N for a sweep across the interpolation threshold N = n: a geometric grid
    from ``ratio_min·n`` to ``ratio_max·n`` (``points`` values) with n itself; even counts if
    ``even`` (Fourier features come in cos/sin pairs)."""
    grid = np.geomspace(ratio_min * n, ratio_max * n, points)
    step = 2 if even else 1
    counts = {max(step, int(step * round(v / step))) for v in grid} | {n + (n % step)}
    return sorted(counts)
