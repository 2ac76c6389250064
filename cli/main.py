"""protosynth's typer app. Each verb parses options and calls one library function."""

from __future__ import annotations

import os

# Without this, OpenMP threads spin-wait and torch runs tens of times slower whenever another
# process shares the CPU (measured: 12.3 s vs 0.17 s for the same render on 2 loaded cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from . import baselines
from .common import comma_list, command_line, engine_config, fail, run
from .embed import embed as embed_verb
from .evaluation import eval_app
from .help_text import (
    ADDRESS_HELP,
    CAPTION_COLUMN_HELP,
    CAPTION_COLUMN_TEST_HELP,
    CLIP_ARCH_HELP,
    CLIP_SPACE_HELP,
    CORPUS_HELP,
    CPUS_PER_WORKER_HELP,
    ENGINE_HELP,
    GPUS_PER_WORKER_HELP,
    IMAGE_COLUMN_HELP,
    IMAGE_COLUMN_TEST_HELP,
    IMAGE_ROOT_HELP,
    IMAGE_ROOT_TEST_HELP,
    SKIP_BAD_HELP,
    SKIP_BAD_TEST_HELP,
)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Multimodal dataset distillation."
)
models_app = typer.Typer(no_args_is_help=True, help="Train the small models protosynth ships.")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.command("buffer")(baselines.buffer)
app.command("baseline")(baselines.baseline)
app.command("compare-baselines")(baselines.compare_baselines)
app.command("embed")(embed_verb)


@models_app.command("train")
def models_train(
    corpus: str = typer.Option(
        "shapes",
        help=(
            "Corpus spec: shapes[:split][,n=..,size=..], a .jsonl, Karpathy .json or .csv file, .tar shards, "
            ".parquet files or a Hugging Face dataset (hf:NAME[:SPLIT] or a save_to_disk folder)."
        ),
    ),
    out: Path = typer.Option(..., help="Output folder (clip/, decoder/, metrics.json, provenance.json)."),
    test: Optional[str] = typer.Option(
        None, help="Held-out corpus spec for metrics (default: world test split / 10% of a file corpus)."
    ),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_TEST_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_TEST_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_TEST_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_TEST_HELP),
    only: str = typer.Option("all", help="all, clip or decoder (decoder needs OUT/clip)."),
    quick: bool = typer.Option(False, help="Tiny models, a minute of training: for tests."),
    seed: int = typer.Option(0),
    clip_steps: Optional[int] = typer.Option(None, help="CLIP optimisation steps."),
    decoder_steps: Optional[int] = typer.Option(None, help="Decoder optimisation steps."),
    decoder_minutes: Optional[float] = typer.Option(
        None, help="Stop decoder training after this many minutes (checkpointed)."
    ),
    decoder_init_from: Optional[str] = typer.Option(
        None, help="Start the decoder from this decoder spec (e.g. default) instead of random weights."
    ),
    decoder_prediction: str = typer.Option(
        "v_prediction", help="What the decoder UNet predicts: v_prediction or epsilon."
    ),
    decoder_coords: bool = typer.Option(
        False, help="Give the decoder UNet (x, y) position input channels (CoordConv)."
    ),
    decoder_lr_schedule: str = typer.Option(
        "constant", help="Decoder lr after warm-up: constant, or cosine (decays to 0 at --decoder-steps)."
    ),
) -> None:
    """Train the small CLIP (open_clip) and the small unCLIP decoder (diffusers) on a corpus."""
    from protosynth.training.clip import ClipTrainConfig
    from protosynth.training.small_models import ModelsTrainConfig, train_models

    if only not in ("all", "clip", "decoder"):
        fail(f"--only {only!r}: use all, clip or decoder")
    clip_cfg = ClipTrainConfig(seed=seed)
    decoder: dict = {"seed": seed}
    if quick:
        clip_cfg = ClipTrainConfig(arch="ps-tiny-clip", steps=60, batch_size=64, seed=seed, checkpoint_every=20)
    if clip_steps is not None:
        clip_cfg.steps = clip_steps
    if decoder_steps is not None:
        decoder["steps"] = decoder_steps
    if decoder_minutes is not None:
        decoder["max_minutes"] = decoder_minutes
    if decoder_init_from is not None:
        decoder["init_from"] = decoder_init_from
    decoder["prediction_type"] = decoder_prediction
    decoder["lr_schedule"] = decoder_lr_schedule
    decoder["coords"] = decoder_coords
    cfg = ModelsTrainConfig(
        corpus=corpus,
        test=test,
        only=only,
        seed=seed,
        quick=quick,
        clip=clip_cfg,
        decoder=decoder,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )
    metrics = run(train_models, cfg, out, command=command_line(), verb="models train")
    typer.echo(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in metrics.items())})")


@models_app.command("calibrate")
def models_calibrate(
    models: Path = typer.Option(..., help="A `protosynth models train` output folder (clip/ and decoder/)."),
    corpus: str = typer.Option("shapes", help="The corpus the models were trained on (its held-out part is measured)."),
    test: Optional[str] = typer.Option(None, help="Held-out corpus spec (default: as `models train` picks it)."),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_TEST_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_TEST_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_TEST_HELP),
    guidances: str = typer.Option(
        "1,1.5,2,3", help="Classifier-free guidance scales to measure (comma-separated, each >= 1)."
    ),
    steps: int = typer.Option(
        50, help="DDIM steps to render with (saved with the best scale: the best scale depends on them)."
    ),
    quick: bool = typer.Option(False, help="Measure on 32 held-out images, as --quick training does: for tests."),
    seed: int = typer.Option(0),
) -> None:
    """Measure a trained decoder's held-out render fidelity at several guidance scales and save the
    best as its default (decoder/render_defaults.json); `models train` does this itself at the end."""
    from protosynth.training.small_models import ModelsTrainConfig, calibrate_models

    try:
        scales = tuple(float(g) for g in comma_list("--guidances", guidances))
    except ValueError:
        fail(f"--guidances {guidances!r}: use numbers such as 1,1.5,2,3")
    cfg = ModelsTrainConfig(
        corpus=corpus,
        test=test,
        only="decoder",
        seed=seed,
        quick=quick,
        decoder={"seed": seed, "guidances": scales, "render_steps": steps},
        image_root=image_root,
        image_column=image_column,
        caption_column=caption_column,
    )
    metrics = run(calibrate_models, cfg, models, command=command_line(), verb="models calibrate")
    dec = metrics["decoder"]
    typer.echo(
        f"{models / 'decoder'}: guidance {dec['guidance_scale']} (held-out top-1 "
        f"{dec['render_fidelity']['top1']}%); "
        + ", ".join(f"{g}: {f['top1']}%" for g, f in dec["guidance_sweep"].items())
    )


@models_app.command("pretrain-backbone")
def models_pretrain_backbone(
    arch: str = typer.Option("ps-nfnet", help="Small architecture: ps-nfnet, ps-resnet, ps-regnet or ps-vit."),
    out: Path = typer.Option(
        ..., help="Output folder (config.json, model.safetensors, metrics.json, provenance.json)."
    ),
    epochs: int = typer.Option(15),
    n_images: int = typer.Option(10_000, help="Images of the world's pretraining split."),
    seed: int = typer.Option(0),
) -> None:
    """Pretrain a small image backbone on the world's pretraining split (the ImageNet stand-in)."""
    from protosynth.training.backbone import PretrainConfig, pretrain_backbone

    if epochs < 1 or n_images < 2:
        fail("--epochs must be at least 1 and --n-images at least 2")
    cfg = PretrainConfig(arch=arch, epochs=epochs, n_images=n_images, holdout=min(1000, n_images // 10), seed=seed)
    metrics = run(pretrain_backbone, cfg, out, command=command_line(), verb="models pretrain-backbone")
    typer.echo(f"wrote {out} (held-out {metrics['holdout']})")


def parse_budgets(text: str) -> list[int]:
    """``500`` or ``100,200,500``."""
    try:
        return [int(b) for b in comma_list("--budget", text)]
    except ValueError:
        fail(f"--budget {text!r}: use a number or a comma-separated list such as 100,200,500")


@app.command()
def distill(
    budget: str = typer.Option(
        "500", help="Synthetic pairs; a list such as 100,200,500 writes one set per budget from one embedding pass."
    ),
    corpus: str = typer.Option("shapes", help=CORPUS_HELP),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_HELP),
    clip: Optional[str] = typer.Option(
        None,
        help=(
            "CLIP spec: default, small:DIR, local-dir:DIR, ARCH:PRETRAINED (e.g. ViT-L-14-quickgelu:openai) or a "
            "checkpoint file with --clip-arch. Default: the CLIP the decoder expects."
        ),
    ),
    clip_arch: Optional[str] = typer.Option(None, help=CLIP_ARCH_HELP),
    clip_space: Optional[str] = typer.Option(None, help=CLIP_SPACE_HELP),
    fp16: bool = typer.Option(
        False,
        help="Use the float16 embedding store (the one `embed --fp16` writes; "
        "made here if missing) instead of the float32 one.",
    ),
    decoder: str = typer.Option(
        "default",
        help="Decoder spec: default, small:DIR, sd-unclip-small, sd-unclip-h, karlo, or a save_pretrained folder.",
    ),
    mode: str = typer.Option("matched", help="Prototype mode: matched (PDS), joint, image or text."),
    method: Optional[str] = typer.Option(
        None,
        help=(
            "pds (default: render each prototype) or select (keep each prototype's nearest real member pair; nothing "
            "rendered)."
        ),
    ),
    caption: Optional[str] = typer.Option(
        None,
        help=(
            "Caption of each render: prototype (the real caption nearest the text prototype, as PDS), render (the "
            "member caption the CLIP scores highest against the render) or, with --init nearest, start (the "
            "caption of the member image the render started from). pairs.jsonl records the first two."
        ),
    ),
    candidates: Optional[int] = typer.Option(
        None,
        help=(
            "Render N images per prototype and keep the one whose CLIP embedding is nearest its prototype (render "
            "cost grows N-fold)."
        ),
    ),
    text: Optional[str] = typer.Option(
        None,
        help=(
            "How a learner reads each pair's text, recorded in the manifest and followed by `eval retrieval`: "
            "captions (its one caption), members (the mean of the captions of the real pairs its prototype "
            "summarises) or image (the mean of every caption of the member image a render starts from), in the "
            "learner's text space, or prototype (the stored text prototype, as the PDS authors' evaluation) "
            "(default: members up to 100 pairs, image above; from noise: members up to 200, captions above)."
        ),
    ),
    preset: Optional[str] = typer.Option(
        None,
        help=(
            "pds-published: PDS as its authors' code runs it (raw-row MiniBatchKMeans, plain-mean prototypes "
            "ordered by alignment, renders from noise with the prototype's caption, --text prototype); it fills "
            "the options below and refuses a conflicting one."
        ),
    ),
    cluster_space: Optional[str] = typer.Option(
        None, help="Rows k-means clusters: unit (default: L2-normalised) or raw (the PDS code)."
    ),
    kmeans: Optional[str] = typer.Option(
        None, help="faiss (default) or minibatch (sklearn MiniBatchKMeans, batch 10000, 20 inits: the PDS code)."
    ),
    prototype_norm: Optional[str] = typer.Option(
        None,
        help=(
            "members (default: the members' mean direction at their mean raw norm) or mean (the plain mean of "
            "the raw members; an empty match keeps the k-means centres: the PDS code)."
        ),
    ),
    prototype_order: Optional[str] = typer.Option(
        None, help="matching (default: image cluster order) or alignment (image-text cosine, highest first: PDS)."
    ),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(
        None,
        help=(
            "Output folder (default: distilled/<corpus>[-select]-<mode>-b<budget>-s<seed>); with several budgets, the"
            " folder holding one set per budget."
        ),
    ),
    force: bool = typer.Option(False, help="Replace an earlier distilled set at --out (never another folder)."),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option(
        "auto", help="Decoder weights: auto (float16 on CUDA for the published decoders), float32, float16, bfloat16."
    ),
    steps: Optional[int] = typer.Option(
        None,
        help=(
            "Denoising steps per image (default: the decoder's; 100 for Stable unCLIP as in PDS, 50 for the small "
            "decoder)."
        ),
    ),
    guidance: Optional[float] = typer.Option(
        None,
        help=(
            "Classifier-free guidance scale (default: 5 for Stable unCLIP, 8 for Karlo; the small decoder's measured "
            "one in its render_defaults.json, else 3)."
        ),
    ),
    noise_level: Optional[int] = typer.Option(
        None,
        help=(
            "Noise augmentation of the image embedding, 0-999 (default: 10 for Stable unCLIP, 0 for the small decoder)."
        ),
    ),
    negative_prompt: Optional[str] = typer.Option(
        None, help="Stable unCLIP negative prompt (default: 'text, watermark'; '' for none)."
    ),
    size: Optional[int] = typer.Option(
        None,
        help="Resize renders to SIZE x SIZE (default: 224 for the published decoders, the small decoder's own 32).",
    ),
    super_res_steps: Optional[int] = typer.Option(None, help="Karlo super-resolution steps (default 7)."),
    init: Optional[str] = typer.Option(
        None,
        help="noise, or nearest (small decoder): start from the prototype's nearest member image "
        "(default: the decoder's; noise for the published ones).",
    ),
    strength: Optional[float] = typer.Option(
        None, help="With --init nearest: how far to noise the start image, (0, 1] (default: the decoder's)."
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        help=(
            "Images rendered per batch (default: 100 for the small decoder, 4 for the published ones). Each image has "
            "its own seed, but another batch size may change a pixel by a level; the manifest records it."
        ),
    ),
    clip_guidance: Optional[float] = typer.Option(
        None,
        help=(
            "Small decoder: CLIP-guided sampling step size (pixel RMS) of each x0 nudge toward the prototype (default"
            " 0.01); 0 = the decoder alone (pure PDS)."
        ),
    ),
    engine: str = typer.Option("local", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    workers: Optional[int] = typer.Option(
        None, help="With --engine ray: actors that embed and actors that render (default 1)."
    ),
    gpus_per_worker: float = typer.Option(0.0, help=GPUS_PER_WORKER_HELP),
    cpus_per_worker: float = typer.Option(1.0, help=CPUS_PER_WORKER_HELP),
) -> None:
    """Distil a corpus into BUDGET synthetic pairs with prototype-guided synthesis (PDS)."""
    import logging

    from protosynth.distill import DistillConfig, distill_budgets
    from protosynth.embed import EmbedConfig
    from protosynth.render import RenderConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    budgets = parse_budgets(budget)
    rcfg = RenderConfig(
        steps=steps,
        guidance_scale=guidance,
        noise_level=noise_level,
        negative_prompt=negative_prompt,
        size=size,
        super_res_steps=super_res_steps,
        batch_size=batch_size,
        init=init,
        strength=strength,
        seed=seed,
        clip_guidance=clip_guidance,
    )
    cfg = DistillConfig(
        budget=budgets[0],
        corpus=corpus,
        clip=clip,
        clip_arch=clip_arch,
        clip_space=clip_space,
        decoder=decoder,
        mode=mode,
        seed=seed,
        out=out,
        force=force,
        device=device,
        dtype=dtype,
        render=rcfg,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
        embed=EmbedConfig(fp16=fp16),
        engine=engine_config(engine, address, workers, gpus_per_worker, cpus_per_worker),
    )
    chosen = {
        "method": method,
        "caption": caption,
        "candidates": candidates,
        "text": text,
        "preset": preset,
        "cluster_space": cluster_space,
        "kmeans": kmeans,
        "prototype_norm": prototype_norm,
        "prototype_order": prototype_order,
    }
    cfg = replace(cfg, **{name: value for name, value in chosen.items() if value is not None})
    for path in run(distill_budgets, cfg, budgets, command=command_line(), verb="distill"):
        typer.echo(f"wrote {path}")


@app.command()
def coreset(
    method: str = typer.Option(..., help="random, herding, kcenter or forgetting."),
    budget: int = typer.Option(500, help="Number of real pairs to keep."),
    corpus: str = typer.Option("shapes", help=CORPUS_HELP),
    image_root: Optional[Path] = typer.Option(None, help=IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=CAPTION_COLUMN_HELP),
    clip: str = typer.Option("default", help="CLIP for herding/k-center features and the stored embeddings."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(
        None, help="Output folder (default: distilled/<corpus>-coreset-<method>-b<budget>-s<seed>)."
    ),
    force: bool = typer.Option(False, help="Replace an earlier set at --out."),
    device: str = typer.Option("cpu"),
    forgetting_epochs: int = typer.Option(5, help="forgetting: epochs of training on all pairs to count events."),
    keep: str = typer.Option("most", help="forgetting: keep the most- or least-forgotten pairs."),
) -> None:
    """Select BUDGET real pairs (a coreset baseline) and write them in the distilled-set format."""
    from protosynth.coreset import CoresetConfig, build_coreset

    cfg = CoresetConfig(
        method=method,
        budget=budget,
        corpus=corpus,
        clip=clip,
        seed=seed,
        out=out,
        force=force,
        device=device,
        forgetting_epochs=forgetting_epochs,
        keep=keep,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )
    typer.echo(f"wrote {run(build_coreset, cfg, command=command_line(), verb='coreset')}")


@app.command("verify")
def verify(
    folder: Path = typer.Argument(..., help="A distilled set (manifest.json) or an embedding store (index.json)."),
) -> None:
    """Check every file of a distilled set or an embedding store against the sha256 (and, for a
    store, the shape) it records: one line per problem, then exit 2; "ok: N files checked" if none."""
    from protosynth.verify import verify as verify_folder

    report = run(verify_folder, folder, verb="verify")
    for problem in report.problems:
        typer.echo(str(problem))
    if report.problems:
        fail(f"{folder}: {len(report.problems)} problem(s) in this {report.kind}")
    typer.echo(f"ok: {report.checked} files checked")


@app.command("export")
def export(
    folder: Path = typer.Argument(..., help="A distilled set folder."),
    to: str = typer.Option(
        ..., help="webdataset (one tar shard: KEY.png, KEY.txt, KEY.json per pair) or parquet (one file)."
    ),
    out: Path = typer.Option(..., help="The file to write (.tar or .parquet)."),
    force: bool = typer.Option(False, help="Replace an earlier export at --out (never another file)."),
) -> None:
    """Write a set as a webdataset shard or a parquet file (image PNG bytes, caption, members)."""
    from protosynth.export import ExportConfig, export_set

    typer.echo(f"wrote {run(export_set, folder, ExportConfig(to=to, out=out, force=force), verb='export')}")


@app.command("report")
def report(
    folders: list[Path] = typer.Argument(..., help="Set folders and compare-baselines output folders."),
    out: Path = typer.Option(..., help="The HTML file to write (one self-contained page)."),
    force: bool = typer.Option(False, help="Replace an earlier report at --out (never another file)."),
    members: int = typer.Option(3, help="Member thumbnails per synthetic pair (0: none)."),
    samples: int = typer.Option(4, help="Images per method for a compare-baselines folder."),
) -> None:
    """Write one static HTML page showing sets (images, captions, members) and comparisons."""
    from protosynth.report import ReportConfig, build_report

    cfg = ReportConfig(out=out, force=force, members=members, samples=samples)
    typer.echo(f"wrote {run(build_report, folders, cfg, verb='report')}")


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
