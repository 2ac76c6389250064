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
from functools import partial

import faiss
import numpy as np

from . import passes
from .clustering import (  # PrototypeConfig, Prototypes and kmeans: also this stage's public names
    PrototypeConfig,
    Prototypes,
    _chunks,
    _match,
    fit_kmeans,
    kmeans,  # noqa: F401
)
from .configs import MODES, check_prototype_rules  # noqa: F401 (MODES re-exported: its public home)
from .errors import P, ProtosynthError
from .prototypes_rules import build_in_memory

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
    results), so the corpus need not fit in RAM."""
    check_rules(cfg)
    n, d = image_raw.shape
    if cfg.budget < 1:
        raise ProtosynthError(f"{P.budget} must be at least 1, got {cfg.budget}")
    if cfg.budget > n:
        raise ProtosynthError(f"{P.budget} {cfg.budget} is larger than the corpus's {n} pairs")
    ranges = passes.pass_ranges(text_raw, d)
    run = partial(range_map or passes.map_local, image_raw=image_raw, text_raw=text_raw)
    norms_i, norms_t, sims = (np.concatenate(v) for v in zip(*run(passes.range_stats, ranges, [()] * len(ranges), ())))
    n_drop = int(np.floor(cfg.drop_fraction * n))
    n_drop = min(n_drop, n - cfg.budget)  # never drop below one pair per prototype
    keep = np.sort(np.argsort(sims, kind="stable")[n_drop:])
    k = cfg.budget
    stats: dict = {"pairs": n, "dropped": int(n_drop), "empty_matches": 0, "empty_clusters": 0}
    if not cfg.is_default():
        return _checked(build_in_memory(image_raw, text_raw, keep, cfg, stats))
    spaces = {"matched": ("image", "text"), "joint": ("joint",), "image": ("image",), "text": ("text",)}[cfg.mode]
    fits = []
    for space in spaces:  # fitted on the driver, on a seeded sample of the kept pairs above max_train_points
        dim = 2 * d if space == "joint" else d
        view = _View(len(keep), dim, lambda i, sp=space: passes.features(image_raw, text_raw, keep[i], sp))
        fits.append((space, fit_kmeans(view, k, cfg.niter, cfg.seed, cfg.max_train_points, stats)[0]))
    bounds = np.searchsorted(keep, [a for a, _ in ranges] + [ranges[-1][1]])
    kept = [(keep[bounds[j] : bounds[j + 1]],) for j in range(len(ranges))]
    labels = [np.concatenate(v) for v in zip(*run(passes.range_labels, ranges, kept, (fits,)))]
    if cfg.mode == "matched":
        members, img_members, txt_members, img_target, txt_target = _match(keep, labels[0], labels[1], k, n, stats)
        centres = [(fits[0][1][r], fits[1][1][c]) for r, c in stats.pop("_matching")]
        fallback = lambda c: centres[c]  # noqa: E731
    else:
        (li,) = labels
        order = np.argsort(li, kind="stable")
        members = np.split(keep[order], np.searchsorted(li[order], np.arange(1, k)))
        img_members = txt_members = members
        img_target = np.full(n, -1, np.int64)
        img_target[keep] = li
        txt_target = img_target
        cents = fits[0][1]

        def fallback(c: int) -> tuple[np.ndarray, np.ndarray]:
            """An empty one-modality cluster has no other half: that half is the mean of all kept pairs."""
            ce = cents[c]
            if cfg.mode == "joint":
                return ce[:d], ce[d:]
            other_space = "text" if cfg.mode == "image" else "image"
            other_view = _View(len(keep), d, lambda i: passes.features(image_raw, text_raw, keep[i], other_space))
            other = passes.unit(_mean(other_view)[None])[0]
            return (ce, other) if cfg.mode == "image" else (other, ce)

    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    per_range = [(img_target[a:b], txt_target[a:b]) for a, b in ranges]
    sums = _combine(run(passes.range_sums, ranges, per_range, (k,)), k, d)
    image_u, image_r, text_u, text_r = _means(sums, norms_i.mean(), norms_t.mean(), fallback)
    return _checked(Prototypes(image_u, text_u, image_r, text_r, members, stats, img_members, txt_members))


def check_rules(cfg: PrototypeConfig) -> None:
    """One clear error for an unknown mode or rule, or a PDS-code rule outside ``matched`` mode."""
    check_prototype_rules(cfg.mode, cfg.cluster_space, cfg.kmeans, cfg.prototype_norm, cfg.prototype_order)


def _checked(protos: Prototypes) -> Prototypes:
    for name in ("image", "text", "image_raw", "text_raw"):
        if not np.isfinite(getattr(protos, name)).all():
            raise AssertionError(f"non-finite {name} prototype")  # a bug, never user input
    return protos


def _combine(parts, k: int, d: int) -> list[list[np.ndarray]]:
    """The per-range sums of ``passes.range_sums`` added in range order (float64)."""
    total = [[np.zeros((k, d)), np.zeros(k), np.zeros(k, np.int64)] for _ in range(2)]
    for part in parts:
        for half, got in zip(total, part):
            for j in range(3):
                half[j] += got[j]
    return total


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


def nearest_rows(queries: np.ndarray, keys) -> np.ndarray:
    """Index of the most cosine-similar key for each query (exact, faiss inner product); ``keys`` may be
    a memory-mapped row source, searched chunk by chunk."""
    q = np.ascontiguousarray(passes.unit(queries), np.float32)
    best, where = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    for idx in _chunks(len(keys), keys.shape[1]):
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(np.ascontiguousarray(passes.unit(keys.take(idx, axis=0)), np.float32))
        sim, i = index.search(q, 1)
        better = sim[:, 0] > best  # a later chunk wins only when strictly closer
        best[better], where[better] = sim[better, 0], idx[i[better, 0]]
    return where
