"""Training-free soft labels (``protosynth.soft_labels``) on hand-made embeddings, their settings'
errors, and the soft-labels recipe training on them. Fast: no CLIP, no decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protosynth.baselines.configs import RENDERED_SETTINGS, rendered_distill
from protosynth.clustering import Prototypes
from protosynth.configs import DistillConfig
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import recipe_data
from protosynth.evaluation.retrieval import PairData
from protosynth.soft_labels import (
    DEFAULT_SOFT_TEMPERATURE,
    clip_soft_labels,
    members_soft_labels,
    positive_cosine,
    soft_label_record,
    soft_labels,
)


def by_hand(image, text, t):
    """The clip rule written out entry by entry, in plain Python."""
    n = len(image)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    return [
        [1.0 if i == j else math.exp(((cos(image[i], image[j]) + cos(text[i], text[j])) / 2 - 1) / t) for j in range(n)]
        for i in range(n)
    ]


def test_clip_rule_matches_an_independent_computation():
    image = [[1.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.1, 0.0]]  # rows need not be unit
    text = [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.1, 1.0]]
    got = clip_soft_labels(np.array(image), np.array(text), 0.2)
    assert got.dtype == torch.float32 and got.shape == (4, 4)
    np.testing.assert_allclose(got.numpy(), np.array(by_hand(image, text, 0.2)), rtol=1e-6, atol=1e-7)
    assert torch.equal(got.diagonal(), torch.ones(4)) and torch.equal(got, got.T)
    # pairs 0 and 3 are near duplicates (joint cosine ~0.995): a positive; the rest are negatives
    pos = (got > 0.5) & ~torch.eye(4, dtype=torch.bool)
    assert pos.nonzero().tolist() == [[0, 3], [3, 0]]


def test_temperature_sets_which_pairs_are_positives():
    """Another pair is a positive (target > 0.5) exactly when its joint cosine is above 1 - T ln 2."""
    angle = np.linspace(0.05, 1.2, 8)
    image = np.concatenate([[[1.0, 0.0]], np.stack([np.cos(angle), np.sin(angle)], 1)])
    text = image.copy()  # the joint cosine of pair 0 with pair k is cos(angle_k)
    for t in (0.05, 0.2, 0.5):
        row = clip_soft_labels(image, text, t)[0, 1:].numpy()
        assert ((row > 0.5) == (np.cos(angle) > positive_cosine(t))).all()
    assert torch.equal(clip_soft_labels(image, text, 1e-3) > 0.5, torch.eye(9, dtype=torch.bool))  # T -> 0: identity


def test_record_and_none():
    s = clip_soft_labels(np.eye(3) + 0.9, np.eye(3) + 0.9, 0.5)
    rec = soft_label_record(s, "clip", 0.5)
    assert rec["rule"] == "clip" and rec["temperature"] == 0.5
    assert rec["positive_above_cosine"] == pytest.approx(1 - 0.5 * math.log(2), abs=1e-6)
    assert rec["other_positives_per_pair_mean"] == 2.0  # every pair's two others are above 0.5 here
    protos = Prototypes(np.eye(3), np.eye(3), np.eye(3), np.eye(3), [np.array([0]), np.array([1]), np.array([2])])
    assert soft_labels("none", protos, np.eye(3), np.eye(3), None) is None
    sim, rec = soft_labels("clip", protos, np.eye(3), np.eye(3), None)
    assert rec["temperature"] == DEFAULT_SOFT_TEMPERATURE["clip"] == 0.25  # chosen on val
    off = math.exp(-1 / DEFAULT_SOFT_TEMPERATURE["clip"])  # orthogonal pairs: joint cosine 0
    assert torch.allclose(sim, torch.eye(3) + off * (1 - torch.eye(3)), rtol=1e-6)


def members_by_hand(image, text, members, rows_img, rows_txt, t):
    """The members rule written out member by member, in plain Python."""

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    def score(m, c):
        return cos(rows_img[m], image[c]) + cos(rows_txt[m], text[c])

    n = len(image)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j or not members[i]:
                out[i][j] = float(i == j)
                continue
            credits = [
                1.0 if score(m, j) >= score(m, i) else math.exp((score(m, j) - score(m, i)) / t) for m in members[i]
            ]
            out[i][j] = sum(credits) / len(credits)
    return out


def test_members_rule_matches_an_independent_computation():
    image = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    text = [[1.0, 0.2], [0.1, 1.0], [0.5, 0.5]]
    rows_img = [[1.0, 0.1], [0.9, 0.5], [0.1, 1.0], [0.6, 0.7], [0.2, 2.0], [3.0, 0.2]]  # rows need not be unit
    rows_txt = [[1.0, 0.0], [0.6, 0.6], [0.0, 1.0], [0.5, 0.6], [0.3, 1.0], [1.0, 0.3]]
    members = [[0, 1, 5], [2, 4], [3]]
    args = (np.array(image), np.array(text), [np.array(m) for m in members], np.array(rows_img), np.array(rows_txt))
    got = members_soft_labels(*args, 0.3)
    assert got.dtype == torch.float32 and torch.equal(got.diagonal(), torch.ones(3))
    np.testing.assert_allclose(got.numpy(), members_by_hand(image, text, members, rows_img, rows_txt, 0.3), rtol=1e-6)
    assert not torch.allclose(got, got.T)  # not symmetric: i's members vouch for j, not j's for i
    # T -> 0: the share of i's members at least as close to j as to i: one of prototype 0's three members
    # (row 1) scores prototype 2 above its own, every other member its own prototype highest
    share = torch.tensor([[1.0, 0.0, 1 / 3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(members_soft_labels(*args, 1e-4), share, atol=1e-6)
    # a prototype without members: the identity row
    args = (args[0], args[1], [np.array([0, 1, 5]), np.array([], np.int64), np.array([3])], *args[3:])
    assert torch.equal(members_soft_labels(*args, 0.3)[1], torch.tensor([0.0, 1.0, 0.0]))


def test_members_rule_counts_members_closer_to_another_prototype():
    """Two of prototype 0's four members sit nearer prototype 1: as T -> 0, S[0, 1] = 2/4."""
    image = text = np.array([[1.0, 0.0], [0.0, 1.0]])
    rows = np.array([[1.0, 0.0], [1.0, 0.1], [0.2, 1.0], [0.1, 1.0], [0.0, 1.0]])
    got = members_soft_labels(image, text, [np.array([0, 1, 2, 3]), np.array([4])], rows, rows, 1e-4)
    assert got[0, 1] == pytest.approx(0.5, abs=1e-6) and got[1, 0] == pytest.approx(0.0, abs=1e-6)
    assert soft_label_record(got, "members", 1e-4)["other_positives_per_pair_mean"] == 0.0  # 0.5 is not > 0.5


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"soft_labels": "cos"}, r"^unknown soft_labels 'cos': use none, clip, members$"),
        ({"soft_labels": "clip", "soft_temperature": 0.0}, r"^soft_temperature must be a positive number, got 0.0$"),
        ({"soft_labels": "clip", "soft_temperature": float("inf")}, r"^soft_temperature must be a positive number"),
        ({"soft_temperature": 0.1}, r"^soft_temperature needs soft_labels=clip or soft_labels=members$"),
        ({"soft_labels": "members", "soft_temperature": -0.1}, r"^soft_temperature must be a positive number"),
    ],
)
def test_bad_settings_are_one_error_naming_the_setting(kw, message):
    with pytest.raises(ProtosynthError, match=message):
        DistillConfig(**kw).check()


def test_compare_methods_store_the_rule():
    assert rendered_distill("pds-soft", budget=10).soft_labels == "clip"
    assert rendered_distill("pds-soft", budget=10).soft_temperature is None  # the default temperature
    cfg = rendered_distill("pds-soft-t0.25", budget=10)
    assert (cfg.soft_labels, cfg.soft_temperature, cfg.method) == ("clip", 0.25, "pds")
    cfg.check()
    cfg = rendered_distill("pds-soft-members-t0.2", budget=10)
    assert (cfg.soft_labels, cfg.soft_temperature) == ("members", 0.2)
    assert rendered_distill("pds-soft-members", budget=10).soft_temperature is None
    cfg = rendered_distill("pds-soft-identity", budget=10)  # the control: hard labels with weighted BCE
    assert (cfg.soft_labels, cfg.soft_temperature) == ("clip", 0.001)
    far = np.array([[1.0, 0.0], [0.8, 0.6]])  # cosine 0.8, nearer than any two world prototypes at 100 pairs
    assert torch.equal(clip_soft_labels(far, far, cfg.soft_temperature), torch.eye(2))
    assert all(
        rendered_distill(m, budget=10).soft_labels == "none" for m in RENDERED_SETTINGS if not m.startswith("pds-soft")
    )


def test_recipes_keep_or_drop_the_stored_matrix():
    """soft-labels and own keep S (the learner trains with weighted BCE), protocol drops it."""
    s = clip_soft_labels(np.eye(4) + 0.5, np.eye(4) + 0.5, 0.5)
    data = PairData(torch.zeros(4, 3, 2, 2), torch.zeros(4, 8), notes={"learned_lrs": False}, similarity=s)
    assert recipe_data(data, "soft-labels").similarity is s and recipe_data(data, "own").similarity is s
    assert recipe_data(data, "protocol").similarity is None and recipe_data(data, "learned-lrs").similarity is None
