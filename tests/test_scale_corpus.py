"""The scale corpus generator (benchmarks.scale_corpus): the three formats load unchanged with the
same pairs, and the same pairs and seed give the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.scale_corpus import write_scale_corpus
from benchmarks.scale_index import scale_corpus
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import load_source


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_format_loads_the_same_pairs(tmp_path):
    made = write_scale_corpus(tmp_path / "c", 37, seed=3, shard_images=5)
    corpora = [load_source(CorpusSource(spec)) for spec in (made.jsonl, made.wds, made.parquet)]
    assert len(list((tmp_path / "c" / "wds").glob("*.tar"))) == -(-made.n_images // 5)
    first = corpora[0]
    assert first.n_pairs == 37 and first.n_images == made.n_images
    assert len(set(first.pair_caption)) > 20  # captions are drawn, not repeated
    for corpus in corpora[1:]:
        assert corpus.pair_caption == first.pair_caption
        assert np.array_equal(corpus.pair_image, first.pair_image)
        for i in range(first.n_images):
            assert np.array_equal(corpus.image_array(i), first.image_array(i))
    assert first.image_array(0).shape == (8, 8, 3)
    assert not np.array_equal(first.image_array(0), first.image_array(1))


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    a = write_scale_corpus(tmp_path / "a", 23, seed=1, shard_images=4)
    write_scale_corpus(tmp_path / "b", 23, seed=1, shard_images=4)
    write_scale_corpus(tmp_path / "other", 23, seed=2, shard_images=4)
    files = _files(tmp_path / "a")
    assert len(files) == 1 + a.n_images + 1 + -(-a.n_images // 4)  # manifest, PNGs, parquet, tars
    assert _files(tmp_path / "b") == files
    other = _files(tmp_path / "other")
    assert other != files


def test_a_smaller_corpus_is_a_prefix_of_a_larger_one(tmp_path):
    small = load_source(CorpusSource(write_scale_corpus(tmp_path / "s", 10, formats=("parquet",)).parquet))
    large = load_source(CorpusSource(write_scale_corpus(tmp_path / "l", 9000, formats=("parquet",)).parquet))
    assert large.n_images > 4096  # past the first random stream
    assert large.pair_caption[:10] == small.pair_caption
    assert np.array_equal(large.image_array(0), small.image_array(0))


def test_a_folder_already_written_is_refused(tmp_path):
    write_scale_corpus(tmp_path / "c", 3, formats=("jsonl",))
    with pytest.raises(FileExistsError):
        write_scale_corpus(tmp_path / "c", 3, formats=("jsonl",))


def test_scale_index_writes_its_corpus_once_and_refuses_an_unfinished_one(tmp_path):
    """``--corpus-dir``: a second run reuses the marked corpus; a folder without the mark (a killed
    write) is refused rather than measured short of pairs."""
    first = scale_corpus(6, "jsonl", tmp_path)
    again = scale_corpus(6, "jsonl", tmp_path)
    assert (first["reused"], again["reused"]) == (False, True)
    assert {k: v for k, v in again.items() if k != "reused"} == {k: v for k, v in first.items() if k != "reused"}
    assert load_source(CorpusSource(again["spec"])).n_pairs == 6
    (tmp_path / "corpus-6-jsonl" / "complete.json").unlink()
    with pytest.raises(SystemExit, match="unfinished corpus"):
        scale_corpus(6, "jsonl", tmp_path)
