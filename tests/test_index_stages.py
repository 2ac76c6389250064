"""The stages read the corpus through the sharded corpus index ``embed`` writes beside the store
(``corpora.index``, ``corpora.rows``): the index has the store's shard boundaries, sets made through
it equal sets made from the corpus held in memory byte for byte (the world and a JSONL corpus,
``distill`` rendering and selecting, ``coreset``), and an indexing killed by SIGKILL resumes to the
same bytes, building only the shards it lacked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import store_bytes

import protosynth.corpus as corpus_module
import protosynth.embed as embed_module
from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.corpora.index import CORPUS_INDEX, CorpusIndex, build_corpus_index, read_corpus_index
from protosynth.corpora.parquet import ParquetRows
from protosynth.corpora.rows import CorpusRows
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.render import RenderConfig

pytest.importorskip("pyarrow", reason="the corpus index needs pyarrow (the corpora extra)")

REPO = Path(__file__).resolve().parents[1]
# manifest entries that say how this run went, not what it made
RUN_ENTRIES = ("seconds", "peak_memory_mb", "embeddings_from_cache", "embed_compute_seconds", "files")


def set_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a set, the manifest without its run entries (and so without the card's hash)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    files["manifest.json"] = json.dumps({k: v for k, v in manifest.items() if k not in RUN_ENTRIES}).encode()
    return files


def both_ways(make, tmp_path: Path, monkeypatch) -> tuple[dict, dict]:
    """``make(out)`` through the index ``embed`` writes beside the store, then as an install without
    pyarrow makes it (no index: the corpus held in memory is read), each into ``set`` of a folder of
    its own (the manifests record ``out``); both sets' bytes."""
    made = []
    for name in ("indexed", "memory"):
        (tmp_path / name).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / name)
        if name == "memory":
            monkeypatch.setattr(embed_module, "has_pyarrow", lambda: False)
        made.append(set_bytes(tmp_path / name / make(Path("set"))))
    return made[0], made[1]


def _distill(spec: str, method: str = "pds"):
    def make(out: Path) -> Path:
        if method == "select":
            return distill(DistillConfig(budget=6, corpus=spec, out=out, method=method))
        return distill(
            DistillConfig(method="pds", budget=6, corpus=spec, out=out, render=RenderConfig(steps=2, batch_size=3))
        )

    return make


def test_embed_writes_the_index_beside_the_store_with_its_shards(jsonl_corpus, clip, tmp_path):
    corpus = load_corpus(str(jsonl_corpus))
    emb = embed_corpus(corpus, clip, EmbedConfig(out=tmp_path / "s", shard_size=5, batch_size=4, num_workers=0))
    assert emb.corpus_index == tmp_path / "s" / CORPUS_INDEX
    store, index = json.loads((tmp_path / "s" / "index.json").read_text()), read_corpus_index(emb.corpus_index)
    assert index["complete"] and len(index["shards"]) == 3
    assert [(s["images"], s["pairs"]) for s in index["shards"]] == [(s["images"], s["pairs"]) for s in store["shards"]]
    reader, memory = CorpusIndex(emb.corpus_index), CorpusRows(corpus)
    pairs = np.random.default_rng(0).permutation(corpus.n_pairs)
    assert reader.captions(pairs) == memory.captions(pairs)
    assert reader.images(pairs).tolist() == memory.images(pairs).tolist()
    images = {0, 4, 5, 11}
    assert reader.pairs_of_images(images) == memory.pairs_of_images(images)
    assert reader.keys([11, 0, 5]) == memory.keys([11, 0, 5]) == ["img/11.png", "img/0.png", "img/5.png"]


@pytest.mark.parametrize("spec", ["shapes,n=40", "jsonl", "parquet", "tar"])
def test_distill_through_the_index_equals_distill_from_memory(
    spec, jsonl_corpus, parquet_corpus, tar_corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))
    spec = {"jsonl": str(jsonl_corpus), "parquet": parquet_corpus, "tar": tar_corpus}.get(spec, spec)
    indexed, in_memory = both_ways(_distill(spec), tmp_path, monkeypatch)
    assert len([name for name in indexed if name.startswith("images/")]) == 6
    assert list((tmp_path / "cache" / "embeddings").glob(f"*/{CORPUS_INDEX}/index.json"))  # the index was read
    assert indexed == in_memory


def test_select_and_coreset_through_the_index_equal_them_from_memory(jsonl_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))
    indexed, in_memory = both_ways(_distill(str(jsonl_corpus), "select"), tmp_path / "select", monkeypatch)
    assert indexed == in_memory
    monkeypatch.undo()
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))

    def coreset(out: Path) -> Path:
        return build_coreset(CoresetConfig(method="kcenter", budget=5, corpus=str(jsonl_corpus), out=out))

    indexed, in_memory = both_ways(coreset, tmp_path / "coreset", monkeypatch)
    first = json.loads(indexed["pairs.jsonl"].splitlines()[0])
    assert first["captions_image"] and first["members"] == [first["caption_pair"]]
    assert indexed == in_memory


def refuse_whole_loads(monkeypatch, loader: str = "load_jsonl") -> None:
    """Make loading a JSONL corpus (or, with ``loader="load_parquet"`` or ``"load_webdataset"``, a
    parquet or webdataset one) whole an error: what a run that must not load it would hit."""

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was loaded whole")

    monkeypatch.setattr(corpus_module, loader, refuse)


LOADERS = {"jsonl": "load_jsonl", "parquet": "load_parquet", "tar": "load_webdataset"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tar"])
@pytest.mark.parametrize("method", ["pds", "select", "coreset"])
def test_a_run_on_a_complete_store_loads_no_corpus_and_makes_the_same_set(
    method, fmt, jsonl_corpus, parquet_corpus, tar_corpus, tmp_path, monkeypatch
):
    """The first run embeds (streaming the manifest, the parquet files or the tar shards in
    windows); the second finds the store and its index from the streamed summary alone
    (``scan_source``), reads every caption, key and image from the index (a parquet row's or a tar
    member's image through the summary's ``read_ref``), and writes the first run's set byte for
    byte. Neither run loads the corpus whole."""
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))
    spec = {"jsonl": str(jsonl_corpus), "parquet": parquet_corpus, "tar": tar_corpus}[fmt]
    if method == "coreset":

        def make(out: Path) -> Path:
            return build_coreset(CoresetConfig(method="kcenter", budget=5, corpus=spec, out=out))
    else:
        make = _distill(spec, method)
    made, rows_read, read_row = [], [], ParquetRows.__call__
    members_read, read_tar_member = [], corpus_module.read_member

    def counted(self, file, row, length, where):
        rows_read.append(row)
        return read_row(self, file, row, length, where)

    def counted_member(file, offset, length, where):
        members_read.append(offset)
        return read_tar_member(file, offset, length, where)

    if fmt != "jsonl":  # the first run streams parquet and tar too: the whole load is refused from the start
        refuse_whole_loads(monkeypatch, LOADERS[fmt])
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        if name == "second":
            refuse_whole_loads(monkeypatch, LOADERS[fmt])
            monkeypatch.setattr(ParquetRows, "__call__", counted)
            monkeypatch.setattr(corpus_module, "read_member", counted_member)
        made.append(set_bytes(tmp_path / name / make(Path("set"))))
    with pytest.raises(AssertionError, match="loaded whole"):  # the refusal is real
        load_corpus(spec)
    assert made[0] == made[1]
    # the set's images came from the parquet rows or the tar members the index names
    assert (bool(rows_read), bool(members_read)) == (fmt == "parquet", fmt == "tar")


KILLED = """
import os, signal, sys
import protosynth.corpora.index as index
import protosynth.corpus as corpus_module
import protosynth.embed as embed_module
from protosynth.corpus import load_corpus
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.models.clip import load_clip

write, built = index.write_index_shard, []

def write_then_die(shard, corpus, folder):
    if len(built) == 2:  # a SIGKILL while the third shard of the index is being built
        os.kill(os.getpid(), signal.SIGKILL)
    built.append(shard["file"])
    return write(shard, corpus, folder)

index.write_index_shard = write_then_die
cfg = EmbedConfig(out=sys.argv[2], shard_size=3, batch_size=4, num_workers=0)
embed_corpus(load_corpus(sys.argv[1]), load_clip("default"), cfg)
"""


def test_indexing_killed_in_embed_resumes_to_the_same_bytes(jsonl_corpus, clip, tmp_path):
    """SIGKILL ``embed`` while it builds the index; the rerun builds only the missing shards (the
    two finished ones are not rewritten), and index and store equal an uninterrupted run's."""
    out = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED), str(jsonl_corpus), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    folder = out / CORPUS_INDEX
    assert read_corpus_index(folder)["complete"] is False
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("pairs-*.parquet")}
    assert sorted(kept) == ["pairs-000000.parquet", "pairs-000001.parquet"]
    corpus = load_corpus(str(jsonl_corpus))
    cfg = EmbedConfig(shard_size=3, batch_size=4, num_workers=0)
    embed_corpus(corpus, clip, EmbedConfig(**{**cfg.__dict__, "out": out}))
    assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept
    whole = embed_corpus(corpus, clip, EmbedConfig(**{**cfg.__dict__, "out": tmp_path / "whole"})).cache_path
    assert store_bytes(out) == store_bytes(whole)


def test_a_load_stats_each_image_once(jsonl_corpus, monkeypatch):
    """Without skip_bad, the existence check and the fingerprint share one stat per image (a corpus
    of millions of files is stat-bound); the index built from it stats none."""
    real, seen = os.stat, []

    def counting(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    corpus = load_corpus(str(jsonl_corpus))
    images = [p for p in seen if p.endswith(".png")]
    assert len(images) == len(set(images)) == corpus.n_images == 12
    seen.clear()
    build_corpus_index(corpus, jsonl_corpus.parent / "ix", shard_size=5)
    assert not [p for p in seen if p.endswith(".png")]
