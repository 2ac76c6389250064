"""What every verb shares: the one-line error contract."""
from __future__ import annotations

import typer

from protosynth.errors import ProtosynthError


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the contract for every bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ProtosynthError as exc:
        fail(str(exc))
