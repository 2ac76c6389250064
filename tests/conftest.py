"""Shared fixtures: an isolated cache, and tiny models trained once per session with ``--quick``."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

# Every test run gets its own cache, so tests never read or write the user's ~/.cache/protosynth.
# It is removed when the run ends: each one holds up to 400 MB, and leftovers once filled the disk
# CI shares with sessions (the pip install then failed with "No space left on device").
if "PROTOSYNTH_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="protosynth-test-cache-")
    os.environ["PROTOSYNTH_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting threads crawl on a shared CPU

import torch  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

from protosynth.corpora.shapes import (  # noqa: E402
    COLOUR_SYNONYMS,
    POSITION_PHRASES,
    SHAPE_SYNONYMS,
    SIZE_SYNONYMS,
    WorldConfig,
    generate_split,
)
from protosynth.models.clip import load_clip  # noqa: E402
from protosynth.training.backbone import PretrainConfig, pretrain_backbone  # noqa: E402
from protosynth.training.clip import ClipTrainConfig  # noqa: E402
from protosynth.training.small_models import ModelsTrainConfig, train_models  # noqa: E402

torch.set_num_threads(2)

QUICK_CORPUS = "shapes,n=300"

# Fixtures that cost tens of seconds to a minute each on 2 cores: every test using one, even through
# another fixture, is marked slow, so that `make test-fast` (pytest -m "not slow") leaves it out.
# Slow tests that use none of them carry an explicit @pytest.mark.slow.
SLOW_FIXTURES = {
    "quick_models",  # trains a tiny CLIP and decoder (here)
    "tiny_backbone",  # pretrains a ps-nfnet (here)
    "buffers",  # trains expert trajectories (tests/test_baselines.py)
    "published_runs",  # three distill processes with tiny hub decoders (tests/test_real_models.py)
    "ray_address",  # starts a local Ray instance (tests/test_ray.py)
}


def pytest_collection_modifyitems(config, items):
    """Mark each test that needs a slow fixture; other slow tests carry an explicit mark."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory) -> Path:
    """``protosynth models train --quick`` on a 300-image world: a tiny CLIP and decoder."""
    out = tmp_path_factory.mktemp("quick_models")
    clip = ClipTrainConfig(arch="ps-tiny-clip", steps=60, batch_size=64, checkpoint_every=20)
    train_models(ModelsTrainConfig(corpus=QUICK_CORPUS, quick=True, clip=clip), out, command="test fixture")
    return out


@pytest.fixture(scope="module")
def clip():
    """The shipped default CLIP, loaded once per test module."""
    return load_clip("default")


@pytest.fixture
def jsonl_corpus(tmp_path) -> Path:
    """A 12-image JSONL corpus drawn from the world, with both line forms."""
    split = generate_split(WorldConfig(n_train=12), "train")
    (tmp_path / "img").mkdir()
    lines = []
    for i, (im, caps) in enumerate(zip(split.images, split.captions)):
        Image.fromarray(im).save(tmp_path / "img" / f"{i}.png")
        if i % 2:
            lines.append({"image": f"img/{i}.png", "captions": caps})
        else:
            lines.extend({"image": f"img/{i}.png", "caption": c} for c in caps)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def parquet_corpus(tmp_path) -> str:
    """A 17-image parquet corpus drawn from the world, as a glob over two files (images 0-8 and
    9-16) in row groups of 4: PNG bytes in img2dataset's ``jpg`` column and a list ``caption``
    column of 1 to 3 captions a row (33 pairs)."""
    import io  # noqa: PLC0415

    pa = pytest.importorskip("pyarrow", reason="parquet corpora need pyarrow (the corpora extra)")
    import pyarrow.parquet as pq  # noqa: PLC0415

    split = generate_split(WorldConfig(n_train=17), "train")
    cells = []
    for im in split.images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        cells.append(buf.getvalue())
    captions = [caps[: 1 + i % 3] for i, caps in enumerate(split.captions)]
    (tmp_path / "pq").mkdir()
    for name, part in (("part-0", slice(0, 9)), ("part-1", slice(9, 17))):
        table = pa.table({"jpg": cells[part], "caption": captions[part]})
        pq.write_table(table, tmp_path / "pq" / f"{name}.parquet", row_group_size=4)
    return str(tmp_path / "pq" / "part-*.parquet")


@pytest.fixture
def tar_corpus(tmp_path) -> str:
    """A 17-image webdataset corpus drawn from the world, as a glob over two shards (images 0-8 and
    9-16; 33 pairs, 1 to 3 captions an image as in ``parquet_corpus``): PNG images, a ``txt`` member
    for the one-caption samples and a ``json`` ``captions`` list for the others, keys in a folder,
    a directory entry and an ignored ``cls`` member; in the second shard the caption comes before
    the image, and image 12's caption member is the shard's last member (a sample's members need not
    be adjacent)."""
    from helpers import png_bytes, write_tar  # noqa: PLC0415

    split = generate_split(WorldConfig(n_train=17), "train")
    shards: list[list] = [[("part", None)], []]
    late = []
    for i, (im, caps) in enumerate(zip(split.images, split.captions)):
        caps = caps[: 1 + i % 3]
        key = f"part/{i:04d}"
        caption = (
            (f"{key}.txt", caps[0].encode())
            if len(caps) == 1
            else (f"{key}.json", json.dumps({"captions": caps}).encode())
        )
        image = (f"{key}.png", png_bytes(im))
        if i < 9:
            shards[0] += [image, caption, (f"{key}.cls", b"3")]
        elif i == 12:
            shards[1].append(image)
            late.append(caption)
        else:
            shards[1] += [caption, image]
    for j, members in enumerate(shards):
        write_tar(tmp_path / "wds" / f"train-{j:03d}.tar", members + (late if j == 1 else []))
    return str(tmp_path / "wds" / "train-*.tar")


@pytest.fixture
def parquet_bad(parquet_corpus) -> str:
    """``parquet_corpus`` with three rows ``--skip-bad`` drops: row 3's image cut short, row 11 (the
    second file's row 2) a null image with a null caption (which the load never reads) and row 14's
    image not an image."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    for first, path in zip((0, 9), sorted(Path(parquet_corpus).parent.glob("*.parquet"))):
        table = pq.read_table(path)
        jpg, caption = table.column("jpg").to_pylist(), table.column("caption").to_pylist()
        for i in range(first, first + len(jpg)):
            if i == 3:
                jpg[i - first] = jpg[i - first][:60]
            elif i == 11:
                jpg[i - first], caption[i - first] = None, None
            elif i == 14:
                jpg[i - first] = b"not an image"
        columns = {"jpg": pa.array(jpg, pa.binary()), "caption": pa.array(caption, table.schema.field("caption").type)}
        pq.write_table(pa.table(columns), path, row_group_size=4)
    return parquet_corpus


@pytest.fixture
def tar_bad(tar_corpus) -> str:
    """``tar_corpus`` with three samples ``--skip-bad`` drops: image 3 cut short, sample 10 without
    its image member and image 14 not an image."""
    import tarfile  # noqa: PLC0415

    from helpers import write_tar  # noqa: PLC0415

    changed = {"part/0003.png": lambda data: data[:60], "part/0014.png": lambda data: b"not an image"}
    for path in sorted(Path(tar_corpus).parent.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = [(m.name, None if m.isdir() else tar.extractfile(m).read()) for m in tar]
        kept = [(n, changed[n](d) if n in changed else d) for n, d in members if n != "part/0010.png"]
        write_tar(path, kept)
    return tar_corpus


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A ps-nfnet pretrained for one epoch on 300 world images: the small protocol's backbone class."""
    out = tmp_path_factory.mktemp("backbone") / "ps-nfnet"
    pretrain_backbone(PretrainConfig(arch="ps-nfnet", n_images=300, holdout=50, epochs=1), out, command="test fixture")
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (the real transformers classes) with a word-level vocab
    of the world's words, saved with save_pretrained as a Hugging Face folder."""
    words = set()
    for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS, POSITION_PHRASES):
        for phrases in table.values():
            for p in phrases:
                words.update(p.split())
    words.update("a an and the there is are with two three of pair trio shapes plus".split())
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder
