"""Corpora behind one interface, ``load_corpus(spec, image_root=None, skip_bad=False) -> Corpus``.

A corpus is a list of images, each with one or more captions; the pipeline works on caption-level
pairs (image i repeated once per caption), as Flickr30k training files do. This module is the
facade every other module imports from; the file readers live in ``protosynth.corpora``.

Spec strings, by form:
- ``shapes`` / ``shapes:train`` / ``shapes:test`` / ``shapes:pretrain``, optionally followed by
  ``,n=2000,size=32,seed=0`` to change the world's split size, image size or seed;
- ``*.jsonl``: protosynth's manifest, one object per line: ``{"image": "rel.png", "caption": "..."}``
  or ``{"image": "rel.png", "captions": ["...", ...]}``, image paths relative to the manifest;
- ``*.json``: a Karpathy/BLIP list (caption-level train file or image-level test file);
- ``*.csv``: ``image`` and ``caption`` columns, one row per pair;
- ``*.tar`` or a glob with ``*``/``?``: webdataset shards (``jpg``/``png`` + ``txt``/``json``);
- ``*.parquet`` or a glob ending in ``.parquet``: tables with image bytes and captions, one row per
  image (img2dataset's output: columns ``jpg`` and ``caption``);
- ``hf:NAME[:SPLIT]``: a Hugging Face dataset from the local ``datasets`` cache (never downloaded) or
  a local folder ``load_dataset`` reads; ``hf:FOLDER[:SPLIT]`` or a plain FOLDER that
  ``save_to_disk`` wrote (it holds ``state.json`` or ``dataset_dict.json``): columns ``image`` (an
  ``Image()`` feature) and ``caption`` (a string or a list of strings).

``image_root`` (JSON and CSV only) is the folder image paths are relative to (default: the file's
folder). ``image_column`` and ``caption_column`` (parquet and ``hf:`` only) name the columns when
they are not the defaults. ``skip_bad`` decodes every image once at load and drops the unreadable ones with their
captions (and webdataset samples without an image or a caption member, parquet and ``hf:`` rows with
a null image: found from the index, no image decoded), listing them in ``Corpus.skipped``; without it
a missing image file is an error at load and a corrupt one an error when read, each naming the file
and the row. With ``engine`` on Ray, that decoding runs as Ray tasks over chunks of the images (the
driver decodes none), with the same check and the same result as in this process.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from .corpora.base import Corpus, ImageSource, manifest_file, unreadable
from .corpora.csvtable import load_csv
from .corpora.hf import is_hf, load_hf
from .corpora.jsonl import load_jsonl, scan_manifest
from .corpora.jsonl import stream as jsonl_stream
from .corpora.karpathy import load_karpathy
from .corpora.parquet import IMAGE_COLUMN, ParquetRows, load_parquet, scan_parquet
from .corpora.parquet import stream as parquet_stream
from .corpora.shapes import WorldConfig, WorldObject, WorldSplit, generate_split, image_digest
from .corpora.source import CorpusSource
from .corpora.spec import canonical_root, canonical_spec, is_world, parse_world_spec
from .corpora.summary import CorpusSummary
from .corpora.webdataset import load_webdataset, read_member, scan_webdataset
from .corpora.webdataset import stream as wds_stream
from .corpora.window import windows as window_pass
from .engines.base import Engine, make_engine
from .engines.connect import EngineConfig
from .errors import P, ProtosynthError
from .util.files import atomic_open, check_writable, remove_stale_temps

__all__ = [
    "Corpus",
    "ImageSource",
    "cache_dir",
    "canonical_root",
    "canonical_spec",
    "check_cache_writable",
    "is_world",
    "load_corpus",
    "load_csv",
    "load_hf",
    "load_jsonl",
    "load_karpathy",
    "load_parquet",
    "load_webdataset",
    "load_world",
    "scan_source",
    "world_fingerprint",
    "world_split",
]

FORMATS = (
    "'shapes[:train|test|val|pretrain]', a .jsonl manifest, a Karpathy .json, a .csv, .tar shards or .parquet "
    "files (path or glob), or a Hugging Face dataset (hf:NAME[:SPLIT] or a save_to_disk folder)"
)


def cache_dir() -> Path:
    """Where protosynth caches generated worlds and embeddings (``PROTOSYNTH_CACHE`` overrides)."""
    return Path(os.environ.get("PROTOSYNTH_CACHE", Path.home() / ".cache" / "protosynth"))


def check_cache_writable(folder: Path) -> None:
    """Every cache writer calls this before computing what it will cache (a world split, embeddings,
    text features, pixels, forgetting counts): a read-only cache is one line naming it, not a
    traceback after the work. A cache that already holds what a run needs is only read, so it may
    be read-only."""
    check_writable(folder, f"cache folder {folder}", "; set PROTOSYNTH_CACHE to a writable folder")


# Split contents that changed: test and pretrain v2 have no image equal to a train (or test) image.
SPLIT_VERSION = {"train": "", "test": "-v2", "pretrain": "-v2", "val": ""}
EARLIER_SPLITS = {"train": (), "test": ("train",), "pretrain": ("train", "test"), "val": ("train", "test", "pretrain")}


def world_fingerprint(cfg: WorldConfig, split: str) -> str:
    return f"world-{cfg.fingerprint()}-{split}{SPLIT_VERSION[split]}"


# Sizes of later splits that a split's pixels and captions do not depend on (a split is drawn from its
# own seed stream and kept disjoint only from earlier splits).
_UNUSED_SIZES = {
    "train": ("n_test", "n_pretrain", "n_val"),
    "test": ("n_pretrain", "n_val"),
    "pretrain": ("n_val",),
    "val": (),
}


def _content_config(cfg: WorldConfig, split: str) -> WorldConfig:
    """``cfg`` with the sizes a split ignores set to their defaults: its cache file's key, so
    ``shapes:test,n=50`` and ``shapes:test,n=20`` share one cached 10,000-image train split instead of
    each generating its own to exclude its images. The default world's keys are unchanged."""
    default = WorldConfig()
    return replace(cfg, **{k: getattr(default, k) for k in _UNUSED_SIZES[split]})


def world_split(cfg: WorldConfig, split: str) -> WorldSplit:
    """One world split with its objects, generated on first use and cached as ``.npz``. Test and
    pretrain images never equal an image of an earlier split (train, then test); val images equal none
    of train, test or pretrain."""
    path = cache_dir() / "world" / f"{world_fingerprint(_content_config(cfg, split), split)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            if "objects" in data.files:  # caches written before objects were stored are regenerated
                objects = [[WorldObject(*o) for o in objs] for objs in json.loads(str(data["objects"]))]
                return WorldSplit(data["images"], json.loads(str(data["captions"])), objects)
    check_cache_writable(path.parent)
    exclude = None
    if EARLIER_SPLITS[split]:
        exclude = {image_digest(im) for earlier in EARLIER_SPLITS[split] for im in world_split(cfg, earlier).images}
    ws = generate_split(cfg, split, exclude)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    objects = [[[o.colour, o.shape, o.size, o.position] for o in objs] for objs in ws.objects]
    with atomic_open(path) as fh:
        np.savez(
            fh, images=ws.images, captions=np.array(json.dumps(ws.captions)), objects=np.array(json.dumps(objects))
        )
    return ws


def load_world(spec: str = "shapes") -> Corpus:
    """The world split named by ``spec`` (see ``world_split``)."""
    split, cfg = parse_world_spec(spec)
    ws = world_split(cfg, split)
    keys = [f"{split}/{i:06d}" for i in range(len(ws.captions))]
    return Corpus(
        spec=spec, fingerprint=world_fingerprint(cfg, split), image_keys=keys, captions=ws.captions, pixels=ws.images
    )


def corpus_kind(spec: str) -> str:
    """Which reader a spec goes to: world, hf, jsonl, json, csv, tar or parquet (else its suffix, refused)."""
    if is_world(spec):
        return "world"
    if is_hf(spec):
        return "hf"
    suffix = spec.lower().rsplit(".", 1)[-1] if "." in Path(spec).name else ""
    if suffix == "parquet":  # a file, or a glob over parquet files
        return "parquet"
    return "tar" if suffix == "tar" or "*" in spec or "?" in spec else suffix


def load_corpus(
    spec: str,
    image_root: Path | None = None,
    skip_bad: bool = False,
    image_column: str | None = None,
    caption_column: str | None = None,
    engine: EngineConfig | Engine | None = None,
) -> Corpus:
    """Resolve a corpus spec string (see module docstring). The corpus carries the canonical spec
    and image root (absolute paths). ``engine`` (``engines.base``): where ``skip_bad``'s pass runs
    ``unreadable``, in this process or, on Ray, in Ray tasks over chunks of the images."""
    kind = check_options(spec, image_root, image_column, caption_column)
    spec, image_root = canonical_spec(spec), canonical_root(image_root)
    if kind == "world":
        corpus = load_world(spec)  # pixels in memory: nothing can be unreadable
        corpus.skip_bad = skip_bad
        return corpus
    bad = partial(_find_unreadable, engine)
    if kind in ("parquet", "hf"):
        load = load_parquet if kind == "parquet" else load_hf
        return load(spec, image_column=image_column, caption_column=caption_column, skip_bad=skip_bad, find_bad=bad)
    if kind == "jsonl":
        return load_jsonl(spec, skip_bad=skip_bad, find_bad=bad)
    if kind == "json":
        return load_karpathy(spec, image_root=image_root, skip_bad=skip_bad, find_bad=bad)
    if kind == "csv":
        return load_csv(spec, image_root=image_root, skip_bad=skip_bad, find_bad=bad)
    return load_webdataset(spec, skip_bad=skip_bad, find_bad=bad)


def check_options(spec: str, image_root, image_column, caption_column) -> str:
    """The corpus's kind (``corpus_kind``), once its reading options are known to apply to it."""
    kind = corpus_kind(spec)
    if kind not in ("world", "hf", "jsonl", "json", "csv", "tar", "parquet"):
        raise ProtosynthError(f"unknown corpus {spec!r}: use {FORMATS}")
    if image_root is not None and kind not in ("json", "csv"):
        raise ProtosynthError(f"{P.image_root} applies to .json and .csv corpora, not {spec!r}")
    for param, value in ((P.image_column, image_column), (P.caption_column, caption_column)):
        if value is not None and kind not in ("parquet", "hf"):
            raise ProtosynthError(f"{param} applies to .parquet and hf: corpora, not {spec!r}")
    return kind


def _find_unreadable(engine: EngineConfig | Engine | None, source: ImageSource, keys: list[str]) -> dict[str, str]:
    """``unreadable`` run by ``engine``, which is made only when a ``skip_bad`` pass runs: the Ray
    engine imports Ray (an optional extra), which loading a corpus without that pass never needs."""
    return make_engine(engine).find_unreadable(unreadable, source, keys)


def load_source(source: CorpusSource, engine: EngineConfig | Engine | None = None) -> Corpus:
    """The corpus a config's ``CorpusSource`` names, read with its options (``load_corpus``)."""
    return load_corpus(source.spec, **source.options(), engine=engine)


def scan_source(source: CorpusSource, engine: EngineConfig | Engine | None = None) -> Corpus | CorpusSummary:
    """What the stages need of a corpus before they know whether its store and corpus index exist:
    for a JSONL manifest, parquet files or webdataset tar shards (with or without ``skip_bad``: its
    check streamed too, ``corpora.base.BadCheck`` through the scan's ``find_bad``), a
    ``CorpusSummary`` streamed from it (the fingerprint ``load_source`` would give, the same errors,
    no caption held), which streams the corpus again in windows for ``embed`` (``corpora.window``)
    and loads it whole only if a stage asks (``corpora.summary.whole``); for every other corpus, the
    corpus loaded (``load_source``). Why these three: they are the formats of corpora of millions of
    image files and of large crawls (img2dataset writes parquet or webdataset); the others are read
    whole as before (docs/scale.md)."""
    options = source.options()
    kind = check_options(source.spec, **{k: v for k, v in options.items() if k != "skip_bad"})
    if kind not in ("jsonl", "parquet", "tar"):
        return load_source(source, engine)
    if not source.skip_bad:
        return _scan(source, kind, None, engine)
    # the check's windows go to the engine in one session (one Ray session, not one per window)
    with make_engine(engine).session():
        return _scan(source, kind, partial(_find_unreadable, engine), engine)


def _scan(source: CorpusSource, kind: str, find_bad, engine: EngineConfig | Engine | None) -> CorpusSummary:
    """``scan_source``'s summary of a JSONL, parquet or webdataset corpus; ``find_bad``: its
    ``--skip-bad`` check (``corpora.base.BadCheck``), None without ``skip_bad``. The summary holds the
    only reference to the scan's ``pair_image`` (its windows read the summary's), so a complete
    store's memory-mapped copy can replace it (``CorpusSummary.share_pairs``)."""
    load = partial(load_source, source, engine)
    if kind == "tar":
        spec = canonical_spec(source.spec)
        got = scan_webdataset(spec, find_bad)
        return _summarised(spec, got, load, source, wds_stream, read_ref=read_member)
    if kind == "parquet":
        options = source.options()
        spec, columns = canonical_spec(source.spec), {k: options.get(k) for k in ("image_column", "caption_column")}
        scanned = scan_parquet(spec, **columns, find_bad=find_bad)
        read_ref = ParquetRows(columns["image_column"] or IMAGE_COLUMN["parquet"])
        return _summarised(spec, scanned, load, source, parquet_stream, read_ref=read_ref, **columns)
    got = scan_manifest(canonical_spec(source.spec), find_bad=find_bad)
    return _summarised(str(manifest_file(canonical_spec(source.spec))), got, load, source, jsonl_stream)


def _summarised(spec: str, got, load, source: CorpusSource, stream, **extra) -> CorpusSummary:
    """The summary of a format's scan ``got`` (its fingerprint, pairs, images and skipped messages),
    streamed again by ``stream``; ``extra``: the format's own summary fields."""
    summary = CorpusSummary(
        spec,
        got.fingerprint,
        got.pair_image,
        got.n_images,
        load=load,
        skipped=got.skipped,
        skip_bad=source.skip_bad,
        **extra,
    )
    return _streamed(summary, got, stream)


def _streamed(summary: CorpusSummary, scan, stream_of) -> CorpusSummary:
    """``summary`` streaming its corpus again from ``scan`` (``stream_of(scan)``: a format's
    ``corpora.window.Stream``), with the summary's ``pair_image`` in place of the scan's own."""
    scan.pair_image = None  # the summary's is the one the windows read
    summary.windows = partial(_summary_windows, summary, partial(stream_of, scan))
    return summary


def _summary_windows(summary: CorpusSummary, stream_of, shards: list[dict], need: set[int]):
    return window_pass(replace(stream_of(), pair_image=summary.pair_image), shards, need)
