"""Stage 2, prototypes: ``build_prototypes`` and ``nearest_rows`` on synthetic embeddings.

The data are hand-built so the expected answer is known: clusterable modalities with a known
permutation between image and text clusters, deliberately misaligned pairs that must be dropped,
and caption-level pairs with repeated images (which is what makes PDS's matched clusters share no
pair in practice).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protosynth.errors import ProtosynthError
from protosynth.passes import unit as _unit
from protosynth.prototypes import MODES, PrototypeConfig, build_prototypes, kmeans, nearest_rows

D = 24


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_pairs(n: int = 200, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated image/text embeddings with varied raw norms (like real, un-normalised CLIP)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, d))
    txt = img + rng.normal(size=(n, d))
    return (img * rng.uniform(3, 12, (n, 1))).astype(np.float32), (txt * rng.uniform(1, 4, (n, 1))).astype(np.float32)


def permuted_clusters(k: int = 5, per: int = 24, n_bad: int = 30, seed: int = 0):
    """``k`` image clusters at e_0..e_{k-1} and ``k`` text clusters at e_k..e_{2k-1}; a pair in image
    cluster ``a`` has its text in text cluster ``perm[a]``. A shared direction gives aligned pairs a
    cosine of about 0.5. The last ``n_bad`` pairs are misaligned (text = -image), cosine about -1,
    so they are exactly the 20% that PDS drops when ``n_bad`` is a fifth of all pairs."""
    rng = np.random.default_rng(seed)
    eye, shared = np.eye(D), np.eye(D)[-1]
    perm = rng.permutation(k)
    group = np.repeat(np.arange(k), per)
    img = eye[group] + shared + 0.03 * rng.normal(size=(len(group), D))
    txt = eye[k + perm[group]] + shared + 0.03 * rng.normal(size=(len(group), D))
    bad_group = rng.integers(0, k, n_bad)
    bad_img = eye[bad_group] + shared + 0.03 * rng.normal(size=(n_bad, D))
    bad_txt = -bad_img + 0.03 * rng.normal(size=(n_bad, D))
    img = np.vstack([img, bad_img]) * rng.uniform(5, 15, (len(group) + n_bad, 1))
    txt = np.vstack([txt, bad_txt]) * rng.uniform(2, 4, (len(group) + n_bad, 1))
    return img.astype(np.float32), txt.astype(np.float32), perm, group


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def check_common(p, image_raw: np.ndarray, text_raw: np.ndarray, k: int) -> None:
    """Shapes, unit norms, raw rescaling to the members' mean raw norm, members in range."""
    for name in ("image", "text", "image_raw", "text_raw"):
        arr = getattr(p, name)
        assert arr.shape == (k, image_raw.shape[1]), name
        assert np.isfinite(arr).all(), name
    np.testing.assert_allclose(np.linalg.norm(p.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p.text, axis=1), 1.0, atol=1e-5)
    assert len(p.members) == k
    in_norm_i, in_norm_t = np.linalg.norm(image_raw, axis=1), np.linalg.norm(text_raw, axis=1)
    for c, m in enumerate(p.members):
        m = np.asarray(m)
        assert m.dtype.kind == "i" and len(m) > 0, f"prototype {c} has no members"
        assert m.min() >= 0 and m.max() < len(image_raw)
        assert len(np.unique(m)) == len(m)
        # raw = unit direction x the mean raw norm of the pairs that half averages (the members,
        # or after an empty match each half's own cluster, both within the members)
        mi, mt = np.asarray(p.image_members[c]), np.asarray(p.text_members[c])
        assert set(mi.tolist()) <= set(m.tolist()) and set(mt.tolist()) <= set(m.tolist())
        if p.stats.get("empty_matches", 0) == 0:
            assert np.array_equal(mi, m) and np.array_equal(mt, m)
        # an empty cluster keeps its centroid with the corpus mean raw norm
        want_i = in_norm_i[mi].mean() if len(mi) else in_norm_i.mean()
        want_t = in_norm_t[mt].mean() if len(mt) else in_norm_t.mean()
        np.testing.assert_allclose(np.linalg.norm(p.image_raw[c]), want_i, rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(p.text_raw[c]), want_t, rtol=1e-4)
        np.testing.assert_allclose(unit(p.image_raw[c : c + 1])[0], p.image[c], atol=1e-5)
        np.testing.assert_allclose(unit(p.text_raw[c : c + 1])[0], p.text[c], atol=1e-5)


def kept_indices(image_raw: np.ndarray, text_raw: np.ndarray, drop_fraction: float = 0.2, budget: int = 1):
    n = len(image_raw)
    n_drop = min(int(np.floor(drop_fraction * n)), n - budget)
    sims = (unit(image_raw) * unit(text_raw)).sum(1)
    return np.sort(np.argsort(sims, kind="stable")[n_drop:])


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_k_unit_prototypes_that_are_member_means(mode):
    img, txt = random_pairs()
    k = 12
    p = build_prototypes(img, txt, PrototypeConfig(budget=k, mode=mode))
    check_common(p, img, txt, k)
    keep = kept_indices(img, txt)
    assert p.stats["pairs"] == 200 and p.stats["dropped"] == 40
    assert p.stats["empty_clusters"] == 0 and p.stats["empty_matches"] == 0
    every = np.concatenate(p.members)
    assert set(every.tolist()) <= set(keep.tolist()), "a member is a dropped pair"
    assert len(every) == len(set(every.tolist())), "members overlap"
    if mode == "matched":
        assert len(every) == p.stats["matched_pairs_shared"]
    else:  # one clustering: the members partition the kept pairs
        np.testing.assert_array_equal(np.sort(every), keep)
    # each half is the normalised mean of its members' normalised embeddings
    for c, m in enumerate(p.members):
        np.testing.assert_allclose(p.image[c], unit(unit(img)[m].mean(0, keepdims=True))[0], atol=1e-5)
        np.testing.assert_allclose(p.text[c], unit(unit(txt)[m].mean(0, keepdims=True))[0], atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_lowest_similarity_fifth_is_dropped(mode):
    img, txt, _, _ = permuted_clusters(n_bad=30)  # 150 pairs, the last 30 misaligned
    p = build_prototypes(img, txt, PrototypeConfig(budget=5, mode=mode))
    assert p.stats["dropped"] == 30
    every = set(np.concatenate(p.members).tolist())
    assert every.isdisjoint(range(120, 150)), "a dropped (misaligned) pair became a member"
    assert every <= set(range(120))
    if mode != "matched":
        assert every == set(range(120))


def test_drop_is_floored_and_capped_by_the_budget():
    img, txt = random_pairs(n=101)
    assert build_prototypes(img, txt, PrototypeConfig(budget=4)).stats["dropped"] == 20  # floor(20.2)
    # budget 99 of 101 pairs: only 2 may be dropped, so every prototype can keep a pair
    p = build_prototypes(img, txt, PrototypeConfig(budget=99, mode="joint"))
    assert p.stats["dropped"] == 2
    check_common(p, img, txt, 99)
    # budget == number of pairs: nothing dropped, one pair per prototype
    p = build_prototypes(img, txt, PrototypeConfig(budget=101, mode="joint"))
    assert p.stats["dropped"] == 0
    assert sorted(np.concatenate(p.members).tolist()) == list(range(101))


def _seed_that_recovers(x_img, x_txt, truth_img, truth_txt, k, need_crossed=True):
    """A k-means seed for which the module's own k-means recovers the intended clusters in both
    modalities (faiss k-means with random init can land in a local optimum: that is not what these
    tests are about), and for which the label ids differ between modalities, so that matching by
    label id would be wrong and only the Hungarian step pairs the clusters correctly."""
    for seed in range(40):
        _, li = kmeans(x_img, k, 25, seed)
        _, lt = kmeans(x_txt, k, 25, seed)
        if not (same_partition(li, truth_img) and same_partition(lt, truth_txt)):
            continue
        if need_crossed and all(li[truth_img == g][0] == lt[truth_img == g][0] for g in np.unique(truth_img)):
            continue
        return seed
    pytest.fail("no k-means seed in 0..39 recovers the hand-built clusters")


def test_matched_mode_pairs_clusters_by_hungarian_matching():
    k = 5
    img, txt, perm, group = permuted_clusters(k=k)
    keep = np.arange(120)  # the aligned pairs; the misaligned 30 are dropped
    assert np.array_equal(kept_indices(img, txt), keep)
    seed = _seed_that_recovers(_unit(img)[keep], _unit(txt)[keep], group, perm[group], k)
    p = build_prototypes(img, txt, PrototypeConfig(budget=k, mode="matched", seed=seed))
    check_common(p, img, txt, k)
    assert p.stats["empty_matches"] == 0
    assert p.stats["matched_pairs_shared"] == 120
    seen = set()
    for c, m in enumerate(p.members):
        a = int(np.argmax(p.image[c, :k]))  # which image cluster this prototype's image half is
        b = int(np.argmax(p.text[c, k : 2 * k]))  # which text cluster its text half is
        assert b == perm[a], f"prototype {c} pairs image cluster {a} with text cluster {b}, expected {perm[a]}"
        assert p.image[c, a] > 0.6 and p.text[c, k + b] > 0.6
        np.testing.assert_array_equal(np.sort(m), np.flatnonzero(group == a))
        seen.add(a)
    assert seen == set(range(k))


def test_matched_mode_maximises_shared_pairs_on_messy_data():
    """On unstructured data, the matching must be the assignment with the most shared pairs
    (checked by brute force over all 5! assignments of the module's own cluster labels)."""
    img, txt = random_pairs(n=150, seed=3)
    k, seed = 5, 7
    keep = kept_indices(img, txt)
    _, li = kmeans(_unit(img)[keep], k, 25, seed)
    _, lt = kmeans(_unit(txt)[keep], k, 25, seed)
    counts = np.zeros((k, k), int)
    np.add.at(counts, (li, lt), 1)
    best = max(sum(counts[r, c] for r, c in enumerate(pm)) for pm in itertools.permutations(range(k)))
    p = build_prototypes(img, txt, PrototypeConfig(budget=k, mode="matched", seed=seed))
    assert p.stats["matched_pairs_shared"] == best
    assert sum(len(m) for m in p.members) == best  # no fallback here: each prototype = a shared set
    # every prototype's members are exactly one (image cluster, text cluster) cell of the table
    for m in p.members:
        pos = np.searchsorted(keep, m)
        assert len(set(li[pos].tolist())) == 1 and len(set(lt[pos].tolist())) == 1


def hall_violation(seed: int = 0):
    """Image clusters {0-19}, {20-39}, {40-79}; text clusters {0-39}, {40-59}, {60-79}. The first
    two image clusters both fall entirely into text cluster 0, so no perfect matching exists on the
    co-membership table and one matched pair of clusters shares no pair. 20 extra misaligned pairs
    (80-99) are the dropped fifth."""
    rng = np.random.default_rng(seed)
    eye, shared = np.eye(D), np.eye(D)[-1]
    gi = np.array([0] * 20 + [1] * 20 + [2] * 40)
    gt = np.array([0] * 40 + [1] * 20 + [2] * 20)
    img = eye[gi] + shared + 0.03 * rng.normal(size=(80, D))
    txt = eye[3 + gt] + shared + 0.03 * rng.normal(size=(80, D))
    bad_img = eye[rng.integers(0, 3, 20)] + shared + 0.03 * rng.normal(size=(20, D))
    bad_txt = -bad_img + 0.03 * rng.normal(size=(20, D))
    scale = rng.uniform(5, 15, (100, 1))
    return (np.vstack([img, bad_img]) * scale).astype(np.float32), np.vstack([txt, bad_txt]).astype(np.float32), gi, gt


def test_empty_match_never_gives_nan_and_is_counted():
    img, txt, gi, gt = hall_violation()
    keep = np.arange(80)
    assert np.array_equal(kept_indices(img, txt), keep)
    seed = _seed_that_recovers(_unit(img)[keep], _unit(txt)[keep], gi, gt, 3, need_crossed=False)
    p = build_prototypes(img, txt, PrototypeConfig(budget=3, mode="matched", seed=seed))
    assert p.stats["empty_matches"] == 1
    check_common(p, img, txt, 3)  # finite, unit norm, non-empty members, raw rescaled
    assert p.stats["matched_pairs_shared"] == 40
    assert set(np.concatenate(p.members).tolist()) <= set(keep.tolist())


def test_empty_matches_with_repeated_images():
    """Caption-level pairs repeat each image 5 times; a budget above the number of distinct images
    (as with PDS at K >= 300 on Flickr30k-like data) leaves image clusters with no pair: matched
    mode then meets matched clusters that share nothing, and image mode meets empty clusters."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(8, 16))
    img = np.repeat(base, 5, axis=0).astype(np.float32) * 7
    txt = (np.repeat(base, 5, axis=0) + 0.8 * rng.normal(size=(40, 16))).astype(np.float32)
    p = build_prototypes(img, txt, PrototypeConfig(budget=20, mode="matched"))
    assert p.stats["empty_matches"] > 0
    check_common(p, img, txt, 20)
    p = build_prototypes(img, txt, PrototypeConfig(budget=20, mode="image"))
    assert p.stats["empty_clusters"] > 0
    for name in ("image", "text", "image_raw", "text_raw"):
        assert np.isfinite(getattr(p, name)).all()
    np.testing.assert_allclose(np.linalg.norm(p.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p.text, axis=1), 1.0, atol=1e-5)
    keep = kept_indices(img, txt)
    mean_text = unit(unit(txt)[keep].mean(0, keepdims=True))[0]
    for c, m in enumerate(p.members):
        if len(m) == 0:  # the other half of an empty one-modality cluster: mean of all kept pairs
            np.testing.assert_allclose(p.text[c], mean_text, atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(p.image_raw[c]), np.linalg.norm(img, axis=1).mean(), rtol=1e-4)


def test_empty_match_fallback_uses_each_clusters_own_mean():
    """The module docstring: 'the prototype falls back to the two clusters' own means'."""
    img, txt, gi, gt = hall_violation()
    keep = np.arange(80)
    seed = _seed_that_recovers(_unit(img)[keep], _unit(txt)[keep], gi, gt, 3, need_crossed=False)
    p = build_prototypes(img, txt, PrototypeConfig(budget=3, mode="matched", seed=seed))
    # the prototypes whose image and text halves come from the same pairs are the matched ones;
    # the remaining one is the fallback: its image half must be a single image cluster's direction
    # (e_0, e_1 or e_2) and its text half a single text cluster's (e_3, e_4 or e_5)
    for c in range(3):
        assert p.image[c, :3].max() > 0.65, f"prototype {c} image half mixes clusters: {p.image[c, :3].round(2)}"
        assert p.text[c, 3:6].max() > 0.65, f"prototype {c} text half mixes clusters: {p.text[c, 3:6].round(2)}"


@pytest.mark.parametrize("budget", [0, -3])
def test_budget_below_one_raises(budget):
    img, txt = random_pairs(n=20)
    with pytest.raises(ProtosynthError, match="^budget must be at least 1"):
        build_prototypes(img, txt, PrototypeConfig(budget=budget))


def test_budget_above_pairs_raises():
    img, txt = random_pairs(n=20)
    with pytest.raises(ProtosynthError, match=r"^budget 21 .*20 pairs"):
        build_prototypes(img, txt, PrototypeConfig(budget=21))


def test_unknown_mode_raises():
    img, txt = random_pairs(n=20)
    with pytest.raises(ProtosynthError, match="'bogus'"):
        build_prototypes(img, txt, PrototypeConfig(budget=3, mode="bogus"))


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_is_deterministic(mode):
    img, txt = random_pairs(n=300, seed=5)
    a = build_prototypes(img, txt, PrototypeConfig(budget=16, mode=mode, seed=3))
    b = build_prototypes(img.copy(), txt.copy(), PrototypeConfig(budget=16, mode=mode, seed=3))
    for name in ("image", "text", "image_raw", "text_raw"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert len(a.members) == len(b.members)
    assert all(np.array_equal(x, y) for x, y in zip(a.members, b.members))
    assert a.stats == b.stats


def test_nearest_rows_is_exact_cosine_nearest():
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(50, 16)).astype(np.float32)
    order = rng.permutation(50)
    queries = keys[order] * rng.uniform(0.1, 10, (50, 1)).astype(np.float32) + 0.01 * rng.normal(size=(50, 16)).astype(
        np.float32
    )
    got = nearest_rows(queries, keys)
    assert got.dtype == np.int64 and got.shape == (50,)
    np.testing.assert_array_equal(got, order)
    # cosine, not inner product: a long but less aligned key must not win
    keys2 = np.array([[1.0, 1.0, 0.0], [0.1, 0.0, 0.0]], np.float32) * np.array([[100.0], [1.0]], np.float32)
    assert nearest_rows(np.array([[1.0, 0.05, 0.0]], np.float32), keys2).tolist() == [1]
    # agrees with a brute-force cosine argmax on random data
    q = rng.normal(size=(30, 16)).astype(np.float32)
    np.testing.assert_array_equal(nearest_rows(q, keys), (unit(q) @ unit(keys).T).argmax(1))
