"""What every command module of the CLI shares: consoles, errors, the command decorator, and
the options that mean the same thing in every command (one name, one help, one default).

Nothing heavy is imported here (no torch, numpy or widenet modules), so that ``widenet --help``
stays fast: command bodies import what they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

# The help panels of `widenet --help`, in the README's order of topics.
LAB = "The lab"
KERNELS = "Kernels and kernel stores"
DYNAMICS = "Training dynamics"
CONVERGENCE = "Convergence (Du et al.)"
EMBEDDING = "Embedding, landscape, condensation"
REGIMES = "Regimes of training"
PREDICTORS = "Predictors"
INIT = "Initialization"
SHIFT = "Distribution shift"


def _plain_help_option(command, ctx):
    option = super(type(command), command).get_help_option(ctx)
    if option is not None:
        option.metavar = ""  # a flag: no "<bool>" after --help
    return option


class Command(TyperCommand):
    """A Typer command whose ``--help`` shows no type."""

    def get_help_option(self, ctx):
        return _plain_help_option(self, ctx)


class Group(TyperGroup):
    """The root group: ``--help`` without a type."""

    def get_help_option(self, ctx):
        return _plain_help_option(self, ctx)


def topic(panel: str) -> tuple[typer.Typer, callable]:
    """A topic's Typer app and its ``command(name)`` decorator (panel and help style set)."""
    app = typer.Typer()

    def command(name: str | None = None, **kwargs):
        return app.command(name, cls=Command, rich_help_panel=panel, **kwargs)

    return app, command


def out() -> Console:
    # Created per call so that a swapped sys.stdout/sys.stderr (tests, pipes) is honoured.
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def interrupted(where: str) -> typer.Exit:
    err().print(
        f"[bold yellow]interrupted:[/] nothing was written to {where} "
        "(a run writes its folder only when it finishes).",
        soft_wrap=True,
    )
    return typer.Exit(130)


def saved(*paths: Path) -> None:
    first, *rest = paths
    names = "".join(f" and {Path(p).name}" for p in rest)
    typer.echo(f"Saved: {Path(first).resolve()}{names}")


def quantity_table(rows, fmt: str = ".6g") -> Table:
    """A two-column (quantity, value) table; floats formatted with ``fmt``."""
    table = Table("quantity", "value", box=None, pad_edge=False)
    for key, value in rows:
        table.add_row(str(key), format(value, fmt) if isinstance(value, float) else str(value))
    return table


def progress_bar():
    """A context manager yielding ``wrap(iterable, description=)`` with a rich bar on stderr."""
    from contextlib import contextmanager

    from rich.progress import Progress

    @contextmanager
    def manager():
        console = err()
        with Progress(console=console, disable=not console.is_terminal, transient=True) as bar:

            def wrap(iterable, description="working"):
                return bar.track(iterable, description=description)

            yield wrap

    return manager()


def parse_times(times: list[str], option: str = "--time") -> list[float]:
    """Times ``>= 0`` or ``inf`` from the command line."""
    import math

    parsed = []
    for raw in times:
        text = raw.strip().lower()
        try:
            value = math.inf if text in ("inf", "infinity") else float(text)
        except ValueError:
            raise ValueError(f"{option} must be a number >= 0 or 'inf', got {raw!r}") from None
        if math.isnan(value) or value < 0:
            raise ValueError(f"{option} must be a number >= 0 or 'inf', got {raw!r}")
        parsed.append(value)
    if not parsed:
        raise ValueError(f"{option}: give at least one time")
    return parsed


def parse_layers(layers: str | None) -> list[int] | None:
    if layers is None:
        return None
    try:
        return [int(v) for v in layers.split(",")]
    except ValueError:
        raise ValueError(f"--layers must be integers like '1,5,1', got {layers!r}") from None


# ---- options shared by several commands: same name, same meaning ----------------------------

DATA_HELP = "A .npy/.csv file (rows = points) or a bundled set: digits, iris, wine, "
DATA_HELP += "breast_cancer, sphere."
ACT_HELP = "Activation: relu, leaky_relu, 'leaky_relu(0.1)', 'abrelu(a, b)', erf, gelu, identity, "
ACT_HELP += "sin, cos (closed form); tanh, sigmoid, softplus, silu, elu (quadrature)."
STD_HELP = "Z-score the features (default: on for bundled sets, off for files)."
MODEL_HELP = "Model weights: .safetensors, or a torch.save state dict (read with "
MODEL_HELP += "weights_only=True: no code runs) of an nn.Sequential of Linear + activation layers."
PARAM_HELP = "standard (the stored weights are used as they are: nn.Linear) or ntk (widenet's "
PARAM_HELP += "mlp networks: W scaled by w_std/sqrt(fan_in), b by b_std); 'plain' = standard."


def flag(*decls: str, help: str):  # noqa: A002 (typer's name)
    """A boolean option shown without a type."""
    return typer.Option(*decls, help=help, metavar="")


# One default per option in every command that has it (README, "Command-line conventions"):
# σ_w = √2, σ_b = 0 is ReLU's critical initialisation (He et al. 2015; Schoenholz et al. 2017)
# and wn.mlp's default; float64 is the dtype in which every formula is tested (float32 is an
# opt-in speed-up).
W_STD = 2**0.5
B_STD = 0.0
DTYPE = "float64"

DataOpt = Annotated[str, typer.Option("--data", help=DATA_HELP)]
NOpt = Annotated[int | None, typer.Option("--n", help="Number of points (default: all).")]
DepthOpt = Annotated[int, typer.Option("--depth", help="Number of hidden layers.")]
ActivationOpt = Annotated[str, typer.Option("--activation", help=ACT_HELP)]
WStdOpt = Annotated[float, typer.Option("--w-std", help="Weight standard deviation σ_w.")]
BStdOpt = Annotated[float, typer.Option("--b-std", help="Bias standard deviation σ_b.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 or float64.")]
StandardizeOpt = Annotated[bool | None, flag("--standardize/--no-standardize", help=STD_HELP)]
DataSeedOpt = Annotated[
    int,
    typer.Option(
        "--data-seed",
        help="Seed of how the data are drawn: subset, train/test split, cross-validation folds.",
    ),
]
OVERWRITE_HELP = "Replace existing output files (a .zarr store: delete it and start again)."
OverwriteOpt = Annotated[bool, flag("--overwrite", help=OVERWRITE_HELP)]
ModelArg = Annotated[Path, typer.Argument(help=MODEL_HELP, show_default=False)]
LayersOpt = Annotated[
    str | None,
    typer.Option("--layers", help="Layer sizes 'in,hidden,...,out', checked against the file."),
]
ParamOpt = Annotated[str, typer.Option("--parameterization", help=PARAM_HELP)]
RunDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (new or empty).")]

# Train/test problems (predict, fit-predict, random-features); the split is
# widenet.io.load_train_test's. --data/--n (the one-set scheme) are accepted as other names of
# --train/--n-train: --data SET --n N trains on N points of SET.
TrainOpt = Annotated[
    str, typer.Option("--train", "--data", help="Training inputs (--data: the same): " + DATA_HELP)
]
TestOpt = Annotated[
    str, typer.Option("--test", help="Test inputs: a .npy/.csv file, or the same set as --train.")
]
NTrainOpt = Annotated[
    int | None,
    typer.Option(
        "--n-train",
        "--n",
        help="Training points (--n: the same; default: a file's rows, or the rest of a bundled "
        "set after --n-test).",
    ),
]
NTestOpt = Annotated[
    int | None,
    typer.Option(
        "--n-test",
        help="Test points (default: a file's rows, or 20% of a bundled set; with --n-train, "
        "the rest).",
    ),
]
TrainTargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--train-targets",
        help="Train targets .npy/.csv (n, k), or (n,) integer labels (encoded as onehot).",
    ),
]
TestTargetsOpt = Annotated[
    str | None,
    typer.Option("--test-targets", help="Test targets or labels (files): MSE and accuracy."),
]
# Composable architectures (widenet kernel / predict): a preset or a YAML file of layers.
ARCH_HELP = "Architecture: a preset (mlp, cnn, cnn-gap, cnn-vec, myrtle5, myrtle7, myrtle10) or "
ARCH_HELP += "a YAML file of layers (read with yaml.safe_load; see widenet.from_spec). Describes "
ARCH_HELP += "the whole network: --depth/--activation/--w-std/--b-std/--parameterization then "
ARCH_HELP += "do not apply."
ArchOpt = Annotated[str | None, typer.Option("--arch", help=ARCH_HELP)]
InShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--in-shape",
        help="Reshape each input to C,H,W or C,L (channels first; e.g. 1,8,8: the digits as "
        "8x8 images) for a convolutional --arch.",
    ),
]


def architecture(ctx: typer.Context, arch: str | None, **mlp_options):
    """(architecture, its description): ``--arch`` (a preset name or a YAML file of layers,
    :func:`widenet.from_spec`), or ``wn.mlp(**mlp_options)`` without it. MLP options given
    explicitly together with ``--arch`` are refused (they would be ignored)."""
    import widenet as wn

    if arch is None:
        options = {k: v for k, v in mlp_options.items() if v is not None}
        return wn.mlp(**options), None
    # Typer bundles its own click: compare the parameter source by name.
    given = [
        name
        for name in mlp_options
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT")
        not in ("DEFAULT", "DEFAULT_MAP")
    ]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--arch describes the whole network; drop {flags}")
    path = Path(arch)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--arch: no such file {arch}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"--arch {arch}: not valid YAML ({error})") from None
        return wn.from_spec(spec), arch
    return wn.from_spec(arch), arch


def shape_inputs(x, in_shape: str | None, option: str = "--in-shape"):
    """Reshape inputs (n, d) to (n, *in_shape) (``in_shape`` like "1,8,8"); None: unchanged."""
    if in_shape is None:
        return x
    try:
        shape = tuple(int(v) for v in in_shape.split(","))
    except ValueError:
        raise ValueError(f"{option} must be integers like '1,8,8', got {in_shape!r}") from None
    if not 2 <= len(shape) <= 3 or min(shape) < 1:
        raise ValueError(f"{option} must be C,L or C,H,W (positive), got {in_shape!r}")
    size = 1
    for s in shape:
        size *= s
    if x.ndim != 2 or x.shape[1] != size:
        raise ValueError(
            f"{option} {in_shape} has {size} entries; the inputs have shape {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], *shape)
