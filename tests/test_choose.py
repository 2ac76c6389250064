"""``distill --val``: the text reading chosen on the user's validation split (``protosynth.choose``).

Real classes throughout: the tiny ``--quick`` CLIP and decoder, the small protocol on a tiny
pretrained ps-nfnet, the world's val split (40 images); no stand-ins.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import protosynth.choose as choose_module
import protosynth.distill as distill_module
from protosynth.choose import (
    CANDIDATES,
    LOWER_STRENGTH,
    RENDER_CANDIDATES,
    RENDER_RULE,
    ValChooser,
    cheapest_within_noise,
    distill_on_val,
    leader,
)
from protosynth.cli.main import app
from protosynth.configs import DEFAULT_METHOD, TextChoiceConfig
from protosynth.distill import SELECT_RULE_FITTED_ON, DistillConfig, variant_config
from protosynth.errors import ProtosynthError
from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.render import RenderConfig
from protosynth.sets.card import card_text
from protosynth.sets.distilled import load_distilled
from protosynth.sets.verify import verify

CORPUS = "shapes,n=300"
VAL = "shapes:val,n=40"
TEST = "shapes:test,n=40"
EPOCHS = 2


def make_cfg(models: Path, out: Path, **kw) -> DistillConfig:
    render = kw.pop("render", RenderConfig() if kw.get("method") == "select" else RenderConfig(steps=2))
    base = dict(
        method="pds",
        budget=12,
        corpus=CORPUS,
        clip=f"small:{models}",
        decoder=f"small:{models}",
        out=out,
        render=render,
    )
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


def test_the_card_is_the_one_its_manifest_file_makes(chosen):
    """Read back from ``manifest.json`` (keys sorted), the manifest makes the card the set holds."""
    ds = load_distilled(chosen)
    assert (chosen / "README.md").read_text() == card_text(ds.manifest, len(ds), stores_texts=True)


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
    rule = "members up to 100 pairs, image above, " + SELECT_RULE_FITTED_ON
    assert ev == {"text": "members", "chosen_by": "rule", "rule": rule}
    assert f"- chosen by a fixed rule: {rule}" in (out / "README.md").read_text()


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
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_repeats=0),
            r"^val_repeats must be an integer of at least 1",
        ),
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_epochs=0),
            r"^val_epochs must be an integer of at least 1",
        ),
        (DistillConfig(method="pds"), TextChoiceConfig(val_repeats=3), r"^val_repeats needs val=SPEC"),
        (
            DistillConfig(method="pds", text="members"),
            TextChoiceConfig(val=VAL),
            r"^val chooses the text reading .* text gives one",
        ),
        (
            DistillConfig(method="pds", preset="pds-published"),
            TextChoiceConfig(val=VAL),
            r"^preset pds-published fixes the text",
        ),
        (DistillConfig(method="pds"), TextChoiceConfig(val=VAL, val_protocol="tiny"), r"^unknown protocol 'tiny'"),
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


# --- --val-choose text,render: the set itself chosen among whole candidate sets ---

RENDER_STEPS = 10  # enough steps that the two strengths run different numbers of them (2 and 3)


def render_choice(backbone: Path, **kw) -> TextChoiceConfig:
    return choice(backbone, val_choose=("text", "render"), **kw)


@pytest.fixture(scope="module")
def rendered(quick_models, tiny_backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered") / "set"
    cfg = make_cfg(quick_models, out, method=DEFAULT_METHOD, render=RenderConfig(steps=RENDER_STEPS))
    assert distill_on_val(cfg, render_choice(tiny_backbone)) == [out]
    return out


def best_of(candidate: dict) -> float:
    return candidate["r_mean"][candidate["text"]]["mean"]


def recorded_scores(render: dict) -> list[tuple[str, float, float]]:
    """Each candidate's (name, mean, std) at its best reading, in cost order, as the record states them."""
    return [
        (n, c["r_mean"][c["text"]]["mean"], c["r_mean"][c["text"]]["std"])
        for n, c in ((n, render["candidates"][n]) for n in render["ties"])
    ]


def test_the_chosen_set_is_the_one_the_rule_names_on_the_recorded_scores(rendered):
    ds = load_distilled(rendered, verify=True)
    ev = ds.manifest["evaluation"]
    on, render = ev["chosen_on"], ev["chosen_on"]["render"]
    assert ev["chosen_by"] == "val" and on["chose"] == ["text", "render"]
    assert render["ties"] == [name for name, _ in RENDER_CANDIDATES] and set(render["candidates"]) == set(
        render["ties"]
    )
    for c in render["candidates"].values():  # each candidate at its own best reading, all three scored
        means = {r: s["mean"] for r, s in c["r_mean"].items()}
        assert set(means) == set(CANDIDATES) and c["text"] == next(
            r for r in CANDIDATES if means[r] == max(means.values())
        )
    scores = recorded_scores(render)
    assert render["rule"] == RENDER_RULE and render["leader"] == leader(scores)
    assert render["chosen"] == cheapest_within_noise(scores)
    assert render["why"].startswith("the leader" if render["chosen"] == render["leader"] else "within the leader's")
    winner = render["candidates"][render["chosen"]]
    assert ev["text"] == winner["text"] == ds.manifest["settings"]["text"] and on["r_mean"] == winner["r_mean"]
    assert len({best_of(c) for c in render["candidates"].values()}) > 1, "the candidates should train differently"
    # the set written is that candidate's: a selection, or a render at its strength
    settings = ds.manifest["settings"]
    if render["chosen"] == "select":
        assert ds.manifest["method"] == "select" and "render_fidelity" not in ds.manifest
    else:
        strength = float(render["chosen"].removeprefix("nearest-"))
        assert (ds.manifest["method"], settings["render"]["strength"]) == ("pds", strength)
    # the card is the one made from this manifest
    assert (rendered / "README.md").read_text() == card_text(ds.manifest, len(ds), stores_texts=True)
    assert [p.name for p in rendered.parent.iterdir()] == ["set"], "a candidate's folder left behind"


@pytest.mark.parametrize("name", [name for name, _ in RENDER_CANDIDATES])
def test_each_candidate_is_the_set_distill_makes_with_its_settings(
    name, rendered, quick_models, tiny_backbone, tmp_path
):
    """Each candidate made alone by ``distill --val`` (the reading alone chosen) scores what the render
    choice recorded for it; the chosen one is byte for byte the set written, less the card and manifest,
    which add the candidates' scores: the candidate itself, not a remake."""
    ev = load_distilled(rendered).manifest["evaluation"]
    recorded = ev["chosen_on"]["render"]["candidates"][name]
    base = make_cfg(quick_models, tmp_path / "alone", render=RenderConfig(steps=RENDER_STEPS))
    alone = distill_on_val(variant_config(base, dict(RENDER_CANDIDATES)[name]), choice(tiny_backbone))[0]
    two = json.loads((alone / "manifest.json").read_text())
    on_alone = two["evaluation"]["chosen_on"]
    assert (two["evaluation"]["text"], on_alone["r_mean"], on_alone["unsupported"]) == (
        recorded["text"],
        recorded["r_mean"],
        recorded["unsupported"],
    )
    if name != ev["chosen_on"]["render"]["chosen"]:
        return
    files = sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(alone).as_posix() for p in alone.rglob("*") if p.is_file())
    for file in files:
        if file not in ("manifest.json", "README.md"):
            assert (rendered / file).read_bytes() == (alone / file).read_bytes(), file
    one = json.loads((rendered / "manifest.json").read_text())
    unscored = {"evaluation": None, "files": None}  # the scores, and with them the card's hash
    assert without_timings(one) | unscored == without_timings(two) | unscored
    assert {k: v for k, v in one["files"].items() if k != "README.md"} == {
        k: v for k, v in two["files"].items() if k != "README.md"
    }
    assert {k: v for k, v in ev["chosen_on"].items() if k not in ("chose", "render")} == on_alone


def test_card_lists_every_candidate_set(rendered):
    card = (rendered / "README.md").read_text()
    render = load_distilled(rendered).manifest["evaluation"]["chosen_on"]["render"]
    assert f"among whole candidate sets, each at its best reading: `{render['chosen']}` of " in card
    for name, c in render["candidates"].items():
        score = c["r_mean"][c["text"]]
        assert f"`{name}` {score['mean']:.2f} ± {score['std']:.2f} (`{c['text']}`)" in card
    assert f"; {RENDER_RULE}, cheapest first in the order listed: the leader is `{render['leader']}`, " in card
    assert f"`{render['chosen']}` is {render['why']}\n" in card


def test_a_render_choice_rerun_is_byte_identical(rendered, quick_models, tiny_backbone, tmp_path):
    cfg = make_cfg(quick_models, tmp_path / "again", method=DEFAULT_METHOD, render=RenderConfig(steps=RENDER_STEPS))
    again = distill_on_val(cfg, render_choice(tiny_backbone))[0]
    for name in sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file()):
        if name != "manifest.json":
            assert (rendered / name).read_bytes() == (again / name).read_bytes(), name
    one, two = (json.loads((p / "manifest.json").read_text()) for p in (rendered, again))
    assert without_timings(one) == without_timings(two)


S, M, D = (name for name, _ in RENDER_CANDIDATES)  # select, nearest-0.15, nearest-0.3: cost order


@pytest.mark.parametrize(
    ("scores", "winner"),
    [
        # the leader wins by more than the noise (the larger std of the two) of every cheaper one
        ([(S, 9.0, 0.3), (M, 9.2, 0.2), (D, 10.0, 0.4)], D),
        # the world at 100 pairs (docs/history.md): select within the leader's noise, at 2 and at 5 repeats
        ([(S, 31.93, 0.47), (M, 32.08, 0.61), (D, 32.10, 0.61)], S),
        ([(S, 31.98, 0.40), (M, 32.29, 0.45), (D, 32.23, 0.41)], S),
        # the cheapest outside the noise, the middle inside it
        ([(S, 9.0, 0.2), (M, 9.8, 0.3), (D, 10.0, 0.1)], M),
        # the noise is the larger std of the two, whichever candidate's it is
        ([(S, 9.6, 0.5), (D, 10.0, 0.1)], S),
        ([(S, 9.6, 0.1), (D, 10.0, 0.5)], S),
        ([(S, 9.6, 0.1), (D, 10.0, 0.1)], D),
        # within is inclusive, as the preset sweep's: exactly the noise under is within, a little more is not
        ([(S, 10.0, 0.5), (D, 10.5, 0.25)], S),
        ([(S, 9.99, 0.5), (D, 10.5, 0.25)], D),
        # a dearer candidate within the cheaper leader's noise is not taken
        ([(S, 10.0, 0.5), (M, 9.9, 0.5), (D, 9.8, 0.5)], S),
        # ties: the cheaper, within noise or not
        ([(S, 10.0, 0.0), (M, 10.0, 0.0), (D, 10.0, 0.0)], S),
        ([(S, 9.0, 0.0), (M, 10.0, 0.0), (D, 10.0, 0.0)], M),
        ([(M, 10.0, 0.3), (D, 10.0, 0.3)], M),
        # one repeat: every std 0 (summarise's), the plain argmax; a std that is not a number counts as none
        ([(S, 9.9, 0.0), (M, 9.95, 0.0), (D, 10.0, 0.0)], D),
        ([(S, 9.9, math.nan), (D, 10.0, math.nan)], D),
        ([(S, 9.9, math.nan), (D, 10.0, 0.2)], S),
        # a single candidate
        ([(D, 5.0, 1.0)], D),
        ([(S, 5.0, 0.0)], S),
    ],
)
def test_cheapest_within_the_leaders_noise(scores, winner):
    assert cheapest_within_noise(scores) == winner


def test_cheapest_within_noise_needs_a_candidate():
    with pytest.raises(ValueError, match="no candidate"):
        cheapest_within_noise([])


def scored(scores: dict[str, tuple[float, float]]) -> dict[str, tuple[str, dict]]:
    """What ``ValChooser.choose`` returns per candidate, at the given best-reading (mean, std)."""
    return {
        name: ("members", {"r_mean": {"members": {"mean": m, "std": sd}}, "unsupported": {}})
        for name, (m, sd) in scores.items()
    }


@pytest.mark.parametrize(
    ("scores", "winner", "lead", "why"),
    [
        ({S: (9.0, 0.3), M: (9.2, 0.2), D: (10.0, 0.4)}, D, D, "the leader: no cheaper candidate within its noise"),
        (
            {S: (31.93, 0.47), M: (32.08, 0.61), D: (32.10, 0.61)},
            S,
            D,
            "within the leader's noise: 0.170 under it, noise 0.610",
        ),
        (
            {S: (9.0, 0.2), M: (9.8, 0.3), D: (10.0, 0.1)},
            M,
            D,
            "within the leader's noise: 0.200 under it, noise 0.300",
        ),
        ({M: (10.0, 0.0), D: (10.0, 0.0)}, M, M, "the leader: no cheaper candidate within its noise"),  # as they come
    ],
)
def test_settle_records_the_rule_the_leader_and_why(scores, winner, lead, why):
    chooser = ValChooser(make_cfg(Path("unused"), None), render_choice(Path("unused")))
    name, ev = chooser.settle(scored(scores))
    render = ev["chosen_on"]["render"]
    assert name == winner and (render["chosen"], render["leader"], render["why"]) == (winner, lead, why)
    assert render["rule"] == "cheapest within the leader's noise (larger std over the val repeats)"
    assert render["ties"] == [S, M, D] and set(render["candidates"]) == set(scores)
    for n, (m, sd) in scores.items():  # every candidate's scores stay recorded
        assert render["candidates"][n]["r_mean"] == {"members": {"mean": m, "std": sd}}
    assert ev["text"] == "members" and ev["chosen_on"]["r_mean"] == render["candidates"][winner]["r_mean"]


def test_settle_with_one_repeat_is_the_plain_argmax():
    chooser = ValChooser(make_cfg(Path("unused"), None), render_choice(Path("unused"), val_repeats=1))
    name, ev = chooser.settle(scored({S: (9.9, 0.0), M: (9.95, 0.0), D: (10.0, 0.0)}))
    assert name == D and ev["chosen_on"]["render"]["why"] == (
        "the leader: one val repeat, no noise estimate (the plain argmax)"
    )


def test_any_candidate_can_be_written_at_the_end(quick_models, tiny_backbone, tmp_path, monkeypatch):
    """The middle candidate named once all three are scored (whatever the scores): the set at ``out``
    is its scratch folder's, every file but the card and manifest byte for byte, and nothing else stays."""
    written = {}
    real = distill_module.reseal_set

    def recording(folder, out, manifest, force=False):
        written.update(source=folder.name, files=json.loads((folder / "manifest.json").read_text())["files"])
        return real(folder, out, manifest, force)

    monkeypatch.setattr(choose_module, "cheapest_within_noise", lambda scores: M)
    monkeypatch.setattr(distill_module, "reseal_set", recording)
    scratch = tmp_path / "tmp"  # the system temp folder, this test's own
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "middle" / "set"
    cfg = make_cfg(quick_models, out, method=DEFAULT_METHOD, render=RenderConfig(steps=RENDER_STEPS))
    assert distill_on_val(cfg, render_choice(tiny_backbone, val_repeats=1, val_epochs=1)) == [out]
    ds = load_distilled(out, verify=True)
    render = ds.manifest["evaluation"]["chosen_on"]["render"]
    assert written["source"] == render["chosen"] == M and set(render["candidates"]) == {S, M, D}
    assert (ds.manifest["method"], ds.manifest["settings"]["render"]["strength"]) == ("pds", LOWER_STRENGTH)
    card = ("README.md", "metadata.jsonl")
    assert {k: v for k, v in ds.manifest["files"].items() if k not in card} == {
        k: v for k, v in written["files"].items() if k not in card
    }
    assert written["files"]["metadata.jsonl"] == ds.manifest["files"]["metadata.jsonl"]  # no evaluation in it
    assert [p.name for p in out.parent.iterdir()] == ["set"]
    assert not list(scratch.glob("protosynth-set-candidates-*")), "a candidate's scratch folder left behind"


@pytest.mark.parametrize(
    ("cfg", "choose", "message"),
    [
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_choose=("render",)),
            r"^val_choose render needs text too",
        ),
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_choose=("text", "caption")),
            r"^unknown val_choose caption",
        ),
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_choose=("text", "text")),
            r"^val_choose \('text', 'text'\)",
        ),
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_choose=()),
            r"^val_choose \(\): use distinct values",
        ),
        (DistillConfig(method="pds"), TextChoiceConfig(val_choose=("text", "render")), r"^val_choose needs val=SPEC"),
        (
            DistillConfig(method="pds"),
            TextChoiceConfig(val=VAL, val_choose=("text", "render")),
            r"^val_choose=render chooses between method=select and renders .* and method sets one",
        ),
        (
            DistillConfig(method="pds", render=RenderConfig(strength=0.5)),
            TextChoiceConfig(val=VAL, val_choose=("text", "render")),
            r"^val_choose=render chooses .* render.strength sets one",
        ),
        (
            DistillConfig(method="pds", render=RenderConfig(init="noise")),
            TextChoiceConfig(val=VAL, val_choose=("text", "render")),
            r"^val_choose=render chooses .* render.init=noise sets one",
        ),
    ],
)
def test_bad_render_choices_are_one_line_before_any_work(cfg, choose, message, tmp_path):
    with pytest.raises(ProtosynthError, match=message):
        distill_on_val(replace(cfg, out=tmp_path / "x"), choose)
    assert list(tmp_path.iterdir()) == []


def test_cli_names_the_val_choose_flag():
    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--val", VAL, "--val-choose", "render"])
    assert res.exit_code == 2 and "--val-choose render needs text too" in res.output
    res = runner.invoke(app, ["distill", "--val", VAL, "--val-choose", "text,render", "--strength", "0.5"])
    assert res.exit_code == 2 and "--val-choose render chooses between --method select" in res.output
    assert "--strength sets one: pass one of them" in res.output
    res = runner.invoke(app, ["distill", "--val", VAL, "--val-choose", "text,"])
    assert res.exit_code == 2 and "--val-choose 'text,': empty item" in res.output
    res = runner.invoke(app, ["distill", "--val-choose", "text,render"])
    assert res.exit_code == 2 and "--val-choose needs --val SPEC" in res.output
