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

All clustering is on L2-normalised embeddings. Prototypes are returned normalised and rescaled to
the mean raw norm of their members, since unCLIP decoders expect raw CLIP embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import P, ProtosynthError

MODES = ("matched", "joint", "image", "text")
log = logging.getLogger(__name__)


@dataclass
class PrototypeConfig:
    budget: int = 500
    mode: str = "matched"
    drop_fraction: float = 0.2  # PDS drops the 20% least-aligned pairs before clustering
    niter: int = 25
    seed: int = 0
    # above this many kept pairs, k-means fits on a seeded sample, then assigns all (see ``kmeans``)
    max_train_points: int = 200_000


@dataclass
class Prototypes:
    image: np.ndarray  # (K, D) unit norm
    text: np.ndarray  # (K, D) unit norm
    image_raw: np.ndarray  # (K, D) rescaled to the members' mean raw norm
    text_raw: np.ndarray
    members: list[np.ndarray]  # pair indices summarised by each prototype
    stats: dict = field(default_factory=dict)
    # the pairs each half was averaged over: equal to ``members`` except after an empty match
    image_members: list[np.ndarray] = field(default_factory=list)
    text_members: list[np.ndarray] = field(default_factory=list)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


CHUNK_BYTES = 256 << 20  # float32 bytes read per step of a pass over all rows (memory-mapped or not)


def _chunks(n: int, d: int):
    """Row index ranges of at most CHUNK_BYTES each; below that, one range: the whole matrix."""
    step = max(1, CHUNK_BYTES // (4 * max(d, 1)))
    for s in range(0, n, step):
        yield np.arange(s, min(s + step, n))


def _rows(x, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of an array or of a row source with ``take`` (a memory-mapped store's Rows), float32."""
    return np.asarray(x.take(idx, axis=0), np.float32)


class _View:
    """Rows computed on demand from other rows (the normalised kept pairs), never held whole."""

    def __init__(self, n: int, d: int, fn):
        self.shape, self.fn = (n, d), fn

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx, axis: int = 0) -> np.ndarray:
        return self.fn(np.asarray(idx, np.int64))


def kmeans(
    x, k: int, niter: int, seed: int, max_train_points: int = 200_000, stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means (on a GPU index when faiss sees a GPU); returns centroids and each point's cluster.

    Up to ``max_train_points`` points, every point is trained on (faiss never subsamples), as PDS
    does. Above, k-means is fitted on a seeded sample of that size and every point is then assigned
    to its nearest centroid in chunks, so ``x`` may be a memory-mapped row source larger than RAM.
    200,000: every corpus up to Flickr30k's size (145k training pairs) keeps using all points, so its
    prototypes do not change; at K = 500 it is 400 points per centroid, above faiss's own default cap
    of 256 (centroid noise shrinks as 1/sqrt(points), more points mostly cost time); and the sample
    of 768-d float32 rows is 600 MB. ``stats`` records ``kmeans_points`` and ``kmeans_trained_on``."""
    n, d = x.shape
    if k > n:
        raise ProtosynthError(f"{P.budget} {k} is larger than the {n} pairs left to cluster")
    sample = None
    if n > max(max_train_points, k):
        sample = np.sort(np.random.default_rng(seed).choice(n, max(max_train_points, k), replace=False))
        train = np.ascontiguousarray(_rows(x, sample))
    elif isinstance(x, np.ndarray):
        train = np.ascontiguousarray(x, dtype=np.float32)
    else:
        train = np.ascontiguousarray(_rows(x, np.arange(n)))
    m = len(train)
    gpu = faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=1,
        seed=seed,
        spherical=False,
        verbose=False,
        gpu=gpu,
        max_points_per_centroid=-(-m // k) + 1,
        min_points_per_centroid=1,
    )
    km.train(train)
    if sample is None:
        labels = km.index.search(train, 1)[1][:, 0].astype(np.int64)
    else:
        del train
        labels = np.empty(n, np.int64)
        for idx in _chunks(n, d):
            labels[idx] = km.index.search(np.ascontiguousarray(_rows(x, idx)), 1)[1][:, 0]
    if stats is not None:
        stats.update(kmeans_points=int(n), kmeans_trained_on=int(m), kmeans_gpu=gpu)
    return km.centroids.copy(), labels


def _means(
    image_raw,
    text_raw,
    raw_img_norm: np.ndarray,
    raw_txt_norm: np.ndarray,
    img_members: list[np.ndarray],
    txt_members: list[np.ndarray],
    fallback,
) -> tuple[np.ndarray, ...]:
    """Unit and raw-rescaled means; each half averages its own member list (rows read per cluster)."""
    k, d = len(img_members), image_raw.shape[1]
    out = []
    for raw, norms, members, half in (
        (image_raw, raw_img_norm, img_members, 0),
        (text_raw, raw_txt_norm, txt_members, 1),
    ):
        unit, scale = np.zeros((k, d), np.float32), np.zeros(k, np.float32)
        for c, m in enumerate(members):
            if len(m):
                unit[c], scale[c] = _unit(_rows(raw, m)).mean(0), norms[m].mean()
            else:  # an empty cluster: keep its centroid, with the corpus mean norm
                unit[c], scale[c] = fallback(c)[half], norms.mean()
        unit = _unit(unit)
        out += [unit, unit * scale[:, None]]
    return tuple(out)


def _mean(x) -> np.ndarray:
    """Column mean of a row source, summed chunk by chunk (one chunk: exactly ``x.mean(0)``)."""
    total = None
    for idx in _chunks(len(x), x.shape[1]):
        part = x.take(idx).sum(0)
        total = part if total is None else total + part
    return total / len(x)


def build_prototypes(image_raw, text_raw, cfg: PrototypeConfig) -> Prototypes:
    """Cluster caption-level pairs (rows of the raw embedding matrices) into ``cfg.budget`` prototypes.

    The matrices may be arrays or row sources with ``take`` (``Embeddings.image_rows`` of a stored
    corpus, memory-mapped): every pass over all rows goes in chunks, and k-means fits on a sample
    above ``cfg.max_train_points`` kept pairs, so the corpus need not fit in RAM."""
    if cfg.mode not in MODES:
        raise ProtosynthError(f"unknown {P.mode} {cfg.mode!r}: use one of {', '.join(MODES)}")
    n, d = image_raw.shape
    if cfg.budget < 1:
        raise ProtosynthError(f"{P.budget} must be at least 1, got {cfg.budget}")
    if cfg.budget > n:
        raise ProtosynthError(f"{P.budget} {cfg.budget} is larger than the corpus's {n} pairs")
    norms_i, norms_t, sims = (np.empty(n, np.float32) for _ in range(3))
    for idx in _chunks(n, 2 * d):
        ri, rt = _rows(image_raw, idx), _rows(text_raw, idx)
        norms_i[idx], norms_t[idx] = np.linalg.norm(ri, axis=1), np.linalg.norm(rt, axis=1)
        sims[idx] = (_unit(ri) * _unit(rt)).sum(1)
    n_drop = int(np.floor(cfg.drop_fraction * n))
    n_drop = min(n_drop, n - cfg.budget)  # never drop below one pair per prototype
    keep = np.sort(np.argsort(sims, kind="stable")[n_drop:])
    ki = _View(len(keep), d, lambda i: _unit(_rows(image_raw, keep[i])))
    kt = _View(len(keep), text_raw.shape[1], lambda i: _unit(_rows(text_raw, keep[i])))
    k = cfg.budget
    stats: dict = {"pairs": n, "dropped": int(n_drop), "empty_matches": 0, "empty_clusters": 0}
    fit = dict(max_train_points=cfg.max_train_points, stats=stats)
    if cfg.mode == "matched":
        ci, li = kmeans(ki, k, cfg.niter, cfg.seed, **fit)
        ct, lt = kmeans(kt, k, cfg.niter, cfg.seed, **fit)
        counts = np.zeros((k, k), dtype=np.int64)
        np.add.at(counts, (li, lt), 1)
        rows, cols = linear_sum_assignment(-counts)
        members, img_members, txt_members, centres = [], [], [], []
        for r, c in zip(rows, cols):
            shared = keep[(li == r) & (lt == c)]
            if len(shared):
                members.append(shared)
                img_members.append(shared)
                txt_members.append(shared)
            else:  # each half falls back to its own cluster's mean; members are both clusters
                stats["empty_matches"] += 1
                members.append(keep[(li == r) | (lt == c)])
                img_members.append(keep[li == r])
                txt_members.append(keep[lt == c])
            centres.append((ci[r], ct[c]))
        stats["matched_pairs_shared"] = int(counts[rows, cols].sum())
        if stats["empty_matches"]:
            log.warning(
                "%d of %d matched cluster pairs shared no pair; used the clusters' own means", stats["empty_matches"], k
            )
        fallback = lambda c: centres[c]  # noqa: E731
    else:
        x = {
            "joint": lambda: _View(len(keep), 2 * d, lambda i: np.concatenate([ki.take(i), kt.take(i)], 1)),
            "image": lambda: ki,
            "text": lambda: kt,
        }[cfg.mode]()
        cents, labels = kmeans(x, k, cfg.niter, cfg.seed, **fit)
        members = [keep[labels == c] for c in range(k)]
        img_members = txt_members = members

        def fallback(c: int) -> tuple[np.ndarray, np.ndarray]:
            """An empty one-modality cluster has no other half: that half is the mean of all kept pairs."""
            ce = cents[c]
            if cfg.mode == "joint":
                return ce[:d], ce[d:]
            other = _unit(_mean(kt if cfg.mode == "image" else ki)[None])[0]
            return (ce, other) if cfg.mode == "image" else (other, ce)

    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    image_u, image_r, text_u, text_r = _means(image_raw, text_raw, norms_i, norms_t, img_members, txt_members, fallback)
    protos = Prototypes(image_u, text_u, image_r, text_r, members, stats, img_members, txt_members)
    for name in ("image", "text", "image_raw", "text_raw"):
        if not np.isfinite(getattr(protos, name)).all():
            raise AssertionError(f"non-finite {name} prototype")  # a bug, never user input
    return protos


def nearest_member_pairs(protos: Prototypes, image_raw, text_raw) -> np.ndarray:
    """For each prototype, the member pair nearest it: the largest sum of image cosine to the image
    prototype and text cosine to the text prototype (over all pairs when a prototype has no member;
    ties: the first). ``method="select"`` keeps these pairs; ``init="nearest"`` starts from their images."""
    out = np.empty(len(protos.members), dtype=np.int64)
    for c, members in enumerate(protos.members):
        if len(members):
            score = (
                _unit(image_raw.take(members, axis=0)) @ protos.image[c]
                + _unit(text_raw.take(members, axis=0)) @ protos.text[c]
            )
            out[c] = members[int(np.argmax(score))]
        else:
            out[c] = nearest_rows(protos.image[c : c + 1], image_raw)[0]
    return out


def nearest_rows(queries: np.ndarray, keys) -> np.ndarray:
    """Index of the most cosine-similar key for each query (exact, faiss inner product); ``keys`` may be
    a memory-mapped row source, searched chunk by chunk."""
    q = np.ascontiguousarray(_unit(queries), np.float32)
    best, where = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    for idx in _chunks(len(keys), keys.shape[1]):
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(np.ascontiguousarray(_unit(keys.take(idx, axis=0)), np.float32))
        sim, i = index.search(q, 1)
        better = sim[:, 0] > best  # a later chunk wins only when strictly closer
        best[better], where[better] = sim[better, 0], idx[i[better, 0]]
    return where
