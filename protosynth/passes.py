"""Passes over every pair, range by range: the part of clustering that reads the whole store.

``build_prototypes`` reads all rows three times: their norms and image-text cosines (to drop the
least aligned pairs), each kept pair's nearest centroid, and the per-prototype sums of the unit rows
and their norms. Each pass is a function of one range of pairs (``pass_ranges``: a store's shards,
else fixed-size chunks) that returns small arrays; the driver combines the results in range order.
An engine (``engines.base``) maps a pass over the ranges: the local engine one after another in this
process (``map_local``), the Ray engine as Ray tasks (``engines.ray.cluster``); both run the same function
on the same ranges and combine in the same order, and the sums are float64 partial sums per range, so
both engines give byte-identical prototypes. The driver holds per-pair labels and member lists,
K x K counts and K x D sums.
"""

from __future__ import annotations

from typing import Callable, Iterable

import faiss
import numpy as np

from .engines.base import LocalEngine
from .store import Rows

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


def range_stats(image_raw, text_raw, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs a..b: image norms, text norms, image-text cosines (float32, row by row)."""
    idx = np.arange(a, b)
    ri, rt = rows_f32(image_raw, idx), rows_f32(text_raw, idx)
    return np.linalg.norm(ri, axis=1), np.linalg.norm(rt, axis=1), (unit(ri) * unit(rt)).sum(1)


def features(image_raw, text_raw, rows: np.ndarray, space: str) -> np.ndarray:
    """What k-means clusters for pairs ``rows``: unit image rows, unit text rows, or both side by side."""
    if space == "image":
        return unit(rows_f32(image_raw, rows))
    if space == "text":
        return unit(rows_f32(text_raw, rows))
    return np.concatenate([unit(rows_f32(image_raw, rows)), unit(rows_f32(text_raw, rows))], 1)


def range_labels(image_raw, text_raw, a: int, b: int, rows: np.ndarray, fits: list) -> list[np.ndarray]:
    """The nearest centroid of each kept pair ``rows`` (all within a..b), for each (space, centroids)."""
    return [assign(centroids, features(image_raw, text_raw, rows, space)) for space, centroids in fits]


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


def range_sums(image_raw, text_raw, a: int, b: int, img_target: np.ndarray, txt_target: np.ndarray, k: int):
    """Pairs a..b: per prototype, the float64 sums of the unit rows and of the raw norms of the pairs
    each half averages (``*_target``: the prototype of each pair's image / text half, -1 for none),
    and their counts."""
    idx, out = np.arange(a, b), []
    for raw, target in ((image_raw, img_target), (text_raw, txt_target)):
        rows = rows_f32(raw, idx)
        norms = np.linalg.norm(rows, axis=1)
        out.append(
            (
                _group_sums(unit(rows), target, k),
                _group_sums(norms, target, k),
                np.bincount(target[target >= 0], minlength=k),
            )
        )
    return out
