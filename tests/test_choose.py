"""``distill --val``: the text reading chosen on the user's validation split (``protosynth.choose``).

Real classes throughout: the tiny ``--quick`` CLIP and decoder, the small protocol on a tiny
pretrained ps-nfnet, the world's val split (40 images); no stand-ins.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protosynth.choose import CANDIDATES, distill_on_val
from protosynth.cli.main import app
from protosynth.configs import TextChoiceConfig
from protosynth.distill import DistillConfig
from protosynth.errors import ProtosynthError
from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.render import RenderConfig
from protosynth.sets.distilled import load_distilled
from protosynth.sets.verify import verify

CORPUS = "shapes,n=300"
VAL = "shapes:val,n=40"
TEST = "shapes:test,n=40"
EPOCHS = 2


def make_cfg(models: Path, out: Path, **kw) -> DistillConfig:
    render = kw.pop("render", RenderConfig() if kw.get("method") == "select" else RenderConfig(steps=2))
    base = dict(budget=12, corpus=CORPUS, clip=f"small:{models}", decoder=f"small:{models}", out=out, render=render)
    return DistillConfig(**{**base, **kw})


def choice(backbone: Path, **kw) -> TextChoiceConfig:
    base = dict(val=VAL, val_repeats=2, val_epochs=EPOCHS, val_backbone=f"small:{backbone}")
    return TextChoiceConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def chosen(quick_models, tiny_backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chosen") / "set"
    assert distill_on_val(make_cfg(quick_models, out), choice(tiny_backbone)) == [out]
    return out


def without_timings(manifest: dict) -> dict:
    """A manifest less how long and where: timings, memory, whether the embeddings came from the cache."""
    settings = {k: v for k, v in manifest["settings"].items() if k != "out"}
    run_only = ("seconds", "peak_memory_mb", "embed_compute_seconds", "embeddings_from_cache")
    return {k: v for k, v in manifest.items() if k not in run_only} | {"settings": settings}


def test_chosen_reading_is_the_argmax_of_the_recorded_val_scores(chosen, tiny_backbone):
    ds = load_distilled(chosen, verify=True)
    ev = ds.manifest["evaluation"]
    on = ev["chosen_on"]
    assert ev["chosen_by"] == "val" and ds.manifest["settings"]["text"] == ev["text"] == ds.text_reading
    assert set(on["r_mean"]) == set(CANDIDATES) and on["unsupported"] == {}  # a render from a member: all three
    assert (on["val"], on["protocol"], on["recipe"], on["repeats"], on["epochs"]) == (VAL, "small", "protocol", 2, 2)
    assert on["fingerprint"].startswith("world-") and on["backbone"] == f"small:{tiny_backbone}"
    means = {r: s["mean"] for r, s in on["r_mean"].items()}
    best = max(means.values())
    assert ev["text"] == next(r for r in CANDIDATES if means[r] == best)  # the argmax; a tie: the earlier
    assert len(set(means.values())) > 1, "the readings should train differently"
    # the recorded scores are the val evaluation's own: scored again, the same numbers
    for reading in ("captions", ev["text"]):
        cfg = EvalConfig(
            protocol="small",
            backbone=f"small:{tiny_backbone}",
            split="val",
            val=VAL,
            repeats=2,
            epochs=EPOCHS,
            text=reading,
            recipe="protocol",
        )
        r_mean = evaluate([chosen], cfg)["sets"][0]["metrics"]["r_mean"]
        assert {"mean": r_mean["mean"], "std": r_mean["std"]} == on["r_mean"][reading]
    report = verify(chosen)
    assert report.problems == [] and report.checked == len(ds.manifest["files"])
    assert [p.name for p in chosen.parent.iterdir()] == ["set"], "temporary folder left behind"


def test_eval_auto_trains_on_the_chosen_reading(chosen, tiny_backbone):
    cfg = EvalConfig(protocol="small", backbone=f"small:{tiny_backbone}", test=TEST, repeats=1, epochs=1)
    row = evaluate([chosen], cfg)["sets"][0]
    assert row["text"] == load_distilled(chosen).manifest["evaluation"]["text"]


def test_card_says_which_reading_and_how_it_was_chosen(chosen):
    card = (chosen / "README.md").read_text()
    ev = load_distilled(chosen).manifest["evaluation"]
    assert f"trains on by default): `{ev['text']}`" in card
    assert f"chosen on the validation split `{VAL}` (fingerprint `{ev['chosen_on']['fingerprint']}`)" in card
    for reading, score in ev["chosen_on"]["r_mean"].items():
        assert f"`{reading}` {score['mean']:.2f} ± {score['std']:.2f}" in card


def test_a_rerun_is_byte_identical(chosen, quick_models, tiny_backbone, tmp_path):
    again = distill_on_val(make_cfg(quick_models, tmp_path / "again"), choice(tiny_backbone))[0]
    files = sorted(p.relative_to(chosen).as_posix() for p in chosen.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    for name in files:
        if name != "manifest.json":
            assert (chosen / name).read_bytes() == (again / name).read_bytes(), name
    one, two = (json.loads((p / "manifest.json").read_text()) for p in (chosen, again))
    assert without_timings(one) == without_timings(two)


def test_without_val_the_manifest_says_the_fixed_rule_chose(quick_models, tmp_path):
    out = distill_on_val(make_cfg(quick_models, tmp_path / "rule", method="select"), TextChoiceConfig())[0]
    ev = load_distilled(out).manifest["evaluation"]
    assert ev == {"text": "captions", "chosen_by": "rule", "rule": "a selection keeps its real captions"}
    assert "- chosen by a fixed rule: a selection keeps its real captions" in (out / "README.md").read_text()


def test_a_selection_chooses_among_its_readings_too(quick_models, tiny_backbone, tmp_path):
    """A selection's pairs are real, and each reading applies: one caption, its prototype's members,
    or every caption of its own image."""
    out = distill_on_val(make_cfg(quick_models, tmp_path / "select", method="select"), choice(tiny_backbone))[0]
    on = load_distilled(out, verify=True).manifest["evaluation"]["chosen_on"]
    assert set(on["r_mean"]) == set(CANDIDATES)


def test_a_render_from_noise_has_no_image_reading(quick_models, tiny_backbone, tmp_path):
    cfg = make_cfg(quick_models, tmp_path / "noise", render=RenderConfig(steps=1, init="noise"))
    out = distill_on_val(cfg, choice(tiny_backbone, val_repeats=1, val_epochs=1))[0]
    ev = load_distilled(out, verify=True).manifest["evaluation"]
    assert set(ev["chosen_on"]["r_mean"]) == {"captions", "members"} and ev["text"] in ("captions", "members")
    assert "rendered from several members" in ev["chosen_on"]["unsupported"]["image"]


def test_val_that_is_the_train_corpus_is_refused_before_any_render(quick_models, tiny_backbone, tmp_path):
    # another spelling of the same 300 images: the fingerprint, not the spec, decides
    with pytest.raises(ProtosynthError, match=r"^val shapes:train,n=300 is the corpus the set is made from"):
        distill_on_val(make_cfg(quick_models, tmp_path / "same"), choice(tiny_backbone, val="shapes:train,n=300"))
    assert list(tmp_path.iterdir()) == []


def test_val_sharing_images_with_the_set_is_refused(quick_models, tiny_backbone, tmp_path):
    # the first 200 images of the train corpus: another fingerprint, the same pictures
    with pytest.raises(ProtosynthError, match=r"^val shapes,n=200 is not held out from corpus shapes,n=300 \("):
        distill_on_val(make_cfg(quick_models, tmp_path / "overlap"), choice(tiny_backbone, val="shapes,n=200"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cfg", "choose", "message"),
    [
        (DistillConfig(), TextChoiceConfig(val=VAL, val_repeats=0), r"^val_repeats must be an integer of at least 1"),
        (DistillConfig(), TextChoiceConfig(val=VAL, val_epochs=0), r"^val_epochs must be an integer of at least 1"),
        (DistillConfig(), TextChoiceConfig(val_repeats=3), r"^val_repeats needs val=SPEC"),
        (DistillConfig(text="members"), TextChoiceConfig(val=VAL), r"^val chooses the text reading .* text gives one"),
        (DistillConfig(preset="pds-published"), TextChoiceConfig(val=VAL), r"^preset pds-published fixes the text"),
        (DistillConfig(), TextChoiceConfig(val=VAL, val_protocol="tiny"), r"^unknown protocol 'tiny'"),
    ],
)
def test_bad_choices_are_one_line_before_any_work(cfg, choose, message, tmp_path):
    with pytest.raises(ProtosynthError, match=message):
        distill_on_val(replace(cfg, out=tmp_path / "x"), choose)
    assert list(tmp_path.iterdir()) == []


def test_cli_names_the_val_flags():
    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--val", VAL, "--val-repeats", "0"])
    assert res.exit_code == 2 and "--val-repeats must be an integer of at least 1, got 0" in res.output
    res = runner.invoke(app, ["distill", "--val", VAL, "--text", "members"])
    assert res.exit_code == 2 and "--val chooses the text reading on the val split and --text gives one" in res.output
