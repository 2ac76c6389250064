"""The trajectory-matching engine and the four baselines: mechanism tests on tiny problems (real
timm/torch classes, float64 where gradients are compared), and the buffer and baseline stages end
to end on a tiny world."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from benchmarks.baseline_presets import Candidate, make_set, set_paths
from protosynth.baselines import amd
from protosynth.baselines.buffer import BufferConfig, build_buffer, load_buffer
from protosynth.baselines.checkpoint import checkpoint_path
from protosynth.baselines.compare import ALL_METHODS, QUICK_WORLD, CompareConfig
from protosynth.baselines.compare_rows import pooled, row_key
from protosynth.baselines.matching import Blend, SyntheticSet, match, matching_loss, step_loss
from protosynth.baselines.presets import BaselineConfig, preset, world_candidate
from protosynth.baselines.run import distill_baseline
from protosynth.baselines.student import LowRankSimilarity, Student, info_nce, trainable, weighted_bce
from protosynth.cli import baselines as cli_baselines
from protosynth.cli.main import app
from protosynth.corpora.source import flat_settings
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import has_own_recipe, protocol_recipe, recipe_data, unsupported_reading
from protosynth.evaluation.evaluate import METRIC_NAMES, EvalConfig
from protosynth.evaluation.retrieval import PairData
from protosynth.models.backbones import Backbone
from protosynth.sets.distilled import load_distilled

TINY_WORLD = "shapes,n=40"


def tiny_student(shape: str, text_dim: int = 6, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    model = timm.create_model("nf_resnet26", pretrained=False, num_classes=4, channels=[4, 8, 8, 8])
    bb = Backbone(model.eval(), "tiny", 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return Student(bb, text_dim, shape).double().eval()


def tiny_problem(shape: str, m: int = 6, with_sim: bool = False, seed: int = 0):
    student = tiny_student(shape, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    start = {k: v.detach().clone() for k, v in trainable(student).items()}
    target = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in start.items()}

    def fresh() -> SyntheticSet:
        g = torch.Generator().manual_seed(seed + 1)
        sim = LowRankSimilarity(m, 2, 1.0, g).double() if with_sim else None
        if sim is not None:  # off the identity, so S's gradient is not trivially structured
            with torch.no_grad():
                sim.right.normal_(generator=g)
        return SyntheticSet(
            torch.randn(m, 3, 16, 16, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.randn(m, 6, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.2, dtype=torch.float64, requires_grad=True),
            sim,
        )

    batches = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 0, 1]), torch.tensor([2, 3, 4, 5])]
    return student, start, target, fresh, batches


def grads_of(student, start, target, syn, batches, mode, blends=None, merged=False):
    loss = match(student, start, target, syn, batches, 0.07, mode, blends, merged)
    return loss, {k: v.grad.clone() for k, v in syn.leaves().items()}


@pytest.mark.parametrize("shape,with_sim,merged", [("full", False, False), ("heads", True, True)])
def test_constant_memory_gradient_equals_full_unroll(shape, with_sim, merged):
    student, start, target, fresh, batches = tiny_problem(shape, with_sim=with_sim)
    blends = (
        [Blend(0.3, torch.tensor([1, 0, 3, 2])), None, Blend(0.8, torch.tensor([3, 2, 1, 0]))]
        if shape == "heads"
        else None
    )
    loss_u, g_u = grads_of(student, start, target, fresh(), batches, "unroll", blends, merged)
    loss_c, g_c = grads_of(student, start, target, fresh(), batches, "constant", blends, merged)
    assert loss_u == pytest.approx(loss_c, rel=1e-12)
    assert set(g_u) == set(g_c)
    for k in g_u:
        assert g_u[k].abs().max() > 0, k
        torch.testing.assert_close(g_c[k], g_u[k], rtol=1e-7, atol=1e-12, msg=k)
    # the first-order approximation drops the Hessian terms: different with several steps ...
    _, g_f = grads_of(student, start, target, fresh(), batches, "first-order", blends, merged)
    assert not torch.allclose(g_f["images"], g_u["images"], rtol=1e-4)


@pytest.mark.parametrize("mode", ["unroll", "constant"])
def test_log_space_lr_gradient_is_the_chain_rule_of_the_linear_one(mode):
    """With log(lr) as the leaf, d loss / d log(lr) = lr * d loss / d lr, and every other gradient is
    unchanged: the parametrisation changes how the lr is stepped, not what the student does."""
    student, start, target, fresh, batches = tiny_problem("full")
    loss_lin, g_lin = grads_of(student, start, target, fresh(), batches, mode)
    syn = fresh()
    lrs = {"lr_image": syn.lr_image.item(), "lr_text": syn.lr_text.item()}
    with torch.no_grad():
        syn.lr_image.copy_(syn.lr_image.log())
        syn.lr_text.copy_(syn.lr_text.log())
    syn.log_lr = True
    loss_log, g_log = grads_of(student, start, target, syn, batches, mode)
    assert loss_log == pytest.approx(loss_lin, rel=1e-12)
    for k in g_lin:
        want = g_lin[k] * lrs[k] if k in lrs else g_lin[k]
        torch.testing.assert_close(g_log[k], want, rtol=1e-7, atol=1e-12, msg=k)
    assert syn.rate("image").item() == pytest.approx(lrs["lr_image"])


def test_first_order_is_exact_for_one_step():
    student, start, target, fresh, batches = tiny_problem("full")
    _, g_u = grads_of(student, start, target, fresh(), batches[:1], "unroll")
    _, g_f = grads_of(student, start, target, fresh(), batches[:1], "first-order")
    for k in g_u:
        torch.testing.assert_close(g_f[k], g_u[k], rtol=1e-7, atol=1e-12)


def test_matching_loss_is_zero_when_the_student_lands_on_the_target():
    student, start, _, fresh, batches = tiny_problem("full")
    syn = fresh()
    params = dict(start)
    with torch.no_grad():
        for idx in batches:  # where the student lands: the target
            p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():
                g = torch.autograd.grad(step_loss(student, p, syn, idx, 0.07), list(p.values()))
            params = {
                k: params[k] - (syn.lr_image if k.startswith("image.") else syn.lr_text) * gi
                for k, gi in zip(params, g)
            }
    for mode in ("unroll", "constant"):
        assert match(student, start, params, fresh(), batches, 0.07, mode) == pytest.approx(0.0, abs=1e-20)
    # and the normalisation: a student that does not move scores exactly 1 per modality
    assert float(matching_loss(start, start, params)) == pytest.approx(2.0)
    assert float(matching_loss(start, start, params, merged=True)) == pytest.approx(1.0)


def test_lors_similarity_starts_at_identity_and_weighted_bce_by_hand():
    sim = LowRankSimilarity(5, 3, 2.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sim(), torch.eye(5))
    torch.testing.assert_close(sim(torch.tensor([3, 1])), torch.eye(2))
    with torch.no_grad():
        sim.right.fill_(1.0)
    full = sim().detach()
    torch.testing.assert_close(sim(torch.tensor([4, 0])).detach(), full[[4, 0]][:, [4, 0]])
    # hand-checked WBCE: cosines [[1, 0], [0.6, 0.8]]... with tau 1 and target [[1, 0.2], [0.7, 1]]
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.2], [0.7, 1.0]])
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # img @ txt.T

    def bce(x, y):
        p = 1 / (1 + np.exp(-x))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    pos = [bce(1.0, 1.0), bce(0.6, 0.7), bce(0.8, 1.0)]  # entries > 0.5
    neg = [bce(0.0, 0.2)]
    expected = (np.mean(pos) + np.mean(neg)) / 2
    assert float(weighted_bce(img, txt, target, 1.0)) == pytest.approx(expected, rel=1e-6)
    assert z.shape == (2, 2)


def test_similarity_learns_from_the_identity():
    """S starts at exactly the identity; the matching gradient must still reach its factors (a
    clamped WBCE target once gave them exactly zero, so S never left the identity)."""
    student, start, target, fresh, batches = tiny_problem("heads")
    g = torch.Generator().manual_seed(1)
    syn = fresh()
    syn.sim = LowRankSimilarity(6, 2, 1.0, g).double()
    torch.testing.assert_close(syn.sim(), torch.eye(6, dtype=torch.float64))
    for mode in ("unroll", "constant"):
        syn.sim.zero_grad()
        match(student, start, target, syn, batches, 0.07, mode)
        assert syn.sim.diag.grad.abs().max() > 0, mode
        assert syn.sim.right.grad.abs().max() > 0, mode


def test_amd_ranges_on_trajectories_with_a_known_crossing():
    # image moves 1, 2, 3, 4, 5 per epoch; text 5, 4, 3, 2, 1: ratio = 1/25, 4/16, 1, 16/4, 25 -> median 1
    steps_img, steps_txt = [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]

    def trajectory(offset: float):
        out, a, b = [], offset, -offset
        out.append({"image.w": torch.tensor([a]), "text.w": torch.tensor([b, 0.0])})
        for si, st in zip(steps_img, steps_txt):
            a, b = a + si, b + st
            out.append({"image.w": torch.tensor([a]), "text.w": torch.tensor([b, 0.0])})
        return out

    r = amd.expert_ranges([trajectory(0.0), trajectory(1.0)])  # expert offsets cancel in the differences
    assert r["mmd_image"] == pytest.approx([1, 4, 9, 16, 25])
    assert r["mmd_text"] == pytest.approx([25, 16, 9, 4, 1])
    assert r["T_med"] == pytest.approx(1.0)
    assert (r["R_V"], r["R_L"]) == (4, 3)  # first epoch above the median; last epoch at or below it


def test_repblend_blends_both_modalities_with_one_lambda_and_one_permutation():
    student, start, _, fresh, _ = tiny_problem("heads")
    syn = fresh()
    idx = torch.tensor([0, 1, 2, 3])
    blend = Blend(0.25, torch.tensor([2, 0, 3, 1]))
    got = step_loss(student, start, syn, idx, 0.07, blend)
    with torch.no_grad():
        f = student.features(syn.images[idx])
        t = syn.texts[idx]
        mix = lambda x, perm: 0.75 * x + 0.25 * x[perm]  # noqa: E731
        same = torch.func.functional_call(
            student, start, (mix(f, blend.perm), mix(t, blend.perm)), {"are_features": True}, strict=False
        )
        other = torch.func.functional_call(
            student,
            start,
            (mix(f, blend.perm), mix(t, torch.tensor([1, 2, 0, 3]))),
            {"are_features": True},
            strict=False,
        )
    assert got.item() == pytest.approx(float(info_nce(*same, 0.07)), rel=1e-10)
    assert got.item() != pytest.approx(float(info_nce(*other, 0.07)), rel=1e-6)


def test_presets_follow_the_published_numbers():
    p = preset("lors", "flickr", 500)
    assert (p["lr_sim"], p["rank"], p["alpha"], p["batch_syn"], p["max_start_epoch"]) == (100.0, 20, 0.01, 40, 3)
    assert preset("lors", "coco", 500)["lr_img"] == 5000.0 and preset("lors", "coco", 500)["temperature"] == 0.1
    # MTT-VL's README command: data lr 1000 at 100 pairs (LoRS's scripts use 100 there)
    assert preset("mtt-vl", "flickr", 100)["lr_img"] == 1000.0 and preset("lors", "flickr", 100)["lr_img"] == 100.0
    assert preset("mtt-vl", "flickr", 100)["grad_mode"] == "unroll"
    assert preset("amd", "flickr", 180)["lr_img"] == 1000.0  # nearest preset budget: 200
    assert (
        preset("lors", "flickr", 100)["lr_sim"] == 10.0
        and world_candidate("lors", 100, "earlier-world")["lr_sim"] == 1.0
    )
    # the world's lr_sim: 0.1, or 1 where val chose it (quick runs share it)
    assert [
        world_candidate(m, b, "earlier-world")["lr_sim"]
        for m, b in (("lors", 200), ("repblend", 200), ("amd", 500), ("lors", 500))
    ] == [1.0, 0.1, 1.0, 1.0]
    assert world_candidate("amd", 100, "earlier-world", quick=True)["lr_sim"] == 1.0
    # world data lrs: 10 for every method and budget (Flickr's 1000 wrecked the text features)
    assert [world_candidate(m, 200, "earlier-world")["lr_img"] for m in ("lors", "amd", "repblend", "mtt-vl")] == [
        10.0,
        10.0,
        10.0,
        10.0,
    ]
    assert [world_candidate(m, 100, "earlier-world")["lr_txt"] for m in ("lors", "amd", "repblend", "mtt-vl")] == [
        10.0,
        10.0,
        10.0,
        10.0,
    ]
    assert preset("mtt-vl", "flickr", 200)["lr_txt"] == 1000.0
    # inner lrs: learned linearly as published; in log space on the world where linear lrs crashed (not --quick)
    assert [
        preset("mtt-vl", f, b)["lr_space"] for f, b in (("flickr", 500), ("world", 100), ("world", 200), ("world", 500))
    ] == ["linear", "linear", "log", "log"]
    assert [
        world_candidate(m, b, "earlier-world")["lr_space"]
        for m, b in (("lors", 200), ("amd", 500), ("repblend", 100), ("repblend", 200))
    ] == ["linear", "log", "log", "log"]
    assert world_candidate("lors", 100, "earlier-world", quick=True)["lr_space"] == "linear"
    with pytest.raises(ProtosynthError, match="unknown method"):
        preset("dream", "flickr", 100)


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    root = tmp_path_factory.mktemp("buffers")
    full = build_buffer(BufferConfig(corpus=TINY_WORLD, experts=2, epochs=2, batch_size=16, out=root / "full"))
    heads = build_buffer(
        BufferConfig(corpus=TINY_WORLD, experts=1, epochs=2, batch_size=16, heads_only=True, out=root / "heads")
    )
    return full, heads


def test_buffer_layout_manifest_and_resume(buffers, tmp_path):
    full, heads = buffers
    b = load_buffer(full)
    assert (b.experts, b.epochs, b.shape) == (2, 2, "full")
    traj = b.trajectory(1)
    assert len(traj) == 3 and set(traj[0]) == set(b.snapshot(0, 0))
    assert any(k.startswith("image.model.") for k in traj[0]) and any(k.startswith("text.") for k in traj[0])
    assert not torch.equal(traj[0]["text.fc.weight"], traj[1]["text.fc.weight"])
    assert load_buffer(heads).shape == "heads" and all(
        k.split(".")[0] in ("image", "text") and ".model." not in k for k in load_buffer(heads).snapshot(0, 0)
    )
    # a killed run: expert 1 lost its last epoch and its done marker; resuming recomputes it identically
    copy = tmp_path / "copy"
    shutil.copytree(full, copy)
    (copy / "manifest.json").unlink()
    (copy / "expert_001" / "done.json").unlink()
    (copy / "expert_001" / "epoch_02.safetensors").unlink()
    with pytest.raises(ProtosynthError, match="not a finished buffer"):
        load_buffer(copy)
    build_buffer(BufferConfig(corpus=TINY_WORLD, experts=2, epochs=2, batch_size=16, out=copy))
    for k, v in load_file(str(full / "expert_001" / "epoch_02.safetensors")).items():
        assert torch.equal(v, load_file(str(copy / "expert_001" / "epoch_02.safetensors"))[k]), k
    with pytest.raises(ProtosynthError, match="other settings"):
        build_buffer(BufferConfig(corpus=TINY_WORLD, experts=3, epochs=2, batch_size=16, out=copy))


@pytest.mark.parametrize("method", ["mtt-vl", "lors", "amd", "repblend"])
def test_each_method_improves_its_matching_loss(method, buffers, tmp_path, quick_models):
    full, heads = buffers
    cfg = BaselineConfig(
        method=method,
        budget=12,
        buffer=heads if method == "repblend" else full,
        out=tmp_path / method,
        iterations=12,
        syn_steps=3,
        batch_syn=12,
        max_start_epoch=1,
        lr_img=100.0,
        lr_txt=100.0,
        lr_lr=1e-3,
        lr_sim=0.0 if method == "repblend" else None,
        clip=f"small:{quick_models}",
        lr_space="log" if method == "mtt-vl" else None,
    )  # one method through the log-space lrs
    out = distill_baseline(cfg)
    man = json.loads((out / "manifest.json").read_text())
    curve = man["matching_loss"]["curve"]
    assert np.mean(curve[-3:]) < np.mean(curve[:3]), curve
    m = 11 if method != "mtt-vl" else 12  # S is paid for with one pair
    assert man["pairs_stored"] == m and len(list((out / "images").glob("*.png"))) == m
    ds = load_distilled(out, verify=True)
    assert ds.tensors["pixels"].shape == (m, 3, 32, 32) and ds.tensors["text"].shape[0] == m
    assert ("similarity" in ds.tensors) == (method != "mtt-vl")
    # mtt-vl asked for log space; the others learn linearly as their world presets at 100 pairs do
    assert man["settings"]["lr_space"] == ("log" if method == "mtt-vl" else "linear")
    # the set stores the lr itself (never its log), as the manifest reports it
    assert float(ds.tensors["lr_image"]) == pytest.approx(man["learned_lr"]["image"]) and man["learned_lr"]["image"] > 0
    assert man["evaluation"]["image"] == ("frozen+head" if method == "repblend" else "finetune")
    # how far the set moved from its start: every part, S from the identity (frozen for repblend here)
    moved = man["movement"]
    assert moved["pixels"] > 0 and moved["text"] > 0
    assert moved["lr_image"] == pytest.approx(abs(man["learned_lr"]["image"] - 0.1), abs=1e-7)
    assert ("similarity" in moved) == (method != "mtt-vl")
    if method == "repblend":
        assert moved["similarity"] == 0
    if method == "amd":
        assert {"R_V", "R_L", "T_med"} <= set(man["amd_ranges"])


def test_baseline_refuses_a_buffer_of_the_wrong_shape(buffers, tmp_path):
    full, heads = buffers
    with pytest.raises(ProtosynthError, match="heads"):
        distill_baseline(BaselineConfig(method="repblend", budget=5, buffer=full, out=tmp_path / "x"))
    with pytest.raises(ProtosynthError, match="not a finished buffer"):
        distill_baseline(BaselineConfig(method="lors", budget=5, buffer=tmp_path / "nothing", out=tmp_path / "y"))
    with pytest.raises(ProtosynthError, match="^grad_mode 'sideways'"):
        distill_baseline(BaselineConfig(method="lors", budget=5, buffer=full, out=tmp_path / "z", grad_mode="sideways"))
    with pytest.raises(ProtosynthError, match="^expert_epochs 5 exceeds"):
        distill_baseline(BaselineConfig(method="lors", budget=5, buffer=full, out=tmp_path / "w", expert_epochs=5))


@pytest.mark.slow  # every kind of method made and evaluated in child processes, twice
def test_compare_baselines_end_to_end_and_resume(tmp_path, monkeypatch):
    """Methods of every kind (coreset, PDS, full-unroll and heads-only baselines, the upper bound) at a
    tiny budget through the real command path, smaller than --quick; the others share these paths."""
    assert cli_baselines.ALL_METHODS.split(",") == list(ALL_METHODS)
    out = tmp_path / "cmp"
    methods = ["random", "pds", "lors", "repblend", "full"]
    # a 40-image test split (as tests/test_evaluation.py uses): encoding the default one's 5,000
    # captions with MiniLM took ~45 of this test's ~130 s
    args = [
        "compare-baselines",
        "--budget",
        "6",
        "--corpus",
        TINY_WORLD,
        "--test",
        "shapes:test,n=40",
        "--quick",
        "--repeats",
        "1",
        "--eval-epochs",
        "2",
        "--iterations",
        "2",
        "--methods",
        ",".join(methods),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in doc["methods"]] == methods
    for row in doc["methods"]:
        assert 0 <= row["metrics"]["r_mean"]["mean"] <= 100
        if row["method"] != "full":
            # random's cost is a few milliseconds: against PDS's total it may round to 0.0
            assert row["distill_seconds"] > 0 and row["peak_memory_mb"] > 0 and row["cost_vs_pds"] >= 0
            assert row["total_seconds"] == pytest.approx(row["distill_seconds"] + row["shared_seconds"], abs=0.11)
    rows = {r["method"]: r for r in doc["methods"]}
    assert rows["pds"]["cost_vs_pds"] == 1.0 and rows["lors"]["cost_vs_pds"] > 0
    # cost from corpus to set: PDS pays for the CLIP store, the trajectory methods for their buffers
    assert rows["random"]["shared_seconds"] == 0 and rows["pds"]["shared_seconds"] > 0
    assert rows["lors"]["shared_seconds"] == pytest.approx(doc["buffers"]["full"]["seconds"], abs=0.11)
    assert rows["repblend"]["shared_seconds"] == pytest.approx(doc["buffers"]["heads"]["seconds"], abs=0.11)
    assert rows["pds"]["pretrained"] == "CLIP, unCLIP decoder" and rows["random"]["pretrained"] == "none"
    assert rows["random"]["gain_over_random"] == 0
    want = rows["lors"]["metrics"]["r_mean"]["mean"] - rows["random"]["metrics"]["r_mean"]["mean"]
    assert rows["lors"]["gain_over_random"] == pytest.approx(want, abs=0.011)
    assert "gain over random" in (out / "compare.md").read_text()
    assert doc["buffers"]["full"]["trained_on_pairs"] == 200 and doc["quick"] is True
    assert (out / "compare.png").stat().st_size > 1000 and "| lors |" in (out / "compare.md").read_text()
    assert doc["shared_preparation_seconds"] > 0
    # a second run resumes: no set is remade, no row re-evaluated
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    assert json.loads((out / "compare.json").read_text())["shared_preparation_seconds"] == 0  # nothing to prepare for
    # a set made before --lr-space existed (no such setting recorded) learned its lrs linearly: still reused
    lors_man = out / "sets" / "lors-b6" / "manifest.json"
    man = json.loads(lors_man.read_text())
    assert man["settings"].pop("lr_space") == "linear"
    lors_man.write_text(json.dumps(man))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # a set made with other settings is never reused under this run's name
    result = CliRunner().invoke(app, [*args[:-2], "--iterations", "3", "--out", str(out)])
    assert result.exit_code == 2 and "lors-b6 was made with other settings (iterations 2 (now 3))" in result.output
    lors = json.loads((out / "sets" / "lors-b6" / "manifest.json").read_text())["learned_lr"]
    assert len(lors["text_curve"]) == 2 and lors["text_curve"][-1] == pytest.approx(lors["text"], rel=1e-5)
    # the default table: every row trained by the protocol's recipe, RepBlend and LoRS included
    assert doc["recipe"] == "protocol" and doc["text"] == "auto" and doc["set_seeds"] == [0]
    assert {(r["loss"], r["learned_lrs"], r.get("image_side")) for r in doc["methods"] if r["method"] != "full"} == {
        ("info_nce", False, "finetune")
    }
    # both recipes, two readings, two set seeds: a table each, the first seed's sets reused
    axes = ["--recipes", "protocol,own", "--texts", "auto,image", "--seeds", "0,1"]
    args = [*args[:-4], "--methods", "random,select,repblend,full", *axes, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compare.json").read_text())
    assert [(t["recipe"], t["text"]) for t in doc["tables"]] == [
        ("protocol", "auto"),
        ("protocol", "image"),
        ("own", "auto"),
        ("own", "image"),
    ]
    assert (out / "sets" / "random-b6-s1").is_dir() and (out / "sets" / "select-b6").is_dir()
    for table in doc["tables"]:
        rows = {r["method"]: r for r in table["methods"]}
        assert list(rows) == ["random", "select", "repblend", "full"]
        assert rows["random"]["set_seeds"] == [0, 1] and len(rows["random"]["metrics"]["r_mean"]["runs"]) == 2
        assert rows["full"]["metrics"] == doc["tables"][0]["methods"][3]["metrics"]  # one run, every table
        own = table["recipe"] == "own"
        assert (rows["repblend"]["loss"], rows["repblend"]["image_side"]) == (
            ("wbce", "frozen+head") if own else ("info_nce", "finetune")
        )
        if table["text"] == "image":
            assert rows["select"]["text"] == "image" and rows["repblend"]["text"] == "image"
    by_table = {(t["recipe"], t["text"]): {r["method"]: r for r in t["methods"]} for t in doc["tables"]}
    for text in ("auto", "image"):  # random and select store nothing of their own: one run serves both recipes
        for method in ("random", "select"):
            assert by_table["own", text][method]["metrics"] == by_table["protocol", text][method]["metrics"]
        own, proto = by_table["own", text]["repblend"], by_table["protocol", text]["repblend"]
        assert own["metrics"]["r_mean"]["runs"] != proto["metrics"]["r_mean"]["runs"]
    md = (out / "compare.md").read_text()
    assert "## recipe own, text image" in md and "| 2 (2x1) |" in md
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "rows" in p.parts or p.name == "manifest.json"}
    assert CliRunner().invoke(app, args).exit_code == 0  # resumes: nothing made, nothing evaluated again
    assert stamps == {
        p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "rows" in p.parts or p.name == "manifest.json"
    }


def test_baseline_cli_bad_input(tmp_path):
    r = CliRunner().invoke(
        app, ["baseline", "--method", "dream", "--buffer", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "unknown --method 'dream'" in r.output  # the typo first, before the buffer
    r = CliRunner().invoke(
        app, ["baseline", "--method", "mtt-vl", "--buffer", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "not a finished buffer" in r.output
    r = CliRunner().invoke(app, ["buffer", "--experts", "0", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--experts must be at least 1" in r.output
    r = CliRunner().invoke(app, ["compare-baselines", "--methods", "random,dream", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "unknown --methods dream" in r.output
    # compare's own flags, checked before any work (the buffer would say epochs, the evaluation too)
    for flag in ("--expert-epochs", "--eval-epochs", "--experts"):
        r = CliRunner().invoke(app, ["compare-baselines", flag, "0", "--out", str(tmp_path / "c")])
        assert r.exit_code == 2 and r.stderr.strip() == f"error: {flag} must be at least 1, got 0", r.output
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # trains expert buffers and runs LoRS on timm nfnet_l0 and BERT
def test_nfnet_bert_buffer_and_lors_on_tiny_real_classes(tiny_bert, tmp_path):
    """The reference protocol's classes (timm nfnet_l0 with random weights, a BERT [CLS]) through
    the same buffer and matching code, at 32 px to stay fast."""
    buf = build_buffer(
        BufferConfig(
            corpus="shapes,n=4",
            protocol="nfnet-bert",
            experts=1,
            epochs=1,
            batch_size=10,
            backbone="random:nfnet_l0",
            text_encoder=f"hf-cls:{tiny_bert}",
            image_size=32,
            out=tmp_path / "buf",
        )
    )
    man = load_buffer(buf).manifest
    assert man["backbone"] == "random:nfnet_l0" and man["parameters"]["image"] > 1e6
    out = distill_baseline(
        BaselineConfig(
            method="lors",
            budget=4,
            buffer=buf,
            out=tmp_path / "lors",
            iterations=1,
            syn_steps=2,
            batch_syn=3,
            max_start_epoch=1,
        )
    )
    ds_man = json.loads((out / "manifest.json").read_text())
    assert ds_man["protocol"]["backbone"] == "random:nfnet_l0" and ds_man["text_space"].endswith(":cls")
    assert np.isfinite(ds_man["matching_loss"]["last"])


def test_quick_compare_uses_the_small_world_and_smoke_settings():
    q = CompareConfig(quick=True).effective()
    assert (q.corpus.spec, q.repeats, q.eval_epochs, q.experts, q.expert_epochs, q.buffer_pairs, q.iterations) == (
        QUICK_WORLD,
        2,
        20,
        2,
        2,
        2000,
        10,
    )
    assert CompareConfig(quick=True, corpus="my.jsonl").effective().corpus.spec == "my.jsonl"
    assert CompareConfig().effective() == CompareConfig()
    assert world_candidate("mtt-vl", 100, "earlier-world", quick=True)["syn_steps"] == 8
    assert world_candidate("mtt-vl", 100, "earlier-world")["syn_steps"] == 20


def test_baseline_is_deterministic_for_a_seed(buffers, tmp_path):
    """Byte-identical sets from two processes whose Python hash seeds differ: the parameters were once
    kept in a set of names, whose order (and so the float sums over it) changed from run to run."""
    full, _ = buffers
    outs = [tmp_path / f"run{i}" for i in range(2)]
    for i, out in enumerate(outs):
        args = [
            "baseline",
            "--method",
            "lors",
            "--budget",
            "6",
            "--buffer",
            str(full),
            "--out",
            str(out),
            "--iterations",
            "2",
            "--syn-steps",
            "2",
            "--batch-syn",
            "4",
            "--max-start-epoch",
            "1",
        ]
        done = subprocess.run(
            [sys.executable, "-c", "from protosynth.cli.main import main; main()", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(i + 1)},
        )
        assert done.returncode == 0, done.stderr
    for name in ("embeddings.safetensors", "pairs.jsonl", "images/000003.png"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_a_killed_baseline_run_resumes_from_its_checkpoint_to_the_same_set(buffers, tmp_path):
    """SIGKILL mid-run, rerun: it goes on from the last checkpoint (not from the start) and writes the
    set an uninterrupted run writes, byte for byte; a checkpoint of other settings is refused. Every
    run in a fresh process, as a user's would be."""
    full, _ = buffers
    flags = {"budget": 6, "iterations": 60, "syn_steps": 2, "batch_syn": 4, "max_start_epoch": 1}

    def cli(out):
        args = ["baseline", "--method", "lors", "--buffer", str(full), "--out", str(out), "--checkpoint-every", "2"]
        args += [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        return [sys.executable, "-c", "from protosynth.cli.main import main; main()", *args, "--train-student"]

    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(cli(whole), capture_output=True, text=True).returncode == 0
    ckpt = out.with_name(".killed.checkpoint.pt")
    child = subprocess.Popen(cli(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert ckpt.is_file() and not out.exists(), "the run finished (or never checkpointed) before the kill"
    other = BaselineConfig(method="lors", buffer=full, out=out, checkpoint_every=2, train_mode=True, lr_img=7, **flags)
    with pytest.raises(ProtosynthError, match="checkpoint of a run with other settings"):
        distill_baseline(other)
    done = subprocess.run(cli(out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = int(re.search(r"resuming after iteration (\d+)", done.stderr).group(1))
    assert 0 < resumed < 60 and resumed % 2 == 0
    assert not ckpt.exists()
    for name in ("embeddings.safetensors", "pairs.jsonl", "images/000003.png"):
        assert (whole / name).read_bytes() == (out / name).read_bytes(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["matching_loss"] == json.loads((whole / "manifest.json").read_text())["matching_loss"]
    assert "checkpoint_every" not in manifest["settings"]  # how often it saved does not change the set


def test_the_preset_sweep_records_a_diverged_candidate_and_stops_on_anything_else(buffers, tmp_path):
    """A diverged matching loss is the candidate's result (kept, not run again); a checkpoint of other
    settings in its place is the user's to sort out, never a candidate that "failed"."""
    full, _ = buffers
    small = {"iterations": 4, "syn_steps": 2, "batch_syn": 4, "max_start_epoch": 1, "checkpoint_every": 2}
    wild = Candidate("wild", {**small, "lr_img": 1e30, "lr_txt": 1e30})
    why = make_set("lors", 6, wild, tmp_path, {"full": full}, 0)
    assert "matching loss is" in why and (tmp_path / "presets" / "lors-b6-wild.failed").read_text() == why
    assert make_set("lors", 6, wild, tmp_path, {"full": full}, 0) == why  # recorded, not run again
    calm = Candidate("calm", small)
    out, failed = set_paths("lors", 6, calm, tmp_path)
    torch.save({"fingerprint": "another run"}, checkpoint_path(out))
    with pytest.raises(ProtosynthError, match="checkpoint of a run with other settings"):
        make_set("lors", 6, calm, tmp_path, {"full": full}, 0)
    assert not failed.exists()


def test_official_presets_follow_the_authors_scripts():
    """The values of the official scripts and argument defaults (docs/baselines.md cites them)."""
    mtt = preset("mtt-vl", "flickr", 200)
    assert (mtt["grad_mode"], mtt["batch_syn"], mtt["train_mode"], mtt["merged"]) == ("unroll", 200, True, False)
    assert mtt["temperature"] == pytest.approx(0.3760, abs=1e-4)  # 1 / log(1 / 0.07): the cosines times 2.66
    assert preset("mtt-vl", "coco", 100, variant="intended-temperature")["temperature"] == 0.07
    for method in ("lors", "amd", "repblend"):
        for family in ("flickr", "coco"):
            p = [preset(method, family, b) for b in (100, 200, 500)]
            assert {q["grad_mode"] for q in p} == {"first-order"} and all(q["train_mode"] for q in p)
            assert [q["merged"] for q in p] == [family == "coco"] * 3
            assert [q["temperature"] for q in p] == [None, None, 0.1 if family == "coco" else None]
            assert [q["max_start_epoch"] for q in p] == [2, 2, 2 if family == "coco" else 3]
            assert {(q["syn_steps"], q["lr_lr"], q["lr_space"], q["expert_epochs"]) for q in p} == {
                (8, 1e-2, "linear", 1)
            }
    assert [preset(m, "coco", 200)["iterations"] for m in ("lors", "amd", "repblend", "mtt-vl")] == [
        2000,
        2000,
        3000,
        3000,
    ]
    assert preset("repblend", "coco", 500)["batch_syn"] == 20 and preset("lors", "coco", 500)["batch_syn"] == 30
    # the earlier world preset: eval mode, the exact gradient, per-modality loss
    w = [world_candidate(m, 100, "earlier-world") for m in ("mtt-vl", "lors", "amd", "repblend")]
    assert [q["grad_mode"] for q in w] == ["unroll", "constant", "constant", "constant"]
    assert {(q["train_mode"], q["merged"], q["temperature"], q["batch_syn"]) for q in w} == {(False, False, None, 20)}
    with pytest.raises(ProtosynthError, match="variant"):
        preset("lors", "flickr", 100, variant="intended-temperature")


def test_train_mode_constant_memory_replays_the_forward_dropout_masks():
    """In train mode (the official presets' student) the constant-memory gradient still equals the
    full unroll's: each replayed step draws the dropout masks of its forward pass."""
    student, start, target, fresh, batches = tiny_problem("heads", with_sim=True)
    grads = {}
    for mode, train in (("unroll", True), ("constant", True), ("unroll", False)):
        torch.manual_seed(5)
        syn = fresh()
        match(student, start, target, syn, batches, 0.07, mode, train=train)
        grads[mode, train] = {k: v.grad.clone() for k, v in syn.leaves().items()}
    assert not student.training  # the mode it had before
    for k, g in grads["unroll", True].items():
        torch.testing.assert_close(grads["constant", True][k], g, rtol=1e-7, atol=1e-12, msg=k)
    assert not torch.allclose(grads["unroll", False]["texts"], grads["unroll", True]["texts"], rtol=1e-3)


def test_compare_rows_pool_set_seeds_and_keep_old_row_keys():
    """A row pools every (set seed, repeat) run; a seed the reading cannot read marks the row; rows stored
    before recipes and readings existed keep their keys (they were scored with a set's own recipe)."""

    def stored(runs):
        m = {k: {"mean": float(np.mean(runs)), "std": 0.0, "runs": runs} for k in METRIC_NAMES}
        return {"row": {"metrics": m, "text": "captions", "loss": "info_nce", "recipe": "protocol"}}

    row = pooled("random", {0: stored([10.0, 12.0]), 1: stored([20.0, 22.0])})
    r = row["metrics"]["r_mean"]
    assert r["mean"] == 16.0 and r["std"] == pytest.approx(np.std([10, 12, 20, 22], ddof=1), abs=1e-3)
    assert row["set_seeds"] == [0, 1] and row["repeats"] == 2 and r["seed_means"] == {"0": 11.0, "1": 21.0}
    marked = pooled("pds", {0: stored([1.0]), 1: {"unsupported": "text image: no one image"}})
    assert "metrics" not in marked and marked["unsupported"] == "text image: no one image"
    cfg = EvalConfig(protocol="small", repeats=2)
    old = {k: v for k, v in flat_settings(cfg).items() if k not in ("skip_bad", "image_column", "caption_column")}
    old.pop("recipe")
    assert row_key(None, cfg) == hashlib.sha256(b"full" + json.dumps(old, sort_keys=True).encode()).hexdigest()[:20]
    keys = {row_key(None, cfg), row_key(None, EvalConfig(protocol="small", repeats=2, recipe="protocol"))}
    assert len(keys | {row_key(None, EvalConfig(protocol="small", repeats=2, text="captions"))}) == 3


def test_protocol_recipe_drops_what_a_method_adds_and_readings_say_what_they_lack():
    own = PairData(
        torch.zeros(3, 3, 4, 4),
        torch.zeros(3, 5),
        0.2,
        0.3,
        notes={"text": "stored", "learned_lrs": True},
        similarity=torch.eye(3),
        image_head=True,
    )
    plain = protocol_recipe(own)
    assert (plain.lr_image, plain.lr_text, plain.similarity, plain.image_head) == (None, None, None, False)
    assert plain.notes == {"text": "stored", "learned_lrs": False} and own.similarity is not None
    labels, lrs = recipe_data(own, "soft-labels"), recipe_data(own, "learned-lrs")
    assert labels.similarity is own.similarity and (labels.lr_image, labels.image_head) == (None, False)
    assert (lrs.lr_image, lrs.lr_text, lrs.similarity, lrs.image_head) == (0.2, 0.3, None, False)
    assert lrs.notes["learned_lrs"] and not labels.notes["learned_lrs"] and recipe_data(own, "own") is own
    coreset = SimpleNamespace(pairs=[{"caption": "a", "members": [4]}, {"caption": "b", "members": [7]}])
    noise = SimpleNamespace(pairs=[{"caption": "a", "members": [1, 2]}, {"caption": "", "members": [3, 5]}])
    assert [unsupported_reading(coreset, t) for t in ("captions", "members", "image")] == [None] * 3
    assert unsupported_reading(noise, "members") is None and "no one real image" in unsupported_reading(noise, "image")
    assert "no caption" in unsupported_reading(noise, "captions")


def test_compare_cli_checks_its_axes(tmp_path):
    for args, msg in (
        (["--recipes", "own,mine"], "--recipes 'own,mine': use distinct values of own, protocol, soft-labels"),
        (["--texts", "captions,captions"], "--texts 'captions,captions': use distinct values of"),
        (["--seeds", "0,x"], "--seeds '0,x': use comma-separated whole numbers"),
        (["--seeds", "1,1"], "--seeds 1,1: a seed is repeated"),
    ):
        r = CliRunner().invoke(app, ["compare-baselines", *args, "--out", str(tmp_path / "c")])
        assert r.exit_code == 2 and msg in r.stderr, r.output
    assert not (tmp_path / "c").exists()
    assert CompareConfig(seed=3).set_seeds() == (3,) and CompareConfig(seeds=(0, 1, 2)).set_seeds() == (0, 1, 2)


def test_compare_makes_pds_published_with_its_preset(tmp_path):
    """compare-baselines' ``pds-published`` row is ``distill --preset pds-published``, nothing else."""
    from protosynth.baselines.compare import _make_set  # noqa: PLC0415 (the step a spawned child runs)
    from protosynth.corpora.source import CorpusSource  # noqa: PLC0415
    from protosynth.corpora.spec import canonical_spec  # noqa: PLC0415

    cfg = CompareConfig(budget=4, corpus=CorpusSource(spec=canonical_spec(TINY_WORLD)), out=tmp_path, quick=True)
    _make_set("pds-published", cfg, tmp_path / "sets" / "pds-published-b4", {})
    man = json.loads((tmp_path / "sets" / "pds-published-b4" / "manifest.json").read_text())
    assert man["method"] == "pds" and man["settings"]["preset"] == "pds-published"
    assert (man["settings"]["cluster_space"], man["settings"]["kmeans"], man["evaluation"]["text"]) == (
        "raw",
        "minibatch",
        "prototype",
    )


def test_compare_makes_pds_soft_with_its_soft_labels(tmp_path):
    """compare-baselines' ``pds-soft`` row is the default distill plus the clip soft labels at the default
    temperature: S stored, so its own and soft-labels rows train with weighted BCE."""
    from protosynth.baselines.compare import _make_set  # noqa: PLC0415 (the step a spawned child runs)
    from protosynth.corpora.source import CorpusSource  # noqa: PLC0415
    from protosynth.corpora.spec import canonical_spec  # noqa: PLC0415
    from protosynth.soft_labels import DEFAULT_SOFT_TEMPERATURE  # noqa: PLC0415

    cfg = CompareConfig(budget=4, corpus=CorpusSource(spec=canonical_spec(TINY_WORLD)), out=tmp_path, quick=True)
    _make_set("pds-soft", cfg, tmp_path / "sets" / "pds-soft-b4", {})
    ds = load_distilled(tmp_path / "sets" / "pds-soft-b4", verify=True)
    settings = ds.manifest["settings"]
    assert ds.manifest["method"] == "pds" and settings["preset"] is None
    assert (settings["soft_labels"], settings["soft_temperature"]) == ("clip", DEFAULT_SOFT_TEMPERATURE["clip"])
    assert tuple(ds.tensors["similarity"].shape) == (4, 4) and has_own_recipe(ds)


def test_every_recipe_has_a_table_title():
    """compare.md titles each table by its recipe: a recipe without a title crashed the writer after
    hours of work (soft-labels and learned-lrs, found by the world_retrieval smoke test)."""
    from protosynth.baselines.compare import RECIPE_TITLES  # noqa: PLC0415
    from protosynth.configs import RECIPES  # noqa: PLC0415

    assert set(RECIPE_TITLES) == set(RECIPES)
