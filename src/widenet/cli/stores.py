"""Kernel stores on disk and on Dask, and solvers at scale: ``widenet solve`` and the ``.zarr``
output of ``widenet kernel``/``ntk`` (:mod:`widenet.scale`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    KERNELS,
    OverwriteOpt,
    fail,
    flag,
    out,
    parse_times,
    saved,
    shape_inputs,
    topic,
)

app, command = topic(KERNELS)

SchedulerOpt = Annotated[
    str,
    typer.Option(
        "--scheduler", help="Tiles of a .zarr store on: threads, processes or tcp://host:port."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Threads or processes (.zarr store).", min=1)
]
StoreOverwriteOpt = OverwriteOpt  # the same option: a .zarr output is deleted and restarted
BufferedIoOpt = Annotated[
    bool,
    flag(
        "--buffered-io",
        help="Write the .zarr store through the page cache (default O_DIRECT where the file "
        "system allows it; use on NFS).",
    ),
]


def _scheduler_arg(scheduler: str):
    if scheduler in ("threads", "processes") or "://" in scheduler:
        return scheduler
    raise ValueError(
        f"--scheduler must be threads, processes or a Dask address tcp://host:port, got "
        f"{scheduler!r}"
    )


def write_kernel_store(
    out_path,
    arch_options,
    data_options,
    x2,
    tile,
    dtype,
    scheduler,
    workers,
    overwrite,
    width,
    network=None,
    direct_io=True,
    in_shape=None,
):
    """`widenet kernel/ntk --out K.zarr`: write (or complete) a kernel store. ``arch_options``:
    the options of ``wn.mlp`` or an architecture (``--arch``); ``in_shape``: ``--in-shape``."""
    import widenet as wn
    from widenet import io, scale
    from widenet.architectures import Architecture

    try:
        torch_dtype = io.torch_dtype(dtype)
        x = io.load_inputs(
            data_options["data"],
            data_options["n"],
            seed=data_options["data_seed"],
            standardize=data_options["standardize"],
            dtype=torch_dtype,
        )
        xb = None
        if x2 is not None:
            xb = io.load_inputs(x2, standardize=False, dtype=torch_dtype, option="--x2")
        x = shape_inputs(x, in_shape)
        if xb is not None:
            xb = shape_inputs(xb, in_shape)
        arch = arch_options if isinstance(arch_options, Architecture) else wn.mlp(**arch_options)
        if network is None:
            source, get = arch, ("nngp", "ntk")
            options = {}
        else:
            source = arch.network(
                in_dim=x.shape[1], width=network["width"], seed=network["seed"], dtype=torch_dtype
            )
            get, options = "ntk", dict(mode=network["mode"])
        t0 = time.perf_counter()
        store = scale.kernel_to_zarr(
            source,
            x,
            xb,
            out=out_path,
            tile=scale.STORE_TILE if tile is None else tile,
            get=get,
            width=width,
            scheduler=_scheduler_arg(scheduler),
            workers=workers,
            overwrite=overwrite,
            direct_io=direct_io,
            progress=True,
            extra_metadata=dict(cli_data={**data_options, "x2": x2}),
            **options,
        )
        seconds = time.perf_counter() - t0
    except (scale.StoreBusyError, scale.WorkerDiedError) as error:  # RuntimeErrors
        raise fail(str(error)) from None
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        raise fail(str(error)) from None
    total = len(store.grid())
    n1, n2 = store.shape
    repaired = len(getattr(store, "repaired_tiles", ()))
    out().print(
        f"{', '.join(store.kernels)} ({n1}x{n2}, {dtype}, tile {store.tile}): computed "
        f"{len(store.written_tiles)} of {total} tiles in {seconds:.2f} s "
        f"({total - len(store.written_tiles)} were already done"
        + (
            f"; {repaired} marked done failed their checksum and were recomputed)"
            if repaired
            else ")"
        ),
        soft_wrap=True,
    )
    saved(Path(out_path))


def _store_targets(store, targets: str):
    """Targets for a store: a file, or 'onehot' labels of the bundled set it was computed on."""
    import numpy as np

    from widenet import io
    from widenet.data import DATASETS, load_dataset

    n = store.shape[0]
    if targets != "onehot":
        y = io.load_targets(targets, "--targets", n)
        if y.ndim == 1:
            y, _, _ = io.encode_labels(y, None)
        return y
    cli = store.meta.get("extra", {}).get("cli_data")
    if not cli or cli.get("data") not in DATASETS or cli["data"] == "sphere":
        raise ValueError(
            "--targets onehot needs a store made by `widenet kernel --data <bundled classification "
            "set>`; give the targets as a .npy/.csv file (--targets FILE)"
        )
    std = True if cli.get("standardize") is None else cli["standardize"]
    _, labels = load_dataset(cli["data"], n=cli["n"], seed=cli["data_seed"], standardize=std)
    y, _, _ = io.encode_labels(np.asarray(labels), None)
    return y


def _test_diagonal(path: Path, which: str):
    """K(x, x) of the test points: the diagonal of a symmetric store, or a 1-D .npy file."""
    from widenet import io, scale

    if path.suffix.lower() == ".npy":
        diag = io.load_array(path, "--test-diagonal")
        if diag.ndim != 1:
            raise ValueError(f"--test-diagonal {path.name}: expected shape (m,), got {diag.shape}")
        return diag
    store = scale.open_kernel(path)
    if not store.symmetric:
        raise ValueError(f"--test-diagonal {path.name}: expected a symmetric store K(x, x)")
    return store.diagonal(which)


@command()
def solve(
    store_path: Annotated[Path, typer.Argument(help="Train kernel store K(X, X) (.zarr).")],
    out_: Annotated[
        Path, typer.Option("--out", "-o", help="Output .npz (alpha or predictions, bounds).")
    ],
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="onehot: the labels of the bundled set the store was made from; or a FILE.",
        ),
    ] = "onehot",
    kernel_name: Annotated[str, typer.Option("--kernel", help="ntk or nngp.")] = "ntk",
    test_kernel: Annotated[
        Path | None,
        typer.Option("--test-kernel", help="Store K(x_test, X) (widenet kernel --x2): predicts."),
    ] = None,
    test_diagonal: Annotated[
        Path | None,
        typer.Option(
            "--test-diagonal",
            help="With --time: K(x, x) of the test points, a symmetric store (.zarr, only its "
            "diagonal is read) or a .npy of shape (m,); gives the test error bound.",
        ),
    ] = None,
    ridge: Annotated[float, typer.Option("--ridge", help="Kernel ridge regulariser.")] = 1e-3,
    method: Annotated[
        str, typer.Option("--method", help="auto, cholesky (in memory) or cg (streamed).")
    ] = "auto",
    tol: Annotated[float, typer.Option("--tol", help="CG relative residual.")] = 1e-8,
    maxiter: Annotated[int | None, typer.Option("--maxiter", help="CG iterations.")] = None,
    rank: Annotated[
        int, typer.Option("--rank", help="Nystrom rank (CG) or Lanczos rank (--time).")
    ] = 500,
    time_: Annotated[
        list[str] | None,
        typer.Option("--time", "-t", help="Gradient-flow time (repeatable): Lanczos mode."),
    ] = None,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="Learning rate (time scale).")
    ] = 1.0,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Dask address tcp://host:port for the mat-vecs."),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Kernel ridge regression or gradient-flow predictions from a kernel store (streamed).

    Without --time: alpha = (K + ridge I)^-1 y (Cholesky if it fits in memory, else
    preconditioned CG), train and test predictions. With --time: outputs of gradient flow on
    the MSE loss at those times from the top --rank eigenpairs (Lanczos), with error bounds
    (train; test with --test-diagonal).
    """
    import numpy as np

    from widenet import io, scale

    try:
        io.check_suffix(out_, (".npz",))
        if scheduler is not None and "://" not in scheduler:
            raise ValueError(
                f"--scheduler must be a Dask address tcp://host:port, got {scheduler!r}"
            )
        store = scale.open_kernel(store_path)
        y = _store_targets(store, targets)
        test = None if test_kernel is None else scale.open_kernel(test_kernel)
        if test_diagonal is not None and (not time_ or test is None):
            raise ValueError("--test-diagonal goes with --time and --test-kernel")
        t0 = time.perf_counter()
        arrays: dict = {"train_targets": y}
        if time_:
            times = parse_times(time_)
            flow = scale.gradient_flow_mse(
                store,
                y,
                times,
                rank=rank,
                which=kernel_name,
                k_test_train=test,
                k_test_diag=None
                if test_diagonal is None
                else _test_diagonal(test_diagonal, kernel_name),
                learning_rate=learning_rate,
                scheduler=scheduler,
                progress=True,
            )
            arrays.update(
                times=np.asarray(times),
                train_mean=flow.train.numpy(),
                train_bound=flow.train_bound.numpy(),
                eigenvalues=flow.eigenvalues.numpy(),
            )
            if flow.test is not None:
                arrays["test_mean"] = flow.test.numpy()
            if flow.test_bound is not None:
                arrays["test_bound"] = flow.test_bound.numpy()
            rows = [
                (
                    f"t={t:g}",
                    float(np.mean((flow.train[i].numpy() - y) ** 2)),
                    float(flow.train_bound[i].max()),
                )
                for i, t in enumerate(times)
            ]
            what = f"gradient flow, Lanczos rank {rank}"
        else:
            sol = scale.kernel_ridge(
                store,
                y,
                ridge=ridge,
                which=kernel_name,
                method=method,
                tol=tol,
                maxiter=maxiter,
                rank=rank,
                scheduler=scheduler,
                progress=True,
            )
            train = store.matmul(sol.alpha, kernel_name, scheduler=scheduler).numpy()
            arrays.update(alpha=sol.alpha.numpy(), train_mean=train)
            if test is not None:
                arrays["test_mean"] = test.matmul(
                    sol.alpha, kernel_name, scheduler=scheduler
                ).numpy()
            rows = [("ridge", float(np.mean((train - y) ** 2)), None)]
            what = (
                f"kernel ridge {ridge:g} by {sol.method}"
                + (f" ({sol.iterations} iterations)" if sol.method == "cg" else "")
                + f", relative residual {float(sol.relative_residual.max()):.2g}"
            )
        seconds = time.perf_counter() - t0
        io.save_arrays(out_, arrays, overwrite=overwrite)
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(
        f"{kernel_name} on {store.shape[0]} points: {what}; {seconds:.2f} s", soft_wrap=True
    )
    table = Table("", "train MSE", "train error bound (max over outputs)", box=None)
    for label, mse_value, bound in rows:
        table.add_row(label, f"{mse_value:.4g}", "" if bound is None else f"{bound:.3g}")
    console.print(table)
    saved(out_)


@command()
def verify(
    store_path: Annotated[Path, typer.Argument(help="Kernel store (.zarr) to check.")],
) -> None:
    """Check every done tile of a kernel store against its recorded checksums.

    Exit status 0 when every done tile reads back intact, 1 when a tile is bad (listed with
    its reason; rerunning the `widenet kernel` command that made the store recomputes it), 2 on
    an error (no store at STORE_PATH, not a widenet store).
    """
    from widenet import scale

    try:
        report = scale.verify_store(store_path, progress=True)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise fail(str(error)) from None
    out().print(report.summary(), soft_wrap=True, markup=False)
    if not report.ok:
        raise typer.Exit(1)
