"""The driver's streaming pass over a JSONL manifest (``corpus.scan_source``, ``corpora.jsonl.scan_jsonl``)
gives what the whole load gives of the corpus as a whole (fingerprint, pair -> image rows, counts,
spec) and the same one-line error for every bad input, without holding a caption; other corpora are
loaded whole, as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protosynth.corpora.base import Corpus
from protosynth.corpora.source import CorpusSource
from protosynth.corpora.summary import CorpusSummary, whole
from protosynth.corpus import load_corpus, scan_source
from protosynth.errors import ProtosynthError


def same_whole(spec: str) -> CorpusSummary | Corpus:
    scanned, loaded = scan_source(CorpusSource(spec)), load_corpus(spec)
    assert (scanned.spec, scanned.fingerprint) == (loaded.spec, loaded.fingerprint)
    assert (scanned.n_images, scanned.n_pairs) == (loaded.n_images, loaded.n_pairs)
    assert scanned.pair_image.tolist() == loaded.pair_image.tolist()
    return scanned


def test_a_jsonl_scan_has_the_loads_fingerprint_and_rows(jsonl_corpus):
    scanned = same_whole(str(jsonl_corpus))  # images named on several lines and with captions lists
    assert isinstance(scanned, CorpusSummary) and not hasattr(scanned, "captions")
    assert scanned.loaded is None
    assert whole(scanned).pair_caption == load_corpus(str(jsonl_corpus)).pair_caption


def test_the_world_is_loaded_whole_with_its_fingerprint():
    assert isinstance(same_whole("shapes,n=30"), Corpus)


def _image(folder: Path, name: str) -> str:
    (folder / "img").mkdir(exist_ok=True)
    Image.new("RGB", (4, 4), (len(name) * 20, 0, 0)).save(folder / "img" / name)
    return f"img/{name}"


def test_line_ends_blank_lines_a_bom_and_repeated_images(tmp_path):
    a, b = _image(tmp_path, "a.png"), _image(tmp_path, "bb.png")
    lines = [json.dumps({"image": a, "caption": "one"}), "", json.dumps({"image": b, "captions": ["x", "y"]})]
    lines += ["   ", json.dumps({"image": a, "caption": "two"}), json.dumps({"image": b, "caption": "z"})]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\n")
    scanned = same_whole(str(path))
    assert scanned.pair_image.tolist() == [0, 0, 1, 1, 1]  # a's two captions, then b's three


GOOD = {"image": "img/a.png", "caption": "a cat"}
BAD_MANIFESTS = {
    "not json": [GOOD, "{oops"],
    "no image": [GOOD, {"caption": "x"}],
    "empty caption": [GOOD, {"image": "img/a.png", "caption": "  "}],
    "no captions": [{"image": "img/a.png", "captions": []}],
    "no pairs": ["", "  "],
    "missing image": [GOOD, {"image": "img/none.png", "caption": "x"}],
    "directory": [GOOD, {"image": "img", "caption": "x"}],
    "line separator in a caption": [GOOD, '{"image": "img/a.png", "caption": "a\u2028b"}'],
}


@pytest.mark.parametrize("case", [*BAD_MANIFESTS, "utf-8 after bad json", "no manifest"])
def test_bad_input_is_the_loads_one_line_error(case, tmp_path):
    _image(tmp_path, "a.png")
    path = tmp_path / "c.jsonl"
    if case == "utf-8 after bad json":  # the whole file is decoded before any line is parsed
        path.write_bytes(b"{oops\n" + json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    elif case != "no manifest":
        rows = BAD_MANIFESTS[case]
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ProtosynthError) as loaded:
        load_corpus(str(path))
    with pytest.raises(ProtosynthError) as scanned:
        scan_source(CorpusSource(str(path)))
    assert str(scanned.value) == str(loaded.value)
    assert "\n" not in str(scanned.value)


def test_a_summary_refuses_a_corpus_that_changed_before_it_was_loaded(jsonl_corpus):
    scanned = scan_source(CorpusSource(str(jsonl_corpus)))
    with open(jsonl_corpus, "a") as fh:
        fh.write(json.dumps({"image": "img/0.png", "caption": "one more"}) + "\n")
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        whole(scanned)


def test_skip_bad_and_other_formats_load_whole(jsonl_corpus):
    assert isinstance(scan_source(CorpusSource(str(jsonl_corpus), skip_bad=True)), Corpus)
    assert np.array_equal(
        scan_source(CorpusSource(str(jsonl_corpus))).pair_image, load_corpus(str(jsonl_corpus)).pair_image
    )
