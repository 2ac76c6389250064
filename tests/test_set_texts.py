"""Self-contained sets (issue 30): each pair stores the captions its text readings average and the set
stores its members' image digests, so a set is scored, loaded and overlap-checked without its corpus,
to the same numbers; a set made before (no stored captions) still reads them from the corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from protosynth.baselines.buffer import BufferConfig, build_buffer
from protosynth.baselines.presets import BaselineConfig
from protosynth.baselines.run import distill_baseline
from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import set_data
from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.models.backbones import load_backbone
from protosynth.models.text_encoders import load_text_encoder
from protosynth.render import RenderConfig
from protosynth.sets.distilled import load_distilled
from protosynth.sets.export import ExportConfig, export_set
from protosynth.sets.report import ReportConfig, build_report
from protosynth.sets.texts import MEMBER_IMAGES
from protosynth.util.files import sha256_file

TEST = "shapes:test,n=40"


def tiny_eval(backbone: Path, **kw) -> EvalConfig:
    base = dict(protocol="small", backbone=f"small:{backbone}", test=TEST, repeats=1, epochs=2)
    return EvalConfig(**{**base, **kw})


def scores(folder: Path, backbone: Path, text: str) -> dict:
    row = evaluate([folder], tiny_eval(backbone, text=text))["sets"][0]
    return {"text": row["text"], **{k: v["runs"] for k, v in row["metrics"].items()}}


def as_old_set(folder: Path, out: Path) -> Path:
    """A copy of ``folder`` as a set made before the captions and digests were stored."""
    shutil.copytree(folder, out)
    stored = ("captions_members", "captions_image", "image_pairs")
    lines = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    old = [{k: v for k, v in x.items() if k not in stored} for x in lines]
    (out / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in old))
    (out / MEMBER_IMAGES).unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(out / name) for name in manifest["files"] if name != MEMBER_IMAGES}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def file_set(jsonl_corpus, quick_models, tmp_path) -> Path:
    """A PDS set (start image and its caption) made from a JSONL corpus of 12 images."""
    out = tmp_path / "sets" / "pds"
    return distill(
        DistillConfig(
            method="pds",
            budget=4,
            corpus=str(jsonl_corpus),
            clip=f"small:{quick_models}",
            decoder=f"small:{quick_models}",
            out=out,
            caption="start",
            render=RenderConfig(steps=2, init="nearest", strength=0.3),
        )
    )


def test_a_file_set_scores_the_same_after_its_corpus_is_deleted(file_set, jsonl_corpus, tiny_backbone):
    before = {text: scores(file_set, tiny_backbone, text) for text in ("members", "image", "captions")}
    ds = load_distilled(file_set, verify=True)
    corpus = load_corpus(str(jsonl_corpus))
    for p in ds.pairs:
        assert p["captions_members"] == [corpus.pair_caption[m] for m in p["members"]]
        image = int(corpus.pair_image[p["start_pair"]])
        assert p["image_pairs"] == [q for q in range(corpus.n_pairs) if int(corpus.pair_image[q]) == image]
        assert p["captions_image"] == [corpus.pair_caption[q] for q in p["image_pairs"]]
    shutil.rmtree(jsonl_corpus.parent / "img")
    jsonl_corpus.unlink()
    after = {text: scores(file_set, tiny_backbone, text) for text in ("members", "image", "captions")}
    assert after == before
    assert before["members"]["text"] == "members" and before["members"] != before["image"]
    with pytest.raises(ProtosynthError, match="needs the source corpus of this set"):
        scores(file_set, tiny_backbone, "image-captions")


def test_load_distilled_gives_the_scored_text(file_set, tiny_backbone):
    ds = load_distilled(file_set)
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    assert ds.text_reading == ds.manifest["evaluation"]["text"] == "members"  # distill's default at 4 pairs
    for reading in ("members", "image", "captions"):
        scored = set_data(ds, enc, bb, 32, False, reading).texts
        lists = ds.scored_captions(reading)
        assert len(lists) == len(ds) and all(lists)
        want = torch.stack([enc.encode(c).mean(0) for c in lists])
        assert torch.allclose(scored, want, atol=1e-5), reading
    assert ds.scored_captions() == ds.scored_captions("members")
    with pytest.raises(ProtosynthError, match="text 'soft'"):
        ds.scored_captions("soft")


def test_stored_and_corpus_readings_are_identical(file_set, jsonl_corpus, tiny_backbone, tmp_path):
    old = as_old_set(file_set, tmp_path / "old")
    assert load_distilled(old, verify=True).scored_captions("members") is None
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    for reading in ("members", "image"):
        new_texts = set_data(load_distilled(file_set), enc, bb, 32, False, reading).texts
        old_texts = set_data(load_distilled(old), enc, bb, 32, False, reading).texts
        assert torch.equal(new_texts, old_texts), reading
        assert scores(file_set, tiny_backbone, reading) == scores(old, tiny_backbone, reading)
    shutil.rmtree(jsonl_corpus.parent / "img")
    jsonl_corpus.unlink()
    with pytest.raises(ProtosynthError, match="needs the source corpus of this set"):
        scores(old, tiny_backbone, "members")


def test_overlap_check_reads_the_stored_digests(file_set, jsonl_corpus, tiny_backbone, tmp_path):
    # a test split holding the corpus's first images (a different fingerprint), then the corpus deleted
    test = tmp_path / "test"
    shutil.copytree(jsonl_corpus.parent / "img", test / "img")
    lines = jsonl_corpus.read_text().splitlines()[:8]
    (test / "t.jsonl").write_text("\n".join(lines) + "\n")
    digests = json.loads((file_set / MEMBER_IMAGES).read_text())["images"]
    assert len(digests) > 1 and all(len(bytes.fromhex(d)) == 20 for _, d in digests)
    shutil.rmtree(jsonl_corpus.parent / "img")
    jsonl_corpus.unlink()
    with pytest.raises(ProtosynthError, match="member image .* is test image"):
        evaluate([file_set], tiny_eval(tiny_backbone, test=str(test / "t.jsonl")))


def test_coreset_pairs_store_their_image_captions(jsonl_corpus, quick_models, tiny_backbone, tmp_path):
    cfg = CoresetConfig(method="random", budget=5, corpus=str(jsonl_corpus), clip=f"small:{quick_models}")
    folder = build_coreset(CoresetConfig(**{**cfg.__dict__, "out": tmp_path / "core"}))
    ds = load_distilled(folder, verify=True)
    corpus = load_corpus(str(jsonl_corpus))
    for p in ds.pairs:
        assert p["captions_members"] == [p["caption"]]
        assert p["captions_image"] == corpus.captions[int(corpus.pair_image[p["caption_pair"]])]
    rows = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["captions_image"] for r in rows] == [p["captions_image"] for p in ds.pairs]  # the card's metadata
    assert "captions_image" in (folder / "README.md").read_text()
    before = scores(folder, tiny_backbone, "image")
    shutil.rmtree(jsonl_corpus.parent / "img")
    jsonl_corpus.unlink()
    assert scores(folder, tiny_backbone, "image") == before
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (the share extra)")
    table = pq.read_table(export_set(folder, ExportConfig(to="parquet", out=tmp_path / "core.parquet")))
    assert table.column("captions_image").to_pylist() == [p["captions_image"] for p in ds.pairs]  # and exports


def test_report_needs_no_corpus_and_names_the_reading(file_set, jsonl_corpus, tmp_path):
    shutil.rmtree(jsonl_corpus.parent / "img")
    jsonl_corpus.unlink()
    page = build_report([file_set], ReportConfig(out=tmp_path / "r.html")).read_text()
    assert "text reading <b>members</b>" in page and "source corpus could not be loaded" in page


def test_baseline_pairs_store_their_start_pair_captions(tmp_path):
    corpus = "shapes,n=40"
    buffer = build_buffer(BufferConfig(corpus=corpus, experts=1, epochs=2, batch_size=16, out=tmp_path / "buf"))
    cfg = BaselineConfig(
        method="mtt-vl", budget=6, buffer=buffer, out=tmp_path / "mtt", iterations=2, syn_steps=2, batch_syn=6
    )
    ds = load_distilled(distill_baseline(cfg), verify=True)
    world = load_corpus(corpus)
    for p in ds.pairs:
        assert p["members"] == [p["init_pair"]] and p["captions_members"] == [p["caption"]]
        assert p["captions_image"] == world.captions[int(world.pair_image[p["init_pair"]])]
    images = sorted({int(world.pair_image[p["init_pair"]]) for p in ds.pairs})
    assert [k for k, _ in ds.member_images["images"]] == [world.image_keys[i] for i in images]


def test_member_means_are_encoded_once_per_encoder_and_input(file_set):
    """The members' means cost an encoding of most of a corpus's captions: the same set (or a
    selection with the same groups) read again takes them from the cache, with the same values."""
    from protosynth.evaluation.data import _member_texts  # noqa: PLC0415 (the cached step itself)
    from protosynth.models.text_encoders import TextEncoder  # noqa: PLC0415

    seen: list[str] = []

    def encode(captions: list[str]) -> torch.Tensor:
        seen.extend(captions)
        return torch.tensor([[float(len(c)), float(sum(map(ord, c)) % 97)] for c in captions])

    ds = load_distilled(file_set)
    first = _member_texts(ds, TextEncoder("lengths-test", "lengths", 2, encode), normalise=False)
    encoded = len(seen)
    assert encoded > 0
    again = _member_texts(ds, TextEncoder("lengths-test", "lengths", 2, encode), normalise=False)
    assert len(seen) == encoded and torch.equal(first, again)
    _member_texts(ds, TextEncoder("lengths-test", "lengths", 2, encode), normalise=False, mode="image")
    assert len(seen) > encoded  # another reading is another input
    other = _member_texts(ds, TextEncoder("lengths-test-2", "lengths", 2, encode), normalise=False)
    assert torch.equal(other, first) and len(seen) > encoded  # another encoder spec is never served from it
