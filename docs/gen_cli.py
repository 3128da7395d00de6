"""Write the CLI reference (Markdown) from the Typer app by click's introspection.

Usage: ``python docs/gen_cli.py docs/cli.md``. Every command and option comes from the app
itself, so the page cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer


def _app():
    # The CLI is a module (widenet.cli) or a package (widenet.cli with an ``app``).
    from widenet.cli import app

    return app


def _usage(command: click.Command, ctx: click.Context) -> str:
    pieces = command.collect_usage_pieces(ctx)
    return " ".join([ctx.command_path, *pieces])


def _option_rows(command: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            if isinstance(param, click.Argument):
                rows.append(f"| `{param.human_readable_name}` | argument |")
            continue
        names, text = record
        text = " ".join(text.split()).replace("|", "\\|")
        rows.append(f"| `{names}` | {text} |")
    return rows


def render(app) -> str:
    group = typer.main.get_command(app)
    root = click.Context(group, info_name="widenet")
    lines = [
        "# CLI reference",
        "",
        "Generated from the Typer app by `docs/gen_cli.py` at every docs build; "
        "`widenet COMMAND --help` prints the same.",
        "",
        (group.help or "").strip(),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    names = group.list_commands(root)
    for name in names:
        cmd = group.get_command(root, name)
        first = " ".join((cmd.help or "").strip().split("\n\n")[0].split())
        short = first.replace("|", "\\|")
        lines.append(f"| [`{name}`](#{name}) | {short} |")
    for name in names:
        cmd = group.get_command(root, name)
        ctx = click.Context(cmd, info_name=name, parent=root)
        lines += ["", f"## {name}", "", "```text", _usage(cmd, ctx), "```", ""]
        for paragraph in (cmd.help or "").strip().split("\n\n"):
            lines += [" ".join(paragraph.split()), ""]
        rows = _option_rows(cmd, ctx)
        if rows:
            lines += ["| option | meaning |", "|---|---|", *rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    text = render(_app())
    if len(argv) > 1:
        Path(argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv)
