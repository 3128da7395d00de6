"""The lab: ``widenet list``, ``run``, ``demo`` (:mod:`widenet.lab`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import LAB, fail, flag, interrupted, out, topic

app, command = topic(LAB)

FORCE_HELP = "Re-run what OUT already holds with the same config."

ThreadsOpt = Annotated[
    int, typer.Option("--threads", help="Torch CPU threads (0 = torch's default).", min=0)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random draw.")]


@command("list")
def list_(
    verbose: Annotated[
        bool, flag("--verbose", "-v", help="Also show each experiment's config and metrics keys.")
    ] = False,
) -> None:
    """List the registered experiments."""
    from widenet import lab

    console = out()
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


@command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `widenet list`).")],
    quick: Annotated[bool, flag("--quick", "-q", help="Run the quick size.")] = False,
    out_: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default: runs/NAME-<UTC timestamp>)."),
    ] = None,
    seed: SeedOpt = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config value: key=value (YAML), repeatable."),
    ] = None,
    force: Annotated[bool, flag("--force", "-f", help=FORCE_HELP)] = False,
    threads: ThreadsOpt = 1,
) -> None:
    """Run one experiment and write its run folder (config, metrics, figures, report)."""
    from widenet import lab

    try:
        exp = lab.get(name)
        exp.resolve(quick=quick, overrides=set_)  # validate before any work
    except (lab.UnknownExperimentError, lab.ConfigError) as error:
        raise fail(str(error)) from None
    where = out_ if out_ is not None else "the run folder"
    threads = threads or None  # 0 -> torch's default; see `demo` for why 1 is the default
    try:
        result = lab.run_experiment(
            name, quick=quick, out=out_, seed=seed, overrides=set_, force=force, threads=threads
        )
    except KeyboardInterrupt:
        raise interrupted(str(where)) from None
    except (FileExistsError, lab.ConfigError) as error:
        raise fail(str(error)) from None
    console = out()
    verb = "reused (same config; --force re-runs)" if result.skipped else "done"
    console.print(f"[bold green]{name}[/] {verb} in {result.wall_seconds:.1f} s", soft_wrap=True)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    if scalars:
        table = Table("metric", "value", box=None, pad_edge=False)
        for key, value in scalars.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
    typer.echo(f"Report: {result.report.resolve()}")


@command()
def demo(
    out_: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("runs/demo"),
    force: Annotated[bool, flag("--force", "-f", help=FORCE_HELP)] = False,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 1,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only these experiments, in this order: --only NAME (repeatable) or "
            "--only NAME1,NAME2.",
        ),
    ] = None,
) -> None:
    """Run every experiment (or those given with --only) at quick size and write one combined
    report; a [k/N] line with the elapsed time and an ETA before and after each."""
    # One torch thread by default (here and in `run`): lab experiments are many small ops, where
    # a second thread gains little, and on a 2-core machine with any other load OpenMP's
    # spin-waiting made the kernel-convergence quick run 8x slower (110 s vs 14 s measured).
    from widenet import lab

    console = out()
    t0 = time.perf_counter()
    selection = None
    if only:
        selection = [name.strip() for item in only for name in item.split(",") if name.strip()]
        try:
            for name in selection:
                lab.get(name)
        except lab.UnknownExperimentError as error:
            raise fail(str(error)) from None

    def on_progress(progress):
        console.print(progress.line(), soft_wrap=True, markup=False, highlight=False)
        result = progress.result
        if progress.done and result is not None and result.error:
            console.print(f"  [bold red]{result.name} failed:[/] {result.error}", soft_wrap=True)

    names = selection if selection is not None else list(lab.experiments())
    console.print(f"widenet demo: {len(names)} experiment(s) at quick size into {out_}")
    try:
        path, results = lab.run_demo(
            out_,
            force=force,
            seed=seed,
            threads=threads or None,
            only=selection,
            on_progress=on_progress,
        )
    except KeyboardInterrupt:
        raise interrupted(f"the unfinished experiment's folder under {out_}") from None
    except (FileExistsError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    typer.echo(f"Combined report: {path}")
    failed = [r.name for r in results if r.error]
    if failed:
        raise fail(f"{len(failed)} experiment(s) failed: {', '.join(failed)}", code=1)
