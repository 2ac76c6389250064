"""Where a ``compare-baselines`` folder keeps each method's set: the comparison writes there and
``report`` reads its samples from there, so the one rule lives below both."""

from __future__ import annotations

from pathlib import Path


def set_folder(out: Path, method: str, budget: int) -> Path:
    """Where a comparison in ``out`` keeps ``method``'s set (``report`` finds the samples there)."""
    return out / "sets" / f"{method}-b{budget}"
