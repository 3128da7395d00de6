"""The loss landscape of a network on data: Hessian, inertia, critical points and slices.

Convention: the empirical loss of a model ``f(·; θ)`` with ``P`` parameters on ``n`` samples is
the mean squared error with a factor one half,

    L(θ) = 1/(2n) Σ_{i=1}^{n} ‖f(x_i; θ) − y_i‖²,

as in Zhang, Zhang, Luo, Xu (2021) (their R_S(θ) with ℓ(y, y') = ½‖y − y'‖²). The gradient is
then ``∇L = (1/n) Σ_i J_iᵀ r_i`` and the Hessian ``H = (1/n) Σ_i (J_iᵀ J_i + Σ_k r_ik ∇²f_ik)``
(``r_i = f(x_i) − y_i``), computed in float64 by ``torch.func`` (dense ``hessian``, or
Hessian-vector products fed to Lanczos for the extreme eigenvalues of larger models).

* :func:`inertia` counts the negative, zero and positive eigenvalues with a stated tolerance;
  Zhang et al. (2021, Theorem 6.2) show that none of the three counts decreases under a critical
  embedding, so a narrow minimum can become a wide saddle (a negative eigenvalue appears).
* :func:`find_critical_point` reaches ``‖∇L‖ ≤ tol`` in float64 by damped Newton on ∇L
  (attracted by critical points of any index), by L-BFGS on ``L`` (minima), or by minimising
  ``½‖∇L‖²`` (saddles too), and reports the certified gradient norm.
* :func:`loss_slice_1d` / :func:`loss_slice_2d` evaluate ``L`` on a segment or a plane, with
  the filter-normalised random directions of Li, Xu, Taylor, Studer, Goldstein (2018).

References
----------
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
Li, Xu, Taylor, Studer, Goldstein (2018). Visualizing the Loss Landscape of Neural Nets.
NeurIPS. arXiv:1712.09913.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from widenet._checks import (
    as_tensor,
    check_finite,
    check_in_features,
    check_inputs,
    check_int,
    check_real,
)
from widenet.empirical import quiet_jit_deprecation as _quiet_jit_deprecation
from widenet.threads import small_ops_threads

__all__ = [
    "CriticalPoint",
    "ExtremeEigenvalues",
    "Inertia",
    "LossSlice",
    "default_inertia_tol",
    "filter_normalized_direction",
    "find_critical_point",
    "gradient",
    "hessian",
    "hessian_extreme_eigenvalues",
    "hessian_summary",
    "hessian_vector_product",
    "inertia",
    "loss_function",
    "loss_slice_1d",
    "loss_slice_2d",
    "parameter_vector",
    "with_parameters",
]

# Dense Hessians beyond this many parameters need more than ~1 GB in float64 and O(P) vmapped
# backward passes: use hessian_extreme_eigenvalues instead.
MAX_DENSE_PARAMETERS = 10_000


def _as_module(model) -> nn.Module:
    from widenet.networks import FCNet

    if isinstance(model, FCNet):
        return model.to_module()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or widenet FCNet, got {type(model).__name__}")
    return model


def _names_shapes(model: nn.Module):
    named = [(k, p) for k, p in model.named_parameters()]
    if not named:
        raise ValueError("model has no parameters")
    dtypes = {p.dtype for _, p in named}
    if len(dtypes) != 1:
        raise TypeError(f"model parameters must share one dtype, got {sorted(map(str, dtypes))}")
    return named


def parameter_vector(model) -> torch.Tensor:
    """The model's parameters flattened in ``named_parameters`` order (detached copy)."""
    named = _names_shapes(_as_module(model))
    return torch.cat([p.detach().reshape(-1) for _, p in named]).clone()


def _unflatten(named, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, p in named:
        out[k] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def with_parameters(model, theta) -> nn.Module:
    """A deep copy of ``model`` whose parameters are the flat vector ``theta`` (its dtype)."""
    model = copy.deepcopy(_as_module(model))
    named = _names_shapes(model)
    theta = as_tensor(theta, "theta")
    n_params = sum(p.numel() for _, p in named)
    if theta.shape != (n_params,):
        raise ValueError(f"theta must have shape ({n_params},), got {tuple(theta.shape)}")
    model = model.to(dtype=theta.dtype, device=theta.device)
    with torch.no_grad():
        for (_, p), v in zip(named, _unflatten(named, theta).values(), strict=True):
            p.copy_(v)
    return model


def _data(model: nn.Module, x, y, dtype):
    device = next(model.parameters()).device
    x = check_inputs(x, "x", dtype=dtype, device=device)
    check_in_features(model, x, "x")
    y = as_tensor(y, "y", dtype=dtype, device=device)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be (n, out_dim) or (n,) with n = {x.shape[0]} rows of x, "
            f"got shape {tuple(y.shape)}"
        )
    check_finite(y, "y")
    return x, y


def loss_function(model, x, y) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(L, θ0)``: the MSE ``L(θ) = 1/(2n) Σ_i ‖f(x_i; θ) − y_i‖²`` of a flat parameter vector.

    ``L`` is a pure function (``torch.func.functional_call``), so ``torch.func.grad`` /
    ``hessian`` / ``jvp`` compose with it; ``θ0`` is the model's current flat parameter vector
    (``named_parameters`` order, the model's dtype — float64 if the model is float64). ``x`` and
    ``y`` are cast to that dtype; ``y`` may be ``(n,)`` for a single output.
    """
    model = _as_module(model)
    named = _names_shapes(model)
    theta0 = parameter_vector(model)
    x, y = _data(model, x, y, theta0.dtype)
    n = x.shape[0]
    buffers = dict(model.named_buffers())

    def loss(theta: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**_unflatten(named, theta), **buffers}, (x,))
        if out.shape != y.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}, y {tuple(y.shape)}")
        return (out - y).square().sum() / (2 * n)

    return loss, theta0


def gradient(model, x, y) -> torch.Tensor:
    """``∇L(θ0)`` as a flat vector (see :func:`loss_function` for the convention)."""
    loss, theta0 = loss_function(model, x, y)
    return grad(loss)(theta0).detach()


def hessian(model, x, y, *, max_parameters: int = MAX_DENSE_PARAMETERS) -> torch.Tensor:
    """The dense loss Hessian ``∇²L(θ0)`` ``(P, P)`` by ``torch.func.hessian`` (forward over
    reverse). Refuses models with more than ``max_parameters`` parameters (memory ``P²``):
    use :func:`hessian_extreme_eigenvalues` for those."""
    loss, theta0 = loss_function(model, x, y)
    if theta0.numel() > max_parameters:
        raise ValueError(
            f"model has {theta0.numel()} parameters > max_parameters={max_parameters}: a dense "
            "Hessian needs P² memory; use hessian_extreme_eigenvalues (Lanczos) instead"
        )
    with _quiet_jit_deprecation():
        h = torch.func.hessian(loss)(theta0).detach()
    return (h + h.T) / 2  # exact symmetry; autograd's two halves differ only by rounding


def hessian_vector_product(model, x, y) -> tuple[Callable, torch.Tensor]:
    """``(hvp, θ0)`` with ``hvp(v) = ∇²L(θ0) v`` by forward-over-reverse differentiation."""
    loss, theta0 = loss_function(model, x, y)
    g = grad(loss)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        with _quiet_jit_deprecation():
            return jvp(g, (theta0,), (v,))[1]

    return hvp, theta0


@dataclass(frozen=True)
class ExtremeEigenvalues:
    """The ``k`` largest and ``k`` smallest (most negative) Hessian eigenvalues, ascending,
    with their unit eigenvectors as columns."""

    largest: torch.Tensor
    smallest: torch.Tensor
    largest_vectors: torch.Tensor
    smallest_vectors: torch.Tensor


def hessian_extreme_eigenvalues(
    model, x, y, *, k: int = 6, tol: float = 1e-10, max_iter: int | None = None, seed: int = 0
) -> ExtremeEigenvalues:
    """Extreme Hessian eigenvalues by Lanczos (SciPy ``eigsh``, implicitly restarted) on
    Hessian-vector products: ``which="LA"`` for the largest and ``"SA"`` for the smallest
    algebraic ones. Never forms the ``P × P`` matrix. ``seed`` fixes Lanczos' start vector.

    The products reuse one graph: g = ∇L(θ0) is built once with ``create_graph=True`` and
    each H v = ∇(g · v) is a backward pass through it (double backward, Pearlmutter 1994),
    where forward-over-reverse (``torch.func.jvp`` of ``grad``, :func:`hessian_vector_product`)
    reruns the forward and backward passes for every product. Measured on a 10-64-64-1 tanh
    MLP, 256 points, float64, one thread: 3.5-4.0 ms against 11-17 ms per product
    (``torch.func.linearize`` of ``grad``: 2.6 s to trace, then 103 ms per product at load ~7
    with two threads, against 31 ms for double backward). On the CPU the products run under
    :func:`widenet.threads.small_ops_threads` (one thread for small networks).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    loss, theta0 = loss_function(model, x, y)
    p = theta0.numel()
    k = check_int(k, "k", minimum=1)
    if k >= p:
        raise ValueError(f"k must be < the number of parameters {p} for Lanczos, got {k}")
    tol = check_real(tol, "tol", minimum=0.0)
    n = x.shape[0] if hasattr(x, "shape") else len(x)  # loss_function checked x

    with small_ops_threads(n * p, theta0.device):
        theta = theta0.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(theta), theta, create_graph=True)

        def matvec(v):
            v = torch.as_tensor(np.asarray(v).reshape(-1), dtype=theta0.dtype, device=theta0.device)
            if not g.requires_grad:  # L is at most linear in θ: H = 0
                return np.zeros(p)
            (hv,) = torch.autograd.grad(g, theta, v, retain_graph=True, allow_unused=True)
            if hv is None:
                return np.zeros(p)
            return hv.detach().cpu().numpy().astype(np.float64)

        op = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(p)
        out = []
        for which in ("LA", "SA"):
            vals, vecs = eigsh(op, k=k, which=which, tol=tol, v0=v0, maxiter=max_iter)
            order = np.argsort(vals)
            out.append(
                (
                    torch.as_tensor(vals[order], dtype=theta0.dtype, device=theta0.device),
                    torch.as_tensor(vecs[:, order], dtype=theta0.dtype, device=theta0.device),
                )
            )
    (lv, lvec), (sv, svec) = out
    return ExtremeEigenvalues(lv, sv, lvec, svec)


# -- inertia -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inertia:
    """Sylvester inertia: eigenvalues below ``-tol``, within ``[-tol, tol]``, above ``tol``."""

    negative: int
    zero: int
    positive: int
    tol: float
    eigenvalues: torch.Tensor

    @property
    def gap(self) -> tuple[float, float]:
        """(largest |λ| counted as zero, smallest |λ| counted as nonzero): a clean count has the
        first far below ``tol`` and the second far above."""
        a = self.eigenvalues.abs()
        inside, outside = a[a <= self.tol], a[a > self.tol]
        return (
            float(inside.max()) if inside.numel() else 0.0,
            float(outside.min()) if outside.numel() else math.inf,
        )


def default_inertia_tol(eigenvalues: torch.Tensor) -> float:
    """``eps^(2/3) · max(|λ|)`` (3.7e-11 relative in float64, 1.5e-5 in float32).

    Why: the zero eigenvalues met here come from exact symmetries (the share directions of
    embedded critical points, flat valleys of the output map); at a point certified to
    ``‖∇L‖ ≤ δ`` they are displaced only by rounding, ``O(eps‖H‖)`` (~1e-16), and by the coupling
    of the gradient to the flat directions, ``O(δ²/λ)`` (~1e-15 for ``δ = 1e-10``). Genuine
    small curvatures of the small networks studied here are ``≥ 1e-7‖H‖``. ``eps^(2/3)`` sits
    between the two on a log scale; NumPy's rank rule ``P·eps·max|λ|`` is too tight for
    approximate critical points, ``sqrt(eps)`` too loose for real small curvatures. Pass
    ``tol`` explicitly, and read :attr:`Inertia.gap`, when the spectrum has no clear gap.
    """
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return torch.finfo(eigenvalues.dtype).eps ** (2 / 3) * scale


def inertia(matrix_or_eigenvalues, *, tol: float | None = None) -> Inertia:
    """Count negative / zero / positive eigenvalues of a symmetric matrix (or of given
    eigenvalues) with ``|λ| ≤ tol`` counted as zero; ``tol`` defaults to
    :func:`default_inertia_tol`."""
    a = as_tensor(matrix_or_eigenvalues, "matrix_or_eigenvalues")
    check_finite(a, "matrix_or_eigenvalues")
    if a.ndim == 2:
        if a.shape[0] != a.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(a.shape)}")
        asym = float((a - a.T).abs().max()) if a.numel() else 0.0
        scale = float(a.abs().max()) if a.numel() else 0.0
        if asym > 1e3 * torch.finfo(a.dtype).eps * max(scale, 1e-300):
            raise ValueError(
                f"matrix must be symmetric: max |A - Aᵀ| = {asym:.3g} (max |A| = {scale:.3g})"
            )
        lam = torch.linalg.eigvalsh((a + a.T) / 2)
    elif a.ndim == 1:
        lam = torch.sort(a).values
    else:
        raise ValueError(
            f"matrix_or_eigenvalues must be a square matrix or a vector, got {tuple(a.shape)}"
        )
    tol = default_inertia_tol(lam) if tol is None else check_real(tol, "tol", minimum=0.0)
    neg = int((lam < -tol).sum())
    pos = int((lam > tol).sum())
    return Inertia(neg, lam.numel() - neg - pos, pos, float(tol), lam)


# -- critical points -----------------------------------------------------------------------------
METHODS = ("newton", "lbfgs", "gradient_norm")


@dataclass(frozen=True)
class CriticalPoint:
    """A point reached by :func:`find_critical_point`: ``model`` is a float64 copy at the point,
    ``grad_norm`` the Euclidean ``‖∇L‖`` evaluated there (the certificate) and ``converged``
    whether ``grad_norm ≤ tol``."""

    model: nn.Module
    loss: float
    grad_norm: float
    converged: bool
    iterations: int
    method: str


def _newton(
    loss, theta, tol: float, max_iter: int, damping: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Newton on ``∇L = 0`` with Levenberg–Marquardt damping and a ``‖∇L‖`` merit function.

    The step ``d = −Σ_j λ_j/(λ_j² + μ) (u_jᵀg) u_j`` (eigenpairs of H) is Gauss–Newton for
    ``min ½‖∇L‖²`` (whose Jacobian is H): at ``μ = 0`` it is the pseudo-inverse Newton step, which
    converges quadratically to critical points of any index, also on the degenerate critical
    manifolds of embedded points; ``μ`` grows until ``‖∇L‖`` decreases (trust-region logic).
    ``damping`` is the initial ``μ / max λ²``: large values start as gradient descent on
    ``½‖∇L‖²`` (direction ``−H∇L``), 0 as pure Newton.
    """
    g_fn = grad(loss)
    h_fn = torch.func.hessian(loss)
    mu = None
    g = g_fn(theta)
    g_norm = float(torch.linalg.vector_norm(g))
    for it in range(max_iter):
        if g_norm <= tol:
            return theta, it
        with _quiet_jit_deprecation():
            hess = h_fn(theta)
        lam, u = torch.linalg.eigh(hess)
        ug = u.T @ g
        scale = float(lam.abs().max()) ** 2
        floor = torch.finfo(theta.dtype).eps * scale  # pseudo-inverse cut for μ = 0
        if mu is None:
            mu = damping * scale
        for _ in range(40):
            denom = lam.square() + mu
            coef = torch.where(denom > floor, lam / denom.clamp_min(floor), 0.0)
            new = theta - u @ (coef * ug)
            g_new = g_fn(new)
            new_norm = float(torch.linalg.vector_norm(g_new))
            if new_norm < g_norm:
                theta, g, g_norm = new, g_new, new_norm
                mu = mu / 10 if mu > 1e-12 * scale else 0.0
                break
            mu = max(10 * mu, 1e-10 * scale)
        else:
            return theta, it + 1  # no decrease possible in float64: stalled
    return theta, max_iter


def _lbfgs(objective, theta, max_iter: int, tolerance_grad: float) -> tuple[torch.Tensor, int]:
    theta = theta.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = objective(theta)
        value.backward()
        return value

    opt.step(closure)
    return theta.detach(), int(opt.state[opt._params[0]].get("n_iter", 0))


def _grad_norm_sq(loss):
    def objective(theta):
        (g,) = torch.autograd.grad(loss(theta), theta, create_graph=True)
        return 0.5 * g.square().sum()

    return objective


def find_critical_point(
    model,
    x,
    y,
    *,
    method: str = "newton",
    tol: float = 1e-10,
    max_iter: int | None = None,
    polish: bool = True,
) -> CriticalPoint:
    """Find a critical point of ``L`` (see :func:`loss_function`) near ``model``, in float64.

    ``method``:

    * ``"newton"``: damped (Levenberg–Marquardt) pseudo-inverse Newton on ``∇L = 0`` with the
      dense Hessian; converges to the nearby critical point of any index (default 100 steps).
    * ``"lbfgs"``: L-BFGS (strong Wolfe) on ``L``; finds minima (default 1000 iterations).
    * ``"gradient_norm"``: minimise ``½‖∇L‖²``, whose zeros are all critical points, saddles
      included: Levenberg–Marquardt (Gauss–Newton with the Jacobian H of ∇L, starting heavily
      damped, i.e. as gradient descent along ``−H∇L``; default 200 steps) for models with at
      most ``MAX_DENSE_PARAMETERS`` parameters, else L-BFGS with gradient ``H∇L`` by double
      backward (default 5000 iterations; ill-conditioned: κ(H)²).

    With ``polish`` (default) L-BFGS finishes with Newton steps when the model has at most
    ``MAX_DENSE_PARAMETERS`` parameters, to reach tolerances L-BFGS alone stalls above.
    The result certifies ``grad_norm = ‖∇L‖`` (Euclidean) evaluated at the returned point;
    ``converged`` is ``grad_norm ≤ tol`` and is False (never an exception) otherwise. Expect
    False from a fair share of random starts of tanh networks: their landscapes have valleys
    to infinity where the loss keeps decreasing ever more slowly and no finite critical point
    lies — e.g. a neuron whose incoming weights shrink while its output weight diverges (it
    tends to a linear unit; seen here on ``sin(πx)``: output weight 210 → 2700 between 200 and
    1000 L-BFGS iterations, ``‖∇L‖`` 9e-2 → 4e-2), or two merging neurons with diverging output
    weights (Martinelli, van Meegen, Şimşek, Gerstner, Brea 2025, arXiv:2506.14951). (Measured
    on ``sin(πx)``, 20 points, 6 seeds: width 1 converges 6/6 with lbfgs and gradient_norm, widths 2
    and 3 in 2–3 of 6, newton 1–3 of 6.)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tol = check_real(tol, "tol", minimum=0.0, strict=True)
    model64 = copy.deepcopy(_as_module(model)).to(torch.float64)
    loss, theta = loss_function(model64, x, y)
    small = theta.numel() <= MAX_DENSE_PARAMETERS
    defaults = {"newton": 100, "lbfgs": 1000, "gradient_norm": 200 if small else 5000}
    max_iter = defaults[method] if max_iter is None else check_int(max_iter, "max_iter", minimum=1)
    if method == "gradient_norm" and small:
        theta, iters = _newton(loss, theta, tol, max_iter, damping=1.0)
    elif method == "newton":
        if not small:
            raise ValueError(
                f"method='newton' needs a dense Hessian; the model has {theta.numel()} > "
                f"{MAX_DENSE_PARAMETERS} parameters: use 'lbfgs' or 'gradient_norm'"
            )
        theta, iters = _newton(loss, theta, tol, max_iter)
    else:
        objective = loss if method == "lbfgs" else _grad_norm_sq(loss)
        # L-BFGS stops on max |∂objective|: max |∂L| ≤ tol/sqrt(P) implies ‖∇L‖ ≤ tol; for
        # ½‖∇L‖² that gradient is H∇L, which says little about ‖∇L‖, so ask for much less.
        stop = tol / theta.numel() ** 0.5 if method == "lbfgs" else tol * 1e-3
        theta, iters = _lbfgs(objective, theta, max_iter, tolerance_grad=stop)
        g_norm = float(torch.linalg.vector_norm(grad(loss)(theta)))
        if polish and small and g_norm > tol:
            theta, more = _newton(loss, theta, tol, 50)
            iters += more
    theta = theta.detach()
    g_norm = float(torch.linalg.vector_norm(grad(loss)(theta)))
    return CriticalPoint(
        model=with_parameters(model64, theta),
        loss=float(loss(theta)),
        grad_norm=g_norm,
        converged=g_norm <= tol,
        iterations=iters,
        method=method,
    )


# -- slices --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSlice:
    """Loss on a line (``coords = (t,)``, ``loss (len(t),)``) or a plane (``coords = (a, b)``,
    ``loss (len(a), len(b))``) through ``θ0``."""

    coords: tuple[torch.Tensor, ...]
    loss: torch.Tensor


def filter_normalized_direction(
    model, *, seed: int = 0, ignore_biases: bool = True
) -> torch.Tensor:
    """A random direction with each filter scaled to its parameters' norm (Li et al. 2018, §4).

    A Gaussian ``d`` is drawn (CPU generator, seed ``seed``) with the parameters' shapes; for a
    weight matrix each row (a neuron's incoming weights — the dense-layer "filter") is rescaled,
    ``d_i ← d_i ‖θ_i‖ / ‖d_i‖``. Biases (1-D parameters) get direction 0, as in Li et al.
    (``ignore_biases=False`` normalises them as one filter instead). Returns the flat direction.
    """
    module = _as_module(model)
    named = _names_shapes(module)
    gen = torch.Generator().manual_seed(check_int(seed, "seed"))
    parts = []
    for _, p in named:
        theta = p.detach()
        d = torch.randn(theta.shape, generator=gen, dtype=theta.dtype).to(theta.device)
        if theta.ndim <= 1:
            if ignore_biases:
                d = torch.zeros_like(theta)
            else:
                d = d * theta.norm() / d.norm().clamp_min(1e-300)
        else:
            rows_t, rows_d = theta.reshape(theta.shape[0], -1), d.reshape(d.shape[0], -1)
            scale = rows_t.norm(dim=1) / rows_d.norm(dim=1).clamp_min(1e-300)
            d = (rows_d * scale[:, None]).reshape(theta.shape)
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def _direction(model, theta0: torch.Tensor, d, name: str) -> torch.Tensor:
    if isinstance(d, nn.Module) or type(d).__name__ == "FCNet":
        other = parameter_vector(d).to(theta0)
        if other.shape != theta0.shape:
            raise ValueError(
                f"{name}: the other model has {other.numel()} parameters, expected a flat "
                f"direction of shape {tuple(theta0.shape)} or a model with the same parameters"
            )
        d = other - theta0  # a point: the direction towards it
    d = as_tensor(d, name, dtype=theta0.dtype, device=theta0.device)
    if d.shape != theta0.shape:
        raise ValueError(
            f"{name} must be a flat direction of shape {tuple(theta0.shape)} or a model with the "
            f"same parameters, got shape {tuple(d.shape)}"
        )
    check_finite(d, name)
    return d


def _grid(values, name: str, theta0) -> torch.Tensor:
    t = as_tensor(values, name, dtype=theta0.dtype, device=theta0.device).reshape(-1)
    check_finite(t, name)
    return t


def _batched_loss(loss, thetas: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.vmap(loss)(c) for c in thetas.split(chunk)])


def loss_slice_1d(model, x, y, direction, t=None) -> LossSlice:
    """``L(θ0 + t·d)`` for each ``t``: ``direction`` is a flat vector (e.g.
    :func:`filter_normalized_direction`) or another model/FCNet with the same parameters, in
    which case ``d = θ_other − θ0`` and ``t = 0, 1`` are the two points (default ``t``:
    ``linspace(-0.25, 1.25, 61)`` for a point, ``linspace(-1, 1, 61)`` for a direction)."""
    loss, theta0 = loss_function(model, x, y)
    is_point = isinstance(direction, nn.Module) or type(direction).__name__ == "FCNet"
    d = _direction(model, theta0, direction, "direction")
    if t is None:
        t = torch.linspace(-0.25, 1.25, 61) if is_point else torch.linspace(-1.0, 1.0, 61)
    t = _grid(t, "t", theta0)
    return LossSlice((t,), _batched_loss(loss, theta0 + t[:, None] * d))


def loss_slice_2d(model, x, y, d1, d2, a=None, b=None) -> LossSlice:
    """``L(θ0 + a·d1 + b·d2)`` on the grid ``a × b`` (default ``linspace(-1, 1, 31)`` each);
    ``d1``, ``d2`` are flat directions or models (directions towards them)."""
    loss, theta0 = loss_function(model, x, y)
    u = _direction(model, theta0, d1, "d1")
    v = _direction(model, theta0, d2, "d2")
    a = _grid(torch.linspace(-1.0, 1.0, 31) if a is None else a, "a", theta0)
    b = _grid(torch.linspace(-1.0, 1.0, 31) if b is None else b, "b", theta0)
    thetas = theta0 + a[:, None, None] * u + b[None, :, None] * v
    values = _batched_loss(loss, thetas.reshape(-1, theta0.numel()))
    return LossSlice((a, b), values.reshape(a.numel(), b.numel()))


def hessian_summary(model, x, y, *, lanczos: int | None = None, inertia_tol=None):
    """Loss, gradient norm and Hessian spectrum of ``model`` at its parameters, as one record.

    ``(summary, eigenvalues)``: ``summary`` is a JSON-ready dict with ``n_points``,
    ``num_parameters``, ``loss`` (L = 1/(2n) Σᵢ |f(xᵢ) − yᵢ|², :func:`loss_function`),
    ``grad_norm`` (|∇L|) and either ``inertia`` (``negative``/``zero``/``positive``, ``tol``,
    ``gap``: Sylvester's inertia of the dense Hessian, :func:`inertia`) or, with ``lanczos=K``,
    the ``largest`` and ``smallest`` K eigenvalues (:func:`hessian_extreme_eigenvalues`, from
    Hessian-vector products only); ``eigenvalues`` holds the spectrum (ascending) or the 2K
    extreme eigenvalues (smallest, then largest) as a numpy array.
    """
    loss, theta = loss_function(model, x, y)
    summary = {
        "n_points": len(x),
        "num_parameters": theta.numel(),
        "loss": float(loss(theta)),
        "grad_norm": float(gradient(model, x, y).norm()),
    }
    if lanczos is None:
        lam = torch.linalg.eigvalsh(hessian(model, x, y))
        inert = inertia(lam, tol=inertia_tol)
        summary["inertia"] = {
            "negative": inert.negative,
            "zero": inert.zero,
            "positive": inert.positive,
            "tol": inert.tol,
            "gap": list(inert.gap),
        }
        return summary, lam.cpu().numpy()
    ext = hessian_extreme_eigenvalues(model, x, y, k=lanczos)
    summary["largest"] = ext.largest.tolist()
    summary["smallest"] = ext.smallest.tolist()
    eig = np.concatenate([ext.smallest.cpu().numpy(), ext.largest.cpu().numpy()])
    return summary, eig
