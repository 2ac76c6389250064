"""World retrieval benchmark: PDS (every --mode) against the four coresets and the full-data upper
bound, under the offline ``small`` protocol, at several budgets.

    python -m benchmarks.world_retrieval [--budgets 100,200,500] [--repeats 5] [--work runs/world_retrieval]

Sets are written under ``--work`` and each set's result row is kept there too (keyed by the set's
manifest hash and the evaluation settings), so an interrupted run, or one that first does only the
coresets (``--only coresets``), resumes where it stopped. The results go to
``benchmarks/results/world_retrieval.{json,md}`` with the command, commit and seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.distill import DistillConfig, distill
from protosynth.evaluation.evaluate import METRIC_NAMES, EvalConfig, evaluate
from protosynth.files import git_commit, write_text_atomic
from protosynth.render import RenderConfig

RESULTS = Path(__file__).parent / "results"
MODES = ("matched", "joint", "image", "text")
CORESETS = ("random", "herding", "kcenter", "forgetting")


def make_sets(budgets: list[int], work: Path, seed: int, only: str) -> list[Path]:
    paths = []
    for budget in budgets:
        for mode in MODES if only in ("all", "pds") else ():
            out = work / f"pds-{mode}-b{budget}"
            if not (out / "manifest.json").is_file():
                distill(DistillConfig(budget=budget, mode=mode, seed=seed, out=out))
            paths.append(out)
        if only in ("all", "pds"):  # the decoder alone, without CLIP guidance: PDS as published
            out = work / f"pds-matched-noguide-b{budget}"
            if not (out / "manifest.json").is_file():
                distill(DistillConfig(budget=budget, seed=seed, out=out, render=RenderConfig(clip_guidance=0.0)))
            paths.append(out)
        for method in CORESETS if only in ("all", "coresets") else ():
            out = work / f"coreset-{method}-b{budget}"
            if not (out / "manifest.json").is_file():
                build_coreset(CoresetConfig(method=method, budget=budget, seed=seed, out=out))
            paths.append(out)
    return paths


def _key(path: Path | None, cfg: EvalConfig) -> str:
    manifest = (path / "manifest.json").read_bytes() if path is not None else b"full:shapes"
    blob = manifest + json.dumps(cfg.__dict__, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached_row(path: Path | None, cfg: EvalConfig, work: Path) -> tuple[dict, dict]:
    """Evaluate one set (None: the full-data row), or reuse the row an earlier run stored."""
    store = work / "rows" / f"{_key(path, cfg)}.json"
    if store.is_file():
        saved = json.loads(store.read_text())
        return saved["row"], saved["doc"]
    doc = evaluate([path] if path is not None else [], replace(cfg, full=None if path is not None else "shapes"))
    row, head = doc["sets"][0], {k: v for k, v in doc.items() if k != "sets"}
    if path is not None:
        manifest = json.loads((path / "manifest.json").read_text())
        row["clip_guidance"] = manifest.get("settings", {}).get("render", {}).get("clip_guidance")
        row["render_fidelity"] = manifest.get("render_fidelity")
    store.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(store, json.dumps({"row": row, "doc": head, "cfg": cfg.__dict__}, indent=2))
    return row, head


def load_rows(work: Path, cfg: EvalConfig) -> list[dict]:
    """Stored rows whose key still matches their set's current manifest (a remade set's old row is stale)."""
    out = []
    for f in sorted((work / "rows").glob("*.json")):
        row = json.loads(f.read_text())["row"]
        path = Path(row["path"]) if row["path"] is not None else None
        if (path is None or (path / "manifest.json").is_file()) and _key(path, cfg) == f.stem:
            out.append(row)
    return out


def row_order(row: dict) -> tuple:
    order = [f"pds:{m}" for m in MODES] + [f"coreset-{c}:None" for c in CORESETS]
    key = f"{row['method']}:{row.get('mode')}"
    return (row["path"] is None, row["budget"], order.index(key) if key in order else len(order),
            -(row.get("clip_guidance") or 0))


def markdown(doc: dict, command: str) -> str:
    lines = [f"# World retrieval: {doc['protocol']} protocol ({doc['backbone']} + {doc['text_encoder']}), "
             f"test {doc['test']}, {doc['repeats']} repeats, score = {doc['score']}", "",
             f"Command: `{command}` (commit {doc['commit'][:12]}). Mean ± sample std over repeats, percent; "
             f"seconds = wall time to evaluate that row (all repeats) in the run that computed it.", "",
             "| budget | method | text | " + " | ".join(METRIC_NAMES) + " | seconds |",
             "|---|---|---|" + "---|" * len(METRIC_NAMES) + "---|"]
    for row in doc["sets"]:
        method = row["method"] + (f" ({row['mode']})" if row.get("mode") else "")
        if row["method"] == "pds":
            method += f", clip-guidance {row.get('clip_guidance')}"
        cells = [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRIC_NAMES]
        lines.append(f"| {row['budget']} | {method} | {row['text']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/world_retrieval"))
    ap.add_argument("--results", type=Path, default=RESULTS, help="Folder for world_retrieval.{json,md}.")
    ap.add_argument("--no-full", action="store_true", help="Skip the full-data upper-bound row.")
    ap.add_argument("--only", choices=("all", "pds", "coresets"), default="all",
                    help="Make and evaluate only these sets (rows already evaluated are kept either way).")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.world_retrieval " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    budgets = [int(b) for b in args.budgets.split(",")]
    paths = make_sets(budgets, args.work, args.seed, args.only)
    seconds_sets = time.time() - started
    cfg = EvalConfig(protocol="small", repeats=args.repeats, seed=args.seed)
    doc = None
    for path in paths + ([None] if not args.no_full and args.only != "pds" else []):
        _, doc = cached_row(path, cfg, args.work)
    # the table: every stored row still current for its set (earlier --only runs included)
    rows = [r for r in load_rows(args.work, cfg)
            if (r["path"] is None and not args.no_full) or (r["path"] is not None and r["budget"] in budgets)]
    rows.sort(key=row_order)
    doc = dict(doc, sets=rows)
    doc.update(command=command, commit=git_commit(), threads_this_process=torch.get_num_threads(),
               seconds_making_sets=round(seconds_sets, 1), seconds_this_run=round(time.time() - started, 1))
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / "world_retrieval.json", json.dumps(doc, indent=2))
    write_text_atomic(args.results / "world_retrieval.md", markdown(doc, command))
    print(markdown(doc, command))


if __name__ == "__main__":
    main()
