"""Coreset baselines: ``budget`` real pairs chosen from the corpus, written in the distilled-set format.

The exact rules (seeded; caption-level pairs, as PDS embeds them):
- ``random``: a uniform sample without replacement (numpy ``default_rng(seed)``).
- ``herding`` (Welling 2009): on joint features z = [img/|img|, txt/|txt|]/sqrt(2) from the CLIP,
  pick greedily the pair that brings the running mean of the chosen z closest (Euclidean) to the mean
  of all z; ties go to the lowest index. Deterministic (the seed is not used).
- ``kcenter``: greedy farthest-point on the same z: start from a seeded random pair, then add the
  pair whose distance to its nearest chosen pair is largest.
- ``forgetting`` (Toneva et al. 2019): train the evaluation protocol's model on every pair for
  ``forgetting_epochs`` epochs; each time a pair is presented in a mini-batch it is *correct* when
  its image scores a caption of its own image highest among the batch's captions. A forgetting
  event is correct at one presentation and wrong at the next. Pairs never correct count as
  forgotten infinitely often (as Toneva). ``keep=most`` (default) keeps the most-forgotten pairs,
  the informative ones by Toneva's finding that unforgettable examples can be dropped; ``keep=least``
  keeps the least-forgotten. Ties are broken by a seeded random order. Counts are cached per corpus,
  protocol, epochs and seed, so several budgets reuse one training run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from .configs import CORESET_METHODS as METHODS  # noqa: F401 (re-exported: its old name)
from .configs import CoresetConfig  # noqa: F401 (re-exported: its public home)
from .corpora.rows import pair_rows
from .corpora.source import flat_settings
from .corpora.spec import corpus_name
from .corpora.summary import whole
from .corpus import Corpus, cache_dir, check_cache_writable, scan_source
from .embed import embed_corpus
from .errors import ProtosynthError
from .evaluation.data import full_data
from .evaluation.protocols import get_protocol
from .evaluation.retrieval import train_and_score
from .models.backbones import load_backbone
from .models.clip import load_clip
from .models.text_encoders import load_text_encoder
from .sets.distilled import check_budget, check_out_dir, manifest_header, pair_tensors, write_distilled
from .sets.texts import member_images, with_reading_texts
from .util.files import atomic_open, remove_stale_temps
from .util.progress import StepBar
from .util.runinfo import check_device, peak_rss_mb, versions


def default_out(cfg: CoresetConfig) -> Path:
    return Path("distilled") / f"{corpus_name(cfg.corpus.spec)}-coreset-{cfg.method}-b{cfg.budget}-s{cfg.seed}"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def joint_features(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Unit-norm joint features: the normalised image and text embeddings side by side, / sqrt(2)."""
    return np.concatenate([unit(image), unit(text)], axis=1).astype(np.float64) / np.sqrt(2.0)


def select_random(n: int, budget: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=budget, replace=False)


def select_herding(z: np.ndarray, budget: int) -> np.ndarray:
    """Greedy: each step adds argmin_i |mean - (sum_chosen + z_i)/t|, i.e. argmax_i (t*mean - sum_chosen) . z_i
    among unchosen pairs, for unit-norm z."""
    target, total = z.mean(0), np.zeros(z.shape[1])
    chosen = np.zeros(len(z), dtype=bool)
    out = []
    for t in range(1, budget + 1):
        gain = z @ (t * target - total) - 0.5 * (z * z).sum(1)  # same argmax as the distance, norms kept exact
        gain[chosen] = -np.inf
        i = int(np.argmax(gain))
        out.append(i)
        chosen[i] = True
        total += z[i]
    return np.asarray(out)


def select_kcenter(z: np.ndarray, budget: int, seed: int) -> np.ndarray:
    first = int(np.random.default_rng(seed).integers(len(z)))
    out = [first]
    dist = np.linalg.norm(z - z[first], axis=1)
    for _ in range(budget - 1):
        i = int(np.argmax(dist))
        out.append(i)
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
    return np.asarray(out)


def forgetting_counts(corpus: Corpus, protocol_name: str, epochs: int, seed: int, device: str = "cpu") -> np.ndarray:
    """Forgetting events per pair (inf = never correct) while training the protocol's model on all pairs."""

    path = (
        cache_dir()
        / "forgetting"
        / (
            hashlib.sha256(f"{corpus.fingerprint}\0{protocol_name}\0{epochs}\0{seed}".encode()).hexdigest()[:24]
            + ".npy"
        )
    )
    if path.is_file():
        return np.load(path)
    check_cache_writable(path.parent)

    protocol = get_protocol(protocol_name)
    if protocol.text == "clip" or not protocol.train_backbone:
        raise ProtosynthError(f"forgetting counts need a protocol that trains its image model; not {protocol_name}")
    backbone = load_backbone(protocol.backbone)
    encoder = load_text_encoder(protocol.text)
    size = protocol.image_size or backbone.image_size
    data = full_data(corpus, encoder, backbone, size, normalise_text=False)
    image_of = torch.from_numpy(corpus.pair_image)
    last = torch.zeros(corpus.n_pairs, dtype=torch.bool)
    ever = torch.zeros(corpus.n_pairs, dtype=torch.bool)
    events = torch.zeros(corpus.n_pairs, dtype=torch.long)

    def on_batch(idx: torch.Tensor, logits: torch.Tensor) -> None:
        correct = image_of[idx[logits.argmax(1)]] == image_of[idx]
        events[idx] += (last[idx] & ~correct).long()
        last[idx] = correct
        ever[idx] |= correct

    with StepBar(f"forgetting ({protocol_name}, {epochs} epochs)", epochs) as bar:
        train_and_score(
            protocol,
            backbone,
            data,
            None,
            seed,
            epochs,
            device=device,
            on_batch=on_batch,
            progress=lambda: bar.advance(""),
        )
    counts = np.where(ever.numpy(), events.numpy().astype(np.float64), np.inf)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with atomic_open(path) as fh:
        np.save(fh, counts)
    return counts


def select_forgetting(counts: np.ndarray, budget: int, seed: int, keep: str) -> np.ndarray:
    tiebreak = np.random.default_rng(seed).permutation(len(counts))
    key = -counts if keep == "most" else counts
    order = np.lexsort((tiebreak, key))  # primary key last
    return order[:budget]


def validate(cfg: CoresetConfig) -> Path:
    """The values (``CoresetConfig.check``), the device and the out folder, before any work."""
    cfg.check()
    check_device(cfg.device)
    out = cfg.out or default_out(cfg)
    check_out_dir(out, cfg.force)
    return out


def build_coreset(cfg: CoresetConfig, command: str | None = None) -> Path:
    """Select ``budget`` real pairs with ``cfg.method`` and write them as a distilled set; ``command`` as
    for ``distill``."""
    out = validate(cfg)
    seconds: dict[str, float] = {}
    t = time.time()
    corpus = scan_source(cfg.corpus)  # a JSONL, parquet or webdataset corpus's summary, loaded whole only when needed
    check_budget(cfg.budget, corpus)
    clip = load_clip(cfg.clip, cfg.device)
    emb = embed_corpus(corpus, clip)
    image, text = emb.image.numpy(), emb.text.numpy()
    seconds["embed"] = round(time.time() - t, 2)
    t = time.time()
    if cfg.method == "random":
        chosen = select_random(corpus.n_pairs, cfg.budget, cfg.seed)
    elif cfg.method == "herding":
        chosen = select_herding(joint_features(image, text), cfg.budget)
    elif cfg.method == "kcenter":
        chosen = select_kcenter(joint_features(image, text), cfg.budget, cfg.seed)
    else:
        counts = forgetting_counts(whole(corpus), cfg.forgetting_protocol, cfg.forgetting_epochs, cfg.seed, cfg.device)
        chosen = select_forgetting(counts, cfg.budget, cfg.seed, cfg.keep)
    seconds["select"] = round(time.time() - t, 2)
    chosen = [int(p) for p in chosen]
    rows = pair_rows(corpus, emb.corpus_index)  # the chosen pairs' rows from the index's shards
    images = list(rows.read_images(rows.images(chosen)))
    captions = rows.captions(chosen)
    pairs = [
        {
            "index": i,
            "image": f"images/{i:06d}.png",
            "caption": captions[i],
            "caption_pair": p,
            "members": [p],
        }
        for i, p in enumerate(chosen)
    ]
    tensors = pair_tensors(image[chosen], text[chosen])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in flat_settings(cfg).items()}
    manifest = {
        **manifest_header(f"coreset-{cfg.method}", cfg.budget, None, cfg.seed, corpus, clip),
        "settings": settings,
        "rule": (__doc__ or "").split("The exact rules", 1)[-1].strip(),
        "versions": versions(),
        "seconds": seconds,
        "embed_compute_seconds": emb.compute_seconds,  # what the CLIP store cost, even when read from the cache
        "peak_memory_mb": peak_rss_mb(),
        "command": command,
    }
    pairs = with_reading_texts(pairs, rows)  # each pair carries its image's captions
    hashes = member_images(pairs, corpus, rows)
    write_distilled(out, images, pairs, tensors, manifest, text_space=clip.space, force=cfg.force, member_images=hashes)
    return out
