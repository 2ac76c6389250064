"""``protosynth eval ...``: retrieval evaluation of distilled sets (options in, a table and JSON out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import comma_list, fail, run
from .help_text import EVAL_CAPTION_COLUMN_HELP, EVAL_IMAGE_COLUMN_HELP, EVAL_IMAGE_ROOT_HELP

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate distilled sets by the retrieval models they train.")

SKIP_BAD_HELP = "Skip (and count) unreadable images of the --full corpus instead of stopping; never the test split's."
PROTOCOL_HELP = (
    "nfnet-bert (reference), pds (PDS paper) or small (offline, the world). "
    "Default: small on the world, else nfnet-bert."
)


def _config(
    sets: list[Path],
    protocol: Optional[str],
    test,
    repeats,
    epochs,
    seed,
    select_on_test,
    text,
    device,
    full: Optional[str],
    image_root: Optional[Path] = None,
    skip_bad: bool = False,
    image_column: Optional[str] = None,
    caption_column: Optional[str] = None,
):
    from protosynth.evaluation.evaluate import EvalConfig

    if protocol is None:
        protocol = "small" if _on_world(sets, full) else "nfnet-bert"
    return EvalConfig(
        protocol=protocol,
        test=test,
        repeats=repeats,
        epochs=epochs,
        seed=seed,
        select_on_test=select_on_test,
        text=text,
        device=device,
        full=full,
        image_root=image_root,
        skip_bad=skip_bad,
        image_column=image_column,
        caption_column=caption_column,
    )


def _on_world(sets: list[Path], full: Optional[str]) -> bool:
    from protosynth.corpora.spec import is_world
    from protosynth.distilled import read_manifest

    specs = [full] if full else []
    for s in sets:
        spec = run(read_manifest, s, verb="eval retrieval").get("corpus", {}).get("spec")
        if spec is None:
            fail(f"{s}: its manifest.json names no corpus; pass --protocol")
        specs.append(spec)
    return all(is_world(sp) for sp in specs)


def _check_json(path: Optional[Path]) -> None:
    """Before the evaluation: ``--json`` must name a file in a folder that can be written."""
    if path is None:
        return
    from protosynth.errors import ProtosynthError
    from protosynth.files import check_writable

    if path.is_dir():
        raise ProtosynthError(f"--json {path} is a folder, not a file")
    check_writable(path.parent, f"--json {path}")


def _write_json(doc: dict, path: Optional[Path]) -> None:
    if path is not None:
        from protosynth.files import write_text_atomic

        write_text_atomic(path, json.dumps(doc, indent=2))
        typer.echo(f"wrote {path}")


def _label(row: dict) -> str:
    if row["path"] is None:
        return f"full ({row.get('corpus')})"
    return row["path"]


def _console():
    """A terminal gets its own width; a pipe or file gets wide lines rather than wrapped cells."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


def print_retrieval_table(doc: dict) -> None:
    from rich.table import Table

    from protosynth.evaluation.evaluate import METRIC_NAMES

    table = Table(
        title=f"{doc['protocol']} protocol, backbone {doc['backbone']}, {doc.get('split', 'test')} {doc['test']}, "
        f"{doc['repeats']} repeats, score = {doc['score']}"
    )
    for col in ["set", "method", "budget", "text"] + METRIC_NAMES:
        table.add_column(col)
    for row in doc["sets"]:
        m = row["metrics"]
        table.add_row(
            _label(row),
            str(row["method"]),
            str(row["budget"]),
            row["text"],
            *[f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" for k in METRIC_NAMES],
        )
    _console().print(table)


def print_cross_arch_table(doc: dict) -> None:
    from rich.table import Table

    table = Table(
        title=f"{doc['protocol']} protocol across backbones, {doc['repeats']} repeats, score = {doc['score']}"
    )
    table.add_column("set")
    for arch in doc["archs"]:
        for k in ("r_mean", "IR@1", "TR@1"):
            table.add_column(f"{arch} {k}")
    labels = list(dict.fromkeys(_label(r) for r in doc["sets"]))
    for label in labels:
        cells = []
        for arch in doc["archs"]:
            row = next(r for r in doc["sets"] if _label(r) == label and r["arch"] == arch)
            cells += [f"{row['metrics'][k]['mean']:.1f}" for k in ("r_mean", "IR@1", "TR@1")]
        table.add_row(label, *cells)
    _console().print(table)


@eval_app.command("retrieval")
def retrieval(
    sets: list[Path] = typer.Argument(None, help="Distilled-set folders."),
    protocol: Optional[str] = typer.Option(None, help=PROTOCOL_HELP),
    test: Optional[str] = typer.Option(None, help="Test corpus spec (default: the test split of the sets' corpus)."),
    val: Optional[str] = typer.Option(
        None,
        help=(
            "Score on this validation corpus instead of the test split (e.g. shapes:val; a file corpus for your own "
            "data), to choose settings without looking at test."
        ),
    ),
    repeats: int = typer.Option(5, help="Models trained per set (seeds seed..seed+R-1)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: the protocol's)."),
    seed: int = typer.Option(0),
    select_on_test: bool = typer.Option(
        False, help="Report the best checkpoint on the test split (the reference code's habit; labelled)."
    ),
    text: str = typer.Option(
        "auto",
        help=(
            "auto (the set's stored text embeddings in the protocol's space, else the text rule its manifest "
            "declares, else its captions), captions, members, image (every caption of the image a pair starts "
            "from), image-captions (every caption of the members' images), stored or prototype (a PDS set's "
            "stored text prototype, as the PDS authors train on; needs the set's CLIP as text encoder): which "
            "text of a set trains the model."
        ),
    ),
    full: Optional[str] = typer.Option(
        None, help="Also train on every pair of this corpus (e.g. shapes): the upper-bound row."
    ),
    image_root: Optional[Path] = typer.Option(None, help=EVAL_IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=EVAL_IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=EVAL_CAPTION_COLUMN_HELP),
    backbone: Optional[str] = typer.Option(None, help="Image backbone spec instead of the protocol's."),
    text_encoder: Optional[str] = typer.Option(
        None, help="Text encoder spec instead of the protocol's (minilm, bert-base-uncased, hf-cls:DIR, clip:SPEC)."
    ),
    image_size: Optional[int] = typer.Option(None, help="Input size instead of the protocol's."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results document here."),
    device: str = typer.Option("cpu"),
) -> None:
    """Train retrieval models on each set and report IR@K, TR@K and r_mean (mean ± std over repeats)."""
    from dataclasses import replace

    from protosynth.evaluation.evaluate import evaluate

    run(_check_json, json_out, verb="eval retrieval")
    cfg = replace(
        _config(
            sets or [],
            protocol,
            test,
            repeats,
            epochs,
            seed,
            select_on_test,
            text,
            device,
            full,
            image_root,
            skip_bad,
            image_column,
            caption_column,
        ),
        backbone=backbone,
        text_encoder=text_encoder,
        image_size=image_size,
        split="val" if val is not None else "test",
        val=val,
    )
    doc = run(evaluate, sets or [], cfg, verb="eval retrieval")
    print_retrieval_table(doc)
    _write_json(doc, json_out)


@eval_app.command("cross-arch")
def cross_arch_cmd(
    sets: list[Path] = typer.Argument(None, help="Distilled-set folders."),
    archs: Optional[str] = typer.Option(None, help="Comma-separated backbone specs (default: the protocol's list)."),
    protocol: Optional[str] = typer.Option(None, help=PROTOCOL_HELP),
    test: Optional[str] = typer.Option(None, help="Test corpus spec."),
    repeats: int = typer.Option(5),
    epochs: Optional[int] = typer.Option(None),
    seed: int = typer.Option(0),
    select_on_test: bool = typer.Option(False),
    text: str = typer.Option("auto"),
    full: Optional[str] = typer.Option(None, help="Also the upper-bound row on this corpus."),
    image_root: Optional[Path] = typer.Option(None, help=EVAL_IMAGE_ROOT_HELP),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    image_column: Optional[str] = typer.Option(None, help=EVAL_IMAGE_COLUMN_HELP),
    caption_column: Optional[str] = typer.Option(None, help=EVAL_CAPTION_COLUMN_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    device: str = typer.Option("cpu"),
) -> None:
    """The same protocol over several image backbones: rows = sets, columns = archs x (r_mean, IR@1, TR@1)."""
    from protosynth.evaluation.evaluate import cross_arch

    arch_list = comma_list("--archs", archs) if archs else None
    run(_check_json, json_out, verb="eval cross-arch")
    cfg = _config(
        sets or [],
        protocol,
        test,
        repeats,
        epochs,
        seed,
        select_on_test,
        text,
        device,
        full,
        image_root,
        skip_bad,
        image_column,
        caption_column,
    )
    doc = run(cross_arch, sets or [], cfg, arch_list, verb="eval cross-arch")
    print_cross_arch_table(doc)
    _write_json(doc, json_out)
