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
against its recorded shape and hash (``store_problems``). A run's life of the store is here too:
``survey`` (what the folder holds: nothing, an unfinished store to resume, a complete one, intact or
with damaged files) and ``StoreWriter`` (the files still to compute, written atomically, then the
index completed); the stage that computes the numbers (``embed.py``) only plans and encodes.
``.npy`` because ``np.load(mmap_mode="r")`` maps it without reading it: clustering reads rows on
demand, so the corpus may exceed RAM.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import P, ProtosynthError
from .util.files import (
    atomic_path,
    read_index_json,
    remove_stale_temps,
    sha256_file,
    write_index_json,
    write_text_atomic,
)

FORMAT = "protosynth-embeddings/1"
INDEX = "index.json"
PAIR_IMAGE = "pair_image.npy"
MAX_OPEN = 64  # memory maps held open at once (each keeps a file descriptor)
ARRAY_CHUNK = 1 << 12  # rows read at a time when a Rows is materialised whole (``np.asarray``)
COST_FILE = "cost.json"  # what computing the store cost: beside it, so index.json's bytes never vary
log = logging.getLogger(__name__)


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
    return read_index_json(folder / INDEX, FORMAT, "embedding index")


def write_index(folder: Path, index: dict) -> None:
    write_index_json(folder / INDEX, index)


class Rows:
    """A (n, dim) matrix split over consecutive parts (memory-mapped ``.npy`` files or arrays), read
    on demand as float32. ``row_map`` (optional) maps each row to a row of the parts: the pair-level
    view of per-image embeddings; ``row_map_file``: the ``.npy`` file ``row_map`` is memory-mapped
    from (a store's ``pair_image.npy``), so only the rows read are paged in and a pickled Rows reopens
    it by path. ``take(idx, axis=0)`` mirrors ``ndarray.take`` so code written for arrays accepts a
    Rows; ``np.asarray(rows)`` materialises the whole matrix."""

    dtype = np.dtype(np.float32)

    def __init__(
        self,
        parts: list,
        lengths: list[int],
        dim: int,
        row_map: np.ndarray | None = None,
        row_map_file: Path | None = None,
    ):
        self.parts, self.dim, self.row_map, self.row_map_file = list(parts), int(dim), row_map, row_map_file
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        """Pickled without its open memory maps (a Ray task reopens the files by path), never the data
        (a memory-mapped ``row_map`` goes by its file's path, not its bytes)."""
        state = {**self.__dict__, "_open": OrderedDict()}
        if self.row_map_file is not None:
            state["row_map"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.row_map_file is not None:
            self.row_map = np.load(self.row_map_file, mmap_mode="r")

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
        """The whole matrix, read ``ARRAY_CHUNK`` rows at a time: the row indices (and a row map's
        slice) are never corpus-length arrays beside it."""
        full = np.empty(self.shape, np.float32)
        for a in range(0, len(self), ARRAY_CHUNK):
            full[a : a + ARRAY_CHUNK] = self.take(np.arange(a, min(a + ARRAY_CHUNK, len(self))))
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
        # memory-mapped, not loaded: a pass pages in the pairs of the ranges it reads (issue 32)
        self.pair_image = np.load(self.folder / PAIR_IMAGE, mmap_mode="r")
        img_len = [s["images"][1] - s["images"][0] for s in shards]
        txt_len = [s["pairs"][1] - s["pairs"][0] for s in shards]
        self.images = Rows([self.folder / s["image_file"] for s in shards], img_len, dim)
        self.image_pairs = Rows(
            self.images.parts, img_len, dim, row_map=self.pair_image, row_map_file=self.folder / PAIR_IMAGE
        )
        self.texts = Rows([self.folder / s["text_file"] for s in shards], txt_len, dim)

    def verify(self) -> list[str]:
        """Files that do not match the index (reads every file)."""
        return [name for name, _ in store_problems(self.folder, self.index)]


def check_folder(folder: Path, index: dict | None, want: dict) -> None:
    """A folder may only hold a store of the same corpus, CLIP, dtype and batch size (and, to resume,
    shard size)."""
    if folder.exists() and not folder.is_dir():
        raise ProtosynthError(f"{folder} is a file, not a folder for embeddings")
    if index is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise ProtosynthError(f"{folder} is not empty and holds no embedding index.json: use a new or empty folder")
        return
    corpus, clip = index.get("corpus", {}), index.get("clip", {})
    if corpus.get("fingerprint") != want["corpus"]["fingerprint"]:
        raise ProtosynthError(
            f"{folder} holds embeddings of another corpus ({corpus.get('spec')}, "
            f"{corpus.get('fingerprint')}); use another folder"
        )
    if clip != want["clip"]:
        raise ProtosynthError(
            f"{folder} holds embeddings of another CLIP ({clip.get('spec')}, {clip.get('space')}); use another folder"
        )
    if index.get("dtype") != want["dtype"]:
        raise ProtosynthError(
            f"{folder} holds {index.get('dtype')} embeddings, not {want['dtype']}: "
            f"{'add' if index.get('dtype') == 'float16' else 'drop'} {P.fp16(True)} "
            "or use another folder"
        )
    if index.get("batch_size") != want["batch_size"]:
        made = index.get("batch_size") or "an unrecorded batch size (a store made before batch sizes were recorded)"
        raise ProtosynthError(
            f"{folder} holds embeddings made with {P.batch_size} {made}, not {want['batch_size']}: "
            "batch sizes change the last bits of the numbers; use that batch size or another folder"
        )
    if not index.get("complete") and index.get("shard_size") != want["shard_size"]:
        raise ProtosynthError(
            f"{folder} holds an unfinished store with {P.shard_size} {index.get('shard_size')}: "
            f"resume with that shard size, or delete the folder"
        )


@dataclass
class Survey:
    """What a store folder holds before a run. ``index``: the index the run completes (the wanted
    one for a new or unfinished store; a complete store's own, so its shards and their order stay);
    ``found``: the folder's own index (None: a new store); ``damaged``: file -> what is wrong, for a
    complete store whose files do not all match it."""

    index: dict
    found: dict | None
    damaged: dict[str, str]

    @property
    def complete(self) -> bool:
        return self.found is not None and bool(self.found.get("complete"))

    @property
    def intact(self) -> bool:
        """A complete store with every file matching its index: nothing to compute."""
        return self.complete and not self.damaged


def survey(folder: Path, want: dict) -> Survey:
    """Check that ``folder`` may hold the store ``want`` describes (``check_folder``), and read a
    complete store's every file against the sha256 its index records, each time it is opened for
    use: the files that do not match are recomputed (and only they are rewritten)."""
    index = read_index(folder)
    check_folder(folder, index, want)
    if index is None or not index.get("complete"):
        return Survey(want, index, {})
    damaged = dict(store_problems(folder, index))
    for name, why in damaged.items():
        log.warning("%s: %s; recomputing it", folder / name, why)
    return Survey(index, index, damaged)


class StoreWriter:
    """One run writing the store ``found`` describes into ``folder`` (a writable folder): the
    folder, its index (written first, unfinished) and ``pair_image.npy`` are set up on creation;
    ``todo`` lists the shards to compute, ``write`` saves one shard's arrays atomically (of a repair,
    only the damaged files), and ``finish`` records every hash and completes the index."""

    def __init__(self, folder: Path, found: Survey, pair_image: np.ndarray):
        self.folder, self.index, self.damaged = folder, found.index, found.damaged
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # what killed runs writing this store left behind
        if found.found is None:
            write_index(folder, self.index)
        # an intact file's recorded hash: not computed again
        recorded = store_files(self.index) if self.damaged else []
        self.digests = {name: digest for name, _, digest in recorded if name not in self.damaged}
        if not (folder / PAIR_IMAGE).is_file() or PAIR_IMAGE in self.damaged:
            self.digests[PAIR_IMAGE] = save_npy_atomic(folder / PAIR_IMAGE, pair_image)
        self.todo = [s for s in self.index["shards"] if not shard_done(folder, s) or self._damaged(s)]
        self.started = time.perf_counter()

    def _damaged(self, shard: dict) -> bool:
        return bool({shard["image_file"], shard["text_file"]} & self.damaged.keys())

    def write(self, shard: dict, img: np.ndarray, txt: np.ndarray) -> None:
        for name, rows in ((shard["text_file"], txt), (shard["image_file"], img)):
            if not self.damaged or name in self.damaged:
                self.digests[name] = save_npy_atomic(self.folder / name, rows)

    def finish(self) -> None:
        """Record the cost (not of a repair: it keeps the cost of the run that computed the store),
        every file's sha256 and the dimension, and rewrite the index with ``"complete": true`` last."""
        folder, index, shards = self.folder, self.index, self.index["shards"]
        if not self.damaged:
            whole = len(self.todo) == len(shards)
            seconds = round(time.perf_counter() - self.started, 2) if whole else None
            cost = {"compute_seconds": seconds, "shards": len(shards)}
            write_text_atomic(folder / COST_FILE, json.dumps(cost, indent=2))
        for s in shards:
            for key in ("image", "text"):
                name = s[f"{key}_file"]
                s[f"{key}_sha256"] = self.digests.get(name) or sha256_file(folder / name)
        if shards:
            index["dim"] = int(np.load(folder / shards[0]["image_file"], mmap_mode="r").shape[1])
        index["pair_image_sha256"] = self.digests.get(PAIR_IMAGE) or sha256_file(folder / PAIR_IMAGE)
        index.pop("complete", None)
        index["complete"] = True  # the last key, in the index written after the last shard
        write_index(folder, index)


def compute_seconds(folder: Path) -> float | None:
    """The seconds the store took to compute, whichever run computed it (None: not known, e.g. a
    resumed store, or one written before costs were recorded)."""
    try:
        return json.loads((Path(folder) / COST_FILE).read_text()).get("compute_seconds")
    except (OSError, ValueError, AttributeError):
        return None
