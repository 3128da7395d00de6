"""The lab: a registry of experiments and the run folders they write.

An experiment is a function ``run(config, ctx) -> dict`` registered under a name together with a
pydantic config class (defaults = full size, ``QUICK`` = the overrides of the quick size) and the
documentation of the metrics it returns::

    class MyConfig(lab.Config):
        n: int = 1000
        QUICK: ClassVar[dict] = {"n": 100}

    @lab.register("my-exp", summary="One line.", config=MyConfig, metrics={"error": "..."})
    def run(config: MyConfig, ctx: lab.RunContext) -> dict:
        ...
        return {"error": 0.1}

``run_experiment("my-exp", quick=True)`` resolves the config, seeds every generator from the
run's seed, runs the function in a staging folder and, only once it returned, writes

    <out>/config.yaml    resolved config, seed, quick flag, versions, command line, timings
    <out>/metrics.json   the returned dict (strict JSON: NaN/inf and unknown types refused)
    <out>/figures/*.png  figures saved with ``ctx.save_figure`` (150 dpi; an SVG copy beside each)
    <out>/report.html    a self-contained report (figures inlined)

and moves the staging folder into place, so an interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydantic
import torch
import yaml

from widenet.report import PaperComparison

__all__ = [
    "Config",
    "DemoProgress",
    "ConfigError",
    "Experiment",
    "PaperComparison",
    "RunContext",
    "RunResult",
    "UnknownExperimentError",
    "experiments",
    "get",
    "load_run",
    "register",
    "resolve_config",
    "run_demo",
    "run_experiment",
    "unregister",
    "versions",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
FIGURE_DPI = 150  # PNG resolution of saved figures (an SVG copy is saved beside each)


class ConfigError(ValueError):
    """A ``--set`` override or config value was rejected (unknown key or invalid value)."""


class UnknownExperimentError(KeyError):
    """No experiment is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Config(pydantic.BaseModel):
    """Base class of experiment configs: defaults are the full size, ``QUICK`` the quick one.

    Unknown keys are refused (``extra="forbid"``) so that a typo in ``--set`` is an error, not a
    silently ignored setting.
    """

    model_config = pydantic.ConfigDict(extra="forbid", validate_default=True, frozen=True)

    QUICK: ClassVar[dict[str, Any]] = {}

    @classmethod
    def quick(cls) -> Config:
        """The quick-size config: the defaults with ``QUICK`` applied."""
        return cls(**cls.QUICK)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, documentation, config class and run function."""

    name: str
    summary: str
    config: type[Config]
    run: Callable[[Config, RunContext], Mapping[str, Any]]
    metrics: dict[str, str]
    doc: str = ""
    paper: Callable[[Mapping[str, Any], Mapping[str, Any]], PaperComparison] | None = None
    key: str | None = None
    reference: str | None = None

    def resolve(self, *, quick: bool = False, overrides=None) -> Config:
        """The config for this experiment; see :func:`resolve_config`."""
        return resolve_config(self.config, quick=quick, overrides=overrides)


_REGISTRY: dict[str, Experiment] = {}
_BUILTINS_LOADED = False
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def register(
    name: str,
    *,
    summary: str,
    config: type[Config],
    metrics: Mapping[str, str],
    doc: str | None = None,
    paper: Callable[[Mapping[str, Any], Mapping[str, Any]], PaperComparison] | None = None,
    key: str | None = None,
    reference: str | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(config, ctx) -> dict`` as the experiment ``name``.

    ``metrics`` maps every key of the returned dict to a one-line description (shown by
    ``widenet list --verbose`` and in the report). ``doc`` defaults to the function's docstring,
    else its module's. ``paper(config, metrics) -> PaperComparison`` (config and metrics as
    saved, plain JSON types) gives the report's "paper vs widenet" table for an experiment that
    reproduces a paper; ``key`` names the metric the combined report's summary shows when there
    is no paper comparison, and ``reference`` the value it is compared with (e.g. a theory's).
    """
    if key is not None and key not in metrics:
        raise ValueError(f"key {key!r} is not one of the documented metrics")
    if paper is not None and not callable(paper):
        raise TypeError(
            f"paper must be a function (config, metrics) -> PaperComparison, got {paper!r}"
        )
    if not _NAME_RE.match(name):
        raise ValueError(f"experiment name must be lowercase kebab-case, got {name!r}")
    if not (isinstance(config, type) and issubclass(config, Config)):
        raise TypeError(f"config must be a subclass of widenet.lab.Config, got {config!r}")
    # Fail at import time, not after a long run, if the quick size is not a valid config.
    config.quick()

    def decorator(fn: Callable) -> Callable:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualname(existing.run) != _qualname(fn):
            raise ValueError(f"an experiment named {name!r} is already registered")
        text = doc or inspect.getdoc(fn) or inspect.getdoc(sys.modules.get(fn.__module__)) or ""
        _REGISTRY[name] = Experiment(
            name,
            summary,
            config,
            fn,
            dict(metrics),
            text,
            paper=paper,
            key=key,
            reference=reference,
        )
        return fn

    return decorator


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def _qualname(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _load_builtins() -> None:
    # Lazily, so that `import widenet` stays light and a broken experiment cannot break it.
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        importlib.import_module("widenet.experiments")
        _BUILTINS_LOADED = True


def experiments() -> dict[str, Experiment]:
    """All registered experiments (the built-in ones included), sorted by name."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Experiment:
    """The experiment registered as ``name``; the error lists the available names."""
    available = experiments()
    if name not in available:
        names = ", ".join(available) or "(none)"
        raise UnknownExperimentError(f"unknown experiment {name!r}; available: {names}")
    return available[name]


# --------------------------------------------------------------------------------------------
# Configs and overrides


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` (values parsed as YAML) or a mapping -> a dict."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must have the form key=value")
        try:
            parsed[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse the value of {key!r} ({raw!r}): {err}") from None
    return parsed


def resolve_config(
    config_cls: type[Config],
    *,
    quick: bool = False,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Config:
    """Defaults (or the quick size), then ``overrides``, validated by the pydantic model.

    Raises :class:`ConfigError` naming the offending key and listing the valid keys.
    """
    values = parse_overrides(overrides)
    fields = list(config_cls.model_fields)
    unknown = [k for k in values if k not in config_cls.model_fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; valid keys: {', '.join(fields)}"
            if len(unknown) == 1
            else f"unknown config keys {unknown}; valid keys: {', '.join(fields)}"
        )
    base = dict(config_cls.QUICK) if quick else {}
    try:
        return config_cls(**{**base, **values})
    except pydantic.ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(
            "invalid config value(s): " + "; ".join(problems) + f". Valid keys: {', '.join(fields)}"
        ) from None


# --------------------------------------------------------------------------------------------
# The run context


class RunContext:
    """What an experiment gets besides its config: where to write, seeds, progress, figures.

    Attributes
    ----------
    out : the run folder being written (a staging folder, moved into place at the end).
    seed : the run's seed; torch, NumPy's legacy generator and ``random`` are seeded with it.
    rng : a ``numpy.random.Generator`` seeded with ``seed``; draw every random number from it
        (or from torch's seeded global generator).
    device : ``cuda`` when available, else ``cpu``.
    quick : whether this is the quick size.
    """

    def __init__(self, out: Path, seed: int, *, quick: bool = False, quiet: bool | None = None):
        self.out = Path(out)
        self.seed = int(seed)
        self.quick = quick
        self.rng = np.random.default_rng(self.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.figures: list[Path] = []
        self._quiet = quiet
        self._progress = None

    def _console(self):
        from rich.console import Console

        return Console(stderr=True)

    def log(self, message: str) -> None:
        """A line on stderr (rich markup is not interpreted)."""
        if self._quiet:
            return
        console = self._console()
        if self._progress is not None:
            console = self._progress.console
        console.print(message, markup=False, highlight=False)

    def progress(
        self, iterable: Iterable, total: int | None = None, description: str = "working"
    ) -> Iterator:
        """Iterate over ``iterable`` with a rich progress bar on stderr.

        Nested calls share one display (rich allows only one live display at a time). When
        stderr is not a terminal (CI, pipes) the bar is disabled and iteration is unchanged.
        """
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        owner = self._progress is None
        if owner:
            console = self._console()
            disable = self._quiet if self._quiet is not None else not console.is_terminal
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=disable,
                transient=False,
            )
            self._progress.start()
        progress = self._progress
        task = progress.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                progress.advance(task)
        finally:
            if owner:
                progress.stop()
                self._progress = None
            else:
                progress.remove_task(task)

    def figure(self, **kwargs):
        """A new ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend needed)."""
        from matplotlib.figure import Figure

        kwargs.setdefault("layout", "constrained")
        return Figure(**kwargs)

    def save_figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``figures/<name>.png`` (``FIGURE_DPI`` dpi) and a vector copy
        ``figures/<name>.svg`` in the run folder, and close it; returns the PNG's path."""
        import matplotlib

        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).stem).strip("-.") or "figure"
        path = self.out / FIGURES_DIR / f"{stem}.png"
        if path in self.figures:
            raise ValueError(f"figure name {stem!r} used twice in this run")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Fixed metadata (and SVG id salt) so that the same run gives byte-identical files.
        fig.savefig(path, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
        with matplotlib.rc_context({"svg.hashsalt": f"widenet-{stem}"}):
            fig.savefig(
                path.with_suffix(".svg"),
                format="svg",
                dpi=FIGURE_DPI,
                metadata={"Date": None, "Creator": None},
            )
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
        self.figures.append(path)
        return path


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunResult:
    """A finished (or loaded) run: where it is and what it found."""

    name: str
    out: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    seed: int
    quick: bool
    versions: dict[str, str] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    wall_seconds: float = 0.0
    command: str = ""
    skipped: bool = False
    error: str | None = None  # set (and nothing written) when a demo experiment failed

    @property
    def report(self) -> Path:
        """Path of the run's ``report.html``."""
        return self.out / REPORT_FILE

    @property
    def figures(self) -> list[Path]:
        """The run's PNG figures, sorted by name."""
        return sorted((self.out / FIGURES_DIR).glob("*.png"))

    @property
    def experiment(self) -> Experiment | None:
        """The registered experiment of this run, if it is (still) registered."""
        return experiments().get(self.name)


def versions(device: torch.device | str | None = None) -> dict[str, str]:
    """Versions of the software a run used, and the device, for ``config.yaml``."""
    import widenet

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "widenet": widenet.__version__,
        "platform": platform.platform(),
        "device": device,
    }
    # Plain str: torch.__version__ is a str subclass that yaml.safe_dump refuses.
    return {k: str.__str__(v) for k, v in found.items()}


def to_jsonable(value: Any, key: str = "metrics") -> Any:
    """Convert NumPy/torch scalars and arrays to JSON types; refuse NaN, inf and other types.

    The error names the offending key path (e.g. ``metrics['relative_error'][3]``).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key} is {value!r}; metrics must be finite numbers")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{key} has a non-string key {k!r}; JSON keys must be strings")
            out[k] = to_jsonable(v, f"{key}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{key} has type {type(value).__name__}, which is not JSON-serialisable")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def default_out(name: str) -> Path:
    """``runs/<name>-<UTC timestamp>`` under the current directory (``-2``, ... if taken)."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path("runs") / f"{name}-{stamp}"
    k = 2
    while path.exists():  # two runs in the same second must not replace each other
        path = Path("runs") / f"{name}-{stamp}-{k}"
        k += 1
    return path


def _fingerprint(name: str, config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    # What must match for an existing run folder to stand for a new run (the quick flag only
    # selects a config, so equal configs are equal runs).
    return json.loads(json.dumps({"experiment": name, "config": config, "seed": seed}))


def load_run(path: str | os.PathLike) -> RunResult:
    """Read a complete run folder back (``config.yaml`` + ``metrics.json``)."""
    path = Path(path)
    for fname in (CONFIG_FILE, METRICS_FILE, REPORT_FILE):
        if not (path / fname).is_file():
            raise FileNotFoundError(f"{path} is not a complete run folder (no {fname})")
    meta = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or "experiment" not in meta:
        raise ValueError(f"{path / CONFIG_FILE} is not a widenet run config")
    return RunResult(
        name=meta["experiment"],
        out=path,
        config=meta.get("config", {}),
        metrics=metrics,
        seed=int(meta.get("seed", 0)),
        quick=bool(meta.get("quick", False)),
        versions=meta.get("versions", {}),
        started=str(meta.get("started", "")),
        finished=str(meta.get("finished", "")),
        wall_seconds=float(meta.get("wall_seconds", 0.0)),
        command=str(meta.get("command", "")),
    )


def _matching_run(out: Path, name: str, config: dict, seed: int) -> RunResult | None:
    try:
        run = load_run(out)
    except (OSError, ValueError, yaml.YAMLError, json.JSONDecodeError):
        return None
    if _fingerprint(run.name, run.config, run.seed) != _fingerprint(name, config, seed):
        return None
    run.skipped = True
    return run


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    # Legacy global state too, for experiment code (or libraries) that still use it.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    force: bool = False,
    quiet: bool | None = None,
    threads: int | None = None,
) -> RunResult:
    """Run the experiment ``name`` and write its run folder; return the :class:`RunResult`.

    Parameters
    ----------
    quick : use the quick size (the config's ``QUICK`` overrides).
    out : run folder; default ``runs/<name>-<UTC timestamp>``. An existing run folder there is
        replaced; any other non-empty folder is refused.
    seed : seeds torch, NumPy and ``random``; ``ctx.rng`` is a Generator seeded with it.
    overrides : ``{"key": value}`` or ``["key=value", ...]`` (values parsed as YAML).
    force : if False and ``out`` already holds a complete run of the same experiment, config
        and seed, return that run (``result.skipped``) instead of running again.
    quiet : silence progress bars (default: quiet unless stderr is a terminal).
    threads : torch CPU threads for this run, and the BLAS/OpenMP threads of NumPy, SciPy and
        scikit-learn (threadpoolctl); restored afterwards (a BLAS or OpenMP library first loaded
        during the run keeps the limit); default: the libraries' settings.
        On a busy machine, 1 can be many times faster than oversubscribed cores.
    """
    from widenet import report

    exp = get(name)
    config = exp.resolve(quick=quick, overrides=overrides)
    config_dict = config.model_dump(mode="json")
    seed = int(seed)
    out = Path(out) if out is not None else default_out(name)

    if out.exists():
        if not force:
            existing = _matching_run(out, name, config_dict, seed)
            if existing is not None:
                return existing
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
            raise FileExistsError(
                f"{out} is a non-empty folder that is not a widenet run; choose another --out"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()

    ctx = RunContext(staging, seed, quick=quick, quiet=quiet)
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
    started, t0 = _now(), time.perf_counter()
    saved_threads = torch.get_num_threads()
    blas_limits = None
    try:
        if threads is not None:
            # NumPy/SciPy/scikit-learn's BLAS and OpenMP pools too (restored on exit): on a busy
            # machine their spinning threads slow the run down as torch's do. Before torch's
            # setting, which changes torch's OpenMP pool, so that the originals are recorded.
            from threadpoolctl import threadpool_limits

            blas_limits = threadpool_limits(limits=int(threads))
            torch.set_num_threads(int(threads))
        _seed_everything(seed)
        metrics = exp.run(config, ctx)
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"experiment {name!r} returned {type(metrics).__name__}; expected a dict"
            )
        metrics = to_jsonable(dict(metrics))
        wall = time.perf_counter() - t0
        result = RunResult(
            name=name,
            out=out,
            config=config_dict,
            metrics=metrics,
            seed=seed,
            quick=quick,
            versions={**versions(ctx.device), "torch_threads": str(torch.get_num_threads())},
            started=started,
            finished=_now(),
            wall_seconds=round(wall, 3),
            command=command,
        )
        meta = {
            "experiment": name,
            "quick": quick,
            "seed": seed,
            "config": config_dict,
            "versions": result.versions,
            "command": command,
            "started": result.started,
            "finished": result.finished,
            "wall_seconds": result.wall_seconds,
        }
        (staging / CONFIG_FILE).write_text(
            yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        (staging / METRICS_FILE).write_text(
            json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        # The figures are read from the staging folder, where they are until the move.
        html = report.render_run(result, figures=sorted(ctx.figures))
        (staging / REPORT_FILE).write_text(html, encoding="utf-8")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if blas_limits is not None:
            blas_limits.restore_original_limits()
        torch.set_num_threads(saved_threads)
    return result


def _move_into_place(staging: Path, out: Path) -> None:
    # Swap in the finished folder; the old one (if any) is only removed once the new one is there.
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class DemoProgress:
    """Where a demo stands: passed to ``run_demo``'s ``on_progress`` before and after each run.

    ``index`` counts from 1 to ``total``; ``done`` is False when experiment ``index`` starts and
    True when it has finished (then ``result`` is its :class:`RunResult`). ``eta`` estimates the
    seconds left: the previous wall time of each remaining experiment where its folder holds
    one, else the mean time of the experiments run so far; None before anything is known.
    """

    index: int
    total: int
    name: str
    elapsed: float
    eta: float | None
    done: bool = False
    result: RunResult | None = None

    def line(self) -> str:
        """One line such as ``[3/15] double-descent done (6.1 s) · elapsed 0:42 · ETA ~2:10``."""
        if self.done and self.result is not None:
            if self.result.error:
                what = f"{self.name} failed"
            elif self.result.skipped:
                what = f"{self.name} reused"
            else:
                what = f"{self.name} done ({self.result.wall_seconds:.1f} s)"
        else:
            what = f"{self.name} ..."
        eta = "ETA ?" if self.eta is None else f"ETA ~{_clock(self.eta)}"
        return f"[{self.index}/{self.total}] {what} · elapsed {_clock(self.elapsed)} · {eta}"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, sec = divmod(seconds, 60)
    return f"{minutes}:{sec:02d}"


def _previous_seconds(folder: Path) -> float | None:
    try:
        meta = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        return float(meta["wall_seconds"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    force: bool = False,
    seed: int = 0,
    names: Sequence[str] | None = None,
    only: Sequence[str] | None = None,
    quiet: bool | None = None,
    threads: int | None = None,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[RunResult], None] | None = None,
    on_progress: Callable[[DemoProgress], None] | None = None,
) -> tuple[Path, list[RunResult]]:
    """Run every registered experiment (or those in ``only``) at quick size into ``out/<name>``.

    ``only`` (or its older name ``names``) selects experiments by name, run in the given order;
    an unknown name is an error before anything runs. Experiments whose folder already holds a
    complete run with the same config and seed are skipped unless ``force``; ``threads`` is as
    in :func:`run_experiment`. An experiment that raises does not stop the others: its result
    has ``error`` set (and no folder), and the combined report shows the error.
    ``on_progress`` gets a :class:`DemoProgress` (``k/total``, elapsed time, ETA) before and
    after each experiment. Writes the combined report ``out/report.html`` and returns its
    absolute path and the results.
    """
    from widenet import report

    if names is not None and only is not None:
        raise ValueError("give only= or names= (the same selection), not both")
    selection = only if only is not None else names
    if isinstance(selection, str):
        selection = [selection]
    out = Path(out)
    names = list(experiments()) if selection is None else list(selection)
    if not names:
        raise ValueError("only= selects no experiment; give at least one name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"only= names {duplicates} more than once")
    results: list[RunResult] = []
    for name in names:
        get(name)  # fail early, before anything runs, on a bad name
    previous = {name: _previous_seconds(out / name) for name in names}
    t0 = time.perf_counter()
    ran: list[float] = []  # wall times of the experiments run (not reused) so far

    def eta(next_index: int) -> float | None:
        mean = sum(ran) / len(ran) if ran else None
        left = 0.0
        for name in names[next_index:]:
            guess = previous[name] if previous[name] is not None else mean
            if guess is None:
                return None
            left += guess
        return left

    for k, name in enumerate(names):
        if on_start is not None:
            on_start(name)
        if on_progress is not None:
            on_progress(DemoProgress(k + 1, len(names), name, time.perf_counter() - t0, eta(k)))
        try:
            result = run_experiment(
                name,
                quick=True,
                out=out / name,
                seed=seed,
                force=force,
                quiet=quiet,
                threads=threads,
            )
        except Exception as err:  # reported in the result and in the combined report
            config = get(name).resolve(quick=True).model_dump(mode="json")
            result = RunResult(
                name,
                out / name,
                config,
                {},
                seed,
                True,
                versions(),
                _now(),
                _now(),
                error=f"{type(err).__name__}: {err}",
            )
        if not result.skipped and not result.error:
            ran.append(result.wall_seconds)
        results.append(result)
        if on_done is not None:
            on_done(result)
        if on_progress is not None:
            elapsed = time.perf_counter() - t0
            on_progress(DemoProgress(k + 1, len(names), name, elapsed, eta(k + 1), True, result))
    out.mkdir(parents=True, exist_ok=True)
    path = (out / REPORT_FILE).resolve()
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(report.render_combined(results, title="widenet demo"), encoding="utf-8")
    tmp.replace(path)
    return path, results
