"""``protosynth embed``: the embed stage alone, into a sharded store that a killed run resumes."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from .common import engine_config, run
from .help_text import (
    ADDRESS_HELP,
    CAPTION_COLUMN_HELP,
    CLIP_ARCH_HELP,
    CLIP_SPACE_HELP,
    CORPUS_HELP,
    CPUS_PER_WORKER_HELP,
    ENGINE_HELP,
    GPUS_PER_WORKER_HELP,
    IMAGE_COLUMN_HELP,
    IMAGE_ROOT_HELP,
    SKIP_BAD_HELP,
)


def embed(
    corpus: str = typer.Option("shapes", help=CORPUS_HELP),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_HELP),
    clip: str = typer.Option(
        "default",
        help="CLIP spec: default, small:DIR, local-dir:DIR, ARCH:PRETRAINED, or a checkpoint file with --clip-arch.",
    ),
    clip_arch: Optional[str] = typer.Option(None, help=CLIP_ARCH_HELP),
    clip_space: Optional[str] = typer.Option(None, help=CLIP_SPACE_HELP),
    out: Optional[Path] = typer.Option(None, help="Store folder (default: the cache, where distill finds it)."),
    shard_size: int = typer.Option(4096, help="Images per shard: the unit of work a kill can lose."),
    fp16: bool = typer.Option(False, help="Store float16 (half the disk); readers still get float32."),
    batch_size: int = typer.Option(
        256,
        help=(
            "Images (or captions) per encoder batch. Part of the store's key: another batch size can change "
            "the last bits of the numbers, so it makes its own store (distill reads the one of 256)."
        ),
    ),
    workers: Optional[int] = typer.Option(
        None,
        help="Local engine: DataLoader processes that load, preprocess and tokenise "
        "(default: 2 with a GPU encoder; on the CPU, the cores torch leaves idle, at most 2). "
        "Ray engine: actors that encode (default 1).",
    ),
    device: str = typer.Option("cpu"),
    engine: str = typer.Option("local", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    gpus_per_worker: float = typer.Option(0.0, help=GPUS_PER_WORKER_HELP),
    cpus_per_worker: float = typer.Option(1.0, help=CPUS_PER_WORKER_HELP),
) -> None:
    """Embed every caption-level pair of a corpus with a CLIP; prints the store folder. Run it again
    after a kill and only the unfinished shards are computed."""
    from protosynth.corpus import load_corpus
    from protosynth.embed import EmbedConfig, check_config, embed_corpus
    from protosynth.engine import check_engine, ray_session
    from protosynth.models.clip import load_clip
    from protosynth.runinfo import check_device

    # --workers: the Ray engine's actors, or the local engine's DataLoader processes
    eng = engine_config(engine, address, workers if engine == "ray" else None, gpus_per_worker, cpus_per_worker)
    local_workers = None if eng.on_ray else workers
    cfg = EmbedConfig(batch_size=batch_size, out=out, shard_size=shard_size, fp16=fp16, num_workers=local_workers)

    def go() -> Path:
        check_engine(eng)
        check_config(cfg)
        check_device(device)
        # --skip-bad on Ray decodes in Ray tasks at load: one session for that pass and the embedding
        with ray_session(eng) if eng.on_ray and skip_bad else nullcontext():
            corpus_ = load_corpus(
                corpus,
                image_root=image_root,
                skip_bad=skip_bad,
                image_column=image_column,
                caption_column=caption_column,
                engine=eng,
            )
            emb = embed_corpus(corpus_, load_clip(clip, device, arch=clip_arch, space=clip_space), cfg, eng)
        return emb.cache_path

    typer.echo(str(run(go, verb="embed")))
