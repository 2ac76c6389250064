"""Progress bars for long loops: a rich bar on a terminal, a plain line every so often in a log file."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress() -> Progress:
    """A rich progress bar with counts and ETA, written to stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        transient=False,
    )


class StepBar:
    """A progress bar for a step loop; when stderr is not a terminal (a log file) it prints a
    plain line every ``every`` seconds instead, so background runs can be followed."""

    def __init__(self, description: str, total: int, completed: int = 0, every: float = 30.0):
        self._time = time.time
        self.description, self.total, self.done, self.every = description, total, completed, every
        self.plain = not sys.stderr.isatty()
        self._last = self._time()
        self._bar = None if self.plain else progress()

    def __enter__(self) -> "StepBar":
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, info: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)
        elif self._time() - self._last >= self.every or self.done == self.total:
            self._last = self._time()
            print(f"{self.description}: {self.done}/{self.total} {info}", file=sys.stderr, flush=True)
