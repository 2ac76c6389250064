"""k-means and PDS's matching, the pieces both clustering paths share: the default range-by-range
path (``prototypes.build_prototypes``) and the PDS authors' in-memory rules
(``prototypes_rules.build_in_memory``), which ``build_prototypes`` hands its work to."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment

from . import passes
from .configs import CLUSTER_SPACES, KMEANS, PROTOTYPE_NORMS, PROTOTYPE_ORDERS  # noqa: F401 (re-exported)
from .errors import P, ProtosynthError
from .passes import assign

log = logging.getLogger(__name__)

# the PDS code's MiniBatchKMeans settings (src/vl_distill_utils.py, kmeans_clustering)
MINIBATCH_SIZE = 10_000
MINIBATCH_INITS = 20
# below this budget the PDS code keeps the two k-means centres for a matched pair of clusters that
# share no pair; from it on it averages the empty set (NaN), which its caption search then rejects
PDS_CENTRES_MAX_BUDGET = 299


@dataclass
class PrototypeConfig:
    budget: int = 500
    mode: str = "matched"
    drop_fraction: float = 0.2  # PDS drops the 20% least-aligned pairs before clustering
    niter: int = 25
    seed: int = 0
    # above this many kept pairs, k-means fits on a seeded sample, then assigns all (see ``kmeans``)
    max_train_points: int = 200_000
    # protosynth's defaults first; the other value of each is the PDS authors' code (module docstring)
    cluster_space: str = "unit"
    kmeans: str = "faiss"
    prototype_norm: str = "members"
    prototype_order: str = "matching"

    def is_default(self) -> bool:
        return (self.cluster_space, self.kmeans, self.prototype_norm, self.prototype_order) == (
            CLUSTER_SPACES[0],
            KMEANS[0],
            PROTOTYPE_NORMS[0],
            PROTOTYPE_ORDERS[0],
        )


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


CHUNK_BYTES = 256 << 20  # float32 bytes read per step of a pass over all rows (memory-mapped or not)


def _chunks(n: int, d: int):
    """Row index ranges of at most CHUNK_BYTES each; below that, one range: the whole matrix."""
    step = max(1, CHUNK_BYTES // (4 * max(d, 1)))
    for s in range(0, n, step):
        yield np.arange(s, min(s + step, n))


def fit_kmeans(
    x, k: int, niter: int, seed: int, max_train_points: int = 200_000, stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """faiss k-means fitted on every point of ``x`` up to ``max_train_points``, else on a seeded
    sample of that size (see ``kmeans``); returns the centroids and, when every point was trained
    on, the training matrix (None after a sample)."""
    n, d = x.shape
    if k > n:
        raise ProtosynthError(f"{P.budget} {k} is larger than the {n} pairs left to cluster")
    sample = None
    if n > max(max_train_points, k):
        sample = np.sort(np.random.default_rng(seed).choice(n, max(max_train_points, k), replace=False))
        train = np.ascontiguousarray(passes.rows_f32(x, sample))
    elif isinstance(x, np.ndarray):
        train = np.ascontiguousarray(x, dtype=np.float32)
    else:
        train = np.ascontiguousarray(passes.rows_f32(x, np.arange(n)))
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
    if stats is not None:
        stats.update(kmeans_points=int(n), kmeans_trained_on=int(m), kmeans_gpu=gpu)
    return km.centroids.copy(), (train if sample is None else None)


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
    centroids, train = fit_kmeans(x, k, niter, seed, max_train_points, stats)
    if train is not None:
        return centroids, assign(centroids, train)
    labels = np.empty(n, np.int64)
    for idx in _chunks(n, d):
        labels[idx] = assign(centroids, passes.rows_f32(x, idx))
    return centroids, labels


@dataclass
class Match:
    """PDS's matching of image clusters to text clusters (``match_clusters``): prototype ``i`` pairs
    image cluster ``rows[i]`` with text cluster ``cols[i]``; ``empty[i]``: they share no pair."""

    rows: np.ndarray
    cols: np.ndarray
    proto_of_row: np.ndarray
    proto_of_col: np.ndarray
    empty: np.ndarray

    def targets(self, keep: np.ndarray, li: np.ndarray, lt: np.ndarray):
        """For kept pairs ``keep`` with image / text clusters ``li`` / ``lt``: the prototype each pair's
        image half and text half count towards (-1: none), the members (pairs shared by their two
        clusters, with their prototype) and, per empty match i, (i, the union of its two clusters'
        pairs, the image cluster's, the text cluster's)."""
        pi, pc = self.proto_of_row[li], self.proto_of_col[lt]
        shared = pi == pc
        img_target = np.where(shared | self.empty[pi], pi, -1)
        txt_target = np.where(shared | self.empty[pc], pc, -1)
        empties = []
        for i in np.flatnonzero(self.empty):  # the public PDS code emits NaN here
            r, c = self.rows[i], self.cols[i]
            empties.append((int(i), keep[(li == r) | (lt == c)], keep[li == r], keep[lt == c]))
        return img_target, txt_target, (keep[shared], pi[shared]), empties


def match_clusters(counts: np.ndarray, stats: dict) -> Match:
    """The Hungarian matching on the K x K co-membership counts (image cluster x text cluster);
    records ``empty_matches``, ``matched_pairs_shared`` and the matching in ``stats``."""
    k = len(counts)
    rows, cols = linear_sum_assignment(-counts)
    proto_of_row, proto_of_col = np.empty(k, np.int64), np.empty(k, np.int64)
    proto_of_row[rows], proto_of_col[cols] = np.arange(k), np.arange(k)
    empty = counts[rows, cols] == 0
    stats["empty_matches"] = int(empty.sum())
    stats["matched_pairs_shared"] = int(counts[rows, cols].sum())
    stats["_matching"] = list(zip(rows, cols))
    if stats["empty_matches"]:
        log.warning(
            "%d of %d matched cluster pairs shared no pair (prototype_stats.empty_matches)", int(empty.sum()), k
        )
    return Match(rows, cols, proto_of_row, proto_of_col, empty)


def group_members(pairs: np.ndarray, protos: np.ndarray, k: int) -> list[np.ndarray]:
    """Member lists: ``pairs`` (ascending) grouped by their prototype, each group in pair order."""
    order = np.argsort(protos, kind="stable")
    return np.split(pairs[order], np.searchsorted(protos[order], np.arange(1, k)))


def _match(keep: np.ndarray, li: np.ndarray, lt: np.ndarray, k: int, n: int, stats: dict):
    """PDS's matching on kept pairs held in memory (``prototypes_rules``): image clusters to text
    clusters by the Hungarian algorithm on their co-membership counts; each prototype averages the
    pairs its two clusters share, or after an empty match each half its own cluster (members: both
    clusters). Returns the member lists and, per pair, the prototype its image half and its text half
    count towards (-1: none)."""
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (li, lt), 1)
    match = match_clusters(counts, stats)
    img_target, txt_target = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    img_target[keep], txt_target[keep], (shared, protos), empties = match.targets(keep, li, lt)
    members = group_members(shared, protos, k)
    img_members, txt_members = list(members), list(members)
    for i, union, img, txt in empties:
        members[i], img_members[i], txt_members[i] = union, img, txt
    return members, img_members, txt_members, img_target, txt_target
