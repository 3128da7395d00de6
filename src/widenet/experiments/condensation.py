"""condensation: at small init the neurons condense onto a few directions; at NTK scale not.

What it measures
----------------
Two two-layer ReLU networks f(x) = Σ_k a_k relu(w_k x + b_k) of width ``width`` = 1000 (ASI,
α = 1; ``wn.phases``) are trained by full-batch gradient descent on the 1-D problem
``wn.phases.PAPER_DATA`` until L = (1/2n) Σ (f − y)² < ``loss_tol``:

* **small initialisation** at (γ, γ′) = ``small`` (default (1.75, 0): standard deviations
  β1 = β2 = m^{−0.875} ≈ 2.4e-3 at m = 1000, the condensed regime);
* **NTK scale** at (γ, γ′) = ``ntk`` (default (0.5, 0), the NTK point: β1 = β2 = m^{−1/4}, the
  same dynamics as α = √m, β = 1).

At the steps ``times`` (and at the end) each neuron is drawn as a point (θ_k, A_k): its
orientation θ_k = atan2(b_k, w_k) ∈ (−π, π] (the direction of (w_k, b_k) in the plane of the
augmented input x̃ = (x, 1)) and its amplitude A_k = ‖(w_k, b_k)‖ (figure ``scatter.png``; Luo
et al. 2021, Fig. 5). The number of directions — groups of neurons with cosine ≥ ``cosine``
(``wn.condensation.group_neurons``) holding a share ``mass`` of Σ_k A_k² — summarises each
snapshot (``wn.regime.directions``), and ``wn.regime.classify`` gives each trained network its
regime (lazy / intermediate / condensed) from the initial and final states.

Theory
------
Luo et al. 2021, Sec. 6: in the condensed regime (γ > 1, γ′ < γ − 1) the input weights, tiny at
initialisation, grow in a few directions set by the data (for ReLU and 1-D input, the orientations
at which the gradient flow of a single neuron has stable fixed points) while the other neurons
stay small: the function is that of a network with a handful of neurons. In the linear regime
every neuron moves by O(m^{γ−1}) relative to its initial value, so the scatter at the end is the
initial one.

Measured (seed 0; width 1000; quick size = full size, the issue's width 1000 is fast: ~5 s of
CPU). Small init: 38 directions (cosine ≥ 0.99, 90% of the squared amplitude) at init, 3 after
100 steps, 4 at the loss tolerance (step 1111), RD 15.1; ``wn.regime.classify``: condensed.
NTK scale: 42 directions at init and at the tolerance (step 809), RD 0.032 (theory m^{γ−1} =
0.032); classify: lazy (parameter change 0.028, NTK change 0.010).

Metrics (``metrics.json``)
--------------------------
times, ntk_times, small_directions, ntk_directions (number of directions per snapshot), small_rd,
ntk_rd (RD of the input weights per snapshot), small_regime, ntk_regime (``wn.regime.classify``),
small_steps, ntk_steps (GD steps to the tolerance), width.

References
----------
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71). Zhou, Zhou, Luo, Zhang, Xu (2022). Towards understanding the condensation of
neural networks at initial training. NeurIPS. arXiv:2105.11686.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pydantic
import torch

from widenet import lab

METRICS = {
    "times": "small init: GD steps of the snapshots (the last: where the loss tolerance was "
    "reached)",
    "ntk_times": "NTK scale: GD steps of the snapshots",
    "small_directions": "small init: number of directions (groups of cosine >= cosine holding "
    "mass of the squared amplitude) at each snapshot",
    "ntk_directions": "NTK scale: the same",
    "small_rd": "small init: RD of the input weights at each snapshot",
    "ntk_rd": "NTK scale: RD at each snapshot",
    "small_regime": "wn.regime.classify of the small-init network (initial vs final state)",
    "ntk_regime": "wn.regime.classify of the NTK-scale network",
    "small_steps": "GD steps of the small-init network to the loss tolerance",
    "ntk_steps": "GD steps of the NTK-scale network to the loss tolerance",
    "width": "the width m",
}


class CondensationConfig(lab.Config):
    """Width 1000 at both sizes (fast); ``QUICK`` is the same size."""

    width: int = pydantic.Field(1000, ge=2)
    small: tuple[float, float] = (1.75, 0.0)
    ntk: tuple[float, float] = (0.5, 0.0)
    times: list[int] = pydantic.Field([0, 100, 300, 600], min_length=1)
    loss_tol: float = pydantic.Field(1e-5, gt=0)
    max_steps: int = pydantic.Field(100_000, ge=1)
    cosine: float = pydantic.Field(0.99, ge=-1, le=1)
    mass: float = pydantic.Field(0.9, gt=0, le=1)

    QUICK: ClassVar[dict] = {}

    @pydantic.field_validator("width")
    @classmethod
    def _even(cls, width):
        if width % 2:
            raise ValueError("ASI pairs the neurons: width must be even")
        return width

    @pydantic.field_validator("times")
    @classmethod
    def _sorted(cls, times):
        if any(t < 0 for t in times) or times != sorted(set(times)):
            raise ValueError("times must be distinct steps >= 0 in increasing order")
        return times


def _trajectory(a, w, x, y, config):
    """Snapshots (step, a, w) at config.times and at the loss tolerance."""
    import widenet as wn

    snaps, step = [], 0
    for t in [*config.times, config.max_steps]:
        if t > step:
            res = wn.phases.train_to_tolerance(
                [(a, w, 1.0)], x, y, loss_tol=config.loss_tol, max_steps=t - step, keep_params=True
            )
            a, w = res.a[0], res.w[0]
            step += int(res.steps[0])
            if res.converged[0]:
                snaps.append((step, a, w))
                return snaps, True
        if t < config.max_steps:
            snaps.append((step, a, w))
    return snaps, False


@lab.register(
    "condensation",
    summary="Orientation-amplitude scatter of a width-1000 ReLU net's neurons during training: "
    "few condensed directions at small init, none at NTK scale (Luo et al. 2021).",
    config=CondensationConfig,
    metrics=METRICS,
    key="small_regime",
)
def run(config: CondensationConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn

    x, y = wn.phases.PAPER_DATA
    x, y = x.to(ctx.device), y.to(ctx.device)
    out = {}
    runs = {}
    for key, (g, gp) in (("small", config.small), ("ntk", config.ntk)):
        s = wn.phases.scaling(g, gp, config.width)
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(0, 2**31)))
        a0, w0 = wn.phases.init_params(s, 1, generator=gen, device=ctx.device)
        snaps, ok = _trajectory(a0, w0, x, y, config)
        if not ok:
            raise RuntimeError(f"{key}: loss tolerance not reached in {config.max_steps} steps")
        dirs = [
            wn.regime.directions(w[:, :1], w[:, 1], cosine=config.cosine, mass=config.mass)[1]
            for _, _, w in snaps
        ]
        rds = [wn.phases.relative_distance(w0, w) for _, _, w in snaps]
        th = wn.regime.Thresholds(cosine=config.cosine, mass=config.mass)
        aT, wT = snaps[-1][1], snaps[-1][2]
        report = wn.regime.classify(
            wn.phases.as_module(a0, w0),
            wn.phases.as_module(a0, w0).state_dict(),
            wn.phases.as_module(aT, wT).state_dict(),
            x,
            thresholds=th,
        )
        ctx.log(f"{key}: {report.regime} ({report.reason})")
        runs[key] = (snaps, (g, gp))
        out[f"{key}_directions"] = dirs
        out[f"{key}_rd"] = rds
        out[f"{key}_regime"] = report.regime
        out[f"{key}_steps"] = snaps[-1][0]
        out[f"{key}_times"] = [t for t, _, _ in snaps]
    _plot(ctx, runs)
    times = out.pop("small_times")
    ntk_times = out.pop("ntk_times")
    return {"times": times, "ntk_times": ntk_times, **out, "width": config.width}


def _plot(ctx, runs):
    n_cols = max(len(s) for s, _ in runs.values())
    fig = ctx.figure(figsize=(3.2 * n_cols, 6.2))
    axes = fig.subplots(2, n_cols, squeeze=False)
    for row, (key, (snaps, (g, gp))) in enumerate(runs.items()):
        for col in range(n_cols):
            ax = axes[row, col]
            if col >= len(snaps):
                ax.axis("off")
                continue
            step, _, w = snaps[col]
            w = w.double().cpu().numpy()
            theta = np.arctan2(w[:, 1], w[:, 0])
            amp = np.hypot(w[:, 0], w[:, 1])
            ax.plot(theta, amp, ".", ms=3, color="tab:blue" if key == "small" else "tab:red")
            ax.set_xlim(-np.pi, np.pi)
            ax.set_xlabel("orientation θ = atan2(b, w)")
            last = " (loss tol.)" if col == len(snaps) - 1 else ""
            ax.set_title(f"{key} (γ={g:g}, γ′={gp:g}): step {step}{last}", fontsize=8)
            ax.grid(True, alpha=0.3)
        axes[row, 0].set_ylabel("amplitude ‖(w, b)‖")
    ctx.save_figure(fig, "scatter")
