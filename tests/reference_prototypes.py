"""The default clustering path as it was before its passes streamed (protosynth at 05193b3): every
per-pair quantity held whole, in memory. Kept as the oracle the streamed ``build_prototypes`` must
equal byte for byte (tests/test_streamed_passes.py); it shares only faiss k-means (``fit_kmeans``),
the matching's Hungarian step and the final means with the library, never the passes it checks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from protosynth.clustering import PrototypeConfig, Prototypes, fit_kmeans
from protosynth.prototypes import _means


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def features(image: np.ndarray, text: np.ndarray, rows: np.ndarray, space: str) -> np.ndarray:
    if space == "image":
        return unit(image[rows])
    if space == "text":
        return unit(text[rows])
    return np.concatenate([unit(image[rows]), unit(text[rows])], 1)


def assign(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    import faiss  # noqa: PLC0415

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    return index.search(np.ascontiguousarray(x, np.float32), 1)[1][:, 0].astype(np.int64)


class _View:
    def __init__(self, n: int, d: int, fn):
        self.shape, self.fn = (n, d), fn

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx, axis: int = 0) -> np.ndarray:
        return self.fn(np.asarray(idx, np.int64))


def _group_sums(values: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k,) + values.shape[1:], np.float64)
    sel = np.flatnonzero(target >= 0)
    if not len(sel):
        return out
    order = sel[np.argsort(target[sel], kind="stable")]
    groups, starts = np.unique(target[order], return_index=True)
    out[groups] = np.add.reduceat(values[order].astype(np.float64), starts, axis=0)
    return out


def _match(keep, li, lt, k, n, stats):
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (li, lt), 1)
    rows, cols = linear_sum_assignment(-counts)
    proto_of_row, proto_of_col = np.empty(k, np.int64), np.empty(k, np.int64)
    proto_of_row[rows], proto_of_col[cols] = np.arange(k), np.arange(k)
    pi, pc = proto_of_row[li], proto_of_col[lt]
    empty = counts[rows, cols] == 0
    shared = pi == pc
    img_target, txt_target = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    img_target[keep] = np.where(shared | empty[pi], pi, -1)
    txt_target[keep] = np.where(shared | empty[pc], pc, -1)
    order = np.argsort(pi[shared], kind="stable")
    members = np.split(keep[shared][order], np.searchsorted(pi[shared][order], np.arange(1, k)))
    img_members, txt_members = list(members), list(members)
    for i in np.flatnonzero(empty):
        r, c = rows[i], cols[i]
        members[i] = keep[(li == r) | (lt == c)]
        img_members[i], txt_members[i] = keep[li == r], keep[lt == c]
    stats["empty_matches"] = int(empty.sum())
    stats["matched_pairs_shared"] = int(counts[rows, cols].sum())
    stats["_matching"] = list(zip(rows, cols))
    return members, img_members, txt_members, img_target, txt_target


def reference_prototypes(image: np.ndarray, text: np.ndarray, cfg: PrototypeConfig, ranges) -> Prototypes:
    """The old default path on arrays; ``ranges`` are the (a, b) pair ranges its sums were added over."""
    n, d = image.shape
    ri, rt = image.astype(np.float32), text.astype(np.float32)
    norms_i, norms_t = np.linalg.norm(ri, axis=1), np.linalg.norm(rt, axis=1)
    sims = np.concatenate([(unit(ri[a:b]) * unit(rt[a:b])).sum(1) for a, b in ranges])
    n_drop = min(int(np.floor(cfg.drop_fraction * n)), n - cfg.budget)
    keep = np.sort(np.argsort(sims, kind="stable")[n_drop:])
    k = cfg.budget
    stats: dict = {"pairs": n, "dropped": int(n_drop), "empty_matches": 0, "empty_clusters": 0}
    spaces = {"matched": ("image", "text"), "joint": ("joint",), "image": ("image",), "text": ("text",)}[cfg.mode]
    fits = []
    for space in spaces:
        dim = 2 * d if space == "joint" else d
        view = _View(len(keep), dim, lambda i, sp=space: features(ri, rt, keep[i], sp))
        fits.append((space, fit_kmeans(view, k, cfg.niter, cfg.seed, cfg.max_train_points, stats)[0]))
    labels = []
    for space, cents in fits:
        parts = [assign(cents, features(ri, rt, keep[(keep >= a) & (keep < b)], space)) for a, b in ranges]
        labels.append(np.concatenate(parts))
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

        def fallback(c):
            ce = cents[c]
            if cfg.mode == "joint":
                return ce[:d], ce[d:]
            other = unit(features(ri, rt, keep, "text" if cfg.mode == "image" else "image").sum(0)[None] / len(keep))
            return (ce, other[0]) if cfg.mode == "image" else (other[0], ce)

    stats["empty_clusters"] = int(sum(len(m) == 0 for m in members))
    total = [[np.zeros((k, d)), np.zeros(k), np.zeros(k, np.int64)] for _ in range(2)]
    for a, b in ranges:
        for half, raw, target in ((0, ri, img_target), (1, rt, txt_target)):
            rows, t = raw[a:b], target[a:b]
            got = (_group_sums(unit(rows), t, k), _group_sums(np.linalg.norm(rows, axis=1), t, k))
            total[half][0] += got[0]
            total[half][1] += got[1]
            total[half][2] += np.bincount(t[t >= 0], minlength=k)
    image_u, image_r, text_u, text_r = _means(total, norms_i.mean(), norms_t.mean(), fallback)
    return Prototypes(image_u, text_u, image_r, text_r, members, stats, img_members, txt_members)
