"""``python -m widenet``: the ``widenet`` command."""

from widenet.cli import app

app(prog_name="widenet")
