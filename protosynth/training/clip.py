"""Train the small CLIP: an open_clip model from a registered JSON config, contrastive InfoNCE.

The output folder is an open_clip ``local-dir:`` model (config, safetensors weights) plus the
corpus's BPE merges, so ``--clip small:DIR`` loads it through open_clip's factory.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ..configs import ClipTrainConfig  # noqa: F401 (re-exported: its public home)
from ..corpus import Corpus
from ..evaluation.metrics import retrieval_metrics
from ..models.bpe import BPE_FILENAME, build_bpe, load_tokenizer, vocab_size
from ..models.clip import CLIP_WEIGHTS, ClipEncoder, load_clip
from ..util.files import save_safetensors_atomic, write_text_atomic
from ..util.progress import StepBar
from .common import cosine_lr, restore_rng, rng_state, save_atomic


def corpus_tensor(corpus: Corpus, preprocess) -> torch.Tensor:
    """All images of a corpus through the model's preprocessing, as one tensor."""
    return torch.stack([preprocess(corpus.load_image(i)) for i in range(corpus.n_images)])


@torch.no_grad()
def evaluate_clip(encoder: ClipEncoder, corpus: Corpus, batch: int = 512) -> dict[str, float]:
    """R@1/5/10 both ways (names as in docs/protocols.md) on a corpus's images and all their captions."""
    img = encoder.encode_images(corpus_tensor(corpus, encoder.preprocess), batch)
    txt = encoder.encode_texts(corpus.pair_caption, batch)
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    return retrieval_metrics((img @ txt.T).numpy(), corpus.pair_image)


def write_clip_dir(model, model_cfg: dict, folder: Path) -> None:
    """Weights and config, each written to a temporary file and renamed (never half-written)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors_atomic(state, folder / CLIP_WEIGHTS)
    write_text_atomic(folder / "open_clip_config.json", json.dumps({"model_cfg": model_cfg}, indent=2))


def train_clip(corpus: Corpus, test: Corpus, out: Path, cfg: ClipTrainConfig) -> dict[str, float]:
    """Train on ``corpus``, checkpointing to ``out``; resume when a checkpoint exists there."""
    out.mkdir(parents=True, exist_ok=True)
    bpe = out / BPE_FILENAME
    if not bpe.is_file():
        build_bpe(corpus.pair_caption, bpe)
    model_cfg = open_clip.get_model_config(cfg.arch)
    if model_cfg is None:
        raise ValueError(f"unknown CLIP architecture {cfg.arch!r}")
    model_cfg["text_cfg"]["vocab_size"] = vocab_size(bpe)
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(cfg.arch, **{"text_cfg": model_cfg["text_cfg"]})
    model.train()
    preprocess = open_clip.image_transform(model_cfg["vision_cfg"]["image_size"], is_train=False)
    tokenizer = load_tokenizer(bpe, model_cfg["text_cfg"]["context_length"])
    images = corpus_tensor(corpus, preprocess)
    tokens = tokenizer(corpus.pair_caption)
    starts = np.concatenate([[0], np.cumsum([len(c) for c in corpus.captions])])
    counts = torch.tensor([len(c) for c in corpus.captions])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, ckpt = 0, out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        restore_rng(state["rng"], gen)
        step = state["step"]
    t0 = time.time()
    batch = min(cfg.batch_size, corpus.n_images)
    with StepBar("train CLIP", cfg.steps, step) as bar:
        while step < cfg.steps:
            idx = torch.randperm(corpus.n_images, generator=gen)[:batch]
            pick = (torch.rand(batch, generator=gen) * counts[idx]).long()
            cap = torch.as_tensor(starts[idx.numpy()]) + pick
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
            img_f = F.normalize(model.encode_image(images[idx]), dim=-1)
            txt_f = F.normalize(model.encode_text(tokens[cap]), dim=-1)
            logits = model.logit_scale.exp() * img_f @ txt_f.T
            labels = torch.arange(batch)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            step += 1
            bar.advance(f"loss {loss.item():.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_atomic(
                    {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(gen)}, ckpt
                )
    write_clip_dir(model, model_cfg, out)
    encoder = load_clip(f"small:{out}")
    metrics = evaluate_clip(encoder, test)
    record = {
        "train_seconds_this_run": round(time.time() - t0, 1),
        "config": asdict(cfg),
        "test_corpus": test.spec,
        "test": metrics,
    }
    write_text_atomic(out / "metrics.json", json.dumps(record, indent=2))
    return metrics
