"""``protosynth eval ...``: retrieval evaluation of distilled sets (options in, a table and JSON out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from protosynth.configs import EvalConfig

from .common import comma_list, fail, run
from .options import READING_FLAGS, argument, build, command, fields, flag

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate distilled sets by the retrieval models they train.")

CORPUS = READING_FLAGS
SETS = (argument("sets", list[Path], None, "Distilled-set folders."),)
# the protocol is the sets' own: small on the world, else nfnet-bert
PROTOCOL = {"annotation": Optional[str], "default": None}


def _config(sets: list[Path], values: dict, **settings):
    """The ``EvalConfig`` of the flags; no ``--protocol``: the one of the sets' corpus."""
    protocol = values["protocol"]
    if protocol is None:
        from protosynth.evaluation.protocols import default_protocol

        protocol = default_protocol(*_corpora(sets, values["full"]))
    return build(EvalConfig, values, protocol=protocol, **settings)


def _corpora(sets: list[Path], full: Optional[str]) -> list[str]:
    """The corpus specs of the sets (their manifests) and of ``--full``."""
    from protosynth.sets.distilled import read_manifest

    specs = [full] if full else []
    for s in sets:
        spec = run(read_manifest, s, verb="eval retrieval").get("corpus", {}).get("spec")
        if spec is None:
            fail(f"{s}: its manifest.json names no corpus; pass --protocol")
        specs.append(spec)
    return specs


def _check_json(path: Optional[Path]) -> None:
    """Before the evaluation: ``--json`` must name a file in a folder that can be written."""
    if path is None:
        return
    from protosynth.errors import ProtosynthError
    from protosynth.util.files import check_writable

    if path.is_dir():
        raise ProtosynthError(f"--json {path} is a folder, not a file")
    check_writable(path.parent, f"--json {path}")


def _write_json(doc: dict, path: Optional[Path]) -> None:
    if path is not None:
        from protosynth.util.files import write_text_atomic

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


@command(
    eval_app,
    "eval retrieval",
    [
        *fields(
            EvalConfig,
            f"protocol test val repeats epochs seed select_on_test text recipe full {CORPUS} backbone text_encoder "
            "image_size",
            protocol=PROTOCOL,
        ),
        flag("json_out", Optional[Path], None, "Write the results document here.", "--json"),
        *fields(EvalConfig, "device"),
    ],
    SETS,
)
def retrieval(sets: list[Path], json_out: Optional[Path], **values) -> None:
    """Train retrieval models on each set and report IR@K, TR@K and r_mean (mean ± std over repeats)."""
    from protosynth.evaluation.evaluate import evaluate

    run(_check_json, json_out, verb="eval retrieval")
    split = "val" if values["val"] is not None else "test"
    doc = run(evaluate, sets or [], _config(sets or [], values, split=split), verb="eval retrieval")
    print_retrieval_table(doc)
    _write_json(doc, json_out)


# cross-arch shows these flags bare (retrieval --help explains them)
BARE = {"help": None}


@command(
    eval_app,
    "eval cross-arch",
    [
        flag("archs", Optional[str], None, "Comma-separated backbone specs (default: the protocol's list)."),
        *fields(
            EvalConfig,
            f"protocol test repeats epochs seed select_on_test text full {CORPUS}",
            protocol=PROTOCOL,
            test={"help": "Test corpus spec."},
            full={"help": "Also the upper-bound row on this corpus."},
            **{name: BARE for name in ("repeats", "epochs", "select_on_test", "text")},
        ),
        flag("json_out", Optional[Path], None, None, "--json"),
        *fields(EvalConfig, "device"),
    ],
    SETS,
)
def cross_arch_cmd(sets: list[Path], archs: Optional[str], json_out: Optional[Path], **values) -> None:
    """The same protocol over several image backbones: rows = sets, columns = archs x (r_mean, IR@1, TR@1)."""
    from protosynth.evaluation.evaluate import cross_arch

    arch_list = comma_list("--archs", archs) if archs else None
    run(_check_json, json_out, verb="eval cross-arch")
    cfg = _config(sets or [], values)
    doc = run(cross_arch, sets or [], cfg, arch_list, verb="eval cross-arch")
    print_cross_arch_table(doc)
    _write_json(doc, json_out)
