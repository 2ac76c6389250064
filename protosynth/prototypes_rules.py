"""Matched prototypes under the PDS authors' rules (``PrototypeConfig``'s non-default settings).

The authors' code (junhyeok9712/PDS, ``src/vl_distill_utils.py``) holds every kept pair in memory,
clusters the raw CLIP rows with sklearn's MiniBatchKMeans, matches the two clusterings as
protosynth does (``clustering._match``), takes the plain mean of the raw shared members, keeps the
two k-means centres for a matched pair sharing none, and orders the prototypes by their image-text
cosine, highest first. Each of those four steps is a setting here, so any mix with protosynth's own
rules (unit rows, faiss, the members' mean norm, matching order) can be measured; this path reads the
kept rows whole, which the authors' code does too.
"""

from __future__ import annotations

import logging

import numpy as np

from . import passes
from .clustering import (
    MINIBATCH_INITS,
    MINIBATCH_SIZE,
    PDS_CENTRES_MAX_BUDGET,
    PrototypeConfig,
    Prototypes,
    _match,
    kmeans,
)

log = logging.getLogger(__name__)


def cluster(x: np.ndarray, cfg: PrototypeConfig, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and each row's cluster, by ``cfg.kmeans``: faiss (``prototypes.kmeans``) or sklearn
    MiniBatchKMeans with the PDS code's settings (its labels: each row's nearest final centre)."""
    if cfg.kmeans == "faiss":
        return kmeans(x, cfg.budget, cfg.niter, cfg.seed, cfg.max_train_points, stats)
    from sklearn.cluster import MiniBatchKMeans  # noqa: PLC0415 -- only this rule needs sklearn

    km = MiniBatchKMeans(
        n_clusters=cfg.budget, random_state=cfg.seed, batch_size=MINIBATCH_SIZE, n_init=MINIBATCH_INITS
    ).fit(x)
    stats.update(kmeans_points=len(x), kmeans_trained_on=len(x), kmeans_gpu=False)
    return np.asarray(km.cluster_centers_, np.float32), np.asarray(km.labels_, np.int64)


def _half(rows, centres, keep, members, shared, matched_cluster, cfg: PrototypeConfig) -> np.ndarray:
    """One modality's (K, D) raw prototypes. ``members``: the pairs this half averages (its own cluster
    after an empty match); ``shared``: whether the matched clusters share any pair."""
    out = np.empty((len(members), rows.shape[1]), np.float32)
    all_mean_norm = float(np.linalg.norm(rows, axis=1).mean())
    for c, group in enumerate(members):
        centre = centres[matched_cluster[c]]
        if cfg.prototype_norm == "mean":  # the PDS code: raw mean of the shared members, else the centre
            out[c] = rows[np.searchsorted(keep, group)].mean(0) if shared[c] else centre
        elif len(group):  # protosynth: the unit rows' mean direction at the members' mean raw norm
            sel = rows[np.searchsorted(keep, group)]
            norms = np.linalg.norm(sel, axis=1)
            out[c] = passes.unit(passes.unit(sel).mean(0, keepdims=True))[0] * norms.mean()
        else:
            out[c] = passes.unit(centre[None])[0] * all_mean_norm
    return out


def build_in_memory(image_raw, text_raw, keep: np.ndarray, cfg: PrototypeConfig, stats: dict) -> Prototypes:
    """Matched prototypes of the kept pairs ``keep`` (sorted pair indices) under ``cfg``'s rules."""
    n, k = len(image_raw), cfg.budget
    rows_i, rows_t = passes.rows_f32(image_raw, keep), passes.rows_f32(text_raw, keep)
    space = (lambda r: r) if cfg.cluster_space == "raw" else passes.unit
    cent_i, lab_i = cluster(space(rows_i), cfg, stats)
    cent_t, lab_t = cluster(space(rows_t), cfg, stats)
    members, img_members, txt_members, _, _ = _match(keep, lab_i, lab_t, k, n, stats)
    rows, cols = (np.array(v, np.int64) for v in zip(*stats.pop("_matching")))
    shared = _shares(lab_i, lab_t, rows, cols)
    image = _half(rows_i, cent_i, keep, img_members, shared, rows, cfg)
    text = _half(rows_t, cent_t, keep, txt_members, shared, cols, cfg)
    if cfg.prototype_norm == "mean" and k > PDS_CENTRES_MAX_BUDGET and stats["empty_matches"]:
        # the PDS code would emit NaN here and stop at its caption search; the centres are its own rule below 300
        stats["empty_matches_past_pds_code"] = stats["empty_matches"]
        log.warning("budget %d: the PDS code has no prototype for an empty match; kept the k-means centres", k)
    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    order = np.arange(k)
    if cfg.prototype_order == "alignment":  # as the PDS code sorts: numpy's default argsort, reversed
        order = np.argsort((passes.unit(image) * passes.unit(text)).sum(1))[::-1]
    pick = lambda groups: [groups[i] for i in order]  # noqa: E731
    image, text = image[order], text[order]
    return Prototypes(
        passes.unit(image),
        passes.unit(text),
        image,
        text,
        pick(members),
        stats,
        pick(img_members),
        pick(txt_members),
    )


def _shares(lab_i: np.ndarray, lab_t: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether matched image cluster ``rows[c]`` and text cluster ``cols[c]`` share a pair."""
    counts = np.zeros((len(rows), len(cols)), np.int64)
    np.add.at(counts, (lab_i, lab_t), 1)
    return counts[rows, cols] > 0
