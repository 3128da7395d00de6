r"""Training dynamics of linearized and infinitely wide networks, in closed form.

Lee et al. 2019 ("Wide neural networks of any depth evolve as linear models under gradient
descent", NeurIPS). A network linearized around θ0 (:func:`widenet.linearize`) and trained on a
squared loss moves in function space along the NTK Θ = J(X) J(X)ᵀ at θ0. With

    L(f) = 1/(2N) Σ (f − y)²,   N = y.numel()   (loss="mean", neural-tangents' convention)
    L(f) = ½ Σ (f − y)²,        N = 1           (loss="sum"),

gradient flow θ̇ = −η ∇_θ L gives (eqs. 8–11)

    f_t(X) = y + e^{−ηΘt/N} (f_0(X) − y),
    f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − e^{−ηΘt/N}) (y − f_0(X)),

and full-batch gradient descent θ_{s+1} = θ_s − η ∇_θ L is the same with (I − ηΘ/N)^s in place
of the exponential. The learning rate is the one applied to the parameters: the function-space
rate is η/N, so "mean" makes η independent of the number of training points. Θ is the kernel of
one output unit (shape (n, n)); each of the k output columns of y evolves independently with it
(Θ ⊗ I_k, exact for the infinite-width kernel and for networks with one output).

Every function diagonalises Θ(X, X) (+ ``diag_reg`` · I) once (LAPACK's symmetric eigensolver) in
float64 and evaluates all requested times from the eigenvalues, so Θ⁻¹(I − e^{−ηΘt/N}) is
computed as (1 − e^{−ηλt/N})/λ per eigenvalue, whose limit ηt/N is used for λ → 0: no inverse
of a near-singular matrix is formed unless t = ∞ requires one. Many times share one product
with the eigenvectors: the per-eigenvalue factors of all times span a space of low numerical
rank, so V is applied to a basis of it (to rounding) rather than to every time's columns.
Results have the dtype and device of ``ntk_train_train``; y of shape (n,) is treated as (n, 1),
so outputs always end in k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from widenet._checks import all_finite, as_tensor, check_finite, check_real
from widenet.threads import solver_threads

__all__ = [
    "LOSSES",
    "GaussianPrediction",
    "InfiniteWidthPrediction",
    "Prediction",
    "coinciding_pairs",
    "critical_learning_rate",
    "gp_ensemble_mse",
    "gradient_descent_mse",
    "gradient_flow_dual",
    "gradient_flow_mse",
    "infinite_width_predict",
    "max_learning_rate",
    "nngp_posterior",
    "ode_dynamics",
]

LOSSES = ("mean", "sum")
ODE_LOSSES = ("cross_entropy",)

_F64 = torch.float64
# An eigenvalue below -_PSD_TOL * λmax means the kernel is not positive semi-definite.
_PSD_TOL = 1e-6
# Below this |ηλ/N| the geometric sum uses expm1/log1p (no cancellation in 1 − (1 − x)^s).
_SMALL = 0.5


@dataclass(frozen=True)
class Prediction:
    """Outputs at each requested time: ``train`` (T, n_train, k), ``test`` (T, n_test, k).

    ``test`` is None when no test kernel was given; ``train`` is None only where documented.
    """

    train: torch.Tensor | None
    test: torch.Tensor | None


@dataclass(frozen=True)
class GaussianPrediction:
    """A Gaussian over test outputs: ``mean`` (T, n_test, k), ``covariance`` (T, n_test, n_test).

    The covariance is the same for each of the k output units (independent across units).
    """

    mean: torch.Tensor
    covariance: torch.Tensor


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _matrix(x, name: str, shape=None) -> torch.Tensor:
    x = as_tensor(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    check_finite(x, name)
    return x


def _square(x, name: str) -> torch.Tensor:
    """A finite symmetric (n, n) kernel, symmetrised; asymmetry beyond √eps·max|K| is refused."""
    x = _matrix(x, name)
    n, m = x.shape
    if n != m or n == 0:
        raise ValueError(f"{name} must be a non-empty square (n, n) matrix, got shape {(n, m)}")
    lo, hi = torch.aminmax(x)  # max |x| without an n² temporary
    scale = max(float(hi), -float(lo))
    asym = _max_asymmetry(x)
    if asym > math.sqrt(torch.finfo(x.dtype).eps) * max(scale, 1e-300):
        raise ValueError(
            f"{name} is not symmetric: max |K - K^T| = {asym:.3g} (max |K| = {scale:.3g}); a "
            "kernel between the training points and themselves must be symmetric"
        )
    return x


# Square tiles for the transposed passes: x[j, i]ᵀ is read while it is in cache. Measured at
# n = 4000, one thread: max |x − xᵀ| 0.11 s against 0.50 s for (x − x.T), 0.5 (x + xᵀ) 0.25 s
# against 0.37 s.
_TILE = 256


def _tiles(n: int):
    """(rows, columns) slice pairs of the tiles on and above the diagonal."""
    starts = range(0, n, _TILE)
    return [(slice(i, i + _TILE), slice(j, j + _TILE)) for i in starts for j in starts if j >= i]


def _max_asymmetry(x: torch.Tensor) -> float:
    """max |x − xᵀ| of a square matrix, tile by tile."""
    x = x.detach()
    return max(float((x[r, c] - x[c, r].T).abs().max()) for r, c in _tiles(x.shape[0]))


def _symmetrised(x: torch.Tensor) -> torch.Tensor:
    """A new tensor ½ (x + xᵀ), tile by tile on the CPU (bit-identical to (x + x.T) · 0.5)."""
    if x.device.type != "cpu" or x.requires_grad:
        return (x + x.T).mul_(0.5)
    out = torch.empty_like(x)
    for r, c in _tiles(x.shape[0]):
        tile = (x[r, c] + x[c, r].T).mul_(0.5)
        out[r, c] = tile
        out[c, r] = tile.T
    return out


def _check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def _targets(y, name: str, n: int, device) -> torch.Tensor:
    y = as_tensor(y, name).to(device=device, dtype=_F64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, k) to match the {n} training points, got "
            f"{tuple(y.shape)}"
        )
    check_finite(y, name)
    return y


def _outputs(f0, name: str, shape, device) -> torch.Tensor:
    if f0 is None:
        return torch.zeros(shape, dtype=_F64, device=device)
    f0 = as_tensor(f0, name).to(device=device, dtype=_F64)
    if f0.ndim == 1 and shape[1] == 1:
        f0 = f0[:, None]
    if tuple(f0.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(f0.shape)}")
    check_finite(f0, name)
    return f0


def _times(t, name: str, *, integer: bool, allow_inf: bool) -> np.ndarray:
    arr = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; give at least one time")
    if integer:
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise ValueError(
                    f"{name} must be finite integers (numbers of steps), got {t!r}; the "
                    "converged solution is gradient_flow_mse(..., t=math.inf)"
                )
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise ValueError(f"{name} must be integers (numbers of steps), got {t!r}")
        arr = arr.astype(np.int64)
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0, got {t!r}")
        return arr
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be real numbers, got {t!r}")
    arr = arr.astype(np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (no NaN), got {t!r}")
    if not allow_inf and np.any(np.isinf(arr)):
        raise ValueError(f"{name} must be finite, got {t!r}")
    return arr


def _test_kernel(k, name: str, n: int, device) -> torch.Tensor | None:
    if k is None:
        return None
    k = _matrix(k, name)
    if k.shape[1] != n or k.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (n_test, {n}) (test points × the {n} training points), "
            f"got {tuple(k.shape)}"
        )
    return k.to(device=device, dtype=_F64)


# Reflectors per block of the compact WY form (Q = I − Y T Yᵀ per block): wider blocks make
# fewer, larger GEMMs. Measured at n = 4000 on 1000 columns, 1 thread: 64: 1.1 s, 128: 0.56 s,
# 256: 0.51 s, 512: 0.53 s; torch.ormqr (MKL) 0.61 s (Q v) and 0.96 s (Qᵀ v).
_WY_BLOCK = 256


class _Eig:
    """Θ = V diag(values) Vᵀ in float64, with V kept factored where that is cheaper.

    On the CPU, V = Q S: Q the orthogonal matrix of the Householder tridiagonalisation
    Θ = Q T Qᵀ (LAPACK ``dsytrd``, kept as its reflectors) and S the eigenvectors of the
    tridiagonal T (divide and conquer, ``dstevd``, see _TRIDIAGONAL_DRIVER). Predictions need
    V only through products with a few columns (Vᵀ r, V z), which the reflectors apply in
    O(n² k): forming V (LAPACK's back-transformation, 2n³ flops) and Θ(x, X) V (2 m n² flops)
    is skipped. At n = 4000 this took 4.8 s where scipy.linalg.eigh(driver="evd") took 8.0 s
    (benchmarks/README.md).
    ``vectors`` forms V on first use (for the functions that need the full matrix).

    Q is applied block by block in the compact WY form (Schreiber & Van Loan 1989): the
    reflectors H_i = I − τ_i v_i v_iᵀ of one block give H_j…H_{j+b−1} = I − Y T Yᵀ with
    Y = [v_j … v_{j+b−1}] (unit lower trapezoidal) and T upper triangular,

        T⁻¹ = diag(1/τ) + striu(Yᵀ Y)

    (LAPACK's ``dlarft`` recurrence T_{i+1} = [[T_i, −τ T_i Yᵀ v],[0, τ]] inverted), so
    Q x = x − Y (T (Yᵀ x)) and Qᵀ x = x − Y (Tᵀ (Yᵀ x)) per block with one triangular solve
    against T⁻¹: three GEMM-sized operations per block of ``_WY_BLOCK`` reflectors.
    """

    def __init__(self, values, lmax, tol, *, vectors=None, reflectors=None, tridiagonal=None):
        self.values = values  # float64 (n,)
        self.lmax = lmax
        self.tol = tol  # eigenvalues <= tol count as zero
        self._vectors = vectors  # (n, n) or None
        self._reflectors = reflectors  # (A, tau) of dsytrd (lower), geqrf layout, or None
        self._s = tridiagonal  # (n, n) eigenvectors of T, or None
        self._blocks = None  # [(start, Y, T⁻¹)] of the compact WY form, built on first use

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Vᵀ v for v of shape (n, p)."""
        if self._vectors is not None:
            return self._vectors.T @ v
        return self._s.T @ self._q(v, transpose=True)

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """V z for z of shape (n, p): Q (S z) when V is factored."""
        if self._vectors is not None:
            return self._vectors @ z
        return self._q(self._s @ z, transpose=False)

    @property
    def vectors(self) -> torch.Tensor:
        if self._vectors is None:
            self._vectors = self.expand(torch.eye(len(self.values), dtype=_F64))
        return self._vectors

    def _q(self, v: torch.Tensor, *, transpose: bool) -> torch.Tensor:
        """Q v (Qᵀ v if ``transpose``) for v of shape (n, p), by the compact WY blocks.

        Lower dsytrd: Q = diag(1, Q'), Q' = H(1)…H(n−1) stored as geqrf reflectors of
        A[1:, :-1]; Q' = B_1 B_2 … with one factor B = I − Y T Yᵀ per block.
        """
        if self._blocks is None:
            self._blocks = _wy_blocks(*self._reflectors, _WY_BLOCK)
        out = v.clone()
        rest = out[1:]
        for start, y, tinv in self._blocks if transpose else reversed(self._blocks):
            part = rest[start:]
            w = y.T @ part
            # T w by the solve T⁻¹ x = w (Tᵀ w: the lower solve against T⁻ᵀ)
            w = torch.linalg.solve_triangular(tinv.T if transpose else tinv, w, upper=not transpose)
            part -= y @ w
        return out


def _wy_blocks(a: torch.Tensor, tau: torch.Tensor, block: int):
    """[(start, Y, T⁻¹)] of the compact WY form of the geqrf reflectors in ``a``, ``tau``.

    A reflector with τ = 0 is the identity: its column of Y is zeroed and its diagonal entry
    of T⁻¹ set to 1, which removes it from the product exactly.
    """
    blocks = []
    for start in range(0, tau.shape[0], block):
        t = tau[start : start + block]
        y = torch.tril(a[start:, start : start + len(t)], diagonal=-1)
        y.diagonal().fill_(1.0)
        zero = t == 0
        y[:, zero] = 0.0
        tinv = torch.triu(y.T @ y, diagonal=1)
        tinv.diagonal().copy_(1.0 / torch.where(zero, torch.ones_like(t), t))
        blocks.append((start, y, tinv))
    return blocks


# The tridiagonal eigensolver: divide and conquer (LAPACK dstevd, rich in BLAS-3: 0.81 s at
# n = 4000 on two threads, development machine, quiet) where SciPy offers it (SciPy 1.17 does,
# as its default; 1.12 does not), else SciPy's default there, MRRR (dstemr: 2.17 s).
_TRIDIAGONAL_DRIVER = "stevd" if hasattr(scipy.linalg.lapack, "dstevd") else "auto"


def _eigh_cpu(k64: torch.Tensor, vectors: bool):
    """(values, S or None, reflectors or None) of symmetric ``k64`` via dsytrd and the
    tridiagonal eigensolver (_TRIDIAGONAL_DRIVER).

    (Computing Θ(x, X) Q in a second thread while SciPy's tridiagonal solver, which holds the
    GIL, ran was slower than the two one after the other at n = 4000 on the development
    machine's two cores: 5.15-5.40 s against 4.94-5.19 s per quiet call, round robin; the
    solver itself uses BLAS threads, 0.81 s on two against 1.14 s on one.)
    """
    n = k64.shape[0]
    # k64 is symmetric, so its transpose view is the Fortran-ordered matrix LAPACK wants; it
    # is the caller's temporary, overwritten by the reflectors.
    a = k64.numpy().T
    lwork = int(scipy.linalg.lapack.dsytrd_lwork(n, lower=1)[0])
    c, d, e, tau, info = scipy.linalg.lapack.dsytrd(a, lower=1, lwork=lwork, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK dsytrd failed (info={info})")
    if not vectors:
        values = scipy.linalg.eigvalsh_tridiagonal(d, e, check_finite=False)
        return torch.from_numpy(values), None, None
    # A view (column-major strides) of the reflectors below the subdiagonal: _wy_blocks
    # copies out the panels it needs, so the n² copy of c[1:, :-1] is not made.
    reflectors = (torch.from_numpy(c)[1:, :-1], torch.from_numpy(tau))
    values, s = scipy.linalg.eigh_tridiagonal(
        d, e, check_finite=False, lapack_driver=_TRIDIAGONAL_DRIVER
    )
    return torch.from_numpy(values), torch.from_numpy(s), reflectors


def _eig(k: torch.Tensor, name: str, diag_reg: float, *, vectors=True) -> _Eig:
    """The eigendecomposition of ``k`` + diag_reg·I."""
    # Thread policy of widenet.threads: one torch and BLAS thread when small or busy.
    with solver_threads(k.shape[0], k.device):
        return _eig_body(k, name, diag_reg, vectors=vectors)


def _eig_body(k: torch.Tensor, name: str, diag_reg: float, *, vectors: bool) -> _Eig:
    eps = torch.finfo(k.dtype).eps
    k64 = k.to(_F64)
    k64 = _symmetrised(k64)  # a new tensor: _eigh_cpu may overwrite it
    if diag_reg:
        k64 = k64 + diag_reg * torch.eye(k64.shape[0], dtype=_F64, device=k64.device)
    s = reflectors = full = None
    if k64.device.type != "cpu" or k64.requires_grad or k64.shape[0] < 3:
        # torch's eigh keeps autograd and runs on CUDA; dsytrd needs n >= 3 to have reflectors.
        values, full = torch.linalg.eigh(k64)
    else:
        values, s, reflectors = _eigh_cpu(k64, vectors)
    lmax = float(values.max().abs())
    lmin = float(values.min())
    if lmin < -_PSD_TOL * lmax:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {lmin:.3g} < "
            f"-{_PSD_TOL:g} × largest ({lmax:.3g}); an NTK or NNGP kernel must be PSD"
        )
    tol = k64.shape[0] * eps * max(lmax, 1e-300)
    return _Eig(values, lmax, tol, vectors=full, reflectors=reflectors, tridiagonal=s)


def coinciding_pairs(k: torch.Tensor, rel: float | None = None) -> torch.Tensor:
    r"""(m, 2) indices i < j of training points that coincide in the kernel's feature space
    to its rounding level: ||φ(x_i) − φ(x_j)||² = K_ii + K_jj − 2 K_ij ≤ rel (K_ii + K_jj).

    ``rel`` defaults to 8 √eps of k's dtype, the rounding level of a computed kernel for
    (near-)identical inputs: an eps-sized error in a correlation ρ ≈ 1 becomes √eps in the
    arc-cosine kernels (θ = arccos ρ ≈ √(2 (1 − ρ))), so the rows of two identical inputs can
    differ by that much (measured 1.7e-8 relative in float64, 9e-4 in float32, ReLU depth 10,
    d = 500, before :func:`widenet.kernels.duplicate_ids` made such rows bit-identical).
    """
    if rel is None:
        rel = 8.0 * math.sqrt(torch.finfo(k.dtype).eps)
    k = k.detach().to(_F64)
    d = k.diagonal()
    dist = d[:, None] + d[None, :] - (k + k.T)
    close = dist <= rel * (d[:, None] + d[None, :]).abs()
    return torch.nonzero(torch.triu(close, diagonal=1))


def _refuse_contradictions(k: torch.Tensor, y: torch.Tensor, name: str, why: str) -> None:
    """Identical inputs (to the kernel's rounding level) with different targets: no function
    interpolates them, and an inverse would return different outputs for one input."""
    rel = 8.0 * math.sqrt(torch.finfo(k.dtype).eps)
    pairs = coinciding_pairs(k, rel)
    if not len(pairs):
        return
    y2 = y.reshape(y.shape[0], -1)
    bad = [(int(i), int(j)) for i, j in pairs.tolist() if not torch.equal(y2[i], y2[j])]
    if bad:
        i, j = bad[0]
        raise ValueError(
            f"{name}: training points {i} and {j} are identical to the kernel's rounding level "
            f"(K_ii + K_jj − 2 K_ij ≤ {rel:.2g} (K_ii + K_jj)) but have different targets "
            f"({y2[i].tolist()} and {y2[j].tolist()}; {len(bad)} such pair(s)): no function "
            f"fits both, so {why} is refused; remove or merge the duplicates, or pass "
            "diag_reg > 0 (kernel ridge regression: its output at such an input averages the "
            "targets)"
        )


def _require_invertible(e: _Eig, name: str, why: str, k=None, y=None, reg: float = 0.0) -> None:
    if k is not None and y is not None and not reg:
        _refuse_contradictions(k, y, name, why)
    lmin = float(e.values.min())
    if lmin <= e.tol:
        raise ValueError(
            f"{name} is singular (smallest eigenvalue {lmin:.3g} <= {e.tol:.3g}, largest "
            f"{e.lmax:.3g}) but {why} needs its inverse; pass diag_reg > 0 (e.g. 1e-6 × the "
            "largest eigenvalue) to regularise it"
        )


def _scale(loss: str, y: torch.Tensor) -> float:
    return float(y.numel()) if loss == "mean" else 1.0


# --------------------------------------------------------------------------------------------
# Per-eigenvalue factors
# --------------------------------------------------------------------------------------------


def _flow_factors(lam: torch.Tensor, times: np.ndarray, rate: float, tol: float):
    """(T, n): decay e^{−rate λ t} and g = (1 − e^{−rate λ t})/λ (→ rate·t as λ → 0)."""
    t = torch.as_tensor(times, dtype=_F64, device=lam.device)[:, None]
    lam = lam[None, :]
    finite = torch.isfinite(t)
    tt = torch.where(finite, t, torch.zeros_like(t))
    x = rate * lam * tt
    decay = torch.exp(-x)
    zero = lam.abs() <= tol
    safe = torch.where(zero, torch.ones_like(lam), lam)
    g = torch.where(zero, rate * tt, -torch.expm1(-x) / safe)
    # t = ∞: the decay vanishes and g = 1/λ (callers have refused a singular kernel).
    decay = torch.where(finite, decay, torch.zeros_like(decay))
    g = torch.where(finite, g, 1.0 / safe)
    return decay, g


def _gd_factors(lam: torch.Tensor, steps: np.ndarray, rate: float, tol: float):
    """(T, n): r^s with r = 1 − rate λ, and g = rate Σ_{j<s} r^j = (1 − r^s)/λ (→ rate·s)."""
    s = torch.as_tensor(steps, dtype=_F64, device=lam.device)[:, None]
    lam = lam[None, :]
    x = rate * lam
    r = 1.0 - x
    small = x.abs() < _SMALL
    # Near λ = 0, r^s = exp(s log1p(−x)) and 1 − r^s = −expm1(·) keep full relative accuracy.
    log_r = torch.log1p(-torch.where(small, x, torch.zeros_like(x)))
    power = torch.where(small, torch.exp(s * log_r), r**s)
    one_minus = torch.where(small, -torch.expm1(s * log_r), 1.0 - r**s)
    zero = lam.abs() <= tol
    safe = torch.where(zero, torch.ones_like(lam), lam)
    g = torch.where(zero, rate * s, one_minus / safe)
    return power, g


# The time basis (_time_basis) is tried from this many factor rows on, and used when its rank
# is at most this fraction of them: below, the SVD's O(n F²) buys too little.
_BASIS_MIN_ROWS = 16
_BASIS_MAX_FRACTION = 0.5


def _time_basis(factors: torch.Tensor):
    r"""(A, B) with factorsᵀ = A Bᵀ to rounding, column by column, or None where that saves
    too little (_BASIS_MIN_ROWS, _BASIS_MAX_FRACTION).

    ``factors`` (F, n) holds one function of the eigenvalues per row, e.g. e^{−ηλt/N} and
    (1 − e^{−ηλt/N})/λ over the requested times (weighted by the caller). Such a family is
    numerically of low rank (smooth in λ, and close times give close rows): at the
    benchmark's n = 4000, 100 log-spaced times, the 200 rows (weighted) have rank 46 to
    2.2e-16, so V is applied to 460 columns instead of 2000. Each row is scaled to unit norm,
    the scaled matrix M̃ (n, F) decomposed by the SVD, and the singular values below eps·σ₁
    dropped, so every row f is reproduced with an error of norm ≤ σ_{r+1}‖f‖ ≤ eps·σ₁·‖f‖
    (σ₁ ≤ √F), plus the SVD's own rounding, a small multiple of that.
    A (n, r) has orthonormal columns; B (F, r). Rows of zeros (a decay that underflowed) get
    zero rows of B. Non-finite factors (divergent gradient descent overflows) get no basis:
    the plain product carries them into the outputs as they are.
    """
    rows, n = factors.shape
    if rows < _BASIS_MIN_ROWS or n < rows or not all_finite(factors):
        return None
    # Row norms scaled by the row's largest entry: finite for rows beyond 1e154 (divergent
    # descent) and nonzero for rows below 1e-154, where the plain 2-norm over- or underflows.
    amax = factors.abs().amax(dim=1)
    nonzero = amax > 0
    scaled = factors[nonzero] / amax[nonzero, None]
    unit = torch.linalg.vector_norm(scaled, dim=1)
    norms = torch.zeros_like(amax)
    norms[nonzero] = amax[nonzero] * unit
    if not all_finite(norms):  # a row's norm beyond the float range: the plain product
        return None
    scaled /= unit[:, None]
    u, s, vh = torch.linalg.svd(scaled.T, full_matrices=False)
    rank = int((s > torch.finfo(factors.dtype).eps * s[0]).sum()) if len(s) else 0
    if rank > _BASIS_MAX_FRACTION * rows:
        return None
    weights = torch.zeros(rows, rank, dtype=factors.dtype, device=factors.device)
    weights[nonzero] = (s[:rank, None] * vh[:rank]).T * norms[nonzero, None]
    return u[:, :rank], weights


def _spectral_columns(e: _Eig, factors: torch.Tensor, b: torch.Tensor):
    """V (f ⊙ b_j) for every row f of ``factors`` (F, n) and column b_j of ``b`` (n, k).

    Returned as (P, B): with a time basis P = V (A ⊙ b/w) of shape (n, r, k), the result
    being Σ_ρ B[f, ρ] P[:, ρ, j]; without one, P of shape (n, F, k) is the result itself and
    B is None. The product with V (the expensive step, O(n²) per column) then takes r·k
    columns instead of F·k. The basis is that of the rows f ⊙ w with w = ‖b‖ over the outputs
    (:func:`_time_basis`), so the error in f ⊙ b_j, (b_j/w) ⊙ (error in f ⊙ w), is bounded by
    about eps·σ₁ times the norm of [f ⊙ b_1, …, f ⊙ b_k]: relative to the columns the product
    takes (all k together), not to the largest factor.
    """
    n, k = b.shape
    w = torch.linalg.vector_norm(b, dim=1)
    basis = _time_basis(factors * w[None])
    if basis is None:
        z = factors[:, :, None] * b[None]  # (F, n, k)
        return e.expand(z.permute(1, 0, 2).reshape(n, -1)).reshape(n, -1, k), None
    a, bmat = basis
    direction = torch.where(w[:, None] > 0, b / torch.where(w > 0, w, 1.0)[:, None], 0.0)
    z = a[:, :, None] * direction[:, None, :]  # (n, r, k)
    return e.expand(z.reshape(n, -1)).reshape(n, -1, k), bmat


def _over_times(p: torch.Tensor, bmat, rows: slice, left=None) -> torch.Tensor:
    """(F', m, k): the ``rows`` of :func:`_spectral_columns`' result, times ``left`` (m, n)."""
    n, width, k = p.shape
    if bmat is None:
        p = p[:, rows]
        if left is not None:
            p = (left @ p.reshape(n, -1)).reshape(left.shape[0], -1, k)
        return p.permute(1, 0, 2)
    if left is not None:
        p = (left @ p.reshape(n, -1)).reshape(left.shape[0], width, k)
    return torch.tensordot(bmat[rows], p, dims=([1], [1]))


def _apply(left: torch.Tensor | None, e: _Eig, diag: torch.Tensor, v: torch.Tensor):
    """(T, m, k): left V diag(d_t) Vᵀ v for each row d_t of ``diag`` (T, n); left (m, n) or I.

    Memory O(T n k) (O(T n + r n k) with a time basis), never O(T n²) nor Θ(x, X) V.
    """
    with solver_threads(v.shape[0], v.device):
        p, bmat = _spectral_columns(e, diag, e.project(v))
        return _over_times(p, bmat, slice(None), left)


def _predict(e, decay, g, y, f0, k_test, f0_test, dtype, device) -> Prediction:
    """Train y + V diag(d_t) Vᵀ r and test f0(x) − Θ(x, X) V diag(g_t) Vᵀ r, r = f0(X) − y.

    With b = Vᵀ r and V = Q S (:class:`_Eig`), both sides come from one product
    V [d_t ⊙ b | g_t ⊙ b] over all times, made on the few columns of a time basis where the
    factors have one (:func:`_spectral_columns`; S, then Q in one pass over its WY blocks):
    the train half as it is, the test half multiplied by Θ(x, X).
    """
    with solver_threads(y.shape[0], y.device):
        b = e.project(f0 - y)  # (n, k)
        t = decay.shape[0]
        factors = decay if k_test is None else torch.cat([decay, g])  # (T or 2T, n)
        p, bmat = _spectral_columns(e, factors, b)
        train = y[None] + _over_times(p, bmat, slice(0, t))
        test = None
        if k_test is not None:
            test = f0_test[None] - _over_times(p, bmat, slice(t, None), k_test)
            test = test.to(dtype=dtype, device=device)
    return Prediction(train.to(dtype=dtype, device=device), test)


def _setup(ntk_train_train, y_train, ntk_test_train, f0_train, f0_test, learning_rate, loss):
    k = _square(ntk_train_train, "ntk_train_train")
    dtype, device = k.dtype, k.device
    n = k.shape[0]
    y = _targets(y_train, "y_train", n, device)
    f0 = _outputs(f0_train, "f0_train", y.shape, device)
    k_test = _test_kernel(ntk_test_train, "ntk_test_train", n, device)
    if k_test is None:
        if f0_test is not None:
            raise ValueError("f0_test was given without ntk_test_train; pass both or neither")
        f0t = None
    else:
        f0t = _outputs(f0_test, "f0_test", (k_test.shape[0], y.shape[1]), device)
    learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    _check_loss(loss)
    return k, y, f0, k_test, f0t, learning_rate, dtype, device


def _check_reg(diag_reg) -> float:
    return check_real(diag_reg, "diag_reg", minimum=0.0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def gradient_flow_mse(
    ntk_train_train,
    y_train,
    t,
    *,
    ntk_test_train=None,
    f0_train=None,
    f0_test=None,
    learning_rate: float = 1.0,
    loss: str = "mean",
    diag_reg: float = 0.0,
) -> Prediction:
    """Outputs of a linearized network under gradient flow on a squared loss, at times ``t``.

    Lee et al. 2019, eqs. 8–11 (η = ``learning_rate``, Θ = ``ntk_train_train`` + diag_reg·I):

        f_t(X) = y + e^{−ηΘt/N} (f_0(X) − y)
        f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − e^{−ηΘt/N}) (y − f_0(X))

    with N = y_train.numel() for ``loss="mean"`` (L = 1/(2N) Σ (f − y)²) and N = 1 for
    ``loss="sum"`` (L = ½ Σ (f − y)²): the dynamics of θ̇ = −η ∇_θ L.

    Args:
        ntk_train_train: Θ(X, X), (n, n), symmetric PSD.
        y_train: targets (n,) or (n, k); (n,) is returned as k = 1.
        t: a time ≥ 0 or a 1-D array of them; ``math.inf`` gives the converged solution
            f_∞(x) = f_0(x) + Θ(x, X) Θ⁻¹ (y − f_0(X)) (kernel regression; needs Θ invertible).
        ntk_test_train: Θ(x, X), (n_test, n); without it ``test`` is None.
        f0_train, f0_test: outputs at initialisation, (n, k) and (n_test, k); default 0.
        learning_rate: η > 0, the parameters' learning rate.
        loss: "mean" or "sum" (above).
        diag_reg: added to Θ(X, X)'s diagonal as is (absolute, not scaled by the trace).

    Returns:
        :class:`Prediction` with ``train`` (T, n, k) and ``test`` (T, n_test, k), T = len(t)
        (1 for a scalar), in ``ntk_train_train``'s dtype.
    """
    k, y, f0, k_test, f0t, lr, dtype, device = _setup(
        ntk_train_train, y_train, ntk_test_train, f0_train, f0_test, learning_rate, loss
    )
    times = _times(t, "t", integer=False, allow_inf=True)
    reg = _check_reg(diag_reg)
    e = _eig(k, "ntk_train_train", reg)
    if np.any(np.isinf(times)):
        why = "t = inf (the converged solution)"
        _require_invertible(e, "ntk_train_train", why, k, y, reg)
    decay, g = _flow_factors(e.values, times, lr / _scale(loss, y), e.tol)
    return _predict(e, decay, g, y, f0, k_test, f0t, dtype, device)


def gradient_flow_dual(
    ntk_train_train,
    y_train,
    t,
    *,
    f0_train=None,
    learning_rate: float = 1.0,
    loss: str = "mean",
    diag_reg: float = 0.0,
) -> torch.Tensor:
    """The dual coefficients α_t of :func:`gradient_flow_mse`'s test outputs, at every time.

    f_t(x) = f_0(x) + Θ(x, X) α_t with α_t = Θ⁻¹ (I − e^{−ηΘt/N}) (y − f_0(X)) (Lee et al.
    2019, eq. 11; Θ = ``ntk_train_train`` + diag_reg·I), so a predictor stores α_t once and
    needs only Θ(x, X) for new points. Θ is diagonalised once for all times (the n × n test
    kernel of the identity, and its product, are never formed). Arguments as in
    :func:`gradient_flow_mse`; returns (T, n, k) in ``ntk_train_train``'s dtype and device.
    """
    k, y, f0, _, _, lr, dtype, device = _setup(
        ntk_train_train, y_train, None, f0_train, None, learning_rate, loss
    )
    times = _times(t, "t", integer=False, allow_inf=True)
    e = _eig(k, "ntk_train_train", _check_reg(diag_reg))
    if np.any(np.isinf(times)):
        _require_invertible(e, "ntk_train_train", "t = inf (the converged solution)")
    _, g = _flow_factors(e.values, times, lr / _scale(loss, y), e.tol)
    return _apply(None, e, g, y - f0).to(dtype=dtype, device=device)


def gradient_descent_mse(
    ntk_train_train,
    y_train,
    steps,
    *,
    ntk_test_train=None,
    f0_train=None,
    f0_test=None,
    learning_rate: float = 1.0,
    loss: str = "mean",
    diag_reg: float = 0.0,
    allow_divergent: bool = False,
) -> Prediction:
    """Outputs of a linearized network after ``steps`` of full-batch gradient descent.

    θ_{s+1} = θ_s − η ∇_θ L with the loss of :func:`gradient_flow_mse`; for the linearized
    model this is exact in function space (Lee et al. 2019, eqs. 8–11 in discrete time):

        f_s(X) = y + (I − ηΘ/N)^s (f_0(X) − y)
        f_s(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − (I − ηΘ/N)^s) (y − f_0(X))

    where Θ⁻¹(I − (I − ηΘ/N)^s) = (η/N) Σ_{j<s} (I − ηΘ/N)^j is evaluated per eigenvalue λ
    as (1 − (1 − ηλ/N)^s)/λ, with limit sη/N at λ = 0 (no inverse is formed). N = y.numel()
    for ``loss="mean"``, 1 for ``"sum"``.

    ``steps`` is an integer ≥ 0 or a 1-D array of them. ``learning_rate`` above
    :func:`max_learning_rate` (2N/λmax, where |1 − ηλmax/N| > 1) raises ValueError unless
    ``allow_divergent=True``, which returns the (growing, oscillating) iterates of the formula
    above as they are. Other arguments and the result as in :func:`gradient_flow_mse`.
    """
    k, y, f0, k_test, f0t, lr, dtype, device = _setup(
        ntk_train_train, y_train, ntk_test_train, f0_train, f0_test, learning_rate, loss
    )
    steps = _times(steps, "steps", integer=True, allow_inf=False)
    e = _eig(k, "ntk_train_train", _check_reg(diag_reg))
    scale = _scale(loss, y)
    limit = 2.0 * scale / e.lmax if e.lmax > 0 else math.inf
    if lr > limit and not allow_divergent:
        raise ValueError(
            f"learning_rate={lr:.6g} exceeds max_learning_rate = 2N/λmax = {limit:.6g} "
            f"(N = {scale:g}, λmax = {e.lmax:.6g}), where gradient descent diverges; lower it "
            "or pass allow_divergent=True"
        )
    power, g = _gd_factors(e.values, steps, lr / scale, e.tol)
    return _predict(e, power, g, y, f0, k_test, f0t, dtype, device)


def _rates(ntk_train_train, loss, diag_reg):
    k = _square(ntk_train_train, "ntk_train_train")
    _check_loss(loss)
    e = _eig(k, "ntk_train_train", _check_reg(diag_reg), vectors=False)
    # The effective matrix is (Θ + diag_reg I)/N; for "mean", N = n·k with k = 1 here since
    # only the kernel is known: callers with k outputs multiply by k (documented).
    scale = float(k.shape[0]) if loss == "mean" else 1.0
    return e, scale


def critical_learning_rate(ntk_train_train, *, loss: str = "mean", diag_reg: float = 0.0) -> float:
    """The learning rate that converges fastest: η* = 2N / (λmin + λmax).

    The eigen-directions of the effective matrix Θ/N contract by |1 − ηλ/N| per step; the
    slowest of them, max(|1 − ηλmin/N|, |1 − ηλmax/N|), is smallest at η* (the η_critical of
    Lee et al. 2019, Theorem 2.1, whose bound requires η < η_critical). Θ = ``ntk_train_train`` +
    diag_reg·I; N = n for ``loss="mean"`` (one output; multiply by k for k outputs, since
    N = y.numel()) and 1 for ``"sum"``.
    """
    e, scale = _rates(ntk_train_train, loss, diag_reg)
    lmin = max(float(e.values.min()), 0.0)
    return 2.0 * scale / (lmin + e.lmax) if e.lmax > 0 else math.inf


def max_learning_rate(ntk_train_train, *, loss: str = "mean", diag_reg: float = 0.0) -> float:
    """The largest stable learning rate 2N/λmax: above it |1 − ηλmax/N| > 1 and GD diverges.

    The linear model's GD iterates (I − ηΘ/N)^s grow without bound in the top eigendirection
    beyond it (Lewkowycz et al. 2020, "The large learning rate phase of deep learning", study
    the range between η_critical and this limit). Conventions as in
    :func:`critical_learning_rate`.
    """
    e, scale = _rates(ntk_train_train, loss, diag_reg)
    return 2.0 * scale / e.lmax if e.lmax > 0 else math.inf


def gp_ensemble_mse(
    nngp_train_train,
    ntk_train_train,
    nngp_test_train,
    ntk_test_train,
    nngp_test_test,
    y_train,
    t,
    *,
    learning_rate: float = 1.0,
    loss: str = "mean",
    diag_reg: float = 0.0,
) -> GaussianPrediction:
    """The distribution over random initialisations of infinitely wide networks' test outputs.

    Lee et al. 2019, eqs. 14–16: at infinite width f_0 ~ GP(0, K) (the NNGP, K) and training
    follows the NTK Θ, so the test outputs at time t are Gaussian with (A_t = Θ(x,X) Θ⁻¹
    (I − e^{−ηΘt/N}), Θ = Θ(X,X))

        μ(x, t) = A_t y
        Σ(x, x', t) = K(x, x') + A_t K(X, X) A_tᵀ − A_t K(X, x') − K(x, X) A_tᵀ.

    At t = ∞ with Θ = K this is the NNGP posterior (:func:`nngp_posterior`). ``diag_reg`` is
    added (absolute) to both Θ(X, X) and K(X, X), as in neural-tangents; with Θ = K the t = ∞
    result is then the posterior with noise variance ``diag_reg``. N, ``loss`` and
    ``learning_rate`` as in :func:`gradient_flow_mse`; ``t`` may include ``math.inf`` (which
    needs Θ(X, X) + diag_reg·I invertible). For finite t a singular Θ is fine: the factor
    (1 − e^{−ηλt/N})/λ has the limit ηt/N.

    Returns:
        :class:`GaussianPrediction`: ``mean`` (T, n_test, k), ``covariance``
        (T, n_test, n_test), in ``ntk_train_train``'s dtype.
    """
    ntk = _square(ntk_train_train, "ntk_train_train")
    dtype, device = ntk.dtype, ntk.device
    n = ntk.shape[0]
    nngp = _square(nngp_train_train, "nngp_train_train")
    if nngp.shape != ntk.shape:
        raise ValueError(
            f"nngp_train_train must have shape {tuple(ntk.shape)} like ntk_train_train, got "
            f"{tuple(nngp.shape)}"
        )
    k_tx = _test_kernel(nngp_test_train, "nngp_test_train", n, device)
    t_tx = _test_kernel(ntk_test_train, "ntk_test_train", n, device)
    m = k_tx.shape[0] if k_tx is not None else None
    if k_tx is None or t_tx is None:
        raise ValueError("nngp_test_train and ntk_test_train are required, got None")
    if t_tx.shape != k_tx.shape:
        raise ValueError(
            f"ntk_test_train must have shape {tuple(k_tx.shape)} like nngp_test_train, got "
            f"{tuple(t_tx.shape)}"
        )
    k_tt = _square(nngp_test_test, "nngp_test_test")
    if k_tt.shape != (m, m):
        raise ValueError(f"nngp_test_test must have shape {(m, m)}, got {tuple(k_tt.shape)}")
    y = _targets(y_train, "y_train", n, device)
    lr = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    _check_loss(loss)
    reg = _check_reg(diag_reg)
    times = _times(t, "t", integer=False, allow_inf=True)

    e = _eig(ntk, "ntk_train_train", reg)
    if np.any(np.isinf(times)):
        _require_invertible(e, "ntk_train_train", "t = inf", ntk, y, reg)
    _eig(nngp, "nngp_train_train", reg, vectors=False)  # PSD check only
    k_xx = nngp.to(device=device, dtype=_F64)
    k_xx = 0.5 * (k_xx + k_xx.T) + reg * torch.eye(n, dtype=_F64, device=device)
    _, g = _flow_factors(e.values, times, lr / _scale(loss, y), e.tol)
    # A_t = Θ(x,X) V diag(g_t) Vᵀ: (T, m, n)
    a = ((t_tx @ e.vectors)[None] * g[:, None, :]) @ e.vectors.T
    mean = a @ y
    cross = a @ k_tx.T  # A_t K(X, x): (T, m, m)
    cov = k_tt.to(_F64)[None] + a @ k_xx @ a.transpose(1, 2) - cross - cross.transpose(1, 2)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return GaussianPrediction(mean.to(dtype=dtype), cov.to(dtype=dtype))


def nngp_posterior(
    nngp_train_train,
    nngp_test_train,
    nngp_test_test,
    y_train,
    *,
    noise_variance: float = 0.0,
) -> GaussianPrediction:
    """Exact Gaussian-process regression with the NNGP kernel as the prior covariance.

    Rasmussen & Williams 2006 ("Gaussian processes for machine learning"), eqs. 2.23–2.24,
    with K = ``nngp_train_train``, σ² = ``noise_variance``:

        μ(x) = K(x, X) (K + σ² I)⁻¹ y
        Σ(x, x') = K(x, x') − K(x, X) (K + σ² I)⁻¹ K(X, x')

    (the covariance of the latent f, without the observation noise). This is the Bayesian
    posterior of an infinitely wide network whose last layer alone is trained (Lee et al.
    2018, 2019). σ² = 0 needs K invertible (else pass noise_variance > 0).

    Returns:
        :class:`GaussianPrediction` with a leading axis T = 1: ``mean`` (1, n_test, k),
        ``covariance`` (1, n_test, n_test), in ``nngp_train_train``'s dtype.
    """
    k = _square(nngp_train_train, "nngp_train_train")
    dtype, device = k.dtype, k.device
    n = k.shape[0]
    k_tx = _test_kernel(nngp_test_train, "nngp_test_train", n, device)
    if k_tx is None:
        raise ValueError("nngp_test_train is required, got None")
    m = k_tx.shape[0]
    k_tt = _square(nngp_test_test, "nngp_test_test")
    if k_tt.shape != (m, m):
        raise ValueError(f"nngp_test_test must have shape {(m, m)}, got {tuple(k_tt.shape)}")
    y = _targets(y_train, "y_train", n, device)
    noise = check_real(noise_variance, "noise_variance", minimum=0.0)
    e = _eig(k, "nngp_train_train", noise)
    if float(e.values.min()) <= e.tol:
        raise ValueError(
            f"nngp_train_train is singular (smallest eigenvalue {float(e.values.min()):.3g}, "
            f"largest {e.lmax:.3g}); pass noise_variance > 0 to regularise it"
        )
    w = k_tx @ e.vectors / e.values  # K(x,X) V Λ⁻¹: (m, n)
    mean = w @ (e.vectors.T @ y)
    cov = k_tt.to(_F64) - w @ (e.vectors.T @ k_tx.T)
    cov = 0.5 * (cov + cov.T)
    return GaussianPrediction(mean[None].to(dtype=dtype), cov[None].to(dtype=dtype))


def _cross_entropy_grad(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # L = −(1/n) Σ_i Σ_c y_ic log softmax(f_i)_c, ∂L/∂f = (softmax(f) − y)/n for rows summing to 1.
    p = torch.softmax(f, dim=1)
    return (p * y.sum(dim=1, keepdim=True) - y) / f.shape[0]


def ode_dynamics(
    ntk_train_train,
    f0_train,
    y_train,
    t,
    *,
    loss: str | Callable = "cross_entropy",
    ntk_test_train=None,
    f0_test=None,
    learning_rate: float = 1.0,
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> Prediction:
    """Gradient flow of a linearized network on any loss, integrated numerically in function space.

    For the linearized model θ̇ = −η ∇_θ L(f(X)) gives (Lee et al. 2019, Sec. 2.2)

        df(X)/dt = −η Θ(X, X) ∂L/∂f(X),     df(x)/dt = −η Θ(x, X) ∂L/∂f(X),

    which is integrated with ``scipy.integrate.solve_ivp`` (DOP853, tolerances ``rtol``,
    ``atol``) from f_0 = ``f0_train`` / ``f0_test`` (required: (n, k) and (n_test, k)).

    ``loss="cross_entropy"``: L = −(1/n) Σ_i Σ_c y_ic log softmax(f_i)_c (softmax over the k
    outputs, mean over the n samples); ``y_train`` is either integer class labels (n,) in
    [0, k) or target probabilities (n, k). A callable ``loss(f_train, y_train) -> scalar``
    (torch, float64 tensors of shape (n, k) and y as given after conversion) gets its gradient
    by autograd; e.g. ``lambda f, y: 0.5 * ((f - y) ** 2).mean()`` reproduces
    :func:`gradient_flow_mse` with ``loss="mean"``. Note that η is applied as is: any 1/N lives
    in the loss. ``t``: times ≥ 0, finite, in any order.
    """
    from scipy.integrate import solve_ivp

    k = _square(ntk_train_train, "ntk_train_train")
    dtype, device = k.dtype, k.device
    n = k.shape[0]
    f0 = as_tensor(f0_train, "f0_train").to(_F64)
    if f0.ndim == 1:
        f0 = f0[:, None]
    if f0.ndim != 2 or f0.shape[0] != n:
        raise ValueError(f"f0_train must have shape ({n}, k), got {tuple(f0.shape)}")
    check_finite(f0, "f0_train")
    kk = f0.shape[1]
    if isinstance(loss, str):
        if loss not in ODE_LOSSES:
            raise ValueError(f"loss must be one of {ODE_LOSSES} or a callable, got {loss!r}")
        y = as_tensor(y_train, "y_train", dtype=_F64)
        if y.ndim == 1:
            yi = as_tensor(y_train, "y_train")
            if torch.any(yi != torch.round(yi)) or torch.any(yi < 0) or torch.any(yi >= kk):
                raise ValueError(
                    f"y_train of shape ({n},) must hold integer class labels in [0, {kk}), the "
                    f"{kk} outputs of f0_train"
                )
            y = torch.nn.functional.one_hot(yi.long().cpu(), kk).to(_F64)
        if tuple(y.shape) != (n, kk):
            raise ValueError(
                f"y_train must have shape ({n},) (labels) or ({n}, {kk}), got {tuple(y.shape)}"
            )
        check_finite(y, "y_train")

        def grad(f):
            return _cross_entropy_grad(f, y)
    elif callable(loss):
        y = as_tensor(y_train, "y_train", dtype=_F64)
        if y.ndim == 1 and kk == 1:
            y = y[:, None]
        if y.shape[0] != n:
            raise ValueError(f"y_train must have {n} rows, got shape {tuple(y.shape)}")

        def grad(f):
            f = f.clone().requires_grad_(True)
            value = loss(f, y)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("loss must return a scalar torch tensor")
            (gf,) = torch.autograd.grad(value, f)
            return gf
    else:
        raise ValueError(f"loss must be one of {ODE_LOSSES} or a callable, got {loss!r}")

    k_test = _test_kernel(ntk_test_train, "ntk_test_train", n, "cpu")
    if k_test is None:
        if f0_test is not None:
            raise ValueError("f0_test was given without ntk_test_train; pass both or neither")
        f0t = torch.zeros(0, kk, dtype=_F64)
    else:
        f0t = _outputs(f0_test, "f0_test", (k_test.shape[0], kk), "cpu")
    lr = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    rtol = check_real(rtol, "rtol", minimum=0.0, strict=True)
    atol = check_real(atol, "atol", minimum=0.0, strict=True)
    times = _times(t, "t", integer=False, allow_inf=False)
    # Both kernels stacked: one matrix maps ∂L/∂f(X) to the velocities of all outputs.
    kmat = k.to(device="cpu", dtype=_F64)
    kmat = 0.5 * (kmat + kmat.T)
    if k_test is not None:
        kmat = torch.cat([kmat, k_test], dim=0)
    y0 = torch.cat([f0, f0t], dim=0)
    shape = tuple(y0.shape)

    def rhs(_, state):
        f = torch.from_numpy(state).reshape(shape)
        with torch.enable_grad():
            g = grad(f[:n]).detach()
        return (-lr * (kmat @ g)).reshape(-1).numpy()

    order = np.argsort(times, kind="stable")
    t_sorted = times[order]
    if t_sorted[-1] == 0.0:
        states = np.repeat(y0.reshape(1, -1).numpy(), len(times), axis=0)
    else:
        sol = solve_ivp(
            rhs,
            (0.0, float(t_sorted[-1])),
            y0.reshape(-1).numpy(),
            method="DOP853",
            t_eval=t_sorted,
            rtol=rtol,
            atol=atol,
        )
        if not sol.success:
            raise RuntimeError(f"ode_dynamics: the ODE solver failed: {sol.message}")
        states = np.empty((len(times), y0.numel()))
        states[order] = sol.y.T
    out = torch.from_numpy(states).reshape((len(times),) + shape).to(dtype=dtype, device=device)
    test = out[:, n:] if k_test is not None else None
    return Prediction(out[:, :n], test)


@dataclass(frozen=True)
class InfiniteWidthPrediction:
    """What :func:`infinite_width_predict` returns (numpy-free: tensors on the inputs' device).

    ``train_mean`` (T, n, k) and ``test_mean`` (T, m, k) are the ensemble-mean outputs at each
    time; ``test_variance`` (T, m) the per-point predictive variance of the ensemble over
    initialisations (None unless ``variance=True``); ``seconds`` the wall time of the kernels
    and of the dynamics.
    """

    times: torch.Tensor
    train_mean: torch.Tensor
    test_mean: torch.Tensor
    test_variance: torch.Tensor | None
    seconds: dict


def infinite_width_predict(
    arch,
    x_train,
    y_train,
    x_test,
    times,
    *,
    kernel: str = "ntk",
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    variance: bool = True,
) -> InfiniteWidthPrediction:
    """Closed-form predictions of the infinite-width network ``arch`` trained by gradient flow on
    the MSE loss ``L = 1/(2N) Σ (f − y)²`` (N = ``y_train.numel()``), from f₀ = 0.

    The chain: the infinite-width kernels of ``arch`` (a :class:`widenet.MLP`) on the train and
    test points, then :func:`gradient_flow_mse` with the chosen kernel Θ (``"ntk"``: gradient
    descent on every layer; ``"nngp"``: on the readout only),

        f_test(t) = Θ(x, X) Θ(X, X)⁻¹ (I − e^{−η Θ(X, X) t / N}) y,

    and, with ``variance=True``, the per-point variance of the Gaussian process that the
    ensemble of trained networks follows (:func:`gp_ensemble_mse`; Lee et al. 2019, eqs. 15–16),
    which needs a (T, m, m) buffer. ``times`` may hold ``inf`` (the converged network).

    Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington (2019). Wide Neural Networks
    of Any Depth Evolve as Linear Models Under Gradient Descent. NeurIPS. arXiv:1902.06720.
    """
    import time

    if kernel not in ("ntk", "nngp"):
        raise ValueError(f"kernel must be ntk or nngp, got {kernel!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not diag_reg >= 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg}")
    xtr, xte = torch.as_tensor(x_train), torch.as_tensor(x_test)
    yt = torch.as_tensor(y_train)
    if yt.ndim == 1:
        yt = yt[:, None]
    t0 = time.perf_counter()
    k_tt = arch.kernel(xtr)
    k_xt = arch.kernel(xte, xtr)
    k_xx = arch.kernel(xte, get="nngp") if variance else None
    kernel_seconds = time.perf_counter() - t0
    t = torch.as_tensor(np.asarray(times, dtype=np.float64))
    opts = dict(learning_rate=learning_rate, loss="mean", diag_reg=diag_reg)
    theta_tt = k_tt.ntk if kernel == "ntk" else k_tt.nngp
    theta_xt = k_xt.ntk if kernel == "ntk" else k_xt.nngp
    t0 = time.perf_counter()
    flow = gradient_flow_mse(
        theta_tt,
        yt,
        t,
        ntk_test_train=theta_xt,
        f0_train=torch.zeros_like(yt),
        f0_test=torch.zeros(len(xte), yt.shape[1], dtype=yt.dtype),
        **opts,
    )
    test_variance = None
    if variance:
        gp = gp_ensemble_mse(k_tt.nngp, theta_tt, k_xt.nngp, theta_xt, k_xx.nngp, yt, t, **opts)
        test_variance = torch.diagonal(gp.covariance, dim1=-2, dim2=-1).clone()
        del gp
    seconds = dict(kernels=kernel_seconds, dynamics=time.perf_counter() - t0)
    return InfiniteWidthPrediction(t, flow.train, flow.test, test_variance, seconds)


# Public names of the argument checks that widenet.scale's streamed solvers share.
check_loss = _check_loss
check_times = _times
