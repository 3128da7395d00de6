"""du-theory-vs-practice: every quantity of Du et al.'s theorem next to what training does.

What it measures
----------------
For each (n, m) in ``pairs``: n points uniform on the unit sphere in ``d`` dimensions and
labels y ~ N(0, 1) (one draw per distinct n, shared by its widths), a two-layer ReLU network
of width m (``wn.convergence.TwoLayerReLU``) trained by ``epochs`` full-batch GD steps on
L = ½Σ(f(x_i) − y_i)² with η = ``step_size_scale`` × the critical rate 2/(λ0 + λ_max(H∞)) (as
in ``du-convergence``). Reported per pair:

* λ0 = λ_min(H∞) and the theorem's width bound C n⁶/(λ0⁴δ³) (``wn.convergence.width_bound``,
  δ = ``delta``, our explicit C), with m / bound;
* the measured linear rate (exp of the slope of ln L per step over the second half) against
  Theorem 4.1's 1 − ηλ0/2 and the kernel-regime rates (1 − ηλ0)² and (1 − ηλ_min(H(0)))²,
  and whether ||y − u(k)||² ≤ (1 − ηλ0/2)^k ||y − u(0)||² held at every step;
* the maximal drift max_r ||w_r(K) − w_r(0)|| against its bound 4√n||y − u(0)||/(√m λ0)
  (Corollary 4.1) and the radius R of Lemma 3.2, and min_k λ_min(H(k)) against λ0/2;
* the closed-form kernel prediction u(k) = y + (I − ηH)^k (u(0) − y) with H = H∞ and with
  H = H(0) (``wn.convergence.kernel_prediction``, i.e. ``wn.dynamics.gradient_descent_mse`` with
  ``loss="sum"``) against the trained u(k): max_k ||u(k) − u_pred(k)|| / ||y − u(0)||.

And the random-label point (Zhang et al. 2017): ``rl_n`` digits (unit-normalised), labelled by
digit parity (±1), by the same labels shuffled, and by y ~ N(0, 1); one network of width
``rl_width`` per labelling, trained for ``rl_epochs`` steps at ``rl_step_size_scale`` × the
critical rate of the digits' H∞; the final L/L(0) of each.

Theory
------
Du et al. (2018), Theorems 3.2 / 4.1 and Lemmas 3.1–3.3: see ``widenet.convergence``. The bound
on the width is a sufficient condition with very loose constants; the point of this experiment
is how far the practice is inside it: the drift is orders of magnitude below the radius R the
proof needs at these widths, yet λ_min(H(k)) stays near λ0 and the rate matches the kernel one.

Measured
--------
Full size, seed 0 (d = 100, 300 steps, δ = 0.1; 20 min on a 2-core machine shared with other
jobs):

    n    m       λ0      m/bound   rate (kernel; thm)       drift (bound)   gap H∞ / H(0)
    100  1000    0.2320  1e-19     0.8421 (0.8440; 0.959)   0.69 (63)       0.018 / 0.0076
    100  10000   0.2320  1e-18     0.8397 (0.8428; 0.959)   0.24 (19)       0.0048 / 0.0028
    300  3000    0.1902  2e-22     0.9140 (0.9171; 0.979)   0.81 (150)      0.011 / 0.0086
    300  30000   0.1902  2e-21     0.9117 (0.9166; 0.979)   0.26 (44)       0.0036 / 0.0029

(rate: measured loss ratio per step, the kernel rate (1 − ηλ_min(H(0)))² and Theorem 4.1's
1 − ηλ0/2; gap: max_k ||u(k) − u_kernel(k)|| / ||y − u(0)||). The widths are 1e-18 … 1e-21 of
the theorem's sufficient width, the drift is 60–170× below its bound yet ~10⁶–10⁷× above the
radius R = 4e-7 … 3e-8 that the proof needs, and still every conclusion holds: the envelope at
every step, λ_min(H(k)) ≥ 0.987 λ0 (the proof needs λ0/2), ||H(k) − H(0)||₂ ≤ 0.04, and the
network follows the closed-form H∞ dynamics to 0.4–1.8 % of the initial residual, closer as m
grows (10× wider: 3.7× and 3.0× closer, about √10). Our η is the same 1/4 of the critical rate
as in ``du-convergence``, 10⁵× the theorem's λ0/(4n²).
Random labels (digits, n = 300, width 2000, η = 0.133, 3000 steps): L/L(0) = 1.4e-19 (true
parities), 9.6e-11 (shuffled), 1.4e-11 (Gaussian); after 1000 steps they were 3.3e-9, 2.9e-5
and 1.3e-5: random labels are fitted too, only more slowly, as their weight on H∞'s small
eigenvalues predicts (Arora et al. 2019).
Quick size, seed 0 (d = 50, 100 steps; ~9 s CPU): λ0 = 0.224/0.224/0.191, measured rates
0.848/0.840/0.886 against kernel rates 0.848/0.850/0.896, drift 0.76/0.23/0.56 against bounds
44/14/57, gaps to H∞ 0.024/0.0065/0.013; random labels (n = 100, width 1000, 400 steps):
L/L(0) = 1e-12 (true), 7e-7 (shuffled), 2e-10 (Gaussian).

References
----------
Du, Zhai, Póczos, Singh (2018). Gradient Descent Provably Optimizes Over-parameterized Neural
Networks. ICLR 2019. arXiv:1810.02054.
Zhang, Bengio, Hardt, Recht, Vinyals (2017). Understanding deep learning requires rethinking
generalization. ICLR. arXiv:1611.03530.
Arora, Du, Hu, Li, Wang (2019). Fine-Grained Analysis of Optimization and Generalization for
Overparameterized Two-Layer Neural Networks. ICML (random labels train slower: y's weight on
H∞'s small eigenvalues).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
import pydantic
import torch

from widenet import convergence as cv
from widenet import lab
from widenet.data import load_dataset
from widenet.experiments._common import parity_targets
from widenet.experiments.du_convergence import sphere_problem

METRICS = {
    "pairs": "the (n, m) pairs, in order; every per-pair list below follows it",
    "lambda0": "per pair: lambda_min(H_inf)",
    "width_bound": "per pair: C n^6/(lambda0^4 delta^3), Theorem 4.1's sufficient width (our C)",
    "width_over_bound": "per pair: m / width_bound",
    "step_size": "per pair: the step size eta used",
    "theorem_step_size": "per pair: lambda0/(4 n^2), Theorem 4.1's step size with our constant",
    "measured_rate": "per pair: exp(slope of ln L per step) over the second half",
    "predicted_rate": "per pair: 1 - eta*lambda0/2 (Theorem 4.1's bound on the loss ratio)",
    "kernel_rate_hinf": "per pair: (1 - eta*lambda0)^2, the slowest H_inf mode's loss ratio",
    "kernel_rate_h0": "per pair: (1 - eta*lambda_min(H(0)))^2",
    "envelope_holds": "per pair: ||y-u(k)||^2 <= (1-eta*lambda0/2)^k ||y-u(0)||^2 at every k",
    "max_distance": "per pair: max_r ||w_r(K) - w_r(0)||",
    "drift_bound": "per pair: 4 sqrt(n) ||y-u(0)|| / (sqrt(m) lambda0) (Corollary 4.1)",
    "radius": "per pair: R = sqrt(2 pi) delta lambda0 / (16 n^2) (Lemma 3.2)",
    "min_lambda_min": "per pair: min over recorded k of lambda_min(H(k)) (theory: >= lambda0/2)",
    "gram_change": "per pair: max over recorded k of ||H(k) - H(0)||_2",
    "prediction_gap_hinf": "per pair: max_k ||u(k) - u_Hinf(k)|| / ||y - u(0)||",
    "prediction_gap_h0": "per pair: max_k ||u(k) - u_H(0)(k)|| / ||y - u(0)||",
    "final_relative_error": "per pair: L(K)/L(0)",
    "random_labels": "final L(K)/L(0) on digits for 'true' (parity), 'shuffled' and 'gaussian' "
    "labels",
    "random_labels_step_size": "the step size of the random-label runs",
    "epochs": "GD steps of each (n, m) run",
}

LABEL_KINDS = ("true", "shuffled", "gaussian")


def _pairs(pairs: list[list[int]]) -> list[list[int]]:
    for p in pairs:
        if len(p) != 2 or p[0] < 2 or p[1] < 1:
            raise ValueError(f"each pair must be [n >= 2, m >= 1], got {p}")
    if not pairs:
        raise ValueError("give at least one [n, m] pair")
    return pairs


# A list of [n, m] pairs (a config field type).
Pairs = Annotated[list[list[int]], pydantic.AfterValidator(_pairs)]


class DuTheoryConfig(lab.Config):
    """Full: n in {100, 300}, m up to 30000, 300 steps; quick: n in {50, 100}, 100 steps."""

    pairs: Pairs = [[100, 1000], [100, 10000], [300, 3000], [300, 30000]]
    d: int = pydantic.Field(100, ge=2)
    epochs: int = pydantic.Field(300, ge=2)
    step_size_scale: float = pydantic.Field(0.25, gt=0, le=1.0)
    delta: float = pydantic.Field(0.1, gt=0, lt=1)
    gram_every: int = pydantic.Field(10, ge=1)
    dtype: Literal["float32", "float64"] = "float64"
    rl_n: int = pydantic.Field(300, ge=2)
    rl_width: int = pydantic.Field(2000, ge=1)
    rl_epochs: int = pydantic.Field(3000, ge=2)
    rl_step_size_scale: float = pydantic.Field(0.8, gt=0, le=1.0)

    QUICK: ClassVar[dict] = {
        "pairs": [[50, 500], [50, 5000], [100, 2000]],
        "d": 50,
        "epochs": 100,
        "rl_n": 100,
        "rl_width": 1000,
        "rl_epochs": 400,
    }


def _seed(ctx) -> int:
    return int(ctx.rng.integers(2**31))


def _pair_run(config, ctx, n: int, m: int, problem) -> dict:
    x, y, _, lam0 = problem  # H_inf is recomputed by du_training_run (the same x)
    # The library's procedure (the same chain as `widenet du-train`): eta = scale x the
    # critical rate of H_inf, the tracked GD run, the H_inf and H(0) predictions at every step.
    run = cv.du_training_run(
        x,
        y,
        m,
        config.epochs,
        step_size_scale=config.step_size_scale,
        gram_every=config.gram_every,
        kernel=True,
        seed=_seed(ctx),
        dtype=getattr(torch, config.dtype),
        device=ctx.device,
        progress=ctx.progress,
    )
    res, eta = run.track, run.summary["step_size"]
    gaps = {name: run.arrays[f"gap_{name}"] for name in ("hinf", "h0")}
    envelope = cv.loss_envelope(res.steps, eta, lam0, 2 * res.loss[0]) / 2
    wb = cv.width_bound(n, lam0, config.delta)
    ctx.log(
        f"n = {n}, m = {m}: lambda0 = {lam0:.4f}, rate {res.measured_rate:.4f} (theorem "
        f"<= {res.predicted_rate:.4f}), drift {res.max_distance[-1]:.3g} (bound "
        f"{res.drift_bound:.3g}), H_inf gap {gaps['hinf'].max():.3g}"
    )
    return {
        "res": res,
        "gaps": gaps,
        "envelope": envelope,
        "row": {
            "lambda0": lam0,
            "width_bound": wb.width,
            "width_over_bound": m / wb.width,
            "step_size": eta,
            "theorem_step_size": cv.theorem_step_size(lam0, n),
            "measured_rate": res.measured_rate,
            "predicted_rate": res.predicted_rate,
            "kernel_rate_hinf": res.kernel_rate_hinf,
            "kernel_rate_h0": res.kernel_rate_h0,
            # 1e-9: the loss and the envelope agree to rounding at k = 0.
            "envelope_holds": bool(np.all(res.loss <= envelope * (1 + 1e-9))),
            "max_distance": float(res.max_distance[-1]),
            "drift_bound": res.drift_bound,
            "radius": cv.radius(lam0, n, config.delta),
            "min_lambda_min": float(res.gram_lambda_min.min()),
            "gram_change": float(res.gram_change.max()),
            "prediction_gap_hinf": float(gaps["hinf"].max()),
            "prediction_gap_h0": float(gaps["h0"].max()),
            "final_relative_error": float(res.relative_error[-1]),
        },
    }


def _random_labels(config, ctx) -> tuple[dict, float, dict]:
    dtype = getattr(torch, config.dtype)
    x, digits = load_dataset("digits", n=config.rl_n, seed=_seed(ctx), dtype=torch.float64)
    x = cv.unit_inputs(x / x.norm(dim=1, keepdim=True))
    g = torch.Generator().manual_seed(_seed(ctx))
    true = parity_targets(digits)
    labels = {
        "true": true,
        "shuffled": cv.random_labels(true, kind="shuffled", generator=g),
        "gaussian": cv.random_labels(config.rl_n, generator=g),
    }
    finals, curves = {}, {}
    for kind in LABEL_KINDS:
        run = cv.du_training_run(
            x,
            labels[kind],
            config.rl_width,
            config.rl_epochs,
            step_size_scale=config.rl_step_size_scale,
            gram_every=0,
            kernel=False,
            seed=_seed(ctx),
            dtype=dtype,
            device=ctx.device,
            progress=ctx.progress,
        )
        res, eta = run.track, run.summary["step_size"]
        finals[kind] = float(res.relative_error[-1])
        curves[kind] = res.relative_error
        ctx.log(f"digits, {kind} labels: L(K)/L(0) = {finals[kind]:.3g}")
    return finals, eta, curves


@lab.register(
    "du-theory-vs-practice",
    summary="Du et al. 2018: lambda0, width bound, rates, drift and the H_inf prediction vs "
    "training; random labels",
    config=DuTheoryConfig,
    metrics=METRICS,
    key="measured_rate",
)
def run(config: DuTheoryConfig, ctx: lab.RunContext) -> dict:
    # One data set per distinct n, shared by its widths (so they differ only in the network).
    problems = {
        n: sphere_problem(n, config.d, ctx.rng) for n in sorted({n for n, _ in config.pairs})
    }
    runs = [_pair_run(config, ctx, n, m, problems[n]) for n, m in config.pairs]
    finals, rl_eta, rl_curves = _random_labels(config, ctx)
    metrics: dict = {"pairs": [list(p) for p in config.pairs]}
    for key in runs[0]["row"]:
        metrics[key] = [r["row"][key] for r in runs]
    metrics.update(random_labels=finals, random_labels_step_size=rl_eta, epochs=config.epochs)
    _figures(ctx, config, runs, rl_curves)
    return metrics


def _figures(ctx, config, runs, rl_curves) -> None:
    labels = [f"n={n}, m={m}" for n, m in config.pairs]
    fig = ctx.figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for lab_, r in zip(labels, runs, strict=True):
        res = r["res"]
        line = ax1.semilogy(res.steps, res.relative_error, label=lab_)[0]
        ax1.semilogy(res.steps, r["envelope"] / r["envelope"][0], ls="--", color=line.get_color())
        ax2.plot(res.steps, r["gaps"]["hinf"], color=line.get_color(), label=f"{lab_}: H∞")
        ax2.plot(res.steps, r["gaps"]["h0"], ls=":", color=line.get_color(), label="H(0)")
    ax1.set_xlabel("step k")
    ax1.set_ylabel("||y − u(k)||² / ||y − u(0)||²")
    ax1.set_title("training (solid) vs Theorem 4.1's envelope (dashed)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("step k")
    ax2.set_ylabel("||u(k) − u_kernel(k)|| / ||y − u(0)||")
    ax2.set_title("closed-form kernel prediction vs the network")
    ax2.legend(fontsize=6, ncol=2)
    ctx.save_figure(fig, "rates_and_predictions")

    fig = ctx.figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for lab_, r in zip(labels, runs, strict=True):
        res = r["res"]
        line = ax1.semilogy(res.steps, res.max_distance, label=lab_)[0]
        ax1.axhline(res.drift_bound, ls="--", color=line.get_color())
        ax2.plot(res.gram_steps, res.gram_lambda_min / res.lambda0, "o-", color=line.get_color())
    ax1.set_xlabel("step k")
    ax1.set_ylabel("max_r ||w_r(k) − w_r(0)||")
    ax1.set_title("drift (solid) vs Corollary 4.1's bound (dashed)")
    ax1.legend(fontsize=7)
    ax2.axhline(0.5, color="k", ls="--", lw=1)
    ax2.set_xlabel("step k")
    ax2.set_ylabel("λ_min(H(k)) / λ0")
    ax2.set_title("the proof needs λ_min(H(k)) ≥ λ0/2 (dashed)")
    ctx.save_figure(fig, "drift_and_gram")

    fig = ctx.figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    for kind, curve in rl_curves.items():
        ax.semilogy(np.arange(len(curve)), curve, label=f"{kind} labels")
    ax.set_xlabel("step k")
    ax.set_ylabel("L(k) / L(0)")
    ax.set_title(f"digits (n={config.rl_n}), width {config.rl_width}: random labels fit too")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "random_labels")
