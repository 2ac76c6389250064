"""The main job end to end: ``distill()`` on the tiny ``--quick`` models and a 300-image world.

Real classes throughout (open_clip CLIP, diffusers pipeline, faiss, the on-disk cache); only the
atomic-write test injects a failure into the writer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from pds_code import authors_steps
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import protosynth.distill as distill_module
import protosynth.sets.distilled
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill, distill_render, render_captions
from protosynth.embed import embed_corpus
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import has_own_recipe, recipe_data, set_data, unsupported_reading
from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.evaluation.protocols import get_protocol
from protosynth.evaluation.retrieval import train_and_score
from protosynth.models.backbones import load_backbone
from protosynth.models.clip import load_clip
from protosynth.models.decoders import Decoder, open_decoder
from protosynth.models.small_unclip import to_unit_range
from protosynth.models.text_encoders import load_text_encoder
from protosynth.prototypes import Prototypes, central_members, nearest_rows
from protosynth.render import RenderConfig, fidelity, pixel_embedder, render_images, resolve_render
from protosynth.sets.distilled import load_distilled
from protosynth.soft_labels import DEFAULT_SOFT_TEMPERATURE
from protosynth.starts import blended_condition, start_image

CORPUS = "shapes,n=300"
BUDGET = 12
TENSORS = ("image_raw", "image_normalised", "text_raw", "text_normalised")
FAST = RenderConfig(steps=1, guidance_scale=1.0)  # where the pixels do not matter


def make_cfg(models: Path, out: Path, **kw) -> DistillConfig:
    # 3 denoising steps keep renders fast; a selection renders nothing and refuses render settings
    render = kw.pop("render", RenderConfig() if kw.get("method") == "select" else RenderConfig(steps=3))
    return DistillConfig(
        **{
            "method": "pds",
            "budget": BUDGET,
            "corpus": CORPUS,
            "clip": f"small:{models}",
            "decoder": f"small:{models}",
            "out": out,
            "render": render,
            **kw,
        }
    )


def tree_bytes(root: Path, names=("images", "pairs.jsonl", "embeddings.safetensors")) -> dict[str, bytes]:
    out = {}
    for name in names:
        p = root / name
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            out[str(f.relative_to(root))] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh embedding cache for this module, so the first run really embeds."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTOSYNTH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def full_run(quick_models, cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "set"
    assert distill(make_cfg(quick_models, out)) == out
    return out


def test_layout(full_run):
    files = sorted(str(p.relative_to(full_run)) for p in full_run.rglob("*") if p.is_file())
    images = [f"images/{i:06d}.png" for i in range(BUDGET)]
    rest = ["pairs.jsonl", "embeddings.safetensors", "preview.png", "metadata.jsonl", "README.md", "manifest.json"]
    assert files == sorted(images + rest + ["member_images.json"])  # the members' image digests (issue 30)
    assert [p.name for p in full_run.parent.iterdir()] == ["set"], "temporary folder left behind"
    for name in images:
        with Image.open(full_run / name) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    with Image.open(full_run / "preview.png") as im:
        assert im.format == "PNG" and im.width > 96 and im.height > 96
        assert len(np.unique(np.asarray(im.convert("L")))) > 2, "preview is blank"


def test_pairs_jsonl(full_run, quick_models):
    recs = [json.loads(line) for line in (full_run / "pairs.jsonl").read_text().splitlines()]
    corpus = load_corpus(CORPUS)
    assert len(recs) == BUDGET
    members_seen = []
    for i, rec in enumerate(recs):
        assert {"index", "image", "caption", "members"} <= set(rec)
        assert rec["index"] == i and rec["image"] == f"images/{i:06d}.png"
        assert isinstance(rec["caption"], str) and rec["caption"] in corpus.pair_caption
        assert rec["members"] and all(isinstance(m, int) and 0 <= m < corpus.n_pairs for m in rec["members"])
        members_seen.extend(rec["members"])
    assert len(set(members_seen)) > BUDGET  # the prototypes summarise many pairs, not one each
    # PDS's caption, recorded for every pair, is the real caption nearest to the text prototype (cached
    # embeddings, same CLIP); the default pairs each render with the caption of the member it started from
    emb = embed_corpus(corpus, load_clip(f"small:{quick_models}"))
    assert emb.from_cache
    text = load_file(str(full_run / "embeddings.safetensors"))["text_normalised"].numpy()
    nearest = nearest_rows(text, emb.text.numpy())
    assert [r["prototype_caption"] for r in recs] == [corpus.pair_caption[int(j)] for j in nearest]
    assert all(r["caption_rule"] == "start" and r["caption"] == corpus.pair_caption[r["start_pair"]] for r in recs)
    assert all(r["start_pair"] in r["members"] for r in recs)


def test_embeddings_file(full_run):
    t = load_file(str(full_run / "embeddings.safetensors"))
    assert set(TENSORS) <= set(t)
    dim = t["image_raw"].shape[1]
    for name in TENSORS:
        assert t[name].shape == (BUDGET, dim) and t[name].dtype == torch.float32
        assert torch.isfinite(t[name]).all()
    for half in ("image", "text"):
        normed, raw = t[f"{half}_normalised"], t[f"{half}_raw"]
        torch.testing.assert_close(normed.norm(dim=1), torch.ones(BUDGET), atol=1e-5, rtol=0)
        torch.testing.assert_close(raw / raw.norm(dim=1, keepdim=True), normed, atol=1e-5, rtol=0)
        assert not torch.allclose(raw.norm(dim=1), torch.ones(BUDGET))  # raw = the CLIP's own scale
    with safe_open(str(full_run / "embeddings.safetensors"), "pt") as fh:
        assert fh.metadata()["text_space"].startswith("small-clip:")


def test_manifest(full_run, quick_models):
    m = json.loads((full_run / "manifest.json").read_text())
    on_disk = {str(p.relative_to(full_run)) for p in full_run.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for name, digest in m["files"].items():
        assert hashlib.sha256((full_run / name).read_bytes()).hexdigest() == digest, name
    assert m["method"] == "pds" and m["budget"] == BUDGET and m["mode"] == "matched" and m["seed"] == 0
    corpus = load_corpus(CORPUS)
    assert m["corpus"]["fingerprint"] == corpus.fingerprint and m["corpus"]["pairs"] == corpus.n_pairs == 1500
    assert m["clip"]["spec"] == f"small:{quick_models}" and m["decoder"]["spec"] == f"small:{quick_models}"
    assert m["clip"]["dim"] == m["decoder"]["conditioning_dim"]
    assert m["settings"]["render"]["steps"] == 3 and m["settings"]["budget"] == BUDGET
    # batch sizes are part of what made the bytes (another one can move a pixel or an embedding's last
    # bits): both are recorded, the render's resolved to the decoder's default
    assert m["settings"]["render"]["batch_size"] == 100 and m["settings"]["embed"]["batch_size"] == 256
    assert m["embeddings_from_cache"] is False
    assert m["prototype_stats"]["pairs"] == 1500 and m["prototype_stats"]["dropped"] == 300
    assert set(m["seconds"]) >= {"load", "embed", "prototypes", "render", "write"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in m["seconds"].values())
    assert m["seconds"]["render"] > 0
    assert m["peak_memory_mb"] > 50
    assert m["versions"]["torch"] == importlib.metadata.version("torch") and m["versions"]["faiss-cpu"] != "absent"
    assert m["threads"] == {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
    fid = m["render_fidelity"]
    assert fid["n"] == BUDGET and 0 <= fid["top1"] <= fid["top5"] <= 100 and -1 <= fid["mean_cosine"] <= 1


def test_render_fidelity_is_measured_on_the_written_images(full_run, quick_models):
    """Re-embedding the PNGs on disk against the image prototypes reproduces the manifest's numbers."""
    ds = load_distilled(full_run)
    images = [ds.image(i) for i in range(len(ds))]
    got = fidelity(load_clip(f"small:{quick_models}"), images, ds.tensors["image_normalised"])
    assert got == json.loads((full_run / "manifest.json").read_text())["render_fidelity"]


def test_same_config_twice_is_identical_and_cached(full_run, quick_models, tmp_path):
    again = distill(make_cfg(quick_models, tmp_path / "again"))
    first, second = tree_bytes(full_run), tree_bytes(again)
    assert sorted(first) == sorted(second) and len(first) == BUDGET + 2
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs of the same config"
    assert json.loads((again / "manifest.json").read_text())["embeddings_from_cache"] is True


def test_embeddings_file_is_byte_identical_across_writes(full_run, tmp_path):
    """The issue's 'Must show': same command and seed twice give a byte-identical embeddings file.
    ``write_distilled`` is called 16 times with the very same inputs as a real run."""
    ds = load_distilled(full_run)
    images = [ds.image(i) for i in range(len(ds))]
    blobs = set()
    for k in range(16):
        out = protosynth.sets.distilled.write_distilled(
            tmp_path / f"w{k}", images, ds.pairs, ds.tensors, {"method": "pds"}, text_space=ds.metadata["text_space"]
        )
        blobs.add((out / "embeddings.safetensors").read_bytes())
    assert len(blobs) == 1, f"{len(blobs)} different embeddings.safetensors from identical inputs"


@pytest.mark.parametrize("mode", ["joint", "image", "text"])
def test_every_other_mode(mode, full_run, quick_models, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / mode, mode=mode, budget=8, render=FAST))
    ds = load_distilled(out, verify=True)
    assert len(ds) == 8 and ds.manifest["mode"] == mode
    members = [m for p in ds.pairs for m in p["members"]]
    assert len(members) == len(set(members)) == 1200  # one clustering: a partition of the kept pairs
    assert np.isfinite(ds.tensors["image_raw"].numpy()).all()


def test_init_nearest_starts_from_member_images(full_run, quick_models, tmp_path):
    out = distill(
        make_cfg(quick_models, tmp_path / "nearest", render=RenderConfig(steps=10, init="nearest", strength=0.3))
    )
    from_noise = distill(make_cfg(quick_models, tmp_path / "noise", render=RenderConfig(steps=10, init="noise")))
    ds, ref = load_distilled(out, verify=True), load_distilled(from_noise)
    assert (
        ds.manifest["settings"]["render"]["init"] == "nearest" and ref.manifest["settings"]["render"]["init"] == "noise"
    )
    assert [p["members"] for p in ds.pairs] == [p["members"] for p in ref.pairs]  # same prototypes
    corpus = load_corpus(CORPUS)

    def dist_to_members(s, i):  # pixel MSE from render i to its closest member image
        img = np.asarray(s.image(i), np.float32)
        members = np.stack([corpus.image_array(int(corpus.pair_image[m])) for m in s.pairs[i]["members"]])
        return float(((members.astype(np.float32) - img) ** 2).mean(axis=(1, 2, 3)).min())

    near = np.mean([dist_to_members(ds, i) for i in range(BUDGET)])
    noise = np.mean([dist_to_members(ref, i) for i in range(BUDGET)])
    assert near < 0.5 * noise, (near, noise)


def test_load_distilled_dataset(full_run):
    ds = load_distilled(full_run, verify=True)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == BUDGET
    pairs = [json.loads(line) for line in (full_run / "pairs.jsonl").read_text().splitlines()]
    text = load_file(str(full_run / "embeddings.safetensors"))["text_normalised"]
    for i in (0, BUDGET - 1):
        image, caption, emb = ds[i]
        assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        with Image.open(full_run / pairs[i]["image"]) as im:
            expected = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(image, expected)
        assert isinstance(caption, str) and caption == pairs[i]["caption"]
        assert isinstance(emb, torch.Tensor) and torch.equal(emb, text[i])
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    images, captions, embs = next(iter(loader))
    assert images.shape == (5, 3, 32, 32) and len(captions) == 5 and embs.shape == (5, text.shape[1])


def test_load_distilled_verify_catches_tampering(full_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    load_distilled(copy, verify=True)
    with Image.open(copy / "images/000003.png") as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(copy / "images/000003.png")
    load_distilled(copy)  # without verify the set still opens
    with pytest.raises(ProtosynthError, match="images/000003.png"):
        load_distilled(copy, verify=True)
    shutil.copy(full_run / "images/000003.png", copy / "images/000003.png")
    (copy / "pairs.jsonl").write_text((full_run / "pairs.jsonl").read_text().replace('"index": 1,', '"index": 7,'))
    with pytest.raises(ProtosynthError, match="pairs.jsonl"):
        load_distilled(copy, verify=True)
    (copy / "manifest.json").unlink()
    with pytest.raises(ProtosynthError, match="manifest"):
        load_distilled(copy)


def test_load_distilled_is_exported_from_the_package(full_run):
    ds = protosynth.load_distilled(full_run)
    assert isinstance(ds, protosynth.DistilledSet) and len(ds) == BUDGET


def test_jsonl_corpus_distils(jsonl_corpus, quick_models, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / "jsonl", corpus=str(jsonl_corpus), budget=8, render=FAST))
    ds = load_distilled(out, verify=True)
    assert len(ds) == 8
    captions = {json.loads(line).get("caption") for line in jsonl_corpus.read_text().splitlines()}
    captions |= {c for line in jsonl_corpus.read_text().splitlines() for c in json.loads(line).get("captions", [])}
    assert all(p["caption"] in captions for p in ds.pairs)
    assert ds.manifest["corpus"]["spec"] == str(jsonl_corpus) and ds.manifest["corpus"]["pairs"] == 60
    assert all(0 <= m < 60 for p in ds.pairs for m in p["members"])


def _complete_looking(parent: Path) -> list[Path]:
    return [p.parent for p in parent.rglob("manifest.json")]


def test_write_is_atomic(quick_models, full_run, tmp_path, monkeypatch):
    def broken_preview(*args, **kwargs):
        raise RuntimeError("disk full while drawing the preview")

    out = tmp_path / "sets" / "new"
    monkeypatch.setattr(protosynth.sets.distilled, "preview_grid", broken_preview)
    with pytest.raises(RuntimeError, match="disk full"):
        distill(make_cfg(quick_models, out, render=FAST))
    assert not out.exists()
    assert _complete_looking(tmp_path) == []

    # --force over a complete set: a failed run leaves the old set whole
    old = tmp_path / "sets" / "old"
    shutil.copytree(full_run, old)
    before = tree_bytes(old, ("images", "pairs.jsonl", "embeddings.safetensors", "manifest.json"))
    with pytest.raises(RuntimeError, match="disk full"):
        distill(make_cfg(quick_models, old, force=True, budget=8, render=FAST))
    assert tree_bytes(old, ("images", "pairs.jsonl", "embeddings.safetensors", "manifest.json")) == before
    load_distilled(old, verify=True)
    assert _complete_looking(tmp_path) == [old]

    # the next successful run into the same place completes and sweeps the stale temporary folder
    monkeypatch.undo()
    distill(make_cfg(quick_models, out, budget=8, render=FAST))
    load_distilled(out, verify=True)
    assert not list((tmp_path / "sets").glob(".new.*"))


def test_pixel_embedder_matches_the_clip_preprocessing(quick_models):
    clip = load_clip(f"small:{quick_models}")
    corpus = load_corpus(CORPUS)
    images = [corpus.load_image(i) for i in range(6)]
    want = torch.nn.functional.normalize(clip.encode_images(images), dim=-1)
    got = pixel_embedder(clip)(to_unit_range(images, 32))
    assert torch.allclose(got, want, atol=1e-5)


def test_clip_guidance_moves_renders_toward_their_targets(quick_models):
    """Guided renders re-embed closer to their targets than unguided ones from the same seeds."""
    clip, decoder = load_clip(f"small:{quick_models}"), open_decoder(f"small:{quick_models}")
    corpus = load_corpus("shapes:test,n=16")
    targets = clip.encode_images([corpus.load_image(i) for i in range(16)])
    plain_cfg = resolve_render(RenderConfig(steps=8, clip_guidance=0.0), decoder)
    guided_cfg = resolve_render(RenderConfig(steps=8, clip_guidance=0.05), decoder)
    plain = fidelity(clip, render_images(decoder, targets, plain_cfg), targets)
    guided = fidelity(clip, render_images(decoder, targets, guided_cfg, guide=clip), targets)
    # the quick CLIP puts every image near every other (cosines ~0.97), so compare the distances left
    assert 1 - guided["mean_cosine"] < 0.5 * (1 - plain["mean_cosine"]), (plain, guided)


def test_distill_records_clip_guidance(quick_models, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / "g", render=RenderConfig(steps=2, clip_guidance=0.03)))
    assert load_distilled(out).manifest["settings"]["render"]["clip_guidance"] == 0.03
    with pytest.raises(ProtosynthError, match=r"^render\.clip_guidance must be between 0 and 1"):
        distill(make_cfg(quick_models, tmp_path / "bad", render=RenderConfig(clip_guidance=-0.1)))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ProtosynthError, match=r"^text=image reads the captions .* needs render\.init=nearest"):
        distill(make_cfg(quick_models, tmp_path / "noise", text="image", render=RenderConfig(steps=1, init="noise")))


def test_render_caption_rule_picks_the_member_caption_nearest_the_render():
    """Hand-built: three prototypes over pairs 0-5; the renders' embeddings point at pair 1, pair 5 and
    nothing in particular; a prototype without members keeps the fallback caption."""
    text = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 3, 3]], np.float32)
    members = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([], np.int64)]
    zeros = np.zeros((3, 3), np.float32)
    protos = Prototypes(zeros, zeros, zeros, zeros, members)
    renders = torch.nn.functional.normalize(torch.tensor([[0.1, 0.9, 0.2], [0.0, 0.7, 0.7], [1.0, 0.0, 0.0]]), dim=-1)
    got = render_captions(renders, protos, text, fallback=np.array([7, 8, 9]))
    assert got.tolist() == [1, 5, 9]  # pair 5 wins on direction (cosine), not on its larger norm alone


def test_caption_render_records_both_rules(quick_models, full_run, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / "render", caption="render"))
    ds, ref = load_distilled(out, verify=True), load_distilled(full_run)
    corpus = load_corpus(CORPUS)
    assert tree_bytes(out, ("images",)) == tree_bytes(full_run, ("images",))  # the rule changes captions only
    for rec, old in zip(ds.pairs, ref.pairs):
        assert rec["caption_rule"] == "render" and rec["caption_pair"] == rec["render_caption_pair"]
        assert rec["caption"] == corpus.pair_caption[rec["caption_pair"]] == rec["render_caption"]
        assert rec["prototype_caption"] == old["prototype_caption"]
        assert rec["prototype_caption_pair"] == old["prototype_caption_pair"]
        assert rec["render_caption_pair"] in rec["members"]
    assert any(r["render_caption_pair"] != r["prototype_caption_pair"] for r in ds.pairs)


def test_text_rule_is_declared_in_the_manifest_and_changes_nothing_else(quick_models, full_run, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / "members", text="members"))
    ds, ref = load_distilled(out, verify=True), load_distilled(full_run)
    assert ds.manifest["evaluation"] == {"text": "members", "chosen_by": "given"}
    assert ds.manifest["settings"]["text"] == "members"
    assert ref.manifest["evaluation"] == {  # the default at 12 pairs, and the rule that chose it
        "text": "members",
        "chosen_by": "rule",
        "rule": "members up to 100 pairs, image above, fitted on the world's val split "
        "(benchmarks/results/world_val.md)",
    }
    assert tree_bytes(out) == tree_bytes(full_run)  # a rule for the learner: the pairs are the same
    with pytest.raises(ProtosynthError, match=r"^unknown text 'mean': use captions or members or image"):
        distill(make_cfg(quick_models, tmp_path / "bad", text="mean"))
    assert not (tmp_path / "bad").exists()


def test_best_of_n_keeps_the_candidate_nearest_its_prototype(quick_models, full_run, tmp_path):
    cfg = make_cfg(quick_models, tmp_path / "best", candidates=3, render=RenderConfig(steps=3, init="noise"))
    out = distill(cfg)
    ds = load_distilled(out, verify=True)
    assert [p["members"] for p in ds.pairs] == [p["members"] for p in load_distilled(full_run).pairs]
    clip, decoder = load_clip(f"small:{quick_models}"), open_decoder(f"small:{quick_models}")
    rcfg = resolve_render(cfg.render, decoder)
    embeds = ds.tensors["image_raw"]
    target = torch.nn.functional.normalize(ds.tensors["image_normalised"], dim=-1)
    drawn = [render_images(decoder, embeds, rcfg, guide=clip, candidate=c) for c in range(3)]
    cos = torch.stack([(torch.nn.functional.normalize(clip.encode_images(d), dim=-1) * target).sum(-1) for d in drawn])
    best = cos.argmax(dim=0).tolist()
    assert [p["candidate"] for p in ds.pairs] == best and len(set(best)) > 1
    for i, c in enumerate(best):
        assert np.array_equal(np.asarray(ds.image(i)), np.asarray(drawn[c][i]))
    assert not np.array_equal(np.asarray(drawn[0][0]), np.asarray(drawn[1][0]))  # candidates differ
    again = distill(replace(cfg, out=tmp_path / "again"))
    assert tree_bytes(again) == tree_bytes(out)


def test_select_keeps_each_prototypes_nearest_member_pair(quick_models, full_run, tmp_path):
    out = distill(make_cfg(quick_models, tmp_path / "select", method="select"))
    ds, ref = load_distilled(out, verify=True), load_distilled(full_run)
    corpus = load_corpus(CORPUS)
    emb = embed_corpus(corpus, load_clip(f"small:{quick_models}"))
    unit = torch.nn.functional.normalize
    image, text = unit(emb.image, dim=-1), unit(emb.text, dim=-1)
    assert ds.manifest["method"] == "select" and "render_fidelity" not in ds.manifest
    for i, (rec, old) in enumerate(zip(ds.pairs, ref.pairs)):
        p, members = rec["selected_pair"], torch.tensor(old["members"])
        assert rec["members"] == old["members"] and p in rec["members"]
        score = image[members] @ ref.tensors["image_normalised"][i] + text[members] @ ref.tensors["text_normalised"][i]
        assert p == int(members[int(score.argmax())])
        assert rec["caption"] == corpus.pair_caption[p] and rec["caption_pair"] == p
        assert np.array_equal(np.asarray(ds.image(i)), corpus.image_array(int(corpus.pair_image[p])))


def test_default_text_rule_by_budget_and_start():
    limit, rule = distill_module.MEMBERS_TEXT_MAX_BUDGET, distill_module.text_rule
    near, noise = RenderConfig(init="nearest"), RenderConfig(init="noise")
    assert rule(DistillConfig(method="pds", budget=limit), near) == "members"
    assert rule(DistillConfig(method="pds", budget=limit + 1), near) == "image"
    noise_limit = distill_module.NOISE_MEMBERS_TEXT_MAX_BUDGET
    assert rule(DistillConfig(method="pds", budget=noise_limit), noise) == "members"
    assert rule(DistillConfig(method="pds", budget=noise_limit + 1), noise) == "captions"
    for start in (near, noise):  # a selection reads as a render from its image, however renders would start
        assert rule(DistillConfig(budget=limit, method="select"), start) == "members"
        assert rule(DistillConfig(budget=limit + 1, method="select"), start) == "image"
    assert rule(DistillConfig(method="pds", budget=10, text="captions"), near) == "captions"
    assert rule(DistillConfig(method="pds", budget=900, text="members"), noise) == "members"


def test_distill_start_default_applies_only_where_the_decoder_can_honour_it(monkeypatch):

    small = Decoder(None, "small", "default", 4, None, None)
    stable = Decoder(None, "stable-unclip", "sd-unclip-small", 4, None, None)
    monkeypatch.setattr(distill_module, "DEFAULT_INIT", "nearest")
    monkeypatch.setattr(distill_module, "DEFAULT_STRENGTH", 0.8)
    assert distill_render(RenderConfig(), small) == RenderConfig(init="nearest", strength=0.8)
    assert distill_render(RenderConfig(strength=0.3), small) == RenderConfig(init="nearest", strength=0.3)
    assert distill_render(RenderConfig(init="noise"), small) == RenderConfig(init="noise")  # asked for: kept
    assert distill_render(RenderConfig(), stable) == RenderConfig()  # the published decoders start from noise
    monkeypatch.setattr(distill_module, "DEFAULT_INIT", "noise")
    assert distill_render(RenderConfig(), small) == RenderConfig(init="noise")


def test_caption_start_is_the_caption_of_the_member_the_render_started_from(quick_models, full_run, tmp_path):
    render = RenderConfig(steps=3, init="nearest", strength=0.5)
    out = distill(make_cfg(quick_models, tmp_path / "start", caption="start", render=render))
    chosen = distill(make_cfg(quick_models, tmp_path / "select", method="select"))
    ds, sel = load_distilled(out, verify=True), load_distilled(chosen)
    corpus = load_corpus(CORPUS)
    for rec, picked in zip(ds.pairs, sel.pairs):
        assert rec["caption_rule"] == "start" and rec["start_pair"] == picked["selected_pair"]
        assert rec["caption_pair"] == rec["start_pair"] and rec["caption"] == corpus.pair_caption[rec["start_pair"]]
    with pytest.raises(ProtosynthError, match=r"caption=start .*needs render\.init=nearest"):
        distill(make_cfg(quick_models, tmp_path / "noise", caption="start", render=RenderConfig(steps=3, init="noise")))


def test_preset_pds_published_writes_the_authors_prototypes(quick_models, full_run, tmp_path):
    """The preset end to end: its prototypes, order and captions are the independent transcription's
    (tests/pds_code.py) on the store's own embeddings; the manifest records every rule."""
    out = distill(make_cfg(quick_models, tmp_path / "pub", preset="pds-published", render=FAST, seed=42))
    ds = load_distilled(out, verify=True)
    settings = ds.manifest["settings"]
    assert settings["preset"] == "pds-published" and ds.manifest["evaluation"] == {
        "text": "prototype",
        "chosen_by": "given",
    }
    assert (settings["cluster_space"], settings["kmeans"], settings["prototype_norm"]) == ("raw", "minibatch", "mean")
    assert (settings["prototype_order"], settings["caption"], settings["render"]["init"]) == (
        "alignment",
        "prototype",
        "noise",
    )
    corpus = load_corpus(CORPUS)
    emb = embed_corpus(corpus, load_clip(f"small:{quick_models}"))
    _, ref_i, ref_t, ref_caption = authors_steps(emb.image.numpy(), emb.text.numpy(), BUDGET)
    t = load_file(str(out / "embeddings.safetensors"))
    np.testing.assert_allclose(t["image_raw"].numpy(), ref_i, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t["text_raw"].numpy(), ref_t, rtol=1e-4, atol=1e-5)
    assert [p["caption"] for p in ds.pairs] == [corpus.pair_caption[int(j)] for j in ref_caption]
    ref = load_distilled(full_run).manifest["settings"]
    assert (ref["cluster_space"], ref["kmeans"], ref["prototype_norm"], ref["prototype_order"], ref["preset"]) == (
        "unit",
        "faiss",
        "members",
        "matching",
        None,
    )
    with pytest.raises(ProtosynthError, match=r"^preset pds-published sets render.init to 'noise'; got 'nearest'"):
        distill(make_cfg(quick_models, tmp_path / "bad", preset="pds-published", render=RenderConfig(init="nearest")))


def _central(ds, quick_models) -> tuple[list[list[int]], object, object]:
    """The set's prototypes' 3 most central member pairs by ``central_members``, with the corpus and embeddings."""
    corpus = load_corpus(CORPUS)
    emb = embed_corpus(corpus, load_clip(f"small:{quick_models}"))
    t = ds.tensors
    protos = Prototypes(
        t["image_normalised"].numpy(),
        t["text_normalised"].numpy(),
        t["image_raw"].numpy(),
        t["text_raw"].numpy(),
        [np.asarray(p["members"], np.int64) for p in ds.pairs],
    )
    return central_members(protos, emb.image.numpy(), emb.text.numpy(), corpus.pair_image, 3), corpus, emb


@pytest.mark.parametrize("init", ["composite", "tile"])
def test_member_starts_render_from_the_central_members_image(init, quick_models, full_run, tmp_path):
    render = RenderConfig(steps=3, init=init, strength=0.5)
    cfg = make_cfg(quick_models, tmp_path / init, render=render, central=3)
    ds = load_distilled(distill(cfg), verify=True)
    assert [p["members"] for p in ds.pairs] == [p["members"] for p in load_distilled(full_run).pairs]
    settings = ds.manifest["settings"]
    assert (settings["render"]["init"], settings["central"], settings["condition"]) == (init, 3, "prototype")
    central, corpus, _ = _central(ds, quick_models)
    assert [p["central_pairs"] for p in ds.pairs] == central and any(len(g) == 3 for g in central)
    for rec in ds.pairs:  # the caption of the most central member; no one start image to read
        assert (
            "start_pair" not in rec
            and rec["caption_rule"] == "start"
            and rec["caption_pair"] == rec["central_pairs"][0]
        )
    assert unsupported_reading(ds, "image") and unsupported_reading(ds, "members") is None
    starts = [start_image(init, [corpus.load_image(int(corpus.pair_image[m])) for m in g]) for g in central]
    clip, decoder = load_clip(f"small:{quick_models}"), open_decoder(f"small:{quick_models}")
    drawn = render_images(decoder, ds.tensors["image_raw"], resolve_render(render, decoder), starts, guide=clip)
    assert all(np.array_equal(np.asarray(ds.image(i)), np.asarray(d)) for i, d in enumerate(drawn))
    assert tree_bytes(distill(replace(cfg, out=tmp_path / "again"))) == tree_bytes(ds.root)


def test_blended_condition_conditions_on_the_central_members(quick_models, full_run, tmp_path):
    cfg = make_cfg(quick_models, tmp_path / "blend", condition="blend")
    ds, ref = load_distilled(distill(cfg), verify=True), load_distilled(full_run)
    assert (ds.manifest["settings"]["condition"], ds.manifest["settings"]["central"]) == ("blend", 3)
    central, _, emb = _central(ds, quick_models)
    assert [p["central_pairs"] for p in ds.pairs] == central
    assert [p["start_pair"] for p in ds.pairs] == [p["start_pair"] for p in ref.pairs] == [g[0] for g in central]
    blend = blended_condition(emb.image.numpy(), central)
    assert np.array_equal(ds.tensors["condition_raw"].numpy(), blend)
    assert not np.allclose(blend, ds.tensors["image_raw"].numpy())  # not the prototype
    assert any(not np.array_equal(np.asarray(ds.image(i)), np.asarray(ref.image(i))) for i in range(BUDGET))
    assert ref.manifest["settings"]["condition"] == "prototype" and ref.manifest["settings"]["central"] is None
    assert tree_bytes(distill(replace(cfg, out=tmp_path / "again"))) == tree_bytes(ds.root)


def test_soft_labels_add_the_clip_rule_to_the_default_set(quick_models, full_run, tmp_path):
    """``soft_labels="clip"``: the default's set, byte for byte, plus S computed from its stored
    prototypes by the rule; recorded in the manifest and the card; a rerun stores the same bytes."""
    cfg = make_cfg(quick_models, tmp_path / "soft", soft_labels="clip", soft_temperature=0.5)
    ds, ref = load_distilled(distill(cfg), verify=True), load_distilled(full_run)
    names = ("images", "pairs.jsonl", "metadata.jsonl", "member_images.json")
    assert tree_bytes(ds.root, names) == tree_bytes(full_run, names)
    assert set(ds.tensors) == set(ref.tensors) | {"similarity"}
    assert all(torch.equal(ds.tensors[k], ref.tensors[k]) for k in ref.tensors)
    img, txt = (ds.tensors[k].double().numpy() for k in ("image_normalised", "text_normalised"))
    img, txt = img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)
    expected = np.exp(((img @ img.T + txt @ txt.T) / 2 - 1) / 0.5)
    np.fill_diagonal(expected, 1.0)
    sim = ds.tensors["similarity"]
    assert sim.dtype == torch.float32 and tuple(sim.shape) == (BUDGET, BUDGET)
    np.testing.assert_allclose(sim.numpy(), expected, rtol=1e-6, atol=1e-7)
    off = sim[~torch.eye(BUDGET, dtype=torch.bool)]
    assert 0 < off.min() < off.max() < 1 and off.std() > 0.01  # soft, not the identity
    settings = ds.manifest["settings"]
    assert (settings["soft_labels"], settings["soft_temperature"]) == ("clip", 0.5)
    rec = ds.manifest["soft_labels"]
    assert (rec["rule"], rec["temperature"]) == ("clip", 0.5)
    assert rec["other_positives_per_pair_mean"] == pytest.approx(float(((sim > 0.5).sum() - BUDGET) / BUDGET))
    assert "**soft labels**: rule `clip`, temperature 0.5" in (ds.root / "README.md").read_text()
    assert has_own_recipe(ds) and not has_own_recipe(ref)  # the default stores none
    assert not {"soft_labels", "soft_temperature"} & set(ref.manifest["settings"])  # none: settings as before
    assert "soft_labels" not in ref.manifest and "soft labels" not in (full_run / "README.md").read_text()
    assert tree_bytes(distill(replace(cfg, out=tmp_path / "again"))) == tree_bytes(ds.root)


def test_soft_labels_on_a_selection_take_the_default_temperature(quick_models, tmp_path):
    ds = load_distilled(distill(make_cfg(quick_models, tmp_path / "sel", method="select", soft_labels="clip")))
    assert ds.manifest["settings"]["soft_temperature"] == ds.manifest["soft_labels"]["temperature"]
    assert ds.manifest["soft_labels"]["temperature"] == DEFAULT_SOFT_TEMPERATURE["clip"]
    assert tuple(ds.tensors["similarity"].shape) == (BUDGET, BUDGET)


def test_soft_labels_recipe_trains_with_weighted_bce_on_the_stored_matrix(quick_models, tiny_backbone, tmp_path):
    """The soft-labels recipe trains on S with weighted BCE, the protocol's without it (InfoNCE): the
    rows say so and score differently; and S's content matters (the identity trains another model)."""
    out = distill(make_cfg(quick_models, tmp_path / "soft", soft_labels="clip", soft_temperature=0.5))
    base = EvalConfig(protocol="small", backbone=f"small:{tiny_backbone}", test="shapes:test,n=40", repeats=1, epochs=2)
    rows = {r: evaluate([out], replace(base, recipe=r))["sets"][0] for r in ("soft-labels", "protocol")}
    assert (rows["soft-labels"]["loss"], rows["protocol"]["loss"]) == ("wbce", "info_nce")
    assert rows["soft-labels"]["metrics"] != rows["protocol"]["metrics"]
    ds = load_distilled(out)
    protocol, backbone = get_protocol("small"), load_backbone(f"small:{tiny_backbone}")
    size = protocol.image_size or backbone.image_size
    data = recipe_data(set_data(ds, load_text_encoder(protocol.text), backbone, size, False), "soft-labels")
    assert torch.equal(data.similarity, ds.tensors["similarity"])

    def logits_seen(similarity: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        run = replace(data, similarity=similarity)
        train_and_score(protocol, backbone, run, None, 0, 2, on_batch=lambda idx, lg: seen.append(lg))
        return seen

    soft, hard = logits_seen(data.similarity), logits_seen(torch.eye(BUDGET))
    assert len(soft) == len(hard) >= 2 and torch.equal(soft[0], hard[0])  # the same start
    assert not torch.allclose(soft[-1], hard[-1])  # then the targets moved the model apart


def test_soft_labels_members_are_the_co_membership_of_the_corpus_pairs(quick_models, full_run, tmp_path):
    """``soft_labels="members"``: the default's set plus S from every member pair's CLIP rows, checked
    against the rule computed over the whole corpus at once (score of every pair for every prototype)."""
    cfg = make_cfg(quick_models, tmp_path / "members", soft_labels="members", soft_temperature=0.3)
    ds = load_distilled(distill(cfg), verify=True)
    assert tree_bytes(ds.root, ("images", "pairs.jsonl")) == tree_bytes(full_run, ("images", "pairs.jsonl"))
    emb = embed_corpus(load_corpus(CORPUS), load_clip(f"small:{quick_models}"))

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    score = unit(emb.image.numpy()) @ unit(ds.tensors["image_normalised"].numpy()).T
    score += unit(emb.text.numpy()) @ unit(ds.tensors["text_normalised"].numpy()).T  # (pairs, prototypes)
    expected = np.eye(BUDGET)
    for i, rec in enumerate(ds.pairs):
        own = score[rec["members"]]
        expected[i] = np.minimum(1.0, np.exp((own - own[:, [i]]) / 0.3)).mean(axis=0)
    np.testing.assert_allclose(ds.tensors["similarity"].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert ds.manifest["soft_labels"]["rule"] == "members" and ds.manifest["settings"]["soft_temperature"] == 0.3
    assert "**soft labels**: rule `members`, temperature 0.3" in (ds.root / "README.md").read_text()
    assert tree_bytes(distill(replace(cfg, out=tmp_path / "again"))) == tree_bytes(ds.root)
