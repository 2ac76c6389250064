"""Corpus formats on disk: Karpathy/BLIP JSON, CSV, webdataset shards (and JSONL), read through
``load_corpus(spec, image_root, skip_bad)``. Every fixture writes a few 32 px world images; every
error must be one line naming the file and the row (or shard and member)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import jpg_bytes, png_bytes, truncate, write_csv, write_tar
from PIL import Image
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpora.source import CorpusSource
from protosynth.corpora.spec import corpus_name
from protosynth.corpus import Corpus, load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import source_corpus
from protosynth.render import RenderConfig
from protosynth.sets.distilled import corpus_record, load_distilled
from protosynth.training.small_models import ModelsTrainConfig, split_corpus

N = 6


@pytest.fixture(scope="module")
def world():
    """Six world images with five captions each (generated, no cache)."""
    return generate_split(WorldConfig(n_train=N), "train")


def write_images(folder: Path, world, n: int = N) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(png_bytes(world.images[i]))
    return [f"{i}.png" for i in range(n)]


def csv_rows(world, prefix="img/", n=N, per_image=2) -> list[list[str]]:
    """Caption-major order (every image's first caption, then every second), so one image's rows
    are not adjacent and grouping must keep first-seen order."""
    return [[f"{prefix}{i}.png", world.captions[i][c], "coco"] for c in range(per_image) for i in range(n)]


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert re.search(needle, msg), f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- CSV


@pytest.fixture
def csv_corpus(tmp_path, world) -> Path:
    write_images(tmp_path / "img", world)
    return write_csv(tmp_path / "pairs.csv", csv_rows(world))


def test_csv_pairs_grouped_in_first_seen_order(csv_corpus, world):
    corpus = load_corpus(str(csv_corpus))
    assert corpus.fingerprint.startswith("csv-") and corpus.spec == str(csv_corpus)
    assert corpus.image_keys == [f"img/{i}.png" for i in range(N)]
    assert corpus.captions == [world.captions[i][:2] for i in range(N)]
    assert corpus.n_pairs == 2 * N and corpus.pair_image.tolist() == [i for i in range(N) for _ in range(2)]
    assert corpus.image_lines == list(range(2, N + 2))  # header is row 1
    assert corpus.root == csv_corpus.parent and corpus.skipped == []
    for i in (3, 0, 5, 2):  # random access
        assert np.array_equal(corpus.image_array(i), world.images[i])


def test_csv_quoted_captions_and_column_order(tmp_path, world):
    write_images(tmp_path / "img", world, 2)
    path = write_csv(
        tmp_path / "c.csv",
        [["x", 'a "quoted", comma caption', "img/0.png"], ["y", "two\nlines", "img/1.png"]],
        header=("id", "caption", "image"),
    )
    corpus = load_corpus(str(path))
    assert corpus.captions == [['a "quoted", comma caption'], ["two\nlines"]]


def test_csv_image_root(tmp_path, world):
    write_images(tmp_path / "data" / "images" / "img", world)
    path = write_csv(tmp_path / "meta" / "pairs.csv", csv_rows(world))
    with pytest.raises(ProtosynthError, match="not found") as exc:
        load_corpus(str(path))  # relative to the CSV's folder by default
    one_line(exc, re.escape(str(path)), r"row 2\b", re.escape(str(path.parent / "img" / "0.png")))
    corpus = load_corpus(str(path), image_root=tmp_path / "data" / "images")
    assert corpus.image_root == tmp_path / "data" / "images"
    assert np.array_equal(corpus.image_array(4), world.images[4])
    shutil.copytree(tmp_path / "data", tmp_path / "copy", copy_function=shutil.copy2)  # same bytes and mtimes
    other = load_corpus(str(path), image_root=str(tmp_path / "copy" / "images"))
    assert other.fingerprint != corpus.fingerprint  # the image root is part of the fingerprint


def test_csv_fingerprint_follows_manifest_and_images(csv_corpus, world):
    fp = load_corpus(str(csv_corpus)).fingerprint
    assert load_corpus(str(csv_corpus)).fingerprint == fp
    img = csv_corpus.parent / "img" / "3.png"
    img.write_bytes(png_bytes(world.images[4]))
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fp2 = load_corpus(str(csv_corpus)).fingerprint
    assert fp2 != fp
    write_csv(csv_corpus, csv_rows(world)[:-1])
    assert load_corpus(str(csv_corpus)).fingerprint not in (fp, fp2)


@pytest.mark.parametrize(
    "rows, header, row, needle",
    [
        ([["img/0.png", "ok"]], ("image", "text"), 1, r"'caption'.*found: image, text"),
        ([["img/0.png", "ok"]], ("path", "caption"), 1, r"'image'"),
        ([["img/0.png", "ok"], ["img/1.png", "  "]], ("image", "caption"), 3, r"empty"),
        ([["img/0.png", "ok"], ["", "no image"]], ("image", "caption"), 3, r"empty 'image'"),
        ([["img/0.png", "ok"], ["img/1.png"]], ("image", "caption"), 3, r"1 fields"),
        (
            [["img/0.png", "ok"], ["img/1.png", "ok"], ["img/9.png", "gone"]],
            ("image", "caption"),
            4,
            r"not found.*9\.png",
        ),
    ],
)
def test_csv_errors_name_file_and_row(tmp_path, world, rows, header, row, needle):
    write_images(tmp_path / "img", world, 2)
    path = write_csv(tmp_path / "bad.csv", rows, header=header)
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(path))
    one_line(exc, re.escape(str(path)), rf"row {row}\b", needle)


def test_csv_not_utf8_and_header_only(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"image,caption\na.png,caf\xe9\n")
    with pytest.raises(ProtosynthError, match=r"latin.csv line 2: not valid UTF-8"):
        load_corpus(str(path))
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(ProtosynthError, match="no rows"):
        load_corpus(str(tmp_path / "empty.csv"))


def test_csv_corrupt_image_fails_when_read(csv_corpus, world):
    truncate(csv_corpus.parent / "img" / "2.png")
    corpus = load_corpus(str(csv_corpus))  # existence is checked at load, decoding on use
    assert np.array_equal(corpus.image_array(1), world.images[1])
    with pytest.raises(ProtosynthError, match="cannot read image") as exc:
        corpus.load_image(2)
    one_line(exc, re.escape(str(csv_corpus)), r"row 4\b", r"img/2\.png")


# ---------------------------------------------------------------- Karpathy / BLIP JSON


def karpathy_train(world, n=N) -> list[dict]:
    """Caption-level, as coco_karpathy_train.json / flickr30k_train.json (with image_id)."""
    return [
        {"image": f"flickr30k-images/{i}.png", "caption": cap, "image_id": str(i)}
        for i in range(n)
        for cap in world.captions[i]
    ]


def karpathy_test(world, n=N) -> list[dict]:
    """Image-level, as flickr30k_test.json: a list of captions per image."""
    return [{"image": f"flickr30k-images/{i}.png", "caption": world.captions[i]} for i in range(n)]


@pytest.fixture
def karpathy_dir(tmp_path, world) -> Path:
    write_images(tmp_path / "images" / "flickr30k-images", world)
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "train.json").write_text(json.dumps(karpathy_train(world)))
    (ann / "test.json").write_text(json.dumps(karpathy_test(world)))
    return tmp_path


def test_karpathy_train_and_test_files(karpathy_dir, world):
    root = karpathy_dir / "images"
    train = load_corpus(str(karpathy_dir / "annotation" / "train.json"), image_root=root)
    test = load_corpus(str(karpathy_dir / "annotation" / "test.json"), image_root=root)
    for corpus in (train, test):
        assert corpus.fingerprint.startswith("karpathy-")
        assert corpus.n_images == N and corpus.n_pairs == 5 * N
        assert corpus.image_keys == [f"flickr30k-images/{i}.png" for i in range(N)]
        assert corpus.captions == world.captions
        for i in (5, 1, 3):
            assert np.array_equal(corpus.image_array(i), world.images[i])
    assert train.image_lines == [5 * i for i in range(N)]  # first entry of each image, from 0
    assert test.image_lines == list(range(N))
    assert train.fingerprint != test.fingerprint


def test_karpathy_groups_interleaved_entries(tmp_path, world):
    write_images(tmp_path, world, 2)
    entries = [
        {"image": "1.png", "caption": "b1"},
        {"image": "0.png", "caption": "a1"},
        {"image": "1.png", "caption": ["b2", "b3"]},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(entries))
    corpus = load_corpus(str(tmp_path / "mix.json"))  # default root: the JSON's folder
    assert corpus.image_keys == ["1.png", "0.png"] and corpus.captions == [["b1", "b2", "b3"], ["a1"]]


@pytest.mark.parametrize(
    "content, needle",
    [
        ('[{"image": "0.png", "caption": "a"},\n {"image": ', r"line 2: not valid JSON"),
        ('{"images": []}', r"expected a JSON list.*got a dict"),
        ("[]", r"no entries"),
        ('[{"image": "0.png", "caption": "a"}, {"caption": "no image"}]', r"entry 1: needs an 'image'"),
        ('[{"image": "0.png", "caption": "a"}, {"image": "1.png"}]', r"entry 1: needs a 'caption'"),
        ('[{"image": "0.png", "caption": "a"}, {"image": "1.png", "caption": []}]', r"entry 1: .*non-empty"),
        ('[{"image": "0.png", "caption": "a"}, {"image": "1.png", "caption": ["x", " "]}]', r"entry 1: empty"),
        ('[{"image": "0.png", "caption": "a"}, {"image": "1.png", "caption": 5}]', r"entry 1: empty or non-string"),
        (
            '[{"image": "0.png", "caption": "a"}, {"image": "7.png", "caption": "b"}]',
            r"entry 1: image file not found.*7\.png",
        ),
    ],
)
def test_karpathy_errors_name_file_and_entry(tmp_path, world, content, needle):
    write_images(tmp_path, world, 2)
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(path))
    one_line(exc, re.escape(str(path)), needle)


def test_karpathy_image_root_must_exist(karpathy_dir):
    with pytest.raises(ProtosynthError, match=r"^image_root .*nowhere: no such folder"):
        load_corpus(str(karpathy_dir / "annotation" / "test.json"), image_root=karpathy_dir / "nowhere")


# ---------------------------------------------------------------- webdataset shards


@pytest.fixture
def shards(tmp_path, world) -> Path:
    """Two shards with the same sample keys: png + txt in one, jpg + json (caption / captions) in
    the other, plus a directory entry and a member protosynth ignores."""
    d = tmp_path / "shards"
    write_tar(
        d / "train-000.tar",
        [("part", None)]
        + [
            m
            for i in range(3)
            for m in (
                (f"part/{i:04d}.png", png_bytes(world.images[i])),
                (f"part/{i:04d}.txt", world.captions[i][0].encode()),
                (f"part/{i:04d}.cls", b"3"),
            )
        ],
    )
    second = []
    for j, i in enumerate(range(3, N)):
        caption = {"caption": world.captions[i][0]} if j % 2 else {"captions": world.captions[i][:2], "id": i}
        second += [
            (f"part/{j:04d}.json", json.dumps(caption).encode()),
            (f"part/{j:04d}.jpg", jpg_bytes(world.images[i])),
        ]
    write_tar(d / "train-001.tar", second)
    return d


def test_webdataset_glob_over_two_shards(shards, world):
    spec = str(shards / "train-*.tar")
    corpus = load_corpus(spec)
    assert corpus.fingerprint.startswith("wds-") and corpus.spec == spec
    first, second = shards / "train-000.tar", shards / "train-001.tar"
    assert corpus.image_keys == [f"{first}/part/{i:04d}" for i in range(3)] + [
        f"{second}/part/{j:04d}" for j in range(3)
    ]
    assert corpus.captions == (
        [[world.captions[i][0]] for i in range(3)]
        + [world.captions[3][:2], [world.captions[4][0]], world.captions[5][:2]]
    )
    assert corpus.n_pairs == 3 + 2 + 1 + 2
    for i in (4, 0, 2, 5, 1):  # random access across shards
        arr = corpus.image_array(i)
        if i < 3:
            assert np.array_equal(arr, world.images[i])  # png: lossless
        else:
            expected = np.asarray(Image.open(io.BytesIO(jpg_bytes(world.images[i]))).convert("RGB"))
            assert np.array_equal(arr, expected)
            assert np.abs(arr.astype(int) - world.images[i]).mean() < 20


def test_webdataset_single_shard_and_fingerprint(shards, world):
    path = shards / "train-000.tar"
    corpus = load_corpus(str(path))
    assert corpus.n_images == 3 and corpus.root is None
    assert load_corpus(str(path)).fingerprint == corpus.fingerprint
    write_tar(path, [("0.png", png_bytes(world.images[5])), ("0.txt", b"changed")])
    changed = load_corpus(str(path))
    assert changed.fingerprint != corpus.fingerprint and changed.captions == [["changed"]]
    assert load_corpus(str(shards / "*.tar")).fingerprint != load_corpus(str(shards / "train-001.tar")).fingerprint


def test_webdataset_subset_reads_the_same_images(shards, world):
    """``models train`` holds out a subset of a file corpus; it must read from the same shards."""
    train, held = split_corpus(ModelsTrainConfig(corpus=str(shards / "train-*.tar")))
    full = load_corpus(str(shards / "train-*.tar"))
    assert train.n_images + held.n_images == N and held.n_images == 1
    key = held.image_keys[0]
    assert np.array_equal(held.image_array(0), full.image_array(full.image_keys.index(key)))


@pytest.mark.parametrize(
    "members, needle",
    [
        ([("a.png", b"x"), ("a.txt", b"ok"), ("b.png", b"x")], r"member b\.png: no caption member"),
        ([("a.png", b"x"), ("a.txt", b"ok"), ("b.txt", b"no image")], r"sample b: no image member"),
        ([("a.png", b"x"), ("a.txt", b"   ")], r"member a\.txt: empty"),
        ([("a.png", b"x"), ("a.json", b"{not json")], r"member a\.json: not valid JSON"),
        ([("a.png", b"x"), ("a.json", b'{"caption": ""}')], r"member a\.json: empty"),
        ([("a.png", b"x"), ("a.json", b'["a list"]')], r"member a\.json: needs a JSON object"),
        ([("a.png", b"x"), ("a.txt", b"\xff\xfe")], r"member a\.txt: not valid UTF-8"),
        ([("a.png", b"x"), ("a.jpg", b"x"), ("a.txt", b"two images")], r"sample a: several image members"),
        ([("a.png", b"x"), ("a.txt", b"one"), ("a.txt", b"two")], r"a second 'txt' member"),
    ],
)
def test_webdataset_errors_name_shard_and_member(tmp_path, members, needle):
    path = write_tar(tmp_path / "s.tar", members)
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(path))
    one_line(exc, re.escape(str(path)), needle)


def test_webdataset_bad_shards(tmp_path):
    with pytest.raises(ProtosynthError, match="matches no files"):
        load_corpus(str(tmp_path / "none-*.tar"))
    with pytest.raises(ProtosynthError, match="no such file"):
        load_corpus(str(tmp_path / "none.tar"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(ProtosynthError, match=r"junk\.tar: not a readable uncompressed tar"):
        load_corpus(str(tmp_path / "junk.tar"))
    write_tar(tmp_path / "other.tar", [("readme.md", b"hello")])
    with pytest.raises(ProtosynthError, match="hold no samples"):
        load_corpus(str(tmp_path / "other.tar"))


def test_webdataset_corrupt_member_fails_when_read(tmp_path, world):
    good = png_bytes(world.images[0])
    path = write_tar(
        tmp_path / "s.tar", [("a.png", good), ("a.txt", b"fine"), ("b.png", good[: len(good) // 2]), ("b.txt", b"cut")]
    )
    corpus = load_corpus(str(path))
    assert np.array_equal(corpus.image_array(0), world.images[0])
    with pytest.raises(ProtosynthError, match="cannot read image") as exc:
        corpus.load_image(1)
    one_line(exc, re.escape(f"{path} member b.png"))


# ---------------------------------------------------------------- --skip-bad, every format


def bad_corpus(fmt: str, tmp_path: Path, world) -> tuple[str, list[str]]:
    """Six images of which 2.png is truncated and 4 is missing; returns the spec and, per bad
    image, a pattern its message must match (file and row)."""
    names = write_images(tmp_path / "img", world)
    truncate(tmp_path / "img" / "2.png")
    (tmp_path / "img" / "4.png").unlink()
    if fmt == "csv":
        path = write_csv(tmp_path / "c.csv", csv_rows(world))
        return str(path), [r"c\.csv row 4: cannot read image", r"c\.csv row 6: image file not found"]
    if fmt == "json":
        path = tmp_path / "k.json"
        path.write_text(json.dumps([{"image": f"img/{n}", "caption": world.captions[i]} for i, n in enumerate(names)]))
        return str(path), [r"k\.json entry 2: cannot read image", r"k\.json entry 4: image file not found"]
    if fmt == "jsonl":
        path = tmp_path / "m.jsonl"
        path.write_text(
            "".join(
                json.dumps({"image": f"img/{n}", "captions": world.captions[i][:2]}) + "\n" for i, n in enumerate(names)
            )
        )
        return str(path), [r"m\.jsonl line 3: cannot read image", r"m\.jsonl line 5: image file not found"]
    members = []
    for i, n in enumerate(names):
        if i != 4:  # the sample whose image member is missing keeps its caption
            members.append((f"{i}.png", (tmp_path / "img" / n).read_bytes()))
        members.append((f"{i}.txt", world.captions[i][0].encode()))
    path = write_tar(tmp_path / "s.tar", members)
    return str(path), [r"s\.tar member 2\.png: cannot read image", r"s\.tar sample 4: no image member"]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "tar"])
def test_skip_bad_drops_and_counts(fmt, tmp_path, world):
    spec, patterns = bad_corpus(fmt, tmp_path, world)
    with pytest.raises(ProtosynthError) as exc:  # without --skip-bad the missing image stops the load
        load_corpus(spec)
    one_line(exc, patterns[1])
    corpus = load_corpus(spec, skip_bad=True)
    assert corpus.skip_bad and len(corpus.skipped) == 2
    for pattern in patterns:
        assert any(re.search(pattern, msg) for msg in corpus.skipped), (pattern, corpus.skipped)
    kept = [0, 1, 3, 5]
    assert corpus.n_images == 4
    for j, i in enumerate(kept):
        assert np.array_equal(corpus.image_array(j), world.images[i])
        assert corpus.captions[j][0] == world.captions[i][0]
    per_image = {"csv": 2, "json": 5, "jsonl": 2, "tar": 1}[fmt]
    assert corpus.n_pairs == 4 * per_image


def test_skip_bad_keeps_the_fingerprint_when_nothing_is_bad(csv_corpus):
    assert load_corpus(str(csv_corpus), skip_bad=True).fingerprint == load_corpus(str(csv_corpus)).fingerprint


def test_skip_bad_changes_the_fingerprint_when_it_drops(tmp_path, world):
    spec, _ = bad_corpus("csv", tmp_path, world)
    skipped = load_corpus(spec, skip_bad=True)
    (tmp_path / "img" / "4.png").write_bytes(png_bytes(world.images[4]))
    (tmp_path / "img" / "2.png").write_bytes(png_bytes(world.images[2]))
    assert load_corpus(spec).fingerprint != skipped.fingerprint


def test_skip_bad_with_every_image_bad(tmp_path, world):
    write_images(tmp_path / "img", world, 2)
    for i in range(2):
        truncate(tmp_path / "img" / f"{i}.png")
    path = write_csv(tmp_path / "c.csv", csv_rows(world, n=2))
    with pytest.raises(ProtosynthError, match=r"every one of its 2 images is unreadable") as exc:
        load_corpus(str(path), skip_bad=True)
    one_line(exc, r"c\.csv row 2")


# ---------------------------------------------------------------- the facade


def test_load_corpus_picks_the_reader_by_spec(csv_corpus, world, tmp_path):
    assert isinstance(load_corpus(str(csv_corpus)), Corpus)
    upper = csv_corpus.with_name("PAIRS.CSV")
    shutil.copy(csv_corpus, upper)
    assert load_corpus(str(upper)).fingerprint.startswith("csv-")
    for spec in (str(tmp_path / "x.jsonl"), "shapes:test,n=4", str(tmp_path / "s.tar"), str(tmp_path / "*.tar")):
        with pytest.raises(ProtosynthError, match=r"^image_root applies to \.json and \.csv"):
            load_corpus(spec, image_root=tmp_path)
    with pytest.raises(ProtosynthError, match=r"unknown corpus 'data\.feather'.*\.csv.*\.tar.*parquet.*hf:"):
        load_corpus("data.feather")
    for spec in (str(tmp_path / "x.jsonl"), "shapes:test,n=4", str(tmp_path / "s.tar"), str(csv_corpus)):
        with pytest.raises(ProtosynthError, match=r"^caption_column applies to \.parquet and hf: corpora"):
            load_corpus(spec, caption_column="text")


def test_world_accepts_skip_bad():
    corpus = load_corpus("shapes,n=4", skip_bad=True)
    assert corpus.n_images == 4 and corpus.skipped == [] and corpus.skip_bad


@pytest.mark.parametrize(
    "spec, name",
    [
        ("shapes:test,n=300", "shapes-test_n=300"),
        ("data/my.jsonl", "my"),
        ("ann/coco_karpathy_train.json", "coco_karpathy_train"),
        ("a/pairs.csv", "pairs"),
        ("x/train-*.tar", "train"),
        ("shards/*.tar", "shards"),
    ],
)
def test_default_out_names(spec, name):
    assert corpus_name(spec) == name


# ---------------------------------------------------------------- through distill, coreset and the CLI


@pytest.fixture
def bad_csv(tmp_path, world) -> Path:
    spec, _ = bad_corpus("csv", tmp_path, world)
    return Path(spec)


def test_cli_missing_image_is_one_line_exit_2(bad_csv, tmp_path):
    out = tmp_path / "out"
    for verb in (["distill"], ["coreset", "--method", "random"]):
        r = CliRunner().invoke(app, [*verb, "--corpus", str(bad_csv), "--budget", "2", "--out", str(out)])
        assert r.exit_code == 2, (r.output, r.exception)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert re.search(rf"{re.escape(str(bad_csv))} row 6: image file not found: .*4\.png", lines[0]), lines[0]
        assert not out.exists()
    r = CliRunner().invoke(
        app, ["distill", "--method", "pds", "--corpus", "shapes,n=4", "--image-root", str(tmp_path), "--budget", "2"]
    )
    assert r.exit_code == 2 and "--image-root applies to" in r.stderr


def test_skip_count_in_distill_and_coreset_manifests(bad_csv, quick_models, tmp_path):
    out = distill(
        DistillConfig(
            method="pds",
            budget=4,
            corpus=CorpusSource(str(bad_csv), skip_bad=True),
            clip=f"small:{quick_models}",
            decoder=f"small:{quick_models}",
            out=tmp_path / "set",
            render=RenderConfig(steps=1, guidance_scale=1.0, batch_size=4),
        )
    )
    record = load_distilled(out, verify=True).manifest["corpus"]
    assert record["skipped_bad"] == 2 and record["skip_bad"] is True and record["image_root"] is None
    assert record["images"] == 4 and record["pairs"] == 8
    assert any("row 6: image file not found" in m for m in record["skipped_first"])

    r = CliRunner().invoke(
        app,
        [
            "coreset",
            "--method",
            "random",
            "--budget",
            "3",
            "--corpus",
            str(bad_csv),
            "--skip-bad",
            "--clip",
            f"small:{quick_models}",
            "--out",
            str(tmp_path / "core"),
        ],
    )
    assert r.exit_code == 0, (r.output, r.exception)
    manifest = json.loads((tmp_path / "core" / "manifest.json").read_text())
    assert manifest["corpus"]["skipped_bad"] == 2 and manifest["settings"]["skip_bad"] is True


def test_evaluation_reloads_a_sets_corpus_the_way_it_was_read(tmp_path, world):
    """Member indices of a set made with --skip-bad point into the corpus without the bad images;
    evaluation re-reads it with the recorded options and refuses a corpus that changed since."""
    spec, _ = bad_corpus("csv", tmp_path, world)
    made_from = load_corpus(spec, skip_bad=True)
    ds = SimpleNamespace(root=tmp_path / "set", manifest={"corpus": corpus_record(made_from)})
    again = source_corpus(ds)
    assert again.pair_caption == made_from.pair_caption and again.fingerprint == made_from.fingerprint
    (tmp_path / "img" / "2.png").write_bytes(png_bytes(world.images[2]))  # the corrupt image is mended
    with pytest.raises(ProtosynthError, match=r"changed since the set was made"):
        source_corpus(ds)


def test_jpeg_decodes_at_reduced_scale_for_a_small_encoder(tmp_path, world):
    """With ``min_side`` a JPEG decodes at the smallest DCT scale that keeps both sides >= it (PIL
    draft): a 256 px JPEG for a 32 px encoder comes back at 32 px, a PNG at full size."""
    big = Image.fromarray(world.images[0]).resize((256, 192), Image.BICUBIC)
    big.save(tmp_path / "a.jpg", quality=95)
    big.save(tmp_path / "b.png")
    write_csv(tmp_path / "c.csv", [["a.jpg", "a jpeg"], ["b.png", "a png"]], header=("image", "caption"))
    corpus = load_corpus(str(tmp_path / "c.csv"))
    assert corpus.load_image(0).size == (256, 192) and corpus.load_image(1).size == (256, 192)
    assert corpus.load_image(0, min_side=32).size == (64, 48)  # 1/4: 1/8 would give 24 px, below 32
    assert corpus.load_image(0, min_side=90).size == (128, 96)
    assert corpus.load_image(0, min_side=100).size == (256, 192)  # 96 px would be below 100
    assert corpus.load_image(1, min_side=32).size == (256, 192)


# ---------------------------------------------------------------- pixel modes, directories


def grey16_file(path: Path, values: np.ndarray, mode: str) -> None:
    """A real 16-bit greyscale file written by PIL from numpy samples: a PNG for ``I;16`` (how Pillow
    opens every 16-bit grey PNG), a TIFF for ``I;16B`` and ``I`` (PNG cannot hold those modes)."""
    h, w = values.shape
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.frombytes(mode, (w, h), values.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    image.save(path)


@pytest.mark.parametrize("mode,name", [("I;16", "g.png"), ("I;16B", "g.tiff"), ("I", "g.tiff")])
def test_16_bit_images_keep_their_grey_levels(tmp_path, mode, name):
    """PIL's convert("RGB") clips 16-bit samples at 255: dark grey (0x3000) came back white. The
    rule is the high byte (value >> 8), as Pillow reads 16-bit RGB PNGs."""
    values = np.array([[0, 0x3000, 0x30FF], [0x8080, 0xFEFF, 0xFFFF]], np.int64).repeat(2, 0).repeat(2, 1)
    grey16_file(tmp_path / name, values, mode)
    with Image.open(tmp_path / name) as im:
        assert im.mode == mode
    write_csv(tmp_path / "c.csv", [[name, "grey steps"]], header=("image", "caption"))
    pixels = load_corpus(str(tmp_path / "c.csv")).image_array(0)
    want = (values >> 8).astype(np.uint8)
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(pixels[:, :, c], want), pixels[:, :, 0]


def test_16_bit_grey_and_rgb_pngs_decode_alike(tmp_path):
    """Pillow opens a 16-bit RGB PNG as 8-bit RGB by its high byte; a 16-bit grey PNG of the same
    values must give the same pixels."""
    values = np.array([[0x3000, 0x0180], [0xFFFF, 0x7F7F]], np.uint16)
    raw = b"".join(b"\x00" + np.repeat(row[:, None], 3, 1).astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)  # 16-bit truecolour
    (tmp_path / "rgb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    grey16_file(tmp_path / "grey.png", values, "I;16")
    write_csv(tmp_path / "c.csv", [["rgb.png", "colour"], ["grey.png", "grey"]], header=("image", "caption"))
    corpus = load_corpus(str(tmp_path / "c.csv"))
    assert np.array_equal(corpus.image_array(0), corpus.image_array(1))
    assert corpus.image_array(1)[0, 0, 0] == 0x30


def test_an_image_mode_without_a_rule_is_refused_by_name(tmp_path):
    """A 32-bit float TIFF (mode F) has no agreed range: refused by its mode, not clipped."""
    Image.fromarray(np.full((4, 4), 0.25, np.float32)).save(tmp_path / "f.tiff")
    write_csv(tmp_path / "c.csv", [["f.tiff", "a float image"]], header=("image", "caption"))
    corpus = load_corpus(str(tmp_path / "c.csv"))
    with pytest.raises(ProtosynthError) as exc:
        corpus.load_image(0)
    one_line(exc, r"c\.csv row 2: cannot read image", r"mode F is not supported")


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_directory_given_as_an_image_is_called_a_directory(tmp_path, world, skip_bad):
    write_images(tmp_path / "img", world, 2)
    (tmp_path / "img" / "folder.png").mkdir()
    rows = [["img/0.png", "fine"], ["img/folder.png", "a folder"], ["img/1.png", "fine too"]]
    path = write_csv(tmp_path / "c.csv", rows, header=("image", "caption"))
    if not skip_bad:
        with pytest.raises(ProtosynthError) as exc:
            load_corpus(str(path))
        one_line(exc, r"c\.csv row 3: ", r"folder\.png is a directory, not an image file")
        return
    corpus = load_corpus(str(path), skip_bad=True)
    assert corpus.n_images == 2 and len(corpus.skipped) == 1
    assert re.search(r"c\.csv row 3: .*folder\.png is a directory, not an image file", corpus.skipped[0])


# ---------------------------------------------------------------- webdataset samples without a caption


def captionless_shard(tmp_path: Path, world) -> Path:
    members = []
    for i in range(3):
        members.append((f"{i}.png", png_bytes(world.images[i])))
        if i != 1:
            members.append((f"{i}.txt", world.captions[i][0].encode()))
    return write_tar(tmp_path / "s.tar", members)


def test_webdataset_sample_without_a_caption_names_shard_and_member(tmp_path, world):
    path = captionless_shard(tmp_path, world)
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(path))
    one_line(exc, re.escape(f"{path} member 1.png"), r"no caption member \(txt or json\)")


def test_skip_bad_skips_and_counts_a_sample_without_a_caption(tmp_path, world):
    """skip_bad drops a captionless sample as it drops a bad image (counted, named), not stop the run."""
    path = captionless_shard(tmp_path, world)
    corpus = load_corpus(str(path), skip_bad=True)
    assert corpus.n_images == 2 and corpus.captions == [[world.captions[0][0]], [world.captions[2][0]]]
    assert np.array_equal(corpus.image_array(1), world.images[2])
    assert len(corpus.skipped) == 1 and re.search(r"s\.tar member 1\.png: no caption member", corpus.skipped[0])


def test_jsonl_existence_check_edge_paths_are_one_line_or_read_as_pathlib_does(tmp_path, world):
    """The fast os.stat check hands anything it refuses to pathlib: a trailing slash still names the
    file (as pathlib and the reader take it), a symlink loop or a NUL in the path is the one-line
    'image file not found', not a traceback."""
    write_images(tmp_path / "img", world, n=2)
    (tmp_path / "img" / "loop.png").symlink_to(tmp_path / "img" / "loop.png")
    manifest = tmp_path / "m.jsonl"

    def write(second: str) -> None:
        rows = [{"image": "img/0.png", "caption": "a"}, {"image": second, "caption": "b"}]
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("img/1.png")
    plain = load_corpus(str(manifest)).fingerprint
    write("img/1.png/")
    corpus = load_corpus(str(manifest))
    assert corpus.n_images == 2 and corpus.image_array(1).shape == world.images[1].shape
    assert corpus.fingerprint != plain  # the manifest's bytes differ; the file's stat was read, no error
    for bad in ("img/loop.png", "img/1\u0000.png"):
        write(bad)
        with pytest.raises(ProtosynthError) as exc:
            load_corpus(str(manifest))
        one_line(exc, r"m\.jsonl line 2: image file not found")
