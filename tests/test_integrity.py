"""A set you can trust: a distilled set is checked against its manifest where it is read for
evaluation, a damaged embedding shard is recomputed, and ``protosynth verify`` checks either.

Real files throughout: a random coreset of the world written by ``build_coreset`` (the shipped
CLIP, nothing trained), damaged on disk the way a user or a disk would.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import store_bytes
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.corpus import load_corpus
from protosynth.embed import EmbedConfig, embed_corpus, open_embeddings
from protosynth.errors import ProtosynthError
from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.sets.distilled import load_distilled
from protosynth.sets.verify import verify

CORPUS = "shapes,n=40"
TEST = "shapes:test,n=40"


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "random"
    return build_coreset(CoresetConfig(method="random", budget=6, corpus=CORPUS, out=out))


@pytest.fixture
def a_set(clean_set, tmp_path) -> Path:
    """A copy of the clean set, for a test to damage."""
    return Path(shutil.copytree(clean_set, tmp_path / "set"))


def eval_cfg() -> EvalConfig:
    return EvalConfig(protocol="small", test=TEST, repeats=1, epochs=1)


def test_missing_image_is_one_error_naming_the_set_and_file(a_set):
    (a_set / "images/000003.png").unlink()
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing") as err:
        evaluate([a_set], eval_cfg())
    assert str(a_set / "images/000003.png") in str(err.value) and "\n" not in str(err.value)
    ds = load_distilled(a_set)  # without verify the set opens; its image does not, with a clear error
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing"):
        ds.image(3)
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing"):
        ds[3]
    r = CliRunner().invoke(app, ["eval", "retrieval", str(a_set), "--test", TEST])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"error: {a_set / 'images/000003.png'}: missing; the set is not as it was written: remake it\n"


def test_corrupt_image_is_one_error_naming_the_set_and_file(a_set):
    (a_set / "images/000002.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ProtosynthError, match=r"set/images/000002\.png: cannot be decoded"):
        evaluate([a_set], eval_cfg())
    with pytest.raises(ProtosynthError, match=r"set/images/000002\.png: cannot be decoded"):
        load_distilled(a_set).image(2)


def test_a_set_changed_after_it_was_written_is_refused_by_evaluation(a_set, clean_set):
    lines = (a_set / "pairs.jsonl").read_text().splitlines()
    edited = json.loads(lines[1])
    edited["caption"] = "a caption typed in by hand"
    lines[1] = json.dumps(edited, sort_keys=True)
    (a_set / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtosynthError, match=r"set/pairs\.jsonl: differs from the manifest.*remake it"):
        evaluate([a_set], eval_cfg())
    shutil.copy(clean_set / "pairs.jsonl", a_set / "pairs.jsonl")
    shutil.copy(clean_set / "images/000000.png", a_set / "images/000004.png")  # a valid image, not its own
    with pytest.raises(ProtosynthError, match=r"set/images/000004\.png: differs from the manifest.*remake it"):
        evaluate([a_set], eval_cfg())
    (a_set / "embeddings.safetensors").unlink()
    with pytest.raises(ProtosynthError, match=r"set/embeddings\.safetensors: missing \(and 1 more files\)"):
        evaluate([a_set], eval_cfg())


# ---- the embedding store: index.json's sha256 checked when a store is opened for use ----


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS)


def store_cfg(out: Path) -> EmbedConfig:
    return EmbedConfig(out=out, shard_size=16, batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, corpus, clip) -> Path:
    out = tmp_path_factory.mktemp("stores") / "clean"
    embed_corpus(corpus, clip, store_cfg(out))
    return out


@pytest.fixture
def a_store(clean_store, tmp_path) -> Path:
    """A copy of the clean store (three shards of 16, 16 and 8 images), for a test to damage."""
    return Path(shutil.copytree(clean_store, tmp_path / "store"))


def overwrite_rows(path: Path, value: float | None = None) -> None:
    """Rewrite a shard in place with the same header and size: every value ``value``, or (None) one
    value nudged by one float32 step, the quietest corruption there is."""
    arr = np.load(path)
    if value is None:
        arr.flat[5] = np.nextafter(arr.flat[5], np.float32(np.inf))
    else:
        arr[:] = value
    size = path.stat().st_size
    np.save(path, arr)
    assert path.stat().st_size == size


def differing_files(a: Path, b: Path) -> list[str]:
    """Paths of the files that differ between two stores (their corpus indexes included), byte for
    byte (cost.json aside: it holds seconds)."""
    files_a, files_b = store_bytes(a), store_bytes(b)
    return [n for n in sorted(files_a.keys() | files_b.keys()) if files_a.get(n) != files_b.get(n)]


def test_damaged_shards_are_recomputed_and_the_store_equals_a_clean_one(a_store, clean_store, corpus, clip, caplog):
    overwrite_rows(a_store / "text-000001.npy", np.nan)  # same size: only the hash tells
    overwrite_rows(a_store / "image-000002.npy", np.inf)
    overwrite_rows(a_store / "image-000001.npy")  # finite, one ulp
    with open(a_store / "text-000000.npy", "r+b") as fh:  # truncated
        fh.truncate(1000)
    kept = (a_store / "text-000002.npy").stat()
    with caplog.at_level(logging.WARNING, logger="protosynth"):
        emb = embed_corpus(corpus, clip, store_cfg(a_store))
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("text-000001.npy", "image-000002.npy", "image-000001.npy", "text-000000.npy"):
        assert f"{a_store / name}:" in warned, warned
    assert "recomput" in warned and not emb.from_cache
    assert differing_files(a_store, clean_store) == []  # byte for byte, index.json included
    assert np.isfinite(np.asarray(emb.text_rows)).all()
    now = (a_store / "text-000002.npy").stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # an intact file is not rewritten
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="protosynth"):
        assert embed_corpus(corpus, clip, store_cfg(a_store)).from_cache
    assert caplog.records == []


def test_missing_shard_or_pair_image_of_a_complete_store_is_recomputed(a_store, clean_store, corpus, clip):
    (a_store / "image-000001.npy").unlink()
    overwrite_rows(a_store / "pair_image.npy", 0)
    embed_corpus(corpus, clip, store_cfg(a_store))
    assert differing_files(a_store, clean_store) == []


def test_reading_a_damaged_store_directly_is_one_clear_error(a_store):
    overwrite_rows(a_store / "text-000001.npy", np.nan)
    with pytest.raises(ProtosynthError, match=r"store/text-000001\.npy: sha256 differs from index\.json") as err:
        open_embeddings(a_store)
    assert "\n" not in str(err.value) and "embed" in str(err.value)  # says how to recover


# ---- protosynth verify DIR ----


def verify_cli(folder: Path):
    return CliRunner().invoke(app, ["verify", str(folder)])


def test_verify_a_clean_set_and_a_damaged_one(a_set, clean_set):
    listed = json.loads((clean_set / "manifest.json").read_text())["files"]
    # six images, pairs.jsonl, metadata.jsonl, README.md, embeddings.safetensors, preview.png, member_images.json
    assert len(listed) == 12
    report = verify(a_set)
    assert (report.kind, report.checked, report.problems) == ("distilled set", 12, [])
    r = verify_cli(a_set)
    assert r.exit_code == 0 and r.stdout == "ok: 12 files checked\n", r.output
    (a_set / "images/000003.png").unlink()
    (a_set / "images/000002.png").write_bytes(b"\x89PNG not really")
    (a_set / "pairs.jsonl").write_text((clean_set / "pairs.jsonl").read_text().replace('"index": 1,', '"index": 7,'))
    assert [str(p) for p in verify(a_set).problems] == [
        f"{a_set / 'images/000002.png'}: cannot be decoded (not an image format PIL reads)",
        f"{a_set / 'images/000003.png'}: missing",
        f"{a_set / 'pairs.jsonl'}: differs from the manifest (its sha256 changed after the set was written)",
    ]
    r = verify_cli(a_set)
    assert r.exit_code == 2
    assert r.stdout.splitlines() == [str(p) for p in verify(a_set).problems]
    assert r.stderr == f"error: {a_set}: 3 problem(s) in this distilled set\n"


def test_verify_a_store_then_embed_repairs_it(a_store, corpus, clip, caplog):
    r = verify_cli(a_store)
    assert r.exit_code == 0 and r.stdout == "ok: 7 files checked\n", r.output  # pair_image.npy and 3 x 2 shards
    overwrite_rows(a_store / "image-000001.npy", np.nan)
    with open(a_store / "text-000002.npy", "r+b") as fh:
        fh.truncate(200)
    r = verify_cli(a_store)
    assert r.exit_code == 2 and r.stderr == f"error: {a_store}: 2 problem(s) in this embedding store\n"
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == (
        f"{a_store / 'image-000001.npy'}: sha256 differs from index.json (the file changed after it was written)"
    )
    assert lines[1].startswith(f"{a_store / 'text-000002.npy'}: truncated or unreadable (")
    r = CliRunner().invoke(
        app, ["embed", "--corpus", CORPUS, "--out", str(a_store), "--workers", "0", "--batch-size", "8"]
    )
    assert r.exit_code == 0, r.output
    assert verify_cli(a_store).stdout == "ok: 7 files checked\n"
    index = json.loads((a_store / "index.json").read_text())
    index["complete"] = False
    (a_store / "index.json").write_text(json.dumps(index))
    r = verify_cli(a_store)
    assert r.exit_code == 2 and r.stdout == f"{a_store / 'index.json'}: unfinished store (not complete)\n"


def test_verify_refuses_a_folder_that_is_neither(tmp_path, clean_set):
    (tmp_path / "empty").mkdir()
    folder = tmp_path / "empty"
    r = verify_cli(folder)
    assert r.exit_code == 2 and r.stdout == ""
    assert (
        r.stderr
        == f"error: {folder}: neither a distilled set (no manifest.json) nor an embedding store (no index.json)\n"
    )
    r = verify_cli(tmp_path / "nowhere")
    assert r.exit_code == 2 and r.stdout == "" and r.stderr == f"error: {tmp_path / 'nowhere'}: no such folder\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "someone-else/2", "files": {}}))
    r = verify_cli(other)
    assert r.exit_code == 2 and "not a protosynth set manifest" in r.stderr
    with pytest.raises(ProtosynthError, match="neither a distilled set"):
        verify(tmp_path / "empty")
