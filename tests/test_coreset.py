"""Coreset baselines: each selection rule against a brute-force reading of its definition, the
written sets, determinism, forgetting counts from real training, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.coreset import (
    CoresetConfig,
    build_coreset,
    forgetting_counts,
    joint_features,
    select_forgetting,
    select_herding,
    select_kcenter,
    select_random,
)
from protosynth.corpus import load_corpus
from protosynth.errors import ProtosynthError
from protosynth.sets.distilled import load_distilled

CORPUS = "shapes,n=300"


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_joint_features_are_unit_norm():
    z = joint_features(np.random.rand(5, 3) * 7, np.random.rand(5, 4) * 0.1)
    assert z.shape == (5, 7) and np.allclose(np.linalg.norm(z, axis=1), 1.0)


def test_herding_matches_brute_force_greedy():
    z = unit_rows(60, 6, 0)
    mu, chosen = z.mean(0), []
    for _ in range(10):  # the definition: the running mean of the chosen rows closest to the full mean
        dist = [np.inf if i in chosen else np.linalg.norm(mu - z[chosen + [i]].mean(0)) for i in range(len(z))]
        chosen.append(int(np.argmin(dist)))
    assert select_herding(z, 10).tolist() == chosen


def test_kcenter_matches_brute_force_farthest_point():
    z = unit_rows(50, 4, 1)
    got = select_kcenter(z, 8, seed=3)
    assert got[0] == np.random.default_rng(3).integers(50)
    for t in range(1, 8):
        min_dist = [min(np.linalg.norm(z[i] - z[j]) for j in got[:t]) for i in range(50)]
        assert min_dist[got[t]] == pytest.approx(max(min_dist))
    assert len(set(got.tolist())) == 8


def test_random_is_seeded_and_without_replacement():
    a, b, c = select_random(1000, 100, 0), select_random(1000, 100, 0), select_random(1000, 100, 1)
    assert (a == b).all() and not (a == c).all() and len(set(a.tolist())) == 100


def test_forgetting_rule():
    counts = np.array([0, 3, np.inf, 1, 3, 0])
    most = select_forgetting(counts, 3, seed=0, keep="most").tolist()
    assert most[0] == 2 and set(most[1:]) == {1, 4}  # never learned first, then the most forgotten
    least = select_forgetting(counts, 2, seed=0, keep="least").tolist()
    assert set(least) == {0, 5}
    # ties broken by the seed
    orders = {tuple(select_forgetting(np.zeros(20), 5, seed=s, keep="most")) for s in range(5)}
    assert len(orders) > 1


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_written_coreset_is_real_pairs(method, quick_models, tmp_path):
    cfg = CoresetConfig(method=method, budget=15, corpus=CORPUS, clip=f"small:{quick_models}", out=tmp_path / "a")
    ds = load_distilled(build_coreset(cfg), verify=True)
    corpus = load_corpus(CORPUS)
    assert len(ds) == 15 and ds.manifest["method"] == f"coreset-{method}" and ds.manifest["budget"] == 15
    assert "rule" in ds.manifest and ds.metadata["text_space"] == ds.manifest["clip"]["space"]
    for i, pair in enumerate(ds.pairs):
        p = pair["members"][0]
        assert pair["members"] == [p] and pair["caption"] == corpus.pair_caption[p]
        assert np.array_equal(np.asarray(ds.image(i)), corpus.image_array(int(corpus.pair_image[p])))
    again = build_coreset(CoresetConfig(**{**cfg.__dict__, "out": tmp_path / "b"}))
    for name in ("pairs.jsonl", "embeddings.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (again / name).read_bytes()


@pytest.mark.slow  # trains the small protocol's model
def test_forgetting_counts_from_training(tmp_path, monkeypatch):
    """Counts come from training the small protocol's model (the shipped ps-nfnet + MiniLM); cached."""
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path))
    corpus = load_corpus("shapes,n=60")
    counts = forgetting_counts(corpus, "small", epochs=3, seed=0)
    assert counts.shape == (corpus.n_pairs,)
    finite = counts[np.isfinite(counts)]
    assert (finite >= 0).all() and (finite <= 1).all()  # at most one forgetting event in 3 presentations
    assert np.isfinite(counts).any()  # some pairs were learned
    cached = list((tmp_path / "forgetting").glob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.full(corpus.n_pairs, 7.0))  # the second call reads the cache
    assert (forgetting_counts(corpus, "small", epochs=3, seed=0) == 7.0).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(method="typical"), "^unknown method 'typical'"),
        (dict(budget=0), "^budget must be at least 1"),
        (dict(budget=10**6), "larger than the 1500 pairs"),
        (dict(keep="some"), "^keep 'some'"),
    ],
)
def test_bad_input(kw, message, quick_models, tmp_path):
    cfg = CoresetConfig(
        **{
            "method": "random",
            "budget": 5,
            "corpus": CORPUS,
            "clip": f"small:{quick_models}",
            "out": tmp_path / "o",
            **kw,
        }
    )
    with pytest.raises(ProtosynthError, match=message):
        build_coreset(cfg)
    assert not (tmp_path / "o").exists()


def test_out_not_empty_without_force(quick_models, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(ProtosynthError, match="exists and is not a distilled set"):
        build_coreset(CoresetConfig(budget=5, corpus=CORPUS, clip=f"small:{quick_models}", out=tmp_path / "o"))


def test_cli_coreset(quick_models, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "coreset",
            "--method",
            "kcenter",
            "--budget",
            "4",
            "--corpus",
            CORPUS,
            "--clip",
            f"small:{quick_models}",
            "--out",
            str(tmp_path / "k"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "k" / "manifest.json").read_text())["method"] == "coreset-kcenter"
    res = CliRunner().invoke(app, ["coreset", "--method", "nope", "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "unknown --method" in res.output
