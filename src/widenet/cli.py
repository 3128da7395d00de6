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


if __name__ == "__main__":  # pragma: no cover
    app()
