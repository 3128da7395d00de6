"""init-stability: which initializations keep deep networks' gradients alive, and trainable.

What it measures
----------------
For every depth L in ``depths`` (hidden layers of width ``width``), activation in {sigmoid,
tanh, relu} and scheme in {naive, xavier, kaiming, critical} one network
``Linear(64, n) -> phi -> ... -> Linear(n, 10)`` (plain torch modules, standard
parameterization) is initialized by ``wn.init``:

* naive: W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (Glorot & Bengio's "commonly used heuristic"),
* xavier: Glorot & Bengio's normalized uniform init, Var = 2 / (fan_in + fan_out),
* kaiming: He et al.'s N(0, gain^2 / fan_in) with torch's gain (sigmoid 1, tanh 5/3, relu sqrt 2),
* critical: N(0, sigma_w^2 / fan_in), biases N(0, sigma_b^2), on the edge of chaos chi = 1
  (``wn.init.critical_point``; with sigma_b^2 = ``critical_b_var`` = 0: relu (2, 0), tanh (1, 0),
  sigmoid (103.0, 0) at q* = 45.6).

Then, on ``n_train`` standardized digits:

1. ``wn.signal_propagation`` (float64 copy of the network, Gaussian output cotangent): the norm of
   the back-propagated gradient dL/dh at the first layer relative to the last (the output),
   ``grad_ratio`` (Glorot & Bengio 2010, Fig. 7), with its mean-field prediction
   prod(chi_l)^(1/2) from the activation's duals (``grad_ratio_theory``), the same ratio for the
   weight gradients dL/dW (``weight_grad_ratio``), the forward variance ratio and the verdict.
2. Trainability: full-batch heavy-ball gradient descent (momentum ``momentum``) on the mean
   cross-entropy for ``steps`` steps from the same initial weights at each of
   ``learning_rates``; ``loss`` is the best final training loss (None if every rate diverged),
   so that a scheme is judged at its best step size, against ``baseline_loss``, the loss of the
   best constant predictor (the label entropy, ~2.30).

Theory
------
Mean-field signal propagation (Poole et al. 2016; Schoenholz et al. 2017): the squared norm of
the back-propagated gradient is multiplied by chi_l = sigma_w^2 E[phi'(h_l)^2] per layer, so it
vanishes exponentially in depth when chi < 1 and explodes when chi > 1. With U[-1/sqrt(n), .],
sigma_w^2 = 1/3: chi = 1/3 for tanh at small q, about 0.02 for sigmoid (phi' <= 1/4), 1/6 for
relu; Xavier gives sigma_w^2 = 1 between equal widths (critical for tanh, chi = 1/2 for relu,
~1/16 for sigmoid); Kaiming's sqrt 2 is exactly critical for relu (He et al. 2015) and tanh's 5/3
is slightly chaotic. The weight gradients of a relu network all scale alike when the weights are
rescaled (positive homogeneity), so their first/last ratio stays O(1) whatever the scheme: the
back-propagated ratio is the one that shows the findings.

Measured (seed 0). Quick size (depths 2, 8, 32; width 64; 128 points; 40 steps; learning
rates 0.05, 0.01):
grad_ratio at depths 2 / 8 / 32 (theory within 0.29 in log10 everywhere):

    sigmoid  naive 2e-2 / 2e-7 / 5e-28   xavier 7e-2 / 1e-5 / 8e-21   critical 0.82 / 0.65 / 1.15
    tanh     naive 0.28 / 1e-2 / 1.5e-8  xavier 0.80 / 0.47 / 0.21    kaiming 0.96 / 1.8 / 17
    relu     naive 0.17 / 8e-4 / 4e-13   xavier 0.69 / 8e-2 / 2e-5    kaiming 0.99 / 1.32 / 0.52

(relu critical = relu kaiming; tanh critical 0.55 / 0.28 / 0.17). loss / baseline_loss (2.27)
at depth 8: relu kaiming 2e-5, tanh xavier 0.004, relu naive 1.00, sigmoid naive 1.00, relu
xavier 0.93; at depth 32 only tanh xavier / kaiming (0.014 / 0.08), tanh critical (0.30) and
relu kaiming (0.65) have left the constant predictor in 40 steps.
Full size (depths 2...64, width 128, 256 points, 100 steps, 3 learning rates):
grad_ratio at depths 2 / 4 / 8 / 16 / 32 / 64 (theory within 0.61 in log10 everywhere; the largest
gap is sigmoid critical at depth 64, 0.21 measured vs 0.86):

    sigmoid naive    2e-2 / 4e-4 / 2e-7 / 2e-14 / 5e-28 / 3e-55
    sigmoid critical 0.83 / 0.92 / 1.0 / 0.65 / 0.46 / 0.21
    tanh naive       0.27 / 9e-2 / 1e-2 / 1e-4 / 1.5e-8 / 3e-16
    tanh xavier      0.88 / 0.74 / 0.55 / 0.36 / 0.21 / 0.16
    tanh kaiming     1.1 / 1.2 / 1.8 / 3.8 / 15 / 380      (chaotic: chi = 1.21 at q*)
    relu naive       0.16 / 3e-2 / 7e-4 / 6e-7 / 2e-13 / 1e-25
    relu xavier      0.67 / 0.32 / 8e-2 / 5e-3 / 1e-5 / 3e-10
    relu kaiming     1.1 / 1.1 / 0.90 / 0.95 / 0.91 / 1.1

loss / baseline_loss (2.27), same depths: relu kaiming 6e-4 / 1e-4 / 2e-5 / 0.003 / 0.49 /
0.93; relu xavier 9e-4 / 1e-4 / 0.04 / 0.71 / 1.0 / 1.0; relu naive stuck (1.00) from depth 8;
sigmoid naive/xavier/kaiming stuck from depth 4, sigmoid critical trains to depth 16 (0.13);
tanh xavier/kaiming/critical train to depth 32 (<= 0.0006) and tanh critical at depth 64
(0.014). 6 min of CPU (27 min on a machine shared by six jobs).

References
----------
Glorot & Bengio (2010). Understanding the difficulty of training deep feedforward neural
networks. AISTATS.
He, Zhang, Ren & Sun (2015). Delving Deep into Rectifiers. ICCV. arXiv:1502.01852.
Poole, Lahiri, Raghu, Sohl-Dickstein & Ganguli (2016). Exponential expressivity in deep neural
networks through transient chaos. NeurIPS. arXiv:1606.05340.
Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017). Deep Information Propagation. ICLR.
arXiv:1611.01232.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, ClassVar, Literal

import numpy as np
import pydantic
import torch
from torch import nn

from widenet import lab
from widenet.report import annotate_heatmap

ACTIVATIONS = ("sigmoid", "tanh", "relu")
SCHEMES = ("naive", "xavier", "kaiming", "critical")
_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

METRICS = {
    "grad_ratio": '"activation/scheme" -> list over depths of ||dL/dh_first|| / ||dL/dh_last||, '
    "the back-propagated gradient at the first layer relative to the output (Gaussian cotangent)",
    "depths": "the depths (hidden layers) of the sweep",
    "grad_ratio_theory": "the mean-field prediction of grad_ratio, sqrt(prod_l chi_l), same layout",
    "weight_grad_ratio": "||dL/dW_first|| / ||dL/dW_last|| (weight gradients), same layout",
    "forward_ratio": "mean h^2 at the last layer / at the first (forward signal), same layout",
    "verdict": "wn.signal_propagation's verdict (healthy / vanishing / exploding), same layout",
    "loss": "training cross-entropy after the budget, best over learning_rates (None: every "
    "rate diverged), same layout",
    "initial_loss": "training loss at initialization, same layout",
    "train_accuracy": "training accuracy after the budget (None: diverged), same layout",
    "learning_rate": "the learning rate that gave loss, same layout",
    "baseline_loss": "cross-entropy of the best constant predictor (entropy of the labels)",
    "critical_points": "activation -> {w_var, b_var, q_star} used by the critical scheme",
    "width": "hidden width",
    "n_train": "number of training points",
    "steps": "gradient-descent steps",
}


def _depths(depths: list[int]) -> list[int]:
    if not depths or any(d < 1 for d in depths):
        raise ValueError("depths must be a non-empty list of positive integers")
    return sorted(set(depths))


def _unique(items: list) -> list:
    if not items or len(set(items)) != len(items):
        raise ValueError("must be a non-empty list without repeats")
    return items


class InitStabilityConfig(lab.Config):
    """Full size by default (depths 2..64, width 128); ``QUICK``: depths 2, 8, 32, width 64."""

    depths: Annotated[list[int], pydantic.AfterValidator(_depths)] = [2, 4, 8, 16, 32, 64]
    activations: Annotated[
        list[Literal["sigmoid", "tanh", "relu"]], pydantic.AfterValidator(_unique)
    ] = list(ACTIVATIONS)
    schemes: Annotated[
        list[Literal["naive", "xavier", "kaiming", "critical"]], pydantic.AfterValidator(_unique)
    ] = list(SCHEMES)
    width: int = pydantic.Field(128, ge=2)
    n_train: int = pydantic.Field(256, ge=10, le=1797)
    steps: int = pydantic.Field(100, ge=1)
    learning_rates: Annotated[list[pydantic.PositiveFloat], pydantic.AfterValidator(_unique)] = [
        0.05,
        0.01,
        0.002,
    ]
    momentum: float = pydantic.Field(0.9, ge=0, lt=1)
    critical_b_var: float = pydantic.Field(0.0, ge=0)

    QUICK: ClassVar[dict] = {
        "depths": [2, 8, 32],
        "width": 64,
        "n_train": 128,
        "steps": 40,
        "learning_rates": [0.05, 0.01],
    }


def build(activation: str, depth: int, width: int, in_dim: int = 64, out_dim: int = 10):
    """Linear(in_dim, width) -> phi -> ... (depth hidden layers) -> Linear(width, out_dim)."""
    layers: list[nn.Module] = []
    fan_in = in_dim
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), _MODULES[activation]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, out_dim))
    return nn.Sequential(*layers)


def apply_scheme(model, scheme: str, activation: str, seed: int, b_var: float = 0.0):
    """The experiment's four schemes through ``wn.init``."""
    from widenet import init

    if scheme == "naive":
        return init.naive(model, seed=seed)
    if scheme == "xavier":
        return init.xavier(model, "uniform", seed=seed)
    if scheme == "kaiming":
        return init.kaiming(model, "normal", activation=activation, seed=seed)
    return init.critical(model, activation, b_var=b_var, seed=seed)


def _train(model, x, labels, learning_rates, steps: int, momentum: float):
    """Best over ``learning_rates``: (lr, initial loss, final loss, accuracy); None if diverged.

    Full-batch heavy-ball gradient descent on the mean cross-entropy, each rate from the same
    initial weights. Plain updates, as ``_common.gradient_descent`` (torch.optim costs seconds
    of import for nothing).
    """
    with torch.no_grad():
        initial = float(nn.functional.cross_entropy(model(x), labels))
    best = (None, initial, None, None)
    for lr in learning_rates:
        net = copy.deepcopy(model)
        params = list(net.parameters())
        velocity = [torch.zeros_like(p) for p in params]
        for _ in range(steps):
            grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), labels), params)
            with torch.no_grad():
                for p, v, g in zip(params, velocity, grads, strict=True):
                    p.sub_(v.mul_(momentum).add_(g), alpha=lr)
        with torch.no_grad():
            out = net(x)
            final = float(nn.functional.cross_entropy(out, labels))
        if math.isfinite(final) and (best[2] is None or final < best[2]):
            acc = float((out.argmax(1) == labels).double().mean())
            best = (lr, initial, final, acc)
    return best


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@lab.register(
    "init-stability",
    summary="Depth x activation x initialization: back-propagated gradient ratio (measured and "
    "mean-field) and trainability on digits (Glorot & Bengio 2010; He et al. 2015).",
    config=InitStabilityConfig,
    metrics=METRICS,
    key="baseline_loss",
)
def run(config: InitStabilityConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn
    from widenet import init

    device = ctx.device
    x, labels = wn.load_dataset("digits", n=config.n_train, seed=int(ctx.rng.integers(2**31)))
    freq = torch.bincount(labels, minlength=10).double() / len(labels)
    baseline = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    x, labels = x.to(device), labels.to(device)
    x64 = x.double()
    critical = {
        a: init.critical_point(a, config.critical_b_var).to_dict() for a in config.activations
    }
    keys = [f"{a}/{s}" for a in config.activations for s in config.schemes]
    names = (
        "grad_ratio",
        "grad_ratio_theory",
        "weight_grad_ratio",
        "forward_ratio",
        "verdict",
        "loss",
        "initial_loss",
        "train_accuracy",
        "learning_rate",
    )
    out: dict[str, dict[str, list]] = {name: {k: [] for k in keys} for name in names}
    seeds = {d: int(ctx.rng.integers(2**31)) for d in config.depths}
    jobs = [(k, d) for k in keys for d in config.depths]
    for key, depth in ctx.progress(jobs, description="init-stability"):
        activation, scheme = key.split("/")
        model = build(activation, depth, config.width)
        apply_scheme(model, scheme, activation, seeds[depth], config.critical_b_var)
        model = model.to(device)
        report = wn.signal_propagation(copy.deepcopy(model).double(), x64, seed=seeds[depth])
        lr, initial, final, acc = _train(
            model, x, labels, config.learning_rates, config.steps, config.momentum
        )
        row = {
            "grad_ratio": _finite(report.backprop_ratio),
            "grad_ratio_theory": _finite(report.theory.backprop_ratio),
            "weight_grad_ratio": _finite(report.grad_ratio),
            "forward_ratio": _finite(report.forward_variance[-2] / report.forward_variance[0]),
            "verdict": report.verdict,
            "loss": final,
            "initial_loss": _finite(initial),
            "train_accuracy": acc,
            "learning_rate": lr,
        }
        for name, value in row.items():
            out[name][key].append(value)
    _plot_heatmaps(ctx, config, keys, out, baseline)
    _plot_theory(ctx, config, out)
    return {
        "grad_ratio": out["grad_ratio"],
        "depths": list(config.depths),
        **{name: out[name] for name in names[1:]},
        "baseline_loss": baseline,
        "critical_points": critical,
        "width": config.width,
        "n_train": config.n_train,
        "steps": config.steps,
    }


def _log10(values) -> np.ndarray:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    with np.errstate(divide="ignore"):
        return np.log10(v)


def _heatmap(ax, grid, text, title, cmap, vmin, vmax, config):
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    annotate_heatmap(ax, im, text)  # black or white text by the cell's darkness
    ax.set_xticks(range(len(config.depths)), [str(d) for d in config.depths])
    ax.set_yticks(range(len(config.schemes)), config.schemes)
    ax.set_xlabel("depth (hidden layers)")
    ax.set_title(title, fontsize=10)
    return im


def _plot_heatmaps(ctx, config, keys, out, baseline):
    n_act = len(config.activations)
    # Colour scales shared by the columns and covering every finite value (log ratios are
    # clipped to +-8, where the cell text still gives the value; "div" cells are blank).
    all_logs = np.concatenate([_log10(v) for v in out["grad_ratio"].values()])
    finite = np.abs(all_logs[np.isfinite(all_logs)])
    log_span = float(min(8.0, max(1.0, finite.max()))) if finite.size else 8.0
    all_rel = np.array(
        [v / baseline for r in out["loss"].values() for v in r if v is not None], dtype=float
    )
    rel_top = float(max(1.2, np.nanmax(all_rel))) if all_rel.size else 1.2
    fig = ctx.figure(figsize=(4.2 * n_act, 6.4))
    axes = np.atleast_2d(fig.subplots(2, n_act, squeeze=False))
    for col, act in enumerate(config.activations):
        rows = [f"{act}/{s}" for s in config.schemes]
        logs = np.array([_log10(out["grad_ratio"][k]) for k in rows])
        text = [[("-inf" if not np.isfinite(v) else f"{v:.1f}") for v in r] for r in logs]
        im = _heatmap(
            axes[0, col],
            np.clip(logs, -8, 8),
            text,
            f"{act}: log10 ||dL/dh_1|| / ||dL/dh_out||",
            "RdBu_r",
            -log_span,
            log_span,
            config,
        )
        rel = np.array(
            [[np.nan if v is None else v / baseline for v in out["loss"][k]] for k in rows]
        )
        text = [["div" if np.isnan(v) else f"{v:.2f}" for v in r] for r in rel]
        im2 = _heatmap(
            axes[1, col],
            rel,
            text,
            f"{act}: loss / constant-predictor loss",
            "viridis",
            0,
            rel_top,
            config,
        )
    # Arrows on the colour bar when log ratios beyond +-8 are clipped (their text gives them).
    clipped = bool(finite.size) and float(finite.max()) > log_span
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, extend="both" if clipped else "neither")
    fig.colorbar(im2, ax=list(axes[1]), shrink=0.8)
    fig.suptitle(
        f"Gradient health (top) and trainability after {config.steps} momentum GD steps "
        "(bottom, best learning rate); "
        f"width {config.width}",
        fontsize=11,
    )
    ctx.save_figure(fig, "heatmaps")


def _plot_theory(ctx, config, out):
    n_act = len(config.activations)
    fig = ctx.figure(figsize=(4.2 * n_act, 3.8))
    axes = np.atleast_1d(fig.subplots(1, n_act, squeeze=False)[0])
    for ax, act in zip(axes, config.activations, strict=True):
        for i, scheme in enumerate(config.schemes):
            key, color = f"{act}/{scheme}", f"C{i}"
            ax.plot(config.depths, 10 ** _log10(out["grad_ratio_theory"][key]), "-", color=color)
            ax.plot(
                config.depths, 10 ** _log10(out["grad_ratio"][key]), "o", color=color, label=scheme
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth")
        ax.set_ylabel("||dL/dh_1|| / ||dL/dh_out||")
        ax.set_title(f"{act}: measured (dots) vs mean field (lines)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "theory")
