"""Stage 2, prototypes: faiss k-means of the pair embeddings into ``budget`` image-text prototypes.

Modes:
- ``matched`` (PDS, default): drop the pairs with the lowest image-text cosine (20%), cluster image
  and text embeddings separately (K = budget each), match image clusters to text clusters with the
  Hungarian algorithm on their co-membership counts, and average the pairs the two matched clusters
  share. When a matched pair of clusters shares no pair (the public PDS code emits NaN there), the
  prototype falls back to the two clusters' own means and records the union of their members; the
  number of such fallbacks is reported as ``empty_matches``.
- ``joint``: k-means on the concatenated normalised [image; text] embeddings.
- ``image`` / ``text``: k-means on one modality; the other half is the mean of the same members.

By default clustering is faiss k-means on L2-normalised embeddings, and prototypes are returned
normalised and rescaled to the mean raw norm of their members, since unCLIP decoders expect raw CLIP
embeddings. Four settings (``matched`` mode) follow the PDS authors' code instead, alone or together
(``distill``'s preset ``pds-published`` sets all four):
- ``cluster_space="raw"``: cluster the raw, unnormalised rows;
- ``kmeans="minibatch"``: sklearn MiniBatchKMeans (batch 10,000, 20 inits, ``random_state`` the seed);
- ``prototype_norm="mean"``: a prototype is the plain mean of its raw shared members, and a matched
  pair of clusters sharing none keeps the two k-means centres;
- ``prototype_order="alignment"``: prototypes ordered by their image-text cosine, highest first.
Any of them runs in memory (the kept rows are read whole, as the authors' code does).
"""

from __future__ import annotations

import logging
import tempfile
from functools import partial

import faiss
import numpy as np

from . import drop, passes
from .clustering import (  # PrototypeConfig, Prototypes and kmeans: also this stage's public names
    PrototypeConfig,
    Prototypes,
    _chunks,
    fit_kmeans,
    group_members,
    kmeans,  # noqa: F401
    match_clusters,
)
from .configs import MODES, check_prototype_rules  # noqa: F401 (MODES re-exported: its public home)
from .errors import P, ProtosynthError
from .prototypes_rules import build_in_memory
from .util.pairwise import TreeMean

log = logging.getLogger(__name__)


class _View:
    """Rows computed on demand from other rows (the normalised kept pairs), never held whole."""

    def __init__(self, n: int, d: int, fn):
        self.shape, self.fn = (n, d), fn

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx, axis: int = 0) -> np.ndarray:
        return self.fn(np.asarray(idx, np.int64))


def _mean(x) -> np.ndarray:
    """Column mean of a row source, summed chunk by chunk (one chunk: exactly ``x.mean(0)``)."""
    total = None
    for idx in _chunks(len(x), x.shape[1]):
        part = x.take(idx).sum(0)
        total = part if total is None else total + part
    return total / len(x)


def build_prototypes(image_raw, text_raw, cfg: PrototypeConfig, range_map=None) -> Prototypes:
    """Cluster caption-level pairs (rows of the raw embedding matrices) into ``cfg.budget`` prototypes.

    The matrices may be arrays or row sources with ``take`` (``Embeddings.image_rows`` of a stored
    corpus, memory-mapped): k-means fits on a sample above ``cfg.max_train_points`` kept pairs, and
    every pass over all rows goes range by range through ``range_map`` (an ``Engine.map_ranges``,
    ``engines.base``: this process by default, Ray tasks under the Ray engine, with byte-identical
    results), so the corpus need not fit in RAM. The driver holds no per-pair array: the ranges hand
    back histograms, per-prototype sums and member lists, and keep their cosines and labels in a
    scratch folder (``passes``); the results are those of the old in-memory path byte for byte
    (tests/test_streamed_passes.py)."""
    check_rules(cfg)
    n, d = image_raw.shape
    if cfg.budget < 1:
        raise ProtosynthError(f"{P.budget} must be at least 1, got {cfg.budget}")
    if cfg.budget > n:
        raise ProtosynthError(f"{P.budget} {cfg.budget} is larger than the corpus's {n} pairs")
    with tempfile.TemporaryDirectory(prefix="protosynth-passes-") as scratch:
        return _checked(_streamed(image_raw, text_raw, cfg, range_map or passes.map_local, scratch))


def _streamed(image_raw, text_raw, cfg: PrototypeConfig, range_map, scratch: str) -> Prototypes:
    """``build_prototypes``' passes: norms and cosines, the drop, k-means on the kept pairs, labels,
    the matching, and the sums and members."""
    n, d = image_raw.shape
    k, ranges = cfg.budget, passes.pass_ranges(text_raw, d)
    none = [()] * len(ranges)
    run = partial(range_map, image_raw=image_raw, text_raw=text_raw)
    mean_i, mean_t, high = TreeMean(n), TreeMean(n), np.zeros(1 << drop.HALF, np.int64)
    for parts_i, parts_t, (vals, counts) in run(passes.range_stats, ranges, none, (n, scratch)):
        mean_i.add(parts_i), mean_t.add(parts_t), np.add.at(high, vals, counts)
    n_drop = min(int(np.floor(cfg.drop_fraction * n)), n - cfg.budget)  # never below one pair per prototype
    lengths = [b - a for a, b in ranges]
    cuts, counts = drop.cuts(high, n_drop, lengths, lambda top: run(passes.range_bucket, ranges, none, (top, scratch)))
    kept = drop.Kept(ranges, cuts, counts, lambda j: passes.cosines(image_raw, text_raw, *ranges[j], scratch))
    stats: dict = {"pairs": n, "dropped": int(n_drop), "empty_matches": 0, "empty_clusters": 0}
    if not cfg.is_default():
        return build_in_memory(image_raw, text_raw, kept.pairs(np.arange(len(kept))), cfg, stats)
    spaces = {"matched": ("image", "text"), "joint": ("joint",), "image": ("image",), "text": ("text",)}[cfg.mode]
    fits = []
    for space in spaces:  # fitted on the driver, on a seeded sample of the kept pairs above max_train_points
        dim = 2 * d if space == "joint" else d
        view = _View(len(kept), dim, lambda i, sp=space: passes.features(image_raw, text_raw, kept.pairs(i), sp))
        fits.append((space, fit_kmeans(view, k, cfg.niter, cfg.seed, cfg.max_train_points, stats)[0]))
    per_range = [(cut,) for cut in cuts]
    match, fallback = None, None
    if cfg.mode == "matched":
        co = np.zeros(k * k, np.int64)
        for codes, got in run(passes.range_labels, ranges, per_range, (fits, k, scratch)):
            np.add.at(co, codes, got)
        match = match_clusters(co.reshape(k, k), stats)
        centres = [(fits[0][1][r], fits[1][1][c]) for r, c in stats.pop("_matching")]
        fallback = lambda c: centres[c]  # noqa: E731
    else:
        for _ in run(passes.range_labels, ranges, per_range, (fits, k, scratch)):
            pass
        fallback = partial(_one_space_fallback, fits[0][1], cfg.mode, d, kept, image_raw, text_raw)
    sums, members, img_members, txt_members = _sums_and_members(run, ranges, per_range, (fits, match, k, scratch), k, d)
    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    image_u, image_r, text_u, text_r = _means(sums, mean_i.mean(), mean_t.mean(), fallback)
    return Prototypes(image_u, text_u, image_r, text_r, members, stats, img_members, txt_members)


def _one_space_fallback(cents, mode: str, d: int, kept, image_raw, text_raw, c: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty one-modality cluster has no other half: that half is the mean of all kept pairs."""
    ce = cents[c]
    if mode == "joint":
        return ce[:d], ce[d:]
    other_space = "text" if mode == "image" else "image"
    other_view = _View(len(kept), d, lambda i: passes.features(image_raw, text_raw, kept.pairs(i), other_space))
    other = passes.unit(_mean(other_view)[None])[0]
    return (ce, other) if mode == "image" else (other, ce)


def _sums_and_members(run, ranges, per_range, shared: tuple, k: int, d: int):
    """The sums pass: the per-range sums added in range order (float64), the member lists (each in
    pair order) and, after an empty match, each half's own cluster."""
    total = [[np.zeros((k, d)), np.zeros(k), np.zeros(k, np.int64)] for _ in range(2)]
    pairs, protos, empties = [], [], {}
    for part, (got_pairs, got_protos), got_empties in run(passes.range_sums, ranges, per_range, shared):
        for half, got in zip(total, part):
            for j in range(3):
                half[j] += got[j]
        pairs.append(got_pairs)
        protos.append(got_protos)
        for i, *lists in got_empties:
            empties.setdefault(i, []).append(lists)
    members = group_members(np.concatenate(pairs), np.concatenate(protos), k)
    img_members, txt_members = list(members), list(members)
    for i, lists in empties.items():
        members[i], img_members[i], txt_members[i] = (np.concatenate(v) for v in zip(*lists))
    if shared[1] is None:  # one clustering: both halves average the members
        img_members = txt_members = members
    return total, members, img_members, txt_members


def check_rules(cfg: PrototypeConfig) -> None:
    """One clear error for an unknown mode or rule, or a PDS-code rule outside ``matched`` mode."""
    check_prototype_rules(cfg.mode, cfg.cluster_space, cfg.kmeans, cfg.prototype_norm, cfg.prototype_order)


def _checked(protos: Prototypes) -> Prototypes:
    for name in ("image", "text", "image_raw", "text_raw"):
        if not np.isfinite(getattr(protos, name)).all():
            raise AssertionError(f"non-finite {name} prototype")  # a bug, never user input
    return protos


def _means(sums, mean_norm_i: float, mean_norm_t: float, fallback) -> tuple[np.ndarray, ...]:
    """Unit and raw-rescaled prototypes from the summed unit rows and norms of each half's pairs; an
    empty cluster keeps ``fallback(c)`` (its centroid) with the corpus's mean norm."""
    out = []
    for half, ((vec, norm, count), mean_norm) in enumerate(zip(sums, (mean_norm_i, mean_norm_t))):
        has = count > 0
        unit = np.zeros(vec.shape, np.float32)
        scale = np.full(len(count), mean_norm, np.float32)
        unit[has] = (vec[has] / count[has, None]).astype(np.float32)
        scale[has] = (norm[has] / count[has]).astype(np.float32)
        for c in np.flatnonzero(~has):
            unit[c] = fallback(c)[half]
        unit = passes.unit(unit)
        out += [unit, unit * scale[:, None]]
    return tuple(out)


def nearest_member_pairs(protos: Prototypes, image_raw, text_raw) -> np.ndarray:
    """For each prototype, the member pair nearest it: the largest sum of image cosine to the image
    prototype and text cosine to the text prototype (over all pairs when a prototype has no member;
    ties: the first). ``method="select"`` keeps these pairs; ``init="nearest"`` starts from their images."""
    out = np.empty(len(protos.members), dtype=np.int64)
    for c, members in enumerate(protos.members):
        if len(members):
            out[c] = members[int(np.argmax(_member_scores(protos, c, members, image_raw, text_raw)))]
        else:
            out[c] = nearest_rows(protos.image[c : c + 1], image_raw)[0]
    return out


def _member_scores(protos: Prototypes, c: int, members: np.ndarray, image_raw, text_raw) -> np.ndarray:
    """Prototype ``c``'s score of each member pair: image cosine plus text cosine to the prototype."""
    return (
        passes.unit(image_raw.take(members, axis=0)) @ protos.image[c]
        + passes.unit(text_raw.take(members, axis=0)) @ protos.text[c]
    )


def central_members(protos: Prototypes, image_raw, text_raw, pair_image, k: int) -> list[list[int]]:
    """For each prototype, up to ``k`` member pairs showing distinct images, most central first: by
    ``nearest_member_pairs``' score (ties: the earlier member), each image kept at its best pair, so
    the first is the nearest member pair. Fewer when the prototype has fewer distinct images; a
    prototype without members keeps the nearest pair of all. Distinct images because a composite of
    one image's several captions would show that image alone."""
    out = []
    for c, members in enumerate(protos.members):
        if not len(members):
            out.append([int(nearest_rows(protos.image[c : c + 1], image_raw)[0])])
            continue
        order = np.argsort(-_member_scores(protos, c, members, image_raw, text_raw), kind="stable")
        chosen, seen = [], set()
        for m in (int(members[j]) for j in order):
            if int(pair_image[m]) not in seen:
                seen.add(int(pair_image[m]))
                chosen.append(m)
                if len(chosen) == k:
                    break
        out.append(chosen)
    return out


# rows of one search step of ``nearest_rows``: whole blocks of faiss's BLAS search (1,024 database rows)
SEARCH_BLOCKS = 32


def _search_steps(n: int, d: int):
    """``_chunks`` cut further into steps of ``SEARCH_BLOCKS`` x 1,024 rows from each chunk's start.
    faiss's exact search multiplies 1,024 database rows at a time from the start of what it is given,
    so the steps hand it the same blocks as the whole chunk did (the same products, the same ties)
    while the driver holds a step's rows, not the chunk's (256 MiB of them)."""
    step = SEARCH_BLOCKS * 1024
    for idx in _chunks(n, d):
        for s in range(0, len(idx), step):
            yield idx[s : s + step]


def nearest_rows(queries: np.ndarray, keys) -> np.ndarray:
    """Index of the most cosine-similar key for each query (exact, faiss inner product); ``keys`` may be
    a memory-mapped row source, searched step by step (``_search_steps``)."""
    q = np.ascontiguousarray(passes.unit(queries), np.float32)
    best, where = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    for idx in _search_steps(len(keys), keys.shape[1]):
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(np.ascontiguousarray(passes.unit(keys.take(idx, axis=0)), np.float32))
        sim, i = index.search(q, 1)
        better = sim[:, 0] > best  # a later step wins only when strictly closer
        best[better], where[better] = sim[better, 0], idx[i[better, 0]]
    return where
