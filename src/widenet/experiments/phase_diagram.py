"""phase-diagram: the linear / critical / condensed regimes of two-layer ReLU nets, measured.

What it measures
----------------
For every (γ, γ′) of a grid and every width m of a sweep, a two-layer ReLU network
f(x) = (1/α) Σ_k a_k relu(w_kᵀ x̃), x̃ = (x, 1), is initialised at that point of the phase
diagram (``wn.phases.scaling``: α = 1, standard deviations β1 = m^{−(γ+γ′)/2} for a_k and
β2 = m^{−(γ−γ′)/2} for w_k, so that κ = β1β2/α = m^{−γ} and κ′ = β1/β2 = m^{−γ′}) with the
anti-symmetric initialisation ASI (f ≡ 0 at init), and trained by full-batch gradient descent
on L = (1/2n) Σ (f − y)² on the 1-D problem ``wn.phases.PAPER_DATA`` (four points on [−1, 1])
until L < ``loss_tol``. The order parameter RD = ‖θ_w(T) − θ_w(0)‖ / ‖θ_w(0)‖ of the input
weights at that time is recorded, and its log-log slope S_w against m is fitted per point. All
networks of a run (points × widths) train together (``wn.phases.measure_slopes``); the step of
each is min(``lr_max``, ``lr_scale`` · n / tr Θ) (see ``wn.phases``).

Figures: ``phase_diagram.png``, the heat map of S_w over (γ, γ′) with the theoretical boundary
{γ = 1, γ′ ≤ 0} ∪ {γ ≥ 1, γ′ = γ − 1} and the named points (NTK, LeCun/He, Xavier/mean field);
``rd_vs_width.png``, log RD against log m on the γ′ = 0 line (Luo et al. 2021, Fig. 3).

Theory
------
Luo, Xu, Ma, Zhang (2021), Sec. 3-5: as m → ∞ RD → 0 in the linear regime (γ < 1 or
γ′ > γ − 1), RD = O(1) on the critical line, RD → ∞ in the condensed regime (γ > 1 and
γ′ < γ − 1). On γ′ = 0 a kernel (NTK) estimate gives RD ~ m^{γ−1} in the linear regime; in the
condensed regime the trained input weights have O(1) norm on a few directions while
‖θ_w(0)‖ ~ m^{(1−γ)/2}, so RD ~ m^{(γ−1)/2}. Their Fig. 3 (γ′ = 0, widths 1000-40000): S_w =
−0.506 at γ = 0.5, 0.007 at γ = 1, 0.372 at γ = 1.75.

Measured (loss_tol 1e-5). Quick (run seed 0; m = 500-4000, γ′ = 0; ~8 s of CPU): S_w =
−0.519 (γ = 0.5), 0.038 (γ = 1), 0.371 (γ = 1.75). Full widths 1000-40000 on the γ′ = 0 line
(``wn.phases.measure_slopes`` seed 0; 34 s of CPU): −0.522, 0.001, 0.376, with RD from 0.035 to
0.0051 (γ = 0.5), 0.73-0.77 (γ = 1), 16 to 64 (γ = 1.75), each network reaching the tolerance in
630-1350 steps; the slow test ``tests/test_phase_diagram.py::test_full_size_gamma_prime_zero``
asserts the run-seed-0 line within ±0.15 of the paper; it measured −0.498, −0.003, 0.389
(40 s of CPU).

The whole 8 x 5 grid at full size (``widenet run phase-diagram``, run seed 0, widths
1000-40000: 200 networks of 3.04 million neurons in all; 2545 s on one thread beside other jobs,
<= 4778 steps): every network converged; every linear point has S_w < 0 (−0.235 to −4.44),
every condensed point S_w > 0 (0.135 to 0.747), and the four points on the critical line
|S_w| <= 0.011 (+0.006 at (1, −0.5), −0.006 at (1, 0), −0.011 at (1.5, 0.5), −0.008 at (2, 1));
on γ′ = 0: −0.500, −0.006, 0.384 at γ = 0.5, 1, 1.75 (the paper: −0.506, 0.007, 0.372).

The whole 8 x 5 grid at the quick widths 500-4000 (run seed 0,
``--set widths=[500,1000,2000,4000]``; 110 s of CPU, <= 5721 steps): every linear point has
S_w < 0 (−0.15 to −3.8, steeper as γ′ grows), every condensed point S_w > 0 (0.16 to 0.76), and
the four points on the critical line |S_w| <= 0.05 (−0.003 at (1, −0.5), −0.048 at (1, 0),
−0.010 at (1.5, 0.5), −0.035 at (2, 1)).

Metrics (``metrics.json``)
--------------------------
points (a list of {gamma, gamma_prime, slope, regime, rd, steps, converged, final_loss}; regime
is the theoretical one), widths, all_converged.

References
----------
Luo, Xu, Ma, Zhang (2021). Phase diagram for two-layer ReLU neural networks at infinite-width
limit. JMLR 22(71):1-47. arXiv:2007.07497.
"""

from __future__ import annotations

from typing import ClassVar

import matplotlib.colors
import numpy as np
import pydantic

from widenet import lab
from widenet.experiments._common import Widths
from widenet.report import PaperComparison, format_value, text_color_for

METRICS = {
    "points": "one object per grid point: gamma, gamma_prime, slope (S_w, the log-log slope of "
    "RD vs width), regime (theoretical: linear / critical / condensed), rd (per width), steps "
    "(GD steps to the loss tolerance, per width), converged, final_loss",
    "widths": "the width sweep m",
    "all_converged": "whether every network reached the loss tolerance within max_steps",
}


class PhaseDiagramConfig(lab.Config):
    """Full size: widths 1000-40000 on an 8 x 5 (γ, γ′) grid; ``QUICK``: 4 widths, 3 γ."""

    widths: Widths = [1000, 5000, 10000, 20000, 40000]
    gammas: list[float] = pydantic.Field([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], min_length=1)
    gamma_primes: list[float] = pydantic.Field([-0.5, 0.0, 0.5, 1.0, 1.5], min_length=1)
    loss_tol: float = pydantic.Field(1e-5, gt=0)
    max_steps: int = pydantic.Field(300_000, ge=1)
    lr_scale: float = pydantic.Field(0.5, gt=0)
    lr_max: float = pydantic.Field(1.0, gt=0)
    asi: bool = True

    QUICK: ClassVar[dict] = {
        "widths": [500, 1000, 2000, 4000],
        "gammas": [0.5, 1.0, 1.75],
        "gamma_primes": [0.0],
    }

    @pydantic.field_validator("widths")
    @classmethod
    def _even(cls, widths):
        if any(m < 2 for m in widths):
            raise ValueError("widths must be >= 2")
        return widths


# Luo et al. (2021), Fig. 3: slope S_w of log RD against log m on gamma' = 0, widths 1000-40000.
PAPER_SLOPES = {0.5: -0.506, 1.0: 0.007, 1.75: 0.372}


def paper_comparison(config: dict, metrics: dict) -> PaperComparison:
    """Luo et al.'s Fig. 3 slopes on the gamma' = 0 line beside this run's (report table)."""
    ours = {p["gamma"]: p["slope"] for p in metrics["points"] if p["gamma_prime"] == 0.0}
    rows, close = [], []
    for gamma, paper in PAPER_SLOPES.items():
        mine = ours.get(gamma)
        rows.append((f"S_w at γ = {gamma}, γ′ = 0", f"{paper:+.3f}", format_value(mine)))
        if mine is not None:
            close.append(abs(mine - paper) <= 0.15)
    signs = [
        (p["slope"] < 0) == (p["regime"] == "linear")
        for p in metrics["points"]
        if p["regime"] in ("linear", "condensed")
    ]
    rows.append(
        ("points whose sign of S_w matches their regime", "all", f"{sum(signs)} of {len(signs)}")
    )
    if not close:
        verdict = "No γ′ = 0 point of the paper's Fig. 3 in this run's grid."
    elif all(close) and all(signs):
        verdict = (
            f"Reproduced: the {len(close)} slope(s) on γ′ = 0 are within ±0.15 of the paper's and "
            "every linear point has S_w < 0, every condensed point S_w > 0."
        )
    else:
        verdict = "Not reproduced at this size: see the rows above."
    widths = metrics["widths"]
    return PaperComparison(
        reference="Luo et al. (2021), Fig. 3",
        paper_conditions="γ′ = 0, widths 1000 … 40000, trained to loss 1e-5 (4 points on [-1, 1])",
        run_conditions=f"{len(metrics['points'])} (γ, γ′) points, widths {widths[0]} … "
        f"{widths[-1]} ({len(widths)}), loss_tol {config['loss_tol']:g}",
        rows=rows,
        verdict=verdict,
        same_size=min(widths) >= 1000 and max(widths) >= 40000,
    )


@lab.register(
    "phase-diagram",
    summary="Phase diagram of two-layer ReLU nets: slope of RD (relative change of input "
    "weights) vs width over (gamma, gamma'), linear/critical/condensed (Luo et al. 2021).",
    config=PhaseDiagramConfig,
    metrics=METRICS,
    paper=paper_comparison,
)
def run(config: PhaseDiagramConfig, ctx: lab.RunContext) -> dict:
    import widenet as wn

    if config.asi and any(m % 2 for m in config.widths):
        raise ValueError("asi=True pairs the neurons: every width must be even")
    points = [(g, gp) for gp in config.gamma_primes for g in config.gammas]
    seed = int(ctx.rng.integers(0, 2**31 - 10**6))
    ctx.log(f"{len(points)} points x {len(config.widths)} widths, trained together")

    def callback(step, active):
        ctx.log(f"step {step}: {active} network(s) still above the loss tolerance")

    results = wn.phases.measure_slopes(
        points,
        config.widths,
        seed=seed,
        asi=config.asi,
        device=ctx.device,
        loss_tol=config.loss_tol,
        max_steps=config.max_steps,
        lr_scale=config.lr_scale,
        lr_max=config.lr_max,
        callback=callback,
    )
    for r in results:
        r.pop("widths")
    _plot_heatmap(ctx, config, results)
    _plot_rd(ctx, config, results)
    return {
        "points": results,
        "widths": list(config.widths),
        "all_converged": all(r["converged"] for r in results),
    }


def _boundary(ax, hi, glo):
    kw = dict(color="w", lw=2.5)
    ax.plot([1.0, 1.0], [glo, 0.0], **kw)
    ax.plot([1.0, hi], [0.0, hi - 1.0], **kw)
    box = dict(boxstyle="round", fc="0.2", alpha=0.6, lw=0)
    ax.text(0.03, 0.95, "linear", color="w", transform=ax.transAxes, va="top", bbox=box)
    ax.text(0.97, 0.05, "condensed", color="w", transform=ax.transAxes, ha="right", bbox=box)


def _plot_heatmap(ctx, config, results):
    import widenet as wn

    gs, gps = sorted(set(config.gammas)), sorted(set(config.gamma_primes))
    grid = np.full((len(gps), len(gs)), np.nan)
    for r in results:
        grid[gps.index(r["gamma_prime"]), gs.index(r["gamma"])] = r["slope"]
    fig = ctx.figure(figsize=(7.5, 5.5))
    ax = fig.subplots()

    def edges(v):
        v = np.asarray(v, dtype=float)
        if len(v) == 1:
            return np.array([v[0] - 0.25, v[0] + 0.25])
        mid = 0.5 * (v[1:] + v[:-1])
        return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])

    ex, ey = edges(gs), edges(gps)
    # White at S_w = 0 and each sign on its own linear scale, so that the sign, the point of
    # the diagram, stays visible next to the steep slopes far in the linear regime; the colour
    # bar covers the whole range of the data (at least [-1, 1]).
    finite = grid[np.isfinite(grid)]
    lo = min(-1.0, float(finite.min())) if finite.size else -1.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    norm = matplotlib.colors.TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
    mesh = ax.pcolormesh(ex, ey, grid, cmap="coolwarm", norm=norm, shading="flat")
    fig.colorbar(mesh, ax=ax, label="slope S_w of log RD vs log m")
    for r in results:
        ax.annotate(
            f"{r['slope']:.2f}",
            (r["gamma"], r["gamma_prime"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=9,
            color=text_color_for(mesh.cmap(norm(r["slope"]))),
        )
    _boundary(ax, ex[-1], ey[0])
    named: dict[tuple[float, float], list[str]] = {}
    for name, point in wn.phases.NAMED_POINTS.items():
        named.setdefault(point, []).append(name)
    for (g, gp), names in named.items():
        if ex[0] <= g <= ex[-1] and ey[0] <= gp <= ey[-1]:
            ax.plot(g, gp, "k*", ms=6)
            label = " / ".join(names)
            ax.annotate(
                label, (g, gp), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7
            )
    ax.set_xlim(ex[0], ex[-1])
    ax.set_ylim(ey[0], ey[-1])
    ax.set_xlabel("γ = −log κ / log m,  κ = β1β2/α")
    ax.set_ylabel("γ′ = −log κ′ / log m,  κ′ = β1/β2")
    ax.set_title(
        f"RD slope over widths {config.widths[0]}-{config.widths[-1]} (ASI, 1-D data); "
        "white: critical line",
        fontsize=10,
    )
    ctx.save_figure(fig, "phase_diagram")


def _plot_rd(ctx, config, results):
    line = [r for r in results if r["gamma_prime"] == 0.0] or results
    fig = ctx.figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for r in line:
        ax.loglog(
            config.widths,
            r["rd"],
            "o-",
            label=f"γ={r['gamma']:g}, γ′={r['gamma_prime']:g}: slope {r['slope']:.3f}",
        )
    ax.set_xlabel("width m")
    ax.set_ylabel("RD = ‖θ_w(T) − θ_w(0)‖ / ‖θ_w(0)‖")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Relative change of the input weights at the loss tolerance", fontsize=10)
    ctx.save_figure(fig, "rd_vs_width")
