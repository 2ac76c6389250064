"""The ``pds-published`` rules against an independent transcription of the PDS authors' steps
(``authors_steps`` in ``tests/pds_code.py``): drop, clustering (or the same given labels), matching,
prototypes, the empty-match rule, order and caption choice."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pds_code import authors_steps

from protosynth import prototypes_rules
from protosynth.distill import DistillConfig, apply_preset, prototype_config
from protosynth.errors import ProtosynthError
from protosynth.prototypes import PrototypeConfig, build_prototypes, nearest_rows

PUBLISHED = {"cluster_space": "raw", "kmeans": "minibatch", "prototype_norm": "mean", "prototype_order": "alignment"}


def tiny_corpus(n=240, d=12, seed=0):
    """Raw embeddings with a cluster structure, unequal norms and a misaligned tail."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(6, d)) * 3
    group = rng.integers(0, 6, n)
    img = (centre[group] + rng.normal(size=(n, d))) * rng.uniform(2, 9, (n, 1))
    txt = (centre[(group + rng.integers(0, 2, n)) % 6] + rng.normal(size=(n, d))) * rng.uniform(1, 3, (n, 1))
    return img.astype(np.float32), txt.astype(np.float32)


def published(budget: int, seed: int = 42) -> PrototypeConfig:
    return PrototypeConfig(budget=budget, seed=seed, **PUBLISHED)


def test_preset_reproduces_the_authors_steps_end_to_end():
    img, txt = tiny_corpus()
    k = 8
    keep, ref_i, ref_t, ref_caption = authors_steps(img.astype(np.float64), txt.astype(np.float64), k)
    p = build_prototypes(img, txt, published(k))
    assert p.stats["dropped"] == int(0.2 * len(img))
    kept_members = np.concatenate(p.members)
    assert set(kept_members.tolist()) <= set(np.flatnonzero(keep).tolist())  # only kept pairs are members
    np.testing.assert_allclose(p.image_raw, ref_i, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.text_raw, ref_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.image, ref_i / np.linalg.norm(ref_i, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(nearest_rows(p.text, txt), ref_caption)  # distill's caption rule
    shared = [c for c in range(k) if np.array_equal(p.image_members[c], p.text_members[c])]
    assert 0 < len(shared) < k  # this corpus has an empty match below 300 pairs: the centres (checked above)
    for c in shared:  # a matched pair's prototype is the plain mean of its shared members' raw rows
        np.testing.assert_allclose(img[p.members[c]].mean(0), p.image_raw[c], rtol=1e-5, atol=1e-5)


def test_protosynths_prototype_has_the_larger_conditioning_norm():
    """On the same clusters, the members' mean norm is at least the norm of their mean (triangle
    inequality), and the unit rows' mean points elsewhere than the raw mean: what the default changes."""
    img, txt = tiny_corpus()
    ours = build_prototypes(img, txt, replace(published(8), prototype_norm="members", prototype_order="matching"))
    theirs = build_prototypes(img, txt, replace(published(8), prototype_order="matching"))
    assert [m.tolist() for m in ours.members] == [m.tolist() for m in theirs.members]
    shared = [c for c in range(8) if np.array_equal(theirs.image_members[c], theirs.text_members[c])]
    gain = np.linalg.norm(ours.image_raw[shared], axis=1) / np.linalg.norm(theirs.image_raw[shared], axis=1)
    assert (gain >= 1 - 1e-6).all() and gain.max() > 1.05
    assert np.abs(ours.image[shared] - theirs.image[shared]).max() > 1e-3


def empty_match_labels(n_kept: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels whose Hungarian matching pairs image cluster k-1 with text cluster k-1, which share no
    pair: clusters below k-2 hold one pair each, cluster k-2 the rest, and the last two rows cross
    (image k-1 with text k-2, image k-2 with text k-1)."""
    li = np.minimum(np.arange(n_kept), k - 2)
    lt = li.copy()
    li[-1], lt[-2] = k - 1, k - 1
    return li, lt


@pytest.mark.parametrize("k", [4, 300])
def test_an_empty_match_keeps_the_centres_as_the_authors_below_300(monkeypatch, k):
    rng = np.random.default_rng(1)
    n = 400 if k == 300 else 60
    img = (rng.normal(size=(n, 6)) * rng.uniform(1, 5, (n, 1))).astype(np.float32)
    txt = (img + rng.normal(size=(n, 6))).astype(np.float32)
    n_kept = n - int(0.2 * n)
    li, lt = empty_match_labels(n_kept, k)
    ci, ct = rng.normal(size=(k, 6)).astype(np.float32), rng.normal(size=(k, 6)).astype(np.float32)
    given = iter([(ci, li), (ct, lt)])
    monkeypatch.setattr(prototypes_rules, "cluster", lambda x, cfg, stats: next(given))  # the same labels
    p = build_prototypes(img, txt, published(k))
    _, ref_i, ref_t, _ = authors_steps(img.astype(np.float64), txt.astype(np.float64), k, labels=(li, lt, ci, ct))
    assert p.stats["empty_matches"] == 1
    if k < 300:
        np.testing.assert_allclose(p.image_raw, ref_i, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p.text_raw, ref_t, rtol=1e-5, atol=1e-5)
        assert "empty_matches_past_pds_code" not in p.stats
    else:  # the authors' prototype is NaN (their caption search then fails); ours keeps the centres
        assert np.isnan(ref_i).any(axis=1).sum() == 1
        assert p.stats["empty_matches_past_pds_code"] == 1
        finite = ~np.isnan(ref_i).any(axis=1)
        centre_row = np.flatnonzero(np.all(np.isclose(p.image_raw, ci[k - 1], atol=1e-6), axis=1))
        assert len(centre_row) == 1 and np.isfinite(p.image_raw).all()
        # every other prototype is the authors' one (their NaN row sorts first, ours by its cosine)
        ours = np.delete(p.image_raw, centre_row, axis=0)
        np.testing.assert_allclose(
            ours[np.lexsort(ours.T)], ref_i[finite][np.lexsort(ref_i[finite].T)], rtol=1e-5, atol=1e-5
        )


def test_each_rule_is_a_setting_of_its_own():
    img, txt = tiny_corpus()
    raw_only = build_prototypes(img, txt, PrototypeConfig(budget=8, seed=42, cluster_space="raw"))
    mean_only = build_prototypes(img, txt, PrototypeConfig(budget=8, seed=42, prototype_norm="mean"))
    default = build_prototypes(img, txt, PrototypeConfig(budget=8, seed=42))
    for c, group in enumerate(mean_only.members):  # faiss on unit rows, prototype the raw mean
        if np.array_equal(mean_only.image_members[c], mean_only.text_members[c]):
            np.testing.assert_allclose(img[group].mean(0), mean_only.image_raw[c], rtol=1e-5, atol=1e-5)
    # raw-row clustering with protosynth's rescaled prototype: the members' mean raw norm
    for c, group in enumerate(raw_only.image_members):
        np.testing.assert_allclose(
            np.linalg.norm(raw_only.image_raw[c]), np.linalg.norm(img[group], axis=1).mean(), rtol=1e-5
        )
    same = [sorted(m.tolist()) for m in default.members] == [sorted(m.tolist()) for m in mean_only.members]
    assert same  # the prototype rule changes no membership
    with pytest.raises(ProtosynthError, match=r"^unknown kmeans 'lloyd': use faiss or minibatch"):
        build_prototypes(img, txt, PrototypeConfig(budget=8, kmeans="lloyd"))
    with pytest.raises(ProtosynthError, match=r"follow the PDS code, which has only mode=matched"):
        build_prototypes(img, txt, PrototypeConfig(budget=8, mode="joint", cluster_space="raw"))


def test_preset_fills_its_settings_and_refuses_a_conflict():
    cfg = apply_preset(DistillConfig(method="pds", budget=8, preset="pds-published"))
    assert (cfg.caption, cfg.text, cfg.render.init, cfg.render.clip_guidance) == ("prototype", "prototype", "noise", 0)
    pcfg = prototype_config(cfg)
    assert {name: getattr(pcfg, name) for name in PUBLISHED} == PUBLISHED
    assert prototype_config(DistillConfig(method="pds", budget=8)).is_default()
    with pytest.raises(ProtosynthError, match=r"^preset pds-published sets text to 'prototype'; got 'members'"):
        apply_preset(DistillConfig(method="pds", preset="pds-published", text="members"))
    with pytest.raises(ProtosynthError, match=r"^unknown preset 'pds'"):
        apply_preset(DistillConfig(method="pds", preset="pds"))
    assert apply_preset(DistillConfig(budget=8, preset="pds-published")).method == "pds"  # it renders, over the default
    with pytest.raises(ProtosynthError, match=r"renders matched prototypes: it needs the default mode=matched"):
        apply_preset(DistillConfig(preset="pds-published", mode="joint"))
