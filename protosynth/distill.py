"""The main job: corpus -> embeddings -> prototypes -> renders -> distilled set (PDS, training-free).

``distill(DistillConfig(...))`` runs the four stages, each a module of its own, and writes the set
with its manifest (every setting, per-stage seconds, peak memory, render fidelity, file hashes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .corpus import load_corpus
from .distilled import check_budget, check_out_dir, manifest_header, write_distilled
from .embed import EmbedConfig, embed_corpus
from .errors import ProtosynthError
from .models.clip import load_clip
from .models.decoder import load_decoder
from .prototypes import MODES, PrototypeConfig, build_prototypes, nearest_member_pairs, nearest_rows
from .render import INITS, RenderConfig, fidelity, render_images
from .runinfo import check_device, corpus_name, peak_rss_mb, versions

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    budget: int = 500
    corpus: str = "shapes"
    clip: str = "default"
    decoder: str = "default"
    mode: str = "matched"
    seed: int = 0
    out: Path | None = None
    force: bool = False
    device: str = "cpu"
    render: RenderConfig = field(default_factory=RenderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    drop_fraction: float = 0.2
    kmeans_iters: int = 25


def default_out(cfg: DistillConfig) -> Path:
    return Path("distilled") / f"{corpus_name(cfg.corpus)}-{cfg.mode}-b{cfg.budget}-s{cfg.seed}"


def validate(cfg: DistillConfig) -> Path:
    """Every check that needs no model or data, before any work starts; returns the out dir."""
    if cfg.budget < 1:
        raise ProtosynthError(f"--budget must be at least 1, got {cfg.budget}")
    if cfg.mode not in MODES:
        raise ProtosynthError(f"unknown --mode {cfg.mode!r}: use one of {', '.join(MODES)}")
    if cfg.render.init not in INITS:
        raise ProtosynthError(f"unknown --init {cfg.render.init!r}: use {' or '.join(INITS)}")
    r = cfg.render
    if not 0.0 < r.strength <= 1.0:
        raise ProtosynthError(f"--strength must be in (0, 1], got {r.strength}")
    if not 1 <= r.steps <= 1000:
        raise ProtosynthError(f"--steps must be between 1 and 1000, got {r.steps}")
    if not 0 <= r.noise_level <= 999:
        raise ProtosynthError(f"--noise-level must be between 0 and 999, got {r.noise_level}")
    if r.batch_size < 1:
        raise ProtosynthError(f"--batch-size must be at least 1, got {r.batch_size}")
    if not 0 <= r.clip_guidance <= 1:
        raise ProtosynthError(f"--clip-guidance must be between 0 and 1, got {r.clip_guidance}")
    if r.guidance_scale < 0:
        raise ProtosynthError(f"--guidance must not be negative, got {r.guidance_scale}")
    check_device(cfg.device)
    out = cfg.out or default_out(cfg)
    check_out_dir(out, cfg.force)
    return out


def distill(cfg: DistillConfig) -> Path:
    """Run the whole pipeline and write the set; returns its folder."""
    out = validate(cfg)
    torch.manual_seed(cfg.seed)
    seconds: dict[str, float] = {}
    t = time.time()
    corpus = load_corpus(cfg.corpus)
    check_budget(cfg.budget, corpus)
    clip = load_clip(cfg.clip, cfg.device)
    decoder = load_decoder(cfg.decoder, cfg.device)
    if decoder.embedding_dim != clip.embed_dim:
        raise ProtosynthError(
            f"--decoder {cfg.decoder} is conditioned on {decoder.embedding_dim}-d embeddings but --clip {cfg.clip} "
            f"gives {clip.embed_dim}-d ones"
        )
    if getattr(decoder, "clip_space", None) and decoder.clip_space != clip.space:
        raise ProtosynthError(
            f"--decoder {cfg.decoder} was trained on CLIP space {decoder.clip_space} but --clip {cfg.clip} is "
            f"{clip.space}; pass the CLIP it was trained with"
        )
    seconds["load"] = round(time.time() - t, 2)

    t = time.time()
    emb = embed_corpus(corpus, clip, cfg.embed)
    seconds["embed"] = round(time.time() - t, 2)

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
    rcfg = replace(cfg.render, seed=cfg.seed)
    renders = render_images(decoder, torch.from_numpy(protos.image_raw), rcfg, init_images, guide=clip)
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
        "decoder": {"spec": cfg.decoder, "class": type(decoder).__name__, "conditioning_dim": decoder.embedding_dim},
        "settings": _jsonable(asdict(replace(cfg, render=rcfg))), "prototype_stats": protos.stats,
        "embeddings_from_cache": emb.from_cache, "render_fidelity": fid, "versions": versions(),
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
