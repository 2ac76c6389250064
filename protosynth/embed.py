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

A JSONL manifest, parquet files or webdataset shards summarised by ``corpus.scan_source`` are never
loaded whole here: the shards still to compute (of the store and of the corpus index beside it) are
filled from windows of a few shards that a second streaming pass hands over
(``corpora.window.windows``), with the same bytes as a whole load.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .configs import EmbedConfig  # noqa: F401 (re-exported: its public home)
from .corpora.index import CORPUS_INDEX, IndexBuild, read_corpus_index
from .corpora.parquet import has_pyarrow
from .corpora.summary import CorpusSummary, whole
from .corpus import Corpus, cache_dir, check_cache_writable
from .engines.base import EncodeJob, Engine, make_engine
from .engines.connect import EngineConfig
from .errors import P, ProtosynthError
from .models.clip import ClipEncoder
from .store import FORMAT, PAIR_IMAGE, EmbeddingStore, Rows, StoreWriter, compute_seconds, plan_shards, survey
from .util.files import check_writable
from .util.progress import StepBar


def check_config(cfg: EmbedConfig) -> None:
    """The checks that need no model or data: the values, then that ``out`` can be written."""
    cfg.check()
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
    # the corpus index beside the store (``CORPUS_INDEX``): None without a store or without pyarrow
    corpus_index: Path | None = None

    @cached_property
    def image(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.image_rows))

    @cached_property
    def text(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.text_rows))


# How images reach the encoder; part of the cache key, so a change here never reuses stale embeddings.
# "jpeg-draft": JPEGs decode at the smallest DCT scale that covers the encoder's input side.
DECODE = "jpeg-draft"


def cache_key(corpus: Corpus | CorpusSummary, encoder: ClipEncoder, batch_size: int = EmbedConfig.batch_size) -> str:
    """Corpus fingerprint, CLIP spec, space and weights (a checkpoint file's hash), the decoding, and
    the encoder batch size: a batch's matrix products sum in an order that depends on the batch's
    size, so two batch sizes can give embeddings that differ in the last bits (up to 1.9e-6 with the
    shipped CLIP, docs/scale.md) and never share a store."""
    parts = [corpus.fingerprint, encoder.spec, encoder.space, encoder.weights_id, DECODE, str(encoder.input_size)]
    parts.append(f"batch_size={batch_size}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def store_dir(corpus: Corpus | CorpusSummary, encoder: ClipEncoder, cfg: EmbedConfig) -> Path | None:
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


def _encode_shards(
    corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig, shards: list[dict], write, engine: Engine
) -> None:
    """Encode ``shards`` in order on ``engine`` and hand each one's (image, text) arrays to
    ``write(shard, img, txt)``."""
    plan = batch_plan(shards, cfg.batch_size)
    if not plan:
        return  # nothing to compute: no engine session is needed
    kinds = [kind for kind, _, _ in plan]
    job = EncodeJob(_Batches(corpus, encoder, plan), kinds, encoder, encode_batch, workers(encoder, cfg))
    engine.encode_batches(job, lambda encoded: assemble_shards(encoded, shards, cfg, encoder.embed_dim, write))


@torch.no_grad()
def encode_batch(encoder: ClipEncoder, kind: str, x: torch.Tensor) -> np.ndarray:
    """One planned batch's embeddings (float32), on the encoder's device; the one function both
    engines encode with."""
    x = x.to(encoder.device, non_blocking=encoder.device.type == "cuda")
    y = encoder.model.encode_image(x) if kind == "image" else encoder.model.encode_text(x)
    return y.float().cpu().numpy()


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


def _header(corpus: Corpus | CorpusSummary, encoder: ClipEncoder, cfg: EmbedConfig, shards: list[dict]) -> dict:
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


def embed_corpus(
    corpus: Corpus | CorpusSummary,
    encoder: ClipEncoder,
    cfg: EmbedConfig | None = None,
    engine: EngineConfig | Engine | None = None,
) -> Embeddings:
    """Embed all pairs of ``corpus`` (images once each) into the store, computing only missing shards.
    ``engine``: where the encoder runs (``engines.base``); on Ray the shards, their batches and every
    file written are the same, only the batches are prepared and encoded on the cluster. A summary
    (``corpora.summary``) is loaded whole only when a shard of the store or of its index has to be
    computed: a complete store with its index is opened from the summary alone."""
    cfg = cfg or EmbedConfig()
    check_config(cfg)
    runner = make_engine(engine)
    folder = store_dir(corpus, encoder, cfg)
    if folder is None:  # no store: the same shards, kept in memory
        corpus = whole(corpus)
        got: list[tuple[np.ndarray, np.ndarray]] = []
        shards = plan_shards(corpus.pair_image, corpus.n_images, cfg.shard_size)
        _encode_shards(corpus, encoder, cfg, shards, lambda s, img, txt: got.append((img, txt)), runner)
        dim = got[0][0].shape[1] if got else encoder.embed_dim
        images = [g[0] for g in got]
        lengths = [len(i) for i in images]
        return Embeddings(
            Rows(images, lengths, dim, row_map=corpus.pair_image),
            Rows([g[1] for g in got], [len(g[1]) for g in got], dim),
            False,
            None,
        )
    want = _header(corpus, encoder, cfg, plan_shards(corpus.pair_image, corpus.n_images, cfg.shard_size))
    found = survey(folder, want)
    shard_size = int(found.index["shard_size"])  # a repair keeps the store's shard size
    if found.intact:
        build = index_build(corpus, folder, shard_size)
        _fill(corpus, build, None, encoder, cfg, runner)
        return _open(folder, build and build.finish(), from_cache=True, checked=True, corpus=corpus)
    cfg = replace(cfg, shard_size=shard_size)
    if cfg.out is None:
        check_cache_writable(folder)
    else:
        check_writable(folder, f"{P.out} {folder}")
    store = StoreWriter(folder, found, corpus.pair_image)
    build = index_build(corpus, folder, shard_size)
    _fill(corpus, build, store, encoder, cfg, runner)
    index = build and build.finish()
    store.finish()
    return _open(folder, index, from_cache=not store.todo, checked=True, corpus=corpus)


def index_build(corpus: Corpus | CorpusSummary, store: Path, shard_size: int) -> IndexBuild | None:
    """The run that completes the corpus index in the store's folder (``CORPUS_INDEX``), with the
    store's shard boundaries (only missing or damaged shards are built). None when pyarrow, an
    optional extra, is not installed, or when a read-only store (a shared cache) has no index: the
    stages then read the corpus held in memory, with the same result."""
    if not has_pyarrow():
        return None
    folder = store / CORPUS_INDEX
    found = read_corpus_index(folder)
    if not (found and found.get("complete")) and not os.access(store, os.W_OK):
        return None
    return IndexBuild(corpus, folder, shard_size)


def _fill(corpus, build: IndexBuild | None, store: StoreWriter | None, encoder, cfg: EmbedConfig | None, engine):
    """Build the corpus index's missing shards (where ``engine`` runs: Ray tasks write them on the
    workers) and encode the store's, index first. A summary that can stream its corpus again
    (``CorpusSummary.windows``: a JSONL manifest, parquet files, webdataset shards) hands over windows
    of a few shards, so the corpus is never held whole; any other corpus is loaded whole. Either way
    every file has the same bytes."""
    index_todo = build.todo if build is not None else []
    store_todo = store.todo if store is not None else []
    if not index_todo and not store_todo:
        return
    if not (isinstance(corpus, CorpusSummary) and corpus.windows is not None):
        corpus = whole(corpus)
        runs = [(index_todo + store_todo, corpus)]
    else:
        shard_size = (build.index if build is not None else store.index)["shard_size"]
        need = {s["images"][0] // shard_size for s in index_todo + store_todo}
        runs = corpus.windows(plan_shards(corpus.pair_image, corpus.n_images, shard_size), need)
    for shards, part in runs:
        within = {tuple(s["images"]) for s in shards}
        if index_todo:
            for _ in build.write(part, [s for s in index_todo if tuple(s["images"]) in within], engine.map_units):
                pass
        if store_todo:
            todo = [s for s in store_todo if tuple(s["images"]) in within]
            _encode_shards(part, encoder, cfg, todo, store.write, engine)


def _open(folder: Path, index: Path | None, from_cache: bool, checked: bool = False, corpus=None) -> Embeddings:
    """The complete store's ``Embeddings``; a summary ``corpus`` then holds the store's memory-mapped
    ``pair_image`` instead of its scan's copy (``CorpusSummary.share_pairs``): one on the driver."""
    store = EmbeddingStore(folder, checked=checked)
    if isinstance(corpus, CorpusSummary):
        corpus.share_pairs(store.pair_image, store.folder / PAIR_IMAGE)
    return Embeddings(store.image_pairs, store.texts, from_cache, folder, compute_seconds(folder), index)


def open_embeddings(folder: Path) -> EmbeddingStore:
    """A complete store, memory-mapped: ``.images`` per image, ``.image_pairs`` / ``.texts`` per pair."""
    return EmbeddingStore(Path(folder))
