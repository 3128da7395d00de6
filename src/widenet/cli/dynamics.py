"""Training dynamics: ``widenet predict``, the closed-form predictions of the infinite-width
network trained by gradient flow (:func:`widenet.dynamics.infinite_width_predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    B_STD,
    DYNAMICS,
    W_STD,
    ActivationOpt,
    ArchOpt,
    BStdOpt,
    DataSeedOpt,
    DepthOpt,
    InShapeOpt,
    NTestOpt,
    NTrainOpt,
    OverwriteOpt,
    StandardizeOpt,
    TestOpt,
    TestTargetsOpt,
    TrainOpt,
    TrainTargetsOpt,
    WStdOpt,
    architecture,
    fail,
    flag,
    out,
    parse_times,
    saved,
    shape_inputs,
    topic,
)

app, command = topic(DYNAMICS)


def prediction_metrics(times, mean, y, train_mean, y_train) -> dict:
    """Per-time MSE (mean over every entry) and accuracy (argmax; sign for one +-1 column)."""
    import numpy as np

    def accuracy(pred, target):
        if target.shape[1] > 1:
            return (pred.argmax(-1) == target.argmax(-1)).mean(-1)
        if np.isin(target, (-1.0, 1.0)).all():
            return (np.sign(pred[..., 0]) == target[:, 0]).mean(-1)
        return None

    def finite(values):
        return [float(v) if np.isfinite(v) else None for v in values]

    metrics: dict = {"times": [t if np.isfinite(t) else "inf" for t in times]}
    metrics["train_mse"] = finite(((train_mean - y_train) ** 2).mean(axis=(1, 2)))
    acc = accuracy(train_mean, y_train)
    metrics["train_accuracy"] = None if acc is None else finite(acc)
    if y is not None:
        metrics["test_mse"] = finite(((mean - y) ** 2).mean(axis=(1, 2)))
        acc = accuracy(mean, y)
        metrics["test_accuracy"] = None if acc is None else finite(acc)
    return metrics


@command()
def predict(
    ctx: typer.Context,
    out_: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .npz (times, test_mean, test_variance); metrics in .json."
        ),
    ],
    train: TrainOpt = "digits",
    test: TestOpt = "digits",
    n_train: NTrainOpt = None,
    n_test: NTestOpt = None,
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="onehot: bundled labels one-hot (+-1 for 2 classes), or a FILE of train targets.",
        ),
    ] = "onehot",
    train_targets: TrainTargetsOpt = None,
    test_targets: TestTargetsOpt = None,
    time_: Annotated[
        list[str] | None,
        typer.Option(
            "--time",
            "-t",
            help="Training time, repeatable; 'inf' = converged (default: 1 10 ... 1e4 inf).",
        ),
    ] = None,
    kernel_name: Annotated[
        str,
        typer.Option("--kernel", help="ntk (gradient descent on all layers) or nngp (readout)."),
    ] = "ntk",
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="Learning rate (time scale).")
    ] = 1.0,
    diag_reg: Annotated[
        float, typer.Option("--diag-reg", help="Diagonal regulariser of the train kernel.")
    ] = 0.0,
    variance: Annotated[
        bool,
        flag(
            "--variance/--no-variance",
            help="Predictive variance of the infinite-width ensemble (needs a T*m*m buffer).",
        ),
    ] = True,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    overwrite: OverwriteOpt = False,
    arch: ArchOpt = None,
    in_shape: InShapeOpt = None,
) -> None:
    """Closed-form predictions of the infinite-width network trained by gradient flow on MSE.

    The network is an MLP (--depth, --activation, ...) or any --arch (a preset such as cnn or
    myrtle5, or a YAML file of layers; --in-shape 1,8,8 makes flat inputs images).

    Ensemble mean test_mean (T, m, k) and variance test_variance (T, m) go to OUT (.npz).

    Per-time MSE and accuracy go to OUT with a .json suffix. Loss: 1/(2N) sum (f - y)^2.
    """
    import numpy as np
    import torch

    from widenet import dynamics, io

    try:
        io.check_suffix(out_, (".npz",))
        json_out = out_.with_suffix(".json")
        if kernel_name not in ("ntk", "nngp"):
            raise ValueError(f"--kernel must be ntk or nngp, got {kernel_name!r}")
        if not learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {learning_rate}")
        if not diag_reg >= 0:
            raise ValueError(f"--diag-reg must be >= 0, got {diag_reg}")
        times = parse_times(time_ if time_ else ["1", "10", "100", "1000", "10000", "inf"])
        x_train, y_train, x_test, y_test, what = io.load_train_test(
            train,
            test,
            n_train,
            n_test,
            targets,
            train_targets,
            test_targets,
            standardize,
            data_seed,
        )
        network, arch_name = architecture(
            ctx, arch, depth=depth, activation=activation, w_std=w_std, b_std=b_std
        )
        if in_shape is None and arch is not None:
            in_shape = io.natural_shape(train)  # digits-images, mnist1d: their own shape
        x_train = shape_inputs(torch.as_tensor(x_train), in_shape)
        x_test = shape_inputs(torch.as_tensor(x_test), in_shape)
        pred = dynamics.infinite_width_predict(
            network,
            x_train,
            y_train,
            x_test,
            times,
            kernel=kernel_name,
            learning_rate=learning_rate,
            diag_reg=diag_reg,
            variance=variance,
        )
        arrays = {
            "times": np.asarray(times),
            "test_mean": pred.test_mean.cpu().numpy(),
            "train_mean": pred.train_mean.cpu().numpy(),
        }
        if variance:
            arrays["test_variance"] = pred.test_variance.cpu().numpy()
        if y_test is not None:
            arrays["test_targets"] = y_test
        arrays["train_targets"] = y_train
        metrics = prediction_metrics(
            times, arrays["test_mean"], y_test, arrays["train_mean"], y_train
        )
        metrics.update(
            kernel=kernel_name,
            data=what,
            architecture=(
                dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
                if arch is None
                else dict(arch=arch_name, layers=network.spec(), in_shape=in_shape)
            ),
            learning_rate=learning_rate,
            diag_reg=diag_reg,
            loss="mean",
            n_train=len(x_train),
            n_test=len(x_test),
            outputs=int(y_train.shape[1]),
            seconds=pred.seconds,
        )
        io.check_new_outputs([out_, json_out], overwrite)  # both before either
        io.save_arrays(out_, arrays, overwrite=overwrite)
        io.write_json(json_out, metrics, overwrite=overwrite)
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as error:
        raise fail(str(error)) from None

    console = out()
    described = f"a depth-{depth} {activation} MLP" if arch is None else f"--arch {arch_name}"
    console.print(
        f"{kernel_name} gradient flow (MSE, lr {learning_rate:g}) of {described}; {what}; "
        f"kernels {pred.seconds['kernels']:.2f} s, dynamics "
        f"{pred.seconds['dynamics']:.2f} s",
        soft_wrap=True,
    )
    table = Table("time", "train MSE", "test MSE", "test acc.", "mean var.", box=None)

    def cell(values, i, fmt=".4g"):
        return "" if values is None or values[i] is None else format(values[i], fmt)

    for i, tt in enumerate(times):
        var = arrays.get("test_variance")
        table.add_row(
            f"{tt:g}",
            cell(metrics["train_mse"], i),
            cell(metrics.get("test_mse"), i),
            cell(metrics.get("test_accuracy"), i, ".3f"),
            "" if var is None else f"{float(var[i].mean()):.4g}",
        )
    console.print(table)
    saved(out_, json_out)
