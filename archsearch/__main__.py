"""``python -m archsearch`` is the ``archsearch`` command."""

from .cli import app

app(prog_name="archsearch")
