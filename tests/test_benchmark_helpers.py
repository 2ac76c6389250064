"""Helpers of the benchmarks that compute a number themselves (not just call the library)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from benchmarks import world_retrieval
from benchmarks.baseline_presets import (
    Candidate,
    candidates,
    check_made_with,
    choose,
    pruned_by,
    reusable,
    reused,
    settings,
)
from benchmarks.prototype_purity import purity
from benchmarks.scale_ray import (
    cost_model,
    measure_decode,
    measure_index,
    measure_passes,
    measure_render,
    pass_model,
    render_model,
)
from benchmarks.scoring import seconds_to_make
from benchmarks.world_readings import markdown as markdown_readings
from benchmarks.world_readings import summarise
from protosynth.baselines import presets
from protosynth.baselines.presets import preset
from protosynth.errors import ProtosynthError


def test_prototype_purity_counts_member_images_against_the_caption_image():
    # 4 images, two captions each (pairs 2i, 2i+1); images 0 and 1 show the same colours and shapes
    # in other places, image 2 the exact scene of image 0, image 3 something else
    scenes = [
        frozenset({("red", "circle", "small", "left")}),
        frozenset({("red", "circle", "large", "right")}),
        frozenset({("red", "circle", "small", "left")}),
        frozenset({("blue", "square", "small", "left")}),
    ]
    colour_shapes = [frozenset((c, s) for c, s, _, _ in sc) for sc in scenes]
    pair_image = np.repeat(np.arange(4), 2)
    members = [
        np.array([0, 1, 2, 4, 6]),  # images 0, 1, 2, 3 (pair 1 repeats image 0)
        np.array([7]),
    ]  # image 3 alone
    got = purity(members, np.array([0, 6]), pair_image, scenes, colour_shapes)
    # prototype 0: colours+shapes agree for images 0, 1, 2 (3/4), the exact scene for 0 and 2 (2/4)
    assert got["distinct_images"] == pytest.approx(2.5)
    assert got["members_same_colour_shape"] == pytest.approx(100 * (0.75 + 1.0) / 2)
    assert got["members_same_scene"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert got["majority_same_colour_shape"] == 100.0


def test_presets_sweep_prunes_a_change_that_lost_at_the_smaller_budget():
    def row(budget, name, score=None, method="amd", **extra):
        out = dict(method=method, budget=budget, candidate=name, **extra)
        if score is not None:
            out["metrics"] = {"r_mean": {"mean": score}}
        return out

    rows = [
        row(100, "preset", 11.7),
        row(100, "lr-space-log", 7.8),
        row(100, "data-lr-100", 10.5),
        row(100, "lr-sim-1", failed="diverged"),
        row(100, "preset", 20.0, method="lors"),  # another method's best does not count
    ]
    at_200 = {
        name: pruned_by(rows, "amd", 200, Candidate(name, {}), 2.0)
        for name in ("preset", "lr-space-linear", "data-lr-1000", "lr-sim-1")
    }
    assert at_200 == {
        "preset": None,
        "lr-space-linear": "3.9 under the best at 100 pairs",  # the other space, the same change
        "data-lr-1000": None,  # 1.2 under: still in play
        "lr-sim-1": "failed at 100 pairs",
    }
    assert pruned_by(rows, "amd", 200, Candidate("lr-space-linear", {}), None) is None
    # the official values are pruned like any candidate: hours a set at larger budgets
    official = [row(100, "official", 4.4, method="mtt-vl"), row(100, "earlier-world", 46.5, method="mtt-vl")]
    assert pruned_by(official, "mtt-vl", 200, Candidate("official", {}), 2.0) == "42.1 under the best at 100 pairs"
    assert pruned_by(rows, "amd", 100, Candidate("lr-space-log", {}), 2.0) is None
    # a change pruned at 200 stays pruned at 500, though 200 has only the preset's score
    rows += [row(200, "preset", 22.0), row(200, "lr-space-linear", pruned="3.9 under the best at 100 pairs")]
    assert pruned_by(rows, "amd", 500, Candidate("lr-space-linear", {}), 2.0) == "pruned at 200 pairs"


def test_presets_sweep_takes_a_much_cheaper_candidate_within_the_leaders_noise():
    def row(name, mean, std, seconds, method="mtt-vl", **extra):
        metrics = {"r_mean": {"mean": mean, "std": std}}
        return dict(method=method, budget=100, candidate=name, metrics=metrics, seconds_to_make=seconds, **extra)

    rows = [
        row("official", 43.0, 0.4, 7203.0),
        row("official-world-lrs", 47.4, 1.7, 8334.0),
        row("earlier-world", 46.5, 0.4, 541.0),  # 0.9 under, inside the leader's 1.7, 1/15 of its time
        row("official", 44.9, 1.6, 1332.0, method="repblend"),  # within noise but dearer: no
        row("official-world-lrs", 46.3, 1.2, 697.0, method="repblend"),
        row("earlier-world", 19.6, 0.1, 353.0, method="repblend"),  # cheaper, far under: no
        row("official", 30.0, 0.5, 100.0, method="lors"),
        row("earlier-world", 28.9, 0.5, 10.0, method="lors"),  # 1.1 under, outside 0.5: no
        row("official-world-lrs", 29.8, 0.5, 60.0, method="lors"),  # 0.2 under, 60 % of the time: no
        row("official", 5.0, 0.1, 1.0, method="amd", failed="diverged"),
        row("earlier-world", 22.0, 0.6, 700.0, method="amd"),
    ]
    assert choose(rows) == {
        "mtt-vl-b100": "earlier-world",
        "repblend-b100": "official-world-lrs",
        "lors-b100": "official",
        "amd-b100": "earlier-world",
    }


def test_presets_sweep_prunes_by_the_values_a_set_was_made_with_not_the_candidate_name():
    # After a preset change the candidate named "lr-sim-1" at 500 pairs is the value that *won* at
    # 200 (where it was the preset and "lr-sim-0.1" the change): it must stay in play.
    def row(budget, name, score, **made_with):
        base = {"lr_sim": 1.0, "lr_img": 10.0, "lr_txt": 10.0, "lr_space": "log"}
        return dict(
            method="amd",
            budget=budget,
            candidate=name,
            settings={**base, **made_with},
            metrics={"r_mean": {"mean": score}},
        )

    rows = [
        row(100, "preset", 20.0, lr_img=100.0, lr_txt=100.0),
        row(100, "data-lr-10", 10.0),
        row(200, "preset", 33.2),
        row(200, "lr-sim-0.1", 20.3, lr_sim=0.1),
        row(200, "lr-space-linear", 32.0, lr_space="linear"),
    ]
    at_500 = {
        name: pruned_by(rows, "amd", 500, Candidate(name, overrides), 2.0)
        for name, overrides in [
            ("lr-sim-1", {"lr_sim": 1.0}),
            ("lr-sim-0.1", {"lr_sim": 0.1}),
            ("lr-space-linear", {"lr_space": "linear"}),
            ("lr-space-log", {"lr_space": "log"}),
        ]
    }
    assert at_500 == {
        "lr-sim-1": None,  # the best set at 200 was made with lr_sim 1
        "lr-sim-0.1": "12.9 under the best at 200 pairs",
        "lr-space-linear": None,  # 1.2 under
        "lr-space-log": None,
    }
    # a value never tried at the previous budget falls back to the change's family:
    # data lr 1,000 at 200 is judged by data lr 10 at 100 (10.0 under the best)
    assert pruned_by(rows[:2], "amd", 200, Candidate("data-lr-1000", {"lr_img": 1000.0, "lr_txt": 1000.0}), 2.0) == (
        "10.0 under the best at 100 pairs"
    )


def test_presets_sweep_reuses_an_earlier_row_only_when_its_set_was_made_the_same_way(tmp_path):
    log_100, lr_100, preset_100 = candidates("amd", 100)  # official, official-world-lrs, world

    def row(cand, **extra):
        return dict(method="amd", budget=100, candidate=cand.name, overrides=cand.overrides, **extra)

    rows = [
        row(preset_100, metrics={}, settings=settings("amd", 100, preset_100)),
        row(log_100, failed="diverged", settings=settings("amd", 100, log_100)),
        row(lr_100, metrics={}, settings=dict(settings("amd", 100, lr_100), lr_lr=1.0)),  # made under another preset
        row(lr_100, metrics={}),  # settings not recorded: what made it is unknown
        dict(method="amd", budget=200, candidate="lr-sim-1", overrides={"lr_sim": 1.0}, pruned="failed at 100 pairs"),
    ]
    table = tmp_path / "baseline_presets_val.json"
    table.write_text(json.dumps({"repeats": 2, "recipe": "protocol", "commit": "abc", "rows": rows}))
    earlier = reusable(table, 2)
    assert len(earlier) == 3
    assert reused(earlier, "amd", 100, preset_100)["reused_from"] == f"{table} (commit abc)"
    assert reused(earlier, "amd", 100, log_100)["failed"] == "diverged"
    assert reused(earlier, "amd", 100, lr_100) is None
    assert reused(earlier, "amd", 200, candidates("amd", 200)[0]) is None
    # a row outlives a preset change that renames it: the old preset is now the change to it
    was = Candidate("was-the-preset", {k: v for k, v in settings("amd", 100, preset_100).items() if k == "lr_sim"})
    renamed = reused(earlier, "amd", 100, was)
    assert renamed["candidate"] == "was-the-preset" and renamed["overrides"] == was.overrides
    with pytest.raises(SystemExit, match="scored with 2 repeats, this sweep uses 3"):
        reusable(table, 3)
    table.write_text(json.dumps({"repeats": 2, "commit": "abc", "rows": rows}))  # before the recipe was recorded
    with pytest.raises(SystemExit, match="scored under the sets' own recipe"):
        reusable(table, 2)


def test_presets_sweep_starts_from_the_official_values():
    for method in ("mtt-vl", "lors", "amd", "repblend"):
        official, scaled, earlier = candidates(method, 100)
        assert settings(method, 100, official) == preset(method, "flickr", 100)
        assert earlier.name == "earlier-world" and settings(method, 100, earlier)["iterations"] == 150
        differ = {k for k, v in settings(method, 100, scaled).items() if preset(method, "flickr", 100)[k] != v}
        assert differ == ({"lr_img", "lr_txt", "lr_sim"} if method != "mtt-vl" else {"lr_img", "lr_txt"})
    assert settings("repblend", 100, official)["grad_mode"] == "first-order"
    # MTT-VL's whole-set batch, capped at 100 pairs on the world (a deliberate difference)
    assert [settings("mtt-vl", b, candidates("mtt-vl", b)[0])["batch_syn"] for b in (100, 200, 500)] == [100] * 3
    assert preset("mtt-vl", "flickr", 500)["batch_syn"] == 500


def test_the_world_preset_is_the_val_chosen_candidate(monkeypatch):
    assert preset("lors", "world", 200) == presets.world_candidate("lors", 200, "earlier-world")
    monkeypatch.setitem(presets.WORLD_CHOICE, ("lors", 200), "official-world-lrs")
    chosen = preset("lors", "world", 200)
    assert chosen == presets.world_candidate("lors", 200, "official-world-lrs") != preset("lors", "flickr", 200)
    assert (chosen["iterations"], chosen["lr_img"], chosen["grad_mode"]) == (3000, 10.0, "first-order")
    assert preset("lors", "world", 200, quick=True)["iterations"] == 10
    with pytest.raises(ProtosynthError, match="world candidate 'tuned' is not one of"):
        presets.world_candidate("lors", 200, "tuned")


def test_presets_sweep_never_scores_a_set_made_with_other_settings(tmp_path):
    made_with = settings("lors", 100, candidates("lors", 100)[-1])
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": dict(made_with, lr_sim=0.25)}))
    with pytest.raises(SystemExit, match=r"made with lr_sim=0.25 \(the candidate has 1.0\)"):
        check_made_with(tmp_path, made_with)
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": made_with}))
    check_made_with(tmp_path, made_with)


def test_scale_ray_render_model_times_the_default_distills_render_stage(tmp_path):
    render = measure_render(images=40, budget=4, work=tmp_path)
    assert render["budget"] == 4 and render["render_seconds"] > 0
    assert render["seconds_per_image"] == pytest.approx(render["render_seconds"] / 4, abs=1e-4)
    rows = {(r["budget"], r["workers"]): r["minutes"] for r in render_model({"seconds_per_image": 3.6})}
    assert rows[(500, 1)] == pytest.approx(30) and rows[(500, 8)] == pytest.approx(3.75, abs=0.05)
    assert rows[(50_000, 8)] == pytest.approx(375)


def test_scale_ray_times_the_passes_inside_clustering_and_restores_thread_counts():
    faiss_threads, torch_threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    ps = measure_passes(rows=6_000, dim=16, budget=20)
    assert 0 < ps["pass_seconds"] < ps["seconds"]
    assert ps["seconds_per_million_pairs"] == pytest.approx(ps["pass_seconds"] / 6_000 * 1e6, rel=0.05, abs=0.05)
    dc = measure_decode(count=3)
    minutes = {r["cpu_cores"]: r["minutes"] for r in pass_model({"seconds_per_million_pairs": 36})}
    assert (minutes[1], minutes[16]) == (60.0, 3.8)
    assert dc["seconds_per_image"] > 0 and dc["image"].startswith("640x480 JPEG")
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == (faiss_threads, torch_threads)
    measured = {"ray_startup_seconds": 0.0, "ray_fixed_overhead_seconds": 0.0}
    rows = {r["gpus"]: r for r in cost_model(measured, {"seconds_per_image": 0.01})}
    assert rows[8]["decode_cores"] == pytest.approx(8 * 3.12, abs=0.05)
    assert rows[1]["hours"] == pytest.approx(89.03, abs=0.01)


@pytest.mark.slow  # a fresh process that builds a corpus index
def test_scale_ray_times_the_drivers_corpus_index_in_a_fresh_process(tmp_path):
    ix = measure_index(images=300, work=tmp_path)
    assert [ix[k]["call"] for k in ("whole_load", "scan")] == ["load_corpus(spec)", "scan_source(CorpusSource(spec))"]
    for got in (ix["whole_load"], ix["scan"]):
        assert got["pairs"] == 300 and got["seconds"] > 0 and got["retained_mb"] >= 0
        assert got["seconds_per_million_pairs"] == pytest.approx(got["seconds"] / 300 * 1e6, abs=2)
    assert not (tmp_path / "index").exists()  # 300 image files and a manifest, removed after


def test_world_readings_chooses_each_methods_best_reading_and_prices_rendering():
    def table(text, scores):
        rows = [
            {"method": m, "metrics": {"r_mean": {"mean": v, "std": 0.5, "runs": [v] * 6}}}
            if v is not None
            else {"method": m, "unsupported": "no one real image"}
            for m, v in scores.items()
        ]
        return {"recipe": "protocol", "text": text, "methods": rows}

    doc = {
        "tables": [
            table("captions", {"kcenter": 16.0, "select": 16.5, "pds": 17.0}),
            table("members", {"kcenter": 16.0, "select": 25.0, "pds": 26.4}),
            table("image", {"kcenter": 23.0, "select": 24.0, "pds": None}),
        ]
    }
    rows = {r["method"]: r for r in summarise({100: doc})}
    assert rows["kcenter"]["chosen"] == "image" and rows["select"]["chosen"] == "members"
    assert rows["pds"]["chosen"] == "members" and "image" not in rows["pds"]["r_mean"]
    assert rows["pds"]["render_gain"] == {"captions": 0.5, "members": 1.4}
    assert "render_gain" not in rows["select"] and rows["kcenter"]["r_mean"]["image"]["runs"] == 6
    head = {"command": "c", "commit": "abcdef", "texts": ["captions", "members", "image"], "seeds": [0], "repeats": 2}
    text = markdown_readings(dict(head, rows=list(rows.values()), not_run=[200, 500]))
    assert "\n\nNot run yet (the run was stopped before them): 200, 500 pairs.\n\n| budget |" in text
    assert rows["pds"]["render_gain_paired"]["members"] == {"mean": 1.4, "std": 0.0, "runs": 6}
    row = "| 100 | pds | 17.0 ± 0.5 | **26.4 ± 0.5** | unsupported | members | captions +0.5, members +1.4 |"
    assert row + " captions +0.5 ± 0.0, members +1.4 ± 0.0 |" in text


def test_world_readings_pairs_the_gain_run_by_run():
    def table(runs):
        rows = [
            {"method": m, "metrics": {"r_mean": {"mean": sum(r) / 3, "std": 9.0, "runs": r}}} for m, r in runs.items()
        ]
        return {"recipe": "protocol", "text": "members", "methods": rows}

    doc = {"tables": [table({"select": [10.0, 20.0, 30.0], "pds-blend": [11.0, 22.0, 30.0]})]}
    row = {r["method"]: r for r in summarise({100: doc})}["pds-blend"]
    assert row["render_gain"] == {"members": 1.0}
    assert row["render_gain_paired"] == {"members": {"mean": 1.0, "std": 1.0, "runs": 3}}


def test_seconds_to_make_counts_a_baselines_parts_once():
    assert seconds_to_make({"distill": 4121.8, "setup": 1.1, "total": 4122.92, "write": 0.1}) == 4122.9
    assert seconds_to_make({"embed": 2.0, "cluster": 1.25, "render": 30.0, "note": "x"}) == 33.2


def _val_results(tmp_path, readings_budgets=(100,), ran=("official", "official-world-lrs", "earlier-world")):
    rows = [{"budget": b, "method": m, "chosen": "members"} for b in readings_budgets for m in ("pds", "select")]
    (tmp_path / "world_val_readings.json").write_text(json.dumps({"rows": rows, "not_run": []}))
    methods = ("mtt-vl", "lors", "amd", "repblend")
    preset_rows = [{"method": m, "budget": 100, "candidate": c} for m in methods for c in ran]
    chosen = {f"{m}-b100": "official" for m in methods}
    (tmp_path / "baseline_presets_val.json").write_text(json.dumps({"rows": preset_rows, "chosen": chosen}))


def test_world_retrieval_refuses_a_budget_val_has_not_chosen_for(tmp_path, monkeypatch):
    choice: dict = {}  # the library's choices as they will be, whatever they are today
    monkeypatch.setattr(world_retrieval, "WORLD_CHOICE", choice)
    _val_results(tmp_path, ran=("official", "official-world-lrs"))
    with pytest.raises(SystemExit, match="mtt-vl at 100 pairs: candidates earlier-world not run on val yet"):
        world_retrieval.val_choices(tmp_path, 100)
    _val_results(tmp_path)
    with pytest.raises(SystemExit, match="no reading chosen at 200 pairs on val yet"):
        world_retrieval.val_choices(tmp_path, 200)
    with pytest.raises(SystemExit, match="val chose official for mtt-vl at 100 pairs, presets.WORLD_CHOICE has None"):
        world_retrieval.val_choices(tmp_path, 100)
    choice.update({(m, 100): "official" for m in ("mtt-vl", "lors", "amd", "repblend")})
    assert world_retrieval.val_choices(tmp_path, 100) == {"pds": "members", "select": "members"}
    with pytest.raises(SystemExit, match="world_val_readings.json: cannot read the val results"):
        world_retrieval.val_choices(tmp_path / "elsewhere", 100)


def test_world_retrieval_links_finished_work_only_where_there_is_none(tmp_path):
    source, out = tmp_path / "val", tmp_path / "test"
    for name in ("sets/pds-b100", "sets/kcenter-b100", "buffers/full"):
        (source / name).mkdir(parents=True)
        (source / name / "manifest.json").write_text(name)
    (source / "sets" / "half-made").mkdir()  # no manifest: never linked
    (out / "sets" / "kcenter-b100").mkdir(parents=True)  # this run's own: never replaced
    assert world_retrieval.link_finished(source, out) == ["buffers/full", "sets/pds-b100"]
    assert (out / "sets" / "pds-b100" / "manifest.json").stat().st_ino == (
        source / "sets" / "pds-b100" / "manifest.json"
    ).stat().st_ino
    assert not (out / "sets" / "kcenter-b100" / "manifest.json").exists() and not (out / "sets" / "half-made").exists()
    assert world_retrieval.link_finished(source, out) == []


def test_world_retrieval_reads_every_method_with_the_defaults_reading(tmp_path):
    def row(method, mean, **more):
        return {"method": method, "metrics": {"r_mean": {"mean": mean, "std": 0.5}}, **more}

    unsupported = {"method": "lors", "unsupported": "text members: a pair has no member pairs"}
    noise = {"method": "pds-published", "unsupported": "text members: a pair shows no one real image"}
    doc = {
        "tables": [
            {
                "recipe": "protocol",
                "text": "members",
                "methods": [row("pds", 31.0), row("select", 30.0), unsupported, row("full", 92.0), noise],
            },
            {"recipe": "protocol", "text": "image", "methods": [row("pds", 40.0), row("select", 41.5), unsupported]},
            {
                "recipe": "protocol",
                "text": "auto",
                "methods": [
                    row("pds", 20.0),
                    row("select", 19.0),
                    row("lors", 33.0),
                    row("pds-published", 28.0, text="x"),
                ],
            },
            {"recipe": "own", "text": "members", "methods": [row("pds", 99.0), row("select", 0.0), unsupported]},
        ]
    }
    # the headline reading is the default's (select's), every method's own beside it
    rows = world_retrieval.summarise(100, doc, {"select": "members", "pds": "image"})
    by = {r["method"]: r for r in rows}
    assert by["pds"]["r_mean"]["mean"] == 31.0 and by["pds"]["r_mean_own_reading"]["mean"] == 40.0
    assert by["lors"]["reading"] == "own learned text" and by["lors"]["r_mean"]["mean"] == 33.0
    assert by["full"]["reading"] == "every caption" and by["full"]["r_mean"]["mean"] == 92.0
    # a set the headline cannot read is shown as its own rule reads it, and says so
    assert by["pds-published"]["reading"] == "its own rule (x)" and by["pds-published"]["r_mean"]["mean"] == 28.0
    # not under auto: there each set reads its own rule, so pds and select read different text
    assert world_retrieval.render_gain(doc) == {"members": 1.0, "image": -1.5}
    summary = {
        "command": "c",
        "commit": "abcdef123456",
        "seeds": [0, 1, 2],
        "repeats": 2,
        "budgets": [100],
        "by_budget": {"100": {"headline": "members", "rows": rows, "render_gain": {"members": 1.0}}},
        "not_run": [200],
    }
    table = world_retrieval.markdown(summary)
    world_retrieval.figure(summary, tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    assert "## 100 pairs: headline reading members; render gain (pds - select) members +1.0" in table
    assert "| lors | own learned text | 33.0 ± 0.5 |" in table and "stopped before them): 200 pairs" in table


@pytest.mark.slow  # a whole (tiny) test table through compare-baselines: sets, buffers and 16 tables
def test_world_retrieval_runs_compare_baselines_and_summarises_it(tmp_path, monkeypatch):
    results, work = tmp_path / "results", tmp_path / "work"
    results.mkdir()
    readings = {"pds": "members", "select": "members", "random": "image"}
    rows = [{"budget": 6, "method": m, "chosen": r} for m, r in readings.items()]
    (results / "world_val_readings.json").write_text(json.dumps({"rows": rows, "not_run": []}))
    presets_rows = [{"method": "lors", "budget": 100, "candidate": c} for c in presets.WORLD_CANDIDATES]
    doc = {"rows": presets_rows, "chosen": {"lors-b100": "earlier-world"}}
    (results / "baseline_presets_val.json").write_text(json.dumps(doc))
    monkeypatch.setitem(presets.WORLD_CHOICE, ("lors", 100), "earlier-world")
    world_retrieval.main(
        ["--budgets", "6", "--methods", "random,select,pds,lors", "--seeds", "0,1", "--repeats", "1"]
        + ["--work", str(work), "--results", str(results), "--corpus", "shapes,n=40", "--test", "shapes:test,n=40"]
        + ["--quick", "--eval-epochs", "2", "--iterations", "2"]
    )
    summary = json.loads((results / "world_retrieval.json").read_text())
    by = {r["method"]: r for r in summary["by_budget"]["6"]["rows"]}
    assert summary["by_budget"]["6"]["headline"] == "members" and summary["not_run"] == []
    assert by["lors"]["reading"] == "own learned text" and by["pds"]["reading"] == "members"
    assert by["lors"]["r_mean_headline_reading"] is not None  # its images read with its pairs' members' text
    assert by["random"]["own_reading"] == "image" and by["random"]["r_mean_own_reading"] is not None
    assert set(summary["by_budget"]["6"]["render_gain"]) == {"members", "image", "captions"}
    compared = json.loads((results / "compare_world_b6.json").read_text())
    assert {(t["recipe"], t["text"]) for t in compared["tables"]} == {
        ("protocol", t) for t in ("members", "image", "captions", "auto")
    }
    own = json.loads((results / "compare_world_b6_own.json").read_text())
    assert {(t["recipe"], t["text"]) for t in own["tables"]} == {(r, "auto") for r in world_retrieval.OWN_RECIPES}
    assert {r["method"] for r in own["tables"][0]["methods"]} >= {"random", "lors"}
    assert compared["set_seeds"] == [0, 1] and (results / "compare_world_b6.png").stat().st_size > 1000
    assert "## 6 pairs: headline reading members" in (results / "world_retrieval.md").read_text()
