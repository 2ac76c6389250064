"""The optimisation-baseline verbs: ``buffer``, ``baseline`` and ``compare-baselines``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import comma_list, command_line, run
from .help_text import (
    BUFFER_CAPTION_COLUMN_HELP,
    BUFFER_IMAGE_COLUMN_HELP,
    BUFFER_IMAGE_ROOT_HELP,
    BUFFER_SKIP_BAD_HELP,
    CAPTION_COLUMN_HELP,
    CAPTION_COLUMN_TEST_HELP,
    CORPUS_HELP,
    IMAGE_COLUMN_HELP,
    IMAGE_COLUMN_TEST_HELP,
    IMAGE_ROOT_HELP,
    IMAGE_ROOT_TEST_HELP,
    SKIP_BAD_HELP,
)

# the same list as protosynth.baselines.compare.ALL_METHODS (not imported: --help stays fast; a test checks)
ALL_METHODS = "random,herding,kcenter,forgetting,pds,mtt-vl,lors,amd,repblend,full"


def buffer(
    corpus: str = typer.Option("shapes", help="Corpus spec the experts train on (its whole train split)."),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_HELP),
    protocol: str = typer.Option("small", help="Retrieval protocol whose model the experts are: small or nfnet-bert."),
    experts: int = typer.Option(4, help="Number of expert trajectories."),
    epochs: int = typer.Option(3, help="Epochs per expert (a snapshot after each)."),
    out: Path = typer.Option(..., help="Buffer folder (resumable: run again to finish an interrupted buffer)."),
    heads_only: bool = typer.Option(
        False, "--heads-only", help="Frozen backbone; train and save only the projection heads (RepBlend)."
    ),
    lr: float = typer.Option(0.1, help="SGD learning rate (no momentum, no weight decay)."),
    batch_size: int = typer.Option(128),
    max_pairs: Optional[int] = typer.Option(None, help="Train on a seeded subset of this many pairs (smoke runs)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Train expert trajectories for the trajectory-matching baselines."""
    from protosynth.baselines.buffer import BufferConfig, build_buffer

    cfg = BufferConfig(
        corpus=corpus,
        protocol=protocol,
        experts=experts,
        epochs=epochs,
        heads_only=heads_only,
        lr=lr,
        batch_size=batch_size,
        max_pairs=max_pairs,
        seed=seed,
        out=out,
        device=device,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )
    typer.echo(f"wrote {run(build_buffer, cfg, verb='buffer')}")


def baseline(
    method: str = typer.Option(..., help="mtt-vl, lors, amd or repblend."),
    budget: int = typer.Option(100, help="Synthetic pairs (LoRS-family methods store budget-1 pairs plus S)."),
    buffer: Path = typer.Option(..., help="A folder written by `protosynth buffer` (--heads-only for repblend)."),
    image_root: Optional[Path] = typer.Option(None, help=BUFFER_IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=BUFFER_SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=BUFFER_IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=BUFFER_CAPTION_COLUMN_HELP),
    out: Optional[Path] = typer.Option(
        None, help="Output folder (default: distilled/<corpus>-<method>-b<budget>-s<seed>)."
    ),
    force: bool = typer.Option(False, help="Replace an earlier set at --out."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    preset: Optional[str] = typer.Option(
        None, help="Preset family: flickr, coco or world (default: world for the built-in world, else flickr)."
    ),
    quick: bool = typer.Option(False, help="World preset with 10 iterations (a smoke run)."),
    iterations: Optional[int] = typer.Option(None),
    syn_steps: Optional[int] = typer.Option(None),
    expert_epochs: Optional[int] = typer.Option(None),
    max_start_epoch: Optional[int] = typer.Option(None),
    batch_syn: Optional[int] = typer.Option(None),
    lr_img: Optional[float] = typer.Option(None),
    lr_txt: Optional[float] = typer.Option(None),
    lr_lr: Optional[float] = typer.Option(None),
    lr_init: Optional[float] = typer.Option(None),
    lr_space: Optional[str] = typer.Option(
        None, help="How the inner lrs are learned: linear (published) or log (steps by a factor; the world preset)."
    ),
    lr_sim: Optional[float] = typer.Option(None),
    rank: Optional[int] = typer.Option(None),
    alpha: Optional[float] = typer.Option(None),
    grad_mode: Optional[str] = typer.Option(None, help="unroll, constant or first-order (default: the method's)."),
    merged: Optional[bool] = typer.Option(
        None,
        "--merged/--separate",
        help="Matching-loss normalisation: both modalities together, or per modality (default).",
    ),
    train_mode: Optional[bool] = typer.Option(
        None,
        "--train-student/--eval-student",
        help="The inner student in train mode, dropout on (official presets), or eval mode (world).",
    ),
    variant: Optional[str] = typer.Option(
        None, help="A named departure from the preset: intended-temperature (MTT-VL's inner temperature 0.07)."
    ),
    clip: str = typer.Option(
        "default", help="amd: the CLIP whose joint embeddings the prototype initialisation clusters."
    ),
) -> None:
    """Distil a set with an optimisation baseline (trajectory matching on a buffer)."""
    from protosynth.baselines.presets import BaselineConfig
    from protosynth.baselines.run import distill_baseline

    cfg = BaselineConfig(
        method=method,
        budget=budget,
        buffer=buffer,
        out=out,
        force=force,
        seed=seed,
        device=device,
        family=preset,
        quick=quick,
        iterations=iterations,
        syn_steps=syn_steps,
        expert_epochs=expert_epochs,
        max_start_epoch=max_start_epoch,
        batch_syn=batch_syn,
        lr_img=lr_img,
        lr_txt=lr_txt,
        lr_lr=lr_lr,
        lr_init=lr_init,
        lr_space=lr_space,
        lr_sim=lr_sim,
        rank=rank,
        alpha=alpha,
        grad_mode=grad_mode,
        merged=merged,
        train_mode=train_mode,
        variant=variant,
        clip=clip,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )
    typer.echo(f"wrote {run(distill_baseline, cfg, command=command_line(), verb='baseline')}")


def compare_baselines(
    budget: int = typer.Option(100),
    methods: str = typer.Option(ALL_METHODS, help="Comma-separated methods."),
    corpus: str = typer.Option("shapes", help=CORPUS_HELP),
    test: Optional[str] = typer.Option(
        None, help="Test corpus spec (default: the world's test split; another corpus needs one)."
    ),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_TEST_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP + " Not for --test: a test split is read whole."),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_TEST_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_TEST_HELP),
    protocol: str = typer.Option("small"),
    repeats: int = typer.Option(5),
    out: Path = typer.Option(
        Path("runs/compare"), help="Work and output folder (compare.json/.md/.png); reruns resume."
    ),
    quick: bool = typer.Option(False, help="Smoke-sized run (see README): minutes, not a result."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    eval_epochs: Optional[int] = typer.Option(None, help="Evaluation epochs per set (default: the protocol's)."),
    experts: int = typer.Option(4),
    expert_epochs: int = typer.Option(3),
    iterations: Optional[int] = typer.Option(None, help="Matching iterations (default: each method's preset)."),
) -> None:
    """Make every method's set at one budget, evaluate all under one protocol, write the table."""
    from protosynth.baselines.compare import CompareConfig, markdown
    from protosynth.baselines.compare import compare_baselines as run_compare

    cfg = CompareConfig(
        budget=budget,
        methods=tuple(comma_list("--methods", methods)),
        corpus=corpus,
        protocol=protocol,
        repeats=repeats,
        out=out,
        quick=quick,
        seed=seed,
        device=device,
        eval_epochs=eval_epochs,
        experts=experts,
        expert_epochs=expert_epochs,
        iterations=iterations,
        test=test,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )
    doc = run(run_compare, cfg, command=command_line(), verb="compare-baselines")
    typer.echo(markdown(doc))
    typer.echo(f"wrote {out / 'compare.json'}, compare.md, compare.png")
