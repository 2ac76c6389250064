"""Large-N paths of stage 2 on small data: k-means fitted on a seeded sample then assigning every
point, and prototypes built from memory-mapped store rows read chunk by chunk."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from protosynth import clustering, prototypes, store
from protosynth.prototypes import MODES, PrototypeConfig, build_prototypes, kmeans, nearest_member_pairs, nearest_rows
from protosynth.store import Rows


def pairs(n: int = 600, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d)) * 3
    img = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, d))
    txt = img + rng.normal(size=(n, d))
    return (img * rng.uniform(3, 9, (n, 1))).astype(np.float32), (txt * rng.uniform(1, 4, (n, 1))).astype(np.float32)


def as_store(x: np.ndarray, tmp_path, name: str, shard: int = 70) -> Rows:
    """``x`` split into memory-mapped .npy shards, as the embed store keeps it."""
    paths = []
    for j, s in enumerate(range(0, len(x), shard)):
        paths.append(tmp_path / f"{name}-{j}.npy")
        np.save(paths[-1], x[s : s + shard])
    return Rows(paths, [len(np.load(p, mmap_mode="r")) for p in paths], x.shape[1])


def test_rows_take_matches_array_indexing(tmp_path):
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    rows = as_store(x, tmp_path, "x")
    idx = np.array([299, 0, 71, 70, 69, 150, 150, 3])
    np.testing.assert_array_equal(rows.take(idx), x[idx])
    np.testing.assert_array_equal(np.asarray(rows), x)
    mapped = Rows(rows.parts, [70, 70, 70, 70, 20], 8, row_map=np.repeat(np.arange(300), 2))
    assert mapped.shape == (600, 8)
    np.testing.assert_array_equal(mapped.take([1, 598, 2]), x[[0, 299, 1]])
    for bad in ([300], [-1], [0, 600]):  # like ndarray.take: never uninitialised rows
        with pytest.raises(IndexError):
            (mapped if bad == [0, 600] else rows).take(bad)


def test_a_whole_rows_is_read_in_chunks_with_the_same_values(tmp_path, monkeypatch):
    x = np.random.default_rng(3).normal(size=(300, 8)).astype(np.float32)
    rows = as_store(x, tmp_path, "x")
    mapped = Rows(rows.parts, [70, 70, 70, 70, 20], 8, row_map=np.repeat(np.arange(300), 2))
    monkeypatch.setattr(store, "ARRAY_CHUNK", 7)
    np.testing.assert_array_equal(np.asarray(rows), x)
    np.testing.assert_array_equal(np.asarray(mapped), np.repeat(x, 2, axis=0))
    assert np.asarray(mapped, np.float64).dtype == np.float64


def test_a_memory_mapped_row_map_is_pickled_by_path(tmp_path):
    x = np.random.default_rng(2).normal(size=(300, 8)).astype(np.float32)
    rows = as_store(x, tmp_path, "x")
    np.save(tmp_path / "pair_image.npy", np.repeat(np.arange(300, dtype=np.int64), 2))
    row_map = np.load(tmp_path / "pair_image.npy", mmap_mode="r")
    mapped = Rows(rows.parts, [70, 70, 70, 70, 20], 8, row_map=row_map, row_map_file=tmp_path / "pair_image.npy")
    blob = pickle.dumps(mapped)
    assert len(blob) < row_map.nbytes  # the path, not the 600 pairs' image rows
    back = pickle.loads(blob)
    assert isinstance(back.row_map, np.memmap) and back.shape == (600, 8)
    np.testing.assert_array_equal(back.take([1, 598, 2]), x[[0, 299, 1]])


def test_kmeans_above_the_threshold_fits_a_seeded_sample_and_assigns_every_point():
    x, _ = pairs(3000)
    stats: dict = {}
    cents, labels = kmeans(x, 10, 20, seed=4, max_train_points=500, stats=stats)
    assert stats["kmeans_points"] == 3000 and stats["kmeans_trained_on"] == 500 and stats["kmeans_gpu"] is False
    assert labels.shape == (3000,) and labels.dtype == np.int64
    d2 = ((x[:, None, :] - cents[None]) ** 2).sum(-1)  # every point goes to its nearest centroid
    np.testing.assert_array_equal(d2[np.arange(3000), labels], d2.min(1))
    again = kmeans(x, 10, 20, seed=4, max_train_points=500)
    np.testing.assert_array_equal(again[0], cents)
    # below the threshold: all points, the same as faiss on the whole matrix
    stats = {}
    kmeans(x, 10, 20, seed=4, stats=stats)
    assert stats["kmeans_trained_on"] == 3000


@pytest.mark.parametrize("mode", MODES)
def test_prototypes_from_memory_mapped_rows_equal_in_memory_ones(mode, tmp_path, monkeypatch):
    """Chunked passes (a chunk of 50 rows) and a sampled k-means over .npy shards give exactly what
    the same settings give on arrays; stats record the sample."""
    img, txt = pairs()
    pair_image = np.arange(len(img))
    monkeypatch.setattr(clustering, "CHUNK_BYTES", 50 * 4 * 16)
    cfg = PrototypeConfig(budget=8, mode=mode, max_train_points=300, seed=2)
    a = build_prototypes(img, txt, cfg)
    rows_i = Rows(as_store(img, tmp_path, "i").parts, [70] * 8 + [40], 16, row_map=pair_image)
    rows_t = as_store(txt, tmp_path, "t")
    b = build_prototypes(rows_i, rows_t, cfg)
    for name in ("image", "text", "image_raw", "text_raw"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert all(np.array_equal(x, y) for x, y in zip(a.members, b.members)) and a.stats == b.stats
    assert b.stats["kmeans_trained_on"] == 300 and b.stats["kmeans_points"] == 480
    np.testing.assert_array_equal(nearest_member_pairs(a, img, txt), nearest_member_pairs(b, rows_i, rows_t))


def test_chunked_nearest_rows_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(3)
    keys, queries = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    whole = nearest_rows(queries, keys)
    monkeypatch.setattr(clustering, "CHUNK_BYTES", 64 * 4 * 16)
    np.testing.assert_array_equal(nearest_rows(queries, keys), whole)
    np.testing.assert_array_equal(whole, (queries @ (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T).argmax(1))


def test_nearest_rows_in_steps_of_faiss_blocks_equals_one_search(monkeypatch):
    """Steps of whole 1,024-row blocks (here one block a step, with exact ties planted across steps)
    find what one search of the whole matrix finds, the earliest of equal keys included."""
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(5000, 16)).astype(np.float32)
    keys[4000:4100] = keys[100:200]  # the same keys again in a later step: the earlier must win
    queries = np.concatenate([keys[100:140], rng.normal(size=(60, 16)).astype(np.float32)])
    monkeypatch.setattr(prototypes, "SEARCH_BLOCKS", 10)  # one step: the whole matrix
    whole = nearest_rows(queries, keys)
    monkeypatch.setattr(prototypes, "SEARCH_BLOCKS", 1)
    np.testing.assert_array_equal(nearest_rows(queries, keys), whole)
    np.testing.assert_array_equal(whole[:40], np.arange(100, 140))
