"""Resumable baseline runs: the outer loop's whole state, saved every few iterations beside the set.

An official run is 3,000 outer iterations: hours on a CPU, and a preemptible GPU job is stopped as
easily. A rerun with the same settings goes on from the last checkpoint and writes the same set, byte
for byte, as an uninterrupted run, so the checkpoint holds everything the loop reads and draws from:
the synthetic set's leaves, the optimiser's momentum, the numpy generator of experts and start epochs,
the torch generator of batches and blends, torch's global state (dropout in a train-mode student draws
from it), the batch permutation, and the traces the manifest reports. A checkpoint of a run with other
settings is refused (``--force`` starts over), never resumed into a set that says otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import P, ProtosynthError
from ..util.files import save_atomic
from .matching import SyntheticSet


@dataclass
class LoopState:
    """What the outer loop carries from one iteration to the next, besides the set and optimiser."""

    iteration: int = 0  # iterations done
    perm: torch.Tensor | None = None
    cursor: int = 0
    losses: list[float] = field(default_factory=list)
    lr_clamps: int = 0
    lr_trace: list[tuple[float, float]] = field(default_factory=list)
    seconds: float = 0.0  # loop seconds spent by earlier processes


def checkpoint_path(out: Path) -> Path:
    """A hidden file beside the set's folder (the set itself is renamed into place only when done)."""
    return out.with_name(f".{out.name}.checkpoint.pt")


def run_fingerprint(settings: dict, buffer_root: Path, buffer_settings: dict, pairs: np.ndarray) -> str:
    """What makes two runs the same run: resolved settings, the buffer and the starting pairs."""
    blob = (
        json.dumps(
            {"settings": settings, "buffer": str(Path(buffer_root).resolve()), "buffer_settings": buffer_settings},
            sort_keys=True,
            default=str,
        ).encode()
        + np.asarray(pairs, dtype=np.int64).tobytes()
    )
    return hashlib.sha256(blob).hexdigest()


def save_checkpoint(
    path: Path,
    fingerprint: str,
    syn: SyntheticSet,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    rng: np.random.Generator,
    state: LoopState,
) -> None:
    save_atomic(
        {
            "fingerprint": fingerprint,
            "leaves": {k: v.detach().clone() for k, v in syn.leaves().items()},
            "optimizer": opt.state_dict(),
            "gen": gen.get_state(),
            "numpy": json.dumps(rng.bit_generator.state),
            "torch": torch.get_rng_state(),
            "loop": {
                "iteration": state.iteration,
                "perm": state.perm,
                "cursor": state.cursor,
                "losses": state.losses,
                "lr_clamps": state.lr_clamps,
                "lr_trace": [list(t) for t in state.lr_trace],
                "seconds": state.seconds,
            },
        },
        path,
    )


def resume(
    path: Path,
    fingerprint: str,
    force: bool,
    syn: SyntheticSet,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> LoopState | None:
    """Restore a checkpoint of this run into the set, optimiser and generators (its loop state
    returned), or None when there is none (or ``force`` drops one of another run)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        raise ProtosynthError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}); delete it to start over")
    if saved.get("fingerprint") != fingerprint:
        if force:
            return None
        raise ProtosynthError(
            f"{path}: a checkpoint of a run with other settings (buffer, start pairs or values); "
            f"delete it, or pass {P.force} to start over"
        )
    with torch.no_grad():
        for name, leaf in syn.leaves().items():
            leaf.copy_(saved["leaves"][name])
    opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["gen"])
    rng.bit_generator.state = json.loads(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    loop = saved["loop"]
    return LoopState(
        iteration=loop["iteration"],
        perm=loop["perm"],
        cursor=loop["cursor"],
        losses=list(loop["losses"]),
        lr_clamps=loop["lr_clamps"],
        lr_trace=[tuple(t) for t in loop["lr_trace"]],
        seconds=loop["seconds"],
    )
