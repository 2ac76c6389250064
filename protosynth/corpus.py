"""Corpora behind one interface: the built-in world (``shapes``) and JSONL manifests.

A corpus is a list of images, each with one or more captions; the pipeline works on caption-level
pairs (image i repeated once per caption), as Flickr30k training files do.

Spec strings:
- ``shapes`` / ``shapes:train`` / ``shapes:test`` / ``shapes:pretrain``, optionally followed by
  ``,n=2000,size=32,seed=0`` to change the world's split size, image size or seed;
- a path to a ``.jsonl`` manifest, one object per line: ``{"image": "rel.png", "caption": "..."}``
  or ``{"image": "rel.png", "captions": ["...", ...]}``, image paths relative to the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ProtosynthError
from .world import SPLIT_OFFSETS, WorldConfig, WorldObject, WorldSplit, generate_split, image_digest


def cache_dir() -> Path:
    """Where protosynth caches generated worlds and embeddings (``PROTOSYNTH_CACHE`` overrides)."""
    return Path(os.environ.get("PROTOSYNTH_CACHE", Path.home() / ".cache" / "protosynth"))


@dataclass
class Corpus:
    """Images with captions. ``pair_image[p]`` is the image of caption-level pair ``p``."""

    spec: str
    fingerprint: str
    image_keys: list[str]
    captions: list[list[str]]
    pixels: np.ndarray | None = None  # (N, H, W, 3) uint8 when held in memory (the world)
    root: Path | None = None  # manifest folder for file-backed corpora
    image_lines: list[int] = field(default_factory=list)  # manifest line of each image
    pair_image: np.ndarray = field(init=False)
    pair_caption: list[str] = field(init=False)

    def __post_init__(self) -> None:
        counts = [len(c) for c in self.captions]
        self.pair_image = np.repeat(np.arange(len(self.captions), dtype=np.int64), counts)
        self.pair_caption = [c for caps in self.captions for c in caps]

    @property
    def n_images(self) -> int:
        return len(self.captions)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_caption)

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB; a missing or corrupt file is a ProtosynthError naming file and line."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        path = (self.root or Path(".")) / self.image_keys[i]
        where = f"{self.spec} line {self.image_lines[i]}" if self.image_lines else self.spec
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise ProtosynthError(f"{where}: image file not found: {path}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ProtosynthError(f"{where}: cannot read image {path}: {exc}") from None

    def image_array(self, i: int) -> np.ndarray:
        return np.asarray(self.load_image(i), dtype=np.uint8)


def _parse_world_spec(spec: str) -> tuple[str, WorldConfig]:
    head, *opts = spec.split(",")
    parts = head.split(":")
    if len(parts) > 2:
        raise ProtosynthError(f"corpus {spec!r}: expected shapes[:split], got {head!r}")
    split = parts[1] if len(parts) > 1 else "train"
    if split not in SPLIT_OFFSETS:
        raise ProtosynthError(f"corpus {spec!r}: unknown world split {split!r} (train, test, pretrain)")
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


# Split contents that changed: test and pretrain v2 have no image equal to a train (or test) image.
SPLIT_VERSION = {"train": "", "test": "-v2", "pretrain": "-v2"}
EARLIER_SPLITS = {"train": (), "test": ("train",), "pretrain": ("train", "test")}


def world_fingerprint(cfg: WorldConfig, split: str) -> str:
    return f"world-{cfg.fingerprint()}-{split}{SPLIT_VERSION[split]}"


def world_split(cfg: WorldConfig, split: str) -> WorldSplit:
    """One world split with its objects, generated on first use and cached as ``.npz``. Test and
    pretrain images never equal an image of an earlier split (train, then test)."""
    path = cache_dir() / "world" / f"{world_fingerprint(cfg, split)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            if "objects" in data.files:  # caches written before objects were stored are regenerated
                objects = [[WorldObject(*o) for o in objs] for objs in json.loads(str(data["objects"]))]
                return WorldSplit(data["images"], json.loads(str(data["captions"])), objects)
    exclude = None
    if EARLIER_SPLITS[split]:
        exclude = {image_digest(im) for earlier in EARLIER_SPLITS[split] for im in world_split(cfg, earlier).images}
    ws = generate_split(cfg, split, exclude)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    objects = [[[o.colour, o.shape, o.size, o.position] for o in objs] for objs in ws.objects]
    np.savez(tmp, images=ws.images, captions=np.array(json.dumps(ws.captions)), objects=np.array(json.dumps(objects)))
    os.replace(tmp, path)
    return ws


def load_world(spec: str = "shapes") -> Corpus:
    """The world split named by ``spec`` (see ``world_split``)."""
    split, cfg = _parse_world_spec(spec)
    ws = world_split(cfg, split)
    keys = [f"{split}/{i:06d}" for i in range(len(ws.captions))]
    return Corpus(spec=spec, fingerprint=world_fingerprint(cfg, split), image_keys=keys, captions=ws.captions,
                  pixels=ws.images)


def load_jsonl(path: str | Path) -> Corpus:
    """Read a JSONL manifest; every malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ProtosynthError(f"corpus {str(path)!r}: no such file")
    raw = path.read_bytes()
    order: dict[str, int] = {}
    captions: list[list[str]] = []
    lines: list[int] = []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise ProtosynthError(f"{path} line {line_no}: not valid UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProtosynthError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
            raise ProtosynthError(f"{where}: needs an 'image' field with a relative path")
        if "caption" in obj:
            caps = [obj["caption"]]
        elif "captions" in obj and isinstance(obj["captions"], list) and obj["captions"]:
            caps = obj["captions"]
        else:
            raise ProtosynthError(f"{where}: needs a 'caption' string or a non-empty 'captions' list")
        for c in caps:
            if not isinstance(c, str) or not c.strip():
                raise ProtosynthError(f"{where}: empty or non-string caption")
        image = obj["image"]
        if not (path.parent / image).is_file():
            raise ProtosynthError(f"{where}: image file not found: {path.parent / image}")
        if image not in order:
            order[image] = len(captions)
            captions.append([])
            lines.append(lineno)
        captions[order[image]].extend(c.strip() for c in caps)
    if not captions:
        raise ProtosynthError(f"corpus {str(path)!r}: manifest has no pairs")
    h = hashlib.sha256(raw)
    for image in order:
        st = (path.parent / image).stat()
        h.update(f"{image}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Corpus(
        spec=str(path), fingerprint=f"jsonl-{h.hexdigest()[:16]}", image_keys=list(order),
        captions=captions, root=path.parent, image_lines=lines,
    )


def load_corpus(spec: str) -> Corpus:
    """Resolve a corpus spec string (see module docstring)."""
    if spec == "shapes" or spec.startswith(("shapes:", "shapes,")):
        return load_world(spec)
    if spec.endswith(".jsonl"):
        return load_jsonl(spec)
    raise ProtosynthError(
        f"unknown corpus {spec!r}: use 'shapes[:train|test|pretrain]' or a path to a .jsonl manifest"
    )
