"""kernel-convergence: the empirical NTK of a finite MLP converges to the infinite-width NTK.

What it measures
----------------
For each hidden width n in ``widths`` and each of ``n_seeds`` random initialisations, the
relative Frobenius error

    ||Theta_emp - Theta_inf||_F / ||Theta_inf||_F

between the empirical NTK of ``wn.mlp(...).network(width=n)`` (``wn.empirical_ntk``) and the
closed-form infinite-width NTK ``wn.mlp(...).kernel(X).ntk``, on ``n_points`` points of a data
set (default: scikit-learn's bundled digits, a random subset, every feature standardized to
mean 0 and variance 1 over the full set, so that x.x/d is about 1; see :mod:`widenet.data`).

It then trains each network with full-batch gradient descent on the mean squared error
``0.5 * mean((f(x) - y)^2)`` for ``train_steps`` steps (targets: +1 for even digits, -1 for odd
ones) and measures the relative change of its empirical NTK during training,

    ||Theta_T - Theta_0||_F / ||Theta_0||_F.

The networks use the NTK parameterization, so one learning rate serves every width. By default
it is ``lr_scale / lambda_max(Theta_inf / n_points)``: ``lr_scale < 2`` is the stable range of
gradient descent on the linearised model, whatever the data set.

Theory
------
At initialisation the empirical NTK is an average over n hidden units of i.i.d. terms, so its
fluctuations around the limit are O(n^{-1/2}) (Jacot et al. 2018; the finite-width corrections
of Hanin & Nica 2020): the log-log slope of the error against width is -1/2 (the O(1/n) bias
of the mean kernel only matters at the smallest widths).

During training in the NTK parameterization the weights move by O(n^{-1/2}) and the kernel
stays within O(n^{-1/2}) of its initial value (Jacot et al. 2018, Theorem 2; Lee et al. 2019,
Theorem 2.1 and Fig. 2): "lazy training", so the slope of the relative change is at most about
-1/2. That is a bound: the leading-order change of the NTK under gradient descent is O(1/n)
(Dyer & Gur-Ari 2020; Huang & Yau 2020), so at large widths the measured slope drifts below
-1/2 towards -1; both reference slopes are drawn on the figure.

Metrics (``metrics.json``)
--------------------------
widths, seeds, n_points, relative_error (mean over seeds, aligned with widths),
relative_error_std, slope, ntk_change, ntk_change_std, ntk_change_slope, final_loss,
initial_loss, lr (see ``widenet list --verbose`` for one line each).

References
----------
Jacot, Gabriel, Hongler (2018). Neural Tangent Kernel: Convergence and Generalization in Neural
Networks. NeurIPS. arXiv:1806.07572.
Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington (2019). Wide Neural Networks of
Any Depth Evolve as Linear Models Under Gradient Descent. NeurIPS. arXiv:1902.06720.
Dyer, Gur-Ari (2020). Asymptotics of Wide Networks from Feynman Diagrams. ICLR.
arXiv:1909.11304.
Hanin, Nica (2020). Finite Depth and Width Corrections to the Neural Tangent Kernel. ICLR.
arXiv:1909.05989.
Huang, Yau (2020). Dynamics of Deep Neural Networks and Neural Tangent Hierarchy. ICML.
arXiv:1909.08156.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch

from widenet import lab
from widenet.data import DATASETS, load_dataset
from widenet.experiments._common import (
    Widths,
    gradient_descent,
    mse,
    parity_targets,
    slope,
)
from widenet.experiments._common import loglog_panel as _common_loglog_panel
from widenet.experiments._common import relative_error as _rel

METRICS = {
    "widths": "hidden widths n, ascending",
    "seeds": "initialisation seeds of the networks (drawn from the run's seed)",
    "n_points": "number of data points",
    "relative_error": "mean over seeds of ||Theta_emp - Theta_inf||_F / ||Theta_inf||_F, per width",
    "relative_error_std": "standard deviation over seeds of relative_error, per width",
    "slope": "least-squares slope of log(relative_error) vs log(width) (theory: -1/2)",
    "ntk_change": "mean over seeds of ||Theta_T - Theta_0||_F / ||Theta_0||_F after training",
    "ntk_change_std": "standard deviation over seeds of ntk_change, per width",
    "ntk_change_slope": "least-squares slope of log(ntk_change) vs log(width) (theory: between "
    "-1/2, the lazy-training bound, and -1, the leading order at large width)",
    "initial_loss": "mean over seeds of the training MSE at initialisation, per width",
    "final_loss": "mean over seeds of the training MSE after train_steps steps, per width",
    "lr": "the gradient-descent learning rate used (the same for every width)",
}


class KernelConvergenceConfig(lab.Config):
    """Full size by default; ``QUICK`` is the quick size (widths 2^6 .. 2^10, 64 points)."""

    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    n_points: int = pydantic.Field(128, ge=2)
    depth: int = pydantic.Field(3, ge=1)
    activation: str = "relu"
    w_std: float = pydantic.Field(2**0.5, gt=0)
    b_std: float = pydantic.Field(0.1, ge=0)
    widths: Widths = [2**k for k in range(6, 13)]
    n_seeds: int = pydantic.Field(3, ge=1)
    train_steps: int = pydantic.Field(100, ge=1)
    lr_scale: float = pydantic.Field(1.0, gt=0)
    lr: float | None = pydantic.Field(None, gt=0)
    dtype: Literal["float32", "float64"] = "float32"

    QUICK: ClassVar[dict] = {"widths": [2**k for k in range(6, 11)], "n_points": 64}


@lab.register(
    "kernel-convergence",
    summary="Empirical NTK -> infinite-width NTK as width grows (error ~ n^-1/2), and lazy "
    "training (NTK change between n^-1/2 and n^-1).",
    config=KernelConvergenceConfig,
    metrics=METRICS,
    key="slope",
    reference="-0.5 (theory: error ∝ width^-1/2)",
)
def run(config: KernelConvergenceConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn

    dtype = getattr(torch, config.dtype)
    device = ctx.device
    x, labels = load_dataset(
        config.dataset, n=config.n_points, seed=int(ctx.rng.integers(2**31)), dtype=dtype
    )
    x = x.to(device)
    y = parity_targets(labels).to(device=device, dtype=dtype)[:, None]
    arch = wn.mlp(
        depth=config.depth, activation=config.activation, w_std=config.w_std, b_std=config.b_std
    )
    theta_inf = arch.kernel(x).ntk
    if config.lr is not None:
        lr = config.lr
    else:
        lam_max = float(torch.linalg.eigvalsh(theta_inf.double().cpu())[-1]) / len(x)
        lr = config.lr_scale / lam_max
    seeds = [int(s) for s in ctx.rng.integers(0, 2**31, size=config.n_seeds)]
    widths = config.widths

    errors = np.zeros((len(widths), len(seeds)))
    changes = np.zeros_like(errors)
    loss0 = np.zeros_like(errors)
    loss1 = np.zeros_like(errors)
    snapshots = {}
    jobs = [(i, j) for i in range(len(widths)) for j in range(len(seeds))]
    for i, j in ctx.progress(jobs, description="kernel-convergence"):
        net = arch.network(x.shape[1], widths[i], seeds[j], dtype=dtype, device=device)
        theta0 = wn.empirical_ntk(net, x, mode="trace")
        errors[i, j] = _rel(theta0, theta_inf)
        if j == 0 and i in (0, len(widths) - 1):
            snapshots[widths[i]] = theta0.detach().cpu().numpy()
        with torch.no_grad():
            loss0[i, j] = float(mse(net, x, y))
        loss1[i, j] = gradient_descent(net, x, y, lr, config.train_steps)
        changes[i, j] = _rel(wn.empirical_ntk(net, x, mode="trace"), theta0)

    err_mean, chg_mean = errors.mean(1), changes.mean(1)
    slope_err, chg_slope = slope(widths, err_mean), slope(widths, chg_mean)
    _plot_convergence(ctx, widths, errors, changes, slope_err, chg_slope)
    order = np.argsort(labels.cpu().numpy(), kind="stable")  # group the points by label
    _plot_kernels(ctx, theta_inf.detach().cpu().numpy(), snapshots, order)
    return {
        "widths": widths,
        "seeds": seeds,
        "n_points": len(x),
        "relative_error": err_mean,
        "relative_error_std": errors.std(1),
        "slope": slope_err,
        "ntk_change": chg_mean,
        "ntk_change_std": changes.std(1),
        "ntk_change_slope": chg_slope,
        "initial_loss": loss0.mean(1),
        "final_loss": loss1.mean(1),
        "lr": lr,
    }


def _loglog_panel(ax, widths, values, slope, ylabel, title, references):
    _common_loglog_panel(
        ax, widths, values, slope, ylabel, title, references, label="mean over seeds"
    )


def _plot_convergence(ctx, widths, errors, changes, slope, chg_slope):
    fig = ctx.figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    _loglog_panel(
        ax1,
        widths,
        errors,
        slope,
        r"$\|\Theta_{emp} - \Theta_\infty\|_F / \|\Theta_\infty\|_F$",
        "At initialisation",
        [(-0.5, "theory: slope -1/2")],
    )
    _loglog_panel(
        ax2,
        widths,
        changes,
        chg_slope,
        r"$\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$",
        "Change during training (lazy regime)",
        [(-0.5, "bound: slope -1/2"), (-1.0, "leading order: slope -1")],
    )
    ctx.save_figure(fig, "convergence")


def _plot_kernels(ctx, theta_inf, snapshots, order):
    panels = [("infinite width", theta_inf)] + [(f"width {w}", k) for w, k in snapshots.items()]
    panels = [(title, k[np.ix_(order, order)]) for title, k in panels]
    fig = ctx.figure(figsize=(3.4 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels))
    # Clip the colour scale at the 99th percentile: a few large diagonal entries would wash out
    # the off-diagonal structure.
    vmin, vmax = float(theta_inf.min()), float(np.quantile(theta_inf, 0.99))
    for ax, (title, k) in zip(axes, panels, strict=True):
        im = ax.imshow(k, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(f"NTK, {title}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    # The arrow marks the clipped top: entries above the 99th percentile.
    fig.colorbar(im, ax=list(axes), shrink=0.8, extend="max", label="NTK entry")
    fig.suptitle("Empirical NTK at initialisation vs the limit (points grouped by label)")
    ctx.save_figure(fig, "kernels")
