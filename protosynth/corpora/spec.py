"""The corpus spec grammar in one place: which specs name the built-in world, how a world spec's split
and options parse, and the canonical and folder-friendly forms every manifest and output name use.

World specs: ``shapes[:train|test|val|pretrain][,n=..,size=..,seed=..]``; ``hf:NAME[:SPLIT]`` names a
Hugging Face dataset (a cached Hub name, or a local folder); anything else is a file corpus path, shard
glob or saved dataset folder (``protosynth.corpus`` picks the reader).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from ..errors import ProtosynthError
from .shapes import SPLIT_OFFSETS, WorldConfig


def is_world(spec: str) -> bool:
    """Whether a corpus spec names the built-in world (``shapes``, ``shapes:test,n=300``, ...)."""
    return spec.split(",")[0].split(":")[0] == "shapes"


def canonical_spec(spec: str) -> str:
    """``spec`` with a file corpus's path (or shard glob) made absolute. Manifests record this form,
    so a buffer or set made in one folder can be read again from another (a relative path recorded
    as given would point elsewhere). ``hf:`` with a local path keeps its prefix and split, the path made
    absolute; ``hf:`` with a Hub name is kept as it is."""
    if is_world(spec):
        return spec
    if spec.startswith("hf:"):
        target, split = parse_hf(spec)
        if not os.path.exists(target):
            return spec
        return f"hf:{os.path.abspath(target)}" + (f":{split}" if split else "")
    return os.path.abspath(spec)


def canonical_root(image_root: Path | str | None) -> Path | None:
    """``--image-root`` made absolute, for the same reason as ``canonical_spec``."""
    return None if image_root is None else Path(os.path.abspath(image_root))


def corpus_name(spec: str) -> str:
    """``shapes:test,n=300`` -> ``shapes-test_n=300``; a file -> its stem (``train-*.tar`` -> ``train``,
    ``shards/*.tar`` -> ``shards``, ``hf:nlphuji/flickr30k:test`` -> ``flickr30k-test``): one folder name,
    never a path or a glob."""
    if is_world(spec):
        return spec.replace(":", "-").replace(",", "_")
    if spec.startswith("hf:"):
        target, split = parse_hf(spec)
        name = re.sub(r"[^\w.=-]", "_", Path(target).name).strip("-_.") or "dataset"
        return f"{name}-{split}" if split else name
    path = Path(spec)
    stem = re.sub(r"[*?\[\]]", "", path.stem).strip("-_.")
    return stem or re.sub(r"[*?\[\]]", "", path.parent.name).strip("-_.") or "corpus"


def parse_hf(spec: str) -> tuple[str, str | None]:
    """``hf:NAME:SPLIT`` -> (NAME, SPLIT); a split never holds a slash, so a path's colons are safe."""
    target = spec[3:] if spec.startswith("hf:") else spec
    head, sep, tail = target.rpartition(":")
    if sep and head and tail and "/" not in tail:
        return head, tail
    return target, None


def parse_world_spec(spec: str) -> tuple[str, WorldConfig]:
    head, *opts = spec.split(",")
    parts = head.split(":")
    if len(parts) > 2:
        raise ProtosynthError(f"corpus {spec!r}: expected shapes[:split], got {head!r}")
    split = parts[1] if len(parts) > 1 else "train"
    if split not in SPLIT_OFFSETS:
        raise ProtosynthError(f"corpus {spec!r}: unknown world split {split!r} (train, test, val, pretrain)")
    cfg = WorldConfig()
    for opt in opts:
        key, _, value = opt.partition("=")
        try:
            number = int(value)
        except ValueError:
            raise ProtosynthError(f"corpus {spec!r}: option {opt!r} needs an integer value") from None
        if key == "n":
            cfg = replace(cfg, **{f"n_{split}": number})
        elif key == "size":
            cfg = replace(cfg, image_size=number)
        elif key == "seed":
            cfg = replace(cfg, seed=number)
        else:
            raise ProtosynthError(f"corpus {spec!r}: unknown world option {key!r} (n, size, seed)")
        if number < (0 if key == "seed" else 1):
            raise ProtosynthError(f"corpus {spec!r}: option {key} must be positive")
    return split, cfg
