"""The on-disk embedding store: a folder of ``.npy`` shards with an ``index.json``.

Layout (one folder per corpus x CLIP x storage dtype x batch size)::

    index.json          corpus fingerprint, clip spec + space, dim, dtype, batch size, shard size, counts,
                        the shard list (image range, pair range, files, sha256), "complete" last
    pair_image.npy      int64 (n_pairs,): the image row of each caption-level pair
    image-000000.npy    (images in shard 0, dim) image embeddings, one row per image
    text-000000.npy     (pairs of those images, dim) text embeddings, one row per caption-level pair
    ...

A shard covers a range of ``shard_size`` images and the caption-level pairs of those images (a
corpus lists an image's captions consecutively, so that is one pair range). Every file is written
to a temporary name and renamed into place, so a file present under its final name is complete; a
shard is done when both of its files exist. ``index.json`` is written first with
``"complete": false`` (so a resumed run can check it is resuming the same work) and rewritten with
the hashes and ``"complete": true`` after the last shard; every later opening checks each file
against its recorded shape and hash (``store_problems``). ``.npy`` because ``np.load(mmap_mode="r")``
maps it without reading it: clustering reads rows on demand, so the corpus may exceed RAM.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import ProtosynthError
from .files import atomic_path, sha256_file, write_text_atomic

FORMAT = "protosynth-embeddings/1"
INDEX = "index.json"
PAIR_IMAGE = "pair_image.npy"
MAX_OPEN = 64  # memory maps held open at once (each keeps a file descriptor)


def shard_files(j: int) -> tuple[str, str]:
    return f"image-{j:06d}.npy", f"text-{j:06d}.npy"


def plan_shards(pair_image: np.ndarray, n_images: int, shard_size: int) -> list[dict]:
    """Image ranges of ``shard_size`` and the pair range of each (pairs of an image are consecutive)."""
    out = []
    for j, a in enumerate(range(0, n_images, shard_size)):
        b = min(a + shard_size, n_images)
        p0, p1 = (int(v) for v in np.searchsorted(pair_image, [a, b]))
        image_file, text_file = shard_files(j)
        out.append({"images": [a, b], "pairs": [p0, p1], "image_file": image_file, "text_file": text_file})
    return out


def shard_done(folder: Path, shard: dict) -> bool:
    return (folder / shard["image_file"]).is_file() and (folder / shard["text_file"]).is_file()


def save_npy_atomic(path: Path, array: np.ndarray) -> str:
    """``np.save`` through ``atomic_path``, fsynced before the rename; returns the file's sha256."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
    return digest


def read_index(folder: Path) -> dict | None:
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProtosynthError(f"{path}: unreadable embedding index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ProtosynthError(f"{path}: not a protosynth embedding index (format {FORMAT})")
    return index


def write_index(folder: Path, index: dict) -> None:
    write_text_atomic(folder / INDEX, json.dumps(index, indent=1) + "\n")


class Rows:
    """A (n, dim) matrix split over consecutive parts (memory-mapped ``.npy`` files or arrays), read
    on demand as float32. ``row_map`` (optional) maps each row to a row of the parts: the pair-level
    view of per-image embeddings. ``take(idx, axis=0)`` mirrors ``ndarray.take`` so code written for
    arrays accepts a Rows; ``np.asarray(rows)`` materialises the whole matrix."""

    dtype = np.dtype(np.float32)

    def __init__(self, parts: list, lengths: list[int], dim: int, row_map: np.ndarray | None = None):
        self.parts, self.dim, self.row_map = list(parts), int(dim), row_map
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        """Pickled without its open memory maps (a Ray task reopens the files by path), never the data."""
        return {**self.__dict__, "_open": OrderedDict()}

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.row_map) if self.row_map is not None else int(self.starts[-1]), self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def _part(self, j: int) -> np.ndarray:
        part = self.parts[j]
        if isinstance(part, np.ndarray):
            return part
        if j not in self._open:
            self._open[j] = np.load(part, mmap_mode="r")
            if len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
        self._open.move_to_end(j)
        return self._open[j]

    def take(self, idx, axis: int = 0) -> np.ndarray:
        if axis != 0:
            raise ValueError("Rows.take reads whole rows (axis=0)")
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"rows {idx.min()}..{idx.max()} outside 0..{len(self) - 1}")
        rows = self.row_map[idx] if self.row_map is not None else idx
        out = np.empty((len(rows), self.dim), np.float32)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(self.parts) + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[j] : bounds[j + 1]]
            out[sel] = self._part(j)[rows[sel] - self.starts[j]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self.take(np.arange(len(self)))
        return full if dtype is None else full.astype(dtype, copy=False)


def npy_problem(path: Path, shape: tuple[int, ...], digest: str | None) -> str | None:
    """What is wrong with a file of a store against its ``index.json`` (the shape in the ``.npy``
    header, then the sha256 of the whole file), or None when it is intact."""
    if not path.is_file():
        return "missing"
    try:
        got = tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError) as exc:
        return f"truncated or unreadable ({' '.join(str(exc).split())})"
    if got != tuple(shape):
        return f"shape {got}, index.json says {tuple(shape)}"
    if not digest:
        return "index.json records no sha256 for it"
    if sha256_file(path) != digest:
        return "sha256 differs from index.json (the file changed after it was written)"
    return None


def store_files(index: dict) -> list[tuple[str, tuple[int, ...], str | None]]:
    """Every file a complete ``index.json`` lists: (name, shape, recorded sha256)."""
    dim = int(index["dim"])
    out = [(PAIR_IMAGE, (int(index["n_pairs"]),), index.get("pair_image_sha256"))]
    for s in index["shards"]:
        for key, (a, b) in (("image", s["images"]), ("text", s["pairs"])):
            out.append((s[f"{key}_file"], (b - a, dim), s.get(f"{key}_sha256")))
    return out


def store_problems(folder: Path, index: dict) -> list[tuple[str, str]]:
    """(file name, what is wrong) for every file of a complete store that does not match its
    ``index.json``; reads every file once (hashing runs at about 1 GB/s)."""
    problems = []
    for name, shape, digest in store_files(index):
        why = npy_problem(Path(folder) / name, shape, digest)
        if why is not None:
            problems.append((name, why))
    return problems


class EmbeddingStore:
    """A complete store opened for reading: ``images`` (per image), ``image_pairs`` and ``texts``
    (per caption-level pair), all memory-mapped ``Rows``. Every file is first checked against the
    shape and sha256 ``index.json`` records (``checked=True``: the caller has just done so)."""

    def __init__(self, folder: Path, checked: bool = False):
        self.folder = Path(folder)
        index = read_index(self.folder)
        if index is None or not index.get("complete"):
            raise ProtosynthError(f"{self.folder}: no complete embedding store (index.json missing or unfinished)")
        self.index = index
        shards, dim = index["shards"], int(index["dim"])
        problems = [] if checked else store_problems(self.folder, index)
        if problems:
            name, why = problems[0]
            more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
            raise ProtosynthError(
                f"{self.folder / name}: {why}{more}; embedding the corpus again with the same CLIP recomputes it"
            )
        self.pair_image = np.load(self.folder / PAIR_IMAGE)
        img_len = [s["images"][1] - s["images"][0] for s in shards]
        txt_len = [s["pairs"][1] - s["pairs"][0] for s in shards]
        self.images = Rows([self.folder / s["image_file"] for s in shards], img_len, dim)
        self.image_pairs = Rows(self.images.parts, img_len, dim, row_map=self.pair_image)
        self.texts = Rows([self.folder / s["text_file"] for s in shards], txt_len, dim)

    def verify(self) -> list[str]:
        """Files that do not match the index (reads every file)."""
        return [name for name, _ in store_problems(self.folder, self.index)]
