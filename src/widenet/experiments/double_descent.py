"""double-descent: test error against model size through the interpolation threshold.

What it measures
----------------
1. **Random-features regression on digits** (Belkin et al. 2019, Fig. 2, on MNIST there):
   ``n_train`` training points of scikit-learn's digits (standardized), one-hot targets, the
   rest (``n_test``) for testing. For ``n_points`` values of N, geometrically spaced from
   ``ratio_min``·n to ``ratio_max``·n and including N = n, draw N random features
   (``features="fourier"``: N/2 cos/sin pairs for the Gaussian kernel of ``bandwidth``;
   ``"relu"``: random ReLU features; see :mod:`widenet.random_features`) and fit the
   minimum-norm least-squares solution β = Φ⁺Y (the min-norm interpolant once N ≥ n). Reported
   against N (log-x): train and test zero-one error (argmax), squared loss (mean over the n·10
   entries) and the coefficient norm ‖β‖_F. The N → ∞ limit is ridgeless regression with the
   Gaussian kernel itself (``kernel_error``; ``wn.dynamics.gradient_flow_mse`` at t = ∞), shown
   for Fourier features.
2. **A noisy synthetic task**: ``synthetic_n_train`` points x ~ N(0, I_d), d =
   ``synthetic_dim``, labels sign(w·x/√d + 0.5 sin(3 x_1)) with a fraction ``synthetic_noise``
   flipped (the test labels are clean), ±1 targets, random ReLU features, same sweep.
3. **Trained two-layer networks** (Belkin et al. 2019, Fig. 3; Nakkiran et al. 2020): ReLU
   networks d → m → 10 (``wn.mlp(1, ..., parameterization="standard")``) trained by full-batch
   Adam on 0.5·mean((f − Y)²) for ``width_steps`` steps on ``width_n_train`` digits, for
   ``width_points`` widths m around the threshold p(m) = m(d + 1) + (m + 1)·10 ≈ n·10 (the number
   of parameters equals the number of fitted values), with and without label noise (a fraction of
   the training labels replaced by a random other class).

Theory
------
Below the threshold N < n least squares cannot fit the data and the test error follows the
classical U-shaped bias–variance curve. At N = n the feature matrix Φ is square and nearly
singular: fitting every label (noise included) forces a huge ‖β‖ and the test error peaks.
Beyond it the min-norm interpolant's norm *decreases* with N (more features spread the fit) and
the test error descends again, towards that of the kernel's min-norm interpolant, often below the
U-bottom: Belkin et al. read zero-one errors on MNIST (n = 10⁴) of ≈ 5 % at the U-bottom, ≈ 88 %
at the peak, ≈ 2.5 % at N = 6·10⁴ and ≈ 2.2 % for the kernel limit. The count convention makes
the threshold N = n: N is the number of real features (coefficients per output).

Measured (seed 0, ``widenet run double-descent [--quick]``). Quick (n = 200 digits, 400 test,
N = 10 … 4000, 25 values; ~14 s of CPU): the peak at N = n = 200 with test error 0.82 (MSE 16,
‖β‖ 960, against MSE ≤ 0.17 and ‖β‖ ≤ 70 at every other N); U-bottom 0.168 at N = 94; 0.022
at N = 4000; kernel limit 0.025. Synthetic (n = 100, 10 % flipped): MSE peak at N = 100 (654,
against ≥ 0.6 elsewhere; with noisy labels the second descent does not go below the U-bottom).
Widths (100 digits, threshold p = 1000, widths 2 … 158): test MSE peaks at p = 760 (clean,
1.8) and p = 985 (20 % noise, 10.8), then falls to 0.19 / 0.21; test error 0.11 clean vs 0.31
noisy at the widest. Full size (n = 1000 digits, 797 test, N = 50 … 20000): peak 0.80 at
N = n = 1000 (MSE 35, ‖β‖ 3900); U-bottom 0.044 at N = 472; 0.026 at N = 20000; kernel limit
0.018 (Belkin et al. on MNIST: 5 %, 88 %, 2.5 %, 2.2 %); synthetic (n = 400) peak at N = 400.
Full width sweep (400 digits, threshold p = n·k = 4000, widths 7 … 638): training reaches
interpolation well below n·k for clean labels (the digits classes are nearly linearly
separable, so a few hidden units fit the one-hot targets), and the test MSE peaks where it first
does (p = 835 clean, 1360 with 20 % noise: MSE 51 and 84), then falls to 0.08 / 0.13; test error
0.03 clean vs 0.21 noisy at the widest. On such data the peak of trained networks sits at the
*empirical* interpolation point (``width_interpolation_n_params``), not at p = n·k.

Metrics (``metrics.json``): the keys of METRICS (``widenet list --verbose``).

References
----------
Belkin, Hsu, Ma, Mandal (2019). Reconciling modern machine-learning practice and the classical
bias–variance trade-off. PNAS 116(32). arXiv:1812.11118.
Rahimi, Recht (2007). Random features for large-scale kernel machines. NeurIPS.
Nakkiran, Kaplun, Bansal, Yang, Barak, Sutskever (2020). Deep double descent. ICLR.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch

from widenet import lab
from widenet.data import SKLEARN_DATASETS, load_dataset
from widenet.experiments._common import mse
from widenet.random_features import feature_counts, sweep, zero_one_loss
from widenet.report import PaperComparison

METRICS = {
    "n_train": "number of training points of the random-features sweep",
    "n_features": "the numbers of random features N of the sweep",
    "test_error": "test zero-one error (argmax of the 10 outputs) per N",
    "test_mse": "test squared loss (mean over every output entry) per N",
    "coef_norm": "Frobenius norm of the min-norm coefficients per N",
    "threshold": "the interpolation threshold N = n_train (N counts real features)",
    "train_error": "training zero-one error per N",
    "train_mse": "training squared loss per N (0 from N = n on)",
    "peak_n_features": "N of the largest test squared loss",
    "peak_error": "test zero-one error at the threshold N = n",
    "u_bottom_n_features": "N < n with the smallest test zero-one error (classical U-bottom)",
    "u_bottom_error": "the smallest test zero-one error over N < n",
    "largest_n_error": "test zero-one error at the largest N",
    "kernel_error": "test zero-one error of ridgeless Gaussian-kernel regression (N -> inf; "
    "Fourier features only, else null)",
    "kernel_mse": "test squared loss of that kernel regression",
    "n_test": "number of test points",
    "synthetic_n_train": "training points of the noisy synthetic task",
    "synthetic_n_features": "N of the synthetic sweep (random ReLU features)",
    "synthetic_test_error": "synthetic test zero-one error per N (clean test labels)",
    "synthetic_test_mse": "synthetic test squared loss per N",
    "synthetic_coef_norm": "synthetic coefficient norm per N",
    "synthetic_peak_n_features": "N of the largest synthetic test squared loss",
    "width_n_train": "training points of the trained-network width sweep",
    "widths": "hidden widths m of the trained two-layer networks",
    "width_n_params": "parameters p(m) = m(d+1) + (m+1)k of each network",
    "width_threshold": "n_train * k, the parameter count of the interpolation threshold",
    "width_label_noise": "label-noise fractions of the width sweep",
    "width_test_error": "test zero-one error per label-noise level (outer) and width (inner)",
    "width_test_mse": "test squared loss, same layout",
    "width_train_loss": "final training loss 0.5*mean((f-Y)^2), same layout",
    "width_interpolation_n_params": "per label-noise level: the smallest p whose training loss "
    "is below 1e-3 (where training reaches interpolation; null if none)",
}


class DoubleDescentConfig(lab.Config):
    """Full size by default (n = 1000 digits, N up to 20000); ``QUICK``: n = 200."""

    dataset: Literal[SKLEARN_DATASETS] = "digits"  # type: ignore[valid-type]
    n_train: int = pydantic.Field(1000, ge=2)
    n_test: int = pydantic.Field(797, ge=1)
    features: Literal["fourier", "relu"] = "fourier"
    bandwidth: float = pydantic.Field(10.0, gt=0)
    w_std: float = pydantic.Field(1.0, gt=0)
    b_std: float = pydantic.Field(0.0, ge=0)
    ratio_min: float = pydantic.Field(0.05, gt=0, lt=1)
    ratio_max: float = pydantic.Field(20.0, gt=1)
    n_points: int = pydantic.Field(25, ge=3)
    synthetic_n_train: int = pydantic.Field(400, ge=2)
    synthetic_n_test: int = pydantic.Field(2000, ge=1)
    synthetic_dim: int = pydantic.Field(5, ge=1)
    synthetic_noise: float = pydantic.Field(0.1, ge=0, lt=0.5)
    width_n_train: int = pydantic.Field(400, ge=2)
    width_points: int = pydantic.Field(10, ge=2)
    width_label_noise: list[float] = [0.0, 0.2]
    width_steps: int = pydantic.Field(3000, ge=1)
    width_lr: float = pydantic.Field(0.01, gt=0)

    QUICK: ClassVar[dict] = {
        "n_train": 200,
        "n_test": 400,
        "synthetic_n_train": 100,
        "synthetic_n_test": 1000,
        "width_n_train": 100,
        "width_points": 6,
        "width_steps": 600,
    }

    @pydantic.field_validator("width_label_noise")
    @classmethod
    def _noise(cls, values):
        if not values or any(not 0 <= v < 1 for v in values):
            raise ValueError("width_label_noise must be a non-empty list of fractions in [0, 1)")
        return values


def _split(config, seed: int):
    x, labels = load_dataset(config.dataset, seed=seed, dtype=torch.float64)
    n, m = config.n_train, config.n_test
    if n + m > len(x):
        raise ValueError(
            f"n_train + n_test = {n + m} exceeds the {len(x)} points of {config.dataset}"
        )
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(x))[: n + m])
    return x[perm[:n]], labels[perm[:n]], x[perm[n:]], labels[perm[n:]]


def _one_hot(labels, k):
    return torch.nn.functional.one_hot(labels, k).to(torch.float64)


def _synthetic(n, n_test, dim, noise, rng):
    x = rng.standard_normal((n + n_test, dim))
    w = rng.standard_normal(dim)
    y = np.sign(x @ w / math.sqrt(dim) + 0.5 * np.sin(3 * x[:, 0]))
    y[y == 0] = 1.0
    flip = rng.random(n) < noise
    y[:n][flip] *= -1
    x, y = torch.as_tensor(x), torch.as_tensor(y)[:, None]
    return x[:n], y[:n], x[n:], y[n:]


def _noisy_labels(labels, k, fraction, rng):
    """A copy of ``labels`` with a fraction replaced by a uniformly random *other* class."""
    out = labels.clone()
    flip = np.flatnonzero(rng.random(len(labels)) < fraction)
    shift = torch.as_tensor(rng.integers(1, k, len(flip)))
    out[flip] = (out[flip] + shift) % k
    return out


def train_two_layer(x, y, width: int, *, steps: int, lr: float, seed: int):
    """A d → width → k ReLU network trained by full-batch Adam on 0.5·mean((f − y)²).

    The readout starts at zero (the hidden layer as ``wn.mlp(..., "standard")`` draws it): with
    a random readout, the part of the initial function that the data do not constrain survives
    training and dominates the test error of the interpolating networks (measured on 100 digits:
    test error 0.39 instead of 0.16 at width 640), hiding the threshold.
    """
    import widenet as wn

    arch = wn.mlp(
        1, "relu", w_std=2**0.5, b_std=0.1, out_dim=y.shape[1], parameterization="standard"
    )
    net = arch.network(x.shape[1], width, seed=seed, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        net[-1].weight.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        mse(net, x, y).backward()
        opt.step()
    with torch.no_grad():
        loss = float(mse(net, x, y))
    if not math.isfinite(loss):
        raise FloatingPointError(f"Adam diverged at width {width} (lr={lr:g}); lower width_lr")
    return net, loss


def _width_sweep(config, ctx, seed):
    x, labels, xt, lt = _split(config.model_copy(update={"n_train": config.width_n_train}), seed)
    x, xt = x.float().to(ctx.device), xt.float().to(ctx.device)
    k = int(max(labels.max(), lt.max())) + 1
    d, n = x.shape[1], x.shape[0]
    threshold = n * k
    m_star = (threshold - k) / (d + 1 + k)  # p(m*) = n k
    grid = np.geomspace(m_star / 8, m_star * 12, config.width_points)
    widths = sorted({max(1, round(v)) for v in grid} | {max(1, round(m_star))})
    y_test = _one_hot(lt, k).float().to(ctx.device)
    errors, mses, losses = [], [], []
    jobs = [(f, m) for f in config.width_label_noise for m in widths]
    rngs = {f: np.random.default_rng(seed + i) for i, f in enumerate(config.width_label_noise)}
    noisy = {
        f: _one_hot(_noisy_labels(labels, k, f, rngs[f]), k).float().to(ctx.device)
        for f in config.width_label_noise
    }
    for f, m in ctx.progress(jobs, description="trained two-layer networks"):
        net, loss = train_two_layer(
            x, noisy[f], m, steps=config.width_steps, lr=config.width_lr, seed=seed + m
        )
        with torch.no_grad():
            pred = net(xt)
        if m == widths[0]:
            errors.append([]), mses.append([]), losses.append([])
        errors[-1].append(zero_one_loss(pred, y_test))
        mses[-1].append(float((pred - y_test).square().mean()))
        losses[-1].append(loss)
    n_params = [m * (d + 1) + (m + 1) * k for m in widths]
    return {
        "width_n_train": n,
        "widths": widths,
        "width_n_params": n_params,
        "width_threshold": threshold,
        "width_label_noise": list(config.width_label_noise),
        "width_test_error": errors,
        "width_test_mse": mses,
        "width_train_loss": losses,
        "width_interpolation_n_params": [
            next((pp for pp, loss in zip(n_params, row, strict=True) if loss < 1e-3), None)
            for row in losses
        ],
    }


def _kernel_limit(x, y, xt, yt, bandwidth):
    from widenet.dynamics import gradient_flow_mse
    from widenet.random_features import gaussian_kernel

    pred = gradient_flow_mse(
        gaussian_kernel(x, bandwidth=bandwidth),
        y,
        math.inf,
        ntk_test_train=gaussian_kernel(xt, x, bandwidth=bandwidth),
    ).test[0]
    return zero_one_loss(pred, yt), float((pred - yt).square().mean())


def paper_comparison(config: dict, metrics: dict) -> PaperComparison:
    """Belkin et al. (2019)'s MNIST readings beside this run's digits sweep (report table)."""
    rows = [
        (
            "test error at the U-bottom (N < n)",
            "≈ 5 %",
            f"{100 * metrics['u_bottom_error']:.1f} % (N = {metrics['u_bottom_n_features']})",
        ),
        (
            "test error at the peak",
            "≈ 88 % (N = n)",
            f"{100 * metrics['peak_error']:.1f} % (N = {metrics['peak_n_features']})",
        ),
        (
            "test error at the largest N",
            "≈ 2.5 % (N = 6·10⁴)",
            f"{100 * metrics['largest_n_error']:.1f} % (N = {metrics['n_features'][-1]})",
        ),
        ("kernel limit (N → ∞)", "≈ 2.2 %", f"{100 * metrics['kernel_error']:.1f} %"),
    ]
    at_threshold = metrics["peak_n_features"] == metrics["threshold"]
    second = metrics["largest_n_error"] < metrics["u_bottom_error"]
    verdict = (
        ("Reproduced" if at_threshold and second else "Not reproduced")
        + f": the test error peaks at N = {metrics['peak_n_features']} "
        + ("= n" if at_threshold else f"(n = {metrics['threshold']})")
        + " and the largest N "
        + ("beats" if second else "does not beat")
        + " the U-bottom, as in the paper's Fig. 2."
    )
    return PaperComparison(
        reference="Belkin et al. (2019), Fig. 2 (MNIST)",
        paper_conditions="MNIST, n = 10⁴, random Fourier features N up to 6·10⁴",
        run_conditions=f"{config['dataset']}, n = {metrics['n_train']}, "
        f"{config['features']} features N = {metrics['n_features'][0]} … "
        f"{metrics['n_features'][-1]}",
        rows=rows,
        verdict=verdict,
        same_size=False,  # MNIST is not bundled: digits (1797 points) stands in for it
    )


@lab.register(
    "double-descent",
    summary="Test error vs number of random features (and width of trained two-layer nets) "
    "through the interpolation threshold N = n (Belkin et al. 2019, Figs. 2-3).",
    config=DoubleDescentConfig,
    metrics=METRICS,
    paper=paper_comparison,
)
def run(config: DoubleDescentConfig, ctx: lab.RunContext) -> dict:
    seed = int(ctx.rng.integers(2**31))
    x, labels, xt, lt = _split(config, seed)
    k = int(max(labels.max(), lt.max())) + 1
    y, yt = _one_hot(labels, k), _one_hot(lt, k)
    n = config.n_train
    fourier = config.features == "fourier"
    opts = dict(bandwidth=config.bandwidth, w_std=config.w_std, b_std=config.b_std)
    counts = feature_counts(n, config.ratio_min, config.ratio_max, config.n_points, fourier)

    def progress(what):
        return lambda items: ctx.progress(items, description=what)

    res = sweep(
        x.to(ctx.device),
        y,
        xt,
        yt,
        counts,
        kind=config.features,
        seed=seed,
        progress=progress(f"{config.features} features on {config.dataset}"),
        **opts,
    )
    kernel_error = kernel_mse = None
    if fourier:
        kernel_error, kernel_mse = _kernel_limit(x, y, xt, yt, config.bandwidth)

    test_error = np.asarray(res.test_error)
    below = [i for i, c in enumerate(counts) if c < n]
    bottom = below[int(np.argmin(test_error[below]))]
    at_n = counts.index(n + (n % 2 if fourier else 0))
    metrics = {
        "n_train": n,
        "n_features": res.n_features,
        "test_error": res.test_error,
        "test_mse": res.test_mse,
        "coef_norm": res.coef_norm,
        "threshold": res.threshold,
        "train_error": res.train_error,
        "train_mse": res.train_mse,
        "peak_n_features": counts[int(np.argmax(res.test_mse))],
        "peak_error": res.test_error[at_n],
        "u_bottom_n_features": counts[bottom],
        "u_bottom_error": res.test_error[bottom],
        "largest_n_error": res.test_error[-1],
        "kernel_error": kernel_error,
        "kernel_mse": kernel_mse,
        "n_test": len(xt),
    }

    srng = np.random.default_rng(seed + 1)
    sx, sy, sxt, syt = _synthetic(
        config.synthetic_n_train,
        config.synthetic_n_test,
        config.synthetic_dim,
        config.synthetic_noise,
        srng,
    )
    scounts = feature_counts(
        config.synthetic_n_train, config.ratio_min, config.ratio_max, config.n_points, False
    )
    syn = sweep(
        sx,
        sy,
        sxt,
        syt,
        scounts,
        kind="relu",
        seed=seed + 10**6,
        w_std=1.0,
        b_std=1.0,
        progress=progress("synthetic task, ReLU features"),
    )
    metrics.update(
        synthetic_n_train=config.synthetic_n_train,
        synthetic_n_features=syn.n_features,
        synthetic_test_error=syn.test_error,
        synthetic_test_mse=syn.test_mse,
        synthetic_coef_norm=syn.coef_norm,
        synthetic_peak_n_features=scounts[int(np.argmax(syn.test_mse))],
    )
    metrics.update(_width_sweep(config, ctx, seed))
    ctx.log(
        f"{config.dataset}: peak {metrics['peak_error']:.3f} at N = n = {n}; U-bottom "
        f"{metrics['u_bottom_error']:.3f} (N = {metrics['u_bottom_n_features']}); largest N "
        f"{metrics['largest_n_error']:.3f}; kernel limit {kernel_error}"
    )
    _plot_sweep(
        ctx,
        res,
        kernel_error,
        kernel_mse,
        f"Random {config.features} features on {config.dataset} (n = {n})",
        "random_features",
    )
    _plot_sweep(
        ctx,
        syn,
        None,
        None,
        f"Random ReLU features, noisy synthetic task "
        f"(n = {config.synthetic_n_train}, {config.synthetic_noise:.0%} flipped)",
        "synthetic",
    )
    _plot_widths(ctx, metrics)
    return metrics


def _plot_sweep(ctx, res, kernel_error, kernel_mse, title, name):
    fig = ctx.figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    counts = np.asarray(res.n_features)
    panels = [
        ("zero-one error", res.train_error, res.test_error, kernel_error, "linear"),
        ("squared loss", res.train_mse, res.test_mse, kernel_mse, "log"),
        ("‖β‖ (min-norm coefficients)", None, res.coef_norm, None, "log"),
    ]
    for ax, (label, train, test, limit, yscale) in zip(axes, panels, strict=True):
        # ‖β‖ is a property of the fit, not of a data split: its legend names it.
        what = "test" if train is not None else "‖β‖_F of the fit to the training set"
        ax.plot(counts, test, "o-", ms=3, label=what)
        if train is not None:
            ax.plot(
                counts,
                np.maximum(train, 1e-16) if yscale == "log" else train,
                "s--",
                ms=3,
                alpha=0.7,
                label="train",
            )
        if limit is not None:
            ax.axhline(limit, color="tab:green", ls=":", label="kernel limit (N → ∞)")
        ax.axvline(res.threshold, color="0.4", ls="--", lw=1, label="N = n")
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        if train is not None and yscale == "log":  # train MSE ~ 1e-30 past N = n: off the axis
            ax.set_ylim(bottom=0.3 * min(test))
            ax.set_title("(train squared loss → 0 for N ≥ n)", fontsize=8)
        ax.set_xlabel("number of random features N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    ctx.save_figure(fig, name)


def _plot_widths(ctx, m):
    fig = ctx.figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    p = np.asarray(m["width_n_params"])
    for i, f in enumerate(m["width_label_noise"]):
        ax1.plot(p, m["width_test_error"][i], "o-", ms=3, label=f"label noise {f:.0%}")
        ax2.plot(p, m["width_test_mse"][i], "o-", ms=3, label=f"label noise {f:.0%}")
    for ax, label in ((ax1, "test zero-one error"), (ax2, "test squared loss")):
        ax.axvline(m["width_threshold"], color="0.4", ls="--", lw=1, label="p = n·k")
        ax.set_xscale("log")
        ax.set_xlabel("parameters p of the two-layer network")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax2.set_yscale("log")
    fig.suptitle(
        f"Trained two-layer ReLU networks on {m['width_n_train']} digits (Adam)", fontsize=10
    )
    ctx.save_figure(fig, "widths")
