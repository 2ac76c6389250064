"""The small models: open_clip factory round-trip, decoder pipeline round-trip, resumable training."""

from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.corpus import load_corpus
from protosynth.errors import ProtosynthError
from protosynth.models.clip import load_clip
from protosynth.models.decoders import RENDER_DEFAULTS, Decoder, open_decoder
from protosynth.models.small_unclip import SmallUnCLIPPipeline, build_pipeline
from protosynth.render import RenderConfig, render_images, resolve_render
from protosynth.training import clip as train_clip_mod
from protosynth.training import decoder as td
from protosynth.training.clip import ClipTrainConfig, train_clip
from protosynth.training.decoder import DecoderTrainConfig, decoder_lr


def test_architectures_registered_with_open_clip():
    assert {"ps-small-clip", "ps-tiny-clip"} <= set(open_clip.list_models())
    model = open_clip.create_model("ps-tiny-clip")
    assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def test_quick_models_outputs(quick_models):
    metrics = json.loads((quick_models / "metrics.json").read_text())
    for key in ("IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10", "r_mean"):
        assert 0.0 <= metrics["clip"][key] <= 100.0
    fid = metrics["decoder"]["render_fidelity"]
    assert fid["n"] == 32 and 0.0 <= fid["top1"] <= fid["top5"] <= 100.0
    prov = json.loads((quick_models / "provenance.json").read_text())
    run = prov["runs"][-1]
    assert run["command"] == "test fixture" and run["seed"] == 0 and run["seconds"] > 0
    assert run["corpus_fingerprint"].startswith("world-")


def test_the_trainer_saves_the_guidance_it_measured_best(quick_models):
    """The final held-out sweep covers every scale; the best one is the folder's render default."""
    dec = json.loads((quick_models / "metrics.json").read_text())["decoder"]
    sweep = dec["guidance_sweep"]
    assert list(sweep) == ["1.0", "1.5", "2.0", "3.0"]
    ranked = sorted(sweep, key=lambda g: (sweep[g]["top1"], sweep[g]["top5"], sweep[g]["mean_cosine"]), reverse=True)
    assert dec["render_fidelity"] == sweep[str(dec["guidance_scale"])] == sweep[ranked[0]]
    saved = json.loads((quick_models / "decoder" / "render_defaults.json").read_text())
    assert saved["settings"] == {"guidance_scale": dec["guidance_scale"], "steps": 5}  # --quick sweeps at 5 steps
    assert saved["measured"]["guidance_sweep"] == sweep and saved["measured"]["held_out_images"] == 32
    assert open_decoder(f"small:{quick_models}").defaults["guidance_scale"] == dec["guidance_scale"]


def test_models_calibrate_makes_the_measured_guidance_the_default(quick_models, tmp_path):
    """`models calibrate` re-measures a trained decoder; loading it by any route then renders at the
    recorded scale unless --guidance says otherwise, and the run is in provenance.json."""
    models = shutil.copytree(quick_models, tmp_path / "m")
    r = CliRunner().invoke(
        app,
        [
            "models",
            "calibrate",
            "--models",
            str(models),
            "--corpus",
            "shapes,n=300",
            "--guidances",
            "1.5",
            "--steps",
            "3",
            "--quick",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "guidance 1.5" in r.output
    saved = json.loads((models / "decoder" / "render_defaults.json").read_text())
    assert saved["settings"] == {"guidance_scale": 1.5, "steps": 3}
    for decoder in (open_decoder(f"small:{models}"), open_decoder(str(models / "decoder"))):
        assert resolve_render(RenderConfig(), decoder).guidance_scale == 1.5
        assert resolve_render(RenderConfig(), decoder).steps == 3
        assert resolve_render(RenderConfig(guidance_scale=2.0), decoder).guidance_scale == 2.0
    metrics = json.loads((models / "metrics.json").read_text())
    assert metrics["decoder"]["guidance_scale"] == 1.5 and list(metrics["decoder"]["guidance_sweep"]) == ["1.5"]
    assert "clip" in metrics  # the CLIP's metrics are kept
    runs = json.loads((models / "provenance.json").read_text())["runs"]
    assert len(runs) == 2 and runs[-1]["config"]["decoder"]["guidances"] == [1.5] and runs[-1]["seconds"] > 0


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"guidance": 2.0}, "sets 'guidance', not a render setting"),
        ({"guidance_scale": -1}, "sets guidance_scale to -1, not a number of at least 0"),
        ({"steps": 0}, "sets steps to 0, not a number of at least 1"),
        ({"steps": "many"}, "sets steps to 'many'"),
    ],
)
def test_a_bad_render_defaults_file_is_named(quick_models, tmp_path, settings, message):
    models = shutil.copytree(quick_models, tmp_path / "m")
    (models / "decoder" / "render_defaults.json").write_text(json.dumps({"settings": settings}))
    with pytest.raises(ProtosynthError, match=f"render_defaults.json {message}"):
        open_decoder(f"small:{models}")


def test_small_clip_loads_through_open_clip_local_dir(quick_models):
    enc = load_clip(f"small:{quick_models}")
    same = load_clip(f"local-dir:{quick_models / 'clip'}")
    texts = ["a red circle in the center", "two shapes: a big blue square on the left"]
    assert torch.equal(enc.encode_texts(texts), same.encode_texts(texts))
    assert enc.encode_texts(texts).shape == (2, enc.embed_dim)
    assert enc.space == same.space and enc.space.startswith("small-clip:")


def test_local_dir_takes_open_clips_other_weight_files(quick_models, tmp_path):
    """A folder saved with torch.save (``open_clip_pytorch_model.bin``, as older open_clip exports
    are) loads too; its space follows that file's bytes. No weights at all: one clear error."""
    folder = shutil.copytree(quick_models / "clip", tmp_path / "bin")  # config, BPE merges, weights
    torch.save(load_file(folder / "open_clip_model.safetensors"), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_model.safetensors").unlink()
    texts = ["a red circle in the center"]
    as_bin = load_clip(f"local-dir:{folder}")
    assert torch.equal(as_bin.encode_texts(texts), load_clip(f"small:{quick_models}").encode_texts(texts))
    assert as_bin.space.startswith("small-clip:")
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(ProtosynthError, match=r"no weights file in .*open_clip_model\.safetensors"):
        load_clip(f"local-dir:{folder}")


def test_unknown_specs_are_clear_errors(tmp_path):
    with pytest.raises(ProtosynthError, match="unknown clip spec"):
        load_clip("nonsense")
    with pytest.raises(ProtosynthError, match="no open_clip_config.json"):
        load_clip(f"small:{tmp_path}")
    with pytest.raises(ProtosynthError, match="unknown open_clip architecture"):
        load_clip("Not-A-Model:openai")
    with pytest.raises(ProtosynthError, match="unknown decoder spec"):
        open_decoder("nonsense")


@pytest.mark.parametrize("coords", [False, True])
def test_decoder_save_load_round_trip(tmp_path, coords):
    pipe = build_pipeline(embed_dim=16, quick=True, coords=coords)
    pipe.save_pretrained(str(tmp_path / "dec"))
    loaded = open_decoder(str(tmp_path / "dec"))
    assert isinstance(loaded, Decoder) and loaded.kind == "small" and loaded.embedding_dim == 16
    again = loaded.pipe
    assert isinstance(again, SmallUnCLIPPipeline) and again.embedding_dim == 16 and again.image_size == 32
    assert again.patch == 2 and again.coord_channels == (2 if coords else 0)
    emb = torch.randn(3, 16)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = pipe(emb, num_inference_steps=3, generator=gens(), output_type="np")
    b = again(emb, num_inference_steps=3, generator=gens(), output_type="np")
    assert a.shape == (3, 32, 32, 3) and (a == b).all()


def test_small_decoder_folder_with_bad_conditioning_is_one_clear_error(tmp_path):
    build_pipeline(embed_dim=16, quick=True).save_pretrained(str(tmp_path / "dec"))
    (tmp_path / "dec" / "conditioning.json").write_text("{not json")
    with pytest.raises(ProtosynthError, match="conditioning.json is not valid JSON"):
        open_decoder(str(tmp_path / "dec"))


def test_a_built_pipeline_becomes_a_decoder_with_the_small_defaults():
    """One constructor for an in-memory small pipeline (training, tests): nothing is patched onto
    the pipeline, and a folder's measured settings go on top of the kind's defaults."""
    pipe = build_pipeline(embed_dim=8, quick=True)
    dec = Decoder.from_pipeline(pipe, clip_space="small-clip:x", settings={"guidance_scale": 1.5})
    assert (dec.pipe, dec.kind, dec.embedding_dim, dec.clip_space) == (pipe, "small", 8, "small-clip:x")
    assert dec.defaults == {**RENDER_DEFAULTS["small"], "guidance_scale": 1.5}
    assert not hasattr(pipe, "render_settings") and not hasattr(pipe, "clip_space")
    with pytest.raises(ProtosynthError, match="sets 'typo', not a render setting"):
        Decoder.from_pipeline(pipe, settings={"typo": 1})


def test_render_images_takes_a_resolved_config_only():
    """Settings are resolved once (resolve_render); an unresolved config is a programming error."""
    dec = Decoder.from_pipeline(build_pipeline(embed_dim=8, quick=True))
    with pytest.raises(ValueError, match="resolve_render.*steps, guidance_scale"):
        render_images(dec, torch.randn(2, 8), RenderConfig(batch_size=2))
    cfg = resolve_render(RenderConfig(steps=2, batch_size=2, clip_guidance=0.0), dec)
    assert (cfg.negative_prompt, cfg.size, cfg.super_res_steps) == (None, None, None)  # none left to fill
    assert len(render_images(dec, torch.randn(2, 8), cfg)) == 2


def test_decoder_images_do_not_depend_on_batching():
    pipe = build_pipeline(embed_dim=8, quick=True)
    emb = torch.randn(4, 8)
    all4 = pipe(
        emb, num_inference_steps=3, generator=[torch.Generator().manual_seed(i) for i in range(4)], output_type="pt"
    )
    last = pipe(emb[3:], num_inference_steps=3, generator=[torch.Generator().manual_seed(3)], output_type="pt")
    assert torch.allclose(all4[3], last[0], atol=1e-5)


def test_coordinate_channels_reach_the_unet():
    """The position channels are real inputs: silencing their input weights changes the output."""
    pipe = build_pipeline(embed_dim=8, quick=True, coords=True)
    x, emb = torch.randn(2, 3, 32, 32), torch.randn(2, 8)
    labels, cond = pipe.condition(emb, torch.zeros(2, dtype=torch.long), torch.zeros(2, 8))
    with torch.no_grad():
        before = pipe.predict(x, 500, labels, cond)
        pipe.unet.conv_in.weight[:, -2:] = 0.0
        after = pipe.predict(x, 500, labels, cond)
    assert before.shape == x.shape and not torch.allclose(before, after)


def test_decoder_rejects_wrong_embedding_dim():
    pipe = build_pipeline(embed_dim=8, quick=True)
    with pytest.raises(ProtosynthError, match="dimension 8"):
        pipe(torch.randn(2, 9), num_inference_steps=2)


def test_img2img_strength_keeps_layout_closer_than_from_noise():
    pipe = build_pipeline(embed_dim=8, quick=True)
    init = torch.rand(2, 3, 32, 32) * 2 - 1
    emb = torch.randn(2, 8)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    weak = pipe(emb, num_inference_steps=10, generator=gens(), image=init, strength=0.1, output_type="pt")
    full = pipe(emb, num_inference_steps=10, generator=gens(), output_type="pt")
    target = (init + 1) / 2
    assert (weak - target).abs().mean() < (full - target).abs().mean()


def test_clip_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    corpus, test = load_corpus("shapes,n=64"), load_corpus("shapes:test,n=16")
    cfg = ClipTrainConfig(arch="ps-tiny-clip", steps=6, batch_size=16, checkpoint_every=3, warmup=2)
    train_clip(corpus, test, tmp_path / "straight", cfg)

    real_save, calls = train_clip_mod.save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        calls.append(path)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(train_clip_mod, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_clip(corpus, test, tmp_path / "resumed", cfg)
    monkeypatch.setattr(train_clip_mod, "save_atomic", real_save)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    train_clip(corpus, test, tmp_path / "resumed", cfg)
    a = (tmp_path / "straight" / "open_clip_model.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "open_clip_model.safetensors").read_bytes()
    assert a == b


def test_models_train_quick_on_a_jsonl_corpus_via_cli(jsonl_corpus, tmp_path):
    """``protosynth models train --quick`` on a JSONL corpus: a held-out slice for metrics, and the
    result loads through ``small:DIR`` for both models."""
    out = tmp_path / "models"
    result = CliRunner().invoke(
        app,
        [
            "models",
            "train",
            "--corpus",
            str(jsonl_corpus),
            "--out",
            str(out),
            "--quick",
            "--clip-steps",
            "5",
            "--decoder-steps",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"clip", "decoder"} and metrics["decoder"]["steps"] == 3
    prov = json.loads((out / "provenance.json").read_text())["runs"][-1]
    assert prov["command"].startswith("protosynth") and prov["test_corpus"] == str(jsonl_corpus)
    assert open_decoder(f"small:{out}").embedding_dim == load_clip(f"small:{out}").embed_dim


def test_decoder_training_resumes_to_identical_weights(quick_models, tmp_path, monkeypatch):
    corpus, test = load_corpus("shapes,n=32"), load_corpus("shapes:test,n=8")
    cfg = td.DecoderTrainConfig.preset(True, steps=4, checkpoint_minutes=0.0, eval_images=8, eval_steps=2)
    clip_dir = quick_models / "clip"
    td.train_decoder(corpus, test, clip_dir, tmp_path / "straight", cfg)

    real_save = td.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(td, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        td.train_decoder(corpus, test, clip_dir, tmp_path / "resumed", cfg)
    monkeypatch.setattr(td, "save_atomic", real_save)
    assert not (tmp_path / "resumed").exists()  # nothing complete-looking before the end
    assert torch.load(tmp_path / "resumed.ckpt" / "checkpoint.pt", weights_only=False)["step"] == 1
    td.train_decoder(corpus, test, clip_dir, tmp_path / "resumed", cfg)
    a = (tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_decoder_training_can_start_from_a_saved_decoder(quick_models, tmp_path):
    """--decoder-init-from: with a zero learning rate the result is exactly the starting decoder."""
    corpus, test = load_corpus("shapes,n=32"), load_corpus("shapes:test,n=8")
    cfg = td.DecoderTrainConfig.preset(
        True, steps=2, lr=0.0, eval_images=8, eval_steps=2, init_from=f"small:{quick_models}"
    )
    td.train_decoder(corpus, test, quick_models / "clip", tmp_path / "cont", cfg)
    name = "unet/diffusion_pytorch_model.safetensors"
    got, want = load_file(str(tmp_path / "cont" / name)), load_file(str(quick_models / "decoder" / name))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    wrong = td.DecoderTrainConfig.preset(False, steps=1, init_from=f"small:{quick_models}")
    with pytest.raises(ProtosynthError, match="architecture differs"):
        td.train_decoder(corpus, test, quick_models / "clip", tmp_path / "wrong", wrong)


def test_decoder_init_from_widens_to_coordinate_channels(quick_models, tmp_path):
    """--decoder-init-from a decoder without position channels into one with them (--decoder-coords):
    the new inputs start at zero weight, so before training it renders exactly what it started from."""
    corpus, test = load_corpus("shapes,n=32"), load_corpus("shapes:test,n=8")
    cfg = td.DecoderTrainConfig.preset(
        True, steps=1, lr=0.0, eval_images=8, eval_steps=2, coords=True, init_from=f"small:{quick_models}"
    )
    td.train_decoder(corpus, test, quick_models / "clip", tmp_path / "wide", cfg)
    start, wide = open_decoder(f"small:{quick_models}").pipe, open_decoder(str(tmp_path / "wide")).pipe
    assert (start.coord_channels, wide.coord_channels) == (0, 2)
    assert torch.count_nonzero(wide.unet.conv_in.weight[:, -2:]) == 0
    emb = torch.randn(2, start.embedding_dim)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    assert torch.allclose(
        start(emb, num_inference_steps=3, generator=gens(), output_type="pt"),
        wide(emb, num_inference_steps=3, generator=gens(), output_type="pt"),
        atol=1e-5,
    )


def test_decoder_lr_schedules_warm_up_then_hold_or_decay():
    """--decoder-lr-schedule: both warm up linearly; constant then holds the base lr, cosine falls
    to half of it midway and to zero at the last step."""
    const = DecoderTrainConfig(steps=1200, lr=1e-3, warmup=200)
    cos = DecoderTrainConfig(steps=1200, lr=1e-3, warmup=200, lr_schedule="cosine")
    for cfg in (const, cos):
        assert decoder_lr(cfg, 0) == pytest.approx(1e-3 / 200) and decoder_lr(cfg, 199) == pytest.approx(1e-3)
    assert decoder_lr(const, 700) == decoder_lr(const, 1199) == pytest.approx(1e-3)
    assert decoder_lr(cos, 700) == pytest.approx(5e-4)
    assert decoder_lr(cos, 1200) == pytest.approx(0.0, abs=1e-12)
    assert decoder_lr(cos, 900) < decoder_lr(cos, 500) < 1e-3
    with pytest.raises(ProtosynthError, match=r"^decoder\.lr_schedule 'linear'"):  # never a silent constant
        DecoderTrainConfig(lr_schedule="linear")
