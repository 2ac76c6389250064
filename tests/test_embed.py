"""Stage 1, embed: the sharded store (layout, values, reuse, resume, fp16, workers) and ``protosynth embed``.

Real classes throughout: the shipped small CLIP, the world and JSONL corpora, torch DataLoader
workers, and a real ``python -m protosynth.cli.main embed`` killed with SIGKILL mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import embed_cmd, kill_at_first_shard, store_bytes
from typer.testing import CliRunner

from protosynth import embed as embed_mod
from protosynth.cli.main import app
from protosynth.corpora.index import CORPUS_INDEX
from protosynth.corpus import cache_dir, load_corpus
from protosynth.embed import EmbedConfig, cache_key, embed_corpus, open_embeddings
from protosynth.errors import ProtosynthError
from protosynth.models.clip import load_clip
from protosynth.util.files import sha256_file

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "shapes,n=40"


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS)


def cfg(out: Path | None, **kw) -> EmbedConfig:
    return EmbedConfig(out=out, **{"shard_size": 16, "batch_size": 8, "num_workers": 0, **kw})


files = store_bytes  # a store's bytes, its corpus index included


def test_store_layout_index_and_values(tmp_path, corpus, clip):
    emb = embed_corpus(corpus, clip, cfg(tmp_path / "store"))
    folder = tmp_path / "store"
    assert emb.cache_path == folder and not emb.from_cache
    index = json.loads((folder / "index.json").read_text())
    assert list(index)[-1] == "complete" and index["complete"] is True
    assert (index["n_images"], index["n_pairs"], index["shard_size"], index["dtype"]) == (40, 200, 16, "float32")
    assert index["corpus"]["fingerprint"] == corpus.fingerprint
    assert index["clip"] == {"spec": "default", "space": clip.space} and index["dim"] == clip.embed_dim
    assert [s["images"] for s in index["shards"]] == [[0, 16], [16, 32], [32, 40]]
    assert [s["pairs"] for s in index["shards"]] == [[0, 80], [80, 160], [160, 200]]
    names = {"index.json", "pair_image.npy", "cost.json", CORPUS_INDEX}  # the corpus index's folder beside the shards
    names |= {s[f"{k}_file"] for s in index["shards"] for k in ("image", "text")}
    assert {p.name for p in folder.iterdir()} == names  # no temporary file left
    cost = json.loads((folder / "cost.json").read_text())
    assert cost["shards"] == 3 and cost["compute_seconds"] > 0
    assert emb.compute_seconds == cost["compute_seconds"]
    assert embed_corpus(corpus, clip, cfg(folder)).compute_seconds == cost["compute_seconds"]  # also when cached
    for s in index["shards"]:
        for k in ("image", "text"):
            assert sha256_file(folder / s[f"{k}_file"]) == s[f"{k}_sha256"]
    assert open_embeddings(folder).verify() == []
    # values: the encoder's own embeddings; the image row of pair p is image pair_image[p]
    want_img = clip.encode_images([corpus.load_image(i) for i in range(corpus.n_images)])
    want_txt = clip.encode_texts(corpus.pair_caption)
    torch.testing.assert_close(emb.image, want_img[torch.from_numpy(corpus.pair_image)], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.text, want_txt, atol=1e-5, rtol=0)
    assert emb.image.dtype == emb.text.dtype == torch.float32 and emb.image.shape == (200, clip.embed_dim)
    store = open_embeddings(folder)
    assert isinstance(store.images._part(0), np.memmap)  # read through memory maps, not loaded
    np.testing.assert_allclose(np.asarray(store.images), want_img.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(store.image_pairs.take([199, 3, 81]), emb.image.numpy()[[199, 3, 81]])


def test_default_store_is_in_the_cache_and_reused(corpus, clip):
    first = embed_corpus(corpus, clip, EmbedConfig(shard_size=16, num_workers=0))
    assert first.cache_path == cache_dir() / "embeddings" / cache_key(corpus, clip)
    again = embed_corpus(corpus, clip, EmbedConfig(shard_size=7, num_workers=0))  # any shard size reads it
    assert again.from_cache and again.cache_path == first.cache_path
    assert torch.equal(again.image, first.image) and torch.equal(again.text, first.text)
    memory = embed_corpus(corpus, clip, EmbedConfig(use_cache=False, shard_size=16, num_workers=0))
    assert memory.cache_path is None and not memory.from_cache
    assert torch.equal(memory.image, first.image) and torch.equal(memory.text, first.text)


def test_workers_and_a_file_backed_corpus_give_identical_bytes(tmp_path, jsonl_corpus, clip):
    corpus = load_corpus(str(jsonl_corpus))
    embed_corpus(corpus, clip, cfg(tmp_path / "w0", shard_size=5, batch_size=3))
    embed_corpus(corpus, clip, cfg(tmp_path / "w2", shard_size=5, batch_size=3, num_workers=2))
    assert files(tmp_path / "w0") == files(tmp_path / "w2")


def test_resume_computes_only_missing_shards(tmp_path, corpus, clip):
    folder = tmp_path / "store"
    embed_corpus(corpus, clip, cfg(folder))
    before = files(folder)
    index = json.loads((folder / "index.json").read_text())
    # the state a kill leaves: the first index (unfinished), shard 1 never written, shard 2 half written
    index["complete"] = False
    for s in index["shards"]:
        s.pop("image_sha256"), s.pop("text_sha256")
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "image-000001.npy").unlink()
    (folder / "text-000001.npy").unlink()
    (folder / "image-000002.npy").unlink()
    (folder / ".text-000002.npy.999999999-0-0123abcd.tmp").write_bytes(b"partial")  # a dead writer's temp file
    kept = (folder / "image-000000.npy").stat()
    emb = embed_corpus(corpus, clip, cfg(folder))
    assert not emb.from_cache
    after = (folder / "image-000000.npy").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # shard 0 was not redone
    assert files(folder) == before  # byte-identical, index included; the stale temp file is gone


def test_fp16_store(tmp_path, corpus, clip):
    emb32 = embed_corpus(corpus, clip, cfg(tmp_path / "f32"))
    emb16 = embed_corpus(corpus, clip, cfg(tmp_path / "f16", fp16=True))
    assert np.load(tmp_path / "f16" / "image-000000.npy").dtype == np.float16
    assert json.loads((tmp_path / "f16" / "index.json").read_text())["dtype"] == "float16"
    assert emb16.image.dtype == emb16.text.dtype == torch.float32
    torch.testing.assert_close(emb16.image, emb32.image, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(emb16.text, emb32.text, rtol=2e-3, atol=2e-3)
    default = EmbedConfig(fp16=True, shard_size=16, num_workers=0)
    assert embed_corpus(corpus, clip, default).cache_path.name == cache_key(corpus, clip) + "-fp16"


def test_bad_input_is_one_clear_error(tmp_path, corpus, clip):
    for kw, name in (
        ({"shard_size": 0}, "shard_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ):
        with pytest.raises(ProtosynthError, match=f"^{name} must be at least"):
            embed_corpus(corpus, clip, cfg(tmp_path / "x", **kw))
    assert not (tmp_path / "x").exists()
    embed_corpus(corpus, clip, cfg(tmp_path / "store"))
    with pytest.raises(ProtosynthError, match="another corpus"):
        embed_corpus(load_corpus("shapes,n=20"), clip, cfg(tmp_path / "store"))
    with pytest.raises(ProtosynthError, match="float32 embeddings.*drop fp16=True"):
        embed_corpus(corpus, clip, cfg(tmp_path / "store", fp16=True))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ProtosynthError, match="not empty"):
        embed_corpus(corpus, clip, cfg(tmp_path / "other"))
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    (tmp_path / "store" / "index.json").write_text(json.dumps(dict(index, complete=False)))
    with pytest.raises(ProtosynthError, match="shard_size 16"):
        embed_corpus(corpus, clip, cfg(tmp_path / "store", shard_size=8))


def test_missing_image_in_a_worker_is_one_line(tmp_path, jsonl_corpus, clip):
    corpus = load_corpus(str(jsonl_corpus))
    (jsonl_corpus.parent / "img" / "7.png").unlink()
    with pytest.raises(ProtosynthError) as err:
        embed_corpus(corpus, clip, cfg(tmp_path / "s", num_workers=2))
    assert "image file not found" in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_shard_size_is_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["embed", "--corpus", CORPUS, "--shard-size", "0", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == ["error: --shard-size must be at least 1, got 0"]


def _embed_cmd(out: Path, workers: int) -> list[str]:  # torch threads: 2 here as in conftest
    return embed_cmd(out, "shapes,n=120", 6, "--workers", str(workers))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")


@pytest.mark.slow  # three embed processes, one killed
def test_cli_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL ``protosynth embed`` once some but not all shards exist, rerun it, compare bytes."""
    load_corpus("shapes,n=120")  # the world is generated once, before the clock matters
    out, clean = tmp_path / "resumed", tmp_path / "clean"
    n_shards = 20
    proc = subprocess.Popen(
        _embed_cmd(out, 2),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_at_first_shard(proc, out, 120, 0.005)  # the DataLoader workers too
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] is False and len(index["shards"]) == n_shards
    assert 1 <= len(list(out.glob("image-*.npy"))) < n_shards

    # the rerun: the same command line, in this process (the killed one was the child that mattered;
    # a second interpreter start-up and import here only cost time); torch threads 2 as in the child
    resumed = CliRunner().invoke(app, _embed_cmd(out, 2)[3:])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.strip() == str(out)
    # the uninterrupted run, in this process (same thread count) and without workers
    embed_corpus(
        load_corpus("shapes,n=120"),
        load_clip("default"),
        EmbedConfig(out=clean, shard_size=6, batch_size=6, num_workers=0),
    )
    assert files(out) == files(clean)  # every shard, pair_image.npy and index.json, byte for byte
    a, b = open_embeddings(out), open_embeddings(clean)
    assert np.array_equal(np.asarray(a.image_pairs), np.asarray(b.image_pairs))
    assert np.array_equal(np.asarray(a.texts), np.asarray(b.texts))


def test_distill_fp16_reuses_the_store_embed_fp16_wrote(tmp_path, monkeypatch):
    """``embed --fp16`` then ``distill --fp16`` on the same corpus and CLIP: one cache key and dtype,
    so distill encodes nothing (``_encode_shards`` is never asked for a shard); without ``--fp16``
    it reads the float32 store, which is not there yet, and embeds."""
    corpus = "shapes,n=24"  # not CORPUS: this test's stores start empty
    r = CliRunner().invoke(app, ["embed", "--corpus", corpus, "--fp16", "--workers", "0"])
    assert r.exit_code == 0, r.output
    store = Path(r.stdout.strip())
    assert store.name.endswith("-fp16") and json.loads((store / "index.json").read_text())["dtype"] == "float16"
    before = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    encoded = []
    real = embed_mod._encode_shards
    monkeypatch.setattr(
        embed_mod,
        "_encode_shards",
        lambda c, e, cfg, shards, write, engine: (encoded.append(len(shards)), real(c, e, cfg, shards, write, engine)),
    )
    manifests = {}
    for flag in (["--fp16"], []):
        out = tmp_path / ("f16" if flag else "f32")
        r = CliRunner().invoke(
            app,
            [
                "distill",
                "--method",
                "pds",
                "--corpus",
                corpus,
                "--budget",
                "2",
                "--steps",
                "1",
                "--out",
                str(out),
                *flag,
            ],
        )
        assert r.exit_code == 0, r.output
        manifests[bool(flag)] = json.loads((out / "manifest.json").read_text())
    assert encoded == [1]  # only the float32 run embedded (its one shard)
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == before
    f16, f32 = manifests[True], manifests[False]
    assert f16["embeddings_from_cache"] is True and f16["embeddings_dtype"] == "float16"
    assert f16["settings"]["embed"]["fp16"] is True
    assert f32["embeddings_from_cache"] is False and f32["embeddings_dtype"] == "float32"


def test_two_batch_sizes_never_share_a_store(tmp_path, corpus, clip):
    """A batch's matrix products sum in an order its size decides, so the last bits of a row can
    depend on the batch size (measured with the shipped CLIP, 2 threads: batch 1 against 256 moved
    every row by up to 1.9e-6, batch 3 0.1% of the text rows by up to 8.3e-7; docs/scale.md). A
    store is therefore keyed by its batch size and records it, and a folder holding another batch
    size's store is refused."""
    default = embed_corpus(corpus, clip, EmbedConfig(shard_size=16, num_workers=0))
    other = embed_corpus(corpus, clip, EmbedConfig(shard_size=16, batch_size=8, num_workers=0))
    assert not other.from_cache and other.cache_path != default.cache_path
    assert cache_key(corpus, clip, 8) != cache_key(corpus, clip) == cache_key(corpus, clip, 256)
    assert other.cache_path.name == cache_key(corpus, clip, 8)
    for emb, size in ((default, 256), (other, 8)):
        assert json.loads((emb.cache_path / "index.json").read_text())["batch_size"] == size
    embed_corpus(corpus, clip, cfg(tmp_path / "store", batch_size=8))
    with pytest.raises(ProtosynthError, match=r"made with batch_size 8, not 3") as exc:
        embed_corpus(corpus, clip, cfg(tmp_path / "store", batch_size=3))
    assert "\n" not in str(exc.value)
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    del index["batch_size"]  # a store written before batch sizes were recorded
    (tmp_path / "store" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ProtosynthError, match=r"an unrecorded batch size"):
        embed_corpus(corpus, clip, cfg(tmp_path / "store", batch_size=8))
