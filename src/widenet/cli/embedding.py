"""The embedding principle, the loss landscape and condensation of saved networks: ``widenet
embed``, ``hessian``, ``condense`` (:mod:`widenet.embedding`, :mod:`widenet.landscape`,
:mod:`widenet.condensation`). Model files are read as weights only
(:func:`widenet.io.load_state_dict`) into a :class:`widenet.networks.FCNet`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from widenet.cli._common import (
    B_STD,
    EMBEDDING,
    W_STD,
    ActivationOpt,
    BStdOpt,
    DataOpt,
    DataSeedOpt,
    LayersOpt,
    ModelArg,
    NOpt,
    ParamOpt,
    RunDirOpt,
    StandardizeOpt,
    WStdOpt,
    fail,
    flag,
    out,
    parse_layers,
    topic,
)

app, command = topic(EMBEDDING)


def _load_fcnet(model: Path, activation, parameterization, w_std, b_std, layers, option="MODEL"):
    """The saved model as a widenet.networks.FCNet in float64."""
    import torch

    from widenet import io
    from widenet.networks import FCNet, canonical_parameterization

    state = io.load_state_dict(model, option)
    net = FCNet.from_state_dict(
        state,
        activation,
        parameterization=canonical_parameterization(parameterization, "--parameterization"),
        w_std=w_std,
        b_std=b_std,
        layers=parse_layers(layers),
    )
    return net.to(torch.float64)


def _parse_steps(steps: list[str], to_widths: str | None, alpha: float, widths: list[int]):
    from widenet.embedding import Null, Split

    parsed = []
    for raw in steps:
        parts = raw.split(":")
        try:
            if parts[0] == "split" and len(parts) in (3, 4):
                share = float(parts[3]) if len(parts) == 4 else alpha
                parsed.append(Split(int(parts[1]), int(parts[2]), share))
            elif parts[0] == "null" and len(parts) == 2:
                parsed.append(Null(int(parts[1])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--step must be 'split:LAYER:NEURON[:ALPHA]' or 'null:LAYER', got {raw!r}"
            ) from None
    if to_widths is not None:
        try:
            targets = [int(v) for v in to_widths.split(",")]
        except ValueError:
            raise ValueError("--to-widths must be integers like '5' or '5,4'") from None
        if len(targets) != len(widths) or any(t < m for t, m in zip(targets, widths, strict=True)):
            raise ValueError(
                f"--to-widths must give one width >= the current one per hidden layer "
                f"(current {widths}), got {targets}"
            )
        for layer, (m, target) in enumerate(zip(widths, targets, strict=True)):
            parsed += [Split(layer, k % m, alpha) for k in range(target - m)]
    if not parsed:
        raise ValueError("give --to-widths or at least one --step")
    return parsed


def _data_targets(data, n, data_seed, standardize, targets):
    import torch

    from widenet import io

    x = io.load_inputs(data, n, seed=data_seed, standardize=standardize, dtype=torch.float64)
    y = io.load_targets(targets, "--targets", len(x))
    return x, torch.as_tensor(y[:, None] if y.ndim == 1 else y, dtype=torch.float64)


@command()
def embed(
    model: ModelArg,
    out_: RunDirOpt,
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    to_widths: Annotated[
        str | None,
        typer.Option(
            "--to-widths",
            help="Target hidden widths (comma list): split neurons "
            "0, 1, ... in turn with share --alpha.",
        ),
    ] = None,
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            help="A one-step embedding, applied in order (repeatable): "
            "'split:LAYER:NEURON[:ALPHA]' or 'null:LAYER' (0-based hidden layers).",
        ),
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Default splitting share.")] = 0.5,
    data: Annotated[
        str | None, typer.Option("--data", help="Optional inputs to check the outputs on.")
    ] = None,
    n: NOpt = None,
    data_seed: DataSeedOpt = 0,
    standardize: StandardizeOpt = None,
) -> None:
    """Embed a saved network into a wider one (splitting / null embeddings, Zhang et al. 2021).

    Writes OUT/model.safetensors (the wide network, standard parameterization, float64) and
    OUT/embedding.json (widths, steps, the dimension of the embedded affine family and, with
    --data, the largest output difference).
    """

    from widenet import io
    from widenet.embedding import Split, compose

    try:
        net = _load_fcnet(model, activation, parameterization, w_std, b_std, layers)
        steps = _parse_steps(step or [], to_widths, alpha, net.widths)
        wide = compose(net, steps)
        summary = {
            "model": str(model),
            "activation": activation,
            "widths_before": net.widths,
            "widths_after": wide.widths,
            "parameters_before": net.num_parameters,
            "parameters_after": wide.num_parameters,
            "steps": [
                {"kind": "split", "layer": s.layer, "neuron": s.neuron, "alpha": s.alpha}
                if isinstance(s, Split)
                else {"kind": "null", "layer": s.layer}
                for s in steps
            ],
            "splits_per_layer": [
                sum(isinstance(s, Split) and s.layer == l for s in steps)
                for l in range(len(net.widths))
            ],
            # Σ_l (m'_l − m_l − #null_l): one free splitting share per split (embedding_family)
            "family_dimension": sum(isinstance(s, Split) for s in steps),
        }
        if data is not None:
            x = io.load_inputs(data, n, seed=data_seed, standardize=standardize)
            diff = float((wide(x) - net(x)).abs().max())
            summary.update(n_points=len(x), max_output_difference=diff)
        folder = io.run_folder(out_)
        wide.save(folder / "model.safetensors")
        io.write_json(folder / "embedding.json", summary)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(
        f"embedded widths {net.widths} -> {wide.widths} ({len(steps)} steps, "
        f"{net.num_parameters} -> {wide.num_parameters} parameters)"
        + (
            f"; max |f_wide - f| on {summary['n_points']} points: "
            f"{summary['max_output_difference']:.2e}"
            if data is not None
            else ""
        ),
        soft_wrap=True,
    )
    typer.echo(f"Saved: {(out_ / 'model.safetensors').resolve()} and embedding.json")


def _slices(folder: Path, module, x, y, points: int, seed: int, other) -> None:
    """--slice (2-D, filter-normalised random directions) and --toward (1-D, to ``other``)."""
    import numpy as np
    import torch

    from widenet import landscape

    if points:
        d1 = landscape.filter_normalized_direction(module, seed=seed)
        d2 = landscape.filter_normalized_direction(module, seed=seed + 1)
        grid = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
        plane = landscape.loss_slice_2d(module, x, y, d1, d2, grid, grid)
        np.savez(folder / "slice_2d.npz", a=grid.numpy(), b=grid.numpy(), loss=plane.loss.numpy())
    if other is not None:
        line = landscape.loss_slice_1d(module, x, y, other.to_module())
        np.savez(folder / "slice_1d.npz", t=line.coords[0].numpy(), loss=line.loss.numpy())


@command()
def hessian(
    model: ModelArg,
    out_: RunDirOpt,
    data: DataOpt = "digits",
    targets: Annotated[
        str, typer.Option("--targets", help="Targets file (.npy/.csv), one row per point.")
    ] = "",
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    n: NOpt = None,
    data_seed: DataSeedOpt = 0,
    standardize: StandardizeOpt = None,
    critical: Annotated[
        str | None,
        typer.Option(
            "--critical",
            help="First move to a critical point: newton, lbfgs or gradient_norm (saddles too).",
        ),
    ] = None,
    tol: Annotated[
        float, typer.Option("--tol", help="Critical-point tolerance on |grad L|.")
    ] = 1e-10,
    lanczos: Annotated[
        int | None,
        typer.Option(
            "--lanczos",
            help="Only the K largest and K smallest eigenvalues, by "
            "Lanczos on Hessian-vector products (large models).",
        ),
    ] = None,
    inertia_tol: Annotated[
        float | None,
        typer.Option(
            "--inertia-tol",
            help="|eigenvalue| <= this counts as zero (default eps^(2/3) * max |eigenvalue|).",
        ),
    ] = None,
    slice_points: Annotated[
        int,
        typer.Option(
            "--slice",
            help="Also a 2-D loss slice on N x N points of [-1, 1]^2 along two filter-normalised "
            "random directions (Li et al. 2018); 0: none.",
        ),
    ] = 0,
    toward: Annotated[
        Path | None,
        typer.Option("--toward", help="Also the 1-D loss slice from the model to this one."),
    ] = None,
    slice_seed: Annotated[int, typer.Option("--slice-seed", help="Seed of the directions.")] = 0,
) -> None:
    """Loss Hessian of a saved network on data: spectrum, inertia, optional critical point.

    The loss is L = 1/(2n) sum_i |f(x_i) - y_i|^2 in float64. Writes OUT/hessian.json (loss,
    |grad L|, inertia or extreme eigenvalues), OUT/eigenvalues.npy, with --critical
    OUT/critical.safetensors (the critical point), with --slice OUT/slice_2d.npz (a, b, loss)
    and with --toward OUT/slice_1d.npz (t, loss; t = 0 the model, t = 1 the other one).
    """
    import numpy as np

    from widenet import io, landscape
    from widenet.networks import FCNet

    try:
        if not targets:
            raise ValueError("--targets is required (a .npy/.csv file with one row per point)")
        net = _load_fcnet(model, activation, parameterization, w_std, b_std, layers)
        if slice_points < 0 or slice_points == 1:
            raise ValueError(f"--slice must be 0 (none) or >= 2 points, got {slice_points}")
        other = None
        if toward is not None:
            other = _load_fcnet(
                toward, activation, parameterization, w_std, b_std, None, "--toward"
            )
            if [w.shape for w in other.weights] != [w.shape for w in net.weights]:
                raise ValueError(f"--toward {toward} has other layer sizes than {model}")
        x, y = _data_targets(data, n, data_seed, standardize, targets)
        module = net.to_module()
        summary = {"model": str(model), "activation": activation, "widths": net.widths}
        if critical is not None:
            cp = landscape.find_critical_point(module, x, y, method=critical, tol=tol)
            module = cp.model
            summary["critical"] = {
                "method": critical,
                "converged": cp.converged,
                "iterations": cp.iterations,
                "tol": tol,
            }
        stats, eig = landscape.hessian_summary(
            module, x, y, lanczos=lanczos, inertia_tol=inertia_tol
        )
        summary.update(stats)
        folder = io.run_folder(out_)
        np.save(folder / "eigenvalues.npy", eig)
        _slices(folder, module, x, y, slice_points, slice_seed, other)
        if critical is not None:
            FCNet.from_module(module).save(folder / "critical.safetensors")
        io.write_json(folder / "hessian.json", summary)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    console = out()
    line = f"L = {summary['loss']:.6g}, |grad L| = {summary['grad_norm']:.2e}, "
    line += f"P = {summary['num_parameters']}"
    if "inertia" in summary:
        i = summary["inertia"]
        line += f"; inertia (neg/zero/pos) {i['negative']}/{i['zero']}/{i['positive']}"
        line += f" at tol {i['tol']:.1e}"
    else:
        line += f"; smallest {summary['smallest'][0]:.4g}, largest {summary['largest'][-1]:.4g}"
    if critical is not None and not summary["critical"]["converged"]:
        line += f" (critical point NOT reached: |grad L| > {tol:g})"
    console.print(line, soft_wrap=True)
    typer.echo(f"Saved: {(out_ / 'hessian.json').resolve()}")


# ---- condensation (issue 5) ----


@command()
def condense(
    model: ModelArg,
    out_: RunDirOpt,
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    threshold: Annotated[
        float,
        typer.Option("--threshold", help="Cosine similarity (bias included) to share a group."),
    ] = 0.9,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Inputs to measure the merged network's agreement on."),
    ] = None,
    n: NOpt = None,
    data_seed: DataSeedOpt = 0,
    standardize: StandardizeOpt = None,
    odd: Annotated[
        bool | None,
        flag("--odd/--no-odd", help="Merge sign-flipped neurons (default: if σ is odd)."),
    ] = None,
    homogeneous: Annotated[
        bool | None,
        flag(
            "--homogeneous/--no-homogeneous",
            help="Use σ(r z) = r σ(z), r > 0 (default: if σ is, e.g. relu).",
        ),
    ] = None,
) -> None:
    """Merge each hidden layer's condensed neurons into one: the effective width (Zhang et al.).

    Writes OUT/model.safetensors (the merged network, standard parameterization, float64) and
    OUT/condensation.json (widths, effective widths, group label and sign of every neuron and,
    with --data, the agreement of the merged network with the saved one).
    """

    from widenet import condensation, io

    try:
        net = _load_fcnet(model, activation, parameterization, w_std, b_std, layers)
        x = None
        if data is not None:
            x = io.load_inputs(data, n, seed=data_seed, standardize=standardize)
        result = condensation.condense(
            net, x, threshold=threshold, homogeneous=homogeneous, odd=odd
        )
        summary = {
            "model": str(model),
            "activation": activation,
            "threshold": result.threshold,
            "homogeneous": result.homogeneous,
            "odd": result.odd,
            "widths": list(result.widths),
            "effective_widths": list(result.effective_widths),
            "parameters_before": net.num_parameters,
            "parameters_after": result.model.num_parameters,
            "labels": [t.tolist() for t in result.labels],
            "signs": [t.tolist() for t in result.signs],
        }
        if result.agreement is not None:
            summary["n_points"] = result.agreement.n_points
            summary["max_abs_difference"] = result.agreement.max_abs_difference
            summary["relative_difference"] = result.agreement.relative_difference
            summary["prediction_agreement"] = result.agreement.prediction_agreement
        folder = io.run_folder(out_)
        result.model.save(folder / "model.safetensors")
        io.write_json(folder / "condensation.json", summary)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    line = f"widths {summary['widths']} -> effective widths {summary['effective_widths']} "
    line += f"(cosine >= {threshold:g})"
    if result.agreement is not None:
        a = result.agreement
        line += f"; on {a.n_points} points: max |f - f_merged| {a.max_abs_difference:.3g}, "
        line += (
            f"relative {a.relative_difference:.3g}, predictions agree {a.prediction_agreement:.4f}"
        )
    out().print(line, soft_wrap=True)
    typer.echo(f"Saved: {(out_ / 'model.safetensors').resolve()} and condensation.json")
