"""Stage 3, render: one image per prototype image embedding through an unCLIP decoder.

Each image has its own seed (``seed * 1_000_003 + index``), so the batch it is drawn in decides no
random draw; but a batch's arithmetic (matrix products summed in an order the batch's shape decides)
may differ in the last bits, so another ``batch_size`` can move a pixel by a level. The set's
manifest records the batch size (``settings.render.batch_size``) with every other setting.
``init="nearest"`` (small decoder) starts denoising from the member image nearest
to the prototype, noised to ``strength`` (img2img): the member anchors the layout while the
embedding steers content. ``init="composite"`` and ``"tile"`` start the same way from an image
``distill`` builds out of several members (``starts``); here they are just the given
``init_images``. Published decoders take the nearest real caption as their prompt (PDS).

Settings left ``None`` in ``RenderConfig`` take the decoder's defaults (``models.unclip``: the PDS
settings for Stable unCLIP); a setting the decoder cannot honour is an error, never ignored.
``resolve_render`` does both, once per run; ``render_images`` takes the resolved config.

Render fidelity measures adherence: each render is re-embedded by the CLIP and counted a hit when
its own prototype is the nearest (top-1) or among the 5 nearest (top-5) of all prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from .configs import IMAGE_STARTS, RenderConfig  # noqa: F401 (RenderConfig re-exported: its public home)
from .engines.base import Engine, make_engine
from .engines.connect import EngineConfig
from .errors import P, ProtosynthError
from .models.clip import ClipEncoder
from .models.decoders import UNSUPPORTED, Decoder
from .models.small_unclip import to_unit_range
from .util.progress import StepBar


def resolve_render(cfg: RenderConfig, decoder: Decoder) -> RenderConfig:
    """``cfg`` with every ``None`` filled from the decoder's defaults; an explicit setting the
    decoder cannot honour is a ProtosynthError naming the option. Resolve once, then hand the
    result to ``render_images`` (per-run changes such as the seed go in with ``replace``)."""
    for name, what in UNSUPPORTED[decoder.kind].items():
        value = cfg.init if name == "init" else getattr(cfg, name)
        if (name == "init" and value not in (None, "noise")) or (name != "init" and value not in (None, 0, 0.0, "")):
            raise ProtosynthError(f"{what} is not supported by {P.decoder} {decoder.spec} ({decoder.kind})", param=name)
    filled = {f.name: decoder.defaults.get(f.name) for f in fields(cfg) if getattr(cfg, f.name) is None}
    return replace(cfg, **filled)


def _unresolved(cfg: RenderConfig, decoder: Decoder) -> list[str]:
    """The settings still ``None`` that ``resolve_render`` would fill (a setting the decoder has no
    default for, such as a small decoder's negative prompt, stays ``None`` when resolved)."""
    return [name for name, value in decoder.defaults.items() if value is not None and getattr(cfg, name) is None]


# Candidate c of image i is seeded image_seed(seed, i) + c * CANDIDATE_STRIDE: candidate 0 is the image
# a single render draws. torch's CPU generator keeps only a seed's low 32 bits, so the stride is an odd
# number below 2**32 whose multiples (c < 16) stay over a million apart modulo 2**32: no two
# (index, candidate) of a set below a million images share a stream.
CANDIDATE_STRIDE = 2_654_435_761


def image_seed(seed: int, index: int, candidate: int = 0) -> int:
    return seed * 1_000_003 + index + candidate * CANDIDATE_STRIDE


def pixel_embedder(encoder: ClipEncoder):
    """A differentiable CLIP image embedding of decoder images in [-1, 1] (resize + CLIP
    normalisation as tensor ops), for CLIP-guided sampling."""
    visual, size = encoder.model.visual, encoder.input_size
    cfg = getattr(encoder.model, "preprocess_cfg", None) or getattr(visual, "preprocess_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean") or OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std") or OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def embed(x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = (x - mean.to(x.device)) / std.to(x.device)
        return F.normalize(encoder.model.encode_image(x), dim=-1)

    return embed


def render_images(
    decoder: Decoder,
    embeds: torch.Tensor,
    cfg: RenderConfig,
    init_images: list[Image.Image] | None = None,
    guide: ClipEncoder | None = None,
    prompts: list[str] | None = None,
    candidate: int = 0,
    engine: EngineConfig | Engine | None = None,
) -> list[Image.Image]:
    """Render each raw embedding row with ``cfg`` as ``resolve_render(..., decoder)`` returned it.
    ``init_images`` are required when ``cfg.init == 'nearest'``, ``guide`` (the CLIP of the
    embeddings) when CLIP guidance is on; ``prompts`` (one per row) feed decoders that take text
    (Stable unCLIP); ``candidate`` selects the seed stream (best-of-N). ``engine`` (``engines.base``)
    draws the batches: on Ray an actor pool draws the same batches, giving the same images."""
    missing = _unresolved(cfg, decoder)
    if missing:
        raise ValueError(f"render_images needs a RenderConfig from resolve_render; {', '.join(missing)} still None")
    cfg.check()  # its values, named as render_images' own (a caller need not come through distill)
    if cfg.init in IMAGE_STARTS and init_images is None:
        raise ValueError(f"init={cfg.init!r} needs init_images")
    if cfg.clip_guidance > 0 and guide is None:
        raise ValueError("clip_guidance > 0 needs the CLIP (guide=)")
    if prompts is not None and len(prompts) != len(embeds):
        raise ValueError(f"{len(prompts)} prompts for {len(embeds)} embeddings")
    n = len(embeds)
    spans = batch_spans(n, cfg.batch_size)
    job = RenderJob(decoder, embeds, cfg, init_images, guide if cfg.clip_guidance > 0 else None, prompts, candidate)
    out: list[Image.Image] = []
    with StepBar("render", len(spans)) as bar:

        def done(s: int, e: int, images: list[Image.Image]) -> None:
            out.extend(images)
            bar.advance(f"{e}/{n} images")

        make_engine(engine).render_spans(job, spans, done)
    return out


@dataclass
class RenderJob:
    """One ``render_images`` call as an engine receives it (picklable: the Ray engine sends it to
    its actors): ``drawer()`` gives the function that draws a batch ``[s, e)``."""

    decoder: Decoder
    embeds: torch.Tensor
    cfg: RenderConfig
    init_images: list[Image.Image] | None
    guide: ClipEncoder | None  # the CLIP for CLIP-guided sampling; None without it
    prompts: list[str] | None
    candidate: int

    def to(self, device: str) -> None:
        """Move the decoder (and the CLIP) to ``device``: a Ray actor's GPU."""
        self.decoder.pipe.to(device)
        if self.guide is not None:
            self.guide.model.to(device)
            self.guide.device = torch.device(device)

    def drawer(self):
        """``draw(s, e)``: images ``s`` to ``e``, with the CLIP guidance model built once."""
        guidance_model = pixel_embedder(self.guide) if self.cfg.clip_guidance > 0 else None
        return partial(
            render_batch,
            self.decoder,
            self.embeds,
            self.cfg,
            init_images=self.init_images,
            guidance_model=guidance_model,
            prompts=self.prompts,
            candidate=self.candidate,
        )


def batch_spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The renderer's batches, ``[start, end)``: an engine that splits the work hands out whole ones,
    so every image is drawn in the batch it would be drawn in locally."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def render_batch(
    decoder: Decoder,
    embeds: torch.Tensor,
    cfg: RenderConfig,
    s: int,
    e: int,
    init_images: list[Image.Image] | None,
    guidance_model,
    prompts: list[str] | None,
    candidate: int,
) -> list[Image.Image]:
    """Images ``s`` to ``e`` (one batch of ``batch_spans``), each from its own seed."""
    gens = [torch.Generator().manual_seed(image_seed(cfg.seed, i, candidate)) for i in range(s, e)]
    init = None
    if cfg.init in IMAGE_STARTS:
        init = to_unit_range(init_images[s:e], decoder.pipe.image_size)
    images = decoder.draw(
        embeds[s:e],
        gens,
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        noise_level=cfg.noise_level,
        prompts=None if prompts is None else prompts[s:e],
        negative_prompt=cfg.negative_prompt,
        super_res_steps=cfg.super_res_steps,
        init=init,
        strength=cfg.strength if init is not None else 1.0,
        guidance_model=guidance_model,
        guidance_model_scale=cfg.clip_guidance,
    )
    if cfg.size:
        images = [
            im if im.size == (cfg.size, cfg.size) else im.resize((cfg.size, cfg.size), Image.BICUBIC) for im in images
        ]
    return images


@torch.no_grad()
def fidelity(encoder: ClipEncoder, renders: list[Image.Image], targets: torch.Tensor | np.ndarray) -> dict:
    """Top-1/top-5 (%) of each render's own target among all targets, and the mean cosine."""
    return fidelity_scores(F.normalize(encoder.encode_images(renders), dim=-1), targets)


def fidelity_scores(got: torch.Tensor, targets: torch.Tensor | np.ndarray) -> dict:
    """``fidelity`` from the renders' unit embeddings ``got`` (row i renders target i)."""
    want = F.normalize(torch.as_tensor(np.asarray(targets), dtype=torch.float32), dim=-1)
    sims = got @ want.T
    own = sims.diag()
    rank = (sims >= own[:, None]).sum(dim=1) - 1  # ties count against the render
    return {
        "top1": round(float((rank < 1).float().mean() * 100), 2),
        "top5": round(float((rank < 5).float().mean() * 100), 2),
        "mean_cosine": round(float(own.mean()), 4),
        "n": len(got),
    }
