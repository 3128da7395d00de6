"""linear-vs-network: a wide network and its linearization stay close under gradient descent.

What it measures
----------------
For each hidden width n in ``widths`` and each of ``n_seeds`` random initialisations, an MLP
``wn.mlp(depth, activation, w_std, b_std).network(d, n, seed)`` (NTK parameterization; default
depth 3, ReLU, w_std = sqrt(2), b_std = 0.1) and its linearization around the initial parameters
θ0, ``wn.linearize(net)``, i.e.

    f_lin(x; θ) = f(x; θ0) + J(x; θ0) (θ − θ0),

are trained side by side, from the same θ0, by full-batch gradient descent on the same
``n_train`` points of a data set (default: scikit-learn's digits, features standardized; targets
+1 for even digits and -1 for odd ones) with the mean squared error
``0.5 * mean((f(x) - y)^2)``, the same learning rate and the same number of steps. At the end it
records, per width,

* ``rmse``: the root mean squared difference between the network's and the linearization's
  outputs on ``n_test`` held-out points (Lee et al. 2019, Fig. 1 right column and Fig. S5);
* ``weight_change``: ``||θ_T − θ0||_2 / ||θ0||_2`` over all parameters of the network;
* ``ntk_change``: ``||Θ_T − Θ_0||_F / ||Θ_0||_F`` of the network's empirical NTK
  (``wn.empirical_ntk``) on the first ``n_ntk`` training points;

and fits log-log slopes against the width.

Learning rate. One rate serves every width (NTK parameterization) and both models:
``lr = lr_scale * wn.dynamics.max_learning_rate(Theta_inf)``, where Theta_inf is the closed-form
infinite-width NTK on the training points (``arch.kernel(x).ntk``) and ``max_learning_rate`` is
the largest rate for which gradient descent on the linearized model with that kernel converges
(2N / lambda_max for the mean loss over N targets). The default ``lr_scale = 0.5`` puts the top
eigenmode at eta * lambda_max / N = 1 (it is fitted in one step) and leaves a factor 2 of margin
for the finite-width kernel's fluctuations (the finite-width lambda_max differs from the limit
by O(n^{-1/2}), about 20% at n = 32).

Theory
------
Lee et al. 2019 (Theorem 2.1 and Appendix G): in the NTK parameterization, under gradient
descent with a learning rate below the critical one, the parameters stay in a ball of radius
O(1) around θ0 and sup_t ||f_t(x) − f^lin_t(x)||, sup_t ||Θ_t − Θ_0||_F = O(n^{-1/2}). The bound
on the outputs is not tight: the network and its linearization differ at second order in
θ − θ0, and along the directions gradient descent actually takes that term, like the motion of
the kernel that drives it, is O(1/n) (Dyer & Gur-Ari 2020; Huang & Yau 2020); Lee et al. 2019,
Fig. 1 and S5, measure an output gap falling with a slope of about -1.

Expected slopes: ``rmse_slope`` near -1 and at least as steep as -1/2; ``ntk_change_slope``
between -1/2 (the lazy-training bound) and -1 (the leading order of the kernel's motion, Dyer &
Gur-Ari 2020); ``weight_change_slope`` -1/2 or steeper. For the weights: the NTK is O(1), so
the Jacobian has O(1) norm and the parameters move by ||θ_T − θ0|| = O(1) in total, while
||θ0|| grows with the width: like n^{1/2} for the first layer (n x d entries of size O(1)) and
like n for each n x n hidden layer. The first layer's relative change is thus O(n^{-1/2}) (the
rate of Lee et al. 2019, Fig. 1) and the hidden layers' O(1/n); the total, dominated in norm by
the hidden layers, falls with a slope between -1/2 and -1. In the quick widths (2^5 .. 2^9) the
measured slopes are shallower than their asymptotes (the O(1/n) terms are not yet dominant):
about -0.6 for ``rmse`` and ``ntk_change`` and -0.9 for ``weight_change`` (seed 0). The full
size (2^5 .. 2^12, seed 0) measured rmse 0.30 -> 0.014 and slopes -0.66 (rmse), -0.95 (weights)
and -0.72 (NTK): the output gap falls faster than the -1/2 bound but, with ReLU at these widths
and one initialisation per width, less steeply than the -1 of Lee et al.'s figures.

Metrics (``metrics.json``)
--------------------------
widths, rmse, rmse_slope, weight_change_slope, ntk_change_slope (the stable keys), and
seeds, n_train, n_test, steps, lr, rmse_std, weight_change, ntk_change, train_loss,
lin_train_loss, initial_train_loss, output_scale, closed_form_error (see
``widenet list --verbose``).

References
----------
Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington (2019). Wide Neural Networks of
Any Depth Evolve as Linear Models Under Gradient Descent. NeurIPS. arXiv:1902.06720.
Jacot, Gabriel, Hongler (2018). Neural Tangent Kernel: Convergence and Generalization in Neural
Networks. NeurIPS. arXiv:1806.07572.
Dyer, Gur-Ari (2020). Asymptotics of Wide Networks from Feynman Diagrams. ICLR.
arXiv:1909.11304.
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
    loglog_panel,
    parity_targets,
    slope,
)
from widenet.experiments._common import relative_error as _rel

METRICS = {
    "widths": "hidden widths n, ascending",
    "rmse": "mean over seeds of the RMSE between the network's and its linearization's outputs "
    "on the test points after training, per width",
    "rmse_slope": "least-squares slope of log(rmse) vs log(width) (Lee et al. 2019: about -1; "
    "at least as steep as -1/2)",
    "weight_change_slope": "least-squares slope of log(weight_change) vs log(width) (theory: "
    "-1/2 or steeper)",
    "ntk_change_slope": "least-squares slope of log(ntk_change) vs log(width) (theory: between "
    "-1/2 and -1)",
    "seeds": "initialisation seeds of the networks (drawn from the run's seed)",
    "n_train": "number of training points",
    "n_test": "number of test points",
    "steps": "gradient-descent steps (the same for the network and its linearization)",
    "lr": "the learning rate used for every width and both models",
    "rmse_std": "standard deviation over seeds of rmse, per width",
    "weight_change": "mean over seeds of ||theta_T - theta_0|| / ||theta_0|| of the network, "
    "per width",
    "ntk_change": "mean over seeds of ||Theta_T - Theta_0||_F / ||Theta_0||_F of the network's "
    "empirical NTK on n_ntk training points, per width",
    "train_loss": "mean over seeds of the network's final training loss 0.5*mean((f-y)^2), "
    "per width",
    "lin_train_loss": "mean over seeds of the linearization's final training loss, per width",
    "initial_train_loss": "mean over seeds of the training loss at initialisation, per width",
    "output_scale": "mean over seeds of the RMS of the network's test outputs after training "
    "(the scale rmse compares to), per width",
    "closed_form_error": "largest over widths and seeds of the RMSE between the trained "
    "linearization's test outputs and wn.dynamics.gradient_descent_mse with the empirical NTK "
    "at initialisation, divided by output_scale (a check of the linearized training: ~1e-6 in "
    "float32)",
}


class LinearVsNetworkConfig(lab.Config):
    """Full size by default (widths 2^5 .. 2^12); ``QUICK``: widths 2^5 .. 2^9."""

    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    n_train: int = pydantic.Field(64, ge=2)
    n_test: int = pydantic.Field(64, ge=1)
    n_ntk: int = pydantic.Field(32, ge=2)
    depth: int = pydantic.Field(3, ge=1)
    activation: str = "relu"
    w_std: float = pydantic.Field(2**0.5, gt=0)
    b_std: float = pydantic.Field(0.1, ge=0)
    widths: Widths = [2**k for k in range(5, 13)]
    n_seeds: int = pydantic.Field(1, ge=1)
    steps: int = pydantic.Field(200, ge=1)
    lr_scale: float = pydantic.Field(0.5, gt=0)
    dtype: Literal["float32", "float64"] = "float32"

    # The full size adds the widths 2^10 .. 2^12 (minutes on a CPU: width 4096 alone is about
    # 1 s per step of the network and its linearization).
    QUICK: ClassVar[dict] = {"widths": [2**k for k in range(5, 10)]}


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _snapshot_steps(steps: int, count: int = 25) -> set[int]:
    return {int(s) for s in np.unique(np.round(np.geomspace(1, steps + 1, count) - 1))}


@lab.register(
    "linear-vs-network",
    summary="A network and its linearization trained by the same gradient descent: output gap "
    "~ 1/width, weight and NTK change ~ width^-1/2 or faster (Lee et al. 2019, Fig. 1, S5).",
    config=LinearVsNetworkConfig,
    metrics=METRICS,
    key="rmse_slope",
    reference="about -1, at least as steep as -1/2 (Lee et al. 2019)",
)
def run(config: LinearVsNetworkConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn

    dtype = getattr(torch, config.dtype)
    device = ctx.device
    n_train = config.n_train
    if config.n_ntk > n_train:
        raise ValueError(f"n_ntk={config.n_ntk} exceeds n_train={n_train}")
    x_all, labels = load_dataset(
        config.dataset,
        n=n_train + config.n_test,
        seed=int(ctx.rng.integers(2**31)),
        dtype=dtype,
    )
    x_all = x_all.to(device)
    y_all = parity_targets(labels).to(device=device, dtype=dtype)[:, None]
    x, y = x_all[:n_train], y_all[:n_train]
    x_test = x_all[n_train:]
    x_ntk = x[: config.n_ntk]

    arch = wn.mlp(
        depth=config.depth, activation=config.activation, w_std=config.w_std, b_std=config.b_std
    )
    theta_inf = arch.kernel(x).ntk.double().cpu()
    lr = config.lr_scale * float(wn.dynamics.max_learning_rate(theta_inf, loss="mean"))
    seeds = [int(s) for s in ctx.rng.integers(0, 2**31, size=config.n_seeds)]
    widths = config.widths
    snap_steps = _snapshot_steps(config.steps)

    shape = (len(widths), len(seeds))
    rmse, w_change, k_change = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    loss0, loss_net, loss_lin, scale, closed = (np.zeros(shape) for _ in range(5))
    trajectories = {}
    jobs = [(i, j) for i in range(len(widths)) for j in range(len(seeds))]
    for i, j in ctx.progress(jobs, description="linear-vs-network"):
        net = arch.network(x.shape[1], widths[i], seeds[j], dtype=dtype, device=device)
        lin = wn.linearize(net)
        theta0 = _flat(net.parameters())
        ntk0 = wn.empirical_ntk(net, x_ntk, mode="trace")
        with torch.no_grad():
            loss0[i, j] = float(0.5 * ((net(x) - y) ** 2).mean())
            f0_all = net(x_all).double().cpu()
        # The linearization trained by gradient descent has a closed form with the empirical
        # NTK at θ0 (Lee et al. 2019, eq. 9): a check of the trained linear model.
        ntk_all = wn.empirical_ntk(net, x_all, mode="trace").double().cpu()
        expected = wn.dynamics.gradient_descent_mse(
            ntk_all[:n_train, :n_train],
            y.double().cpu(),
            [config.steps],
            ntk_test_train=ntk_all[n_train:, :n_train],
            f0_train=f0_all[:n_train],
            f0_test=f0_all[n_train:],
            learning_rate=lr,
            loss="mean",
        ).test[-1]

        record = j == 0 and i in (0, len(widths) - 1)
        traj = {"step": [], "net": [], "lin": []}

        def snap(model, key, step, traj=traj, record=record):
            if record and step in snap_steps:
                with torch.no_grad():
                    traj[key].append(model(x_test[:4]).reshape(-1).cpu().numpy())
                if key == "net":
                    traj["step"].append(step)

        loss_net[i, j] = gradient_descent(
            net, x, y, lr, config.steps, on_step=lambda s, net=net: snap(net, "net", s)
        )
        loss_lin[i, j] = gradient_descent(
            lin, x, y, lr, config.steps, on_step=lambda s, lin=lin: snap(lin, "lin", s)
        )
        with torch.no_grad():
            f_net, f_lin = net(x_test), lin(x_test)
        rmse[i, j] = float(((f_net - f_lin) ** 2).mean().sqrt())
        scale[i, j] = float((f_net**2).mean().sqrt())
        gap = f_lin.double().cpu() - expected
        closed[i, j] = float((gap**2).mean().sqrt()) / scale[i, j]
        w_change[i, j] = _rel(_flat(net.parameters()), theta0)
        k_change[i, j] = _rel(wn.empirical_ntk(net, x_ntk, mode="trace"), ntk0)
        if record:
            trajectories[widths[i]] = {k: np.asarray(v) for k, v in traj.items()}

    means = {name: a.mean(1) for name, a in (("rmse", rmse), ("w", w_change), ("k", k_change))}
    slopes = {name: slope(widths, m) for name, m in means.items()}
    _plot_scaling(ctx, widths, rmse, w_change, k_change, slopes)
    _plot_trajectories(ctx, trajectories)
    return {
        "widths": widths,
        "rmse": means["rmse"],
        "rmse_slope": slopes["rmse"],
        "weight_change_slope": slopes["w"],
        "ntk_change_slope": slopes["k"],
        "seeds": seeds,
        "n_train": n_train,
        "n_test": config.n_test,
        "steps": config.steps,
        "lr": lr,
        "rmse_std": rmse.std(1),
        "weight_change": means["w"],
        "ntk_change": means["k"],
        "train_loss": loss_net.mean(1),
        "lin_train_loss": loss_lin.mean(1),
        "initial_train_loss": loss0.mean(1),
        "output_scale": scale.mean(1),
        "closed_form_error": float(closed.max()),
    }


def _plot_scaling(ctx, widths, rmse, w_change, k_change, slopes):
    fig = ctx.figure(figsize=(13, 4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    loglog_panel(
        ax1,
        widths,
        rmse,
        slopes["rmse"],
        r"RMSE$(f_T(x_{test}),\ f^{lin}_T(x_{test}))$",
        "Network vs linearization (test outputs)",
        [(-1.0, "slope -1"), (-0.5, "slope -1/2")],
    )
    loglog_panel(
        ax2,
        widths,
        w_change,
        slopes["w"],
        r"$\|\theta_T - \theta_0\| / \|\theta_0\|$",
        "Relative change of the weights",
        [(-0.5, "slope -1/2 (first layer)"), (-1.0, "slope -1 (hidden layers)")],
    )
    loglog_panel(
        ax3,
        widths,
        k_change,
        slopes["k"],
        r"$\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$",
        "Relative change of the empirical NTK",
        [(-0.5, "bound: slope -1/2"), (-1.0, "leading order: slope -1")],
    )
    ctx.save_figure(fig, "scaling")


def _plot_trajectories(ctx, trajectories):
    if not trajectories:
        return
    fig = ctx.figure(figsize=(5 * len(trajectories), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(trajectories)))
    for ax, (width, traj) in zip(axes, trajectories.items(), strict=True):
        steps = traj["step"] + 1
        for p in range(traj["net"].shape[1]):
            color = f"C{p}"
            ax.plot(steps, traj["net"][:, p], "-", color=color, lw=2, alpha=0.6)
            ax.plot(steps, traj["lin"][:, p], "--", color="k", lw=1)
        ax.plot([], [], "-", color="0.5", lw=2, label="network")
        ax.plot([], [], "--", color="k", lw=1, label="linearization")
        ax.set_xscale("log")
        ax.set_xlabel("gradient-descent step + 1")
        ax.set_ylabel("output on a test point")
        ax.set_title(f"width {width}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Test outputs during training: network vs its linearization (first seed)")
    ctx.save_figure(fig, "trajectories")
