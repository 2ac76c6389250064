"""protosynth's typer app. Each verb parses options and calls one library function."""

from __future__ import annotations

import os

# Without this, OpenMP threads spin-wait and torch runs tens of times slower whenever another
# process shares the CPU (measured: 12.3 s vs 0.17 s for the same render on 2 loaded cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path
from typing import Optional

import typer

from protosynth.configs import (
    CoresetConfig,
    DistillConfig,
    EmbedConfig,
    EngineConfig,
    ExportConfig,
    ModelsTrainConfig,
    PretrainConfig,
    RenderConfig,
    ReportConfig,
    TextChoiceConfig,
)

from . import baselines
from . import embed as embed_verb
from .common import comma_list, command_line, fail, run
from .evaluation import eval_app
from .options import READING_FLAGS, REQUIRED, argument, build, command, fields, flag

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Multimodal dataset distillation."
)
models_app = typer.Typer(no_args_is_help=True, help="Train the small models protosynth ships.")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
baselines.register(app)
embed_verb.register(app)

CORPUS = f"corpus {READING_FLAGS}"
TRAIN_CORPUS = READING_FLAGS


@command(
    models_app,
    "models train",
    [
        *fields(ModelsTrainConfig, "corpus"),
        flag("out", Path, REQUIRED, "Output folder (clip/, decoder/, metrics.json, provenance.json)."),
        *fields(ModelsTrainConfig, f"test {TRAIN_CORPUS} only quick seed"),
        flag("clip_steps", Optional[int], None, "CLIP optimisation steps."),
        flag("decoder_steps", Optional[int], None, "Decoder optimisation steps."),
        flag("decoder_minutes", Optional[float], None, "Stop decoder training after this many minutes (checkpointed)."),
        flag(
            "decoder_init_from",
            Optional[str],
            None,
            "Start the decoder from this decoder spec (e.g. default) instead of random weights.",
        ),
        flag("decoder_prediction", str, "v_prediction", "What the decoder UNet predicts: v_prediction or epsilon."),
        flag("decoder_coords", bool, False, "Give the decoder UNet (x, y) position input channels (CoordConv)."),
        flag(
            "decoder_lr_schedule",
            str,
            "constant",
            "Decoder lr after warm-up: constant, or cosine (decays to 0 at --decoder-steps).",
        ),
    ],
)
def models_train(out: Path, **values) -> None:
    """Train the small CLIP (open_clip) and the small unCLIP decoder (diffusers) on a corpus."""
    from protosynth.training.clip import ClipTrainConfig
    from protosynth.training.small_models import train_models

    quick, seed = values["quick"], values["seed"]
    clip_cfg = ClipTrainConfig(seed=seed)
    if quick:
        clip_cfg = ClipTrainConfig(arch="ps-tiny-clip", steps=60, batch_size=64, seed=seed, checkpoint_every=20)
    if values["clip_steps"] is not None:
        clip_cfg.steps = values["clip_steps"]
    cfg = build(ModelsTrainConfig, values, clip=clip_cfg, decoder=_decoder_settings(values))
    metrics = run(train_models, cfg, out, command=command_line(), verb="models train")
    typer.echo(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in metrics.items())})")


def _decoder_settings(values: dict) -> dict:
    """``ModelsTrainConfig.decoder`` of the ``--decoder-*`` flags (an unset one keeps the trainer's default)."""
    decoder: dict = {"seed": values["seed"]}
    for key, name in (
        ("steps", "decoder_steps"),
        ("max_minutes", "decoder_minutes"),
        ("init_from", "decoder_init_from"),
    ):
        if values[name] is not None:
            decoder[key] = values[name]
    decoder["prediction_type"] = values["decoder_prediction"]
    decoder["lr_schedule"] = values["decoder_lr_schedule"]
    decoder["coords"] = values["decoder_coords"]
    return decoder


@command(
    models_app,
    "models calibrate",
    [
        flag("models", Path, REQUIRED, "A `protosynth models train` output folder (clip/ and decoder/)."),
        *fields(
            ModelsTrainConfig,
            "corpus test image_root image_column caption_column",
            corpus={"help": "The corpus the models were trained on (its held-out part is measured)."},
            test={"help": "Held-out corpus spec (default: as `models train` picks it)."},
        ),
        flag("guidances", str, "1,1.5,2,3", "Classifier-free guidance scales to measure (comma-separated, each >= 1)."),
        flag(
            "steps", int, 50, "DDIM steps to render with (saved with the best scale: the best scale depends on them)."
        ),
        *fields(
            ModelsTrainConfig,
            "quick seed",
            quick={"help": "Measure on 32 held-out images, as --quick training does: for tests."},
        ),
    ],
)
def models_calibrate(models: Path, guidances: str, steps: int, **values) -> None:
    """Measure a trained decoder's held-out render fidelity at several guidance scales and save the
    best as its default (decoder/render_defaults.json); `models train` does this itself at the end."""
    from protosynth.training.small_models import calibrate_models

    try:
        scales = tuple(float(g) for g in comma_list("--guidances", guidances))
    except ValueError:
        fail(f"--guidances {guidances!r}: use numbers such as 1,1.5,2,3")
    decoder = {"seed": values["seed"], "guidances": scales, "render_steps": steps}
    cfg = build(ModelsTrainConfig, values, only="decoder", decoder=decoder)
    metrics = run(calibrate_models, cfg, models, command=command_line(), verb="models calibrate")
    dec = metrics["decoder"]
    typer.echo(
        f"{models / 'decoder'}: guidance {dec['guidance_scale']} (held-out top-1 "
        f"{dec['render_fidelity']['top1']}%); "
        + ", ".join(f"{g}: {f['top1']}%" for g, f in dec["guidance_sweep"].items())
    )


@command(
    models_app,
    "models pretrain-backbone",
    [
        *fields(PretrainConfig, "arch"),
        flag("out", Path, REQUIRED, "Output folder (config.json, model.safetensors, metrics.json, provenance.json)."),
        *fields(PretrainConfig, "epochs n_images seed"),
    ],
)
def models_pretrain_backbone(out: Path, **values) -> None:
    """Pretrain a small image backbone on the world's pretraining split (the ImageNet stand-in)."""
    from protosynth.training.backbone import pretrain_backbone

    cfg = build(PretrainConfig, values, holdout=min(1000, values["n_images"] // 10))
    metrics = run(pretrain_backbone, cfg, out, command=command_line(), verb="models pretrain-backbone")
    typer.echo(f"wrote {out} (held-out {metrics['holdout']})")


def parse_budgets(text: str) -> list[int]:
    """``500`` or ``100,200,500``."""
    try:
        return [int(b) for b in comma_list("--budget", text)]
    except ValueError:
        fail(f"--budget {text!r}: use a number or a comma-separated list such as 100,200,500")


# distill's flags without a default of their own: unset, the config's default (or the decoder's) holds
CHOSEN = "method caption candidates condition central text preset cluster_space kmeans prototype_norm prototype_order"
FP16_HELP = (
    "Use the float16 embedding store (the one `embed --fp16` writes; made here if missing) instead of the float32 one."
)


@command(
    app,
    "distill",
    [
        *fields(
            DistillConfig,
            f"budget {CORPUS} clip clip_arch clip_space",
            budget={"annotation": str, "default": "500"},
        ),
        *fields(EmbedConfig, "fp16", fp16={"help": FP16_HELP}),
        *fields(
            DistillConfig,
            f"decoder mode {CHOSEN} soft_labels soft_temperature seed out force device dtype",
            method={"annotation": Optional[str], "default": None},
            candidates={"annotation": Optional[int], "default": None},
        ),
        *fields(
            TextChoiceConfig, "val val_repeats val_epochs val_choose", val_choose={"annotation": str, "default": "text"}
        ),
        *fields(
            RenderConfig,
            "steps guidance noise_level negative_prompt size super_res_steps init strength batch_size clip_guidance",
        ),
        *fields(EngineConfig, "engine address workers gpus_per_worker cpus_per_worker"),
    ],
)
def distill(budget: str, **values) -> None:
    """Distil a corpus into BUDGET pairs on its CLIP prototypes: each prototype's nearest real pair
    (the default), or an image rendered for each (--method pds)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    budgets = parse_budgets(budget)
    # a setting of CHOSEN left unset keeps the config's default
    given = {name: value for name, value in values.items() if value is not None or name not in CHOSEN.split()}
    cfg = build(
        DistillConfig,
        given,
        budget=budgets[0],
        render=build(RenderConfig, values),
        embed=build(EmbedConfig, values, "fp16"),
        engine=build(EngineConfig, values),
    )
    choice = build(TextChoiceConfig, values, val_choose=tuple(comma_list("--val-choose", values["val_choose"])))
    from protosynth.choose import distill_on_val  # torch and open_clip: seconds, after the flags parsed

    for path in run(distill_on_val, cfg, choice, budgets, command=command_line(), verb="distill"):
        typer.echo(f"wrote {path}")


@command(
    app,
    "coreset",
    fields(
        CoresetConfig,
        f"method budget {CORPUS} clip seed out force device forgetting_epochs keep",
        method={"default": REQUIRED},
    ),
)
def coreset(**values) -> None:
    """Select BUDGET real pairs (a coreset baseline) and write them in the distilled-set format."""
    from protosynth.coreset import build_coreset

    cfg = build(CoresetConfig, values)
    typer.echo(f"wrote {run(build_coreset, cfg, command=command_line(), verb='coreset')}")


@app.command("verify")
def verify(
    folder: Path = typer.Argument(
        ..., help="A distilled set (manifest.json), an embedding store or a corpus index (index.json)."
    ),
) -> None:
    """Check every file of a distilled set, an embedding store or a corpus index against the sha256
    (and, for a store, the shape) it records: one line per problem, then exit 2; "ok: N files checked" if none."""
    from protosynth.sets.verify import verify as verify_folder

    report = run(verify_folder, folder, verb="verify")
    for problem in report.problems:
        typer.echo(str(problem))
    if report.problems:
        fail(f"{folder}: {len(report.problems)} problem(s) in this {report.kind}")
    typer.echo(f"ok: {report.checked} files checked")


@command(
    app,
    "export",
    fields(ExportConfig, "to out force", to={"default": REQUIRED}, out={"default": REQUIRED}),
    (argument("folder", Path, ..., "A distilled set folder."),),
)
def export(folder: Path, **values) -> None:
    """Write a set as a webdataset shard or a parquet file (image PNG bytes, caption, members)."""
    from protosynth.sets.export import export_set

    typer.echo(f"wrote {run(export_set, folder, build(ExportConfig, values), verb='export')}")


@command(
    app,
    "report",
    fields(ReportConfig, "out force members samples", out={"default": REQUIRED}),
    (argument("folders", list[Path], ..., "Set folders and compare-baselines output folders."),),
)
def report(folders: list[Path], **values) -> None:
    """Write one static HTML page showing sets (images, captions, members) and comparisons."""
    from protosynth.sets.report import build_report

    typer.echo(f"wrote {run(build_report, folders, build(ReportConfig, values), verb='report')}")


def main() -> None:
    """Console entry: usage errors (a bad option value, a missing option) become one line, exit 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors, through typer's public base class
        message, ctx = exc.format_message(), getattr(exc, "ctx", None)
        if ctx is not None and (not message or message == ctx.get_help()):
            # a group called without a verb: its help (rich help is printed as the error is raised)
            typer.echo(message, err=True, nl=bool(message))
            sys.exit(0)
        typer.echo(f"error: {message}".splitlines()[0], err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
