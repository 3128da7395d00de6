"""du-convergence: Du et al. (2018) Sec. 5 — wider two-layer ReLU nets converge faster, move less.

What it measures
----------------
n points uniform on the unit sphere in d dimensions, labels y ~ N(0, 1), and for each width m a
two-layer ReLU network f(x) = m^{-1/2} Σ_r a_r relu(w_rᵀx) (``wn.convergence.TwoLayerReLU``:
w_r ~ N(0, I), a_r = ±1 fixed) whose first layer is trained by ``epochs`` steps of full-batch
gradient descent on L = ½ Σ_i (f(x_i) − y_i)² (``wn.convergence.track``). Per epoch: the
training loss, the pattern-change ratio Σ_ir 1{sign w_r(0)ᵀx_i ≠ sign w_r(k)ᵀx_i}/(mn), and the
maximal distance from initialisation max_r ||w_r(k) − w_r(0)||; every ``gram_every`` epochs
||H(k) − H(0)||₂ and λ_min(H(k)). Three figures against epoch, one curve per width (the paper's
Fig. 1 a–c), and the paper's epoch-100 readings beside ours.

Step size. The paper does not state it. Its theorem's η = λ0/(4n²) (≈ 6e-8 here) would leave the
loss unchanged in 100 epochs, so we take a fixed fraction ``step_size_scale`` = 1/4 of the
critical learning rate 2/(λ0 + λ_max(H∞)) of the infinite-width kernel (the rate at which GD on
the linearised model converges fastest, ``wn.dynamics.critical_learning_rate(H∞, loss="sum")``):
η = 1/(2(λ0 + λ_max)) = 0.337 at full size. Why: it is stable with a 4.7× margin against the
finite-width λ_max(H(0)) (GD diverges above 2/λ_max), the slowest mode then contracts the loss
by (1 − ηλ0)² ≈ 0.84 a step so the curves stay resolvable in float32 over 100 epochs (at the
critical rate the loss would hit float32 round-off within ~40 epochs), and the infinite-width
prediction at this η ends near the paper's widest-net reading (log10 L ≈ −5.7 vs −5.65).
The value is recorded as ``step_size``.

Theory
------
Du et al. (2018), Theorem 4.1: for m = Ω(n⁶/(λ0⁴δ³)) and η = O(λ0/n²),
||y − u(k)||² ≤ (1 − ηλ0/2)^k ||y − u(0)||² and every w_r stays within
4√n||y − u(0)||/(√m λ0) = O(m^{-1/2}) of its initialisation; few activation patterns flip
(O(m^{-1/2}): a neuron flips on x_i only if |w_r(0)ᵀx_i| is below its drift). So: wider ⇒ lower
final error, fewer flips, smaller drift, each monotone in m, flips and drift ∝ m^{-1/2}.

Measured
--------
Full size, seed 0 (λ0 = 0.2461, λ_max(H∞) = 1.249, η = 0.3344; 15 min on a 2-core machine
shared with other jobs, about 4 min of CPU time), at epoch 100, the paper's Fig. 1 readings
in brackets:

    m      log10 L          pattern change      max distance    measured / kernel rate
    500    −5.13 (−1.6)     0.0297 (0.0185)     2.93 (2.78)     0.8452 / 0.8455
    1000   −5.34 (−2.15)    0.0212 (0.0152)     2.10 (2.07)     0.8415 / 0.8440
    2000   −5.43 (−3.05)    0.0145 (0.0117)     1.42 (1.35)     0.8395 / 0.8432
    4000   −5.48 (−4.05)    0.0105 (0.0097)     1.05 (0.95)     0.8381 / 0.8427
    8000   −5.54 (−5.65)    0.0070 (0.0067)     0.70 (0.45)     0.8372 / 0.8424

All three are monotone in m; log-log slopes −0.518 (pattern change) and −0.514 (distance), the
predicted −1/2. Flips and drift agree with the paper within a factor 1.6 at every width. The
final error does not: ours varies by 0.4 decades over the widths, the paper's by 4. Here every
width is already in the kernel regime (λ_min(H(0)) = 0.2407 … 0.2457 against λ0 = 0.2461,
||H(100) − H(0)||₂ = 0.077 … 0.013), so every width converges at nearly the H∞ rate
((1 − ηλ0)² = 0.842 per epoch; Theorem 4.1's bound 1 − ηλ0/2 = 0.959 holds with room) and
the closed-form H∞ dynamics predict log10 L(100) = −5.64 … −5.67. The paper's strong
m-dependence needs narrow nets far from that regime, which at n = d = 1000 would take a
different (unstated) step size, initialisation or loss normalisation; we do not know which.
The paper's "log error" base and normalisation are not stated either: ours is log10 of
L = ½Σ(f − y)². Quick size (n = d = 200, m = 250/1000/4000, 50 epochs; seed 0; ~5 s CPU):
λ0 = 0.2384, η = 0.3434, log10 L = −2.17/−2.47/−2.47, pattern change 0.0399/0.0235/0.0098,
max distance 1.91/1.12/0.49 (slopes −0.51, −0.49), measured rates 0.842/0.830/0.829 against
kernel rates 0.848/0.844/0.843.

Metrics (``metrics.json``)
--------------------------
widths, step_size, lambda0, and per width (lists in the order of widths, values at the last
epoch) final_log10_error, pattern_change, max_distance, measured_rate, predicted_rate; plus the
documented extras (``widenet list --verbose``).

References
----------
Du, Zhai, Póczos, Singh (2018). Gradient Descent Provably Optimizes Over-parameterized Neural
Networks. ICLR 2019. arXiv:1810.02054 (Section 5, Fig. 1).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import pydantic
import torch

from widenet import convergence as cv
from widenet import dynamics, lab
from widenet.data import load_dataset
from widenet.experiments._common import Widths, slope
from widenet.report import PaperComparison, format_value

# The paper's Fig. 1 readings at epoch 100 (read off the plots; the table):
# width -> (log training error, pattern-change ratio, max distance).
PAPER_FIG1 = {
    500: (-1.6, 0.0185, 2.78),
    1000: (-2.15, 0.0152, 2.07),
    2000: (-3.05, 0.0117, 1.35),
    4000: (-4.05, 0.0097, 0.95),
    8000: (-5.65, 0.0067, 0.45),
}

METRICS = {
    "widths": "hidden widths m, increasing",
    "step_size": "the gradient-descent step size eta used for every width",
    "lambda0": "lambda_min(H_inf) of the training inputs",
    "final_log10_error": "per width: log10 of the training loss L = 0.5*sum((f(x_i) - y_i)^2) "
    "at the last epoch",
    "pattern_change": "per width: fraction of (neuron, point) activation signs flipped since "
    "initialisation, at the last epoch",
    "max_distance": "per width: max_r ||w_r(K) - w_r(0)|| at the last epoch",
    "measured_rate": "per width: exp(slope of ln L per epoch) fitted over the second half",
    "predicted_rate": "per width: Theorem 4.1's bound 1 - eta*lambda0/2 on the loss ratio per "
    "epoch",
    "kernel_rate_h0": "per width: (1 - eta*lambda_min(H(0)))^2, the slowest mode's loss ratio per "
    "epoch in the kernel regime",
    "kernel_rate_hinf": "(1 - eta*lambda0)^2, the same for the infinite-width kernel",
    "final_log10_relative_error": "per width: log10(L(K)/L(0))",
    "kernel_log10_error": "per width: log10 L(K) predicted by the closed-form GD dynamics with "
    "H_inf from the same u(0)",
    "lambda_max": "lambda_max(H_inf)",
    "critical_learning_rate": "2/(lambda0 + lambda_max), the fastest stable rate for H_inf",
    "step_size_scale": "step_size / critical_learning_rate",
    "theorem_step_size": "lambda0/(4 n^2), the step size of Theorem 4.1 with our constant",
    "lambda_min_h0": "per width: lambda_min(H(0))",
    "lambda_min_final": "per width: lambda_min(H(K))",
    "gram_change": "per width: ||H(K) - H(0)||_2",
    "drift_bound": "per width: 4 sqrt(n) ||y - u(0)|| / (sqrt(m) lambda0) (Corollary 4.1)",
    "width_bound": "Theorem 4.1's width C n^6/(lambda0^4 delta^3) for delta = 0.1, with our C",
    "pattern_change_slope": "log-log slope of pattern_change against width (theory -1/2)",
    "max_distance_slope": "log-log slope of max_distance against width (theory -1/2)",
    "monotone": "whether final error, pattern change and max distance each decrease with width",
    "paper": "the paper's Fig. 1 readings at epoch 100 (width -> log error, pattern change, "
    "max distance)",
    "epochs": "number of full-batch GD steps",
    "log10_error_curve": "per width: log10 L at every epoch",
    "kernel_log10_error_curve": "log10 L at every epoch of the closed-form H_inf dynamics from the "
    "widest net's u(0)",
    "pattern_change_curve": "per width: pattern change at every epoch",
    "max_distance_curve": "per width: max distance at every epoch",
}


class DuConvergenceConfig(lab.Config):
    """Full size: the paper's n = d = 1000, m = 500 … 8000, 100 epochs; quick: n = d = 200."""

    n: int = pydantic.Field(1000, ge=2)
    d: int = pydantic.Field(1000, ge=2)
    widths: Widths = [500, 1000, 2000, 4000, 8000]
    epochs: int = pydantic.Field(100, ge=2)
    step_size_scale: float = pydantic.Field(0.25, gt=0, le=1.0)
    gram_every: int = pydantic.Field(10, ge=0)
    dtype: Literal["float32", "float64"] = "float32"
    antisymmetric: bool = False
    delta: float = pydantic.Field(0.1, gt=0, lt=1)

    QUICK: ClassVar[dict] = {"n": 200, "d": 200, "widths": [250, 1000, 4000], "epochs": 50}


class SphereProblem(NamedTuple):
    """Inputs x (n, d) on the unit sphere, labels y ~ N(0, 1), their H∞ and λ0 (float64)."""

    x: torch.Tensor
    y: torch.Tensor
    h_inf: torch.Tensor
    lambda0: float


def sphere_problem(n: int, d: int, rng: np.random.Generator) -> SphereProblem:
    """n points uniform on the unit sphere in R^d, labels y ~ N(0, 1), H∞ and λ0."""
    seed = int(rng.integers(2**31))
    x, _ = load_dataset("sphere", n=n, seed=seed, dim=d, dtype=torch.float64)
    y = cv.random_labels(n, generator=torch.Generator().manual_seed(seed + 1))
    h_inf = cv.gram_infinity(x)
    return SphereProblem(x, y, h_inf, cv.lambda0(x, h_inf=h_inf))


def step_size_from_kernel(h_inf: torch.Tensor, scale: float) -> float:
    """η = scale × 2/(λ0 + λ_max(H∞)): a fraction of the critical rate of the ½Σ loss."""
    return scale * dynamics.critical_learning_rate(h_inf, loss="sum")


def _monotone_decreasing(values) -> bool:
    return bool(np.all(np.diff(np.asarray(values, dtype=float)) < 0))


def paper_comparison(config: dict, metrics: dict) -> PaperComparison:
    """Du et al.'s Fig. 1 readings at epoch 100 beside this run's last epoch (report table)."""
    widths = metrics["widths"]
    rows = []
    for i, m in enumerate(widths):
        if m not in PAPER_FIG1:
            continue
        log_err, flips, drift = PAPER_FIG1[m]
        rows += [
            (
                f"log10 training error, m = {m}",
                f"{log_err}",
                format_value(metrics["final_log10_error"][i]),
            ),
            (f"pattern change, m = {m}", f"{flips}", format_value(metrics["pattern_change"][i])),
            (f"max distance, m = {m}", f"{drift}", format_value(metrics["max_distance"][i])),
        ]
    paper_m = sorted(PAPER_FIG1)
    paper_flips = slope(paper_m, [PAPER_FIG1[m][1] for m in paper_m])
    paper_drift = slope(paper_m, [PAPER_FIG1[m][2] for m in paper_m])
    rows += [
        (
            "log-log slope of pattern change vs m",
            f"{paper_flips:.2f} (theory -0.5)",
            format_value(metrics["pattern_change_slope"]),
        ),
        (
            "log-log slope of max distance vs m",
            f"{paper_drift:.2f} (theory -0.5)",
            format_value(metrics["max_distance_slope"]),
        ),
    ]
    flips_ok = abs(metrics["pattern_change_slope"] + 0.5) < 0.15
    drift_ok = abs(metrics["max_distance_slope"] + 0.5) < 0.15
    spread = max(metrics["final_log10_error"]) - min(metrics["final_log10_error"])
    verdict = (
        ("Partly reproduced: " if flips_ok and drift_ok else "Not reproduced: ")
        + f"pattern changes and drift shrink like m^{metrics['pattern_change_slope']:.2f} and "
        f"m^{metrics['max_distance_slope']:.2f} (paper -1/2); not reproduced: the final error "
        f"varies by {spread:.1f} decades over the widths against the paper's 4 (every width here "
        "is in the kernel regime; see About this experiment)."
    )
    same = config["n"] >= 1000 and config["d"] >= 1000 and config["epochs"] == 100
    same = same and set(PAPER_FIG1) <= set(widths)
    return PaperComparison(
        reference="Du et al. (2018), Fig. 1",
        paper_conditions="n = d = 1000 on the sphere, m = 500 … 8000, epoch 100",
        run_conditions=f"n = {config['n']}, d = {config['d']}, m = "
        f"{', '.join(map(str, widths))}, epoch {config['epochs']}",
        rows=rows,
        verdict=verdict,
        same_size=same,
        key_row=-2,  # the pattern-change slope: the finding the summary shows
    )


@lab.register(
    "du-convergence",
    summary="Du et al. 2018 Fig. 1: loss, pattern changes and weight drift of two-layer ReLU "
    "nets vs width",
    config=DuConvergenceConfig,
    metrics=METRICS,
    paper=paper_comparison,
)
def run(config: DuConvergenceConfig, ctx: lab.RunContext) -> dict:
    dtype = getattr(torch, config.dtype)
    x, y, h_inf, lam0 = sphere_problem(config.n, config.d, ctx.rng)
    lmax = float(torch.linalg.eigvalsh(h_inf)[-1])
    eta = step_size_from_kernel(h_inf, config.step_size_scale)
    ctx.log(f"lambda0 = {lam0:.4f}, lambda_max = {lmax:.4f}, step size = {eta:.4f}")
    results = []
    for m in config.widths:
        # The library's procedure (as `widenet du-train`): the tracked GD run and the closed-form
        # H_inf prediction u(k) at every step, with this experiment's eta.
        run_m = cv.du_training_run(
            x,
            y,
            m,
            config.epochs,
            step_size=eta,
            antisymmetric=config.antisymmetric,
            gram_every=config.gram_every,
            kernel=True,
            seed=int(ctx.rng.integers(2**31)),
            dtype=dtype,
            device=ctx.device,
            progress=ctx.progress,
        )
        res, kernel = run_m.track, run_m.arrays["kernel_hinf"]
        res.extra["kernel_loss"] = 0.5 * ((kernel - y.numpy()) ** 2).sum(axis=1)
        ctx.log(
            f"m = {m}: log10 L = {math.log10(res.loss[-1]):.3f}, pattern change "
            f"{res.pattern_change[-1]:.4f}, max distance {res.max_distance[-1]:.3f} "
            f"({res.seconds:.1f} s)"
        )
        results.append(res)
    metrics = _metrics(config, results, lam0, lmax, eta)
    _figures(ctx, config, results, metrics)
    return metrics


def _metrics(config, results, lam0, lmax, eta) -> dict:
    widths = list(config.widths)
    final = [math.log10(r.loss[-1]) for r in results]
    flips = [float(r.pattern_change[-1]) for r in results]
    dist = [float(r.max_distance[-1]) for r in results]
    crit = 2.0 / (lam0 + lmax)
    return {
        "widths": widths,
        "step_size": eta,
        "lambda0": lam0,
        "final_log10_error": final,
        "pattern_change": flips,
        "max_distance": dist,
        "measured_rate": [r.measured_rate for r in results],
        "predicted_rate": [r.predicted_rate for r in results],
        "kernel_rate_h0": [r.kernel_rate_h0 for r in results],
        "kernel_rate_hinf": (1 - eta * lam0) ** 2,
        "final_log10_relative_error": [math.log10(r.relative_error[-1]) for r in results],
        "kernel_log10_error": [math.log10(r.extra["kernel_loss"][-1]) for r in results],
        "lambda_max": lmax,
        "critical_learning_rate": crit,
        "step_size_scale": eta / crit,
        "theorem_step_size": cv.theorem_step_size(lam0, config.n),
        "lambda_min_h0": [r.lambda_min_h0 for r in results],
        "lambda_min_final": [float(r.gram_lambda_min[-1]) for r in results],
        "gram_change": [float(r.gram_change[-1]) for r in results],
        "drift_bound": [r.drift_bound for r in results],
        "width_bound": cv.width_bound(config.n, lam0, config.delta).width,
        "pattern_change_slope": slope(widths, flips) if min(flips) > 0 else None,
        "max_distance_slope": slope(widths, dist),
        "monotone": {
            "final_log10_error": _monotone_decreasing(final),
            "pattern_change": _monotone_decreasing(flips),
            "max_distance": _monotone_decreasing(dist),
        },
        "paper": {str(m): list(v) for m, v in PAPER_FIG1.items()},
        "epochs": config.epochs,
        "log10_error_curve": [np.log10(r.loss).tolist() for r in results],
        "kernel_log10_error_curve": np.log10(results[-1].extra["kernel_loss"]).tolist(),
        "pattern_change_curve": [r.pattern_change.tolist() for r in results],
        "max_distance_curve": [r.max_distance.tolist() for r in results],
    }


def _figures(ctx, config, results, metrics) -> None:
    epochs = np.arange(config.epochs + 1)
    panels = [
        ("log_error", "log10 training loss ½Σ(f−y)²", "log10_error_curve"),
        ("pattern_change", "pattern-change ratio", "pattern_change_curve"),
        ("max_distance", "max_r ||w_r(k) − w_r(0)||", "max_distance_curve"),
    ]
    for letter, (name, label, key) in zip("abc", panels, strict=True):
        fig = ctx.figure(figsize=(5.2, 3.8))
        ax = fig.add_subplot()
        for m, curve in zip(metrics["widths"], metrics[key], strict=True):
            ax.plot(epochs, curve, label=f"m = {m}")
        if key == "log10_error_curve":
            ax.plot(
                epochs, metrics["kernel_log10_error_curve"], "k--", lw=1, label="H∞ closed form"
            )
        ax.set_xlabel("epoch (full-batch GD step)")
        ax.set_ylabel(label)
        ax.set_title(f"({letter}) n = {config.n}, d = {config.d}, η = {metrics['step_size']:.3g}")
        ax.legend(fontsize=8)
        ctx.save_figure(fig, name)
    fig = ctx.figure(figsize=(8.5, 0.6 + 0.32 * (len(metrics["widths"]) + 1)))
    ax = fig.add_subplot()
    ax.axis("off")
    rows = []
    for i, m in enumerate(metrics["widths"]):
        paper = PAPER_FIG1.get(m, ("–", "–", "–"))
        rows.append(
            [
                str(m),
                str(paper[0]),
                f"{metrics['final_log10_error'][i]:.2f}",
                str(paper[1]),
                f"{metrics['pattern_change'][i]:.4f}",
                str(paper[2]),
                f"{metrics['max_distance'][i]:.2f}",
            ]
        )
    cols = ["m", "log err (paper)", "log10 L (ours)", "flips (paper)", "flips (ours)"]
    cols += ["distance (paper)", "distance (ours)"]
    table = ax.table(cellText=rows, colLabels=cols, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title(f"epoch {config.epochs}: Du et al. Fig. 1 readings beside this run", fontsize=9)
    ctx.save_figure(fig, "paper_vs_ours")
