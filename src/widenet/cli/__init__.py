"""The ``widenet`` command line: a thin layer over the library, one module per topic.

Each module holds a small Typer app whose commands are joined to the root app below, so every
command keeps its top-level name (``widenet kernel``, ``widenet predict``, ...); ``widenet --help``
groups them by topic. A command parses its options, calls the library (reading and writing
files through :mod:`widenet.io`) and prints a summary. Errors a user can fix (unknown
experiment, bad option, missing file, an output that exists) are reported in one line with exit
code 2, never as a traceback.

Modules: :mod:`~widenet.cli.lab` (list, run, demo), :mod:`~widenet.cli.kernels` (kernel, ntk,
h-infinity) and :mod:`~widenet.cli.stores` (solve, verify), :mod:`~widenet.cli.dynamics`
(predict), :mod:`~widenet.cli.convergence` (du-bounds, du-train), :mod:`~widenet.cli.embedding`
(embed, hessian, condense), :mod:`~widenet.cli.regimes` (phase-point, regime, frequency),
:mod:`~widenet.cli.predictors` (fit-predict, random-features), :mod:`~widenet.cli.init`
(signal, critical-init), :mod:`~widenet.cli.shift` (covariate-weights, label-shift,
weighted-fit). Heavy libraries are imported inside the command bodies: ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from widenet.cli import (
    convergence,
    dynamics,
    embedding,
    init,
    kernels,
    lab,
    predictors,
    regimes,
    shift,
    stores,
)
from widenet.cli._common import Group

__all__ = ["app", "main"]

app = typer.Typer(
    name="widenet",
    cls=Group,
    help="widenet: neural-tangent-kernel theory, computable on your own networks and data.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
            "--version",
            callback=_version_callback,
            is_eager=True,
            metavar="",
            help="Show the version.",
        ),
    ] = False,
) -> None:
    """widenet: neural-tangent-kernel theory, computable on your own networks and data."""


# The order of the README's topics (and of the panels in --help).
for _topic in (
    lab,
    kernels,
    stores,
    dynamics,
    convergence,
    embedding,
    regimes,
    predictors,
    init,
    shift,
):
    app.add_typer(_topic.app)
