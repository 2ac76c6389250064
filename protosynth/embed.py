"""Stage 1, embed: CLIP image and text embeddings of every caption-level pair, in a resumable store.

Each image is encoded once and repeated for its captions (PDS embeds caption-level pairs; the image
embedding of a repeated image is the same vector). The embeddings go to a sharded store
(``store.py``) keyed by what decides the numbers (``cache_key``), so a second run with
the same inputs does not re-embed, and a killed run resumes: only shards missing from the folder
are computed, and so are the files of a complete store that no longer match its index. A shard's
numbers depend on that shard alone (its batches start at its first image
and its first pair), so a resumed store is byte-identical to an uninterrupted one.

Loading, preprocessing and tokenising can run in DataLoader worker processes while the main process
runs the encoder (``workers``: on a CPU only on cores torch leaves idle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .configs import EmbedConfig  # noqa: F401 (re-exported: its public home)
from .corpus import Corpus, cache_dir, check_cache_writable
from .engine import EngineConfig, onray
from .errors import P, ProtosynthError
from .files import check_writable, remove_stale_temps, sha256_file, write_text_atomic
from .models.clip import ClipEncoder
from .progress import StepBar
from .store import (
    FORMAT,
    PAIR_IMAGE,
    EmbeddingStore,
    Rows,
    plan_shards,
    read_index,
    save_npy_atomic,
    shard_done,
    store_files,
    store_problems,
    write_index,
)

log = logging.getLogger(__name__)


def check_config(cfg: EmbedConfig) -> None:
    """The checks that need no model or data."""
    for param, value, low in (
        (P.batch_size, cfg.batch_size, 1),
        (P.shard_size, cfg.shard_size, 1),
        (P.num_workers, 0 if cfg.num_workers is None else cfg.num_workers, 0),
    ):
        if value < low:
            raise ProtosynthError(f"{param} must be at least {low}, got {value}")
    if cfg.out is not None:  # the cache's store folder depends on the corpus: embed_corpus checks it
        check_writable(cfg.out, f"{P.out} {cfg.out}")


@dataclass
class Embeddings:
    """Raw (un-normalised) pair-level embeddings: ``image_rows`` / ``text_rows`` read rows on demand
    (memory-mapped when stored: pass them to ``build_prototypes`` for corpora larger than RAM);
    ``image`` / ``text`` are the whole float32 matrices as tensors, built on first use."""

    image_rows: Rows  # (n_pairs, d): row p is image corpus.pair_image[p]
    text_rows: Rows  # (n_pairs, d)
    from_cache: bool  # True when no shard had to be computed
    cache_path: Path | None  # the store folder
    # seconds the store took to compute, whichever run computed it (None: not known, e.g. resumed)
    compute_seconds: float | None = None

    @cached_property
    def image(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.image_rows))

    @cached_property
    def text(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.text_rows))


# How images reach the encoder; part of the cache key, so a change here never reuses stale embeddings.
# "jpeg-draft": JPEGs decode at the smallest DCT scale that covers the encoder's input side.
DECODE = "jpeg-draft"


def cache_key(corpus: Corpus, encoder: ClipEncoder, batch_size: int = EmbedConfig.batch_size) -> str:
    """Corpus fingerprint, CLIP spec, space and weights (a checkpoint file's hash), the decoding, and
    the encoder batch size: a batch's matrix products sum in an order that depends on the batch's
    size, so two batch sizes can give embeddings that differ in the last bits (up to 1.9e-6 with the
    shipped CLIP, docs/scale.md) and never share a store."""
    parts = [corpus.fingerprint, encoder.spec, encoder.space, encoder.weights_id, DECODE, str(encoder.input_size)]
    parts.append(f"batch_size={batch_size}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def store_dir(corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig) -> Path | None:
    """Where ``cfg`` puts the store: ``cfg.out``, else the cache (None when the cache is off)."""
    if cfg.out is not None:
        return Path(cfg.out)
    if not cfg.use_cache:
        return None
    return cache_dir() / "embeddings" / (cache_key(corpus, encoder, cfg.batch_size) + ("-fp16" if cfg.fp16 else ""))


class _Batches(Dataset):
    """Item j is the j-th planned batch, whole: a stack of preprocessed images or a tensor of tokens.
    Whole batches (``batch_size=None`` in the DataLoader) keep the batch boundaries of the plan."""

    def __init__(self, corpus: Corpus, encoder: ClipEncoder, plan: list[tuple[str, int, int]]):
        self.corpus, self.preprocess, self.tokenizer, self.plan = corpus, encoder.preprocess, encoder.tokenizer, plan
        self.min_side = encoder.input_size  # JPEGs decode at a reduced DCT scale down to this side

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, j: int) -> torch.Tensor | ProtosynthError:
        kind, a, b = self.plan[j]
        try:
            if kind == "image":
                return torch.stack([self.preprocess(self.corpus.load_image(i, self.min_side)) for i in range(a, b)])
        except ProtosynthError as exc:  # returned, not raised: a worker would wrap it in a traceback
            return exc
        return self.tokenizer(self.corpus.pair_caption[a:b])


def workers(encoder: ClipEncoder, cfg: EmbedConfig) -> int:
    """``cfg.num_workers``, else 2 when the encoder runs on a GPU (the CPU is free to load), and on the
    CPU only the cores torch leaves idle, at most 2. Workers on cores the encoder uses just compete
    with it: on a 2-core machine 2 workers did not reliably beat none in benchmarks.scale
    (docs/scale.md)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if encoder.device.type != "cpu":
        return 2
    return max(0, min(2, (os.cpu_count() or 1) - torch.get_num_threads()))


def batch_plan(shards: list[dict], bs: int) -> list[tuple[str, int, int]]:
    """Each shard's image batches then its text batches, every batch counted from the shard's start."""
    plan = []
    for s in shards:
        for kind, (a, b) in (("image", s["images"]), ("text", s["pairs"])):
            plan += [(kind, i, min(i + bs, b)) for i in range(a, b, bs)]
    return plan


def _encode_shards(corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig, shards: list[dict], write) -> None:
    """Encode ``shards`` in order in this process and hand each one's (image, text) arrays to
    ``write(shard, img, txt)``."""
    plan = batch_plan(shards, cfg.batch_size)
    if not plan:
        return
    on_gpu = encoder.device.type == "cuda"
    loader = DataLoader(
        _Batches(corpus, encoder, plan),
        batch_size=None,
        shuffle=False,
        num_workers=workers(encoder, cfg),
        pin_memory=on_gpu,
        persistent_workers=False,
    )
    batches = [iter(loader)]  # the one reference: cleared below, so the workers stop now, also on an error
    try:
        assemble_shards(_encoded(batches, plan, encoder), shards, cfg, encoder.embed_dim, write)
    finally:
        batches.clear()


@torch.no_grad()
def _encoded(batches: list, plan: list[tuple[str, int, int]], encoder: ClipEncoder):
    """Each planned batch's embeddings (float32), in plan order."""
    on_gpu = encoder.device.type == "cuda"
    for kind, _, _ in plan:
        x = next(batches[0])
        if isinstance(x, ProtosynthError):
            raise x
        x = x.to(encoder.device, non_blocking=on_gpu)
        y = encoder.model.encode_image(x) if kind == "image" else encoder.model.encode_text(x)
        yield y.float().cpu().numpy()


def assemble_shards(encoded, shards: list[dict], cfg: EmbedConfig, dim: int, write) -> None:
    """Join the batch embeddings ``encoded`` yields (float32, in ``batch_plan`` order, from either
    engine) into each shard's image and text arrays and ``write`` them, shard by shard, in order."""
    dtype = np.float16 if cfg.fp16 else np.float32
    total = len(batch_plan(shards, cfg.batch_size))
    with StepBar("embed", total) as bar:
        for s in shards:
            parts = {"image": [], "text": []}
            for kind, (a, b) in (("image", s["images"]), ("text", s["pairs"])):
                for _ in range(a, b, cfg.batch_size):
                    parts[kind].append(next(encoded))
                    bar.advance(f"shard {s['images'][0] // cfg.shard_size + 1}")
            img, txt = (
                np.concatenate(parts[k]) if parts[k] else np.empty((0, dim), np.float32) for k in ("image", "text")
            )
            write(s, img.astype(dtype), txt.astype(dtype))


def _header(corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig, shards: list[dict]) -> dict:
    return {
        "format": FORMAT,
        "corpus": {"spec": corpus.spec, "fingerprint": corpus.fingerprint},
        "clip": {"spec": encoder.spec, "space": encoder.space},
        "dim": encoder.embed_dim,
        "dtype": "float16" if cfg.fp16 else "float32",
        "batch_size": cfg.batch_size,
        "shard_size": cfg.shard_size,
        "n_images": corpus.n_images,
        "n_pairs": corpus.n_pairs,
        "shards": shards,
        "complete": False,
    }


def _check_existing(folder: Path, index: dict | None, want: dict) -> None:
    """A folder may only hold a store of the same corpus, CLIP, dtype and batch size (and, to resume,
    shard size)."""
    if folder.exists() and not folder.is_dir():
        raise ProtosynthError(f"{folder} is a file, not a folder for embeddings")
    if index is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise ProtosynthError(f"{folder} is not empty and holds no embedding index.json: use a new or empty folder")
        return
    corpus, clip = index.get("corpus", {}), index.get("clip", {})
    if corpus.get("fingerprint") != want["corpus"]["fingerprint"]:
        raise ProtosynthError(
            f"{folder} holds embeddings of another corpus ({corpus.get('spec')}, "
            f"{corpus.get('fingerprint')}); use another folder"
        )
    if clip != want["clip"]:
        raise ProtosynthError(
            f"{folder} holds embeddings of another CLIP ({clip.get('spec')}, {clip.get('space')}); use another folder"
        )
    if index.get("dtype") != want["dtype"]:
        raise ProtosynthError(
            f"{folder} holds {index.get('dtype')} embeddings, not {want['dtype']}: "
            f"{'add' if index.get('dtype') == 'float16' else 'drop'} {P.fp16(True)} "
            "or use another folder"
        )
    if index.get("batch_size") != want["batch_size"]:
        made = index.get("batch_size") or "an unrecorded batch size (a store made before batch sizes were recorded)"
        raise ProtosynthError(
            f"{folder} holds embeddings made with {P.batch_size} {made}, not {want['batch_size']}: "
            "batch sizes change the last bits of the numbers; use that batch size or another folder"
        )
    if not index.get("complete") and index.get("shard_size") != want["shard_size"]:
        raise ProtosynthError(
            f"{folder} holds an unfinished store with {P.shard_size} {index.get('shard_size')}: "
            f"resume with that shard size, or delete the folder"
        )


def embed_corpus(
    corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig | None = None, engine: EngineConfig | None = None
) -> Embeddings:
    """Embed all pairs of ``corpus`` (images once each) into the store, computing only missing shards.
    ``engine``: where the encoder runs (``engine.py``); on Ray the shards, their batches and every
    file written are the same, only the batches are prepared and encoded on the cluster."""
    cfg = cfg or EmbedConfig()
    check_config(cfg)
    encode = _encode_shards
    if engine is not None and engine.on_ray:
        encode = partial(onray("embed").encode_shards, engine=engine)
    folder = store_dir(corpus, encoder, cfg)
    if folder is None:  # no store: the same shards, kept in memory
        got: list[tuple[np.ndarray, np.ndarray]] = []
        shards = plan_shards(corpus.pair_image, corpus.n_images, cfg.shard_size)
        encode(corpus, encoder, cfg, shards, lambda s, img, txt: got.append((img, txt)))
        dim = got[0][0].shape[1] if got else encoder.embed_dim
        images = [g[0] for g in got]
        lengths = [len(i) for i in images]
        return Embeddings(
            Rows(images, lengths, dim, row_map=corpus.pair_image),
            Rows([g[1] for g in got], [len(g[1]) for g in got], dim),
            False,
            None,
        )
    index = read_index(folder)
    want = _header(corpus, encoder, cfg, plan_shards(corpus.pair_image, corpus.n_images, cfg.shard_size))
    _check_existing(folder, index, want)
    # a complete store is checked against the sha256 its index records, every file, each time it is
    # opened for use; the files that do not match are recomputed (and only they are rewritten)
    damaged: dict[str, str] = {}
    if index is not None and index.get("complete"):
        damaged = dict(store_problems(folder, index))
        if not damaged:
            return _open(folder, from_cache=True, checked=True)
        for name, why in damaged.items():
            log.warning("%s: %s; recomputing it", folder / name, why)
        want = index  # the same shards, in the same index: only the damaged files' hashes change
        cfg = replace(cfg, shard_size=int(index["shard_size"]))
    if cfg.out is None:
        check_cache_writable(folder)
    else:
        check_writable(folder, f"{P.out} {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # what killed runs writing this store left behind
    if index is None:
        write_index(folder, want)
    # an intact file's recorded hash: not computed again below
    digests = {name: digest for name, _, digest in store_files(index) if name not in damaged} if damaged else {}
    if not (folder / PAIR_IMAGE).is_file() or PAIR_IMAGE in damaged:
        digests[PAIR_IMAGE] = save_npy_atomic(folder / PAIR_IMAGE, corpus.pair_image)
    shards = want["shards"]
    todo = [s for s in shards if not shard_done(folder, s) or {s["image_file"], s["text_file"]} & damaged.keys()]
    started = time.perf_counter()

    def write(s: dict, img: np.ndarray, txt: np.ndarray) -> None:
        for name, rows in ((s["text_file"], txt), (s["image_file"], img)):
            if not damaged or name in damaged:
                digests[name] = save_npy_atomic(folder / name, rows)

    encode(corpus, encoder, cfg, todo, write)
    if not damaged:  # a repair keeps the cost of the run that computed the store
        # the cost beside the store, not in index.json, whose bytes stay the same from run to run
        whole = len(todo) == len(shards)
        cost = {"compute_seconds": round(time.perf_counter() - started, 2) if whole else None, "shards": len(shards)}
        write_text_atomic(folder / COST_FILE, json.dumps(cost, indent=2))
    for s in shards:
        for key in ("image", "text"):
            name = s[f"{key}_file"]
            s[f"{key}_sha256"] = digests.get(name) or sha256_file(folder / name)
    if shards:
        want["dim"] = int(np.load(folder / shards[0]["image_file"], mmap_mode="r").shape[1])
    want["pair_image_sha256"] = digests.get(PAIR_IMAGE) or sha256_file(folder / PAIR_IMAGE)
    del want["complete"]
    want["complete"] = True  # the last key, in the index written after the last shard
    write_index(folder, want)
    return _open(folder, from_cache=not todo, checked=True)


COST_FILE = "cost.json"


def _open(folder: Path, from_cache: bool, checked: bool = False) -> Embeddings:
    store = EmbeddingStore(folder, checked=checked)
    try:
        seconds = json.loads((folder / COST_FILE).read_text()).get("compute_seconds")
    except (OSError, ValueError, AttributeError):
        seconds = None  # a store written before costs were recorded
    return Embeddings(store.image_pairs, store.texts, from_cache, folder, seconds)


def open_embeddings(folder: Path) -> EmbeddingStore:
    """A complete store, memory-mapped: ``.images`` per image, ``.image_pairs`` / ``.texts`` per pair."""
    return EmbeddingStore(Path(folder))
