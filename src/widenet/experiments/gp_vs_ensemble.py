"""gp-vs-ensemble: an ensemble of wide networks trained by gradient descent is the NTK-GP.

What it measures
----------------
A two-class task built from a data set (default: scikit-learn's digits, features standardized;
targets +1 for even digits and -1 for odd ones, or, with ``pair=[a, b]``, only the digits a
(+1) and b (-1)), ``n_train`` training and ``n_test`` test points. Then:

* **NNGP posterior** (``wn.dynamics.nngp_posterior``): exact Bayesian inference with the
  infinite-width NNGP kernel of the architecture as prior (observation noise
  ``noise_variance``): what an infinitely wide network gives when only its last layer is
  trained (Lee et al. 2018).
* **NTK-GP** (``wn.dynamics.gp_ensemble_mse``): the Gaussian distribution of the outputs, over
  random initialisations, of infinitely wide networks trained by gradient flow on the mean
  squared error for the same time as the ensemble below (continuous time ``lr * steps``): mean
  Θ(x*, X) Θ^{-1} (I − e^{−ηΘt/N}) y and the covariance of Lee et al. 2019, eq. 16, with
  Θ the NTK and the prior covariance of the outputs at initialisation the NNGP kernel.
* **Ensemble**: ``ensemble_size`` networks ``wn.mlp(...).network(d, width, seed)`` (NTK
  parameterization, independent seeds), each trained by full-batch gradient descent on
  ``0.5 * mean((f(x) - y)^2)`` for ``steps`` steps with learning rate
  ``lr = lr_scale * wn.dynamics.max_learning_rate(Θ)``; their test outputs give an empirical
  mean and variance per test point.

It reports the test accuracy (sign of the predictive mean against the ±1 label) of the three,
the relative error between the ensemble mean and the NTK-GP mean on the test points,
``||mean_ens − mean_ntk||_2 / ||mean_ntk||_2``, the same for the variances, and a calibration
check: the fraction of all ensemble-member test outputs inside the NTK-GP's mean ± 2 standard
deviations (0.954 if the members are draws from that Gaussian).

Theory
------
Lee et al. 2019 (Section 2.3.1 and Fig. 4): for wide networks in the NTK parameterization the
output of a network trained by gradient descent on the MSE is, over random initialisations, a
Gaussian process whose mean and covariance at every training time are given in closed form by
the NNGP and NTK kernels; the network's deviation from that limit is O(1/n) in the mean. The
ensemble estimates the mean with a sampling error of size sqrt(variance / ensemble_size) per
point, so ``mean_relative_error`` is expected near ``mean_sampling_error`` (the same norm of
sqrt(variance_ntk / ensemble_size), reported alongside), plus a finite-width term that vanishes
as 1/width. The NTK-GP mean is not the NNGP posterior mean (different kernels), but both
classify alike on such tasks (Lee et al. 2019, Table S1).

The NTK-GP follows gradient *flow* for the time ``lr * steps`` while the networks take discrete
steps; with ``lr = 0.5 * max_learning_rate`` gradient descent removes the top eigenmode of the
residual in one step where the flow takes a few, a difference that is gone once both have fit
it (the comparison is made at the end of training; ``mean_relative_error_curve`` shows it over
time). Quick size, seed 0 (64 networks of width 128, 64 + 64 points): accuracies NNGP 0.94,
NTK-GP 0.92, ensemble 0.92 (single members 0.79), mean_relative_error 0.12 for a sampling error
of 0.15, variance_relative_error 0.08, calibration 0.950 (0.954 expected). Full size, seed 0
(100 networks of width 512, 128 + 128 points; 4 min on a busy 2-core machine): NNGP 0.93,
NTK-GP 0.92, ensemble 0.92 (members 0.81), mean_relative_error 0.094 for a sampling error of
0.108, variance_relative_error 0.094, calibration 0.958.

Metrics (``metrics.json``)
--------------------------
nngp_accuracy, ntk_accuracy, ensemble_accuracy, mean_relative_error (the stable keys), and
member_accuracy, variance_relative_error, mean_sampling_error, calibration, ensemble_size,
width, n_train, n_test, steps, lr, train_loss, ntk_train_loss, times,
mean_relative_error_curve, seeds (see ``widenet list --verbose``).

References
----------
Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington (2019). Wide Neural Networks of
Any Depth Evolve as Linear Models Under Gradient Descent. NeurIPS. arXiv:1902.06720.
Lee, Bahri, Novak, Schoenholz, Pennington, Sohl-Dickstein (2018). Deep Neural Networks as
Gaussian Processes. ICLR. arXiv:1711.00165.
Jacot, Gabriel, Hongler (2018). Neural Tangent Kernel: Convergence and Generalization in Neural
Networks. NeurIPS. arXiv:1806.07572.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch

from widenet import lab
from widenet.data import DATASETS, load_dataset
from widenet.experiments._common import gradient_descent, parity_targets
from widenet.experiments._common import relative_error as _rel

METRICS = {
    "nngp_accuracy": "test accuracy of the sign of the NNGP posterior mean",
    "ntk_accuracy": "test accuracy of the sign of the NTK-GP mean at the end of training",
    "ensemble_accuracy": "test accuracy of the sign of the ensemble's mean output",
    "mean_relative_error": "||mean_ens - mean_ntk|| / ||mean_ntk|| on the test points at the "
    "end of training",
    "member_accuracy": "mean over ensemble members of each member's test accuracy",
    "variance_relative_error": "||var_ens - var_ntk|| / ||var_ntk|| on the test points (var_ens "
    "with the unbiased 1/(M-1) estimator)",
    "mean_sampling_error": "||sqrt(var_ntk / ensemble_size)|| / ||mean_ntk||: the part of "
    "mean_relative_error expected from the finite ensemble alone",
    "calibration": "fraction of all ensemble-member test outputs inside the NTK-GP mean +- 2 "
    "standard deviations (0.954 for draws from that Gaussian)",
    "ensemble_size": "number of trained networks",
    "width": "hidden width of the networks",
    "n_train": "number of training points",
    "n_test": "number of test points",
    "steps": "gradient-descent steps of every network",
    "lr": "the gradient-descent learning rate (the NTK-GP uses the same rate and time)",
    "train_loss": "mean over members of the final training loss 0.5*mean((f-y)^2)",
    "ntk_train_loss": "training loss of the NTK-GP mean at the end of training",
    "times": "training steps at which the curve below is measured",
    "mean_relative_error_curve": "mean_relative_error at each of times",
    "seeds": "initialisation seeds of the networks (drawn from the run's seed)",
}


class GPVsEnsembleConfig(lab.Config):
    """Full size by default (100 networks of width 512); ``QUICK``: 64 networks of width 128."""

    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    pair: list[int] | None = pydantic.Field(None, min_length=2, max_length=2)
    n_train: int = pydantic.Field(128, ge=2)
    n_test: int = pydantic.Field(128, ge=1)
    depth: int = pydantic.Field(3, ge=1)
    activation: str = "relu"
    w_std: float = pydantic.Field(2**0.5, gt=0)
    b_std: float = pydantic.Field(0.1, ge=0)
    width: int = pydantic.Field(512, ge=1)
    ensemble_size: int = pydantic.Field(100, ge=2)
    steps: int = pydantic.Field(200, ge=1)
    lr_scale: float = pydantic.Field(0.5, gt=0)
    noise_variance: float = pydantic.Field(0.0, ge=0)
    dtype: Literal["float32", "float64"] = "float32"

    # Quick: narrower networks but more of them than a 30 s budget allows at width 256, since
    # the ensemble's sampling error (~ 1/sqrt(ensemble_size)) dominates the comparison of the
    # means, while the finite-width error (~ 1/width) is already below it at width 128.
    QUICK: ClassVar[dict] = {
        "n_train": 64,
        "n_test": 64,
        "width": 128,
        "ensemble_size": 64,
        "steps": 120,
    }

    @pydantic.field_validator("pair")
    @classmethod
    def _distinct(cls, pair):
        if pair is not None and pair[0] == pair[1]:
            raise ValueError("pair must name two different classes")
        return pair


def _data(config: GPVsEnsembleConfig, seed: int, dtype):
    n = config.n_train + config.n_test
    if config.pair is None:
        x, labels = load_dataset(config.dataset, n=n, seed=seed, dtype=dtype)
        return x, parity_targets(labels)
    x, labels = load_dataset(config.dataset, seed=seed, dtype=dtype)
    a, b = config.pair
    keep = torch.nonzero((labels == a) | (labels == b)).reshape(-1)
    if len(keep) < n:
        raise ValueError(f"classes {a} and {b} have only {len(keep)} points; need {n}")
    gen = torch.Generator().manual_seed(seed)
    keep = keep[torch.randperm(len(keep), generator=gen)[:n]]
    return x[keep], torch.where(labels[keep] == a, 1.0, -1.0).to(torch.float64)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.sign(pred.reshape(-1)) == y.reshape(-1)).double().mean())


@lab.register(
    "gp-vs-ensemble",
    summary="NNGP posterior and NTK-GP vs an ensemble of trained wide networks: mean, variance, "
    "calibration and test accuracy (Lee et al. 2019, Sec. 2.3).",
    config=GPVsEnsembleConfig,
    metrics=METRICS,
    key="mean_relative_error",
)
def run(config: GPVsEnsembleConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn

    dtype = getattr(torch, config.dtype)
    device = ctx.device
    x_all, y_all = _data(config, int(ctx.rng.integers(2**31)), dtype)
    x_all = x_all.to(device)
    n = config.n_train
    x, x_test = x_all[:n], x_all[n:]
    y64, y_test = y_all[:n, None], y_all[n:, None]  # float64 on the CPU, for the kernels
    y = y64.to(device=device, dtype=dtype)

    # Closed-form kernels in float64 on the CPU: the solves of the GP formulas need them.
    arch = wn.mlp(
        depth=config.depth, activation=config.activation, w_std=config.w_std, b_std=config.b_std
    )
    xd, xtd = x.double().cpu(), x_test.double().cpu()
    k_tt = arch.kernel(xd)
    k_st = arch.kernel(xtd, xd)
    nngp_ss = arch.kernel(xtd, get="nngp").nngp
    lr = config.lr_scale * float(wn.dynamics.max_learning_rate(k_tt.ntk, loss="mean"))

    nngp = wn.dynamics.nngp_posterior(
        k_tt.nngp, k_st.nngp, nngp_ss, y64, noise_variance=config.noise_variance
    )
    nngp_mean = nngp.mean.reshape(-1)
    times = sorted({int(s) for s in np.round(np.geomspace(1, config.steps, 12))})
    t = torch.tensor(times, dtype=torch.float64)
    gp = wn.dynamics.gp_ensemble_mse(
        k_tt.nngp, k_tt.ntk, k_st.nngp, k_st.ntk, nngp_ss, y64, t, learning_rate=lr, loss="mean"
    )
    gp_means = gp.mean.reshape(len(times), -1)  # (T, m)
    gp_vars = torch.diagonal(gp.covariance, dim1=-2, dim2=-1).clamp_min(0)  # (T, m)
    # Training loss of the NTK-GP mean: the same flow evaluated on the training points.
    gp_train = wn.dynamics.gp_ensemble_mse(
        k_tt.nngp,
        k_tt.ntk,
        k_tt.nngp,
        k_tt.ntk,
        k_tt.nngp,
        y64,
        t[-1:],
        learning_rate=lr,
        loss="mean",
    )
    ntk_train_loss = float(0.5 * ((gp_train.mean.reshape(-1, 1) - y64) ** 2).mean())

    seeds = [int(s) for s in ctx.rng.integers(0, 2**31, size=config.ensemble_size)]
    outputs = np.zeros((len(seeds), len(times), len(x_test)))
    losses = np.zeros(len(seeds))
    time_index = {s: k for k, s in enumerate(times)}
    for j in ctx.progress(range(len(seeds)), description="gp-vs-ensemble"):
        net = arch.network(x.shape[1], config.width, seeds[j], dtype=dtype, device=device)

        def snap(step, net=net, j=j):
            if step in time_index:
                with torch.no_grad():
                    outputs[j, time_index[step]] = net(x_test).reshape(-1).double().cpu().numpy()

        losses[j] = gradient_descent(net, x, y, lr, config.steps, on_step=snap)

    ens = torch.from_numpy(outputs)  # (M, T, m)
    ens_mean, ens_var = ens.mean(0), ens.var(0, unbiased=True)
    curve = [_rel(ens_mean[k], gp_means[k]) for k in range(len(times))]
    mean_ens, var_ens = ens_mean[-1], ens_var[-1]
    mean_ntk, var_ntk = gp_means[-1], gp_vars[-1]
    std_ntk = var_ntk.sqrt()
    final = ens[:, -1, :]
    inside = ((final - mean_ntk).abs() <= 2 * std_ntk).double().mean()
    yt = y_test.reshape(-1)
    member_acc = float(np.mean([_accuracy(final[j], yt) for j in range(len(seeds))]))
    sampling = float(torch.linalg.norm((var_ntk / len(seeds)).sqrt()) / torch.linalg.norm(mean_ntk))

    _plot_predictions(ctx, mean_ntk, std_ntk, mean_ens, var_ens.sqrt(), nngp_mean, yt)
    _plot_calibration(ctx, final, mean_ntk, std_ntk, times, curve, gp_means, gp_vars, ens)
    return {
        "nngp_accuracy": _accuracy(nngp_mean, yt),
        "ntk_accuracy": _accuracy(mean_ntk, yt),
        "ensemble_accuracy": _accuracy(mean_ens, yt),
        "mean_relative_error": _rel(mean_ens, mean_ntk),
        "member_accuracy": member_acc,
        "variance_relative_error": _rel(var_ens, var_ntk),
        "mean_sampling_error": sampling,
        "calibration": float(inside),
        "ensemble_size": len(seeds),
        "width": config.width,
        "n_train": n,
        "n_test": len(x_test),
        "steps": config.steps,
        "lr": lr,
        "train_loss": float(losses.mean()),
        "ntk_train_loss": ntk_train_loss,
        "times": times,
        "mean_relative_error_curve": curve,
        "seeds": seeds,
    }


def _plot_predictions(ctx, mean_ntk, std_ntk, mean_ens, std_ens, nngp_mean, y):
    order = np.argsort(mean_ntk.numpy(), kind="stable")
    idx = np.arange(len(order))
    fig = ctx.figure(figsize=(12, 4))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    mu, sd = mean_ntk.numpy()[order], std_ntk.numpy()[order]
    ax1.fill_between(idx, mu - 2 * sd, mu + 2 * sd, color="tab:orange", alpha=0.25)
    ax1.plot(idx, mu, "-", color="tab:orange", lw=2, label="NTK-GP mean ± 2σ")
    ax1.errorbar(
        idx,
        mean_ens.numpy()[order],
        yerr=2 * std_ens.numpy()[order],
        fmt="o",
        ms=3,
        color="tab:blue",
        elinewidth=0.8,
        alpha=0.8,
        label="ensemble mean ± 2σ",
    )
    ax1.plot(idx, nngp_mean.numpy()[order], "x", color="tab:green", ms=4, label="NNGP posterior")
    ax1.plot(idx, y.numpy()[order], "k.", ms=3, label="label (±1)")
    ax1.set_xlabel("test point (sorted by the NTK-GP mean)")
    ax1.set_ylabel("output")
    ax1.set_title("Test predictions at the end of training", fontsize=10)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, ncol=2)
    lo = float(min(std_ntk.min(), std_ens.min())) ** 2
    hi = float(max(std_ntk.max(), std_ens.max())) ** 2
    ax2.plot(std_ntk.numpy() ** 2, std_ens.numpy() ** 2, "o", ms=3, color="tab:blue")
    ax2.plot([lo, hi], [lo, hi], "--", color="0.4", label="y = x")
    ax2.set_xlabel("NTK-GP variance")
    ax2.set_ylabel("ensemble variance")
    ax2.set_title("Predictive variance per test point", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    ctx.save_figure(fig, "predictions")


def _plot_calibration(ctx, final, mean_ntk, std_ntk, times, curve, gp_means, gp_vars, ens):
    fig = ctx.figure(figsize=(12, 4))
    ax1, ax2 = fig.subplots(1, 2)
    z = ((final - mean_ntk) / std_ntk.clamp_min(1e-12)).reshape(-1).numpy()
    grid = np.linspace(-4, 4, 200)
    ax1.hist(z, bins=40, range=(-4, 4), density=True, color="tab:blue", alpha=0.6)
    ax1.plot(grid, np.exp(-(grid**2) / 2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
    ax1.set_xlabel("(member output − NTK-GP mean) / NTK-GP std")
    ax1.set_ylabel("density")
    ax1.set_title("Ensemble members standardized by the NTK-GP", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(True, alpha=0.3)
    steps = np.asarray(times, dtype=float)
    ax2.plot(steps, curve, "o-", label="mean: relative error")
    sampling = [
        float(
            torch.linalg.norm((gp_vars[k] / ens.shape[0]).sqrt()) / torch.linalg.norm(gp_means[k])
        )
        for k in range(len(times))
    ]
    ax2.plot(steps, sampling, "--", color="0.4", label="sampling error")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("gradient-descent step")
    ax2.set_ylabel(r"$\|\mu_{ens} - \mu_{NTK}\| / \|\mu_{NTK}\|$")
    ax2.set_title("Ensemble mean vs NTK-GP mean during training", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    ctx.save_figure(fig, "calibration")
