"""embedding-plateaus: a wide tanh network trained from small initialisation lingers at the
critical points of narrow networks (Zhang, Zhang, Luo, Xu 2021, Fig. 1 and 4).

What it measures
----------------
Data: ``n_points`` inputs evenly spaced on [−1, 1] and the target
``y = 0.5 x − tanh(3(x − 0.3)) + 0.8 tanh(3(x + 0.5))`` (a line plus two tanh steps, so
that narrow networks of widths 1, 2, 3 fit it increasingly well). Loss
``L = 1/(2n) Σ (f(x_i) − y_i)²`` (:func:`widenet.landscape.loss_function`).

* **Wide network**: ``f(x) = Σ_k a_k tanh(w_k x + b_k)`` of width ``width`` (no output bias),
  every parameter drawn from N(0, 1/m³) — read as *variance* m^−3 (standard deviation
  m^−3/2), the usual N(mean, variance) notation; we could not consult their appendix from
  here to confirm. Full-batch gradient descent, ``steps`` steps of size ``lr``, in float64,
  from ``n_inits`` independent initialisations. The loss and the parameters are recorded at
  ``grid_points`` log-spaced steps.
* **Plateaus** (:func:`detect_plateaus`): maximal runs of recorded steps where the log–log
  slope ``|d log L / d log t|`` stays below ``slope_threshold`` for at least a factor
  ``min_duration`` in time, leaving out the initial run at the origin (loss above 99% of
  L(0)). A plateau's loss is the loss at its flattest recorded step. In log time a plateau
  is a stretch of constant loss however late it comes, while a drop has slope ≫ 1.
* **Narrow critical points**, independently: for widths 1, 2, 3, ``n_seeds`` starts
  N(0, 1.5²) of :func:`widenet.landscape.find_critical_point` with ``method="newton"``
  (converges to saddles as well as minima) and ``n_seeds`` with ``method="lbfgs"`` (minima),
  each certified ``‖∇L‖ ≤ 1e-9``, for two families:
  the tanh network itself, and its *linear limit* — one neuron taken to ``θ → 0, a → ∞``
  with ``a θ`` fixed, where ``a tanh(θ·x̃) → (aθ)·x̃`` and ``∇L → 0``: a critical point at
  infinity, i.e. ``w − 1`` tanh neurons plus an affine unit (width 1: the least-squares line).
  Distinct losses (relative gap > 1e-6) are kept, each with the inertia of its Hessian
  (:func:`widenet.landscape.inertia`).
* **Shown initialisation**: the first whose plateaus match the most distinct narrow widths
  is detailed (condensation, figure's right panel); every initialisation's plateaus and
  matches are in the ``init_*`` keys and its loss curve in the figure, so how often each
  plateau occurs is on record.
* **Matching**: a plateau matches the narrowest width having a critical loss within relative
  ``match_tolerance`` of it. At the plateau's flattest step the wide network is condensed
  (:func:`widenet.condensation.condense`, cosine ≥ ``threshold``, up to sign since tanh is
  odd): its effective width, the agreement of the merged network with the wide one, and
  the relative L2 gap between the merged network's output on the data and the matched
  narrow critical point's.

Theory
------
Zhang et al. (2021, 2022): every critical point of a narrow network is embedded (splitting
neurons preserves output and criticality) into critical points/affine subspaces of a wide
one, with more zero Hessian eigenvalues. From small initialisation the wide network's
neurons condense onto a few directions (one at first), so during training it *is* an
embedded narrow network; gradient descent slows down near the embedded critical points:
the loss plateaus at the narrow networks' critical losses.

For tanh and small initialisation the first stop is not a finite critical point: the
neurons are still small (|θ| ~ m^−1/2), so tanh acts linearly and the network sits at the
least-squares line — the width-1 critical point at infinity — and the second plateau is one
saturated neuron plus the linear part: the width-2 critical point at infinity. That is why
the linear-limit family is searched. The final stage approaches (and passes, since the wide
network can use more than 3 directions) the width-3 minimum.

Measured (seed 0). Narrow critical losses found (``critical_losses``): width 1: 0.0768
(minimum), 0.1212 (minimum), 0.13203 (linear limit = least-squares line), 0.3512 (saddle,
1 zero eigenvalue); width 2 adds 1.1e-4 (tanh minimum), 0.00241 and 0.00718 (linear limit)
and re-finds the width-1 losses with more zero and negative eigenvalues (e.g. 0.0768:
inertia (0, 0, 3) → (1, 1, 4) → (2, 2, 5) at widths 1, 2, 3 — their "degeneracy" grows by
one per width, the structure of their Fig. 4); width 3 reaches ~1e-19 (the target is two
tanh steps plus a line: exactly a width-3 linear limit) and a tanh minimum 8.6e-5.

Quick (width 100, 10 000 steps of 0.5, 2 initialisations, ~25 s CPU): both initialisations
plateau twice, at 0.13198 / 0.13199 (width 1, gap 0.04%) and 0.00699 / 0.00701 (width 2,
0.00718, gap 2.7%); shown: effective width 3 at both, of which 1 and 2 groups hold 99% of
the amplitude; merged vs wide 0.3% / 2.2%, merged vs the narrow critical function 0.4% /
2.4%; final loss 5e-5.

Full (width 500, 100 000 steps of 0.5, 4 initialisations, 188 s on an idle 2-core machine):
every initialisation plateaus at the width-1 critical loss (0.13202, gap 8e-5, steps
~27–1200). The width-2 plateau is intermittent: initialisation 3 stays at 0.007143 (gap
0.5%) from step 2210 to 16 370 (slope ≤ 0.1 over a factor 7.4 in time); initialisation 1
slows to slope 0.025 at 0.00713 but for a factor 1.65 only (< ``min_duration``);
initialisations 0 and 2 pass 0.0071–0.0073 at slopes 0.45 and 0.32 (the knees of the thin
curves) — so 1 of 4 is reported by the detector. In an earlier sweep of the first
initialisation of seeds 0–5, 3 of 6 plateaued there. Shown (initialisation 3): merged vs
wide 0.07% / 0.06%, merged vs the narrow critical function 0.09% / 0.10%, effective width
1 / 5 with 1 / 2 groups holding 99% of the amplitude. Every plateau of every
initialisation matches a narrow critical loss. Final losses 4e-10 to 9e-7.
Their numbers (width-1 0.11 with degeneracy 2, width-2 0.07 with degeneracy 1, width-3
minimum 1e-5) are on their data; ours share the staircase, not the values.

References
----------
Zhang, Zhang, Luo, Xu (2021). Embedding Principle of Loss Landscape of Deep Neural Networks.
NeurIPS. arXiv:2105.14573.
Zhang, Li, Zhang, Luo, Xu (2022). Embedding Principle: a hierarchical structure of loss
landscape of deep neural networks. J. Mach. Learn. 1(1). arXiv:2111.15527.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pydantic
import torch
from torch import nn

from widenet import lab
from widenet.experiments._common import gradient_descent
from widenet.report import PaperComparison, format_value

METRICS = {
    "plateau_losses": "loss at the flattest recorded step of each plateau, in order of time, "
    "for the shown initialisation (shown_init), as are the other per-plateau keys, "
    "initial_loss, final_loss and curve_losses",
    "critical_losses": "narrow width (1, 2, 3) -> sorted distinct critical losses found (tanh "
    "network and its linear limit)",
    "plateau_matches": "per plateau: the narrowest width with a critical loss within "
    "match_tolerance, or null",
    "effective_width_at_plateau": "per plateau: effective width of the wide network's hidden "
    "layer (condensation at cosine >= threshold, up to sign)",
    "dominant_width_at_plateau": "per plateau: fewest merged groups holding 99% of the summed "
    "amplitude ||a_G|| ||theta_G|| (leaves out neurons that never grew)",
    "plateau_steps": "per plateau: [first, flattest, last] recorded step",
    "plateau_relative_gap": "per plateau: |plateau loss - matched critical loss| / critical "
    "loss (null if unmatched)",
    "merge_relative_difference": "per plateau: ||f_wide - f_merged|| / ||f_wide|| on the data",
    "plateau_function_gap": "per plateau: ||f_merged - f_critical|| / ||f_critical|| on the data "
    "for the matched narrow critical point (null if unmatched)",
    "critical_points": "every distinct critical point: width, kind (tanh | linear_limit), loss, "
    "Hessian inertia (negative, zero, positive)",
    "shown_init": "index of the shown initialisation: the first whose plateaus match the most "
    "distinct narrow widths",
    "init_seeds": "torch seed of each initialisation of the wide network",
    "init_plateau_losses": "per initialisation: its plateau losses, in order of time",
    "init_plateau_matches": "per initialisation: the matched narrow width of each plateau, or null",
    "init_final_losses": "per initialisation: L after the last step",
    "init_curve_losses": "per initialisation: loss at each recorded step",
    "initial_loss": "L at initialisation",
    "final_loss": "L after the last step",
    "steps": "gradient-descent steps",
    "lr": "learning rate",
    "width": "hidden width of the wide network",
    "init_std": "standard deviation of every initial parameter (width ** -1.5)",
    "curve_steps": "recorded steps (log-spaced)",
    "curve_losses": "loss at each recorded step",
}


class EmbeddingPlateausConfig(lab.Config):
    """Full size by default (width 500, 100 000 steps, 4 initialisations); ``QUICK``: width 100,
    10 000 steps, 2 initialisations."""

    width: int = pydantic.Field(500, ge=4)
    n_points: int = pydantic.Field(20, ge=4)
    steps: int = pydantic.Field(100_000, ge=100)
    lr: float = pydantic.Field(0.5, gt=0)
    init_variance_exponent: float = pydantic.Field(3.0, gt=0)
    narrow_widths: list[int] = pydantic.Field([1, 2, 3], min_length=1)
    n_seeds: int = pydantic.Field(12, ge=1)
    n_inits: int = pydantic.Field(4, ge=1)
    grid_points: int = pydantic.Field(300, ge=20)
    slope_threshold: float = pydantic.Field(0.1, gt=0)
    min_duration: float = pydantic.Field(2.0, gt=1)
    match_tolerance: float = pydantic.Field(0.05, gt=0)
    threshold: float = pydantic.Field(0.9, gt=0.5, le=1.0)

    QUICK: ClassVar[dict] = {
        "width": 100,
        "steps": 10_000,
        "n_seeds": 4,
        "n_inits": 2,
        "grid_points": 200,
    }


def target(x: torch.Tensor) -> torch.Tensor:
    """The 1-D target: a line plus two tanh steps."""
    return 0.5 * x - torch.tanh(3 * (x - 0.3)) + 0.8 * torch.tanh(3 * (x + 0.5))


def detect_plateaus(
    steps, losses, *, slope_threshold: float = 0.1, min_duration: float = 2.0, ceiling=None
) -> list[tuple[int, int, int]]:
    """Plateaus of a loss curve recorded at increasing ``steps`` (ideally log-spaced).

    The local log–log slope ``s_j = d log L / d log t`` (centred differences,
    ``np.gradient``) is computed at each recorded step; a plateau is a maximal run of
    consecutive steps with ``|s_j| < slope_threshold`` spanning a time factor
    ``t_last / t_first ≥ min_duration``, whose losses stay below ``ceiling`` (if given).
    Returns ``(first, flattest, last)`` indices into ``steps`` per plateau, in order of time.
    """
    t = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if t.ndim != 1 or t.shape != loss.shape or len(t) < 3:
        raise ValueError("steps and losses must be 1-D of the same length >= 3")
    if np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError("steps must be positive and strictly increasing")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError("losses must be finite and positive")
    slope = np.gradient(np.log(loss), np.log(t))
    flat = np.abs(slope) < slope_threshold
    if ceiling is not None:
        flat &= loss < ceiling
    plateaus = []
    j = 0
    while j < len(t):
        if not flat[j]:
            j += 1
            continue
        k = j
        while k + 1 < len(t) and flat[k + 1]:
            k += 1
        if t[k] / t[j] >= min_duration:
            plateaus.append((j, j + int(np.argmin(np.abs(slope[j : k + 1]))), k))
        j = k + 1
    return plateaus


class _TanhPlusAffine(nn.Module):
    """``w − 1`` tanh neurons plus an affine unit: the width-w net with one linear-limit neuron."""

    def __init__(self, width: int):
        super().__init__()
        self.affine = nn.Linear(1, 1, dtype=torch.float64)
        self.tanh = None
        if width > 1:
            self.tanh = nn.Sequential(
                nn.Linear(1, width - 1, dtype=torch.float64),
                nn.Tanh(),
                nn.Linear(width - 1, 1, bias=False, dtype=torch.float64),
            )

    def forward(self, x):
        out = self.affine(x)
        return out if self.tanh is None else out + self.tanh(x)


def tanh_network(width: int) -> nn.Sequential:
    """``x -> Σ_k a_k tanh(w_k x + b_k)`` (float64, no output bias)."""
    return nn.Sequential(
        nn.Linear(1, width, dtype=torch.float64),
        nn.Tanh(),
        nn.Linear(width, 1, bias=False, dtype=torch.float64),
    )


def _init(model: nn.Module, std: float, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


# Newton from a random start converges in ~5-40 steps or not at all; L-BFGS (then Newton
# polishing) needs a few hundred iterations to reach a minimum of these 3-9 parameter nets.
_ITERS = {"newton": 60, "lbfgs": 300}


def narrow_critical_points(x, y, widths, n_seeds: int, seed: int, progress=iter) -> list[dict]:
    """Distinct critical points of the narrow tanh networks and their linear limits.

    For each width and family, ``n_seeds`` Newton runs (saddles and minima) and ``n_seeds``
    L-BFGS runs (minima) from N(0, 1.5²) starts; converged
    points (‖∇L‖ ≤ 1e-9) are grouped by loss (relative gap ≤ 1e-6) and the inertia of the
    Hessian is taken at the one with the smallest gradient.
    """
    from widenet import landscape

    gen = torch.Generator().manual_seed(seed)
    jobs = [(w, kind) for w in widths for kind in ("tanh", "linear_limit")]
    found: list[dict] = []
    for width, kind in progress(jobs):
        points = []
        for method in ("newton", "lbfgs"):
            for _ in range(n_seeds):
                model = tanh_network(width) if kind == "tanh" else _TanhPlusAffine(width)
                cp = landscape.find_critical_point(
                    _init(model, 1.5, gen), x, y, method=method, tol=1e-9, max_iter=_ITERS[method]
                )
                if cp.converged:
                    points.append(cp)
        points.sort(key=lambda cp: cp.loss)
        clusters: list[list] = []
        for cp in points:
            if clusters and abs(cp.loss - clusters[-1][0].loss) <= 1e-6 * clusters[-1][0].loss:
                clusters[-1].append(cp)
            else:
                clusters.append([cp])
        for cluster in clusters:
            best = min(cluster, key=lambda cp: cp.grad_norm)
            inertia = landscape.inertia(landscape.hessian(best.model, x, y))
            found.append(
                {
                    "width": width,
                    "kind": kind,
                    "loss": best.loss,
                    "negative": inertia.negative,
                    "zero": inertia.zero,
                    "positive": inertia.positive,
                    "grad_norm": best.grad_norm,
                    "count": len(cluster),
                    "model": best.model,
                }
            )
    return found


def _match(loss: float, critical: list[dict], tolerance: float):
    """The narrowest-width critical point within relative ``tolerance`` of ``loss``."""
    close = [c for c in critical if abs(loss - c["loss"]) <= tolerance * c["loss"]]
    if not close:
        return None
    return min(close, key=lambda c: (c["width"], abs(loss - c["loss"])))


def paper_comparison(config: dict, metrics: dict) -> PaperComparison:
    """Zhang et al.'s plateau claim beside this run's plateaus (report table)."""
    losses, matches = metrics["plateau_losses"], metrics["plateau_matches"]
    found = ", ".join(
        f"{format_value(loss)} (width {m})" if m is not None else f"{format_value(loss)} (none)"
        for loss, m in zip(losses, matches, strict=True)
    )
    widths = sorted({m for m in matches if m is not None})
    rows = [
        ("loss plateaus (matched narrow width)", "at critical losses of narrower networks", found),
        (
            "relative gap to the matched critical loss",
            "small",
            format_value(metrics["plateau_relative_gap"]),
        ),
        (
            "effective width at each plateau",
            "few condensed directions",
            format_value(metrics["effective_width_at_plateau"]),
        ),
    ]
    all_matched = bool(matches) and all(m is not None for m in matches)
    verdict = (
        f"Reproduced: every plateau of the shown run sits at a critical loss of a narrow "
        f"network (widths {', '.join(map(str, widths))}) and the network is condensed there."
        if all_matched
        else "Not reproduced: some plateau matches no narrow critical loss (see the rows)."
    )
    return PaperComparison(
        reference="Zhang et al. (2021), Fig. 1 and 4",
        paper_conditions="wide tanh network from small init, full-batch GD on a 1-D target",
        run_conditions=f"width {config['width']}, {config['n_points']} points, "
        f"{config['steps']} GD steps of {config['lr']:g}, {config['n_inits']} inits",
        rows=rows,
        verdict=verdict,
        same_size=config["width"] >= 500 and config["steps"] >= 100_000,
    )


@lab.register(
    "embedding-plateaus",
    summary="A width-500 tanh net from small init plateaus at the critical losses of widths "
    "1, 2, 3 and is condensed there (Zhang et al. 2021, Fig. 1/4).",
    config=EmbeddingPlateausConfig,
    metrics=METRICS,
    paper=paper_comparison,
)
def run(config: EmbeddingPlateausConfig, ctx: lab.RunContext) -> dict:
    from widenet import condensation

    x = torch.linspace(-1.0, 1.0, config.n_points, dtype=torch.float64)[:, None]
    y = target(x)
    m = config.width
    std = m ** (-config.init_variance_exponent / 2)
    init_seeds = [int(ctx.rng.integers(2**31)) for _ in range(config.n_inits)]
    grid = np.unique(np.round(np.geomspace(1, config.steps, config.grid_points)).astype(int))
    runs = [
        _train_wide(x, y, m, std, seed, config, grid, ctx, f"wide net {i + 1}/{config.n_inits}")
        for i, seed in enumerate(init_seeds)
    ]
    critical = narrow_critical_points(
        x,
        y,
        config.narrow_widths,
        config.n_seeds,
        int(ctx.rng.integers(2**31)),
        progress=lambda it: ctx.progress(it, description="narrow critical points"),
    )
    for r in runs:
        r["plateaus"] = detect_plateaus(
            grid,
            r["losses"],
            slope_threshold=config.slope_threshold,
            min_duration=config.min_duration,
            ceiling=0.99 * r["initial_loss"],
        )
        r["matches"] = [
            _match(r["losses"][flat], critical, config.match_tolerance)
            for _, flat, _ in r["plateaus"]
        ]
    # Detail the first initialisation whose plateaus match the most distinct narrow widths.
    shown = max(
        range(len(runs)),
        key=lambda i: (len({c["width"] for c in runs[i]["matches"] if c is not None}), -i),
    )
    run_ = runs[shown]
    losses = run_["losses"]
    rows = []
    for (first, flat, last), match in zip(run_["plateaus"], run_["matches"], strict=True):
        snap = tanh_network(m)
        with torch.no_grad():
            for p, v in zip(snap.parameters(), run_["snapshots"][flat], strict=True):
                p.copy_(v)
        cond = condensation.condense(snap, x, threshold=config.threshold, odd=True)
        gap = None
        if match is not None:
            with torch.no_grad():
                f_c = match["model"](x)
                gap = float(torch.linalg.norm(cond.model(x) - f_c) / torch.linalg.norm(f_c))
        rows.append(
            {
                "steps": [int(grid[first]), int(grid[flat]), int(grid[last])],
                "loss": losses[flat],
                "match": match,
                "effective_width": cond.effective_widths[0],
                "dominant": condensation.amplitude_cover(
                    cond.model.weights[1], cond.model.weights[0], cond.model.biases[0]
                ),
                "merge": cond.agreement.relative_difference,
                "gap": gap,
                "merged": cond.model,
            }
        )
    by_width = {
        str(w): sorted(c["loss"] for c in critical if c["width"] == w) for w in config.narrow_widths
    }
    _plot(ctx, grid, runs, shown, rows, critical, x, y)
    return {
        "plateau_losses": [r["loss"] for r in rows],
        "critical_losses": by_width,
        "plateau_matches": [None if r["match"] is None else r["match"]["width"] for r in rows],
        "effective_width_at_plateau": [r["effective_width"] for r in rows],
        "dominant_width_at_plateau": [r["dominant"] for r in rows],
        "plateau_steps": [r["steps"] for r in rows],
        "plateau_relative_gap": [
            None if r["match"] is None else abs(r["loss"] - r["match"]["loss"]) / r["match"]["loss"]
            for r in rows
        ],
        "merge_relative_difference": [r["merge"] for r in rows],
        "plateau_function_gap": [r["gap"] for r in rows],
        "critical_points": [
            {k: c[k] for k in ("width", "kind", "loss", "negative", "zero", "positive")}
            for c in critical
        ],
        "shown_init": shown,
        "init_seeds": init_seeds,
        "init_plateau_losses": [[r["losses"][f] for _, f, _ in r["plateaus"]] for r in runs],
        "init_plateau_matches": [
            [None if c is None else c["width"] for c in r["matches"]] for r in runs
        ],
        "init_final_losses": [r["final_loss"] for r in runs],
        "initial_loss": run_["initial_loss"],
        "final_loss": run_["final_loss"],
        "steps": config.steps,
        "lr": config.lr,
        "width": m,
        "init_std": std,
        "curve_steps": grid.tolist(),
        "curve_losses": losses,
        "init_curve_losses": [r["losses"] for r in runs],
    }


def _train_wide(x, y, m, std, seed, config, grid, ctx, description) -> dict:
    """Full-batch GD of the wide net from N(0, std²); loss and parameters at the ``grid`` steps."""
    net = _init(tanh_network(m), std, torch.Generator().manual_seed(seed))
    grid_set = set(grid.tolist())
    losses, snapshots = [], []
    bar = iter(ctx.progress(range(config.steps + 1), description=description))

    def record(step):
        next(bar, None)
        if step in grid_set:
            with torch.no_grad():
                losses.append(float(0.5 * ((net(x) - y) ** 2).mean()))
            snapshots.append([p.detach().clone() for p in net.parameters()])

    with torch.no_grad():
        initial_loss = float(0.5 * ((net(x) - y) ** 2).mean())
    final_loss = gradient_descent(net, x, y, config.lr, config.steps, on_step=record)
    for _ in bar:  # close the progress bar
        pass
    return {
        "losses": losses,
        "snapshots": snapshots,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
    }


def _plot(ctx, grid, runs, shown, rows, critical, x, y):
    fig = ctx.figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    for i, r in enumerate(runs):
        if i != shown:
            label = "other initialisations" if i == (1 if shown == 0 else 0) else None
            ax1.loglog(grid, r["losses"], "-", color="tab:cyan", lw=0.8, alpha=0.6, label=label)
    losses = runs[shown]["losses"]
    ax1.loglog(grid, losses, "-", color="tab:blue", lw=2, label=f"wide network (init {shown})")
    colors = {1: "tab:red", 2: "tab:green", 3: "tab:purple"}
    seen = set()
    for c in critical:
        label = f"width-{c['width']} critical losses" if c["width"] not in seen else None
        seen.add(c["width"])
        ax1.axhline(
            c["loss"],
            color=colors.get(c["width"], "0.5"),
            ls="--" if c["kind"] == "tanh" else ":",
            lw=0.8,
            label=label,
        )
    for r in rows:
        ax1.plot(r["steps"][1], r["loss"], "ko", ms=6)
        ax1.axvspan(r["steps"][0], r["steps"][2], color="0.85", alpha=0.5)
    ax1.set_ylim(max(min(losses) / 3, 1e-12), max(losses) * 2)
    ax1.set_xlabel("gradient-descent step")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss (plateaus shaded; dashed: tanh, dotted: linear-limit)", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    xs = x.reshape(-1).numpy()
    ax2.plot(xs, y.reshape(-1).numpy(), "k.", ms=8, label="target")
    for i, r in enumerate(rows):
        with torch.no_grad():
            ax2.plot(
                xs,
                r["merged"](x).reshape(-1).numpy(),
                "-",
                lw=2,
                alpha=0.7,
                label=f"plateau {i + 1}: merged (width {r['effective_width']})",
            )
            if r["match"] is not None:
                ax2.plot(xs, r["match"]["model"](x).reshape(-1).numpy(), "--", color="0.2", lw=1)
    ax2.set_xlabel("x")
    ax2.set_ylabel("output")
    ax2.set_title("Output at each plateau (dashed: matched narrow critical point)", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    ctx.save_figure(fig, "plateaus")
