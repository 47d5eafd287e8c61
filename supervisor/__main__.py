"""``python -m supervisor``: the same as the ``supervisor`` command."""

from .cli import main

main(prog_name="supervisor")
