"""``protosynth embed``: the embed stage alone, into a sharded store that a killed run resumes."""

from __future__ import annotations

from pathlib import Path

import typer

from protosynth.configs import DistillConfig, EmbedConfig, EngineConfig
from protosynth.corpora.source import CorpusSource

from .common import run
from .options import READING_FLAGS, build, command, fields, flag

WORKERS_HELP = (
    "Local engine: DataLoader processes that load, preprocess and tokenise "
    "(default: 2 with a GPU encoder; on the CPU, the cores torch leaves idle, at most 2). "
    "Ray engine: actors that encode (default 1)."
)
CLIP_HELP = "CLIP spec: default, small:DIR, local-dir:DIR, ARCH:PRETRAINED, or a checkpoint file with --clip-arch."


def register(app: typer.Typer) -> None:
    """``embed``: corpus and CLIP flags as distill has them, the store's, and the engine's."""
    flags = [
        *fields(CorpusSource, f"corpus {READING_FLAGS}"),
        flag("clip", str, "default", CLIP_HELP),
        *fields(DistillConfig, "clip_arch clip_space"),
        *fields(EmbedConfig, "out shard_size fp16 batch_size workers", workers={"help": WORKERS_HELP}),
        flag("device", str, "cpu"),
        *fields(EngineConfig, "engine address gpus_per_worker cpus_per_worker"),
    ]
    command(app, "embed", flags)(embed)


def embed(**values) -> None:
    """Embed every caption-level pair of a corpus with a CLIP; prints the store folder. Run it again
    after a kill and only the unfinished shards are computed."""
    from protosynth.corpus import scan_source
    from protosynth.embed import check_config, embed_corpus
    from protosynth.engines.base import make_engine
    from protosynth.engines.connect import check_engine
    from protosynth.models.clip import load_clip
    from protosynth.util.runinfo import check_device

    # --workers: the Ray engine's actors, or the local engine's DataLoader processes
    on_ray = values["engine"] == "ray"
    eng = build(EngineConfig, values, workers=values["workers"] if on_ray else None)
    store = "batch_size out shard_size fp16"
    cfg = build(EmbedConfig, values, store, num_workers=None if on_ray else values["workers"])
    source = build(CorpusSource, values)

    def go() -> Path:
        check_engine(eng)
        check_config(cfg)
        check_device(values["device"])
        # one engine session for the load (--skip-bad's check runs on the engine) and the embedding
        engine = make_engine(eng)
        with engine.session():
            corpus_ = scan_source(source, engine=engine)  # JSONL, parquet or tar shards stream: never loaded whole
            clip = load_clip(values["clip"], values["device"], arch=values["clip_arch"], space=values["clip_space"])
            emb = embed_corpus(corpus_, clip, cfg, engine)
        return emb.cache_path

    typer.echo(str(run(go, verb="embed")))
