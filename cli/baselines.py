"""The optimisation-baseline verbs: ``buffer``, ``baseline`` and ``compare-baselines``."""

from __future__ import annotations

from typing import Optional

import typer

from protosynth.baselines.configs import ALL_METHODS as METHODS
from protosynth.baselines.configs import BaselineConfig, BufferConfig, CompareConfig

from .common import comma_list, command_line, fail, run
from .options import READING_FLAGS, REQUIRED, build, command, fields

# compare-baselines' default --methods: protosynth.baselines.compare.ALL_METHODS (a test checks)
ALL_METHODS = ",".join(METHODS)
CORPUS = READING_FLAGS
# the optimisation knobs a baseline preset sets unless given (baseline --help lists them bare)
KNOBS = "iterations syn_steps expert_epochs max_start_epoch batch_syn lr_img lr_txt lr_lr lr_init lr_space lr_sim"


def register(app: typer.Typer) -> None:
    """The three verbs, their flags the fields of their configs."""
    buffer_flags = fields(
        BufferConfig,
        f"corpus {CORPUS} protocol experts epochs out heads_only lr batch_size max_pairs seed device",
        experts={"default": 4},
        epochs={"default": 3},
        out={"default": REQUIRED},
        heads_only={"decls": ("--heads-only",)},
    )
    command(app, "buffer", buffer_flags)(buffer)
    baseline_flags = fields(
        BaselineConfig,
        f"method budget buffer {CORPUS} out force seed device preset quick checkpoint_every {KNOBS} rank alpha "
        "grad_mode merged train_mode variant clip",
        method={"default": REQUIRED},
        buffer={"default": REQUIRED},
        merged={"decls": ("--merged/--separate",)},
        train_mode={"decls": ("--train-student/--eval-student",)},
    )
    command(app, "baseline", baseline_flags)(baseline)
    compare_flags = fields(
        CompareConfig,
        f"budget methods corpus test {CORPUS} protocol repeats out quick seed device eval_epochs experts "
        "expert_epochs iterations seeds recipes texts",
        methods={"annotation": str, "default": ALL_METHODS},
        seeds={"annotation": Optional[str], "default": None},
        recipes={"annotation": str, "default": "protocol"},
        texts={"annotation": str, "default": "auto"},
    )
    command(app, "compare-baselines", compare_flags)(compare_baselines)


def buffer(**values) -> None:
    """Train expert trajectories for the trajectory-matching baselines."""
    from protosynth.baselines.buffer import build_buffer

    typer.echo(f"wrote {run(build_buffer, build(BufferConfig, values), verb='buffer')}")


def baseline(**values) -> None:
    """Distil a set with an optimisation baseline (trajectory matching on a buffer)."""
    from protosynth.baselines.run import distill_baseline

    cfg = build(BaselineConfig, values)
    typer.echo(f"wrote {run(distill_baseline, cfg, command=command_line(), verb='baseline')}")


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``0,1,2``; None: the one ``--seed``."""
    if text is None:
        return None
    try:
        return tuple(int(s) for s in comma_list("--seeds", text))
    except ValueError:
        fail(f"--seeds {text!r}: use comma-separated whole numbers such as 0,1,2")


def compare_baselines(methods: str, seeds: str | None, recipes: str, texts: str, **values) -> None:
    """Make every method's set at one budget, evaluate all under one protocol, write the table."""
    from protosynth.baselines.compare import compare_baselines as run_compare
    from protosynth.baselines.compare import markdown

    cfg = build(
        CompareConfig,
        values,
        methods=tuple(comma_list("--methods", methods)),
        seeds=parse_seeds(seeds),
        recipes=tuple(comma_list("--recipes", recipes)),
        texts=tuple(comma_list("--texts", texts)),
    )
    doc = run(run_compare, cfg, command=command_line(), verb="compare-baselines")
    typer.echo(markdown(doc))
    typer.echo(f"wrote {cfg.out / 'compare.json'}, compare.md, compare.png")
