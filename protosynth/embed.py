"""Stage 1, embed: CLIP image and text embeddings of every caption-level pair, cached on disk.

Each image is encoded once and repeated for its captions (PDS embeds caption-level pairs; the image
embedding of a repeated image is the same vector). The cache is keyed by the corpus fingerprint
and the CLIP's spec and embedding space, so a second run with the same inputs does not re-embed.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .corpus import Corpus, cache_dir
from .models.clip import ClipEncoder
from .models.training import StepBar


@dataclass
class EmbedConfig:
    batch_size: int = 256
    use_cache: bool = True


@dataclass
class Embeddings:
    """Raw (un-normalised) embeddings, one row per caption-level pair."""

    image: torch.Tensor
    text: torch.Tensor
    from_cache: bool
    cache_path: Path | None


def cache_key(corpus: Corpus, encoder: ClipEncoder) -> str:
    return hashlib.sha256(f"{corpus.fingerprint}\0{encoder.spec}\0{encoder.space}".encode()).hexdigest()[:24]


@torch.no_grad()
def embed_corpus(corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig | None = None) -> Embeddings:
    """Embed all pairs of ``corpus`` (images once each), reading or writing the on-disk cache."""
    cfg = cfg or EmbedConfig()
    path = cache_dir() / "embeddings" / f"{cache_key(corpus, encoder)}.safetensors"
    if cfg.use_cache and path.is_file():
        data = load_file(str(path))
        return Embeddings(data["image"][torch.from_numpy(corpus.pair_image)], data["text"], True, path)
    bs = cfg.batch_size
    n_img_batches = -(-corpus.n_images // bs)
    n_txt_batches = -(-corpus.n_pairs // bs)
    images, texts = [], []
    with StepBar("embed", n_img_batches + n_txt_batches) as bar:
        for s in range(0, corpus.n_images, bs):
            batch = [corpus.load_image(i) for i in range(s, min(s + bs, corpus.n_images))]
            images.append(encoder.encode_images(batch))
            bar.advance("images")
        for s in range(0, corpus.n_pairs, bs):
            texts.append(encoder.encode_texts(corpus.pair_caption[s : s + bs]))
            bar.advance("captions")
    per_image, text = torch.cat(images).contiguous(), torch.cat(texts).contiguous()
    if cfg.use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        save_file({"image": per_image, "text": text}, str(tmp),
                  metadata={"corpus": corpus.fingerprint, "clip": encoder.spec, "space": encoder.space})
        os.replace(tmp, path)
    return Embeddings(per_image[torch.from_numpy(corpus.pair_image)], text, False, path if cfg.use_cache else None)
