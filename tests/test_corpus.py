"""Corpus specs: the built-in world (with its cache) and JSONL manifests, with one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protosynth.corpora.shapes import WorldConfig, generate_split, image_digest
from protosynth.corpora.spec import parse_world_spec
from protosynth.corpus import Corpus, cache_dir, load_corpus, load_jsonl, load_world, world_fingerprint, world_split
from protosynth.errors import ProtosynthError


@pytest.fixture
def _cache(tmp_path, monkeypatch):
    """A world cache of the test's own, for tests that look into it; the others share the run's cache
    (a test split needs the 10,000-image train split, which is generated once per run there)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def default_train_file() -> Path:
    """The default world's 10,000-image train split, generated once in the run's cache (every
    ``shapes:test,n=N`` there reads it): a test with a cache of its own copies it in instead of
    generating it again (about 10 s each)."""
    world_split(WorldConfig(), "train")
    path = cache_dir() / "world" / f"{world_fingerprint(WorldConfig(), 'train')}.npz"
    assert path.is_file()
    return path


def _png(path: Path, colour=(255, 0, 0), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _manifest(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _names_file_and_line(exc: pytest.ExceptionInfo, path: Path, line: int) -> None:
    msg = str(exc.value)
    assert str(path) in msg, msg
    assert re.search(rf"\bline {line}\b", msg), msg
    assert "\n" not in msg


# ---------------------------------------------------------------- world spec parsing


def test_parse_plain_shapes_is_default_train():
    split, cfg = parse_world_spec("shapes")
    assert split == "train"
    assert cfg == WorldConfig()


def test_parse_split_and_n():
    split, cfg = parse_world_spec("shapes:test,n=50")
    assert split == "test"
    assert cfg == WorldConfig(n_test=50)
    assert cfg.n_train == WorldConfig().n_train  # n only changes the named split


def test_parse_n_and_size_on_default_split():
    split, cfg = parse_world_spec("shapes,n=30,size=16")
    assert split == "train"
    assert cfg.n_train == 30
    assert cfg.image_size == 16


def test_parse_seed_and_pretrain():
    split, cfg = parse_world_spec("shapes:pretrain,seed=3,n=5")
    assert split == "pretrain"
    assert cfg.seed == 3 and cfg.n_pretrain == 5


def test_load_world_test_split():
    corpus = load_corpus("shapes:test,n=50")
    assert isinstance(corpus, Corpus)
    assert corpus.spec == "shapes:test,n=50"
    assert corpus.n_images == 50
    assert corpus.pixels.shape == (50, 32, 32, 3)
    assert corpus.image_keys[0] == "test/000000" and corpus.image_keys[-1] == "test/000049"
    assert all(len(c) == 5 for c in corpus.captions)
    expected = generate_split(WorldConfig(n_test=50), "test")
    assert np.array_equal(corpus.pixels, expected.images)
    assert corpus.captions == expected.captions


def test_load_world_size_option():
    corpus = load_corpus("shapes,n=30,size=16")
    assert corpus.n_images == 30
    assert corpus.pixels.shape == (30, 16, 16, 3)
    img = corpus.load_image(3)
    assert img.mode == "RGB" and img.size == (16, 16)
    assert np.array_equal(corpus.image_array(3), corpus.pixels[3])
    assert corpus.image_keys[0].startswith("train/")


def test_world_fingerprints_differ_by_spec():
    """Train splits only: a test split is kept disjoint from a whole (10,000-image) train split."""
    a = load_corpus("shapes:train,n=20")
    b = load_corpus("shapes:train,n=21")
    c = load_corpus("shapes:train,n=20,seed=1")
    d = load_corpus("shapes,n=20")
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert a.fingerprint == d.fingerprint
    split, cfg = parse_world_spec("shapes:test,n=20")
    assert world_fingerprint(cfg, split) not in {world_fingerprint(cfg, "train"), world_fingerprint(cfg, "pretrain")}


# ---------------------------------------------------------------- caching


def test_cache_dir_follows_env(_cache):
    assert cache_dir() == _cache


@pytest.mark.slow  # generates the world's 10,000-image train split in its own cache
def test_world_is_cached_and_second_load_reads_cache(_cache):
    first = load_world("shapes:test,n=12")
    files = list((_cache / "world").glob("*.npz"))
    assert len(files) == 2  # the test split and the train split it is kept disjoint from
    assert any(first.fingerprint in f.name for f in files)
    assert not list((_cache / "world").glob("*.tmp*"))  # the temporary file was renamed away

    second = load_world("shapes:test,n=12")
    assert np.array_equal(second.pixels, first.pixels)
    assert second.captions == first.captions

    # tamper with the cache: a third load must return the cached content, not regenerate
    tampered_pixels = np.zeros_like(first.pixels)
    tampered_captions = [["cached caption"] * 2 for _ in first.captions]
    test_file = next(f for f in files if first.fingerprint in f.name)
    np.savez(
        test_file,
        images=tampered_pixels,
        captions=np.array(json.dumps(tampered_captions)),
        objects=np.array(json.dumps([[] for _ in first.captions])),
    )
    third = load_world("shapes:test,n=12")
    assert np.array_equal(third.pixels, tampered_pixels)
    assert third.captions == tampered_captions
    assert third.n_pairs == 24


def test_test_splits_of_any_size_share_one_cached_train_split(_cache, default_train_file):
    """The train split a test split is kept disjoint from does not depend on the test split's size,
    so one cache file serves every ``shapes:test,n=N`` (each once generated its own 10,000 images)."""
    # the default train split in this cache is a copy of the run's (generated once there); both test
    # splits must read that one file: not rewrite it, not make another train file beside it
    (_cache / "world").mkdir(parents=True)
    seeded = Path(shutil.copy2(default_train_file, _cache / "world" / default_train_file.name))
    before = (seeded.stat().st_ino, seeded.stat().st_mtime_ns)
    load_world("shapes:test,n=3")
    load_world("shapes:test,n=4")
    names = sorted(f.name for f in (_cache / "world").glob("*.npz"))
    assert len(names) == 3 and sum(n.endswith("-train.npz") for n in names) == 1, names
    train = next(f for f in (_cache / "world").glob("*-train.npz"))
    assert WorldConfig().fingerprint() in train.name  # the default world's own train cache
    assert (train.stat().st_ino, train.stat().st_mtime_ns) == before  # read, never regenerated
    # sharing is right because a train split's content ignores the other splits' sizes (small worlds here)
    a, b = (generate_split(WorldConfig(n_train=64, n_test=n, n_pretrain=n), "train") for n in (3, 999))
    assert np.array_equal(a.images, b.images) and a.captions == b.captions


def test_different_specs_get_different_cache_files(_cache):
    load_world("shapes:train,n=10")
    load_world("shapes:train,n=10,size=16")
    load_world("shapes:train,n=10,seed=3")
    assert len(list((_cache / "world").glob("*.npz"))) == 3


# ---------------------------------------------------------------- caption-level pairs


def test_world_pairs_repeat_image_per_caption():
    corpus = load_corpus("shapes:test,n=20")
    assert corpus.n_pairs == 100
    assert corpus.pair_image.tolist() == [i for i in range(20) for _ in range(5)]
    assert corpus.pair_caption[:5] == corpus.captions[0]
    assert corpus.pair_caption[-1] == corpus.captions[19][-1]


def test_pairs_with_uneven_caption_counts():
    corpus = Corpus(
        spec="x", fingerprint="f", image_keys=["a", "b", "c"], captions=[["a1"], ["b1", "b2", "b3"], ["c1", "c2"]]
    )
    assert corpus.n_images == 3
    assert corpus.n_pairs == 6
    assert corpus.pair_image.tolist() == [0, 1, 1, 1, 2, 2]
    assert corpus.pair_image.dtype == np.int64
    assert corpus.pair_caption == ["a1", "b1", "b2", "b3", "c1", "c2"]


# ---------------------------------------------------------------- JSONL manifests


def test_jsonl_caption_and_captions_forms(tmp_path):
    _png(tmp_path / "imgs" / "a.png", (255, 0, 0))
    _png(tmp_path / "imgs" / "b.png", (0, 255, 0))
    _png(tmp_path / "c.png", (0, 0, 255))
    manifest = _manifest(
        tmp_path / "data.jsonl",
        [
            {"image": "imgs/a.png", "caption": "a red thing"},
            {"image": "imgs/b.png", "captions": ["green one", "  a green square  "]},
            "",
            {"image": "imgs/a.png", "caption": "another red caption"},
            {"image": "c.png", "captions": ["blue"]},
        ],
    )
    corpus = load_corpus(str(manifest))
    assert corpus.spec == str(manifest)
    assert corpus.fingerprint.startswith("jsonl-")
    assert corpus.image_keys == ["imgs/a.png", "imgs/b.png", "c.png"]
    assert corpus.captions == [
        ["a red thing", "another red caption"],
        ["green one", "a green square"],  # captions are stripped
        ["blue"],
    ]
    assert corpus.image_lines == [1, 2, 5]  # first line of each image; the blank line counts
    assert corpus.pair_image.tolist() == [0, 0, 1, 1, 2]
    assert corpus.pair_caption == ["a red thing", "another red caption", "green one", "a green square", "blue"]
    assert corpus.pixels is None
    assert corpus.root == tmp_path


def test_jsonl_paths_are_relative_to_the_manifest(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _png(data / "pics" / "x.png", (10, 20, 30), size=(5, 4))
    manifest = _manifest(data / "m.jsonl", [{"image": "pics/x.png", "caption": "dark"}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative image path must not depend on the working directory
    corpus = load_jsonl(manifest)
    img = corpus.load_image(0)
    assert img.mode == "RGB" and img.size == (5, 4)
    arr = corpus.image_array(0)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == (10, 20, 30)


def test_jsonl_relative_manifest_path(tmp_path, monkeypatch):
    _png(tmp_path / "sub" / "a.png")
    _manifest(tmp_path / "sub" / "m.jsonl", [{"image": "a.png", "caption": "red"}])
    monkeypatch.chdir(tmp_path)
    corpus = load_corpus("sub/m.jsonl")
    assert tuple(corpus.image_array(0)[0, 0]) == (255, 0, 0)


def test_jsonl_grayscale_image_loads_as_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (3, 3), 128).save(path)
    corpus = load_jsonl(_manifest(tmp_path / "m.jsonl", [{"image": "g.png", "caption": "grey"}]))
    assert corpus.image_array(0).shape == (3, 3, 3)


def test_jsonl_fingerprint_changes_with_content(tmp_path):
    _png(tmp_path / "a.png")
    m = _manifest(tmp_path / "m.jsonl", [{"image": "a.png", "caption": "one"}])
    fp1 = load_jsonl(m).fingerprint
    assert load_jsonl(m).fingerprint == fp1
    _manifest(m, [{"image": "a.png", "caption": "two"}])
    assert load_jsonl(m).fingerprint != fp1


# ---------------------------------------------------------------- bad manifests


def test_jsonl_not_json(tmp_path):
    _png(tmp_path / "a.png")
    m = _manifest(tmp_path / "m.jsonl", [{"image": "a.png", "caption": "fine"}, "{not json"])
    with pytest.raises(ProtosynthError, match="JSON") as exc:
        load_jsonl(m)
    _names_file_and_line(exc, m, 2)


_OK = {"image": "a.png", "caption": "ok"}


@pytest.mark.parametrize(
    "rows, field",
    [
        # the image field missing or not a file name, on line 3
        ([_OK, _OK, {"caption": "no image"}], "image"),
        ([_OK, _OK, {"image": "", "caption": "empty image"}], "image"),
        ([_OK, _OK, {"image": 3, "caption": "image not a string"}], "image"),
        ([_OK, _OK, ["a.png", "a list, not an object"]], "image"),
        # no caption, or no usable caption list, on line 1
        ([{"image": "a.png"}], "caption"),
        ([{"image": "a.png", "captions": []}], "caption"),
        ([{"image": "a.png", "captions": "not a list"}], "caption"),
    ],
)
def test_jsonl_missing_field(tmp_path, rows, field):
    _png(tmp_path / "a.png")
    m = _manifest(tmp_path / "m.jsonl", rows)
    with pytest.raises(ProtosynthError, match=field) as exc:
        load_jsonl(m)
    _names_file_and_line(exc, m, len(rows))


@pytest.mark.parametrize(
    "row",
    [
        {"image": "a.png", "caption": ""},
        {"image": "a.png", "caption": "   "},
        {"image": "a.png", "caption": None},
        {"image": "a.png", "caption": 7},
        {"image": "a.png", "captions": ["good", ""]},
        {"image": "a.png", "captions": ["good", ["nested"]]},
    ],
)
def test_jsonl_empty_or_non_string_caption(tmp_path, row):
    _png(tmp_path / "a.png")
    m = _manifest(tmp_path / "m.jsonl", [{"image": "a.png", "caption": "ok"}, row])
    with pytest.raises(ProtosynthError, match="caption") as exc:
        load_jsonl(m)
    _names_file_and_line(exc, m, 2)


def test_jsonl_missing_image_file(tmp_path):
    _png(tmp_path / "a.png")
    m = _manifest(
        tmp_path / "m.jsonl",
        [
            {"image": "a.png", "caption": "ok"},
            {"image": "a.png", "caption": "ok"},
            {"image": "a.png", "caption": "ok"},
            {"image": "missing.png", "caption": "gone"},
        ],
    )
    with pytest.raises(ProtosynthError, match="not found") as exc:
        load_jsonl(m)
    _names_file_and_line(exc, m, 4)
    assert "missing.png" in str(exc.value)


def test_jsonl_image_path_is_a_directory(tmp_path):
    (tmp_path / "dir.png").mkdir()
    m = _manifest(tmp_path / "m.jsonl", [{"image": "dir.png", "caption": "not a file"}])
    with pytest.raises(ProtosynthError) as exc:
        load_jsonl(m)
    _names_file_and_line(exc, m, 1)


def test_corrupt_image_file_fails_on_load_naming_file_and_line(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a png at all")
    m = _manifest(
        tmp_path / "m.jsonl",
        [
            {"image": "good.png", "caption": "fine"},
            {"image": "bad.png", "caption": "broken"},
        ],
    )
    corpus = load_jsonl(m)  # existence is checked up front; decoding happens on use
    assert corpus.image_array(0).shape == (6, 8, 3)
    with pytest.raises(ProtosynthError, match="cannot read image") as exc:
        corpus.load_image(1)
    _names_file_and_line(exc, m, 2)
    assert "bad.png" in str(exc.value)


def test_truncated_image_file_fails_on_load(tmp_path):
    good = _png(tmp_path / "full.png", size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    m = _manifest(tmp_path / "m.jsonl", [{"image": "cut.png", "caption": "half"}])
    corpus = load_jsonl(m)
    with pytest.raises(ProtosynthError) as exc:
        corpus.load_image(0)
    _names_file_and_line(exc, m, 1)


def test_image_deleted_after_loading_manifest(tmp_path):
    img = _png(tmp_path / "a.png")
    m = _manifest(tmp_path / "m.jsonl", [{"image": "a.png", "caption": "soon gone"}])
    corpus = load_jsonl(m)
    img.unlink()
    with pytest.raises(ProtosynthError, match="not found") as exc:
        corpus.load_image(0)
    _names_file_and_line(exc, m, 1)


def test_empty_manifest(tmp_path):
    m = _manifest(tmp_path / "m.jsonl", ["", "   "])
    with pytest.raises(ProtosynthError, match="no pairs") as exc:
        load_jsonl(m)
    assert str(m) in str(exc.value)


def test_missing_manifest(tmp_path):
    m = tmp_path / "nope.jsonl"
    with pytest.raises(ProtosynthError, match="no such file") as exc:
        load_corpus(str(m))
    assert str(m) in str(exc.value)


# ---------------------------------------------------------------- bad specs


@pytest.mark.parametrize("spec", ["flickr30k", "data.txt", "data.feather", "shapesx", "", "Shapes"])
def test_unknown_corpus_spec(spec):
    with pytest.raises(ProtosynthError, match="unknown corpus") as exc:
        load_corpus(spec)
    assert repr(spec) in str(exc.value)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("shapes,foo=1", "unknown world option"),
        ("shapes,n=abc", "integer"),
        ("shapes,n", "integer"),
        ("shapes,size=1.5", "integer"),
        ("shapes,n=0", "positive"),
        ("shapes:test,size=-4", "positive"),
        ("shapes:valid", "unknown world split"),
        ("shapes:", "unknown world split"),
    ],
)
def test_bad_world_option(spec, needle, _cache):
    with pytest.raises(ProtosynthError, match=needle) as exc:
        load_corpus(spec)
    assert repr(spec) in str(exc.value)
    assert not (_cache / "world").exists()  # nothing was generated


def test_seed_zero_is_allowed():
    split, cfg = parse_world_spec("shapes:test,seed=0,n=1")
    assert cfg.seed == 0 and cfg.n_test == 1


def test_invalid_utf8_is_named_with_its_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "fine"}\n{"image": "a.png", "caption": "caf\xe9"}\n')
    with pytest.raises(ProtosynthError, match=r"bad.jsonl line 2: not valid UTF-8"):
        load_jsonl(path)


# The split tests below use the run's cache (they do not look into it): the val tests read the splits
# the first one made, and the default world's splits are shared with the rest of the suite.
@pytest.mark.slow  # generates four world splits
def test_test_and_pretrain_splits_share_no_image_with_earlier_splits():
    """Raw generation repeats some single-object images across splits (7 of the default 1,000 test
    images equal a train image; 2 with the 3,000-image train split used here to keep it fast); the
    cached splits are disjoint by construction."""
    cfg = WorldConfig(n_train=3000, n_pretrain=1000)
    train = {image_digest(im) for im in world_split(cfg, "train").images}
    raw_test = generate_split(cfg, "test")
    assert sum(image_digest(im) in train for im in raw_test.images) > 0  # the problem is real
    test = world_split(cfg, "test")
    test_digests = [image_digest(im) for im in test.images]
    assert not set(test_digests) & train and len(set(test_digests)) == len(test_digests)
    # only the colliding images were redrawn, captions and objects with them
    same = sum(np.array_equal(a, b) for a, b in zip(raw_test.images, test.images))
    assert len(test.images) - 20 < same < len(test.images)
    pretrain = {image_digest(im) for im in world_split(cfg, "pretrain").images}
    assert not pretrain & train and not pretrain & set(test_digests)


def test_val_split_shares_no_image_with_any_other_split():
    """``shapes:val`` is drawn from its own seed stream and redrawn wherever an image equals one of
    train, test or pretrain, so choosing settings on it never peeks at the test split."""
    cfg = WorldConfig(n_train=3000, n_pretrain=1000, n_val=800)
    others = {image_digest(im) for split in ("train", "test", "pretrain") for im in world_split(cfg, split).images}
    raw = generate_split(cfg, "val")
    assert sum(image_digest(im) in others for im in raw.images) > 0  # without the redraw, val would overlap
    val = [image_digest(im) for im in world_split(cfg, "val").images]
    assert len(val) == 800 and not set(val) & others and len(set(val)) == len(val)
    test = generate_split(cfg, "test")
    assert not np.array_equal(raw.images[:50], test.images[:50])  # its own stream, not a copy of test's


@pytest.mark.slow  # makes the val split, which generates every other split first
def test_val_split_by_spec_and_unchanged_keys_of_the_other_splits():
    corpus = load_corpus("shapes:val,n=40")
    assert corpus.n_images == 40 and corpus.fingerprint.endswith("-val")
    default = WorldConfig()
    # n_val joined the config after the other splits; their cache keys and fingerprints stay as they were
    assert default.fingerprint() == WorldConfig(n_val=1_000).fingerprint() != WorldConfig(n_val=5).fingerprint()
    blob = {k: v for k, v in dataclasses.asdict(default).items() if k != "n_val"}
    assert default.fingerprint() == hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
