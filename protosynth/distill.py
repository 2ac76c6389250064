"""The main job: corpus -> embeddings -> prototypes -> renders -> distilled set (PDS, training-free).

``distill(DistillConfig(...))`` runs the four stages, each a module of its own, and writes the set
with its manifest (every setting, per-stage seconds, peak memory, render fidelity, file hashes).
``distill_budgets(cfg, [100, 200, 500])`` writes one set per budget from one load and one
embedding pass. ``cfg.embed.fp16`` (``--fp16``) reads the float16 store that ``protosynth embed
--fp16`` writes under the same cache key, instead of embedding the corpus again in float32.

The CLIP and the decoder come as a pair: a decoder declares the CLIP space it was trained on, and
``clip=None`` takes the CLIP it names (``sd-unclip-small`` -> ``ViT-L-14-quickgelu:openai``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .corpus import Corpus, load_corpus
from .distilled import check_budget, check_out_dir, manifest_header, write_distilled
from .embed import EmbedConfig, Embeddings, embed_corpus
from .errors import P, ProtosynthError
from .models.clip import ClipEncoder, load_clip
from .models.unclip import Decoder, check_pair, open_decoder
from .prototypes import MODES, PrototypeConfig, build_prototypes, nearest_member_pairs, nearest_rows
from .render import INITS, RenderConfig, fidelity, render_images, resolve_render
from .corpora.spec import corpus_name
from .runinfo import check_device, peak_rss_mb, versions

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    budget: int = 500
    corpus: str = "shapes"
    clip: str | None = None  # None: the CLIP the decoder was trained on
    decoder: str = "default"
    clip_arch: str | None = None  # open_clip architecture of a checkpoint file given as ``clip``
    clip_space: str | None = None  # declared space of such a file (e.g. ViT-L-14:openai)
    dtype: str = "auto"  # decoder weights: float16 on CUDA for the published pipelines
    mode: str = "matched"
    seed: int = 0
    out: Path | None = None
    force: bool = False
    device: str = "cpu"
    render: RenderConfig = field(default_factory=RenderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)  # fp16: read (or write) the float16 store
    drop_fraction: float = 0.2
    kmeans_iters: int = 25
    image_root: Path | None = None  # folder of a .json/.csv corpus's image paths
    skip_bad: bool = False  # drop (and count) unreadable images instead of stopping


def set_name(cfg: DistillConfig) -> str:
    return f"{corpus_name(cfg.corpus)}-{cfg.mode}-b{cfg.budget}-s{cfg.seed}"


def default_out(cfg: DistillConfig) -> Path:
    return Path("distilled") / set_name(cfg)


def validate(cfg: DistillConfig) -> Path:
    """Every check that needs no model or data, before any work starts; returns the out dir."""
    if cfg.budget < 1:
        raise ProtosynthError(f"{P.budget} must be at least 1, got {cfg.budget}")
    if cfg.mode not in MODES:
        raise ProtosynthError(f"unknown {P.mode} {cfg.mode!r}: use one of {', '.join(MODES)}")
    if cfg.render.init not in INITS:
        raise ProtosynthError(f"unknown {P.render.init} {cfg.render.init!r}: use {' or '.join(INITS)}")
    r = cfg.render
    if not 0.0 < r.strength <= 1.0:
        raise ProtosynthError(f"{P.render.strength} must be in (0, 1], got {r.strength}")
    for option, value, low, high in ((P.render.steps, r.steps, 1, 1000), (P.render.noise_level, r.noise_level, 0, 999),
                                     (P.render.clip_guidance, r.clip_guidance, 0, 1), (P.render.size, r.size, 8, 4096),
                                     (P.render.super_res_steps, r.super_res_steps, 1, 1000)):
        if value is not None and not low <= value <= high:
            raise ProtosynthError(f"{option} must be between {low} and {high}, got {value}")
    if r.batch_size is not None and r.batch_size < 1:
        raise ProtosynthError(f"{P.render.batch_size} must be at least 1, got {r.batch_size}")
    if r.guidance_scale is not None and r.guidance_scale < 0:
        raise ProtosynthError(f"{P.render.guidance_scale} must not be negative, got {r.guidance_scale}")
    check_device(cfg.device)
    out = cfg.out or default_out(cfg)
    check_out_dir(out, cfg.force)
    return out


@dataclass
class Loaded:
    """What every budget of one run shares: the corpus, the model pair, the render settings resolved
    for the decoder (each budget sets its seed) and the embeddings."""

    corpus: Corpus
    clip: ClipEncoder
    decoder: Decoder
    render: RenderConfig
    emb: Embeddings
    seconds: dict


def load_stages(cfg: DistillConfig, budgets: list[int]) -> Loaded:
    """Load the corpus and the CLIP/decoder pair (checked to share an embedding space), and embed.
    Every check on budgets and render settings happens before the embedding work."""
    t = time.time()
    decoder = open_decoder(cfg.decoder, cfg.device, cfg.dtype)  # before --skip-bad's pass over every image
    render = resolve_render(cfg.render, decoder)  # the one resolution; a setting the decoder cannot honour fails here
    corpus = load_corpus(cfg.corpus, image_root=cfg.image_root, skip_bad=cfg.skip_bad)
    for budget in budgets:
        check_budget(budget, corpus)
    clip_spec = cfg.clip or decoder.default_clip or "default"
    clip = load_clip(clip_spec, cfg.device, arch=cfg.clip_arch, space=cfg.clip_space)
    check_pair(decoder, clip_spec, clip.space, clip.embed_dim)
    seconds = {"load": round(time.time() - t, 2)}
    t = time.time()
    emb = embed_corpus(corpus, clip, cfg.embed)
    seconds["embed"] = round(time.time() - t, 2)
    return Loaded(corpus, clip, decoder, render, emb, seconds)


def distill(cfg: DistillConfig) -> Path:
    """Run the whole pipeline and write the set; returns its folder."""
    return distill_budgets(cfg, [cfg.budget])[0]


def distill_budgets(cfg: DistillConfig, budgets: list[int]) -> list[Path]:
    """One set per budget from a single load and embedding pass. With several budgets, ``cfg.out``
    is a parent folder holding one set folder per budget."""
    if not budgets or len(set(budgets)) != len(budgets):
        raise ProtosynthError(f"{P.budgets} needs distinct values, got {','.join(map(str, budgets))}")
    cfgs = [replace(cfg, budget=b, out=(cfg.out / set_name(replace(cfg, budget=b)))
                    if cfg.out is not None and len(budgets) > 1 else cfg.out) for b in budgets]
    outs = [validate(c) for c in cfgs]
    torch.manual_seed(cfg.seed)
    loaded = load_stages(cfg, budgets)
    return [_write_budget(c, out, loaded, budgets) for c, out in zip(cfgs, outs)]


def _write_budget(cfg: DistillConfig, out: Path, loaded: Loaded, budgets: list[int]) -> Path:
    corpus, clip, decoder, emb = loaded.corpus, loaded.clip, loaded.decoder, loaded.emb
    seconds = dict(loaded.seconds)
    t = time.time()
    pcfg = PrototypeConfig(budget=cfg.budget, mode=cfg.mode, drop_fraction=cfg.drop_fraction,
                           niter=cfg.kmeans_iters, seed=cfg.seed)
    # row sources, memory-mapped from the store: the corpus need not fit in RAM
    protos = build_prototypes(emb.image_rows, emb.text_rows, pcfg)
    caption_idx = nearest_rows(protos.text, emb.text_rows)
    seconds["prototypes"] = round(time.time() - t, 2)

    t = time.time()
    init_images = None
    if cfg.render.init == "nearest":
        best = nearest_member_pairs(protos, emb.image_rows)
        init_images = [corpus.load_image(int(corpus.pair_image[p])) for p in best]
    rcfg = replace(loaded.render, seed=cfg.seed)
    prompts = [corpus.pair_caption[int(i)] for i in caption_idx] if decoder.uses_prompts else None
    renders = render_images(decoder, torch.from_numpy(protos.image_raw), rcfg, init_images, guide=clip,
                            prompts=prompts)
    seconds["render"] = round(time.time() - t, 2)

    t = time.time()
    fid = fidelity(clip, renders, protos.image)
    seconds["fidelity"] = round(time.time() - t, 2)

    pairs = [
        {"index": i, "image": f"images/{i:06d}.png", "caption": corpus.pair_caption[int(caption_idx[i])],
         "caption_pair": int(caption_idx[i]), "members": [int(m) for m in protos.members[i]]}
        for i in range(cfg.budget)
    ]
    tensors = {
        "image_raw": torch.from_numpy(protos.image_raw), "image_normalised": torch.from_numpy(protos.image),
        "text_raw": torch.from_numpy(protos.text_raw), "text_normalised": torch.from_numpy(protos.text),
    }
    manifest = {
        **manifest_header("pds", cfg.budget, cfg.mode, cfg.seed, corpus, clip),
        "decoder": {"spec": decoder.spec, "kind": decoder.kind, "class": type(decoder.pipe).__name__,
                    "conditioning_dim": decoder.embedding_dim, "clip_space": decoder.clip_space,
                    "prompts": "nearest real caption" if prompts is not None else None},
        "settings": _jsonable(asdict(replace(cfg, render=rcfg, clip=clip.spec))), "prototype_stats": protos.stats,
        "embeddings_from_cache": emb.from_cache, "embeddings_dtype": "float16" if cfg.embed.fp16 else "float32",
        "render_fidelity": fid, "versions": versions(),
        "budgets_in_run": budgets,
    }
    manifest["seconds"] = seconds  # write_distilled adds the "write" entry
    manifest["peak_memory_mb"] = peak_rss_mb()
    write_distilled(out, renders, pairs, tensors, manifest, text_space=clip.space, force=cfg.force)
    log.info("wrote %s", out)
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
