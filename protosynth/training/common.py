"""Shared pieces of the small-model trainers: resumable random state and the learning-rate schedule."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..util.files import save_atomic  # noqa: F401 - the trainers' name for it


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


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
