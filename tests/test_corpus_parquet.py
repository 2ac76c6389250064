"""Table corpora through ``load_corpus``: parquet files written by pyarrow (img2dataset's ``jpg`` +
``caption`` layout, or a ``datasets`` Image() struct) and Hugging Face datasets (a ``save_to_disk``
folder, and a name in the local ``datasets`` cache, read offline). The same corpus as JSONL and as
parquet must give the same captions, pixels and embeddings; every error is one line naming the file
(or dataset) and the row or column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.packaged_modules.parquet.parquet import Parquet
from helpers import assert_one_line_error, jpg_bytes, png_bytes
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.corpora.parquet import CACHED_GROUPS
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpora.spec import corpus_name
from protosynth.corpus import load_corpus
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import source_corpus
from protosynth.models.clip import load_clip
from protosynth.sets.distilled import load_distilled

N = 8
PNG_SIGNATURE = b"\x89PNG"


@pytest.fixture(scope="module")
def world():
    return generate_split(WorldConfig(n_train=N), "train")


def encoded(world) -> list[bytes]:
    """Even images as PNG, odd as JPEG: both codecs through the same column."""
    return [png_bytes(im) if i % 2 == 0 else jpg_bytes(im, quality=90) for i, im in enumerate(world.images)]


def write_parquet(path: Path, columns: dict, row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_jsonl_twin(folder: Path, images: list[bytes], captions: list) -> Path:
    """The same corpus as a JSONL manifest with image files."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (data, caps) in enumerate(zip(images, captions)):
        name = f"{i}.png" if data.startswith(PNG_SIGNATURE) else f"{i}.jpg"
        (folder / name).write_bytes(data)
        lines.append({"image": name, "captions": caps} if isinstance(caps, list) else {"image": name, "caption": caps})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "corpus.jsonl"


@pytest.fixture
def img2dataset(tmp_path, world) -> Path:
    """img2dataset's layout: binary ``jpg``, one string ``caption`` per row, plus other columns."""
    return write_parquet(
        tmp_path / "00000.parquet",
        {
            "key": [f"{i:09d}" for i in range(N)],
            "jpg": encoded(world),
            "caption": [world.captions[i][0] for i in range(N)],
            "status": ["success"] * N,
        },
    )


def test_parquet_and_jsonl_give_the_same_captions_pixels_and_embeddings(img2dataset, tmp_path, world):
    twin = write_jsonl_twin(tmp_path / "twin", encoded(world), [world.captions[i][0] for i in range(N)])
    table, manifest = load_corpus(str(img2dataset)), load_corpus(str(twin))
    assert table.fingerprint.startswith("parquet-") and table.spec == str(img2dataset)
    assert table.captions == manifest.captions == [[world.captions[i][0]] for i in range(N)]
    for i in (5, 0, 7, 2, 3):  # random access across row groups
        assert np.array_equal(table.image_array(i), manifest.image_array(i))
    assert np.array_equal(table.image_array(0), world.images[0])  # PNG rows are the world's pixels
    clip = load_clip("default")
    stores = [
        embed_corpus(c, clip, EmbedConfig(out=tmp_path / name, num_workers=0, shard_size=5))
        for c, name in ((table, "table-store"), (manifest, "jsonl-store"))
    ]
    assert stores[0].image.numpy().shape == (N, clip.embed_dim)
    assert np.array_equal(stores[0].image.numpy(), stores[1].image.numpy())
    assert np.array_equal(stores[0].text.numpy(), stores[1].text.numpy())


def test_glob_reads_files_in_sorted_order_with_a_bounded_cache(tmp_path, world):
    images = encoded(world)
    for name, part in (("b", slice(4, N)), ("a", slice(0, 4))):  # written out of order
        write_parquet(
            tmp_path / "shards" / f"{name}.parquet",
            {"jpg": images[part], "caption": [c[0] for c in world.captions[part]]},
            row_group_size=1,
        )
    corpus = load_corpus(str(tmp_path / "shards" / "*.parquet"))
    assert corpus.captions == [[c[0]] for c in world.captions]
    for i in range(N - 1, -1, -1):
        assert np.array_equal(corpus.image_array(i), load_corpus(str(tmp_path / "shards" / "*.parquet")).image_array(i))
    assert len(corpus.source.cache) == CACHED_GROUPS  # eight row groups read, four kept
    assert corpus_name(str(tmp_path / "shards" / "*.parquet")) == "shards"
    assert load_corpus(str(tmp_path / "shards" / "*.parquet")).fingerprint == corpus.fingerprint
    sub = corpus.subset([6, 1], "sub")
    assert np.array_equal(sub.image_array(0), corpus.image_array(6)) and sub.captions[1] == corpus.captions[1]


def test_fingerprint_follows_files_and_columns(img2dataset, world):
    fp = load_corpus(str(img2dataset)).fingerprint
    other = load_corpus(str(img2dataset), caption_column="key")
    assert other.fingerprint != fp and other.captions[3] == ["000000003"]
    write_parquet(img2dataset, {"jpg": encoded(world)[::-1], "caption": [c[0] for c in world.captions]})
    assert load_corpus(str(img2dataset)).fingerprint != fp


def test_struct_image_column_and_list_captions_with_custom_names(tmp_path, world):
    """A datasets Image() column written to parquet (struct of bytes and path) and a list caption
    column (several captions of one image), under other names."""
    images = [{"bytes": data, "path": None} for data in encoded(world)]
    images[3] = {"bytes": None, "path": "files/3.jpg"}  # an image stored by path, relative to the file
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "3.jpg").write_bytes(encoded(world)[3])
    path = write_parquet(tmp_path / "t.parquet", {"picture": images, "texts": world.captions})
    corpus = load_corpus(str(path), image_column="picture", caption_column="texts")
    twin = load_corpus(str(write_jsonl_twin(tmp_path / "twin", encoded(world), world.captions)))
    assert corpus.captions == twin.captions and corpus.n_pairs == 5 * N
    for i in range(N):
        assert np.array_equal(corpus.image_array(i), twin.image_array(i))
    assert (corpus.image_column, corpus.caption_column) == ("picture", "texts")


def test_a_missing_column_is_one_line_naming_file_column_and_columns(img2dataset, tmp_path):
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(img2dataset), caption_column="text")
    assert str(exc.value) == (
        f"{img2dataset}: no caption column 'text' (set caption_column); its columns: key, jpg, caption, status"
    )
    for verb in (["embed"], ["distill", "--method", "pds", "--budget", "2"]):
        r = CliRunner().invoke(app, [*verb, "--corpus", str(img2dataset), "--image-column", "image"])
        assert_one_line_error(r, str(img2dataset), r"no image column 'image' \(set --image-column\)", "key, jpg")
    r = CliRunner().invoke(app, ["embed", "--corpus", "shapes,n=4", "--caption-column", "text"])
    assert_one_line_error(r, r"--caption-column applies to \.parquet and hf: corpora")
    with pytest.raises(ProtosynthError, match=r"column 'key' holds string, not images"):
        load_corpus(str(img2dataset), image_column="key")


def test_bad_rows_are_named_and_skip_bad_skips_them(tmp_path, world):
    images = encoded(world)
    images[2] = b"not an image"
    images[5] = None  # img2dataset writes failed downloads as rows with a null image
    path = write_parquet(tmp_path / "bad.parquet", {"jpg": images, "caption": [c[0] for c in world.captions]})
    with pytest.raises(ProtosynthError) as exc:
        load_corpus(str(path))  # a null image is found at load, from the row group statistics
    assert str(exc.value) == f"{path} row 5: no image (the 'jpg' value is null)"
    write_parquet(path, {"jpg": images[:5], "caption": [c[0] for c in world.captions[:5]]})
    corpus = load_corpus(str(path))  # a corrupt image is found when read
    with pytest.raises(ProtosynthError, match=rf"^{path} row 2: cannot read image in column 'jpg'"):
        corpus.image_array(2)
    r = CliRunner().invoke(app, ["embed", "--corpus", str(path), "--out", str(tmp_path / "store")])
    assert_one_line_error(r, rf"{path} row 2: cannot read image")

    write_parquet(path, {"jpg": images, "caption": [c[0] for c in world.captions]})
    skipped = load_corpus(str(path), skip_bad=True)
    assert skipped.n_images == N - 2 and skipped.skip_bad
    assert [m.split(":")[0] for m in skipped.skipped] == [f"{path} row 5", f"{path} row 2"]
    assert skipped.captions == [[world.captions[i][0]] for i in range(N) if i not in (2, 5)]
    assert np.array_equal(skipped.image_array(2), load_corpus(str(path), skip_bad=True).image_array(2))


@pytest.mark.parametrize("caption, needle", [(None, "the caption is null"), ("  ", "empty or non-string caption")])
def test_a_null_or_empty_caption_is_named(tmp_path, world, caption, needle):
    captions = [c[0] for c in world.captions]
    captions[4] = caption
    path = write_parquet(tmp_path / "c.parquet", {"jpg": encoded(world), "caption": captions})
    for skip_bad in (False, True):  # written wrong, not unreadable: skip_bad does not drop it
        with pytest.raises(ProtosynthError, match=rf"^{path} row 4: {needle}"):
            load_corpus(str(path), skip_bad=skip_bad)


def test_not_a_parquet_file_and_no_match(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(ProtosynthError, match=r"x\.parquet: not a readable parquet file"):
        load_corpus(str(tmp_path / "x.parquet"))
    with pytest.raises(ProtosynthError, match=r"the glob matches no files"):
        load_corpus(str(tmp_path / "none" / "*.parquet"))


# ---------------------------------------------------------------- Hugging Face datasets


def image_dataset(world, rows: range) -> datasets.Dataset:
    """A datasets Dataset with an Image() feature and Flickr30k's list captions."""
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": encoded(world)[i], "path": None} for i in rows],
            "caption": [world.captions[i] for i in rows],
        }
    )
    return ds.cast_column("image", datasets.Image())


def test_save_to_disk_dataset_with_image_feature_and_list_captions(tmp_path, world):
    image_dataset(world, range(N)).save_to_disk(str(tmp_path / "saved"))
    twin = load_corpus(str(write_jsonl_twin(tmp_path / "twin", encoded(world), world.captions)))
    for spec in (str(tmp_path / "saved"), f"hf:{tmp_path / 'saved'}"):
        corpus = load_corpus(spec)
        assert corpus.fingerprint.startswith("hf-") and corpus.captions == twin.captions
        for i in (6, 1):
            assert np.array_equal(corpus.image_array(i), twin.image_array(i))
    assert load_corpus(str(tmp_path / "saved")).fingerprint == corpus.fingerprint
    assert corpus_name(str(tmp_path / "saved")) == "saved"

    datasets.DatasetDict(train=image_dataset(world, range(5)), test=image_dataset(world, range(5, N))).save_to_disk(
        str(tmp_path / "dict")
    )
    test = load_corpus(f"hf:{tmp_path / 'dict'}:test")
    assert test.captions == world.captions[5:] and np.array_equal(test.image_array(0), twin.image_array(5))
    assert load_corpus(str(tmp_path / "dict")).n_images == 5  # no split named: train
    assert corpus_name(f"hf:{tmp_path / 'dict'}:test") == "dict-test"
    with pytest.raises(ProtosynthError, match=r"no split 'val'; it has train, test"):
        load_corpus(f"hf:{tmp_path / 'dict'}:val")


def test_hf_missing_column_and_null_image_are_named(tmp_path, world):
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in encoded(world)[:3]] + [None], "text": ["a", "b", "c", "d"]}
    ).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    r = CliRunner().invoke(app, ["embed", "--corpus", str(tmp_path / "ds")])
    assert_one_line_error(r, rf"{tmp_path / 'ds'}: no caption column 'caption' \(set --caption-column\); its columns")
    with pytest.raises(ProtosynthError, match=rf"^{tmp_path / 'ds'} row 3: no image \(the 'image' value is null\)"):
        load_corpus(str(tmp_path / "ds"), caption_column="text")
    corpus = load_corpus(str(tmp_path / "ds"), caption_column="text", skip_bad=True)
    assert corpus.captions == [["a"], ["b"], ["c"]] and len(corpus.skipped) == 1


def test_hf_name_from_the_local_cache_offline(tmp_path, world, monkeypatch):
    """``hf:NAMESPACE/NAME:SPLIT`` is found in the datasets cache the way a Hub download left it
    (datasets' own parquet builder writes the cache entry); a name not there is one line, no download."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    data = tmp_path / "data"
    data.mkdir()
    image_dataset(world, range(N)).to_parquet(str(data / "test-00000.parquet"))
    builder = Parquet(
        cache_dir=str(cache),
        dataset_name="tiny_flickr",
        config_id="default",
        data_files={"test": [str(data / "test-00000.parquet")]},
        hash="0123abcd",
    )
    builder.download_and_prepare()
    # a Hub download of someone/tiny_flickr lands in NAMESPACE___NAME/CONFIG/VERSION/HASH/NAME-SPLIT.arrow
    shutil.move(cache / "tiny_flickr", cache / "someone___tiny_flickr")
    corpus = load_corpus("hf:someone/tiny_flickr:test")
    assert corpus.spec == "hf:someone/tiny_flickr:test" and corpus.captions == world.captions
    assert np.array_equal(corpus.image_array(0), world.images[0])
    assert load_corpus("hf:someone/tiny_flickr").fingerprint == corpus.fingerprint  # its one split
    assert corpus_name("hf:someone/tiny_flickr:test") == "tiny_flickr-test"
    folder = load_corpus(f"hf:{data}:test")  # a local folder of data files, read by load_dataset
    assert folder.captions == world.captions and folder.spec == f"hf:{data}:test"
    r = CliRunner().invoke(app, ["embed", "--corpus", "hf:someone/not_downloaded"])
    assert_one_line_error(r, r"'someone/not_downloaded' is neither in the local datasets cache", "never downloads")


# ---------------------------------------------------------------- end to end


def test_distill_a_parquet_corpus_from_the_command_line(tmp_path, world):
    path = write_parquet(
        tmp_path / "pairs.parquet", {"image": encoded(world), "text": [c[0] for c in world.captions]}, row_group_size=4
    )
    out = tmp_path / "set"
    args = [
        "distill",
        "--method",
        "pds",
        "--budget",
        "4",
        "--corpus",
        str(path),
        "--image-column",
        "image",
        "--caption-column",
        "text",
    ]
    r = CliRunner().invoke(app, [*args, "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    ds = load_distilled(out, verify=True)
    record = ds.manifest["corpus"]
    assert record["spec"] == str(path) and record["images"] == N
    assert (record["image_column"], record["caption_column"]) == ("image", "text")
    assert source_corpus(ds).fingerprint == record["fingerprint"]  # evaluation re-reads it with the same columns
