"""The ``widenet`` command line: the lab (list, run, demo) and kernel computations (kernel, ntk).

Every command is a thin layer over the library: ``widenet run`` is
:func:`widenet.lab.run_experiment`, ``widenet kernel`` is ``wn.mlp(...).kernel(X)``, ``widenet
ntk`` is ``wn.empirical_ntk(wn.mlp(...).network(...), X)``. Errors a user can fix (unknown
experiment, bad ``--set``, missing file) are reported in one line with exit code 2, never as a
traceback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="widenet",
    help="widenet: neural-tangent-kernel theory, computable on your own networks and data.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)

DTYPES = ("float32", "float64")


def _out() -> Console:
    # Created per call so that a swapped sys.stdout/sys.stderr (tests, pipes) is honoured.
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _interrupted(where: str) -> typer.Exit:
    _err().print(
        f"[bold yellow]interrupted:[/] nothing was written to {where} "
        "(a run writes its folder only when it finishes).",
        soft_wrap=True,
    )
    return typer.Exit(130)


def _version_callback(value: bool) -> None:
    if value:
        from widenet import __version__

        typer.echo(f"widenet {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """widenet: neural-tangent-kernel theory, computable on your own networks and data."""


# --------------------------------------------------------------------------------------------
# The lab


@app.command("list")
def list_(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also show each experiment's config and metrics keys."
        ),
    ] = False,
) -> None:
    """List the registered experiments."""
    from widenet import lab

    console = _out()
    exps = lab.experiments()
    if not verbose:
        table = Table("experiment", "summary", box=None, pad_edge=False)
        for exp in exps.values():
            table.add_row(exp.name, exp.summary)
        console.print(table)
        return
    for exp in exps.values():
        console.print(f"[bold]{exp.name}[/] — {exp.summary}", soft_wrap=True)
        defaults = exp.config().model_dump(mode="json")
        quick = exp.config.quick().model_dump(mode="json")
        config = Table("config key", "default (full)", "quick", box=None, pad_edge=False)
        for key, value in defaults.items():
            config.add_row(key, repr(value), repr(quick[key]) if quick[key] != value else "")
        console.print(config)
        metrics = Table("metrics.json key", "meaning", box=None, pad_edge=False)
        for key, meaning in exp.metrics.items():
            metrics.add_row(key, meaning)
        console.print(metrics)
        console.print()


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `widenet list`).")],
    quick: Annotated[bool, typer.Option("--quick", "-q", help="Run the quick size.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default: runs/NAME-<UTC timestamp>)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random draw.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config value: key=value (YAML), repeatable."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", "-f", help="Re-run even if OUT holds a run with the same config."),
    ] = False,
    threads: Annotated[
        int,
        typer.Option("--threads", help="Torch CPU threads (0 = torch's default).", min=0),
    ] = 1,
) -> None:
    """Run one experiment and write its run folder (config, metrics, figures, report)."""
    from widenet import lab

    try:
        exp = lab.get(name)
        exp.resolve(quick=quick, overrides=set_)  # validate before any work
    except (lab.UnknownExperimentError, lab.ConfigError) as err:
        raise _fail(str(err)) from None
    where = out if out is not None else "the run folder"
    threads = threads or None  # 0 -> torch's default; see `demo` for why 1 is the default
    try:
        result = lab.run_experiment(
            name, quick=quick, out=out, seed=seed, overrides=set_, force=force, threads=threads
        )
    except KeyboardInterrupt:
        raise _interrupted(str(where)) from None
    except (FileExistsError, lab.ConfigError) as err:
        raise _fail(str(err)) from None
    console = _out()
    verb = "reused (same config; --force re-runs)" if result.skipped else "done"
    console.print(f"[bold green]{name}[/] {verb} in {result.wall_seconds:.1f} s", soft_wrap=True)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if scalars:
        table = Table("metric", "value", box=None, pad_edge=False)
        for key, value in scalars.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
    typer.echo(f"Report: {result.report.resolve()}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("runs/demo"),
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Re-run experiments already done.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random draw.")] = 0,
    threads: Annotated[
        int,
        typer.Option("--threads", help="Torch CPU threads (0 = torch's default).", min=0),
    ] = 1,
) -> None:
    """Run every experiment at quick size and write one combined report."""
    # One torch thread by default (here and in `run`): lab experiments are many small ops, where
    # a second thread gains little, and on a 2-core machine with any other load OpenMP's
    # spin-waiting made the kernel-convergence quick run 8x slower (110 s vs 14 s measured).
    from widenet import lab

    console = _out()
    t0 = time.perf_counter()

    def on_done(result):
        if result.error:
            console.print(f"  [bold red]{result.name} failed:[/] {result.error}", soft_wrap=True)
            return
        state = "reused" if result.skipped else f"ran in {result.wall_seconds:.1f} s"
        console.print(f"  [bold]{result.name}[/]: {state} -> {result.out}", soft_wrap=True)

    names = list(lab.experiments())
    console.print(f"widenet demo: {len(names)} experiment(s) at quick size into {out}")
    try:
        path, results = lab.run_demo(
            out, force=force, seed=seed, threads=threads or None, on_done=on_done
        )
    except KeyboardInterrupt:
        raise _interrupted(f"the unfinished experiment's folder under {out}") from None
    except FileExistsError as err:
        raise _fail(str(err)) from None
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    typer.echo(f"Combined report: {path}")
    failed = [r.name for r in results if r.error]
    if failed:
        raise _fail(f"{len(failed)} experiment(s) failed: {', '.join(failed)}", code=1)


# --------------------------------------------------------------------------------------------
# Kernels on data


def _load_data(data: str, n: int | None, data_seed: int, standardize: bool | None, dtype):
    """A data set name (``digits``, ``sphere``, ...) or a ``.npy``/``.csv`` file -> (n, d)."""
    import numpy as np
    import torch

    from widenet.data import DATASETS, load_dataset

    path = Path(data)
    if path.suffix.lower() in (".npy", ".csv") or path.exists():
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        if path.suffix.lower() == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".csv":
            try:
                x = np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError:  # a header line
                x = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        else:
            raise ValueError(f"data file {path} must be .npy or .csv")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"data in {path} must be 2-D (n_samples, n_features), got {x.shape}")
        if n is not None:
            x = x[:n]  # the first n rows: files are taken as given
        if standardize:
            std = x.std(axis=0)
            x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return torch.as_tensor(x, dtype=dtype)
    if data not in DATASETS:
        raise ValueError(f"--data must be a .npy/.csv file or one of: {', '.join(DATASETS)}")
    std = True if standardize is None else standardize
    x, _ = load_dataset(data, n=n, seed=data_seed, standardize=std, dtype=dtype)
    return x


def _save(out: Path, arrays: dict, which: str) -> None:
    import numpy as np

    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        np.savez(out, **arrays)
    else:
        np.save(out, arrays[which])


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


_DATA_HELP = "A .npy/.csv file (rows = points) or a bundled set: digits, iris, wine, "
_DATA_HELP += "breast_cancer, sphere."
_ACT_HELP = "Activation: relu, leaky_relu, 'leaky_relu(0.1)', 'abrelu(a, b)', erf, gelu, identity, "
_ACT_HELP += "sin, cos (closed form); tanh, sigmoid, softplus, silu, elu (quadrature)."
_STD_HELP = "Z-score the features (default: on for bundled sets, off for files)."

# Options shared by the commands that compute kernels on data.
DataOpt = Annotated[str, typer.Option("--data", help=_DATA_HELP)]
NOpt = Annotated[int | None, typer.Option("--n", help="Number of points (default: all).")]
DepthOpt = Annotated[int, typer.Option("--depth", help="Number of hidden layers.")]
ActivationOpt = Annotated[str, typer.Option("--activation", help=_ACT_HELP)]
WStdOpt = Annotated[float, typer.Option("--w-std", help="Weight standard deviation.")]
BStdOpt = Annotated[float, typer.Option("--b-std", help="Bias standard deviation.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 or float64.")]
StandardizeOpt = Annotated[
    bool | None, typer.Option("--standardize/--no-standardize", help=_STD_HELP)
]
DataSeedOpt = Annotated[int, typer.Option("--data-seed", help="Seed of the subset draw.")]
# Kernel stores on disk (issue 9); the commands' code is in the section at the end.
X2Opt = Annotated[
    str | None,
    typer.Option("--x2", help="Columns' inputs (a .npy/.csv file) for a .zarr store K(data, x2)."),
]
SchedulerOpt = Annotated[
    str,
    typer.Option(
        "--scheduler", help="Tiles of a .zarr store on: threads, processes or tcp://host:port."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Threads or processes (.zarr store).", min=1)
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Delete an existing .zarr store and start again.")
]
BufferedIoOpt = Annotated[
    bool,
    typer.Option(
        "--buffered-io",
        help="Write the .zarr store through the page cache (default O_DIRECT where the file "
        "system allows it; use on NFS).",
    ),
]


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"--out must end in .npy or .npz, got {out.name!r}")


@app.command()
def kernel(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .npz (nngp and ntk), .npy, or a .zarr store (on disk)."
        ),
    ],
    data: DataOpt = "digits",
    n: NOpt = None,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = 2**0.5,
    b_std: BStdOpt = 0.0,
    tile: Annotated[int | None, typer.Option("--tile", help="Tile size; memory O(tile^2).")] = None,
    dtype: DtypeOpt = "float64",
    get: Annotated[str, typer.Option("--get", help="Which kernel a .npy output holds.")] = "ntk",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    parameterization: Annotated[
        str, typer.Option("--parameterization", help="ntk (default) or standard.")
    ] = "ntk",
    width: Annotated[
        int | None,
        typer.Option("--width", help="Hidden width; only for --parameterization standard."),
    ] = None,
    x2: X2Opt = None,
    scheduler: SchedulerOpt = "threads",
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    buffered_io: BufferedIoOpt = False,
) -> None:
    """Infinite-width NNGP and NTK of an MLP on data; saved as .npz (both) or .npy (--get).

    With --out K.zarr the kernel is written tile by tile into a Zarr store (default tile 4096;
    symmetric: only the upper tiles are computed); running the same command again completes an
    interrupted store. --scheduler threads|processes|tcp://host:port.
    """
    import numpy as np

    import widenet as wn

    if out.suffix.lower() == ".zarr":
        arch_options = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        arch_options.update(parameterization=parameterization)
        data_options = dict(data=data, n=n, data_seed=data_seed, standardize=standardize)
        _kernel_store(
            out,
            arch_options,
            data_options,
            x2,
            tile,
            dtype,
            scheduler,
            workers,
            overwrite,
            width,
            direct_io=not buffered_io,
        )
        return
    try:
        if x2 is not None:
            raise ValueError("--x2 is for a .zarr --out (a kernel store)")
        if scheduler != "threads" or workers is not None:
            raise ValueError("--scheduler and --workers are for a .zarr --out (a kernel store)")
        if get not in ("ntk", "nngp"):
            raise ValueError(f"--get must be ntk or nngp, got {get!r}")
        _check_out(out)
        x = _load_data(data, n, data_seed, standardize, _torch_dtype(dtype))
        arch = wn.mlp(
            depth=depth,
            activation=activation,
            w_std=w_std,
            b_std=b_std,
            parameterization=parameterization,
        )
        t0 = time.perf_counter()
        k = arch.kernel(x, tile=tile, width=width, progress=_err().is_terminal)
        seconds = time.perf_counter() - t0
        arrays = {"nngp": k.nngp.cpu().numpy(), "ntk": k.ntk.cpu().numpy()}
        _save(out, arrays, get)
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    shape = "x".join(map(str, arrays["ntk"].shape))
    what = "nngp, ntk" if out.suffix.lower() == ".npz" else get
    _out().print(
        f"{what} ({shape}, {dtype}) of a depth-{depth} {activation} MLP on {x.shape[0]} points "
        f"in {seconds:.2f} s; ntk diagonal mean {float(np.mean(np.diag(arrays['ntk']))):.4g}",
        soft_wrap=True,
    )
    typer.echo(f"Saved: {out.resolve()}")


@app.command()
def ntk(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy or .npz (key 'ntk').")],
    width: Annotated[int, typer.Option("--width", help="Hidden width.")] = 1024,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network's initialisation.")] = 0,
    mode: Annotated[
        str, typer.Option("--mode", help="Empirical NTK mode (see wn.empirical_ntk).")
    ] = "trace",
    data: DataOpt = "digits",
    n: NOpt = None,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = 2**0.5,
    b_std: BStdOpt = 0.0,
    dtype: DtypeOpt = "float32",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    tile: Annotated[
        int, typer.Option("--tile", help="Tile size of a .zarr store (--out K.zarr).")
    ] = 4096,
    scheduler: SchedulerOpt = "threads",
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    buffered_io: BufferedIoOpt = False,
) -> None:
    """Empirical NTK of a finite-width widenet MLP at initialisation on data.

    --out T.zarr writes it tile by tile into a resumable Zarr store (mode trace).
    """
    import widenet as wn

    if out.suffix.lower() == ".zarr":
        arch_options = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        data_options = dict(data=data, n=n, data_seed=data_seed, standardize=standardize)
        network = dict(width=width, seed=seed, mode=mode)
        _kernel_store(
            out,
            arch_options,
            data_options,
            None,
            tile,
            dtype,
            scheduler,
            workers,
            overwrite,
            None,
            network=network,
            direct_io=not buffered_io,
        )
        return
    try:
        _check_out(out)
        torch_dtype = _torch_dtype(dtype)
        x = _load_data(data, n, data_seed, standardize, torch_dtype)
        arch = wn.mlp(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        net = arch.network(in_dim=x.shape[1], width=width, seed=seed, dtype=torch_dtype)
        t0 = time.perf_counter()
        theta = wn.empirical_ntk(net, x, mode=mode)
        seconds = time.perf_counter() - t0
        arrays = {"ntk": theta.detach().cpu().numpy()}
        _save(out, arrays, "ntk")
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    shape = "x".join(map(str, arrays["ntk"].shape))
    _out().print(
        f"empirical ntk ({shape}, mode={mode}) of a width-{width} depth-{depth} {activation} "
        f"MLP (seed {seed}) on {x.shape[0]} points in {seconds:.2f} s",
        soft_wrap=True,
    )
    typer.echo(f"Saved: {out.resolve()}")


@app.command("h-infinity")
def h_infinity(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (or .npz, key 'h').")],
    data: DataOpt = "digits",
    n: NOpt = None,
    normalize: Annotated[
        bool,
        typer.Option("--normalize/--no-normalize", help="Scale rows to unit norm, as Du et al."),
    ] = True,
    dtype: DtypeOpt = "float64",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
) -> None:
    """Du et al. (2018) Gram matrix H-infinity of a two-layer ReLU net on data, and its lambda_0."""
    import torch

    import widenet as wn

    try:
        _check_out(out)
        x = _load_data(data, n, data_seed, standardize, _torch_dtype(dtype))
        if normalize:
            norms = x.norm(dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ValueError("--normalize: the data has rows of zero norm")
            x = x / norms
        h = wn.h_infinity(x)
        _save(out, {"h": h.cpu().numpy()}, "h")
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    lam0 = float(torch.linalg.eigvalsh(h.double()).min())
    _out().print(
        f"H-infinity ({h.shape[0]}x{h.shape[1]}, {dtype}) on {x.shape[0]} points; "
        f"lambda_0 = lambda_min(H-infinity) = {lam0:.6g}",
        soft_wrap=True,
    )
    typer.echo(f"Saved: {out.resolve()}")


# --------------------------------------------------------------------------------------------
# Training dynamics: closed-form predictions


def _parse_times(times: list[str]) -> list[float]:
    import math

    parsed = []
    for raw in times:
        text = raw.strip().lower()
        try:
            value = math.inf if text in ("inf", "infinity") else float(text)
        except ValueError:
            raise ValueError(f"--time must be a number >= 0 or 'inf', got {raw!r}") from None
        if math.isnan(value) or value < 0:
            raise ValueError(f"--time must be a number >= 0 or 'inf', got {raw!r}")
        parsed.append(value)
    if not parsed:
        raise ValueError("--time: give at least one time")
    return parsed


def _load_targets(path: str, option: str, n_rows: int):
    """Targets from a .npy/.csv file: (n, k) float, or (n,) integer class labels (returned 1-D)."""
    import numpy as np

    file = Path(path)
    if file.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"{option} must be a .npy or .csv file, got {path!r}")
    if not file.is_file():
        raise ValueError(f"{option}: file {file} does not exist")
    if file.suffix.lower() == ".npy":
        y = np.load(file, allow_pickle=False)
    else:
        try:
            y = np.loadtxt(file, delimiter=",", ndmin=1)
        except ValueError:  # a header line
            y = np.loadtxt(file, delimiter=",", ndmin=1, skiprows=1)
    if y.ndim not in (1, 2):
        raise ValueError(f"{option}: targets must be 1-D or 2-D, got shape {y.shape}")
    if y.shape[0] < n_rows:
        raise ValueError(f"{option}: {y.shape[0]} rows for {n_rows} points")
    y = y[:n_rows]
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y  # class labels, encoded by the caller
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{option}: targets must be real numbers, got dtype {y.dtype}")
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"{option}: targets must be finite")
    return y[:, None] if y.ndim == 1 else y


def _encode_labels(train_labels, test_labels):
    """Integer labels -> one-hot targets (+-1 in one column for two classes), same classes."""
    import numpy as np

    parts = [train_labels] + ([] if test_labels is None else [test_labels])
    classes = np.unique(np.concatenate(parts))

    def encode(labels):
        if labels is None:
            return None
        idx = np.searchsorted(classes, labels)
        if len(classes) == 2:
            return np.where(idx == 1, 1.0, -1.0)[:, None]
        out = np.zeros((len(labels), len(classes)))
        out[np.arange(len(labels)), idx] = 1.0
        return out

    return encode(train_labels), encode(test_labels), classes


def _predict_data(train, test, n_train, n_test, targets, train_targets, test_targets, std, seed):
    """(x_train, y_train, x_test, y_test or None, description) as float64 numpy arrays."""
    import numpy as np

    from widenet.data import DATASETS, load_dataset

    if targets not in ("onehot",):
        if train_targets is not None:
            raise ValueError("give the train targets once: --targets FILE or --train-targets")
        train_targets, targets = targets, "onehot"
    bundled = train in DATASETS and not Path(train).exists()
    if bundled:
        if test != train:
            raise ValueError(
                f"--test must name the same bundled set as --train ({train!r}; they are split "
                f"into disjoint parts) or both must be files, got {test!r}"
            )
        if train_targets is not None or test_targets is not None:
            raise ValueError(
                "--targets FILE, --train-targets and --test-targets are for data files, not "
                "bundled sets"
            )
        for name, value in (("--n-train", n_train), ("--n-test", n_test)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if train == "sphere":
            if n_train is None or n_test is None:
                raise ValueError("the synthetic 'sphere' set needs --n-train and --n-test")
            x, y = load_dataset("sphere", n=n_train + n_test, seed=seed, dtype=_f64())
            x, y = x.numpy(), y.numpy()
            perm = np.arange(len(x))  # already a random draw
        else:
            x, y = load_dataset(train, standardize=True if std is None else std, dtype=_f64())
            x, y = x.numpy(), y.numpy()
            perm = np.random.default_rng(seed).permutation(len(x))
        total = len(x)
        if n_test is None:
            n_test = max(1, round(0.2 * total)) if n_train is None else total - n_train
        if n_train is None:
            n_train = total - n_test
        if n_train < 1 or n_test < 1 or n_train + n_test > total:
            raise ValueError(
                f"--n-train {n_train} + --n-test {n_test} must fit in the {total} points of "
                f"{train!r} (the two parts are disjoint)"
            )
        i_train, i_test = np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_test])
        if train == "sphere":  # regression on the first coordinate
            y_train, y_test = y[i_train][:, None], y[i_test][:, None]
        else:
            y_train, y_test, _ = _encode_labels(y[i_train], y[i_test])
        what = f"{train}: {n_train} train / {n_test} test points (disjoint, --data-seed {seed})"
        return x[i_train], y_train, x[i_test], y_test, what
    # files
    if test in DATASETS and not Path(test).exists():
        raise ValueError(f"--test {test!r} is a bundled set but --train is a file: give two files")
    for option, value in (("--train", train), ("--test", test)):
        if Path(value).suffix.lower() not in (".npy", ".csv"):
            raise ValueError(
                f"{option} must be a .npy/.csv file or a bundled set "
                f"({', '.join(DATASETS)}), got {value!r}"
            )
    if train_targets is None:
        raise ValueError("--train is a file: give its targets with --train-targets FILE")
    try:
        x_train = _load_data(train, n_train, seed, False, _f64()).numpy()
    except ValueError as err:
        raise ValueError(f"--train: {err}") from None
    try:
        x_test = _load_data(test, n_test, seed, False, _f64()).numpy()
    except ValueError as err:
        raise ValueError(f"--test: {err}") from None
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"--train has {x_train.shape[1]} features but --test has {x_test.shape[1]}"
        )
    if std:  # with the training set's statistics, for both
        mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
    y_train = _load_targets(train_targets, "--train-targets", len(x_train))
    y_test = None
    if test_targets is not None:
        y_test = _load_targets(test_targets, "--test-targets", len(x_test))
    if y_train.ndim == 1 or (y_test is not None and y_test.ndim == 1):
        if y_train.ndim != 1 or (y_test is not None and y_test.ndim != 1):
            raise ValueError("--train-targets and --test-targets: both labels or both targets")
        y_train, y_test, _ = _encode_labels(y_train, y_test)
    if y_test is not None and y_test.shape[1] != y_train.shape[1]:
        raise ValueError(
            f"--test-targets has {y_test.shape[1]} columns but --train-targets {y_train.shape[1]}"
        )
    what = f"{train} ({len(x_train)} points) -> {test} ({len(x_test)} points)"
    return x_train, y_train, x_test, y_test, what


def _f64():
    import torch

    return torch.float64


def _prediction_metrics(times, mean, y, train_mean, y_train) -> dict:
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


@app.command()
def predict(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .npz (times, test_mean, test_variance); metrics in .json."
        ),
    ],
    train: Annotated[
        str, typer.Option("--train", help="Training inputs: " + _DATA_HELP)
    ] = "digits",
    test: Annotated[
        str,
        typer.Option(
            "--test", help="Test inputs: a .npy/.csv file, or the same bundled set as --train."
        ),
    ] = "digits",
    n_train: Annotated[
        int | None,
        typer.Option("--n-train", help="Training points (default: the rest of a bundled set)."),
    ] = None,
    n_test: Annotated[
        int | None,
        typer.Option("--n-test", help="Test points (default: 20% of a bundled set)."),
    ] = None,
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="onehot: bundled labels one-hot (+-1 for 2 classes), or a FILE of train targets.",
        ),
    ] = "onehot",
    train_targets: Annotated[
        str | None,
        typer.Option(
            "--train-targets",
            help="Train targets .npy/.csv (n, k), or (n,) integer labels (encoded as onehot).",
        ),
    ] = None,
    test_targets: Annotated[
        str | None,
        typer.Option("--test-targets", help="Test targets (optional): MSE and accuracy."),
    ] = None,
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
        typer.Option(
            "--variance/--no-variance",
            help="Predictive variance of the infinite-width ensemble (needs a T*m*m buffer).",
        ),
    ] = True,
    depth: DepthOpt = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = 2**0.5,
    b_std: BStdOpt = 0.0,
    standardize: StandardizeOpt = None,
    data_seed: Annotated[
        int, typer.Option("--data-seed", help="Seed of the train/test split of a bundled set.")
    ] = 0,
) -> None:
    """Closed-form predictions of the infinite-width network trained by gradient flow on MSE.

    Ensemble mean test_mean (T, m, k) and variance test_variance (T, m) go to OUT (.npz).

    Per-time MSE and accuracy go to OUT with a .json suffix. Loss: 1/(2N) sum (f - y)^2.
    """
    import json

    import numpy as np
    import torch

    import widenet as wn
    from widenet import dynamics

    try:
        if out.suffix.lower() != ".npz":
            raise ValueError(f"--out must end in .npz, got {out.name!r}")
        if kernel_name not in ("ntk", "nngp"):
            raise ValueError(f"--kernel must be ntk or nngp, got {kernel_name!r}")
        if not learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {learning_rate}")
        if not diag_reg >= 0:
            raise ValueError(f"--diag-reg must be >= 0, got {diag_reg}")
        times = _parse_times(time_ if time_ else ["1", "10", "100", "1000", "10000", "inf"])
        x_train, y_train, x_test, y_test, what = _predict_data(
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
        arch = wn.mlp(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
        t0 = time.perf_counter()
        xtr, xte = torch.as_tensor(x_train), torch.as_tensor(x_test)
        k_tt = arch.kernel(xtr)
        k_xt = arch.kernel(xte, xtr)
        k_xx = arch.kernel(xte, get="nngp") if variance else None
        kernel_seconds = time.perf_counter() - t0
        yt = torch.as_tensor(y_train)
        t = torch.as_tensor(times, dtype=torch.float64)
        opts = dict(learning_rate=learning_rate, loss="mean", diag_reg=diag_reg)
        theta_tt = k_tt.ntk if kernel_name == "ntk" else k_tt.nngp
        theta_xt = k_xt.ntk if kernel_name == "ntk" else k_xt.nngp
        t0 = time.perf_counter()
        flow = dynamics.gradient_flow_mse(
            theta_tt,
            yt,
            t,
            ntk_test_train=theta_xt,
            f0_train=torch.zeros_like(yt),
            f0_test=torch.zeros(len(x_test), yt.shape[1], dtype=yt.dtype),
            **opts,
        )
        arrays = {
            "times": np.asarray(times),
            "test_mean": flow.test.cpu().numpy(),
            "train_mean": flow.train.cpu().numpy(),
        }
        if variance:
            gp = dynamics.gp_ensemble_mse(
                k_tt.nngp, theta_tt, k_xt.nngp, theta_xt, k_xx.nngp, yt, t, **opts
            )
            cov = gp.covariance
            arrays["test_variance"] = torch.diagonal(cov, dim1=-2, dim2=-1).cpu().numpy()
            del cov, gp
        predict_seconds = time.perf_counter() - t0
        if y_test is not None:
            arrays["test_targets"] = y_test
        arrays["train_targets"] = y_train
        metrics = _prediction_metrics(
            times, arrays["test_mean"], y_test, arrays["train_mean"], y_train
        )
        metrics.update(
            kernel=kernel_name,
            data=what,
            architecture=dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std),
            learning_rate=learning_rate,
            diag_reg=diag_reg,
            loss="mean",
            n_train=len(x_train),
            n_test=len(x_test),
            outputs=int(y_train.shape[1]),
            seconds=dict(kernels=kernel_seconds, dynamics=predict_seconds),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
        out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as err:
        raise _fail(str(err)) from None

    console = _out()
    console.print(
        f"{kernel_name} gradient flow (MSE, lr {learning_rate:g}) of a depth-{depth} "
        f"{activation} MLP; {what}; kernels {kernel_seconds:.2f} s, dynamics "
        f"{predict_seconds:.2f} s",
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
    typer.echo(f"Saved: {out.resolve()} and {out.with_suffix('.json').name}")


# ---- kernel stores on disk and on Dask; solvers at scale (issue 9) ----


def _scheduler_arg(scheduler: str):
    if scheduler in ("threads", "processes") or "://" in scheduler:
        return scheduler
    raise ValueError(
        f"--scheduler must be threads, processes or a Dask address tcp://host:port, got "
        f"{scheduler!r}"
    )


def _kernel_store(
    out,
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
):
    """`widenet kernel/ntk --out K.zarr`: write (or complete) a kernel store."""
    import widenet as wn
    from widenet import scale

    try:
        torch_dtype = _torch_dtype(dtype)
        x = _load_data(
            data_options["data"],
            data_options["n"],
            data_options["data_seed"],
            data_options["standardize"],
            torch_dtype,
        )
        xb = None if x2 is None else _load_data(x2, None, 0, False, torch_dtype)
        arch = wn.mlp(**arch_options)
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
            out=out,
            tile=scale.DEFAULT_TILE if tile is None else tile,
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
    except scale.StoreMismatchError as err:
        raise _fail(str(err)) from None
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    total = len(store.grid())
    n1, n2 = store.shape
    _out().print(
        f"{', '.join(store.kernels)} ({n1}x{n2}, {dtype}, tile {store.tile}): computed "
        f"{len(store.written_tiles)} of {total} tiles in {seconds:.2f} s "
        f"({total - len(store.written_tiles)} were already done)",
        soft_wrap=True,
    )
    typer.echo(f"Saved: {Path(out).resolve()}")


def _store_targets(store, targets: str):
    """Targets for a store: a file, or 'onehot' labels of the bundled set it was computed on."""
    import numpy as np

    from widenet.data import DATASETS, load_dataset

    n = store.shape[0]
    if targets != "onehot":
        y = _load_targets(targets, "--targets", n)
        if y.ndim == 1:
            y, _, _ = _encode_labels(y, None)
        return y
    cli = store.meta.get("extra", {}).get("cli_data")
    if not cli or cli.get("data") not in DATASETS or cli["data"] == "sphere":
        raise ValueError(
            "--targets onehot needs a store made by `widenet kernel --data <bundled classification "
            "set>`; give the targets as a .npy/.csv file (--targets FILE)"
        )
    std = True if cli.get("standardize") is None else cli["standardize"]
    _, labels = load_dataset(cli["data"], n=cli["n"], seed=cli["data_seed"], standardize=std)
    y, _, _ = _encode_labels(np.asarray(labels), None)
    return y


def _test_diagonal(path: Path, which: str):
    """K(x, x) of the test points: the diagonal of a symmetric store, or a 1-D .npy file."""
    import numpy as np

    from widenet import scale

    if path.suffix.lower() == ".npy":
        diag = np.load(path, allow_pickle=False)
        if diag.ndim != 1:
            raise ValueError(f"--test-diagonal {path.name}: expected shape (m,), got {diag.shape}")
        return diag
    store = scale.open_kernel(path)
    if not store.symmetric:
        raise ValueError(f"--test-diagonal {path.name}: expected a symmetric store K(x, x)")
    return store.diagonal(which)


@app.command()
def solve(
    store_path: Annotated[Path, typer.Argument(help="Train kernel store K(X, X) (.zarr).")],
    out: Annotated[
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
) -> None:
    """Kernel ridge regression or gradient-flow predictions from a kernel store (streamed).

    Without --time: alpha = (K + ridge I)^-1 y (Cholesky if it fits in memory, else
    preconditioned CG), train and test predictions. With --time: outputs of gradient flow on
    the MSE loss at those times from the top --rank eigenpairs (Lanczos), with error bounds
    (train; test with --test-diagonal).
    """
    import numpy as np

    from widenet import scale

    try:
        if out.suffix.lower() != ".npz":
            raise ValueError(f"--out must end in .npz, got {out.name!r}")
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
            times = _parse_times(time_)
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
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    console = _out()
    console.print(
        f"{kernel_name} on {store.shape[0]} points: {what}; {seconds:.2f} s", soft_wrap=True
    )
    table = Table("", "train MSE", "train error bound (max over outputs)", box=None)
    for label, mse_value, bound in rows:
        table.add_row(label, f"{mse_value:.4g}", "" if bound is None else f"{bound:.3g}")
    console.print(table)
    typer.echo(f"Saved: {out.resolve()}")


# ---- distribution shift (issue 8) ----


_SHIFT_DATA_HELP = "A .npy/.csv file (rows = points) or a bundled set: digits, iris, wine, "
_SHIFT_DATA_HELP += "breast_cancer (then --source and --target name the same set, split in two)."
_CLASSIFIERS = ("logistic", "gradient-boosting", "random-forest")


def _shift_classifier(name: str, c: float, seed: int):
    """A probabilistic scikit-learn classifier by name (for the domain or the black box)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if name == "logistic":
        if not c > 0:
            raise ValueError(f"--c must be > 0, got {c}")
        return LogisticRegression(C=c, max_iter=5000)
    if name == "gradient-boosting":
        return HistGradientBoostingClassifier(random_state=seed)
    if name == "random-forest":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=seed)
    raise ValueError(f"--classifier must be one of {', '.join(_CLASSIFIERS)}, got {name!r}")


def _shift_features(option: str, path: str):
    """Features (n, d) float64 from a .npy/.csv file, with the option's name on errors."""
    try:
        return _load_data(path, None, 0, False, _f64()).numpy()
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None


def _shift_labels(option: str, path: str, n_rows: int):
    """Integer class labels (n,) from a .npy/.csv file."""
    from widenet.shift import _labels

    y = _load_targets(path, option, n_rows)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    try:
        return _labels(y, option, n_rows)
    except ValueError as err:
        raise ValueError(str(err)) from None


def _bundled_pair(source: str, target: str) -> bool:
    """True for a bundled set named twice, False for two files; anything else is an error."""
    from widenet.data import SKLEARN_DATASETS

    bundled = [v in SKLEARN_DATASETS and not Path(v).exists() for v in (source, target)]
    if all(bundled):
        if source != target:
            raise ValueError(
                f"--source and --target must name the same bundled set (it is split in two), "
                f"got {source!r} and {target!r}"
            )
        return True
    if any(bundled):
        raise ValueError("--source and --target: give two .npy/.csv files or one bundled set twice")
    return False


def _standardize_pair(xs, xt):
    """Z-score both with the source's statistics (constant features left at 0)."""
    import numpy as np

    mean, sd = xs.mean(axis=0), xs.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (xs - mean) / sd, (xt - mean) / sd


def _write_json(out: Path, payload: dict) -> None:
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")


def _summary_table(rows) -> Table:
    table = Table("quantity", "value", box=None, pad_edge=False)
    for key, value in rows:
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


@app.command("covariate-weights")
def covariate_weights(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Weights at the source points: .npy, or .npz (weights, "
            "raw_weights, target_probability[, true_weights]); a summary goes to OUT with .json.",
        ),
    ],
    source: Annotated[str, typer.Option("--source", help="Source inputs. " + _SHIFT_DATA_HELP)],
    target: Annotated[str, typer.Option("--target", help="Unlabelled target inputs.")],
    classifier: Annotated[
        str, typer.Option("--classifier", help="Domain classifier: " + ", ".join(_CLASSIFIERS))
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    clip: Annotated[
        float | None, typer.Option("--clip", help="Upper bound on the raw weights (reported).")
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="Rescale the weights to mean 1.")
    ] = True,
    folds: Annotated[
        int | None, typer.Option("--folds", help="Cross-fitting folds (default: in-sample).")
    ] = None,
    beta: Annotated[
        float,
        typer.Option("--beta", help="Bundled set: strength of the induced selection on --feature."),
    ] = 1.0,
    feature: Annotated[
        str, typer.Option("--feature", help="Bundled set: 'pc1' or a column index.")
    ] = "pc1",
    standardize: StandardizeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, classifier and split.")] = 0,
) -> None:
    """Importance weights w(x) = p_target(x)/p_source(x) from a domain classifier, and the ESS.

    With one bundled set named twice, a covariate shift is induced (selection by sigmoid(-+beta
    z) of a feature z, wn.shift.feature_shift) and the true weights are saved and compared.
    """
    import numpy as np

    from widenet import shift
    from widenet.data import load_dataset

    try:
        if out.suffix.lower() not in (".npy", ".npz"):
            raise ValueError(f"--out must end in .npy or .npz, got {out.name!r}")
        true = None
        if _bundled_pair(source, target):
            x, _ = load_dataset(source, standardize=standardize is not False, dtype=_f64())
            feat = int(feature) if feature.isdigit() else feature
            src, tgt, true = shift.feature_shift(x, beta, feature=feat, seed=seed)
            xs, xt = x.numpy()[src], x.numpy()[tgt]
            what = f"{source}: induced shift beta={beta:g} on {feature}"
        else:
            xs, xt = _shift_features("--source", source), _shift_features("--target", target)
            if xs.shape[1] != xt.shape[1]:
                raise ValueError(
                    f"--source has {xs.shape[1]} features but --target has {xt.shape[1]}"
                )
            if standardize:
                xs, xt = _standardize_pair(xs, xt)
            what = f"{source} -> {target}"
        cw = shift.covariate_shift_weights(
            xs,
            xt,
            _shift_classifier(classifier, c, seed),
            clip=clip,
            normalize=normalize,
            folds=folds,
            seed=seed,
        )
        summary = {"data": what, "classifier": classifier, **cw.summary()}
        arrays = {
            "weights": cw.weights,
            "raw_weights": cw.raw_weights,
            "target_probability": cw.target_probability,
        }
        if true is not None:
            true = true / true.mean() if normalize else true
            arrays["true_weights"] = true
            summary["relative_error"] = float(
                np.linalg.norm(cw.weights - true) / np.linalg.norm(true)
            )
        _save(out, arrays, "weights")
        _write_json(out.with_suffix(".json"), summary)
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    _out().print(f"covariate-shift weights, {what}", soft_wrap=True)
    _out().print(_summary_table([(k, v) for k, v in summary.items() if k != "data"]))
    typer.echo(f"Saved: {out.resolve()} and {out.with_suffix('.json').name}")


def _parse_induce(tweak_one: str | None, dirichlet: float | None, k: int, seed: int):
    """The target prior of an induced label shift, or None."""
    from widenet import shift

    if tweak_one is not None and dirichlet is not None:
        raise ValueError("give at most one of --tweak-one and --dirichlet")
    if tweak_one is not None:
        try:
            cls, rho = tweak_one.split(":")
            return shift.tweak_one_prior(k, int(cls), float(rho))
        except ValueError as err:
            raise ValueError(f"--tweak-one must be CLASS:RHO (e.g. 3:0.5): {err}") from None
    if dirichlet is not None:
        return shift.dirichlet_prior(k, dirichlet, seed=seed)
    return None


@app.command("label-shift")
def label_shift(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output .json: weights, q(y), confusion, test."),
    ],
    source: Annotated[
        str | None, typer.Option("--source", help="Source inputs. " + _SHIFT_DATA_HELP)
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target inputs.")] = None,
    source_labels: Annotated[
        str | None, typer.Option("--source-labels", help="Source labels .npy/.csv (files).")
    ] = None,
    source_pred: Annotated[
        str | None,
        typer.Option(
            "--source-pred",
            help="Black-box mode: your model's predictions on held-out labelled source data, "
            "(n,) labels or (n, k) probabilities (.npy/.csv); with --source-labels.",
        ),
    ] = None,
    target_pred: Annotated[
        str | None, typer.Option("--target-pred", help="Black-box mode: predictions on target.")
    ] = None,
    holdout: Annotated[
        float, typer.Option("--holdout", help="Fraction of the source held out for C_hat.")
    ] = 0.4,
    classifier: Annotated[
        str, typer.Option("--classifier", help="Black box fitted on the source: logistic, ...")
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    soft: Annotated[
        bool, typer.Option("--soft/--hard", help="BBSE on probabilities or predicted labels.")
    ] = False,
    regularization: Annotated[
        float, typer.Option("--regularization", help="Ridge of the solve (0 = exact).")
    ] = 0.0,
    test: Annotated[
        str, typer.Option("--test", help="Two-sample test: chi2, g or permutation.")
    ] = "chi2",
    tweak_one: Annotated[
        str | None,
        typer.Option("--tweak-one", help="Bundled set: target prior tweak-one CLASS:RHO."),
    ] = None,
    dirichlet: Annotated[
        float | None,
        typer.Option("--dirichlet", help="Bundled set: target prior ~ Dirichlet(ALPHA)."),
    ] = None,
    n_target: Annotated[
        int, typer.Option("--n-target", help="Bundled set: target points drawn.")
    ] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Seed of splits and draws.")] = 0,
) -> None:
    """Black-box shift estimation (Lipton et al. 2018): w = q(y)/p(y), q(y), and a shift test.

    Give either your model's predictions (--source-pred, --source-labels, --target-pred), or
    inputs (--source, --source-labels, --target: a classifier is fitted on part of the source),
    or one bundled set twice (optionally with an induced --tweak-one or --dirichlet shift).
    """
    import numpy as np

    from widenet import shift
    from widenet.data import load_dataset

    try:
        if out.suffix.lower() != ".json":
            raise ValueError(f"--out must end in .json, got {out.name!r}")
        if not 0 < holdout < 1:
            raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
        rng = np.random.default_rng(seed)
        true_prior = None
        if source_pred is not None or target_pred is not None:
            if source_pred is None or target_pred is None or source_labels is None:
                raise ValueError(
                    "black-box mode needs --source-pred, --source-labels and --target-pred"
                )
            if source is not None or target is not None:
                raise ValueError("give either predictions (--source-pred ...) or --source/--target")
            ps = _shift_features("--source-pred", source_pred)
            pt = _shift_features("--target-pred", target_pred)
            ps, pt = (ps[:, 0], pt[:, 0]) if ps.shape[1] == 1 == pt.shape[1] else (ps, pt)
            ys = _shift_labels("--source-labels", source_labels, len(ps))
            classes = None if ps.ndim == 1 else np.arange(ps.shape[1])
            what = f"predictions {source_pred} -> {target_pred}"
        else:
            if source is None or target is None:
                raise ValueError("give --source and --target (or the black-box predictions)")
            if _bundled_pair(source, target):
                x, y = load_dataset(source, dtype=_f64())
                x, y = x.numpy(), y.numpy()
                k = int(y.max()) + 1
                perm = rng.permutation(len(x))
                half = len(x) // 2
                pool_s, pool_t = perm[:half], perm[half:]
                q = _parse_induce(tweak_one, dirichlet, k, seed)
                if q is not None:
                    true_prior = (q, np.bincount(y[pool_s], minlength=k) / half)
                    pool_t = pool_t[shift.sample_with_prior(y[pool_t], q, n_target, seed=seed)]
                xs, ys, xt = x[pool_s], y[pool_s], x[pool_t]
                what = f"{source}: {len(xs)} source / {len(xt)} target points"
            else:
                if tweak_one is not None or dirichlet is not None:
                    raise ValueError("--tweak-one/--dirichlet induce a shift on bundled sets only")
                if source_labels is None:
                    raise ValueError("--source is a file: give its labels with --source-labels")
                xs, xt = _shift_features("--source", source), _shift_features("--target", target)
                if xs.shape[1] != xt.shape[1]:
                    raise ValueError(
                        f"--source has {xs.shape[1]} features but --target has {xt.shape[1]}"
                    )
                ys = _shift_labels("--source-labels", source_labels, len(xs))
                what = f"{source} -> {target}"
            perm = rng.permutation(len(xs))
            n_ho = int(round(holdout * len(xs)))
            if n_ho < 1 or n_ho >= len(xs):
                raise ValueError(f"--holdout {holdout} leaves no training or held-out points")
            tr, ho = perm[n_ho:], perm[:n_ho]
            model = _shift_classifier(classifier, c, seed).fit(xs[tr], ys[tr])
            classes = model.classes_
            if soft:
                ps, pt = model.predict_proba(xs[ho]), model.predict_proba(xt)
            else:
                ps, pt = model.predict(xs[ho]), model.predict(xt)
            ys = ys[ho]
            if soft and len(classes) != len(np.unique(ys)):
                raise ValueError("--soft: every class must appear in the held-out source labels")
        est = shift.bbse(ps, ys, pt, classes=classes, regularization=regularization)
        hard = [p if p.ndim == 1 else est.classes[p.argmax(1)] for p in (ps, pt)]
        result = shift.label_shift_test(*hard, classes=est.classes, method=test, seed=seed)
        payload = {"data": what, **est.summary()}
        payload["confusion"] = est.confusion.tolist()
        payload["test"] = {
            "method": result.method,
            "statistic": result.statistic,
            "p_value": result.p_value,
            "dof": result.dof,
        }
        if true_prior is not None:
            q, p = true_prior
            payload["true_weights"] = (q / p).tolist()
            payload["weight_mse"] = float(np.mean((est.weights - q / p) ** 2))
        _write_json(out, payload)
    except (ValueError, TypeError, OSError, np.linalg.LinAlgError) as err:
        raise _fail(str(err)) from None
    console = _out()
    console.print(f"BBSE, {what}; cond(C_hat) = {est.condition_number:.3g}", soft_wrap=True)
    table = Table("class", "p(y) source", "w_hat", "q_hat(y)", box=None, pad_edge=False)
    for i, cls in enumerate(est.classes):
        table.add_row(
            str(cls),
            f"{est.source_prior[i]:.3f}",
            f"{est.weights[i]:.3f}",
            f"{est.target_prior[i]:.3f}",
        )
    console.print(table)
    if est.negative:
        console.print(f"negative w_hat (set to 0 in q_hat) for classes {est.negative}")
    if "weight_mse" in payload:
        console.print(f"induced shift: mean squared error of w_hat {payload['weight_mse']:.4g}")
    console.print(
        f"{result.method} test of p(y_hat) = q(y_hat): statistic {result.statistic:.4g}, "
        f"dof {result.dof}, p-value {result.p_value:.3g}",
        soft_wrap=True,
    )
    typer.echo(f"Saved: {out.resolve()}")


@app.command("weighted-fit")
def weighted_fit(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Predicted labels on --predict: .npy (or .npz).")
    ],
    train: Annotated[str, typer.Option("--train", help="Training inputs .npy/.csv.")],
    labels: Annotated[str, typer.Option("--labels", help="Training labels .npy/.csv.")],
    predict: Annotated[str, typer.Option("--predict", help="Inputs to predict .npy/.csv.")],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Per-example weights .npy/.csv (e.g. from "
            "covariate-weights; an .npz: its 'weights'); default: all 1.",
        ),
    ] = None,
    label_weights: Annotated[
        str | None,
        typer.Option(
            "--label-weights", help="A label-shift .json: weights max(w_hat(y_i), 0) per label."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="logistic (scikit-learn) or mlp (torch).")
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    width: Annotated[int, typer.Option("--width", help="mlp: hidden width.")] = 128,
    steps: Annotated[int, typer.Option("--steps", help="mlp: Adam steps (full batch).")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="mlp: Adam learning rate.")] = 0.01,
    test_labels: Annotated[
        str | None, typer.Option("--test-labels", help="Labels of --predict: report accuracy.")
    ] = None,
    standardize: StandardizeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network.")] = 0,
) -> None:
    """Weighted empirical risk minimisation: fit with per-example weights, predict new inputs."""
    import json

    import numpy as np
    import torch

    import widenet as wn
    from widenet import shift

    try:
        if out.suffix.lower() not in (".npy", ".npz"):
            raise ValueError(f"--out must end in .npy or .npz, got {out.name!r}")
        if weights is not None and label_weights is not None:
            raise ValueError("give at most one of --weights and --label-weights")
        xs, xp = _shift_features("--train", train), _shift_features("--predict", predict)
        if xs.shape[1] != xp.shape[1]:
            raise ValueError(f"--train has {xs.shape[1]} features but --predict {xp.shape[1]}")
        if standardize:
            xs, xp = _standardize_pair(xs, xp)
        ys = _shift_labels("--labels", labels, len(xs))
        if weights is not None:
            path = Path(weights)
            if path.suffix.lower() == ".npz":
                w = np.load(path, allow_pickle=False)["weights"]
            else:
                w = _load_targets(weights, "--weights", len(xs))
                w = w.reshape(len(w), -1)[:, 0] if w.ndim == 2 and w.shape[1] == 1 else w
        elif label_weights is not None:
            payload = json.loads(Path(label_weights).read_text())
            table = dict(zip(payload["classes"], payload["weights"], strict=True))
            missing = sorted(set(np.unique(ys).tolist()) - set(table))
            if missing:
                raise ValueError(f"--label-weights has no weight for labels {missing}")
            w = np.array([max(table[v], 0.0) for v in ys.tolist()])
        else:
            w = np.ones(len(xs))
        ess = shift.effective_sample_size(np.asarray(w, dtype=np.float64).reshape(-1))
        if model == "logistic":
            fitted = shift.fit_weighted_sklearn(_shift_classifier("logistic", c, seed), xs, ys, w)
            classes, proba = fitted.classes_, fitted.predict_proba(xp)
        elif model == "mlp":
            classes = np.unique(ys)
            idx = np.searchsorted(classes, ys)
            net = wn.mlp(depth=1, activation="relu", out_dim=len(classes)).network(
                xs.shape[1], width, seed, dtype=torch.float64
            )
            shift.fit_weighted(net, xs, idx, w, steps=steps, lr=lr, seed=seed)
            with torch.no_grad():
                proba = torch.softmax(net(torch.as_tensor(xp)), 1).numpy()
        else:
            raise ValueError(f"--model must be logistic or mlp, got {model!r}")
        pred = classes[proba.argmax(1)]
        _save(out, {"predictions": pred, "probabilities": proba, "classes": classes}, "predictions")
        accuracy = None
        if test_labels is not None:
            accuracy = float(np.mean(pred == _shift_labels("--test-labels", test_labels, len(xp))))
    except (ValueError, TypeError, OSError, KeyError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    rows = [("model", model), ("n_train", len(xs)), ("ESS of the weights", ess)]
    if accuracy is not None:
        rows.append(("accuracy on --predict", accuracy))
    _out().print(_summary_table(rows))
    typer.echo(f"Saved: {out.resolve()}")


# ---- initialization and signal propagation (issue 8) ----


def _init_kwargs(scheme: str, activation: str, b_var: float) -> dict:
    """The activation-dependent arguments of a wn.init scheme (Kaiming's gain, critical's point)."""
    if scheme in ("kaiming_normal", "kaiming_uniform"):
        return {"activation": activation}
    if scheme == "critical":
        return {"activation": activation, "b_var": b_var}
    return {}


def _json_ready(value):
    """Non-finite floats -> None (strict JSON), recursively."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


@app.command("signal")
def signal_cmd(
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A model saved with torch.save(model, path) (a pickled nn.Module: load only "
            "files you trust). Default: build an MLP from --depth/--width/--activation/--init.",
        ),
    ] = None,
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
    b_var: Annotated[float, typer.Option("--b-var", help="sigma_b^2 of --init critical.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the weights and cotangent.")] = 0,
    data: DataOpt = "digits",
    n: Annotated[int | None, typer.Option("--n", help="Number of points.")] = 256,
    dtype: DtypeOpt = "float64",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Healthy range [1/T, T] of the ratios.")
    ] = 100.0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the full report as JSON.")
    ] = None,
) -> None:
    """Forward variance and gradient norms per layer at initialization, their mean-field
    prediction, and a verdict (healthy / vanishing / exploding)."""
    import json

    import torch

    import widenet as wn

    try:
        torch_dtype = _torch_dtype(dtype)
        x = _load_data(data, n, data_seed, standardize, torch_dtype)
        if model_path is not None:
            if not model_path.is_file():
                raise ValueError(f"--model {model_path} does not exist")
            model = torch.load(model_path, weights_only=False, map_location="cpu")
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"--model must hold a torch.nn.Module, got {type(model).__name__}")
            model.eval()
            x = x.to(next(model.parameters()).dtype)
            what = f"model {model_path.name}"
        else:
            arch = wn.mlp(depth=depth, activation=activation)
            model = arch.network(x.shape[1], width, seed=seed, dtype=torch_dtype)
            wn.init.initialize(model, scheme, seed=seed, **_init_kwargs(scheme, activation, b_var))
            what = f"depth-{depth} width-{width} {activation} MLP, {scheme} init"
        report = wn.signal_propagation(model, x, seed=seed, threshold=threshold)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_json_ready(report.to_dict()), indent=2) + "\n")
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        raise _fail(str(err)) from None
    console = _out()
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
    if out is not None:
        typer.echo(f"Saved: {out.resolve()}")


@app.command("critical-init")
def critical_init(
    activation: ActivationOpt = "tanh",
    b_var: Annotated[float, typer.Option("--b-var", help="sigma_b^2 (bias variance).")] = 0.0,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The edge-of-chaos (sigma_w^2, sigma_b^2) of an activation: chi = 1 at the q-map's fixed
    point (Poole et al. 2016; Schoenholz et al. 2017)."""
    import json

    import widenet as wn

    try:
        point = wn.init.critical_point(activation, b_var)
    except (ValueError, TypeError) as err:
        raise _fail(str(err)) from None
    if json_:
        typer.echo(json.dumps(_json_ready(point.to_dict())))
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
    _out().print(table)
    typer.echo(
        f"Use: W ~ N(0, {point.w_var:.6g} / fan_in), b ~ N(0, {point.b_var:.6g}); "
        f"wn.init.critical(model, {activation!r}, b_var={b_var:g})"
    )


# ---- embedding principle: embed and hessian (issue 5) ----
_MODEL_HELP = "Model file: .safetensors, or a torch.save state dict (read with weights_only=True)"
_MODEL_HELP += " of an nn.Sequential of Linear + activation layers."
ModelArg = Annotated[Path, typer.Argument(help=_MODEL_HELP, show_default=False)]
LayersOpt = Annotated[
    str | None,
    typer.Option("--layers", help="Layer sizes 'in,hidden,...,out', checked against the file."),
]
ParamOpt = Annotated[
    str,
    typer.Option(
        "--parameterization",
        help="standard (nn.Linear) or ntk (widenet's mlp networks: W scaled by w_std/sqrt(fan_in),"
        " b by b_std).",
    ),
]
RunDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (new or empty).")]


def _load_fcnet(model: Path, activation, parameterization, w_std, b_std, layers):
    """The saved model as a widenet.embedding.FCNet in float64."""
    import torch

    from widenet.embedding import FCNet, load_state_dict

    sizes = None
    if layers is not None:
        try:
            sizes = [int(v) for v in layers.split(",")]
        except ValueError:
            raise ValueError(f"--layers must be integers like '1,5,1', got {layers!r}") from None
    state = load_state_dict(model)
    net = FCNet.from_state_dict(
        state,
        activation,
        parameterization=parameterization,
        w_std=w_std,
        b_std=b_std,
        layers=sizes,
    )
    return net.to(torch.float64)


def _run_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    import numpy as np
    import torch

    x = _load_data(data, n, data_seed, standardize, torch.float64)
    y = _load_targets(targets, "--targets", len(x))
    y = np.asarray(y, dtype=np.float64)
    return x, torch.as_tensor(y[:, None] if y.ndim == 1 else y)


@app.command()
def embed(
    model: ModelArg,
    out: RunDirOpt,
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = 1.0,
    b_std: BStdOpt = 1.0,
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
    import json

    import torch

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
            x = _load_data(data, n, data_seed, standardize, torch.float64)
            diff = float((wide(x) - net(x)).abs().max())
            summary.update(n_points=len(x), max_output_difference=diff)
        folder = _run_folder(out)
        wide.save(folder / "model.safetensors")
        (folder / "embedding.json").write_text(json.dumps(summary, indent=2) + "\n")
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    console = _out()
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
    typer.echo(f"Saved: {(out / 'model.safetensors').resolve()} and embedding.json")


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


@app.command()
def hessian(
    model: ModelArg,
    out: RunDirOpt,
    data: DataOpt = "digits",
    targets: Annotated[
        str, typer.Option("--targets", help="Targets file (.npy/.csv), one row per point.")
    ] = "",
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = 1.0,
    b_std: BStdOpt = 1.0,
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
    import json

    import numpy as np
    import torch

    from widenet import landscape
    from widenet.embedding import FCNet

    try:
        if not targets:
            raise ValueError("--targets is required (a .npy/.csv file with one row per point)")
        net = _load_fcnet(model, activation, parameterization, w_std, b_std, layers)
        if slice_points < 0 or slice_points == 1:
            raise ValueError(f"--slice must be 0 (none) or >= 2 points, got {slice_points}")
        other = None
        if toward is not None:
            other = _load_fcnet(toward, activation, parameterization, w_std, b_std, None)
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
        loss, theta = landscape.loss_function(module, x, y)
        summary.update(
            n_points=len(x),
            num_parameters=theta.numel(),
            loss=float(loss(theta)),
            grad_norm=float(landscape.gradient(module, x, y).norm()),
        )
        if lanczos is None:
            lam = torch.linalg.eigvalsh(landscape.hessian(module, x, y))
            inert = landscape.inertia(lam, tol=inertia_tol)
            summary["inertia"] = {
                "negative": inert.negative,
                "zero": inert.zero,
                "positive": inert.positive,
                "tol": inert.tol,
                "gap": list(inert.gap),
            }
            eig = lam.cpu().numpy()
        else:
            ext = landscape.hessian_extreme_eigenvalues(module, x, y, k=lanczos)
            summary["largest"] = ext.largest.tolist()
            summary["smallest"] = ext.smallest.tolist()
            eig = np.concatenate([ext.smallest.cpu().numpy(), ext.largest.cpu().numpy()])
        folder = _run_folder(out)
        np.save(folder / "eigenvalues.npy", eig)
        _slices(folder, module, x, y, slice_points, slice_seed, other)
        if critical is not None:
            FCNet.from_module(module).save(folder / "critical.safetensors")
        (folder / "hessian.json").write_text(json.dumps(summary, indent=2) + "\n")
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    console = _out()
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
    typer.echo(f"Saved: {(out / 'hessian.json').resolve()}")


# ---- condensation (issue 5) ----


@app.command()
def condense(
    model: ModelArg,
    out: RunDirOpt,
    activation: ActivationOpt = "relu",
    layers: LayersOpt = None,
    parameterization: ParamOpt = "standard",
    w_std: WStdOpt = 1.0,
    b_std: BStdOpt = 1.0,
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
        typer.Option("--odd/--no-odd", help="Merge sign-flipped neurons (default: if σ is odd)."),
    ] = None,
    homogeneous: Annotated[
        bool | None,
        typer.Option(
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
    import json

    import torch

    from widenet import condensation

    try:
        net = _load_fcnet(model, activation, parameterization, w_std, b_std, layers)
        x = None if data is None else _load_data(data, n, data_seed, standardize, torch.float64)
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
        folder = _run_folder(out)
        result.model.save(folder / "model.safetensors")
        (folder / "condensation.json").write_text(json.dumps(summary, indent=2) + "\n")
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    line = f"widths {summary['widths']} -> effective widths {summary['effective_widths']} "
    line += f"(cosine >= {threshold:g})"
    if result.agreement is not None:
        a = result.agreement
        line += f"; on {a.n_points} points: max |f - f_merged| {a.max_abs_difference:.3g}, "
        line += (
            f"relative {a.relative_difference:.3g}, predictions agree {a.prediction_agreement:.4f}"
        )
    _out().print(line, soft_wrap=True)
    typer.echo(f"Saved: {(out / 'model.safetensors').resolve()} and condensation.json")


# ---- Du et al. 2018: global convergence of two-layer ReLU nets (issue 4) ----

_DU_LABELS_HELP = (
    "gaussian (y ~ N(0,1)), true (the bundled set's labels: parity +-1 for classes, else "
    "standardized), shuffled (those labels permuted), or a .npy/.csv file of n real labels."
)
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
    from widenet.data import DATASETS, load_dataset
    from widenet.experiments._common import parity_targets

    if data == "sphere":
        if n is None:
            raise ValueError("--n is required for --data sphere")
        x, raw = load_dataset("sphere", n=n, seed=data_seed, dim=dim, dtype=torch.float64)
    else:
        x = _load_data(data, n, data_seed, standardize, torch.float64)
        raw = None
        if data in DATASETS:
            std = True if standardize is None else standardize
            _, raw = load_dataset(data, n=n, seed=data_seed, standardize=std)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = cv.unit_inputs(x, non_unit=non_unit, name="--data")
    for w in caught:
        _err().print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
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
        y = _load_targets(labels, "--labels", len(x))
        if y.ndim != 1:
            raise ValueError(f"--labels: one real label per point expected, got shape {y.shape}")
        y = torch.as_tensor(y, dtype=torch.float64)
    return x, y


def _du_json(out: Path, payload: dict) -> None:
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")


@app.command("du-bounds")
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
        float, typer.Option("--step-size-scale", help="Suggested eta = this x critical rate.")
    ] = 0.25,
    non_unit: DuNonUnitOpt = "normalize",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the numbers to this .json file.")
    ] = None,
) -> None:
    """Du et al. (2018) on data: lambda0, width bound, step sizes, radius R, drift bound."""
    import torch

    from widenet import convergence as cv
    from widenet import dynamics

    try:
        if out is not None and out.suffix.lower() != ".json":
            raise ValueError(f"--out must end in .json, got {out.name!r}")
        x, y = _du_problem(data, n, dim, data_seed, standardize, labels, seed, non_unit)
        nn_, d = x.shape
        h_inf = cv.gram_infinity(x)
        lam0 = cv.lambda0(x, h_inf=h_inf)
        lmax = float(torch.linalg.eigvalsh(h_inf)[-1])
        crit = dynamics.critical_learning_rate(h_inf, loss="sum")
        wb = cv.width_bound(nn_, lam0, delta, label_power=float((y**2).mean()))
        rows = {
            "n": nn_,
            "d": d,
            "lambda0": lam0,
            "lambda_max_hinf": lmax,
            "critical_learning_rate": crit,
            "max_learning_rate": 2.0 / lmax,
            "suggested_step_size": step_size_scale * crit,
            "theorem_step_size": cv.theorem_step_size(lam0, nn_),
            "radius": cv.radius(lam0, nn_, delta),
            "width_bound": wb.width,
            "width_bound_constant": wb.constant,
            "width_bound_lemma_3_1": wb.gram_width,
            "delta": delta,
        }
        if width is not None:
            net = cv.TwoLayerReLU(d, width, seed=seed, dtype=torch.float64)
            h0 = cv.gram(net, x)
            ev = torch.linalg.eigvalsh(h0)
            r0 = float((y - net(x).detach()).norm())
            rows.update(
                width=width,
                lambda_min_h0=float(ev[0]),
                lambda_max_h0=float(ev[-1]),
                max_step_size_h0=2.0 / float(ev[-1]),
                h0_minus_hinf=float(torch.linalg.matrix_norm(h0 - h_inf, 2)),
                initial_residual=r0,
                drift_bound_gd=cv.drift_bound(r0, nn_, width, lam0, discrete=True),
                drift_bound_flow=cv.drift_bound(r0, nn_, width, lam0),
                width_over_bound=width / wb.width,
            )
        if out is not None:
            _du_json(out, rows)
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    table = Table("quantity", "value", box=None, pad_edge=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    _out().print(table)
    if out is not None:
        typer.echo(f"Saved: {out.resolve()}")


@app.command("du-train")
def du_train(
    out: Annotated[
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
        float, typer.Option("--step-size-scale", help="eta / critical rate of H-infinity.")
    ] = 0.25,
    labels: DuLabelsOpt = "gaussian",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network and labels.")] = 0,
    antisymmetric: Annotated[
        bool, typer.Option("--antisymmetric/--independent", help="u(0) = 0 by paired neurons.")
    ] = False,
    gram_every: Annotated[
        int, typer.Option("--gram-every", help="Form H(k) every this many steps (0: never).")
    ] = 1,
    kernel: Annotated[
        bool,
        typer.Option("--kernel/--no-kernel", help="Also the closed-form H-inf / H(0) u(k)."),
    ] = True,
    allow_divergent: Annotated[
        bool,
        typer.Option("--allow-divergent", help="Run even above 2/lambda_max(H(0)) (diverges)."),
    ] = False,
    dtype: DtypeOpt = "float32",
    non_unit: DuNonUnitOpt = "normalize",
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
) -> None:
    """Train Du et al.'s two-layer ReLU net by full-batch GD and record the theorem's quantities.

    OUT (.npz) holds per step: loss, pattern_change, max_distance; gram_steps, gram_change,
    gram_lambda_min; with --kernel, the trained outputs and the closed-form H-inf and H(0)
    predictions at every step. The summary (rates, bounds) goes to OUT with a .json suffix.
    """
    import numpy as np

    from widenet import convergence as cv
    from widenet import dynamics

    try:
        if out.suffix.lower() != ".npz":
            raise ValueError(f"--out must end in .npz, got {out.name!r}")
        torch_dtype = _torch_dtype(dtype)
        x, y = _du_problem(data, n, dim, data_seed, standardize, labels, seed, non_unit)
        h_inf = cv.gram_infinity(x)
        lam0 = cv.lambda0(x, h_inf=h_inf)
        eta = step_size
        if eta is None:
            eta = step_size_scale * dynamics.critical_learning_rate(h_inf, loss="sum")
        net = cv.TwoLayerReLU(
            x.shape[1], width, antisymmetric=antisymmetric, seed=seed, dtype=torch_dtype
        )
        xd, yd = x.to(torch_dtype), y.to(torch_dtype)
        u0 = net(xd).detach().double()
        h0 = cv.gram(net, xd) if kernel else None
        steps = list(range(epochs + 1)) if kernel else None
        with _progress_bar() as bar:
            res = cv.track(
                net,
                xd,
                yd,
                epochs,
                eta,
                gram_every=gram_every,
                output_steps=steps,
                lambda0_value=lam0,
                non_unit=non_unit,
                allow_divergent=allow_divergent,
                progress=bar,
            )
        arrays = {
            "loss": res.loss,
            "pattern_change": res.pattern_change,
            "max_distance": res.max_distance,
            "gram_steps": res.gram_steps,
            "gram_change": res.gram_change,
            "gram_lambda_min": res.gram_lambda_min,
            "labels": y.numpy(),
        }
        if kernel:
            arrays["outputs"] = res.outputs
            arrays["kernel_hinf"] = cv.kernel_prediction(h_inf, y, steps, eta, u0=u0).numpy()
            arrays["kernel_h0"] = cv.kernel_prediction(h0, y, steps, eta, u0=u0).numpy()
        summary = {
            "n": int(x.shape[0]),
            "d": int(x.shape[1]),
            "width": width,
            "epochs": epochs,
            "step_size": eta,
            "lambda0": lam0,
            "lambda_min_h0": res.lambda_min_h0,
            "lambda_max_h0": res.lambda_max_h0,
            "final_loss": float(res.loss[-1]),
            "final_relative_error": float(res.relative_error[-1]),
            "pattern_change": float(res.pattern_change[-1]),
            "max_distance": float(res.max_distance[-1]),
            "measured_rate": res.measured_rate,
            "predicted_rate": res.predicted_rate,
            "kernel_rate_hinf": res.kernel_rate_hinf,
            "kernel_rate_h0": res.kernel_rate_h0,
            "drift_bound": res.drift_bound,
            "flow_drift_bound": res.flow_drift_bound,
            "seconds": res.seconds,
        }
        if kernel:
            scale = float(np.linalg.norm(arrays["labels"] - u0.numpy()))
            for key in ("kernel_hinf", "kernel_h0"):
                gap = np.linalg.norm(res.outputs - arrays[key], axis=1).max() / scale
                summary[f"prediction_gap_{key[7:]}"] = float(gap)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
        _du_json(out.with_suffix(".json"), summary)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    table = Table("quantity", "value", box=None, pad_edge=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    _out().print(table)
    typer.echo(f"Saved: {out.resolve()} and {out.with_suffix('.json').name}")


def _progress_bar():
    """A context manager yielding ``wrap(iterable, description=)`` with a rich bar on stderr."""
    from contextlib import contextmanager

    from rich.progress import Progress

    @contextmanager
    def manager():
        console = _err()
        with Progress(console=console, disable=not console.is_terminal, transient=True) as bar:

            def wrap(iterable, description="working"):
                return bar.track(iterable, description=description)

            yield wrap

    return manager()


# ---- regimes of training: phase diagram, regime classifier, frequency principle (issue 6) ----


def _write_json(out: Path, payload: dict) -> None:
    import json

    if out.suffix.lower() != ".json":
        raise ValueError(f"--out must end in .json, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


@app.command("phase-point")
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
        typer.Option(
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
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write a .json.")] = None,
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
        if out is not None:
            _write_json(out, payload)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    table = Table("quantity", "value", box=None, pad_edge=False)
    for key, value in payload.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    _out().print(table)
    if out is not None:
        typer.echo(f"Saved: {out.resolve()}")


def _load_state(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors have many types; the message says what it was
        raise ValueError(f"cannot read {path} as torch.save weights: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _mlp_from_state(state: dict, activation: str, parameterization: str, w_std, b_std):
    """An nn.Sequential (Linear/Dense, activation, ..., Linear) with ``state``'s layout."""
    import re

    import torch.nn as nn

    from widenet import activations
    from widenet.layers import Dense, Elementwise

    idx = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"(\d+)\.weight", k))})
    if not idx or any(not re.fullmatch(r"\d+\.(weight|bias)", k) for k in state):
        raise ValueError(
            "the state dict must be an nn.Sequential MLP ('0.weight', '0.bias', '2.weight', ...)"
        )
    act = activations.get(activation)
    layers: list[nn.Module] = []
    for j, i in enumerate(idx):
        w = state[f"{i}.weight"]
        if w.ndim != 2:
            raise ValueError(f"{i}.weight must be a matrix, got shape {tuple(w.shape)}")
        while len(layers) < i:
            layers.append(Elementwise(act.fn, act.name))
        bias = f"{i}.bias" in state
        if parameterization == "plain":
            layers.append(nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype))
        else:
            if not bias:
                raise ValueError(f"widenet Dense layers have a bias; {i}.bias is missing")
            layers.append(
                Dense(
                    w.shape[1],
                    w.shape[0],
                    w_std=w_std,
                    b_std=b_std,
                    parameterization=parameterization,
                    dtype=w.dtype,
                )
            )
        if j < len(idx) - 1 and idx[j + 1] != i + 2:
            raise ValueError("expected exactly one activation between consecutive linear layers")
    return nn.Sequential(*layers)


@app.command("regime")
def regime_cmd(
    initial: Annotated[
        Path,
        typer.Option("--initial", help="Initial state dict (.safetensors or torch.save weights)."),
    ],
    trained: Annotated[Path, typer.Option("--trained", help="Trained state dict, same layout.")],
    data: DataOpt = "digits",
    n: NOpt = 128,
    activation: ActivationOpt = "relu",
    parameterization: Annotated[
        str,
        typer.Option(
            "--parameterization",
            help="plain (nn.Linear layers), ntk or standard (widenet Dense with --w-std/--b-std).",
        ),
    ] = "plain",
    w_std: WStdOpt = 2**0.5,
    b_std: BStdOpt = 0.0,
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
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write a .json.")] = None,
) -> None:
    """Lazy, intermediate or condensed: classify a trained MLP from its initial and final states."""
    import dataclasses

    from widenet import regime

    try:
        if parameterization not in ("plain", "ntk", "standard"):
            raise ValueError(
                f"--parameterization must be plain, ntk or standard, got {parameterization!r}"
            )
        s0, s1 = _load_state(initial), _load_state(trained)
        model = _mlp_from_state(s0, activation, parameterization, w_std, b_std)
        dtype = next(iter(s0.values())).dtype
        x = _load_data(data, n, data_seed, standardize, dtype)
        fan_in = model[0].in_features
        if x.shape[1] != fan_in:
            raise ValueError(f"the model takes {fan_in} features but --data has {x.shape[1]}")
        th = regime.Thresholds(
            lazy_change, lazy_ntk_change, condensed_change, condensed_ratio, cosine, mass
        )
        rep = regime.classify(model, s0, s1, x, thresholds=th, layer=layer, ntk_points=ntk_points)
        payload = rep.as_dict()
        if out is not None:
            _write_json(out, payload)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        raise _fail(str(err)) from None
    console = _out()
    console.print(f"[bold]{rep.regime}[/]: {rep.reason}", soft_wrap=True)
    table = Table("measure", "value", box=None, pad_edge=False)
    for f in dataclasses.fields(rep):
        value = getattr(rep, f.name)
        if f.name in ("regime", "reason", "layer_changes", "thresholds"):
            continue
        table.add_row(f.name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if out is not None:
        typer.echo(f"Saved: {out.resolve()}")


def _load_array(path: Path, option: str):
    import numpy as np

    if not path.is_file():
        raise ValueError(f"{option}: {path} does not exist")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float64)
    if path.suffix.lower() == ".csv":
        return np.loadtxt(path, delimiter=",", ndmin=1)
    raise ValueError(f"{option} must be a .npy or .csv file, got {path.name!r}")


@app.command("frequency")
def frequency_cmd(
    target: Annotated[Path, typer.Option("--target", help="Targets y: (n,) or (n, k) .npy/.csv.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            help="Network outputs h, same shape (or (T, n) for a 1-D series, one row per time).",
        ),
    ],
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
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write a .json.")] = None,
) -> None:
    """F-Principle measures: DFT-peak errors (1-D grid), projection or filtering (e_low, e_high)."""
    from widenet import frequency as fq

    try:
        y = _load_array(target, "--target")
        h = _load_array(output, "--output")
        payload: dict = {}
        if delta or frequency:
            if x is None:
                raise ValueError("--delta and --frequency need the input points (--x)")
            xs = _load_array(x, "--x")
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
            err = fq.peak_relative_error(y, h, peaks)
            payload["dft_peaks"] = {"peaks": peaks.tolist(), "relative_error": err.tolist()}
        if out is not None:
            _write_json(out, payload)
    except (ValueError, TypeError, OSError) as err:
        raise _fail(str(err)) from None
    console = _out()
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
    if out is not None:
        typer.echo(f"Saved: {out.resolve()}")


# ---- estimators and random features (issue 7) ----

# Train/test options shared by fit-predict and random-features (the split is _predict_data's).
TrainOpt = Annotated[str, typer.Option("--train", help="Training inputs: " + _DATA_HELP)]
TestOpt = Annotated[
    str, typer.Option("--test", help="Test inputs: a .npy/.csv file, or the same set as --train.")
]
NTrainOpt = Annotated[int | None, typer.Option("--n-train", help="Training points.")]
NTestOpt = Annotated[int | None, typer.Option("--n-test", help="Test points.")]
TrainTargetsOpt = Annotated[
    str | None,
    typer.Option("--train-targets", help="Train targets .npy/.csv, or integer labels (files)."),
]
TestTargetsOpt = Annotated[
    str | None, typer.Option("--test-targets", help="Test targets or labels (files).")
]


def _labelled_split(train, test, n_train, n_test, train_targets, test_targets, std, seed):
    """``_predict_data`` with one-hot (±1 for two classes) labels of bundled sets."""
    return _predict_data(
        train, test, n_train, n_test, "onehot", train_targets, test_targets, std, seed
    )


def _decode_labels(y):
    """One-hot rows or one ±1 column (as ``_encode_labels`` writes them) -> class indices."""
    import numpy as np

    return (y[:, 0] > 0).astype(int) if y.shape[1] == 1 else np.argmax(y, axis=1)


def _estimator_for(model: str, params: dict):
    from widenet.estimators import NTKSVC, NTKClassifier, NTKRegressor

    if model == "svc":
        params.pop("ridge"), params.pop("t")
        return NTKSVC(**params)
    params.pop("C")
    return (NTKClassifier if model == "classifier" else NTKRegressor)(**params)


@app.command("fit-predict")
def fit_predict(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output .npz (test predictions); metrics in .json.")
    ],
    train: TrainOpt = "digits",
    test: TestOpt = "digits",
    n_train: NTrainOpt = None,
    n_test: NTestOpt = None,
    train_targets: TrainTargetsOpt = None,
    test_targets: TestTargetsOpt = None,
    model: Annotated[
        str,
        typer.Option("--model", help="classifier (NTKClassifier), regressor or svc (NTKSVC)."),
    ] = "classifier",
    kernel_name: Annotated[str, typer.Option("--kernel", help="ntk or nngp.")] = "ntk",
    depth: Annotated[
        list[int] | None, typer.Option("--depth", help="Hidden layers; repeat to grid-search.")
    ] = None,
    ridge: Annotated[
        list[float] | None,
        typer.Option("--ridge", help="Ridge, relative to mean diag K; repeat to grid-search."),
    ] = None,
    c: Annotated[
        list[float] | None, typer.Option("--C", help="SVC's C (svc only); repeat to grid-search.")
    ] = None,
    time_: Annotated[
        str, typer.Option("--time", "-t", help="Training time of the flow; 'inf' = converged.")
    ] = "inf",
    cv: Annotated[int, typer.Option("--cv", help="Folds of the grid search.", min=2)] = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = 2**0.5,
    b_std: BStdOpt = 0.1,
    standardize: StandardizeOpt = None,
    data_seed: Annotated[int, typer.Option("--data-seed", help="Seed of the split.")] = 0,
) -> None:
    """Fit an infinite-width NTK/NNGP estimator (widenet.estimators) and predict the test set.

    Classification predicts class indices (positions in the sorted labels); with several
    --depth/--ridge/--C values the hyper-parameters are chosen by GridSearchCV (--cv folds).
    """
    import json

    import numpy as np
    import torch
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    try:
        if out.suffix.lower() != ".npz":
            raise ValueError(f"--out must end in .npz, got {out.name!r}")
        if model not in ("classifier", "regressor", "svc"):
            raise ValueError(f"--model must be classifier, regressor or svc, got {model!r}")
        (t,) = _parse_times([time_])
        split = (train, test, n_train, n_test, train_targets, test_targets, standardize)
        x_train, y_train, x_test, y_test, what = _labelled_split(*split, data_seed)
        classify = model != "regressor"
        if classify:
            y_train = _decode_labels(y_train)
            y_test = None if y_test is None else _decode_labels(y_test)
        elif y_train.shape[1] == 1:
            y_train, y_test = y_train[:, 0], None if y_test is None else y_test[:, 0]
        grid = {"depth": depth or [3], "ridge": ridge or [1e-6], "C": c or [1.0]}
        params = dict(activation=activation, w_std=w_std, b_std=b_std, kernel=kernel_name, t=t)
        est = _estimator_for(model, {**params, **{k: v[0] for k, v in grid.items()}})
        search = {k: v for k, v in grid.items() if len(v) > 1 and k in est.get_params()}
        t0 = time.perf_counter()
        if search:
            split = StratifiedKFold if classify else KFold
            folds = split(cv, shuffle=True, random_state=data_seed)
            est = GridSearchCV(est, search, cv=folds).fit(x_train, y_train)
        else:
            est.fit(x_train, y_train)
        pred = est.predict(x_test)
        seconds = time.perf_counter() - t0
        metrics = {"model": model, "kernel": kernel_name, "data": what, "seconds": seconds}
        metrics["params"] = {
            k: (v if isinstance(v, (int, float, str)) else repr(v))
            for k, v in (est.best_estimator_ if search else est).get_params().items()
        }
        metrics["params"]["t"] = "inf" if np.isinf(t) else t
        if search:
            metrics["cv_score"] = float(est.best_score_)
        metrics["train_score"] = float(est.score(x_train, y_train))
        if y_test is not None:
            metrics["test_score"] = float(est.score(x_test, y_test))
            metrics["test_mse" if not classify else "test_accuracy"] = (
                float(np.mean((pred - y_test) ** 2)) if not classify else metrics["test_score"]
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"predictions": np.asarray(pred)}
        if y_test is not None:
            arrays["test_targets"] = np.asarray(y_test)
        np.savez(out, **arrays)
        out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as err:
        raise _fail(str(err)) from None
    score = "accuracy" if classify else "R^2"
    line = f"{model} ({kernel_name}) on {what} in {seconds:.2f} s: train {score} "
    line += f"{metrics['train_score']:.4f}"
    if "cv_score" in metrics:
        chosen = {k: metrics["params"][k] for k in search}
        line += f", CV {metrics['cv_score']:.4f} with {chosen}"
    if "test_score" in metrics:
        line += f", test {score} {metrics['test_score']:.4f}"
    _out().print(line, soft_wrap=True)
    typer.echo(f"Saved: {out.resolve()} and {out.with_suffix('.json').name}")


@app.command("random-features")
def random_features_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .json with the curves over N.")],
    train: TrainOpt = "digits",
    test: TestOpt = "digits",
    n_train: NTrainOpt = 200,
    n_test: NTestOpt = None,
    train_targets: TrainTargetsOpt = None,
    test_targets: TestTargetsOpt = None,
    features: Annotated[str, typer.Option("--features", help="fourier or relu.")] = "fourier",
    n_features: Annotated[
        list[int] | None,
        typer.Option(
            "--n-features", "-N", help="Feature counts, repeatable (default: n/20 ... 20n)."
        ),
    ] = None,
    bandwidth: Annotated[
        float, typer.Option("--bandwidth", help="Gaussian-kernel bandwidth (fourier).")
    ] = 10.0,
    w_std: WStdOpt = 1.0,
    b_std: BStdOpt = 0.0,
    penalty: Annotated[
        float, typer.Option("--ridge", help="Ridge penalty; 0 = min-norm least squares.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random features.")] = 0,
    standardize: StandardizeOpt = None,
    data_seed: Annotated[int, typer.Option("--data-seed", help="Seed of the split.")] = 0,
) -> None:
    """Random-features regression over N: train/test zero-one and squared loss, ||beta||.

    N counts real features (Fourier: N/2 cos/sin pairs, so N even); the interpolation
    threshold is N = n. Targets: one-hot labels (+-1 for two classes) or the given files.
    """
    import json

    import numpy as np
    import torch

    from widenet.experiments.double_descent import feature_counts
    from widenet.random_features import sweep

    try:
        if out.suffix.lower() != ".json":
            raise ValueError(f"--out must end in .json, got {out.name!r}")
        split = (train, test, n_train, n_test, train_targets, test_targets, standardize)
        x_train, y_train, x_test, y_test, what = _labelled_split(*split, data_seed)
        if y_test is None:
            raise ValueError("the test set needs targets (--test-targets) to measure the error")
        n = len(x_train)
        counts = n_features or feature_counts(n, 0.05, 20.0, 25, features == "fourier")
        t0 = time.perf_counter()
        res = sweep(
            torch.as_tensor(x_train),
            torch.as_tensor(y_train),
            torch.as_tensor(x_test),
            torch.as_tensor(y_test),
            counts,
            kind=features,
            penalty=penalty,
            seed=seed,
            bandwidth=bandwidth,
            w_std=w_std,
            b_std=b_std,
        )
        seconds = time.perf_counter() - t0
        result = {"data": what, "features": features, "ridge": penalty, **res.as_dict()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as err:
        raise _fail(str(err)) from None
    console = _out()
    console.print(
        f"random {features} features, {'ridge ' + format(penalty, 'g') if penalty else 'min-norm'}"
        f" least squares; {what}; threshold N = n = {n}; {seconds:.2f} s",
        soft_wrap=True,
    )
    table = Table("N", "train err", "test err", "train MSE", "test MSE", "||beta||", box=None)
    peak = int(np.argmax(res.test_mse))
    for i, c in enumerate(res.n_features):
        mark = " <- N = n" if c == n else (" <- peak" if i == peak else "")
        table.add_row(
            f"{c}{mark}",
            f"{res.train_error[i]:.3f}",
            f"{res.test_error[i]:.3f}",
            f"{res.train_mse[i]:.3g}",
            f"{res.test_mse[i]:.3g}",
            f"{res.coef_norm[i]:.3g}",
        )
    console.print(table)
    typer.echo(f"Saved: {out.resolve()}")


if __name__ == "__main__":  # pragma: no cover
    app()
