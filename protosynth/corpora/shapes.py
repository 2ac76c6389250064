"""The built-in world: a seeded generator of captioned images of coloured shapes.

It exists so that the whole pipeline (embed -> prototypes -> render -> evaluate) runs offline on a
CPU with models protosynth trains itself. Retrieval on it is compositional: a caption names the
colour, shape, size and position of one to three objects, with synonyms and varied templates, so a
model must bind attributes to objects to rank captions well.

Images are drawn with 4x supersampling (anti-aliased) in numpy; thousands of images per second.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
COLOUR_SYNONYMS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "grass green"],
    "blue": ["blue", "navy", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
    "purple": ["purple", "violet", "lilac"],
    "orange": ["orange", "amber", "tangerine"],
    "white": ["white", "snowy", "pale"],
    "cyan": ["cyan", "turquoise", "aqua"],
}
SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_SYNONYMS: dict[str, list[str]] = {
    "circle": ["circle", "disk", "round dot", "ball"],
    "square": ["square", "box", "block", "tile"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "cross": ["cross", "plus sign", "plus"],
}
SIZES = ("small", "large")
SIZE_SYNONYMS: dict[str, list[str]] = {
    "small": ["small", "little", "tiny"],
    "large": ["large", "big", "huge"],
}
# 3x3 grid of cells; (row, col)
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
POSITION_PHRASES: dict[str, list[str]] = {
    "top left": ["in the top left", "at the upper left", "in the top left corner"],
    "top": ["at the top", "near the top edge", "in the upper middle"],
    "top right": ["in the top right", "at the upper right", "in the top right corner"],
    "left": ["on the left", "at the left side", "in the middle left"],
    "center": ["in the center", "in the middle", "at the centre"],
    "right": ["on the right", "at the right side", "in the middle right"],
    "bottom left": ["in the bottom left", "at the lower left", "in the bottom left corner"],
    "bottom": ["at the bottom", "near the bottom edge", "in the lower middle"],
    "bottom right": ["in the bottom right", "at the lower right", "in the bottom right corner"],
}
BACKGROUND = (24, 24, 32)
SPLIT_OFFSETS = {"train": 0, "test": 1, "pretrain": 2, "val": 3}
COUNT_WORDS = {2: ["two", "a pair of"], 3: ["three", "a trio of"]}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world's images and captions (part of its fingerprint)."""

    image_size: int = 32
    n_train: int = 10_000
    n_test: int = 1_000
    n_pretrain: int = 10_000
    n_val: int = 1_000  # the validation split: settings are chosen on it, never on test
    captions_per_image: int = 5
    max_objects: int = 3
    object_probs: tuple[float, ...] = (0.5, 0.35, 0.15)
    seed: int = 0
    version: int = 1

    def n_images(self, split: str) -> int:
        return {"train": self.n_train, "test": self.n_test, "pretrain": self.n_pretrain, "val": self.n_val}[split]

    def fingerprint(self) -> str:
        fields = asdict(self)
        if fields["n_val"] == WorldConfig.n_val:  # added after the other splits: keep their cache keys
            del fields["n_val"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    size: str
    position: str


@dataclass
class WorldSplit:
    """One split: uint8 images (N, H, W, 3), captions per image, and the objects drawn."""

    images: np.ndarray
    captions: list[list[str]]
    objects: list[list[WorldObject]] = field(default_factory=list)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    if shape == "triangle":  # apex up
        top, bottom = cy - r, cy + r * 0.8
        frac = (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= frac * r)
    if shape == "cross":
        arm = r * 0.33
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=4)
def _grid(big: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) + 0.5
    return yy, xx


SUPERSAMPLE = 4


def render_objects(objects: list[WorldObject], image_size: int, jitter: np.ndarray) -> np.ndarray:
    """Draw objects on the background with 4x supersampling; jitter is (len(objects), 2) in cells."""
    canvas = np.empty((image_size * SUPERSAMPLE,) * 2 + (3,), dtype=np.float32)
    _draw(canvas, objects, jitter)
    return _downsample(canvas[None], image_size)[0]


def _downsample(canvases: np.ndarray, image_size: int) -> np.ndarray:
    ss = SUPERSAMPLE
    small = canvases.reshape(len(canvases), image_size, ss, image_size, ss, 3).mean(axis=(2, 4))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _draw(canvas: np.ndarray, objects: list[WorldObject], jitter: np.ndarray) -> None:
    big = canvas.shape[0]
    canvas[:] = BACKGROUND
    yy, xx = _grid(big)
    cell = big / 3.0
    for obj, (jy, jx) in zip(objects, jitter):
        row, col = POSITIONS[obj.position]
        cy, cx = (row + 0.5 + jy) * cell, (col + 0.5 + jx) * cell
        r = cell * (0.24 if obj.size == "small" else 0.42)
        # only the object's bounding box is tested, which keeps generation at thousands per second
        y0, y1 = max(0, int(cy - r) - 1), min(big, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(big, int(cx + r) + 2)
        mask = _shape_mask(obj.shape, yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], cy, cx, r)
        canvas[y0:y1, x0:x1][mask] = COLOURS[obj.colour]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _describe(obj: WorldObject, rng: np.random.Generator, with_size: bool) -> str:
    colour = _pick(rng, COLOUR_SYNONYMS[obj.colour])
    shape = _pick(rng, SHAPE_SYNONYMS[obj.shape])
    size = _pick(rng, SIZE_SYNONYMS[obj.size]) + " " if with_size else ""
    return f"{size}{colour} {shape}"


def _caption(objects: list[WorldObject], rng: np.random.Generator) -> str:
    """One caption; templates vary in order, article, size mention and connective."""
    with_size = bool(rng.random() < 0.7)
    parts = []
    for obj in objects:
        where = _pick(rng, POSITION_PHRASES[obj.position])
        desc = _describe(obj, rng, with_size)
        article = "an" if desc[0] in "aeiou" else "a"
        if rng.random() < 0.5:
            parts.append(f"{article} {desc} {where}")
        else:
            parts.append(f"{where} there is {article} {desc}")
    order = rng.permutation(len(parts))
    parts = [parts[i] for i in order]
    if len(parts) == 1:
        if " there is " in parts[0]:
            return parts[0]
        lead = _pick(rng, ["", "a picture of ", "an image showing ", "a dark background with "])
        return lead + parts[0]
    joined = ", ".join(parts[:-1]) + _pick(rng, [" and ", ", plus ", " as well as "]) + parts[-1]
    if rng.random() < 0.4:
        lead = _pick(rng, COUNT_WORDS[len(parts)]) + " shapes: "
        return lead + joined
    return joined


def _sample_objects(rng: np.random.Generator, cfg: WorldConfig) -> list[WorldObject]:
    probs = np.asarray(cfg.object_probs[: cfg.max_objects], dtype=np.float64)
    n = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    names = list(POSITIONS)
    colours = list(COLOURS)
    return [
        WorldObject(
            colour=colours[rng.integers(len(colours))],
            shape=SHAPES[rng.integers(len(SHAPES))],
            size=SIZES[rng.integers(len(SIZES))],
            position=names[c],
        )
        for c in cells
    ]


def generate_split(cfg: WorldConfig, split: str, exclude: set[bytes] | None = None) -> WorldSplit:
    """Generate one split deterministically from (cfg, split); splits use disjoint seed streams.

    ``exclude``: digests (``image_digest``) of images this split must not contain; with it, the
    split also has no duplicate images of its own (``protosynth.corpus`` passes the earlier splits)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown world split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
    rng = np.random.default_rng([cfg.seed, SPLIT_OFFSETS[split], 7919])
    n = cfg.n_images(split)
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    captions: list[list[str]] = []
    objects: list[list[WorldObject]] = []
    chunk = 128
    canvases = np.empty((chunk,) + (cfg.image_size * SUPERSAMPLE,) * 2 + (3,), dtype=np.float32)
    for i in range(n):
        objs = _sample_objects(rng, cfg)
        jitter = rng.uniform(-0.12, 0.12, size=(len(objs), 2))
        _draw(canvases[i % chunk], objs, jitter)
        if i % chunk == chunk - 1 or i == n - 1:
            start = i - i % chunk
            images[start : i + 1] = _downsample(canvases[: i - start + 1], cfg.image_size)
        captions.append(_captions(objs, rng, cfg))
        objects.append(objs)
    split_data = WorldSplit(images=images, captions=captions, objects=objects)
    if exclude is not None:
        _replace_duplicates(split_data, cfg, split, exclude)
    return split_data


def _captions(objs: list[WorldObject], rng: np.random.Generator, cfg: WorldConfig) -> list[str]:
    caps: list[str] = []
    for _ in range(cfg.captions_per_image * 20):
        c = _caption(objs, rng)
        if c not in caps:
            caps.append(c)
        if len(caps) == cfg.captions_per_image:
            break
    while len(caps) < cfg.captions_per_image:  # a pathological config: repeat rather than fail
        caps.append(caps[len(caps) % max(1, len(caps))])
    return caps


def image_digest(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


def _replace_duplicates(data: WorldSplit, cfg: WorldConfig, split: str, exclude: set[bytes]) -> None:
    """Redraw every image whose pixels equal an excluded image (another split's) or an earlier image
    of this split, from a second seeded stream. Single small objects differ only by a sub-pixel
    jitter, so without this about 7 in 1,000 test images equal a train image pixel for pixel."""
    rng = np.random.default_rng([cfg.seed, SPLIT_OFFSETS[split], 7919, 1])
    seen = set(exclude)
    for i in range(len(data.images)):
        digest = image_digest(data.images[i])
        while digest in seen:
            objs = _sample_objects(rng, cfg)
            jitter = rng.uniform(-0.12, 0.12, size=(len(objs), 2))
            data.images[i] = render_objects(objs, cfg.image_size, jitter)
            data.captions[i], data.objects[i] = _captions(objs, rng, cfg), objs
            digest = image_digest(data.images[i])
        seen.add(digest)
