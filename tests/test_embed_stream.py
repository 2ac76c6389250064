"""``embed`` streams a JSONL manifest, parquet files or webdataset tar shards (issue 32): the store and
its corpus index are built from windows of a few shards (``corpora.window.windows``), never from the
corpus loaded whole, and every file is byte-identical to what the whole load writes; a resumed run
computes only the missing shards, and a corpus changed after the scan completes nothing."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import store_bytes
from PIL import Image

import protosynth.corpora.base as base
import protosynth.corpora.jsonl as jsonl
import protosynth.corpora.parquet as parquet
import protosynth.corpora.webdataset as webdataset
import protosynth.corpora.window as window_module
import protosynth.corpus as corpus_module
from protosynth.corpora.index import CORPUS_INDEX, read_corpus_index
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import load_corpus, scan_source
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.errors import ProtosynthError
from protosynth.store import PAIR_IMAGE, plan_shards, read_index

pytest.importorskip("pyarrow", reason="the corpus index needs pyarrow (the corpora extra)")

STREAMED_FORMATS = ("parquet", "tar")


@pytest.fixture
def scattered(tmp_path):
    """17 world images, both line forms, a blank line, and images named again far from their first
    line (image 0 on the last line, image 7 after image 12): shards wait for their last line."""
    split = generate_split(WorldConfig(n_train=17), "train")
    (tmp_path / "img").mkdir()
    lines = []
    for i, (im, caps) in enumerate(zip(split.images, split.captions)):
        Image.fromarray(im).save(tmp_path / "img" / f"{i}.png")
        head, tail = caps[:2], caps[2:]
        lines.append({"image": f"img/{i}.png", "captions": head})
        if i == 12:
            lines.append({"image": "img/7.png", "caption": "seven again"})
        if i % 3 == 0:
            lines.extend({"image": f"img/{i}.png", "caption": c} for c in tail)
        else:
            lines.append({"image": f"img/{i}.png", "captions": tail})
    lines.append({"image": "img/0.png", "caption": "zero, last line"})
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines[:5]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[5:]))
    return path


def refuse_whole_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was loaded whole")

    monkeypatch.setattr(corpus_module, "load_jsonl", refuse)


CFG = dict(shard_size=3, batch_size=4, num_workers=0)


@pytest.mark.parametrize("per_window", [1, 2, 8])
def test_a_streamed_embed_writes_the_whole_loads_bytes(per_window, scattered, clip, tmp_path, monkeypatch):
    whole = embed_corpus(load_corpus(str(scattered)), clip, EmbedConfig(out=tmp_path / "whole", **CFG))
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", per_window)
    summary = scan_source(CorpusSource(str(scattered)))
    refuse_whole_loads(monkeypatch)
    streamed = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "streamed", **CFG))
    assert summary.loaded is None and len(read_index(streamed.cache_path)["shards"]) == 6
    assert store_bytes(streamed.cache_path) == store_bytes(whole.cache_path)


@pytest.mark.parametrize("fmt", ["jsonl", *STREAMED_FORMATS])
def test_a_complete_store_replaces_the_summarys_pair_image(fmt, clip, tmp_path, monkeypatch, request):
    """Once the store is complete the summary holds the store's memory-mapped pair_image (the one the
    image rows read), not its scan's copy; its windows then read that one (a second store written
    from the same summary has the whole load's bytes)."""
    spec = str(request.getfixturevalue("scattered")) if fmt == "jsonl" else request.getfixturevalue(f"{fmt}_corpus")
    whole = embed_corpus(load_corpus(spec), clip, EmbedConfig(out=tmp_path / "whole", **CFG))
    summary = scan_source(CorpusSource(spec))
    scanned = summary.pair_image.copy()
    first = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "first", **CFG))
    assert isinstance(summary.pair_image, np.memmap) and summary.pair_image is first.image_rows.row_map
    assert np.array_equal(summary.pair_image, scanned)
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", 2)
    second = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "second", **CFG))
    assert summary.loaded is None and summary.pair_image is second.image_rows.row_map
    assert store_bytes(second.cache_path) == store_bytes(whole.cache_path)


def test_a_store_of_other_pairs_is_not_shared(scattered, clip, tmp_path):
    summary = scan_source(CorpusSource(str(scattered)))
    emb = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "s", **CFG))
    other = scan_source(CorpusSource(str(scattered)))
    other.pair_image = other.pair_image[::-1].copy()
    mine = other.pair_image
    assert not other.share_pairs(emb.image_rows.row_map, emb.cache_path / PAIR_IMAGE)
    assert other.pair_image is mine


def test_a_resumed_streamed_embed_computes_only_the_missing_shards(scattered, clip, tmp_path, monkeypatch):
    whole = embed_corpus(load_corpus(str(scattered)), clip, EmbedConfig(out=tmp_path / "whole", **CFG)).cache_path
    out = tmp_path / "resumed"
    embed_corpus(scan_source(CorpusSource(str(scattered))), clip, EmbedConfig(out=out, **CFG))
    gone = ["text-000001.npy", "image-000004.npy", f"{CORPUS_INDEX}/pairs-000000.parquet"]
    for name in gone:
        (out / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name not in {n.split("/")[-1] for n in gone}}
    kept = {p: t for p, t in kept.items() if p.suffix in (".npy", ".parquet")}
    refuse_whole_loads(monkeypatch)
    embed_corpus(scan_source(CorpusSource(str(scattered))), clip, EmbedConfig(out=out, **CFG))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # only the three missing files were written
    assert store_bytes(out) == store_bytes(whole)


def test_a_manifest_changed_after_the_scan_completes_nothing(scattered, clip, tmp_path):
    summary = scan_source(CorpusSource(str(scattered)))
    with scattered.open("a") as fh:
        fh.write('\n{"image": "img/3.png", "caption": "added after the scan"}\n')
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "s", **CFG))
    assert read_index(tmp_path / "s")["complete"] is False
    assert read_corpus_index(tmp_path / "s" / CORPUS_INDEX)["complete"] is False


@pytest.fixture
def scattered_bad(scattered):
    """``scattered`` with image 3 truncated and image 7 (named again after image 12) missing: the two
    images ``--skip-bad`` drops, one of them with a caption far from its first line."""
    img = scattered.parent / "img"
    (img / "3.png").write_bytes((img / "3.png").read_bytes()[:60])
    (img / "7.png").unlink()
    return scattered


def skip_bad_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skip_bad skipped" in r.getMessage()]


# each format's corpus with images --skip-bad drops (the fixture), its whole load (which must not run),
# its image source (whose reads are counted), how many images it checks and how many it keeps
SKIP_BAD = {
    "jsonl": ("scattered_bad", "load_jsonl", base.FileImages, 17, 15),
    "parquet": ("parquet_bad", "load_parquet", parquet.ParquetImages, 16, 14),  # row 11's null image unread
    "webdataset": ("tar_bad", "load_webdataset", webdataset.TarImages, 16, 14),  # sample 10 has no image
}


@pytest.mark.parametrize("fmt", SKIP_BAD)
@pytest.mark.parametrize(("per_check", "per_window"), [(1, 1), (4, 2), (32768, 8)])
def test_a_streamed_skip_bad_embed_writes_the_whole_loads_bytes(
    fmt, per_check, per_window, clip, tmp_path, monkeypatch, caplog, request
):
    """With --skip-bad the corpus is checked in windows of ``CHECK_WINDOW`` images, each image
    decoded once, in the whole load's order, and streamed again for embed: the kept pairs, the
    fingerprint, the messages (rows or samples dropped without decoding first, as the load has them),
    the one warning and every byte of the store are the whole load's, which is never made."""
    fixture, loader, images, checked, kept = SKIP_BAD[fmt]
    spec = str(request.getfixturevalue(fixture))
    real, decoded = images.read, []

    def counted(self, key, min_side=None):
        decoded.append(key)
        return real(self, key, min_side)

    monkeypatch.setattr(images, "read", counted)
    with caplog.at_level(logging.WARNING):
        loaded = load_corpus(spec, skip_bad=True)
    warned, by_load = skip_bad_warnings(caplog), list(decoded)
    assert len(warned) == 1 and len(loaded.skipped) == 17 - kept and loaded.n_images == kept  # of 17 images
    assert len(by_load) == len(set(by_load)) == checked
    whole = embed_corpus(loaded, clip, EmbedConfig(out=tmp_path / "whole", **CFG))
    monkeypatch.setattr(base, "CHECK_WINDOW", per_check)
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", per_window)
    monkeypatch.setattr(corpus_module, loader, lambda *a, **k: pytest.fail("the corpus was loaded whole"))
    decoded.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = scan_source(CorpusSource(spec, skip_bad=True))
    assert decoded == by_load  # each image once, in the load's order
    assert skip_bad_warnings(caplog) == warned
    assert (summary.spec, summary.fingerprint, summary.n_images) == (loaded.spec, loaded.fingerprint, kept)
    assert (summary.skip_bad, summary.skipped) == (True, loaded.skipped)
    assert summary.pair_image.tolist() == loaded.pair_image.tolist()
    monkeypatch.setattr(images, "read", real)
    streamed = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "streamed", **CFG))
    assert summary.loaded is None and len(read_index(streamed.cache_path)["shards"]) == 5
    assert store_bytes(streamed.cache_path) == store_bytes(whole.cache_path)


def _touch(path: Path) -> None:
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


@pytest.mark.parametrize(
    ("fmt", "change"), [("jsonl", "line"), ("jsonl", "kept image"), ("parquet", "file"), ("webdataset", "shard")]
)
def test_a_skip_bad_corpus_changed_after_the_scan_completes_nothing(fmt, change, clip, tmp_path, request):
    spec = str(request.getfixturevalue(SKIP_BAD[fmt][0]))
    summary = scan_source(CorpusSource(spec, skip_bad=True))
    if change == "line":
        with open(spec, "a") as fh:
            fh.write('\n{"image": "img/3.png", "caption": "added after the scan"}\n')
    elif change == "kept image":
        _touch(Path(spec).parent / "img" / "12.png")
    else:  # the second file or shard, which holds dropped rows or samples: same bytes, a new mtime
        _touch(sorted(Path(spec).parent.glob(f"*.{'parquet' if fmt == 'parquet' else 'tar'}"))[-1])
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "s", **CFG))
    assert read_index(tmp_path / "s")["complete"] is False
    assert read_corpus_index(tmp_path / "s" / CORPUS_INDEX)["complete"] is False


def test_windows_of_an_ordered_manifest_come_before_its_end(jsonl_corpus, monkeypatch):
    """With each image's lines together, a window is handed over as soon as its last line is read:
    the captions held are a window's, not the corpus's."""
    got = jsonl.scan_manifest(jsonl_corpus)
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", 1)
    real, read = jsonl._rows, []

    def counted(path, hasher):
        for row in real(path, hasher):
            read.append(row[0])
            yield row

    monkeypatch.setattr(jsonl, "_rows", counted)
    shards = plan_shards(got.pair_image, got.n_images, 3)
    seen = [
        (run[0]["images"], len(read), len(window.pair_caption.items))
        for run, window in jsonl.windows(got, shards, {0, 1, 3})
    ]
    assert [s[0] for s in seen] == [[0, 3], [3, 6], [9, 12]]
    lines = len(jsonl_corpus.read_text().splitlines())
    assert seen[0][1] < seen[1][1] < seen[2][1] <= lines and seen[0][1] < lines / 2
    assert sum(s[2] for s in seen) == sum(b - a for a, b in (s["pairs"] for s in (shards[0], shards[1], shards[3])))


# ---------------------------------------------------------------- parquet


def test_parquet_files_changed_after_the_scan_complete_nothing(parquet_corpus, clip, tmp_path):
    summary = scan_source(CorpusSource(parquet_corpus))
    last = sorted(Path(parquet_corpus).parent.glob("*.parquet"))[-1]
    os.utime(last, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))  # same rows, a new mtime
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "s", **CFG))
    assert read_index(tmp_path / "s")["complete"] is False
    assert read_corpus_index(tmp_path / "s" / CORPUS_INDEX)["complete"] is False


def test_parquet_windows_come_before_the_last_file_is_read(parquet_corpus, monkeypatch):
    """A window is handed over as soon as its last row is read: the first file's shards before the
    second file is opened, with only a window's captions held."""
    got = parquet.scan_parquet(parquet_corpus)
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", 1)
    real, opened = parquet.open_parquet, []

    def counted(path):
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(parquet, "open_parquet", counted)
    shards = plan_shards(got.pair_image, got.n_images, 3)
    seen = [
        (run[0]["images"], list(opened), len(window.pair_caption.items))
        for run, window in window_module.windows(parquet.stream(got), shards, {0, 2, 5})
    ]
    assert [s[0] for s in seen] == [[0, 3], [6, 9], [15, 17]]
    assert seen[0][1] == seen[1][1] == ["part-0.parquet"] and seen[2][1] == ["part-0.parquet", "part-1.parquet"]
    assert sum(s[2] for s in seen) == sum(b - a for a, b in (shards[j]["pairs"] for j in (0, 2, 5)))


# ---------------------------------------------------------------- webdataset


# the streamed formats besides JSONL: (the corpus fixture, the whole load that must not run)
STREAMED = {"parquet": ("parquet_corpus", "load_parquet"), "webdataset": ("tar_corpus", "load_webdataset")}


def streamed_corpus(fmt, request, monkeypatch):
    """The format's corpus, and a function that makes its whole load an error from then on."""
    fixture, loader = STREAMED[fmt]

    def refuse_whole_loads():
        def refuse(*args, **kwargs):
            raise AssertionError("the corpus was loaded whole")

        monkeypatch.setattr(corpus_module, loader, refuse)

    return request.getfixturevalue(fixture), refuse_whole_loads


@pytest.mark.parametrize("fmt", STREAMED)
@pytest.mark.parametrize("per_window", [1, 2, 8])
def test_a_streamed_parquet_or_webdataset_embed_writes_the_whole_loads_bytes(
    fmt, per_window, clip, tmp_path, monkeypatch, request
):
    """Parquet: two files, row groups of 4; webdataset: two shards (9 and 8 samples); store shards of 3
    images: windows and shards cut across files, row groups and tar shards."""
    spec, refuse_whole_loads = streamed_corpus(fmt, request, monkeypatch)
    whole = embed_corpus(load_corpus(spec), clip, EmbedConfig(out=tmp_path / "whole", **CFG))
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", per_window)
    summary = scan_source(CorpusSource(spec))
    refuse_whole_loads()
    streamed = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "streamed", **CFG))
    assert summary.loaded is None and len(read_index(streamed.cache_path)["shards"]) == 6
    assert store_bytes(streamed.cache_path) == store_bytes(whole.cache_path)


@pytest.mark.parametrize("fmt", STREAMED)
def test_a_resumed_streamed_parquet_or_webdataset_embed_computes_only_the_missing_shards(
    fmt, clip, tmp_path, monkeypatch, request
):
    spec, refuse_whole_loads = streamed_corpus(fmt, request, monkeypatch)
    whole = embed_corpus(load_corpus(spec), clip, EmbedConfig(out=tmp_path / "whole", **CFG)).cache_path
    out = tmp_path / "resumed"
    embed_corpus(scan_source(CorpusSource(spec)), clip, EmbedConfig(out=out, **CFG))
    gone = ["image-000002.npy", "text-000005.npy", f"{CORPUS_INDEX}/pairs-000004.parquet"]
    for name in gone:
        (out / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".npy", ".parquet")}
    refuse_whole_loads()
    embed_corpus(scan_source(CorpusSource(spec)), clip, EmbedConfig(out=out, **CFG))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # only the three missing files were written
    assert store_bytes(out) == store_bytes(whole)


@pytest.mark.parametrize("change", ["mtime", "a sample added"])
def test_a_tar_changed_after_the_scan_completes_nothing(change, tar_corpus, clip, tmp_path):
    summary = scan_source(CorpusSource(tar_corpus))
    last = sorted(Path(tar_corpus).parent.glob("*.tar"))[-1]
    if change == "mtime":  # same members, a new mtime
        os.utime(last, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))
    else:  # the same shard with one more sample at its end
        Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
        (tmp_path / "p.txt").write_text("added after the scan")
        with tarfile.open(last, "a") as tar:
            tar.add(tmp_path / "p.png", arcname="part/0099.png")
            tar.add(tmp_path / "p.txt", arcname="part/0099.txt")
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "s", **CFG))
    assert read_index(tmp_path / "s")["complete"] is False
    assert read_corpus_index(tmp_path / "s" / CORPUS_INDEX)["complete"] is False


def test_webdataset_windows_come_before_the_last_shard_is_read(tar_corpus, monkeypatch):
    """A window is handed over once the tar shard holding its last image is read: the first
    shard's windows before the second is opened, with only a window's captions held."""
    got = webdataset.scan_webdataset(tar_corpus)
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", 1)
    real, opened = webdataset.index_shard, []

    def counted(path):
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(webdataset, "index_shard", counted)
    shards = plan_shards(got.pair_image, got.n_images, 3)
    seen = [
        (run[0]["images"], list(opened), len(window.pair_caption.items))
        for run, window in window_module.windows(webdataset.stream(got), shards, {0, 2, 5})
    ]
    assert [s[0] for s in seen] == [[0, 3], [6, 9], [15, 17]]
    assert seen[0][1] == seen[1][1] == ["train-000.tar"] and seen[2][1] == ["train-000.tar", "train-001.tar"]
    assert sum(s[2] for s in seen) == sum(b - a for a, b in (shards[j]["pairs"] for j in (0, 2, 5)))
