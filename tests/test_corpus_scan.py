"""The driver's streaming pass over a JSONL manifest (``corpus.scan_source``, ``corpora.jsonl.scan_jsonl``)
gives what the whole load gives of the corpus as a whole (fingerprint, pair -> image rows, counts,
spec) and the same one-line error for every bad input, without holding a caption; other corpora are
loaded whole, as before."""

from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize("fixture", ["jsonl_corpus", "parquet_corpus", "tar_corpus"])
def test_a_skip_bad_scan_of_a_clean_corpus_is_the_plain_ones(fixture, request):
    """Nothing to drop: the streamed --skip-bad summary is the plain scan's, and the whole load's."""
    spec = str(request.getfixturevalue(fixture))
    scanned = scan_source(CorpusSource(spec, skip_bad=True))
    plain, loaded = same_whole(spec), load_corpus(spec, skip_bad=True)
    assert isinstance(scanned, CorpusSummary) and scanned.skip_bad and scanned.skipped == []
    assert scanned.fingerprint == plain.fingerprint == loaded.fingerprint
    assert np.array_equal(scanned.pair_image, loaded.pair_image)


def _every_image_bad(tmp_path: Path, fmt: str) -> str:
    """Two images that are not images (and, in a parquet file or a shard, a row or a sample
    ``--skip-bad`` drops without decoding: a null image, a sample without an image member)."""
    if fmt == "jsonl":
        names = [_image(tmp_path, f"{i}.png") for i in range(2)]
        for name in names:
            (tmp_path / name).write_bytes(b"not a png")
        path = tmp_path / "m.jsonl"
        path.write_text("".join(json.dumps({"image": n, "caption": f"c {n}"}) + "\n" for n in names))
        return str(path)
    if fmt == "parquet":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        table = pa.table({"jpg": pa.array([b"no", None, b"png"], pa.binary()), "caption": ["a", None, "c"]})
        pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)
        return str(tmp_path / "c.parquet")
    from helpers import write_tar  # noqa: PLC0415

    members = [("0.png", b"no"), ("0.txt", b"a"), ("1.txt", b"no image"), ("2.png", b"png"), ("2.txt", b"c")]
    return str(write_tar(tmp_path / "s.tar", members))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "webdataset"])
def test_a_skip_bad_scan_with_every_image_bad_is_the_loads_one_line_error(fmt, tmp_path):
    spec = _every_image_bad(tmp_path, fmt)
    with pytest.raises(ProtosynthError) as loaded:
        load_corpus(spec, skip_bad=True)
    with pytest.raises(ProtosynthError) as scanned:
        scan_source(CorpusSource(spec, skip_bad=True))
    n = 2 if fmt == "jsonl" else 3
    assert str(scanned.value) == str(loaded.value) and f"every one of its {n} images is unreadable" in str(loaded.value)
    assert "\n" not in str(scanned.value)


# ---------------------------------------------------------------- parquet


def test_a_parquet_scan_has_the_loads_fingerprint_rows_and_columns(parquet_corpus, tmp_path):
    scanned = same_whole(parquet_corpus)  # a glob over two files, list captions of 1 to 3
    assert isinstance(scanned, CorpusSummary) and scanned.loaded is None and scanned.n_pairs == 33
    assert whole(scanned).pair_caption == load_corpus(parquet_corpus).pair_caption
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(sorted(Path(parquet_corpus).parent.glob("*.parquet"))[0])
    images = [{"bytes": b, "path": None} for b in table.column("jpg").to_pylist()]
    path = tmp_path / "named.parquet"  # a datasets Image() struct and a string caption, under other names
    pq.write_table(table.from_pydict({"picture": images, "text": ["a", "b c", " d "] * 3}), path, row_group_size=2)
    source = CorpusSource(str(path), image_column="picture", caption_column="text")
    scanned, loaded = scan_source(source), load_corpus(str(path), image_column="picture", caption_column="text")
    assert (scanned.spec, scanned.fingerprint, scanned.pair_image.tolist()) == (
        loaded.spec,
        loaded.fingerprint,
        loaded.pair_image.tolist(),
    )
    assert (scanned.image_column, scanned.caption_column) == ("picture", "text")


def _bad_parquet(tmp_path: Path, case: str) -> str:
    """A parquet corpus (or glob) with one flaw ``case`` names."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    png = (tmp_path / "a.png").read_bytes() if (tmp_path / "a.png").exists() else None
    if png is None:
        Image.new("RGB", (4, 4), (9, 0, 0)).save(tmp_path / "a.png")
        png = (tmp_path / "a.png").read_bytes()
    jpg, caption = [png] * 6, ["a cat"] * 6
    path = tmp_path / "c.parquet"
    if case == "null image":
        jpg[4] = None
    elif case == "null caption":
        caption[3] = None
    elif case == "empty caption":
        caption[5] = "   "
    elif case == "bad caption before a null image":
        caption[2], jpg[4] = "", None
    elif case == "null image and bad caption in one row":
        caption[4], jpg[4] = "", None
    elif case == "no rows":
        jpg, caption = [], []
    if case == "not images":
        table = pa.table({"jpg": ["x"] * 6, "caption": caption})
    elif case == "no caption column":
        table = pa.table({"jpg": jpg, "text": caption})
    elif case == "no image column":
        table = pa.table({"image": jpg, "caption": caption})
    elif case == "empty list of captions":
        table = pa.table({"jpg": jpg, "caption": [["x"], [], ["y"], ["z"], ["w"], ["v"]]})
    else:
        table = pa.table({"jpg": pa.array(jpg, pa.binary()), "caption": pa.array(caption, pa.string())})
    pq.write_table(table, path, row_group_size=2)
    if case == "not parquet":
        path.write_bytes(b"PAR1 but not really")
    if case == "bad caption in the second file":  # the first file's rows are all good
        second = tmp_path / "d.parquet"
        pq.write_table(pa.table({"jpg": jpg, "caption": ["ok"] * 5 + [""]}), second, row_group_size=4)
        return str(tmp_path / "*.parquet")
    if case == "no match":
        return str(tmp_path / "none" / "*.parquet")
    if case == "no file":
        return str(tmp_path / "none.parquet")
    return str(path)


PARQUET_CASES = [
    "null image",
    "null caption",
    "empty caption",
    "bad caption before a null image",
    "null image and bad caption in one row",
    "no rows",
    "not images",
    "no caption column",
    "no image column",
    "empty list of captions",
    "not parquet",
    "bad caption in the second file",
    "no match",
    "no file",
]


# ---------------------------------------------------------------- webdataset


def test_a_webdataset_scan_has_the_loads_fingerprint_and_rows(tar_corpus):
    scanned = same_whole(tar_corpus)  # two shards, txt and json captions, members not adjacent
    assert isinstance(scanned, CorpusSummary) and scanned.loaded is None and scanned.n_pairs == 33
    assert scanned.fingerprint.startswith("wds-") and scanned.read_ref is not None
    assert whole(scanned).pair_caption == load_corpus(tar_corpus).pair_caption


def _bad_tar(tmp_path: Path, case: str) -> str:
    """A webdataset corpus (a shard or a glob) with one flaw ``case`` names."""
    from helpers import write_tar  # noqa: PLC0415

    if not (tmp_path / "a.png").exists():
        Image.new("RGB", (4, 4), (9, 0, 0)).save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    good = [m for i in range(3) for m in ((f"{i}.png", png), (f"{i}.txt", b"a cat"))]
    members = {
        "no caption member": [*good, ("b.png", png)],
        "no image member": [*good, ("b.txt", b"no image")],
        "empty txt": [*good, ("b.png", png), ("b.txt", b"   ")],
        "txt not utf-8": [*good, ("b.png", png), ("b.txt", b"\xff\xfe")],
        "json not json": [*good, ("b.png", png), ("b.json", b"{not json")],
        "json empty caption": [*good, ("b.png", png), ("b.json", b'{"caption": ""}')],
        "json not an object": [*good, ("b.png", png), ("b.json", b'["a list"]')],
        "json empty captions": [*good, ("b.png", png), ("b.json", b'{"captions": []}')],
        "json captions not a list": [*good, ("b.png", png), ("b.json", b'{"captions": 3}')],
        "several image members": [*good, ("b.png", png), ("b.jpg", png), ("b.txt", b"two")],
        "a second txt member": [*good, ("b.png", png), ("b.txt", b"one"), ("b.txt", b"two")],
        "a second member after a bad sample": [("b.png", png), *good, ("b.png", png), ("b.txt", b"x")],
        "no samples": [("readme.md", b"hello"), ("d", None)],
    }
    path = tmp_path / "s.tar"
    if case in members:
        write_tar(path, members[case])
    elif case == "not a tar":
        path.write_bytes(b"not a tar file" * 100)
    elif case == "a tar cut short":
        write_tar(path, good)
        path.write_bytes(path.read_bytes()[:1540])  # inside 0.txt's data
    elif case == "bad caption in the second shard":  # the first shard's samples are all good
        write_tar(tmp_path / "r.tar", good)
        write_tar(path, [*good, ("b.png", png), ("b.txt", b"")])
        return str(tmp_path / "*.tar")
    elif case == "no match":
        return str(tmp_path / "none" / "*.tar")
    elif case == "no file":
        return str(tmp_path / "none.tar")
    return str(path)


TAR_CASES = [
    "no caption member",
    "no image member",
    "empty txt",
    "txt not utf-8",
    "json not json",
    "json empty caption",
    "json not an object",
    "json empty captions",
    "json captions not a list",
    "several image members",
    "a second txt member",
    "a second member after a bad sample",
    "no samples",
    "not a tar",
    "a tar cut short",
    "bad caption in the second shard",
    "no match",
    "no file",
]


@pytest.mark.parametrize(
    "make, case",
    [(_bad_parquet, c) for c in PARQUET_CASES] + [(_bad_tar, c) for c in TAR_CASES],
    ids=[f"parquet-{c}" for c in PARQUET_CASES] + [f"webdataset-{c}" for c in TAR_CASES],
)
def test_bad_parquet_or_webdataset_input_is_the_loads_one_line_error(make, case, tmp_path):
    spec = make(tmp_path, case)
    with pytest.raises(ProtosynthError) as loaded:
        load_corpus(spec)
    with pytest.raises(ProtosynthError) as scanned:
        scan_source(CorpusSource(spec))
    assert str(scanned.value) == str(loaded.value)
    assert "\n" not in str(scanned.value)


def _outcome(read) -> tuple:
    """What reading a corpus gives: its error's text, or its fingerprint, pairs and messages."""
    try:
        got = read()
    except ProtosynthError as exc:
        return ("error", str(exc))
    return (got.fingerprint, got.pair_image.tolist(), got.skipped)


@pytest.mark.parametrize(
    "make, case",
    [(_bad_parquet, c) for c in PARQUET_CASES] + [(_bad_tar, c) for c in TAR_CASES],
    ids=[f"parquet-{c}" for c in PARQUET_CASES] + [f"webdataset-{c}" for c in TAR_CASES],
)
def test_bad_parquet_or_webdataset_input_with_skip_bad_is_the_loads(make, case, tmp_path):
    """With --skip-bad, what the load drops (a null image, a sample without a member) the streamed
    scan drops, and what the load refuses it refuses with the same line."""
    spec = make(tmp_path, case)
    scanned = _outcome(lambda: scan_source(CorpusSource(spec, skip_bad=True)))
    assert scanned == _outcome(lambda: load_corpus(spec, skip_bad=True))
    assert scanned[0] == "error" or case in (
        "null image",
        "null image and bad caption in one row",
        "no caption member",
        "no image member",
    )


@pytest.mark.parametrize("fixture, suffix", [("parquet_corpus", "parquet"), ("tar_corpus", "tar")])
def test_a_summary_refuses_files_that_changed_before_it_was_loaded(fixture, suffix, request):
    spec = request.getfixturevalue(fixture)
    scanned = scan_source(CorpusSource(spec))
    first = sorted(Path(spec).parent.glob(f"*.{suffix}"))[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    with pytest.raises(ProtosynthError, match="changed while it was read"):
        whole(scanned)
