"""Initialization and signal propagation: ``widenet signal``, ``critical-init``
(:mod:`widenet.signal`, :mod:`widenet.init`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    B_STD,
    DTYPE,
    INIT,
    W_STD,
    ActivationOpt,
    BStdOpt,
    DataOpt,
    DataSeedOpt,
    DepthOpt,
    DtypeOpt,
    OverwriteOpt,
    ParamOpt,
    StandardizeOpt,
    WStdOpt,
    fail,
    flag,
    out,
    saved,
    topic,
)

app, command = topic(INIT)

B_VAR_HELP = "Bias variance sigma_b^2 of the critical initialisation."

_TRUST_HELP = (
    "Accept a full model pickled with torch.save(model, path). Unpickling runs whatever code "
    "the file names, so a malicious file can do anything your account can: use only for files "
    "you made yourself. Without it --model is read as weights only (safetensors or a state dict)."
)


def _init_kwargs(scheme: str, activation: str, b_var: float) -> dict:
    """The activation-dependent arguments of a wn.init scheme (Kaiming's gain, critical's point)."""
    if scheme in ("kaiming_normal", "kaiming_uniform"):
        return {"activation": activation}
    if scheme == "critical":
        return {"activation": activation, "b_var": b_var}
    return {}


def _model(model_path: Path, trust_pickle: bool, activation, parameterization, w_std, b_std):
    """The --model file as an nn.Module: weights only, unless --trust-pickle."""
    from widenet import io, networks

    if trust_pickle:
        return io.load_pickled_module(model_path, "--model")
    state = io.load_state_dict(model_path, "--model")
    return networks.mlp_from_state_dict(
        state, activation, parameterization=parameterization, w_std=w_std, b_std=b_std
    )


@command("signal")
def signal_cmd(
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Weights of an nn.Sequential MLP (.safetensors or a torch.save state dict; "
            "layers from the file, activation from --activation, --parameterization). Default: "
            "build an MLP from --depth/--width/--activation/--init.",
        ),
    ] = None,
    trust_pickle: Annotated[bool, flag("--trust-pickle", help=_TRUST_HELP)] = False,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    depth: DepthOpt = 10,
    width: Annotated[int, typer.Option("--width", help="Hidden width of the built MLP.")] = 256,
    activation: ActivationOpt = "relu",
    scheme: Annotated[
        str,
        typer.Option(
            "--init",
            help="wn.init scheme: naive, xavier_normal, xavier_uniform, kaiming_normal, "
            "kaiming_uniform, lecun_normal, lecun_uniform, orthogonal, ntk, critical.",
        ),
    ] = "kaiming_normal",
    b_var: Annotated[float, typer.Option("--b-var", help=B_VAR_HELP)] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the weights and cotangent.")] = 0,
    data: DataOpt = "digits",
    n: Annotated[
        int | None, typer.Option("--n", help="Number of points (default: 256, or all if fewer).")
    ] = None,
    dtype: DtypeOpt = DTYPE,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Healthy range [1/T, T] of the ratios.")
    ] = 100.0,
    out_: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the full report as JSON.")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Forward variance and gradient norms per layer at initialization, their mean-field
    prediction, and a verdict (healthy / vanishing / exploding).

    --w-std/--b-std/--parameterization describe a --model weights file (ntk: widenet's
    wn.mlp(...).network); a built MLP is initialised by --init instead.
    """
    import widenet as wn
    from widenet import io

    try:
        torch_dtype = io.torch_dtype(dtype)
        x = io.load_inputs(
            data, n, seed=data_seed, standardize=standardize, dtype=torch_dtype, at_most=256
        )
        if model_path is not None:
            model = _model(model_path, trust_pickle, activation, parameterization, w_std, b_std)
            model.eval()
            x = x.to(next(model.parameters()).dtype)
            what = f"model {model_path.name}"
        else:
            if trust_pickle:
                raise ValueError("--trust-pickle goes with --model")
            arch = wn.mlp(depth=depth, activation=activation)
            model = arch.network(x.shape[1], width, seed=seed, dtype=torch_dtype)
            wn.init.initialize(model, scheme, seed=seed, **_init_kwargs(scheme, activation, b_var))
            what = f"depth-{depth} width-{width} {activation} MLP, {scheme} init"
        report = wn.signal_propagation(model, x, seed=seed, threshold=threshold)
        if out_ is not None:
            io.write_json(out_, report.to_dict(), overwrite=overwrite)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(f"{what} on {x.shape[0]} points of {data}", soft_wrap=True)
    th = report.theory
    table = Table(
        "layer",
        "width",
        "mean h^2",
        "(theory)",
        "||dL/dh||^2",
        "(theory)",
        "||dL/dW||",
        "(theory)",
        box=None,
        pad_edge=False,
    )
    for i, name in enumerate(report.layers):
        table.add_row(
            name,
            str(report.widths[i]),
            f"{report.forward_variance[i]:.4g}",
            "" if th is None else f"{th.forward_variance[i]:.4g}",
            f"{report.delta_norm2[i]:.4g}",
            "" if th is None else f"{th.delta_norm2[i]:.4g}",
            f"{report.grad_norm[i]:.4g}",
            "" if th is None else f"{th.grad_norm[i]:.4g}",
        )
    console.print(table)
    if th is None:
        console.print(report.theory_note, soft_wrap=True)
    style = {"healthy": "bold green", "vanishing": "bold yellow", "exploding": "bold red"}
    console.print(f"verdict: [{style[report.verdict]}]{report.verdict}[/]", soft_wrap=True)
    for reason in report.reasons:
        console.print(f"  {reason}", soft_wrap=True, markup=False)
    if out_ is not None:
        saved(out_)


@command("critical-init")
def critical_init(
    activation: ActivationOpt = "tanh",
    b_var: Annotated[float, typer.Option("--b-var", help=B_VAR_HELP)] = 0.0,
    json_: Annotated[bool, flag("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The edge-of-chaos (sigma_w^2, sigma_b^2) of an activation: chi = 1 at the q-map's fixed
    point (Poole et al. 2016; Schoenholz et al. 2017)."""
    import json

    import widenet as wn
    from widenet import io

    try:
        point = wn.init.critical_point(activation, b_var)
    except (ValueError, TypeError) as error:
        raise fail(str(error)) from None
    if json_:
        typer.echo(json.dumps(io.json_ready(point.to_dict()), allow_nan=False))
        return
    table = Table("quantity", "value", box=None, pad_edge=False)
    q_star = "every q (homogeneous)" if point.q_star is None else f"{point.q_star:.6g}"
    for key, value in (
        ("activation", point.activation),
        ("sigma_w^2", f"{point.w_var:.6g}"),
        ("sigma_b^2", f"{point.b_var:.6g}"),
        ("fixed point q*", q_star),
        ("chi at q*", f"{point.chi:.6g}"),
        ("dq/dq at q* (< 1: attracting)", f"{point.q_slope:.6g}"),
    ):
        table.add_row(key, value)
    out().print(table)
    typer.echo(
        f"Use: W ~ N(0, {point.w_var:.6g} / fan_in), b ~ N(0, {point.b_var:.6g}); "
        f"wn.init.critical(model, {activation!r}, b_var={b_var:g})"
    )
