"""The real-model paths, proven on tiny random-initialised models of the real classes: open_clip
checkpoints through open_clip's factory, ``StableUnCLIPImg2ImgPipeline`` and Karlo's
``UnCLIPImageVariationPipeline`` saved with ``save_pretrained`` and loaded back by folder, the
CLIP/decoder space contract, and the offline errors for published weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_pipelines import (
    TEST_CLIP_ARCH,
    TEST_CLIP_CONFIG,
    register_test_clip,
    save_random_clip,
    tiny_karlo,
    tiny_stable_unclip,
)
from typer.testing import CliRunner

from protosynth import distill as distill_mod
from protosynth.choose import distill_on_val
from protosynth.cli.main import app
from protosynth.configs import DEFAULT_METHOD, TextChoiceConfig
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill, distill_budgets
from protosynth.embed import cache_key
from protosynth.errors import ProtosynthError
from protosynth.models.clip import _quick_gelu, load_clip
from protosynth.models.decoders import PUBLISHED, Decoder, _torch_dtype, check_pair, open_decoder
from protosynth.models.small_unclip import write_conditioning
from protosynth.render import RenderConfig, render_images, resolve_render

CORPUS = "shapes,n=30"


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    """A random test-architecture CLIP checkpoint and the two tiny published-class pipelines
    conditioned on its 32-d embeddings, saved as folders that declare its space."""
    root = tmp_path_factory.mktemp("real")
    clip_file = save_random_clip(root / "clip.safetensors")
    space = load_clip(str(clip_file), arch=TEST_CLIP_ARCH).space
    folders = {}
    for name, build in (("stable", tiny_stable_unclip), ("karlo", tiny_karlo)):
        pipe = build(32, root / f"{name}_parts")
        pipe.save_pretrained(str(root / name))
        write_conditioning(root / name, space, 32)
        folders[name] = root / name
    return {"clip": clip_file, "space": space, **folders}


def cfg_for(world, decoder: str, out, **render) -> DistillConfig:
    return DistillConfig(
        method="pds",
        budget=4,
        corpus=CORPUS,
        clip=str(world["clip"]),
        clip_arch=TEST_CLIP_ARCH,
        decoder=str(world[decoder]),
        out=out,
        render=RenderConfig(steps=2, batch_size=2, **render),
    )


def test_clip_checkpoint_file_goes_through_open_clip_factory(tmp_path):
    register_test_clip(tmp_path / "configs")
    torch.manual_seed(3)
    model = open_clip.create_model(TEST_CLIP_ARCH).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    enc = load_clip(str(tmp_path / "w.safetensors"), arch=TEST_CLIP_ARCH)
    texts = ["a red circle", "a small blue square on the left"]
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(TEST_CLIP_ARCH)(texts))
    assert torch.allclose(enc.encode_texts(texts), want, atol=1e-6)
    assert enc.embed_dim == 32 and enc.space.startswith(f"{TEST_CLIP_ARCH}:file-")
    declared = load_clip(str(tmp_path / "w.safetensors"), arch=TEST_CLIP_ARCH, space="ViT-L-14:openai")
    assert declared.space == "ViT-L-14:openai"
    with pytest.raises(ProtosynthError, match="needs clip_arch"):
        load_clip(str(tmp_path / "w.safetensors"))
    with pytest.raises(ProtosynthError, match="^clip_arch .* needs clip to be a checkpoint file"):
        load_clip("ViT-B-32:openai", arch=TEST_CLIP_ARCH)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ProtosynthError, match="cannot load it as"):
        load_clip(str(tmp_path / "bad.safetensors"), arch=TEST_CLIP_ARCH)


def test_published_weights_missing_offline_are_one_clear_error():
    with pytest.raises(ProtosynthError, match=r"ViT-B-32-quickgelu weights 'openai' are not in the local cache"):
        load_clip("ViT-B-32-quickgelu:openai")
    with pytest.raises(ProtosynthError, match="no pretrained tag 'nonsense'.*openai"):
        load_clip("ViT-B-32-quickgelu:nonsense")
    with pytest.raises(ProtosynthError, match="stabilityai/stable-diffusion-2-1-unclip-small are not in the local"):
        open_decoder("sd-unclip-small")


def test_published_decoders_declare_their_clip_and_refuse_other_spaces():
    assert {n: (p.clip, p.dim) for n, p in PUBLISHED.items()} == {
        "sd-unclip-small": ("ViT-L-14-quickgelu:openai", 768),
        "sd-unclip-h": ("ViT-H-14:laion2b_s32b_b79k", 1024),
        "karlo": ("ViT-L-14-quickgelu:openai", 768),
    }
    dec = Decoder(None, "stable-unclip", "sd-unclip-small", 768, "ViT-L-14:openai", "ViT-L-14-quickgelu:openai")
    check_pair(dec, "ViT-L-14-quickgelu:openai", "ViT-L-14:openai", 768)  # the quickgelu variant shares the space
    with pytest.raises(
        ProtosynthError,
        match="expects embeddings of CLIP space ViT-L-14:openai.*"
        r"pass clip=ViT-L-14-quickgelu:openai, or leave clip out",
    ):
        check_pair(dec, "ViT-H-14:laion2b_s32b_b79k", "ViT-H-14:laion2b_s32b_b79k", 1024)


def test_stable_unclip_folder_distill_uses_pds_settings_and_prompts(real_world, tmp_path, monkeypatch):
    prompts = []  # what the pipeline is called with, in order (the real call still runs)
    draw = Decoder.draw
    monkeypatch.setattr(Decoder, "draw", lambda self, *a, **k: prompts.extend(k["prompts"]) or draw(self, *a, **k))
    out = distill(cfg_for(real_world, "stable", tmp_path / "set", size=40))
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert prompts == [p["caption"] for p in pairs] and len(set(prompts)) > 1  # each image's nearest real caption
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoder"]["class"] == "StableUnCLIPImg2ImgPipeline"
    assert manifest["decoder"]["prompts"] == "nearest real caption"
    r = manifest["settings"]["render"]
    assert (r["guidance_scale"], r["noise_level"], r["negative_prompt"], r["clip_guidance"]) == (
        5.0,
        10,
        "text, watermark",
        0.0,
    )
    assert manifest["clip"]["space"] == real_world["space"]
    with Image.open(out / "images" / "000000.png") as im:
        assert im.size == (40, 40)


def test_a_published_class_folder_takes_its_render_defaults_file(real_world, tmp_path):
    folder = shutil.copytree(real_world["stable"], tmp_path / "stable")
    (folder / "render_defaults.json").write_text(json.dumps({"settings": {"guidance_scale": 7.0, "steps": 30}}))
    d = open_decoder(str(folder)).defaults
    assert (d["guidance_scale"], d["steps"], d["noise_level"]) == (7.0, 30, 10)  # the rest: the PDS settings
    for settings, message in (
        ({"typo": 1}, "sets 'typo', not a render setting"),
        ({"clip_guidance": 0.02}, "sets clip_guidance, but CLIP-guided sampling is not supported"),
    ):
        (folder / "render_defaults.json").write_text(json.dumps({"settings": settings}))
        with pytest.raises(ProtosynthError, match=f"render_defaults.json {message}"):
            open_decoder(str(folder))


def test_published_kinds_default_to_their_paper_settings_and_small_gpu_batches(real_world):
    """Left unset, Stable unCLIP renders with PDS's settings (100 steps, guidance 5, noise level 10,
    negative prompt "text, watermark", 224 px) and Karlo with its pipeline's own, both 4 images per
    call (their UNets at 768 / 256 px with classifier-free guidance); the small decoder keeps 100.
    Stable unCLIP's VAE decodes one image at a time."""
    stable, karlo = open_decoder(str(real_world["stable"])), open_decoder(str(real_world["karlo"]))
    pds = dict(
        steps=100,
        guidance_scale=5.0,
        noise_level=10,
        negative_prompt="text, watermark",
        size=224,
        clip_guidance=0.0,
        batch_size=4,
    )
    own = dict(steps=25, guidance_scale=8.0, super_res_steps=7, size=224, batch_size=4)
    for dec, want in ((stable, pds), (karlo, own)):
        resolved = resolve_render(RenderConfig(), dec)
        assert {k: getattr(resolved, k) for k in want} == want
    assert resolve_render(RenderConfig(batch_size=16), stable).batch_size == 16
    assert resolve_render(RenderConfig(), open_decoder("default")).batch_size == 100
    assert stable.pipe.vae.use_slicing
    embeds = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    cfg = resolve_render(RenderConfig(steps=2, size=32), stable)
    sliced = render_images(stable, embeds, cfg, prompts=["a red circle"] * 3)
    stable.pipe.vae.disable_slicing()
    whole = render_images(stable, embeds, cfg, prompts=["a red circle"] * 3)
    assert [np.asarray(a).tolist() for a in sliced] == [np.asarray(b).tolist() for b in whole]


def test_decoder_dtype_is_half_on_cuda_only_by_default():
    assert _torch_dtype("auto", torch.device("cuda")) is torch.float16  # no GPU needed to pick it
    assert _torch_dtype("auto", torch.device("cpu")) is torch.float32
    assert _torch_dtype("bfloat16", torch.device("cuda")) is torch.bfloat16
    # the small decoder runs in float32 only: auto must not pick float16 for it on CUDA
    assert _torch_dtype("auto", torch.device("cuda"), "small") is torch.float32
    assert _torch_dtype("auto", torch.device("cuda"), "stable-unclip") is torch.float16
    with pytest.raises(ProtosynthError, match="unknown dtype 'half'"):
        _torch_dtype("half", torch.device("cpu"))


def test_karlo_without_its_text_projection_is_one_clear_error(real_world, monkeypatch):
    """A diffusers that dropped deprecated unCLIP (neither module path imports) gets the guard's
    message, not an import traceback."""
    for module in ("diffusers.pipelines.deprecated.unclip.text_proj", "diffusers.pipelines.unclip.text_proj"):
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: importing it raises ImportError
    with pytest.raises(
        ProtosynthError, match="^decoder karlo: this diffusers release no longer ships UnCLIPTextProjModel"
    ):
        open_decoder(str(real_world["karlo"]))


def test_stable_unclip_prompts_reach_the_unet_and_seeds_do_not_depend_on_batching(real_world):
    dec = open_decoder(str(real_world["stable"]))
    embeds = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    cfg = resolve_render(RenderConfig(steps=2, batch_size=3), dec)
    prompts = ["a red circle", "a blue square", "two green triangles"]
    together = render_images(dec, embeds, cfg, prompts=prompts)
    one_by_one = render_images(dec, embeds, replace(cfg, batch_size=1), prompts=prompts)
    assert [np.asarray(a).tolist() for a in together] == [np.asarray(b).tolist() for b in one_by_one]
    other = render_images(dec, embeds, cfg, prompts=["a yellow star"] * 3)
    assert not np.array_equal(np.asarray(together[0]), np.asarray(other[0]))


def test_karlo_folder_distill(real_world, tmp_path):
    out = distill(cfg_for(real_world, "karlo", tmp_path / "set", super_res_steps=2))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoder"]["class"] == "UnCLIPImageVariationPipeline" and manifest["decoder"]["prompts"] is None
    r = manifest["settings"]["render"]
    assert (r["guidance_scale"], r["super_res_steps"], r["size"]) == (8.0, 2, 224)
    with Image.open(out / "images" / "000003.png") as im:
        assert im.size == (224, 224)


@pytest.mark.parametrize(
    "decoder,setting,message",
    [
        ("karlo", {"noise_level": 5}, "^noise_level is not supported by decoder "),
        ("karlo", {"negative_prompt": "blurry"}, "^negative_prompt is not supported"),
        ("stable", {"clip_guidance": 0.02}, "CLIP-guided sampling is not supported"),
        ("stable", {"init": "nearest"}, "^init=nearest is not supported"),
    ],
)
def test_settings_a_decoder_cannot_honour_are_errors(real_world, tmp_path, decoder, setting, message):
    cfg = cfg_for(real_world, decoder, tmp_path / "set")
    cfg = replace(cfg, render=replace(cfg.render, **setting))
    with pytest.raises(ProtosynthError, match=message):
        distill(cfg)
    assert not (tmp_path / "set").exists()


def test_space_and_dimension_mismatch_are_refused(real_world, tmp_path):
    other = save_random_clip(tmp_path / "other.safetensors", seed=1)  # same architecture, other weights
    with pytest.raises(ProtosynthError, match="expects embeddings of CLIP space"):
        distill(replace(cfg_for(real_world, "stable", tmp_path / "a"), clip=str(other)))
    undeclared = tmp_path / "undeclared"
    tiny_stable_unclip(32, tmp_path / "parts").save_pretrained(str(undeclared))
    with pytest.raises(ProtosynthError, match="conditioned on 32-d embeddings but clip default gives 64-d"):
        distill(
            replace(
                cfg_for(real_world, "stable", tmp_path / "b"), clip="default", clip_arch=None, decoder=str(undeclared)
            )
        )


def test_decoder_folder_names_its_default_clip(real_world, tmp_path):
    folder = tmp_path / "paired"
    tiny_stable_unclip(32, tmp_path / "parts").save_pretrained(str(folder))
    write_conditioning(folder, "ViT-B-32:openai", 32, clip="ViT-B-32-quickgelu:openai")
    assert open_decoder(str(folder)).default_clip == "ViT-B-32-quickgelu:openai"
    # leaving --clip out takes the declared CLIP: offline, that is the missing-weights error
    with pytest.raises(ProtosynthError, match="ViT-B-32-quickgelu weights 'openai' are not in the local cache"):
        distill(
            replace(cfg_for(real_world, "stable", tmp_path / "set"), clip=None, clip_arch=None, decoder=str(folder))
        )


def test_several_budgets_share_one_embedding_pass(quick_models, tmp_path, monkeypatch):
    calls, resolved = [], []
    real, real_resolve = distill_mod.embed_corpus, distill_mod.resolve_render
    monkeypatch.setattr(distill_mod, "embed_corpus", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(distill_mod, "resolve_render", lambda *a, **k: resolved.append(1) or real_resolve(*a, **k))
    cfg = DistillConfig(
        method="pds",
        budget=3,
        corpus=CORPUS,
        clip=f"small:{quick_models}",
        decoder=f"small:{quick_models}",
        out=tmp_path / "sets",
        render=RenderConfig(steps=1, guidance_scale=1.0),
    )
    outs = distill_budgets(cfg, [3, 5])
    assert len(calls) == 1
    assert len(resolved) == 1  # render settings too: resolved once, carried to every budget
    assert [o.name for o in outs] == ["shapes_n=30-pds-matched-b3-s0", "shapes_n=30-pds-matched-b5-s0"]
    for out, budget in zip(outs, (3, 5)):
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["budget"] == budget and manifest["budgets_in_run"] == [3, 5]
        assert manifest["settings"]["render"]["batch_size"] == 100 and manifest["settings"]["render"]["seed"] == 0
        assert len((out / "pairs.jsonl").read_text().splitlines()) == budget
    with pytest.raises(ProtosynthError, match="distinct"):
        distill_budgets(cfg, [3, 3])


def test_cli_budget_list_writes_one_set_per_budget(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "distill",
            "--method",
            "pds",
            "--corpus",
            CORPUS,
            "--budget",
            "2,3",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "sets"),
        ],
    )
    assert r.exit_code == 0, r.output
    written = [line.removeprefix("wrote ") for line in r.stdout.splitlines() if line.startswith("wrote ")]
    assert [p.split("/")[-1] for p in written] == ["shapes_n=30-pds-matched-b2-s0", "shapes_n=30-pds-matched-b3-s0"]
    for path, budget in zip(written, (2, 3)):
        assert len((tmp_path / "sets" / path.split("/")[-1] / "pairs.jsonl").read_text().splitlines()) == budget


def _hub_snapshot(cache, repo: str, folder) -> None:
    """Lay ``folder`` out in a Hugging Face hub cache as the snapshot of ``repo`` (what a download
    on a connected machine leaves behind)."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


PUBLISHED_CASES = [
    ("sd-unclip-small", "stable", "ViT-L-14:openai"),
    ("sd-unclip-h", "stable", "ViT-H-14:laion2b_s32b_b79k"),
    ("karlo", "karlo", "ViT-L-14:openai"),
]


@pytest.fixture(scope="module")
def published_runs(real_world, tmp_path_factory) -> Path:
    """One hub cache holding a snapshot for each published decoder, and one child process (the hub
    cache is read from the environment at import) that distills a set with each of them in turn:
    ``ROOT/<name>/set`` and ``ROOT/<name>/error.txt`` (the traceback, empty when it ran). One
    interpreter start-up and import instead of three."""
    root = tmp_path_factory.mktemp("published")
    cache = root / "hub"
    for name, folder, _ in PUBLISHED_CASES:
        _hub_snapshot(cache, PUBLISHED[name].repo, real_world[folder])
    script = f"""
import sys, traceback; sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from tiny_pipelines import register_test_clip
register_test_clip(Path({str(root / "configs")!r}))
from protosynth.distill import DistillConfig, distill
from protosynth.render import RenderConfig
for name, space in {[(name, space) for name, _, space in PUBLISHED_CASES]!r}:
    out = Path({str(root)!r}) / name
    out.mkdir()
    try:
        cfg = DistillConfig(method="pds", budget=3, corpus={CORPUS!r}, clip={str(real_world["clip"])!r},
                            clip_arch={TEST_CLIP_ARCH!r}, clip_space=space, decoder=name, out=out / "set",
                            render=RenderConfig(steps=2, size=32, super_res_steps=2 if name == "karlo" else None))
        print(distill(cfg))
        (out / "error.txt").write_text("")
    except Exception:
        (out / "error.txt").write_text(traceback.format_exc())
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.mark.parametrize("name,folder,space", PUBLISHED_CASES)
def test_published_decoder_loads_from_the_local_hub_cache(published_runs, name, folder, space):
    """Offline, ``--decoder sd-unclip-small`` / ``sd-unclip-h`` / ``karlo`` load whatever the Hugging
    Face cache holds for their repository (here the tiny pipelines), and pair with a CLIP declared to
    be in their space."""
    error = (published_runs / name / "error.txt").read_text()
    assert error == "", error[-2000:]
    out = published_runs / name / "set"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoder"]["spec"] == name and manifest["decoder"]["clip_space"] == space
    assert manifest["clip"]["space"] == space and len(list((out / "images").iterdir())) == 3


@pytest.mark.slow  # a distill process with a tiny hub decoder
def test_published_decoder_without_clip_takes_its_paper_clip(real_world, tmp_path):
    """``--decoder sd-unclip-small`` with no ``--clip`` uses ViT-L-14-quickgelu:openai: with the decoder
    in the hub cache and that CLIP not, the run stops at the CLIP's missing-weights error (exit 2, one line)."""
    cache = tmp_path / "hub"
    _hub_snapshot(cache, PUBLISHED["sd-unclip-small"].repo, real_world["stable"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from protosynth.cli.main import main; main()",
            "distill",
            "--method",
            "pds",
            "--decoder",
            "sd-unclip-small",
            "--corpus",
            CORPUS,
            "--budget",
            "2",
            "--out",
            str(tmp_path / "set"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        "--clip ViT-L-14-quickgelu:openai: the ViT-L-14-quickgelu weights 'openai' are not in the local cache"
        in errors[0]
    )
    assert not (tmp_path / "set").exists()


def test_openai_weights_get_quickgelu_whatever_the_arch_name():
    assert _quick_gelu("ViT-L-14", "ViT-L-14:openai")  # open_clip alone would build GELU and only warn
    assert not _quick_gelu("ViT-L-14-quickgelu", "ViT-L-14:openai")  # already QuickGELU
    assert not _quick_gelu("ViT-H-14", "ViT-H-14:laion2b_s32b_b79k")
    assert not _quick_gelu(TEST_CLIP_ARCH, f"{TEST_CLIP_ARCH}:file-0123456789ab")


def test_embedding_cache_key_follows_a_checkpoints_content(tmp_path):
    corpus = load_corpus(CORPUS)
    path = save_random_clip(tmp_path / "latest.safetensors", seed=0)
    first = load_clip(str(path), arch=TEST_CLIP_ARCH, space="ViT-L-14:openai")
    save_random_clip(path, seed=1)  # the same path, new weights, the same declared space
    second = load_clip(str(path), arch=TEST_CLIP_ARCH, space="ViT-L-14:openai")
    assert first.spec == second.spec and first.space == second.space
    assert cache_key(corpus, first) != cache_key(corpus, second)


def test_decoder_folder_with_bad_json_or_dtype_is_one_clear_error(real_world, tmp_path):
    folder = tmp_path / "dec"
    shutil.copytree(real_world["stable"], folder)
    (folder / "conditioning.json").write_text("[1, 2]")
    with pytest.raises(ProtosynthError, match="conditioning.json must hold a JSON object"):
        open_decoder(str(folder))
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ProtosynthError, match="model_index.json is not valid JSON"):
        open_decoder(str(folder))
    with pytest.raises(ProtosynthError, match="^dtype: the small decoder"):
        open_decoder("default", dtype="float16")


def test_local_dir_clip_takes_a_declared_space(real_world, tmp_path):
    """A ``local-dir:`` copy of OpenAI-space weights declares its space with ``--clip-space`` as a
    checkpoint file does: the same model (QuickGELU forced), the weights' hash in the cache key, and
    it pairs with a decoder of that space. Undeclared it is its own ``small-clip:`` space, refused."""
    folder = tmp_path / "vit-l-copy"
    folder.mkdir()
    shutil.copy(real_world["clip"], folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TEST_CLIP_CONFIG}))
    spec = f"local-dir:{folder}"
    declared = load_clip(spec, space="ViT-L-14:openai")
    as_file = load_clip(str(real_world["clip"]), arch=TEST_CLIP_ARCH, space="ViT-L-14:openai")
    undeclared = load_clip(spec)
    texts = ["a red circle", "a small blue square on the left"]
    assert declared.space == "ViT-L-14:openai" and declared.weights_id == as_file.weights_id
    assert torch.allclose(declared.encode_texts(texts), as_file.encode_texts(texts), atol=1e-6)
    assert not torch.allclose(undeclared.encode_texts(texts), declared.encode_texts(texts), atol=1e-4)  # GELU
    assert undeclared.space.startswith("small-clip:") and undeclared.weights_id == ""
    corpus = load_corpus(CORPUS)
    assert cache_key(corpus, declared) != cache_key(corpus, undeclared)

    decoder = tmp_path / "dec"
    shutil.copytree(real_world["stable"], decoder)
    write_conditioning(decoder, "ViT-L-14:openai", 32)
    base = [
        "distill",
        "--method",
        "pds",
        "--corpus",
        CORPUS,
        "--budget",
        "2",
        "--steps",
        "1",
        "--size",
        "32",
        "--decoder",
        str(decoder),
        "--clip",
        spec,
    ]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "refused")])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]  # after weight-loading bars
    assert r.exit_code == 2 and len(errors) == 1 and not (tmp_path / "refused").exists()
    assert "expects embeddings of CLIP space ViT-L-14:openai" in errors[0] and "gives small-clip:" in errors[0]
    r = CliRunner().invoke(app, [*base, "--clip-space", "ViT-L-14:openai", "--out", str(tmp_path / "set")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["clip"] == {"spec": spec, "space": "ViT-L-14:openai", "dim": 32}
    assert manifest["settings"]["clip_space"] == "ViT-L-14:openai"
    r = CliRunner().invoke(app, ["embed", "--corpus", CORPUS, "--clip", "default", "--clip-space", "ViT-L-14:openai"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: --clip-space only applies to a checkpoint file given with --clip FILE and --clip-arch ARCH or a "
        "local-dir:DIR folder, not --clip default"
    ]


def test_val_choose_render_is_refused_for_a_decoder_that_starts_from_noise(real_world, tmp_path):
    """The render candidates start from the nearest member at two strengths; a published decoder
    cannot, and would render both the same: one line once it is opened, before any embedding."""
    choice = TextChoiceConfig(val="shapes:val,n=20", val_choose=("text", "render"))
    with pytest.raises(ProtosynthError, match=r"^candidate nearest-0.15 starts each render from its nearest member"):
        distill_on_val(replace(cfg_for(real_world, "stable", tmp_path / "set"), method=DEFAULT_METHOD), choice)
    assert list(tmp_path.iterdir()) == []
