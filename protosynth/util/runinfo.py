"""Facts output manifests record: package versions, peak memory, thread counts; a folder-friendly corpus name."""

from __future__ import annotations

import importlib.metadata
import resource
import sys

import torch

from ..configs import SEED_MAX, check_seed  # noqa: F401 (re-exported: their public home)
from ..errors import P, ProtosynthError

PACKAGES = (
    "protosynth",
    "torch",
    "open_clip_torch",
    "diffusers",
    "faiss-cpu",
    "timm",
    "transformers",
    "scipy",
    "numpy",
    "Pillow",
)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def threads() -> dict[str, int]:
    """The thread counts this process computes with: float sums, so the outputs, change with them
    (faiss's k-means most: another count regroups prototypes), so a set records them."""
    import faiss  # noqa: PLC0415 -- only the verbs that cluster pay for faiss's import and its OpenMP runtime

    return {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}


def check_device(device_spec: str) -> None:
    try:
        device = torch.device(device_spec)
    except RuntimeError:
        raise ProtosynthError(f"unknown {P.device} {device_spec!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProtosynthError(f"{P.device} {device_spec}: no CUDA device is available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ProtosynthError(f"unsupported {P.device} {device_spec!r}: use cpu, cuda or mps")
