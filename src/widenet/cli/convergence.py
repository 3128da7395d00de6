"""Global convergence of two-layer ReLU networks (Du et al. 2018): ``widenet du-bounds``,
``du-train`` (:mod:`widenet.convergence`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from widenet.cli._common import (
    CONVERGENCE,
    DTYPE,
    DataOpt,
    DataSeedOpt,
    DtypeOpt,
    NOpt,
    OverwriteOpt,
    StandardizeOpt,
    err,
    fail,
    flag,
    out,
    progress_bar,
    quantity_table,
    saved,
    topic,
)

app, command = topic(CONVERGENCE)

_DU_LABELS_HELP = (
    "gaussian (y ~ N(0,1)), true (the bundled set's labels: parity +-1 for classes, else "
    "standardized), shuffled (those labels permuted), or a .npy/.csv file of n real labels."
)
STEP_SCALE_HELP = "eta = this x the critical rate 2/(lambda_min + lambda_max) of H-infinity."
DuLabelsOpt = Annotated[str, typer.Option("--labels", help=_DU_LABELS_HELP)]
DuDimOpt = Annotated[
    int, typer.Option("--dim", help="Dimension of the synthetic 'sphere' set.", min=1)
]
DuNonUnitOpt = Annotated[
    str,
    typer.Option("--non-unit", help="Rows not of unit norm: normalize (with a warning) or error."),
]
DuDeltaOpt = Annotated[
    float, typer.Option("--delta", help="Failure probability of the theorem's bounds.")
]


def _du_problem(data, n, dim, data_seed, standardize, labels, label_seed, non_unit):
    """Unit-norm inputs (float64) and labels for the Du et al. commands."""
    import warnings

    import torch

    from widenet import convergence as cv
    from widenet import io
    from widenet.data import DATASETS, load_dataset, parity_targets

    if data == "sphere":
        if n is None:
            raise ValueError("--n is required for --data sphere")
        if n < 1:
            raise ValueError(f"--n must be an integer >= 1, got {n}")
        x, raw = load_dataset("sphere", n=n, seed=data_seed, dim=dim, dtype=torch.float64)
    else:
        x = io.load_inputs(data, n, seed=data_seed, standardize=standardize)
        raw = None
        if data in DATASETS:
            std = True if standardize is None else standardize
            _, raw = load_dataset(data, n=n, seed=data_seed, standardize=std)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = cv.unit_inputs(x, non_unit=non_unit, name="--data")
    for w in caught:
        err().print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    g = torch.Generator().manual_seed(label_seed)
    if labels == "gaussian":
        y = cv.random_labels(len(x), generator=g)
    elif labels in ("true", "shuffled"):
        if raw is None:
            raise ValueError(f"--labels {labels} needs a bundled data set; give a label file")
        y = parity_targets(raw)
        if labels == "shuffled":
            y = cv.random_labels(y, kind="shuffled", generator=g)
    else:
        y = io.load_targets(labels, "--labels", len(x))
        if y.ndim != 1:
            raise ValueError(f"--labels: one real label per point expected, got shape {y.shape}")
        y = torch.as_tensor(y, dtype=torch.float64)
    return x, y


@command("du-bounds")
def du_bounds(
    data: DataOpt = "sphere",
    n: NOpt = None,
    dim: DuDimOpt = 100,
    width: Annotated[
        int | None,
        typer.Option("--width", help="Also report H(0), drift bound and stability for width m."),
    ] = None,
    labels: DuLabelsOpt = "gaussian",
    delta: DuDeltaOpt = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network and labels.")] = 0,
    step_size_scale: Annotated[
        float, typer.Option("--step-size-scale", help=STEP_SCALE_HELP)
    ] = 0.25,
    non_unit: DuNonUnitOpt = "normalize",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    out_: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the numbers to this .json file.")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Du et al. (2018) on data: lambda0, width bound, step sizes, radius R, drift bound."""
    from widenet import convergence as cv
    from widenet import io

    try:
        if out_ is not None:
            io.check_suffix(out_, (".json",))
        x, y = _du_problem(data, n, dim, data_seed, standardize, labels, seed, non_unit)
        rows = cv.du_bounds(
            x, y, delta=delta, width=width, seed=seed, step_size_scale=step_size_scale
        )
        if out_ is not None:
            io.write_json(out_, rows, overwrite=overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    out().print(quantity_table(rows.items()))
    if out_ is not None:
        saved(out_)


@command("du-train")
def du_train(
    out_: Annotated[
        Path, typer.Option("--out", "-o", help="Per-step records (.npz); summary in .json.")
    ],
    data: DataOpt = "sphere",
    n: NOpt = None,
    dim: DuDimOpt = 100,
    width: Annotated[int, typer.Option("--width", help="Hidden width m.", min=1)] = 1000,
    epochs: Annotated[int, typer.Option("--epochs", help="Full-batch GD steps.", min=1)] = 100,
    step_size: Annotated[
        float | None, typer.Option("--step-size", help="eta (default: scale x critical rate).")
    ] = None,
    step_size_scale: Annotated[
        float, typer.Option("--step-size-scale", help=STEP_SCALE_HELP)
    ] = 0.25,
    labels: DuLabelsOpt = "gaussian",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network and labels.")] = 0,
    antisymmetric: Annotated[
        bool, flag("--antisymmetric/--independent", help="u(0) = 0 by paired neurons.")
    ] = False,
    gram_every: Annotated[
        int, typer.Option("--gram-every", help="Form H(k) every this many steps (0: never).")
    ] = 1,
    kernel: Annotated[
        bool,
        flag("--kernel/--no-kernel", help="Also the closed-form H-inf / H(0) u(k)."),
    ] = True,
    allow_divergent: Annotated[
        bool,
        flag("--allow-divergent", help="Run even above 2/lambda_max(H(0)) (diverges)."),
    ] = False,
    dtype: DtypeOpt = DTYPE,
    non_unit: DuNonUnitOpt = "normalize",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train Du et al.'s two-layer ReLU net by full-batch GD and record the theorem's quantities.

    OUT (.npz) holds per step: loss, pattern_change, max_distance; gram_steps, gram_change,
    gram_lambda_min; with --kernel, the trained outputs and the closed-form H-inf and H(0)
    predictions at every step and their gaps (gap_hinf, gap_h0). The summary (rates, bounds)
    goes to OUT with a .json suffix.
    """

    from widenet import convergence as cv
    from widenet import io

    try:
        io.check_suffix(out_, (".npz",))
        torch_dtype = io.torch_dtype(dtype)
        x, y = _du_problem(data, n, dim, data_seed, standardize, labels, seed, non_unit)
        with progress_bar() as bar:
            run = cv.du_training_run(
                x,
                y,
                width,
                epochs,
                step_size=step_size,
                step_size_scale=step_size_scale,
                antisymmetric=antisymmetric,
                gram_every=gram_every,
                kernel=kernel,
                allow_divergent=allow_divergent,
                non_unit=non_unit,
                seed=seed,
                dtype=torch_dtype,
                progress=bar,
            )
        arrays, summary = run.arrays, run.summary
        io.check_new_outputs([out_, out_.with_suffix(".json")], overwrite)  # both before either
        io.save_arrays(out_, arrays, overwrite=overwrite)
        io.write_json(out_.with_suffix(".json"), summary, overwrite=overwrite)
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        raise fail(str(error)) from None
    out().print(quantity_table(summary.items()))
    saved(out_, out_.with_suffix(".json"))
