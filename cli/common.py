"""What every verb shares: the one-line error contract."""

from __future__ import annotations

import sys

import typer

from protosynth.errors import ProtosynthError

from .flags import cli_message


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the contract for every bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def comma_list(flag: str, text: str) -> list[str]:
    """The items of a comma-separated flag value, stripped; an empty item (``3,``, ``1,,2``) is a
    typo to report, never dropped: ``--budget 3,`` must not quietly mean ``--budget 3``."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        fail(f"{flag} {text!r}: empty item in the comma-separated list")
    return items


def command_line() -> str:
    """This run's command, for the provenance a library function records (the library never reads sys.argv)."""
    return " ".join(["protosynth"] + sys.argv[1:])


def run(fn, *args, verb: str | None = None, **kwargs):
    """``fn(*args, **kwargs)``; a library error becomes ``verb``'s one line, naming its flags."""
    try:
        return fn(*args, **kwargs)
    except ProtosynthError as exc:
        fail(cli_message(exc, verb))
