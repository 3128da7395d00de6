"""``python -m widenet.cli``: the ``widenet`` command."""

from widenet.cli import app

app(prog_name="widenet")
