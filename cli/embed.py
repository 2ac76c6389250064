"""``protosynth embed``: the embed stage alone, into a sharded store that a killed run resumes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import run


def embed(
    corpus: str = typer.Option("shapes", help="Corpus spec: shapes[:split][,n=..] or a .jsonl manifest."),
    clip: str = typer.Option("default", help="CLIP spec: default, small:DIR, local-dir:DIR, ARCH:PRETRAINED."),
    out: Optional[Path] = typer.Option(None, help="Store folder (default: the cache, where distill finds it)."),
    shard_size: int = typer.Option(4096, help="Images per shard: the unit of work a kill can lose."),
    fp16: bool = typer.Option(False, help="Store float16 (half the disk); readers still get float32."),
    batch_size: int = typer.Option(256, help="Images (or captions) per encoder batch."),
    workers: Optional[int] = typer.Option(None, help="DataLoader processes that load, preprocess and tokenise "
                                          "(default: 2 with a GPU encoder; on the CPU, the cores torch leaves idle, at most 2)."),
    device: str = typer.Option("cpu"),
) -> None:
    """Embed every caption-level pair of a corpus with a CLIP; prints the store folder. Run it again
    after a kill and only the unfinished shards are computed."""
    from protosynth.corpus import load_corpus
    from protosynth.embed import EmbedConfig, check_config, embed_corpus
    from protosynth.models.clip import load_clip
    from protosynth.runinfo import check_device

    cfg = EmbedConfig(batch_size=batch_size, out=out, shard_size=shard_size, fp16=fp16, num_workers=workers)

    def go() -> Path:
        check_config(cfg)
        check_device(device)
        emb = embed_corpus(load_corpus(corpus), load_clip(clip, device), cfg)
        return emb.cache_path

    typer.echo(str(run(go)))
