"""Retrieval metrics on hand-built score matrices.

Names follow docs/protocols.md: TR@K = image -> text (each image ranks all captions; a hit when the
best-ranked of its own captions is in the top K); IR@K = text -> image (each caption ranks all
images). Ties are pessimistic: a wrong item with the same score ranks ahead of the target.
"""

from __future__ import annotations

import numpy as np
import pytest

from protosynth.evaluation.metrics import retrieval_metrics

KEYS = ["IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10", "r_mean"]


def _recalls(ranks: list[int], prefix: str) -> dict[str, float]:
    r = np.asarray(ranks)
    return {f"{prefix}@{k}": 100.0 * float((r < k).mean()) for k in (1, 5, 10)}


def _check(out: dict[str, float], expected: dict[str, float]) -> None:
    assert list(out) == KEYS
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
    six = [out[k] for k in KEYS[:-1]]
    assert out["r_mean"] == pytest.approx(sum(six) / 6)


# Five images; image 0 has SIX captions, image 1 has five, images 2-4 one each (14 texts).
#            t0 t1 t2 t3 t4 t5 | t6 t7 t8 t9 t10 | t11 | t12 | t13
MULTI = np.array(
    [
        [1, 2, 5, 3, 0, 4, 9, 8, 7, 5, 1, 0, 0, 0],  # I0: best own t2=5; 9,8,7 and the tied 5 ahead -> rank 4
        [7, 0, 0, 0, 0, 0, 2, 6, 3, 1, 0, 0, 0, 0],  # I1: best own t7=6; only t0=7 ahead -> rank 1
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0],  # I2: own t11=5 is top -> rank 0
        [6, 6, 6, 0, 0, 0, 4, 4, 4, 4, 0, 0, 4, 0],  # I3: own t12=4; three 6s and four tied 4s -> rank 7
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1],  # I4: own t13=-1 below all 13 others -> rank 13
    ],
    dtype=float,
)
MULTI_T2I = np.array([0] * 6 + [1] * 5 + [2, 3, 4])
# image -> text: the best of the image's own captions
MULTI_TR_RANKS = [4, 1, 0, 7, 13]
# text -> image, column by column (own image's score vs the other four):
#  t0 [1,7,0,6,0]->2  t1 [2,0,0,6,0]->1  t2 [5,0,0,6,0]->1  t3 [3,0,0,0,0]->0  t4 [0,0,0,0,0]->4 (ties)
#  t5 [4,0,0,0,0]->0  t6 [9,2,0,4,0]->2  t7 [8,6,0,4,0]->1  t8 [7,3,0,4,0]->2  t9 [5,1,0,4,0]->2
#  t10 [1,0,0,0,0]->4 (own 0 tied with three others, behind 1)  t11->0  t12->0  t13 [0,0,0,0,-1]->4
MULTI_IR_RANKS = [2, 1, 1, 0, 4, 0, 2, 1, 2, 2, 4, 0, 0, 4]


def test_multi_caption_matrix():
    out = retrieval_metrics(MULTI, MULTI_T2I)
    _check(
        out,
        {
            "TR@1": 20.0,
            "TR@5": 60.0,
            "TR@10": 80.0,
            "IR@1": 100 * 4 / 14,
            "IR@5": 100.0,
            "IR@10": 100.0,
        },
    )
    _check(out, _recalls(MULTI_TR_RANKS, "TR") | _recalls(MULTI_IR_RANKS, "IR"))
    assert out["r_mean"] == pytest.approx((100 * 4 / 14 + 100 + 100 + 20 + 60 + 80) / 6)


def test_tr_uses_best_of_own_captions():
    """Image 0's captions sit at many positions; only the best one matters for TR."""
    scores = MULTI.copy()
    # lower image 0's best caption (t2) below all wrong captions: its next best own caption, t5=4,
    # now decides; ahead of it are 9, 8, 7, 5 -> still rank 4
    scores[0, 2] = -5
    assert retrieval_metrics(scores, MULTI_T2I)["TR@5"] == pytest.approx(60.0)
    # raise one poor caption of image 0 (t4) to the top of its row -> rank 0: TR@1 gains image 0
    scores[0, 4] = 10
    assert retrieval_metrics(scores, MULTI_T2I)["TR@1"] == pytest.approx(40.0)
    # and if every own caption of image 0 sinks below all 8 wrong ones -> rank 8: TR@5 loses it
    scores[0, :6] = -10
    out = retrieval_metrics(scores, MULTI_T2I)
    _check(out, _recalls([8, 1, 0, 7, 13], "TR"))


def test_more_own_captions_never_hurt_tr():
    """TR counts only wrong captions ahead, not the image's other (lower) own captions."""
    # image 0 has six captions scored 6..1, image 1 one caption at 0; no wrong caption is ahead
    scores = np.array([[6, 5, 4, 3, 2, 1, 0], [0, 0, 0, 0, 0, 0, 1]], dtype=float)
    out = retrieval_metrics(scores, [0, 0, 0, 0, 0, 0, 1])
    assert out["TR@1"] == 100.0


# Twelve images with one caption each. Column j: its own image scores 0, the images in ABOVE[j]
# score 1 (ahead of it) and the rest -1, so text j's IR rank is len(ABOVE[j]), and image i's TR rank
# is the number of columns j != i in which i is ahead.
IR_RANKS = [0, 0, 1, 2, 4, 5, 6, 9, 10, 11, 3, 7]
ABOVE = [[k for k in range(12) if k != j][:r] for j, r in enumerate(IR_RANKS)]
#  i=0 ahead in j=2..11 -> 10; i=1 in j=3..11 -> 9; i=2 in j=4..11 -> 8; i=3 in 4..9,11 -> 7;
#  i=4 in 5..9,11 -> 6; i=5 in 6..9,11 -> 5; i=6 in 7,8,9,11 -> 4; i=7 in 8,9 -> 2; i=8 in 7,9 -> 2;
#  i=9 in 7,8 -> 2; i=10 in 8,9 -> 2; i=11 in 9 -> 1
TR_RANKS = [10, 9, 8, 7, 6, 5, 4, 2, 2, 2, 2, 1]


def _twelve() -> np.ndarray:
    scores = np.full((12, 12), -1.0)
    for j, above in enumerate(ABOVE):
        scores[j, j] = 0.0
        scores[above, j] = 1.0
    return scores


def test_ranks_beyond_five_and_ten():
    out = retrieval_metrics(_twelve(), np.arange(12))
    _check(
        out,
        {
            "IR@1": 100 * 2 / 12,
            "IR@5": 50.0,
            "IR@10": 100 * 10 / 12,
            "TR@1": 0.0,
            "TR@5": 50.0,
            "TR@10": 100 * 11 / 12,
        },
    )
    _check(out, _recalls(IR_RANKS, "IR") | _recalls(TR_RANKS, "TR"))


def test_names_are_not_swapped():
    """Transposing the problem swaps IR and TR (one caption per image)."""
    scores = _twelve()
    a = retrieval_metrics(scores, np.arange(12))
    b = retrieval_metrics(scores.T, np.arange(12))
    for k in (1, 5, 10):
        assert a[f"IR@{k}"] == pytest.approx(b[f"TR@{k}"])
        assert a[f"TR@{k}"] == pytest.approx(b[f"IR@{k}"])
    assert a["IR@10"] != a["TR@10"]


def test_ties_are_pessimistic():
    # I0 ties with wrong t1; I1 wins; t0's column [1, 0] wins; t1's column [1, 1] ties
    out = retrieval_metrics(np.array([[1.0, 1.0], [0.0, 1.0]]), [0, 1])
    _check(out, {"TR@1": 50.0, "IR@1": 50.0, "TR@5": 100.0, "IR@5": 100.0})


def test_constant_matrix_never_looks_good():
    out = retrieval_metrics(np.zeros((3, 3)), np.arange(3))
    _check(out, {"IR@1": 0.0, "IR@5": 100.0, "IR@10": 100.0, "TR@1": 0.0, "TR@5": 100.0, "TR@10": 100.0})
    # twelve images: every rank is 11, so nothing is found even in the top ten
    out = retrieval_metrics(np.ones((12, 12)), np.arange(12))
    _check(out, {k: 0.0 for k in KEYS})


def test_constant_matrix_with_six_captions():
    # image 0: six captions, image 1: one. Constant scores: I0 ranks behind 1 wrong caption,
    # I1 behind 6; every text ranks behind the one other image.
    out = retrieval_metrics(np.full((2, 7), 0.3), [0, 0, 0, 0, 0, 0, 1])
    _check(out, {"TR@1": 0.0, "TR@5": 50.0, "TR@10": 100.0, "IR@1": 0.0, "IR@5": 100.0, "IR@10": 100.0})


def test_own_captions_tied_with_each_other_are_fine():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = retrieval_metrics(scores, [0, 0, 1])
    _check(out, {k: 100.0 for k in KEYS})


def test_perfect_scores():
    t2i = np.repeat(np.arange(4), 5)
    scores = (t2i[None, :] == np.arange(4)[:, None]).astype(float)
    _check(retrieval_metrics(scores, t2i), {k: 100.0 for k in KEYS})


def test_permuting_texts_changes_nothing():
    rng = np.random.default_rng(0)
    t2i = np.array([0] * 6 + [1] * 5 + [2] * 5 + [3] * 5 + list(range(4, 12)))
    scores = rng.normal(size=(12, len(t2i)))
    scores[t2i, np.arange(len(t2i))] += 1.5
    perm = rng.permutation(len(t2i))
    a = retrieval_metrics(scores, t2i)
    b = retrieval_metrics(scores[:, perm], t2i[perm])
    assert a == pytest.approx(b)
    for d in ("IR", "TR"):
        assert a[f"{d}@1"] <= a[f"{d}@5"] <= a[f"{d}@10"]
    _check(a, {})


def test_r_mean_is_mean_of_six():
    rng = np.random.default_rng(1)
    t2i = np.repeat(np.arange(15), 5)
    out = retrieval_metrics(rng.normal(size=(15, 75)), t2i)
    assert set(out) == set(KEYS)
    assert all(0.0 <= v <= 100.0 for v in out.values())
    assert out["r_mean"] == pytest.approx(np.mean([out[k] for k in KEYS[:-1]]))
    assert all(isinstance(v, float) for v in out.values())


def test_accepts_lists():
    out = retrieval_metrics([[2, 1], [1, 2]], [0, 1])
    assert out["r_mean"] == 100.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="caption"):
        retrieval_metrics(np.zeros((3, 3)), [0, 0, 1])  # image 2 has no caption
