"""Passes over every pair, range by range: the part of clustering that reads the whole store.

``build_prototypes`` reads all rows four times: their norms and image-text cosines (``range_stats``:
the pieces of the norms' means and a histogram of the cosines), the cosines again to place the drop's
cut (``range_bucket``; ``drop``), each kept pair's nearest centroid (``range_labels``), and the
per-prototype sums of the unit rows and their norms with the member lists (``range_sums``). Each pass
is a function of one range of pairs (``pass_ranges``: a store's shards, else fixed-size chunks) that
returns small arrays; the driver combines the results in range order. The per-pair quantities a
later pass needs, a range's cosines and labels, are kept in a scratch folder (``build_prototypes``
makes one in the system's temporary folder, ``TMPDIR``) and recomputed, with the same bits, by a
task that does not find them (a Ray node that does not see that folder). An engine
(``engines.base``) maps a pass over the ranges: the local engine one after another in this process
(``map_local``), the Ray engine as Ray tasks (``engines.ray.cluster``); both run the same function on
the same ranges and combine in the same order, and the sums are float64 partial sums per range, so
both engines give byte-identical prototypes. The driver holds histograms, a float per 100 or so
pairs for the norms' means (``util.pairwise``), the K x K counts, the K x D sums, the k-means sample
and the member lists: no array as long as the corpus.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from . import drop
from .engines.base import LocalEngine
from .store import Rows
from .util.pairwise import leaf_parts

CHUNK_BYTES = 256 << 20  # float32 bytes of one range of an in-memory matrix (a store's range is a shard)

# map(fn, ranges, per_range_args, shared_args) -> each fn(image_raw, text_raw, a, b, *per_range, *shared), in order
RangeMap = Callable[..., Iterable]


def pass_ranges(text_raw, d: int) -> list[tuple[int, int]]:
    """The ranges a pass is split into: a store's shards (its text parts, one file each), else
    ranges of at most CHUNK_BYTES of image and text rows."""
    if isinstance(text_raw, Rows):
        starts = [int(v) for v in text_raw.starts]
        return [(a, b) for a, b in zip(starts[:-1], starts[1:]) if b > a]
    n, step = len(text_raw), max(1, CHUNK_BYTES // (8 * max(d, 1)))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def map_local(fn, ranges, per_range, shared, image_raw, text_raw):
    """The local engine's ``map_ranges`` (``engines.LocalEngine``): every range in this process, in order."""
    return LocalEngine().map_ranges(fn, ranges, per_range, shared, image_raw, text_raw)


def assign(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid (exact L2, faiss; a GPU index when faiss sees a GPU): k-means's
    labels on the driver and a pass's on any engine."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    return index.search(np.ascontiguousarray(x, np.float32), 1)[1][:, 0].astype(np.int64)


def rows_f32(x, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of an array or of a row source with ``take`` (a memory-mapped store's Rows), float32."""
    return np.asarray(x.take(idx, axis=0), np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def features(image_raw, text_raw, rows: np.ndarray, space: str) -> np.ndarray:
    """What k-means clusters for pairs ``rows``: unit image rows, unit text rows, or both side by side."""
    if space == "image":
        return unit(rows_f32(image_raw, rows))
    if space == "text":
        return unit(rows_f32(text_raw, rows))
    return np.concatenate([unit(rows_f32(image_raw, rows)), unit(rows_f32(text_raw, rows))], 1)


def _group_sums(values: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """float64 sums of ``values`` rows by ``target`` (>= 0), rows of a group added in row order."""
    out = np.zeros((k,) + values.shape[1:], np.float64)
    sel = np.flatnonzero(target >= 0)
    if not len(sel):
        return out
    order = sel[np.argsort(target[sel], kind="stable")]
    groups, starts = np.unique(target[order], return_index=True)
    out[groups] = np.add.reduceat(values[order].astype(np.float64), starts, axis=0)
    return out


# -- the streamed passes (issue 32): what each range hands back is per prototype or per range, never
# per pair; the per-pair quantities a later pass needs (cosines, labels) stay in the scratch folder


def _load(scratch: str | None, name: str) -> np.ndarray | None:
    """A per-range array an earlier pass kept in ``scratch``, or None (no folder, or a node that does
    not see it: the caller recomputes it, with the same bits)."""
    if scratch is None:
        return None
    try:
        return np.load(Path(scratch) / f"{name}.npy")
    except (OSError, ValueError):
        return None


def _save(scratch: str | None, name: str, array: np.ndarray) -> None:
    """Keep a per-range array for the later passes, renamed into place (a retried task rewrites it)."""
    if scratch is None:
        return
    path = Path(scratch) / f"{name}.npy"
    tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.npy")
    try:
        np.save(tmp, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:  # a scratch folder this node cannot write: the later passes recompute
        tmp.unlink(missing_ok=True)


def cosines(image_raw, text_raw, a: int, b: int, scratch: str | None = None) -> np.ndarray:
    """Pairs a..b: image-text cosines (float32, row by row), as ``range_stats`` kept them."""
    got = _load(scratch, f"cos-{a}-{b}")
    if got is None:
        idx = np.arange(a, b)
        got = (unit(rows_f32(image_raw, idx)) * unit(rows_f32(text_raw, idx))).sum(1)
    return got


def range_stats(image_raw, text_raw, a: int, b: int, n: int, scratch: str | None):
    """Pairs a..b of ``n``: the pieces of the image and text norms' means (``util.pairwise``) and the
    histogram of the cosines' high sort-key bits (``drop``); the cosines stay in ``scratch``."""
    idx = np.arange(a, b)
    ri, rt = rows_f32(image_raw, idx), rows_f32(text_raw, idx)
    sims = (unit(ri) * unit(rt)).sum(1)
    _save(scratch, f"cos-{a}-{b}", sims)
    high = np.unique(drop.sort_keys(sims) >> drop.HALF, return_counts=True)
    return leaf_parts(np.linalg.norm(ri, axis=1), a, n), leaf_parts(np.linalg.norm(rt, axis=1), a, n), high


def range_bucket(image_raw, text_raw, a: int, b: int, top: int, scratch: str | None):
    """Pairs a..b: how many cosines' keys lie below high bits ``top``, and the histogram of the low
    bits of those in ``top`` (the drop's second step)."""
    keys = drop.sort_keys(cosines(image_raw, text_raw, a, b, scratch))
    high = keys >> drop.HALF
    return int((high < top).sum()), np.unique(keys[high == top] & drop.LOW, return_counts=True)


def _labels(image_raw, text_raw, rows: np.ndarray, fits: list) -> np.ndarray:
    return np.stack([assign(c, features(image_raw, text_raw, rows, space)) for space, c in fits]).reshape(len(fits), -1)


def range_labels(image_raw, text_raw, a: int, b: int, cut: tuple, fits: list, k: int, scratch: str | None):
    """The nearest centroid of each kept pair of a..b for each (space, centroids), kept in ``scratch``;
    returns, with two clusterings (matched mode), their co-membership counts (codes i*k+t, counts)."""
    rows = a + drop.kept_rows(cosines(image_raw, text_raw, a, b, scratch), cut)
    labels = _labels(image_raw, text_raw, rows, fits)
    _save(scratch, f"labels-{a}-{b}", labels.astype(np.int32 if k < 2**31 else np.int64))
    return np.unique(labels[0] * k + labels[1], return_counts=True) if len(fits) == 2 else None


def range_sums(image_raw, text_raw, a: int, b: int, cut: tuple, fits: list, match, k: int, scratch: str | None):
    """Pairs a..b: per prototype, the float64 sums of the unit rows and raw norms of the pairs each half
    averages and their counts (as before: ``_group_sums`` in row order); the member pairs with their
    prototype; and, for each empty match, the pairs of its two clusters. ``match``:
    ``clustering.Match`` (matched mode), None with one clustering."""
    rows = a + drop.kept_rows(cosines(image_raw, text_raw, a, b, scratch), cut)
    labels = _load(scratch, f"labels-{a}-{b}")
    if labels is None or labels.shape[-1] != len(rows):
        labels = _labels(image_raw, text_raw, rows, fits)
    labels = labels.astype(np.int64)
    img_t = np.full(b - a, -1, np.int64)
    if match is None:
        img_t[rows - a] = labels[0]
        txt_t, members, empties = img_t, (rows, labels[0]), []
    else:
        txt_t = np.full(b - a, -1, np.int64)
        img_t[rows - a], txt_t[rows - a], members, empties = match.targets(rows, labels[0], labels[1])
    idx, sums = np.arange(a, b), []
    for raw, target in ((image_raw, img_t), (text_raw, txt_t)):
        got = rows_f32(raw, idx)
        norms = np.linalg.norm(got, axis=1)
        sums.append(
            (
                _group_sums(unit(got), target, k),
                _group_sums(norms, target, k),
                np.bincount(target[target >= 0], minlength=k),
            )
        )
    return sums, members, empties
