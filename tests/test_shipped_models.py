"""The default models that ship inside the package: present, paired, documented, usable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import protosynth.distill as distill_module
from protosynth.distill import MEMBERS_TEXT_MAX_BUDGET, DistillConfig, apply_preset, default_out, distill
from protosynth.models.clip import SHIPPED_DIR, load_clip
from protosynth.models.decoders import open_decoder
from protosynth.models.small_unclip import SHIPPED_DECODER
from protosynth.render import RenderConfig, resolve_render
from protosynth.sets.distilled import load_distilled


def test_shipped_models_are_a_matching_pair():
    clip, decoder = load_clip("default"), open_decoder("default")
    assert decoder.embedding_dim == clip.embed_dim == 64
    assert decoder.clip_space == clip.space  # the decoder was trained on this very CLIP


def test_shipped_models_carry_provenance_and_metrics():
    prov = json.loads((SHIPPED_DIR / "provenance.json").read_text())
    commands = [run["command"] for run in prov["runs"]]
    assert any("--only clip" in c for c in commands) and any("--only decoder" in c for c in commands)
    assert all(run["commit"] and run["seconds"] > 0 for run in prov["runs"])
    metrics = json.loads((SHIPPED_DIR / "metrics.json").read_text())
    assert metrics == prov["metrics"]
    assert metrics["clip"]["r_mean"] > 50  # a trained CLIP, not a random one (random is about 1-3)


def test_the_shipped_decoder_renders_at_its_measured_guidance():
    """Its render_defaults.json names the best scale of the held-out sweep recorded with it, and
    that is what distill uses unless told otherwise (the other settings stay the kind's)."""
    saved = json.loads((SHIPPED_DECODER / "render_defaults.json").read_text())
    sweep = saved["measured"]["guidance_sweep"]
    best = max(sweep, key=lambda g: (sweep[g]["top1"], sweep[g]["top5"], sweep[g]["mean_cosine"]))
    assert saved["settings"] == {"guidance_scale": float(best), "steps": 50}
    assert sweep[best]["top1"] > 50  # a trained decoder: the undertrained first one scored 26 % at its best
    small = resolve_render(RenderConfig(), open_decoder("default"))
    assert (small.steps, small.guidance_scale, small.clip_guidance, small.size) == (50, float(best), 0.01, None)


def test_shipped_weights_are_small():
    sizes = [p.stat().st_size for p in Path(SHIPPED_DIR).rglob("*") if p.is_file()]
    assert max(sizes) < 20 * 2**20 and sum(sizes) < 40 * 2**20


def test_default_distill_runs(tmp_path):
    out = distill(
        DistillConfig(method="pds", budget=4, corpus="shapes,n=30", out=tmp_path / "set", render=RenderConfig(steps=2))
    )
    ds = load_distilled(out, verify=True)
    assert len(ds) == 4 and ds.manifest["clip"]["spec"] == "default"


def test_the_default_distill_selects_real_pairs_and_reads_them_as_val_chose(tmp_path, monkeypatch):
    """The default (chosen on the world's val split over rendering) keeps each prototype's nearest
    real pair, renders nothing (no decoder call), reads its text by the selection's rule, and writes
    to the default folder without a method suffix; --method pds renders into its own folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distill_module, "render_images", lambda *a, **k: pytest.fail("the default rendered"))
    cfg = DistillConfig(budget=4, corpus="shapes,n=30")
    assert cfg.method == "select" and default_out(cfg) == Path("distilled/shapes_n=30-matched-b4-s0")
    ds = load_distilled(distill(cfg), verify=True)
    assert ds.manifest["method"] == "select" and "render_fidelity" not in ds.manifest
    assert 4 <= MEMBERS_TEXT_MAX_BUDGET and ds.manifest["evaluation"]["text"] == "members"
    rendered = DistillConfig(budget=4, corpus="shapes,n=30", method="pds")
    assert default_out(rendered).name == "shapes_n=30-pds-matched-b4-s0"
    published = apply_preset(DistillConfig(budget=4, corpus="shapes,n=30", preset="pds-published"))
    assert default_out(published).name == "shapes_n=30-pds-published-b4-s0"  # the preset names the method
