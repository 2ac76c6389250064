"""Shared pieces of the small-model trainers: atomic, resumable checkpoints and a progress bar."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress() -> Progress:
    """A rich progress bar with counts and ETA, written to stderr."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=Console(stderr=True), transient=False,
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


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file then rename, so a kill never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def restore_rng(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, t))))
