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


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"--out must end in .npy or .npz, got {out.name!r}")


@app.command()
def kernel(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz (nngp and ntk) or .npy.")],
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
) -> None:
    """Infinite-width NNGP and NTK of an MLP on data; saved as .npz (both) or .npy (--get)."""
    import numpy as np

    import widenet as wn

    try:
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
) -> None:
    """Empirical NTK of a finite-width widenet MLP at initialisation on data."""
    import widenet as wn

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


if __name__ == "__main__":  # pragma: no cover
    app()


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
