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

from .errors import ProtosynthError

MODES = ("matched", "joint", "image", "text")
log = logging.getLogger(__name__)


@dataclass
class PrototypeConfig:
    budget: int = 500
    mode: str = "matched"
    drop_fraction: float = 0.2  # PDS drops the 20% least-aligned pairs before clustering
    niter: int = 25
    seed: int = 0


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


def kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means on all points (``max_points_per_centroid`` set so faiss never subsamples);
    returns centroids and each point's cluster."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if k > n:
        raise ProtosynthError(f"--budget {k} is larger than the {n} pairs left to cluster")
    km = faiss.Kmeans(d, k, niter=niter, nredo=1, seed=seed, spherical=False, verbose=False,
                      max_points_per_centroid=-(-n // k) + 1, min_points_per_centroid=1)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64)


def _means(img: np.ndarray, txt: np.ndarray, raw_img_norm: np.ndarray, raw_txt_norm: np.ndarray,
           img_members: list[np.ndarray], txt_members: list[np.ndarray],
           fallback: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Unit and raw-rescaled means; each half averages its own member list."""
    k, d = len(img_members), img.shape[1]
    out = []
    for emb, norms, members, half in ((img, raw_img_norm, img_members, 0), (txt, raw_txt_norm, txt_members, 1)):
        unit, scale = np.zeros((k, d), np.float32), np.zeros(k, np.float32)
        for c, m in enumerate(members):
            if len(m):
                unit[c], scale[c] = emb[m].mean(0), norms[m].mean()
            else:  # an empty cluster: keep its centroid, with the corpus mean norm
                unit[c], scale[c] = fallback[c][half], norms.mean()
        unit = _unit(unit)
        out += [unit, unit * scale[:, None]]
    return tuple(out)


def build_prototypes(image_raw: np.ndarray, text_raw: np.ndarray, cfg: PrototypeConfig) -> Prototypes:
    """Cluster caption-level pairs (rows of the raw embedding matrices) into ``cfg.budget`` prototypes."""
    if cfg.mode not in MODES:
        raise ProtosynthError(f"unknown --mode {cfg.mode!r}: use one of {', '.join(MODES)}")
    n = len(image_raw)
    if cfg.budget < 1:
        raise ProtosynthError(f"--budget must be at least 1, got {cfg.budget}")
    if cfg.budget > n:
        raise ProtosynthError(f"--budget {cfg.budget} is larger than the corpus's {n} pairs")
    image_raw = np.asarray(image_raw, np.float32)
    text_raw = np.asarray(text_raw, np.float32)
    img, txt = _unit(image_raw), _unit(text_raw)
    n_drop = int(np.floor(cfg.drop_fraction * n))
    n_drop = min(n_drop, n - cfg.budget)  # never drop below one pair per prototype
    sims = (img * txt).sum(1)
    keep = np.sort(np.argsort(sims, kind="stable")[n_drop:])
    ki, kt = img[keep], txt[keep]
    norms_i, norms_t = np.linalg.norm(image_raw, axis=1), np.linalg.norm(text_raw, axis=1)
    k = cfg.budget
    stats: dict = {"pairs": n, "dropped": int(n_drop), "empty_matches": 0, "empty_clusters": 0}
    if cfg.mode == "matched":
        ci, li = kmeans(ki, k, cfg.niter, cfg.seed)
        ct, lt = kmeans(kt, k, cfg.niter, cfg.seed)
        counts = np.zeros((k, k), dtype=np.int64)
        np.add.at(counts, (li, lt), 1)
        rows, cols = linear_sum_assignment(-counts)
        members, img_members, txt_members, fallback = [], [], [], []
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
            fallback.append((ci[r], ct[c]))
        stats["matched_pairs_shared"] = int(counts[rows, cols].sum())
        if stats["empty_matches"]:
            log.warning("%d of %d matched cluster pairs shared no pair; used the clusters' own means",
                        stats["empty_matches"], k)
    else:
        x = {"joint": np.concatenate([ki, kt], 1), "image": ki, "text": kt}[cfg.mode]
        cents, labels = kmeans(x, k, cfg.niter, cfg.seed)
        members = [keep[labels == c] for c in range(k)]
        img_members = txt_members = members
        d = img.shape[1]
        # an empty one-modality cluster has no other half: that half is the mean of all kept pairs
        mean_i, mean_t = _unit(ki.mean(0, keepdims=True))[0], _unit(kt.mean(0, keepdims=True))[0]
        fallback = [
            {"joint": (ce[:d], ce[d:]), "image": (ce, mean_t), "text": (mean_i, ce)}[cfg.mode] for ce in cents
        ]
    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    image_u, image_r, text_u, text_r = _means(img, txt, norms_i, norms_t, img_members, txt_members, fallback)
    protos = Prototypes(image_u, text_u, image_r, text_r, members, stats, img_members, txt_members)
    for name in ("image", "text", "image_raw", "text_raw"):
        if not np.isfinite(getattr(protos, name)).all():
            raise AssertionError(f"non-finite {name} prototype")  # a bug, never user input
    return protos


def nearest_member_pairs(protos: Prototypes, image_raw: np.ndarray) -> np.ndarray:
    """For each prototype, the member pair whose image embedding is nearest its image prototype
    (over all pairs when a prototype has no member): the start image of ``--init nearest``."""
    out = np.empty(len(protos.members), dtype=np.int64)
    for c, members in enumerate(protos.members):
        pool = members if len(members) else np.arange(len(image_raw))
        out[c] = pool[nearest_rows(protos.image[c : c + 1], image_raw[pool])[0]]
    return out


def nearest_rows(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of the most cosine-similar key for each query (exact, faiss inner product)."""
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(_unit(keys), np.float32))
    _, idx = index.search(np.ascontiguousarray(_unit(queries), np.float32), 1)
    return idx[:, 0].astype(np.int64)
