"""Clustering's passes streamed shard by shard (issue 32): the prototypes, members and stats equal,
byte for byte, what the old path gave holding every per-pair quantity in memory
(``tests/reference_prototypes.py``), across modes, shard layouts, k-means samples, ties at the
drop's threshold and empty matches."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from protosynth import passes
from protosynth.drop import cuts, kept_rows, sort_keys
from protosynth.prototypes import MODES, PrototypeConfig, build_prototypes
from protosynth.store import Rows
from protosynth.util.pairwise import TreeMean, leaf_parts, leaves
from tests.reference_prototypes import reference_prototypes


def pairs(n: int = 600, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d)) * 3
    img = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, d))
    txt = img + rng.normal(size=(n, d))
    return (img * rng.uniform(3, 9, (n, 1))).astype(np.float32), (txt * rng.uniform(1, 4, (n, 1))).astype(np.float32)


def stored(x: np.ndarray, tmp_path, name: str, lengths: list[int]) -> Rows:
    """``x`` as memory-mapped .npy shards of ``lengths`` rows, as the embedding store keeps it."""
    paths, s = [], 0
    for j, m in enumerate(lengths):
        paths.append(tmp_path / f"{name}-{j}.npy")
        np.save(paths[-1], x[s : s + m])
        s += m
    return Rows(paths, lengths, x.shape[1])


def assert_same(got, want) -> None:
    for name in ("image", "text", "image_raw", "text_raw"):
        assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), name
    for name in ("members", "image_members", "text_members"):
        a, b = getattr(got, name), getattr(want, name)
        assert len(a) == len(b) and all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b)), name
    assert list(got.stats.items()) == list(want.stats.items())


@pytest.mark.parametrize("mode", MODES)
def test_in_memory_arrays_equal_the_old_path(mode):
    img, txt = pairs()
    cfg = PrototypeConfig(budget=8, mode=mode, seed=1)
    assert_same(build_prototypes(img, txt, cfg), reference_prototypes(img, txt, cfg, [(0, len(img))]))


@pytest.mark.parametrize("mode", MODES)
def test_shards_and_a_kmeans_sample_equal_the_old_path(mode, tmp_path):
    img, txt = pairs(700)
    lengths = [70, 0, 130, 1, 99, 200, 200]  # uneven, an empty and a one-row shard
    ranges = [(a, b) for a, b in zip(np.cumsum([0] + lengths)[:-1], np.cumsum(lengths)) if b > a]
    cfg = PrototypeConfig(budget=9, mode=mode, seed=3, max_train_points=250)
    got = build_prototypes(stored(img, tmp_path, "i", lengths), stored(txt, tmp_path, "t", lengths), cfg)
    assert got.stats["kmeans_trained_on"] == 250 and got.stats["kmeans_points"] == 560
    assert_same(got, reference_prototypes(img, txt, cfg, ranges))


def test_ties_at_the_drop_threshold_fall_in_pair_order_across_shards(tmp_path):
    """Every pair repeated 7 times: the cut runs through a group of equal cosines that spans shards,
    and the old stable argsort dropped the earliest pairs of that group first."""
    base_i, base_t = pairs(60, seed=5)
    img, txt = np.repeat(base_i, 7, axis=0), np.repeat(base_t, 7, axis=0)
    lengths = [37] * 11 + [13]
    ranges = [(37 * j, min(37 * j + 37, 420)) for j in range(12)]
    cfg = PrototypeConfig(budget=6, seed=0, drop_fraction=0.23)  # 96 dropped: 13 groups and 5 of the 14th
    got = build_prototypes(stored(img, tmp_path, "i", lengths), stored(txt, tmp_path, "t", lengths), cfg)
    assert_same(got, reference_prototypes(img, txt, cfg, ranges))


@pytest.mark.parametrize("mode", ["matched", "image"])
def test_empty_matches_and_empty_clusters_equal_the_old_path(mode, tmp_path):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(8, 16))
    img = np.repeat(base, 5, axis=0).astype(np.float32) * 7
    txt = (np.repeat(base, 5, axis=0) + 0.8 * rng.normal(size=(40, 16))).astype(np.float32)
    cfg = PrototypeConfig(budget=20, mode=mode)
    got = build_prototypes(stored(img, tmp_path, "i", [15, 10, 15]), stored(txt, tmp_path, "t", [15, 10, 15]), cfg)
    assert got.stats["empty_matches" if mode == "matched" else "empty_clusters"] > 0
    assert_same(got, reference_prototypes(img, txt, cfg, [(0, 15), (15, 25), (25, 40)]))


@pytest.mark.parametrize("n", [1, 8, 129, 1000, 65_537, 2_500_003])
def test_the_norms_mean_from_range_pieces_is_numpys_mean(n):
    """The driver's mean of the norms, put together from each range's leaf sums, has the bits of
    ``np.mean`` over the whole vector (what the old path computed), however the ranges cut it."""
    rng = np.random.default_rng(n)
    x = (rng.random(n, dtype=np.float32) * 9).astype(np.float32)
    bounds = np.unique(np.concatenate([[0, n], rng.integers(0, n, 25)]))
    tree = TreeMean(n)
    for a, b in zip(bounds[:-1], bounds[1:]):
        tree.add(leaf_parts(x[a:b], int(a), n))
    assert tree.mean().tobytes() == x.mean().tobytes()
    assert len(leaves(n)) <= max(1, n // 64)  # the driver holds a float per leaf, not per pair


def test_the_drop_keeps_what_a_stable_argsort_kept():
    """Ties, -0.0 against 0.0, infinities and NaN (sorted last): the cut found from two 16-bit
    histograms and each range's ties keeps the pairs ``np.argsort(kind="stable")`` kept."""
    rng = np.random.default_rng(0)
    sims = rng.choice(np.array([-0.0, 0.0, 0.25, -1, np.inf, -np.inf, np.nan], np.float32), 3000)
    sims[::7] = rng.normal(size=len(sims[::7])).astype(np.float32)
    lengths = [400, 0, 1, 1599, 1000]
    ranges = [(a, a + m) for a, m in zip(np.cumsum([0] + lengths[:-1]), lengths)]
    keys = sort_keys(sims)
    high = np.bincount(keys >> 16, minlength=1 << 16)

    def bucket_pass(top):
        for a, b in ranges:
            k = keys[a:b]
            yield int((k >> 16 < top).sum()), np.unique(k[k >> 16 == top] & 0xFFFF, return_counts=True)

    for n_drop in (0, 1, 600, 1234, 2999):
        cut, counts = cuts(high, n_drop, lengths, bucket_pass)
        kept = np.concatenate([a + kept_rows(sims[a:b], c) for (a, b), c in zip(ranges, cut)])
        np.testing.assert_array_equal(kept, np.sort(np.argsort(sims, kind="stable")[n_drop:]))
        assert counts.sum() == len(kept) == 3000 - n_drop


def test_a_task_that_does_not_see_the_scratch_folder_recomputes_the_same_bytes(tmp_path, monkeypatch):
    """A Ray node without the driver's scratch folder recomputes a range's cosines and labels from the
    store: the prototypes do not change."""
    img, txt = pairs(500)
    lengths = [100] * 5
    cfg = PrototypeConfig(budget=7, seed=4, max_train_points=200)
    rows_i, rows_t = stored(img, tmp_path, "i", lengths), stored(txt, tmp_path, "t", lengths)
    want = build_prototypes(rows_i, rows_t, cfg)
    monkeypatch.setattr(passes, "_load", lambda scratch, name: None)
    assert_same(build_prototypes(rows_i, rows_t, cfg), want)


def test_the_driver_never_allocates_an_array_as_long_as_the_corpus(tmp_path):
    """600,000 pairs in 60 shards: tracemalloc's peak over ``build_prototypes`` stays below the size
    of one int64 per pair (4.8 MB), which every per-pair array of the old path (its norms, cosines,
    argsort, kept indices, labels, targets) reached or passed. Image and text rows are drawn apart,
    so few pairs share their two clusters and the member lists (O(members) by design) stay small."""
    n, d = 600_000, 8
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    rows_i, rows_t = stored(img, tmp_path, "i", [10_000] * 60), stored(txt, tmp_path, "t", [10_000] * 60)
    del img, txt
    cfg = PrototypeConfig(budget=20, seed=0, niter=5, max_train_points=2000)
    tracemalloc.start()
    try:
        protos = build_prototypes(rows_i, rows_t, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert protos.stats["kmeans_points"] == n - n // 5
    assert sum(len(m) for m in protos.members) < n // 10
    assert peak < 8 * n, f"{peak / 1e6:.1f} MB traced"
