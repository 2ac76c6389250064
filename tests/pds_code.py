"""An independent transcription of the PDS authors' distill stage, for the tests of ``pds-published``.

Written from junhyeok9712/PDS (``pds_distill.py`` and ``src/vl_distill_utils.py``: ``compute_self_sim``,
``remove_low_sim_pairs``, ``kmeans_clustering``, ``match_and_sort_centers``, ``nearest_neighbor``) in
plain numpy/sklearn, sharing no code with protosynth: drop the 20 % least-aligned pairs (raw cosine),
MiniBatchKMeans on the raw kept rows (batch 10,000, 20 inits), Hungarian matching on the
co-membership table, each prototype the plain mean of the shared raw rows (the two centres for an
empty match below 300 pairs, NaN from 300 on), sorted by prototype image-text cosine (highest first),
and the caption nearest each text prototype among all training captions.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import MiniBatchKMeans


def authors_steps(img, txt, k, seed=42, ratio=0.2, labels=None):
    """The PDS code's distill stage on raw embeddings; ``labels`` (image, text, centres) replaces its
    MiniBatchKMeans, to check the later steps on a given clustering. Returns the kept rows' mask, the
    ordered image and text prototypes and each one's caption (a row index of all pairs)."""
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True) * (txt / np.linalg.norm(txt, axis=1, keepdims=True))).sum(1)
    keep = np.ones(len(img), bool)
    keep[np.argsort(cos)[: int(len(cos) * ratio)]] = False
    ki, kt = img[keep], txt[keep]
    if labels is None:
        fit_i = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=10000, n_init=20).fit(ki)
        fit_t = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=10000, n_init=20).fit(kt)
        li, lt, ci, ct = fit_i.labels_, fit_t.labels_, fit_i.cluster_centers_, fit_t.cluster_centers_
    else:
        li, lt, ci, ct = labels
    table = np.zeros((k, k))
    for a, b in zip(li, lt):
        table[a, b] += 1
    rows, cols = linear_sum_assignment(-table)
    pi, pt = [], []
    for a, b in zip(rows, cols):
        both = (li == a) & (lt == b)
        if both.sum() == 0 and k < 300:
            pi.append(ci[a])
            pt.append(ct[b])
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                pi.append(ki[both].mean(0) if both.any() else np.full(img.shape[1], np.nan))
                pt.append(kt[both].mean(0) if both.any() else np.full(img.shape[1], np.nan))
    pi, pt = np.array(pi), np.array(pt)
    align = (pi / np.linalg.norm(pi, axis=1, keepdims=True) * (pt / np.linalg.norm(pt, axis=1, keepdims=True))).sum(1)
    order = np.argsort(align)[::-1]
    pi, pt = pi[order], pt[order]
    qt = pt / np.linalg.norm(pt, axis=1, keepdims=True)
    caption = np.argmax(qt @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T, axis=1)
    return keep, pi, pt, caption
