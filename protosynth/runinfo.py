"""Facts every output manifest records: package versions, peak memory, a folder-friendly corpus name."""
from __future__ import annotations

import importlib.metadata
import os
import re
import resource
import sys
from pathlib import Path

import torch

from .errors import ProtosynthError

PACKAGES = ("protosynth", "torch", "open_clip_torch", "diffusers", "faiss-cpu", "timm", "transformers", "scipy",
            "numpy", "Pillow")


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


def is_world(spec: str) -> bool:
    """Whether a corpus spec names the built-in world (``shapes``, ``shapes:test,n=300``, ...)."""
    return spec.split(",")[0].split(":")[0] == "shapes"


def canonical_spec(spec: str) -> str:
    """``spec`` with a file corpus's path (or shard glob) made absolute. Manifests record this form,
    so a buffer or set made in one folder can be read again from another (a relative path recorded
    as given would point elsewhere)."""
    return spec if is_world(spec) else os.path.abspath(spec)


def canonical_root(image_root: Path | str | None) -> Path | None:
    """``--image-root`` made absolute, for the same reason as ``canonical_spec``."""
    return None if image_root is None else Path(os.path.abspath(image_root))


def corpus_name(spec: str) -> str:
    """``shapes:test,n=300`` -> ``shapes-test_n=300``; a file -> its stem (``train-*.tar`` -> ``train``,
    ``shards/*.tar`` -> ``shards``): one folder name, never a path or a glob."""
    if is_world(spec):
        return spec.replace(":", "-").replace(",", "_")
    path = Path(spec)
    stem = re.sub(r"[*?\[\]]", "", path.stem).strip("-_.")
    return stem or re.sub(r"[*?\[\]]", "", path.parent.name).strip("-_.") or "corpus"


def check_device(device_spec: str) -> None:
    try:
        device = torch.device(device_spec)
    except RuntimeError:
        raise ProtosynthError(f"unknown --device {device_spec!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProtosynthError(f"--device {device_spec}: no CUDA device is available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ProtosynthError(f"unsupported --device {device_spec!r}: use cpu, cuda or mps")
