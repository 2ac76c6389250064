"""The sharded corpus index (protosynth.corpora.index): the store's shard boundaries, each pair's
caption and a reference that reads its image, reads that touch only the shards holding the pairs
asked for, and builds that resume after a kill -9 to the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from benchmarks.scale_corpus import write_scale_corpus
from protosynth.cli.main import app
from protosynth.corpora.base import decode
from protosynth.corpora.index import ROW_GROUP, CorpusIndex, build_corpus_index, read_corpus_index
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import load_corpus, load_source
from protosynth.errors import ProtosynthError
from protosynth.sets.verify import verify
from protosynth.store import plan_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    made = write_scale_corpus(tmp_path_factory.mktemp("corpus") / "c", 41, seed=5, shard_images=6)
    return {"jsonl": made.jsonl, "wds": made.wds, "parquet": made.parquet}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _image_at(row: dict, kind: str, corpus) -> np.ndarray:
    """The image a row's reference names, read without the loaded corpus's reader."""
    if kind == "jsonl":
        image = decode(Path(row["file"]), row["where"], row["file"])
    elif kind == "wds":
        with open(row["file"], "rb") as fh:
            fh.seek(row["offset"])
            image = decode(fh.read(row["length"]), row["where"], row["file"])
    else:
        cell = pq.read_table(row["file"], columns=["jpg"]).column(0)[row["offset"]].as_py()
        image = decode(cell, row["where"], row["file"])
    return np.asarray(image)


@pytest.mark.parametrize("kind", ["jsonl", "wds", "parquet"])
def test_index_holds_every_pair_with_a_reference_to_its_image(specs, kind, tmp_path):
    corpus = load_source(CorpusSource(specs[kind]))
    build_corpus_index(corpus, tmp_path / "ix", shard_size=4)
    index = read_corpus_index(tmp_path / "ix")
    store = plan_shards(corpus.pair_image, corpus.n_images, 4)
    assert [(s["images"], s["pairs"]) for s in index["shards"]] == [(s["images"], s["pairs"]) for s in store]
    assert len(index["shards"]) == -(-corpus.n_images // 4) and index["complete"] is True
    rows = CorpusIndex(tmp_path / "ix").rows(np.arange(corpus.n_pairs)).to_pylist()
    assert [r["caption"] for r in rows] == corpus.pair_caption
    assert [r["image"] for r in rows] == corpus.pair_image.tolist()
    assert [r["key"] for r in rows] == [corpus.image_keys[i] for i in corpus.pair_image]
    for r in rows[::3]:
        assert np.array_equal(_image_at(r, kind, corpus), corpus.image_array(r["image"])), r["where"]


def test_a_world_corpus_is_indexed_without_files(tmp_path):
    corpus = load_corpus("shapes,n=12")
    build_corpus_index(corpus, tmp_path / "ix", shard_size=5)
    rows = CorpusIndex(tmp_path / "ix").rows([11, 0]).to_pylist()
    assert [r["caption"] for r in rows] == [corpus.pair_caption[11], corpus.pair_caption[0]]
    assert rows[0]["file"] is None and rows[0]["where"] == corpus.image_keys[corpus.pair_image[11]]


def test_reads_open_only_the_shards_holding_the_pairs(specs, tmp_path):
    corpus = load_source(CorpusSource(specs["parquet"]))
    folder = build_corpus_index(corpus, tmp_path / "ix", shard_size=3)
    index = read_corpus_index(folder)
    wanted = [corpus.n_pairs - 1, 7, 8, 0, 7]
    holding = {s["file"] for s in index["shards"] if any(s["pairs"][0] <= p < s["pairs"][1] for p in wanted)}
    assert 2 <= len(holding) < len(index["shards"]) - 3
    for s in index["shards"]:
        if s["file"] not in holding:
            (folder / s["file"]).unlink()
    reader = CorpusIndex(folder)
    assert reader.captions(wanted) == [corpus.pair_caption[p] for p in wanted]
    assert reader.captions([]) == []
    gone = next(s for s in index["shards"] if s["file"] not in holding)
    with pytest.raises(ProtosynthError, match=f"{gone['file']}: missing"):
        reader.captions([gone["pairs"][0]])
    with pytest.raises(ProtosynthError, match=f"pair {corpus.n_pairs} outside"):
        reader.captions([7, corpus.n_pairs])


def test_reads_across_row_groups_keep_the_order_asked(tmp_path):
    made = write_scale_corpus(tmp_path / "c", 2 * ROW_GROUP + 100, seed=1, formats=("parquet",))
    corpus = load_source(CorpusSource(made.parquet))
    folder = build_corpus_index(corpus, tmp_path / "ix", shard_size=corpus.n_images)
    wanted = np.random.default_rng(0).permutation(corpus.n_pairs)[:300]
    wanted = np.concatenate([wanted, [corpus.n_pairs - 1, 0, ROW_GROUP, ROW_GROUP - 1]])
    assert CorpusIndex(folder).captions(wanted) == [corpus.pair_caption[p] for p in wanted]


KILLED_BUILD = """
import os, signal, sys
from protosynth.corpus import load_corpus
from protosynth.corpora.index import build_corpus_index

def progress(done, todo):
    if done == 2:
        os.kill(os.getpid(), signal.SIGKILL)

build_corpus_index(load_corpus(sys.argv[1]), sys.argv[2], shard_size=4, progress=progress)
"""


def test_a_build_killed_by_sigkill_resumes_to_the_same_bytes(specs, tmp_path):
    corpus = load_source(CorpusSource(specs["wds"]))
    whole = build_corpus_index(corpus, tmp_path / "whole", shard_size=4)
    folder = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_BUILD), specs["wds"], str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert read_corpus_index(folder)["complete"] is False
    built = {p.name: p.stat().st_mtime_ns for p in folder.glob("pairs-*.parquet")}
    assert sorted(built) == ["pairs-000000.parquet", "pairs-000001.parquet"]
    seen = []
    build_corpus_index(corpus, folder, shard_size=4, progress=lambda done, todo: seen.append((done, todo)))
    n_shards = len(read_corpus_index(whole)["shards"])
    assert seen[-1] == (n_shards - 2, n_shards - 2)  # only the missing shards were built
    assert {name: (folder / name).stat().st_mtime_ns for name in built} == built
    assert _files(folder) == _files(whole)


def test_a_damaged_shard_is_reported_and_rebuilt_alone(specs, tmp_path):
    corpus = load_source(CorpusSource(specs["jsonl"]))
    folder = build_corpus_index(corpus, tmp_path / "ix", shard_size=4)
    before = _files(folder)
    report = verify(folder)
    assert report.kind == "corpus index" and report.checked == len(before) - 1 and not report.problems
    damaged = folder / "pairs-000002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-9])
    assert [(p.path, p.what) for p in verify(folder).problems] == [
        (damaged, "sha256 differs from index.json (the file changed after it was written)")
    ]
    r = CliRunner().invoke(app, ["verify", str(folder)])
    assert r.exit_code == 2 and r.stderr == f"error: {folder}: 1 problem(s) in this corpus index\n"
    with pytest.raises(ProtosynthError, match="pairs-000002.parquet: sha256 differs"):
        CorpusIndex(folder).captions([read_corpus_index(folder)["shards"][2]["pairs"][0]])
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p != damaged and p.name != "index.json"}
    build_corpus_index(corpus, folder, shard_size=4)
    assert {name: (folder / name).stat().st_mtime_ns for name in stamps} == stamps
    assert _files(folder) == before
    r = CliRunner().invoke(app, ["verify", str(folder)])
    assert r.exit_code == 0 and r.stdout == f"ok: {len(before) - 1} files checked\n", r.output


def test_an_unfinished_index_is_reported_by_verify(specs, tmp_path):
    folder = tmp_path / "ix"
    build_corpus_index(load_source(CorpusSource(specs["jsonl"])), folder, shard_size=4)
    index = json.loads((folder / "index.json").read_text())
    index["complete"] = False
    (folder / "index.json").write_text(json.dumps(index))
    assert [p.what for p in verify(folder).problems] == ["unfinished corpus index (not complete)"]
    with pytest.raises(ProtosynthError, match="no complete corpus index"):
        CorpusIndex(folder)


def test_folders_holding_something_else_are_refused(specs, tmp_path):
    jsonl, wds = (load_source(CorpusSource(specs[k])) for k in ("jsonl", "wds"))
    folder = build_corpus_index(jsonl, tmp_path / "ix", shard_size=4)
    with pytest.raises(ProtosynthError, match="holds the index of another corpus"):
        build_corpus_index(wds, folder, shard_size=4)
    with pytest.raises(ProtosynthError, match="shard_size 4, not 5"):
        build_corpus_index(jsonl, folder, shard_size=5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(ProtosynthError, match="not empty and holds no corpus index.json"):
        build_corpus_index(jsonl, tmp_path / "other", shard_size=4)
    with pytest.raises(ProtosynthError, match="shard_size must be at least 1, got 0"):
        build_corpus_index(jsonl, tmp_path / "new", shard_size=0)
    assert not (tmp_path / "new").exists()
