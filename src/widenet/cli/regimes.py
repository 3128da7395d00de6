"""Regimes of training: ``widenet phase-point`` (phase diagram), ``regime`` (lazy / condensed
classifier of a trained MLP), ``frequency`` (F-Principle measures); :mod:`widenet.phases`,
:mod:`widenet.regime`, :mod:`widenet.frequency`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    B_STD,
    PARAM_HELP,
    REGIMES,
    W_STD,
    ActivationOpt,
    BStdOpt,
    DataOpt,
    DataSeedOpt,
    OverwriteOpt,
    StandardizeOpt,
    WStdOpt,
    err,
    fail,
    flag,
    out,
    quantity_table,
    saved,
    topic,
)

app, command = topic(REGIMES)

JsonOutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Also write a .json.")]


def _write(out_: Path | None, payload: dict, overwrite: bool) -> None:
    from widenet import io

    if out_ is not None:
        io.check_suffix(out_, (".json",))
        io.write_json(out_, payload, overwrite=overwrite)


@command("phase-point")
def phase_point(
    gamma: Annotated[float, typer.Option("--gamma", help="γ = −log(β1β2/α) / log m.")],
    gamma_prime: Annotated[float, typer.Option("--gamma-prime", help="γ′ = −log(β1/β2) / log m.")],
    width: Annotated[int, typer.Option("--width", help="Width m for the scalings.")] = 1000,
    alpha: Annotated[float, typer.Option("--alpha", help="Output scale α (held fixed).")] = 1.0,
    tol: Annotated[
        float, typer.Option("--tol", help="Distance to the boundary that counts as critical.")
    ] = 1e-9,
    measure: Annotated[
        bool,
        flag(
            "--measure",
            help="Also train ASI networks on the 1-D problem and fit the RD slope over --widths.",
        ),
    ] = False,
    widths: Annotated[
        list[int] | None,
        typer.Option(
            "--widths", help="Widths of the sweep (repeatable; default 500 1000 2000 4000)."
        ),
    ] = None,
    loss_tol: Annotated[
        float, typer.Option("--loss-tol", help="Train until the loss is below this.")
    ] = 1e-5,
    max_steps: Annotated[
        int, typer.Option("--max-steps", help="Step limit per network.")
    ] = 300_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisations.")] = 0,
    out_: JsonOutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Regime (linear / critical / condensed) and scalings (α, β1, β2) of a point (γ, γ′)."""
    from widenet import phases

    try:
        point = phases.PhasePoint.of(gamma, gamma_prime, tol=tol)
        s = phases.scaling(gamma, gamma_prime, width, alpha=alpha)
        payload = {
            "gamma": gamma,
            "gamma_prime": gamma_prime,
            "regime": point.regime,
            "named_points": list(point.names),
            "boundary_distance": phases.boundary_distance(gamma, gamma_prime),
            "width": width,
            "kappa": s.kappa,
            "kappa_prime": s.kappa_prime,
            "alpha": s.alpha,
            "beta1_std": s.beta1,
            "beta1_variance": s.var1,
            "beta2_std": s.beta2,
            "beta2_variance": s.var2,
        }
        if measure:
            sweep = widths or [500, 1000, 2000, 4000]
            res = phases.rd_slope(
                gamma, gamma_prime, sweep, seed=seed, loss_tol=loss_tol, max_steps=max_steps
            )
            payload.update(
                slope=res["slope"], widths=res["widths"], rd=res["rd"], converged=res["converged"]
            )
        _write(out_, payload, overwrite)
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        raise fail(str(error)) from None
    out().print(quantity_table(payload.items()))
    if out_ is not None:
        saved(out_)


@command("regime")
def regime_cmd(
    initial: Annotated[
        Path,
        typer.Option("--initial", help="Initial state dict (.safetensors or torch.save weights)."),
    ],
    trained: Annotated[Path, typer.Option("--trained", help="Trained state dict, same layout.")],
    data: DataOpt = "digits",
    n: Annotated[
        int | None, typer.Option("--n", help="Number of points (default 128, of a larger set).")
    ] = 128,
    activation: ActivationOpt = "relu",
    parameterization: Annotated[
        str,
        typer.Option(
            "--parameterization",
            help=PARAM_HELP,
        ),
    ] = "standard",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer", help="Linear layer whose neurons are grouped (default: the first)."
        ),
    ] = None,
    ntk_points: Annotated[
        int, typer.Option("--ntk-points", help="Points for the NTK change.")
    ] = 128,
    lazy_change: Annotated[
        float,
        typer.Option(
            "--lazy-change", help="Lazy if the relative parameter change is at most this."
        ),
    ] = 0.1,
    lazy_ntk_change: Annotated[
        float,
        typer.Option("--lazy-ntk-change", help="... and the relative NTK change at most this."),
    ] = 0.1,
    condensed_change: Annotated[
        float,
        typer.Option(
            "--condensed-change", help="Condensed if the first layer moved at least this ..."
        ),
    ] = 1.0,
    condensed_ratio: Annotated[
        float,
        typer.Option(
            "--condensed-ratio", help="... onto at most this fraction of its initial directions."
        ),
    ] = 0.5,
    cosine: Annotated[
        float, typer.Option("--cosine", help="Cosine similarity that groups two neurons.")
    ] = 0.9,
    mass: Annotated[
        float,
        typer.Option("--mass", help="Share of the squared amplitude the counted directions hold."),
    ] = 0.9,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    out_: JsonOutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Lazy, intermediate or condensed: classify a trained MLP from its initial and final states."""
    import dataclasses

    from widenet import io, networks, regime

    try:
        s0 = io.load_state_dict(initial, "--initial")
        s1 = io.load_state_dict(trained, "--trained")
        model = networks.mlp_from_state_dict(
            s0, activation, parameterization=parameterization, w_std=w_std, b_std=b_std
        )
        dtype = next(iter(s0.values())).dtype
        x = io.load_inputs(data, n, seed=data_seed, standardize=standardize, dtype=dtype)
        fan_in = model[0].in_features
        if x.shape[1] != fan_in:
            raise ValueError(f"the model takes {fan_in} features but --data has {x.shape[1]}")
        th = regime.Thresholds(
            lazy_change, lazy_ntk_change, condensed_change, condensed_ratio, cosine, mass
        )
        rep = regime.classify(model, s0, s1, x, thresholds=th, layer=layer, ntk_points=ntk_points)
        payload = rep.as_dict()
        _write(out_, payload, overwrite)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(f"[bold]{rep.regime}[/]: {rep.reason}", soft_wrap=True)
    table = Table("measure", "value", box=None, pad_edge=False)
    for f in dataclasses.fields(rep):
        value = getattr(rep, f.name)
        if f.name in ("regime", "reason", "layer_changes", "thresholds"):
            continue
        table.add_row(f.name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if out_ is not None:
        saved(out_)


@command("frequency")
def frequency_cmd(
    target: Annotated[Path, typer.Option("--target", help="Targets y: (n,) or (n, k) .npy/.csv.")],
    outputs: Annotated[
        Path | None,
        typer.Option(
            "--outputs",
            help="Required: network outputs h, same shape as --target (or (T, n) for a 1-D "
            "series, one row per time).",
        ),
    ] = None,
    output_deprecated: Annotated[
        Path | None, typer.Option("--output", hidden=True, help="Deprecated: --outputs.")
    ] = None,
    x: Annotated[
        Path | None, typer.Option("--x", help="Input points (n, d), for --delta and --frequency.")
    ] = None,
    delta: Annotated[
        list[float] | None,
        typer.Option("--delta", help="Filtering method: variance δ of the Gaussian (repeatable)."),
    ] = None,
    frequency: Annotated[
        list[float] | None,
        typer.Option(
            "--frequency",
            help="Projection method: frequency k along the first principal direction (repeatable).",
        ),
    ] = None,
    rel_height: Annotated[
        float, typer.Option("--rel-height", help="DFT peaks: least height relative to the largest.")
    ] = 0.1,
    out_: JsonOutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """F-Principle measures: DFT-peak errors (1-D grid), projection or filtering (e_low, e_high)."""
    from widenet import frequency as fq
    from widenet import io

    try:
        if output_deprecated is not None:
            if outputs is not None:
                raise ValueError("give --outputs only (--output is its deprecated old name)")
            err().print("[yellow]warning:[/] --output is deprecated; use --outputs")
            outputs = output_deprecated
        if outputs is None:
            raise ValueError("--outputs is required (the network outputs h)")
        y = io.load_array(target, "--target")
        h = io.load_array(outputs, "--outputs")
        payload: dict = {}
        if delta or frequency:
            if x is None:
                raise ValueError("--delta and --frequency need the input points (--x)")
            xs = io.load_array(x, "--x")
            if delta:
                fe = fq.filter_errors(xs, y, h, delta)
                payload["filtering"] = {
                    "delta": list(fe.deltas),
                    "e_low": list(fe.e_low),
                    "e_high": list(fe.e_high),
                    "low_fraction": list(fe.low_fraction),
                }
            if frequency:
                rel = fq.projection_relative_error(xs, y, h, frequency)
                payload["projection"] = {
                    "frequency": list(frequency),
                    "relative_error": rel.tolist(),
                }
        else:
            peaks = fq.dft_peaks(y, rel_height=rel_height)
            peak_err = fq.peak_relative_error(y, h, peaks)
            payload["dft_peaks"] = {"peaks": peaks.tolist(), "relative_error": peak_err.tolist()}
        _write(out_, payload, overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    console = out()
    if "dft_peaks" in payload:
        d = payload["dft_peaks"]
        table = Table("peak k", "relative error |ĥ_k − ŷ_k| / |ŷ_k|", box=None, pad_edge=False)
        errs = d["relative_error"]
        for j, k in enumerate(d["peaks"]):
            col = [row[j] for row in errs] if isinstance(errs[0], list) else [errs[j]]
            table.add_row(str(k), " ".join(f"{e:.4g}" for e in col))
        console.print(table)
    if "filtering" in payload:
        f = payload["filtering"]
        table = Table("δ (variance)", "e_low", "e_high", "low share", box=None, pad_edge=False)
        for row in zip(f["delta"], f["e_low"], f["e_high"], f["low_fraction"], strict=True):
            table.add_row(*(f"{v:.4g}" for v in row))
        console.print(table)
    if "projection" in payload:
        p = payload["projection"]
        table = Table("frequency", "relative error", box=None, pad_edge=False)
        for k, e in zip(p["frequency"], p["relative_error"], strict=True):
            table.add_row(f"{k:g}", f"{e:.4g}")
        console.print(table)
    if out_ is not None:
        saved(out_)
