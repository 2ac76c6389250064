"""Decoders by spec string: the small unCLIP we train, and the published unCLIP pipelines.

Specs (``--decoder``):
- ``default`` / ``small:DIR``: protosynth's small decoder (``SmallUnCLIPPipeline``);
- ``sd-unclip-small``: ``StableUnCLIPImg2ImgPipeline``, stabilityai/stable-diffusion-2-1-unclip-small,
  conditioned on OpenAI ViT-L/14 image embeddings (768-d), the PDS decoder;
- ``sd-unclip-h``: the same pipeline, stabilityai/stable-diffusion-2-1-unclip, open_clip ViT-H-14
  laion2b embeddings (1024-d);
- ``karlo``: ``UnCLIPImageVariationPipeline``, kakaobrain/karlo-v1-alpha-image-variations (ViT-L/14,
  768-d; deprecated in diffusers, so guarded);
- a folder written by ``save_pretrained`` of any of these three pipeline classes (its
  ``model_index.json`` names the class). A ``conditioning.json`` beside it (``write_conditioning``)
  declares the CLIP space it expects; without one only the embedding dimension can be checked.

Each ``Decoder`` declares the CLIP embedding space and dimension it expects, the CLIP spec to pair
with by default, and its render defaults (the PDS settings for Stable unCLIP). ``draw`` renders one
batch; ``protosynth.render`` owns seeds, batching, resizing and progress.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import StableUnCLIPImg2ImgPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from PIL import Image

from ..configs import INITS
from ..errors import P, ProtosynthError, held_back_logs
from .clip import space_name
from .small_unclip import (
    CONDITIONING_FILE,
    RENDER_DEFAULTS_FILE,
    SmallUnCLIPPipeline,
    decoder_folder,
    load_small_pipeline,
    read_json_object,
    read_render_defaults,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A published unCLIP decoder: where its weights live and which CLIP it was trained on."""

    repo: str
    pipeline: str  # "stable-unclip" or "karlo"
    clip: str  # the open_clip spec of its embedding space
    dim: int


PUBLISHED = {
    "sd-unclip-small": Published(
        "stabilityai/stable-diffusion-2-1-unclip-small", "stable-unclip", "ViT-L-14-quickgelu:openai", 768
    ),
    "sd-unclip-h": Published(
        "stabilityai/stable-diffusion-2-1-unclip", "stable-unclip", "ViT-H-14:laion2b_s32b_b79k", 1024
    ),
    "karlo": Published("kakaobrain/karlo-v1-alpha-image-variations", "karlo", "ViT-L-14-quickgelu:openai", 768),
}
PIPELINE_CLASSES = {
    "SmallUnCLIPPipeline": "small",
    "StableUnCLIPImg2ImgPipeline": "stable-unclip",
    "UnCLIPImageVariationPipeline": "karlo",
}

# Render defaults per decoder kind; a decoder folder's render_defaults.json overrides them
# (``decoder_defaults``). Stable unCLIP: the PDS settings (100 steps, guidance 5,
# noise_level 10, negative prompt "text, watermark", output resized to 224). Karlo has no prompt or
# noise level; its own pipeline defaults (25 decoder + 7 super-resolution steps, guidance 8).
# The small decoder: guidance 3 suits an undertrained one (a trained folder records its own); CLIP guidance
# 0.01, measured best with the shipped decoder (docs/evaluation.md, render fidelity).
# batch_size: images per pipeline call. The published decoders run classifier-free guidance (two UNet
# passes per image) at 768 px (Stable unCLIP) or 256 px plus super-resolution (Karlo), so a batch of
# the small decoder's 100 would not fit a GPU; 4 is a guess (not measured here: no GPU), --batch-size
# overrides it. Each image has its own seeded generator, but a batch's arithmetic depends on its size,
# so another batch size may change an image in its last bits (docs/models.md).
# How a render starts: from noise, or (small decoder) from the nearest real member image noised to ``strength``.
RENDER_DEFAULTS = {
    "small": dict(
        steps=50,
        guidance_scale=3.0,
        noise_level=0,
        negative_prompt=None,
        size=None,
        clip_guidance=0.01,
        super_res_steps=None,
        batch_size=100,
        init="noise",
        strength=0.6,
    ),
    "stable-unclip": dict(
        steps=100,
        guidance_scale=5.0,
        noise_level=10,
        negative_prompt="text, watermark",
        size=224,
        clip_guidance=0.0,
        super_res_steps=None,
        batch_size=4,
        init="noise",
        strength=None,
    ),
    "karlo": dict(
        steps=25,
        guidance_scale=8.0,
        noise_level=None,
        negative_prompt=None,
        size=224,
        clip_guidance=0.0,
        super_res_steps=7,
        batch_size=4,
        init="noise",
        strength=None,
    ),
}
# What a kind cannot do, so an explicit request for it is an error, never silently ignored.
UNSUPPORTED = {
    "stable-unclip": {
        "clip_guidance": "CLIP-guided sampling",
        "init": f"{P.init('nearest')}",
        "super_res_steps": f"{P.super_res_steps}",
    },
    "karlo": {
        "clip_guidance": "CLIP-guided sampling",
        "init": f"{P.init('nearest')}",
        "noise_level": f"{P.noise_level}",
        "negative_prompt": f"{P.negative_prompt}",
    },
    "small": {"negative_prompt": f"{P.negative_prompt}", "super_res_steps": f"{P.super_res_steps}"},
}


def decoder_defaults(kind: str, settings: dict, spec: str) -> dict:
    """The kind's render defaults with a folder's measured ``settings`` on top; a setting the kind
    does not have or cannot honour, or a negative number (zero steps), is an error naming the file."""
    merged = dict(RENDER_DEFAULTS[kind])
    for name, value in settings.items():
        if name not in merged:
            raise ProtosynthError(
                f"{P.decoder} {spec}: {RENDER_DEFAULTS_FILE} sets {name!r}, not a render setting of "
                f"a {kind} decoder ({', '.join(merged)})"
            )
        if name in UNSUPPORTED[kind] and value not in (None, 0, 0.0, "", "noise"):
            raise ProtosynthError(
                f"{P.decoder} {spec}: {RENDER_DEFAULTS_FILE} sets {name}, but "
                f"{UNSUPPORTED[kind][name]} is not supported by a {kind} decoder"
            )
        numeric = name in (
            "steps",
            "guidance_scale",
            "clip_guidance",
            "noise_level",
            "size",
            "super_res_steps",
            "batch_size",
        )
        low = 1 if name in ("steps", "batch_size") else 0
        if (
            numeric
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low)
        ):
            raise ProtosynthError(
                f"{P.decoder} {spec}: {RENDER_DEFAULTS_FILE} sets {name} to {value!r}, not a number of at least {low}"
            )
        if name == "init" and value not in INITS:
            raise ProtosynthError(
                f"{P.decoder} {spec}: {RENDER_DEFAULTS_FILE} sets init to {value!r}, not one of {INITS}"
            )
        if name == "strength" and value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise ProtosynthError(
                f"{P.decoder} {spec}: {RENDER_DEFAULTS_FILE} sets strength to {value!r}, not in (0, 1]"
            )
        merged[name] = value
    return merged


@dataclass
class Decoder:
    """A loaded decoder pipeline and the contract it comes with."""

    pipe: Any
    kind: str  # "small", "stable-unclip" or "karlo"
    spec: str
    embedding_dim: int
    clip_space: str | None  # None: not declared (only the dimension can be checked)
    default_clip: str | None  # the --clip paired with it when none is given
    defaults: dict = field(default_factory=dict)

    @classmethod
    def from_pipeline(
        cls,
        pipe: SmallUnCLIPPipeline,
        *,
        spec: str = "pipeline",
        clip_space: str | None = None,
        default_clip: str | None = None,
        settings: dict | None = None,
    ) -> "Decoder":
        """A small pipeline (loaded from a folder, or freshly built or trained) as a ``Decoder``: its
        render defaults are the small kind's with ``settings`` (a folder's ``render_defaults.json``) on top."""
        return cls(
            pipe,
            "small",
            spec,
            int(pipe.embedding_dim),
            clip_space,
            default_clip,
            decoder_defaults("small", settings or {}, spec),
        )

    @property
    def uses_prompts(self) -> bool:
        return self.kind == "stable-unclip"

    def draw(
        self,
        embeds: torch.Tensor,
        generators: list[torch.Generator],
        *,
        steps: int,
        guidance_scale: float,
        noise_level: int | None = None,
        prompts: list[str] | None = None,
        negative_prompt: str | None = None,
        super_res_steps: int | None = None,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        guidance_model: Callable | None = None,
        guidance_model_scale: float = 0.0,
    ) -> list[Image.Image]:
        """One batch: an image per embedding row, image i drawn with ``generators[i]``."""
        n = len(embeds)
        if self.kind == "small":
            return self.pipe(
                embeds,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level or 0,
                generator=generators,
                image=init,
                strength=strength,
                guidance_model=guidance_model,
                guidance_model_scale=guidance_model_scale,
            )
        dtype = self.pipe.dtype
        embeds = embeds.to(self.pipe.device, dtype)
        if self.kind == "stable-unclip":
            prompts = prompts if prompts is not None else [""] * n
            negative = [negative_prompt] * n if negative_prompt else None
            return self.pipe(
                image_embeds=embeds,
                prompt=list(prompts),
                negative_prompt=negative,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level or 0,
                generator=generators,
                output_type="pil",
            ).images
        super_res = super_res_steps or RENDER_DEFAULTS["karlo"]["super_res_steps"]
        return self.pipe(
            image_embeddings=embeds,
            decoder_num_inference_steps=steps,
            super_res_num_inference_steps=super_res,
            decoder_guidance_scale=guidance_scale,
            generator=generators,
            output_type="pil",
        ).images


KARLO_MISSING = (
    f"{P.decoder} karlo: this diffusers release no longer ships {{what}} (Karlo is deprecated in diffusers); "
    "install a diffusers release that still has it, or use sd-unclip-small"
)


def _pipeline_class(kind: str):
    if kind == "stable-unclip":
        return StableUnCLIPImg2ImgPipeline
    try:  # deprecated in diffusers (no fixes after 0.33.1); still exported by the releases we pin
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from diffusers import UnCLIPImageVariationPipeline  # noqa: PLC0415 (guarded: may be gone from diffusers)
    except ImportError:
        raise ProtosynthError(KARLO_MISSING.format(what="UnCLIPImageVariationPipeline")) from None
    return UnCLIPImageVariationPipeline


def _karlo_text_proj():
    """Karlo's text projection class, where diffusers keeps it: ``pipelines.deprecated.unclip`` since
    unCLIP was deprecated, ``pipelines.unclip`` before."""
    for module in ("diffusers.pipelines.deprecated.unclip.text_proj", "diffusers.pipelines.unclip.text_proj"):
        try:
            return importlib.import_module(module).UnCLIPTextProjModel
        except (ImportError, AttributeError):
            continue
    raise ProtosynthError(KARLO_MISSING.format(what="UnCLIPTextProjModel"))


def _load_karlo(source: str, dtype: torch.dtype):
    """Karlo assembled component by component. diffusers 0.42 cannot ``from_pretrained`` it: its
    ``model_index.json`` names the text projection's library as "unclip" (the published repo) or
    "diffusers" (what ``save_pretrained`` writes now), and neither resolves since the pipeline moved
    to ``diffusers.pipelines.deprecated``. Each component's own ``from_pretrained`` still works."""
    # transformers is imported only for Karlo: the small decoder's distill starts a second faster without it
    from transformers import (  # noqa: PLC0415
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    pipeline_class = _pipeline_class("karlo")  # each of these two fails with one clear line when diffusers lacks it
    classes = {
        "decoder": UNet2DConditionModel,
        "super_res_first": UNet2DModel,
        "super_res_last": UNet2DModel,
        "text_proj": _karlo_text_proj(),
        "text_encoder": CLIPTextModelWithProjection,
        "image_encoder": CLIPVisionModelWithProjection,
        "tokenizer": CLIPTokenizer,
        "feature_extractor": CLIPImageProcessor,
        "decoder_scheduler": UnCLIPScheduler,
        "super_res_scheduler": UnCLIPScheduler,
    }
    parts = {name: cls.from_pretrained(source, subfolder=name) for name, cls in classes.items()}
    return pipeline_class(**parts).to(dtype=dtype)


def _from_pretrained(kind: str, source: str, dtype: torch.dtype):
    if kind == "karlo":
        return _load_karlo(source, dtype)
    return _pipeline_class(kind).from_pretrained(source, torch_dtype=dtype)


def _torch_dtype(dtype: str, device: torch.device, kind: str | None = None) -> torch.dtype:
    """``auto``: float16 for the published pipelines on CUDA, float32 elsewhere and for the small
    decoder (``kind="small"``), which runs in float32 only."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" and kind != "small" else torch.float32
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ProtosynthError(f"unknown {P.dtype} {dtype!r}: use auto, float32, float16 or bfloat16")
    return getattr(torch, dtype)


def _finish(pipe, device: torch.device) -> Any:
    """On ``device``, quiet, and (Stable unCLIP) decoding latents one image at a time: its VAE at 768 px
    would otherwise hold a whole batch's activations at once. The images are the same with and without
    slicing (tests/test_real_models.py, tiny pipeline on the CPU)."""
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "use_slicing"):  # AutoencoderKL; enable_slicing raises on VAEs without it
        vae.enable_slicing()
    return pipe


def _load_published(name: str, device: torch.device, dtype: torch.dtype) -> Decoder:
    pub = PUBLISHED[name]
    _pipeline_class(pub.pipeline)  # fails clearly when this diffusers no longer ships it
    try:
        with warnings.catch_warnings(), held_back_logs():
            warnings.simplefilter("ignore")
            pipe = _from_pretrained(pub.pipeline, pub.repo, dtype)
    except OSError as exc:  # offline, diffusers and huggingface_hub raise OSError subclasses for a missing snapshot
        hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise ProtosynthError(
            f"{P.decoder} {name}: the weights of {pub.repo} are not in the local Hugging Face cache ({hub}) and "
            f"cannot be downloaded here ({type(exc).__name__}); on a connected machine run "
            f"`hf download {pub.repo}`, or pass a folder written by save_pretrained"
        ) from None
    except Exception as exc:  # a corrupt snapshot or a version mismatch: say what it was
        raise ProtosynthError(
            f"{P.decoder} {name}: cannot load {pub.repo} ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    return Decoder(
        _finish(pipe, device),
        pub.pipeline,
        name,
        _conditioning_dim(pub.pipeline, pipe),
        space_name(*pub.clip.split(":")),
        pub.clip,
        dict(RENDER_DEFAULTS[pub.pipeline]),
    )


def _conditioning_dim(kind: str, pipe) -> int:
    """The image-embedding dimension a loaded pipeline is conditioned on, read off its weights."""
    if kind == "stable-unclip":
        return int(pipe.image_normalizer.mean.shape[-1])
    if kind == "karlo":
        return int(pipe.text_proj.embedding_proj.in_features)
    return int(pipe.embedding_dim)


def _load_folder(spec: str, folder: Path, device: torch.device, dtype_name: str) -> Decoder:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ProtosynthError(f"{P.decoder} {spec}: no model_index.json in {folder}")
    class_name = read_json_object(index, spec).get("_class_name")
    kind = PIPELINE_CLASSES.get(class_name)
    if kind is None:
        raise ProtosynthError(
            f"{P.decoder} {spec}: {folder} holds a {class_name}, not one of {', '.join(PIPELINE_CLASSES)}"
        )
    cond = folder / CONDITIONING_FILE
    declared = read_json_object(cond, spec) if cond.is_file() else {}
    dtype = _torch_dtype(dtype_name, device, kind)
    if kind == "small":
        if dtype != torch.float32:
            raise ProtosynthError(f"{P.dtype}: the small decoder ({spec}) runs in float32 only")
        pipe = load_small_pipeline(folder, spec, device)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = _from_pretrained(kind, str(folder), dtype)
            pipe = _finish(pipe, device)
        except ProtosynthError:
            raise
        except Exception as exc:  # a corrupt or incomplete folder
            raise ProtosynthError(
                f"{P.decoder} {spec}: cannot load the {class_name} in {folder} ({exc})".splitlines()[0]
            ) from None
    settings = read_render_defaults(folder, spec)
    default_clip = declared.get("clip")
    if default_clip is None and kind == "small" and spec == "default":
        default_clip = "default"
    if default_clip is None and spec.startswith("small:"):
        default_clip = spec  # the CLIP trained beside it in the same `models train` folder
    if kind == "small":
        return Decoder.from_pipeline(
            pipe, spec=spec, clip_space=declared.get("clip_space"), default_clip=default_clip, settings=settings
        )
    return Decoder(
        pipe,
        kind,
        spec,
        _conditioning_dim(kind, pipe),
        declared.get("clip_space"),
        default_clip,
        decoder_defaults(kind, settings, spec),
    )


def open_decoder(spec: str = "default", device: str | torch.device = "cpu", dtype: str = "auto") -> Decoder:
    """Load the decoder named by ``spec`` (see module docstring). ``dtype="auto"`` is float16 for
    the published pipelines on CUDA and float32 elsewhere; the small decoder is always float32."""
    device = torch.device(device)
    _torch_dtype(dtype, device)  # an unknown dtype is refused before any loading
    if spec in PUBLISHED:
        return _load_published(spec, device, _torch_dtype(dtype, device, PUBLISHED[spec].pipeline))
    folder = decoder_folder(spec)
    if folder is not None:
        return _load_folder(spec, folder, device, dtype)
    raise ProtosynthError(
        f"unknown {P.decoder} spec {spec!r}: use default, small:DIR, {', '.join(PUBLISHED)} or a save_pretrained folder"
    )


def check_pair(decoder: Decoder, clip_spec: str, clip_space: str, clip_dim: int) -> None:
    """Refuse a CLIP whose embeddings the decoder was not trained on (space, else dimension)."""
    if decoder.clip_space is not None and decoder.clip_space != clip_space:
        hint = f" (pass {P.clip(decoder.default_clip)}, or leave {P.clip} out)" if decoder.default_clip else ""
        raise ProtosynthError(
            f"{P.decoder} {decoder.spec} expects embeddings of CLIP space {decoder.clip_space} "
            f"but {P.clip} {clip_spec} gives {clip_space}{hint}"
        )
    if decoder.embedding_dim != clip_dim:
        raise ProtosynthError(
            f"{P.decoder} {decoder.spec} is conditioned on {decoder.embedding_dim}-d embeddings "
            f"but {P.clip} {clip_spec} gives {clip_dim}-d ones"
        )
    if decoder.clip_space is None:
        log.warning(
            "decoder %s declares no CLIP space (no %s); only the dimension (%d) was checked",
            decoder.spec,
            CONDITIONING_FILE,
            clip_dim,
        )
