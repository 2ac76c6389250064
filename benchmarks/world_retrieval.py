"""World retrieval benchmark: PDS (every --mode) against the four coresets and the full-data upper
bound, under the offline ``small`` protocol, at several budgets.

    python -m benchmarks.world_retrieval [--budgets 100,200,500] [--repeats 5] [--work runs/world_retrieval]

Sets are written under ``--work`` (kept, so a second run reuses them); the results go to
``benchmarks/results/world_retrieval.{json,md}`` with the command, commit and seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.distill import DistillConfig, distill
from protosynth.evaluation.evaluate import METRIC_NAMES, EvalConfig, evaluate
from protosynth.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
MODES = ("matched", "joint", "image", "text")
CORESETS = ("random", "herding", "kcenter", "forgetting")


def make_sets(budgets: list[int], work: Path, seed: int) -> list[Path]:
    paths = []
    for budget in budgets:
        for mode in MODES:
            out = work / f"pds-{mode}-b{budget}"
            if not (out / "manifest.json").is_file():
                distill(DistillConfig(budget=budget, mode=mode, seed=seed, out=out))
            paths.append(out)
        for method in CORESETS:
            out = work / f"coreset-{method}-b{budget}"
            if not (out / "manifest.json").is_file():
                build_coreset(CoresetConfig(method=method, budget=budget, seed=seed, out=out))
            paths.append(out)
    return paths


def markdown(doc: dict, command: str) -> str:
    lines = [f"# World retrieval: {doc['protocol']} protocol ({doc['backbone']} + {doc['text_encoder']}), "
             f"test {doc['test']}, {doc['repeats']} repeats, score = {doc['score']}", "",
             f"Command: `{command}` (commit {doc['commit'][:12]}, {doc['seconds_total']:.0f} s on "
             f"{doc['threads']} CPU threads). Mean ± sample std over repeats, percent.", "",
             "| budget | method | text | " + " | ".join(METRIC_NAMES) + " |",
             "|---|---|---|" + "---|" * len(METRIC_NAMES)]
    for row in doc["sets"]:
        method = row["method"] + (f" ({row['mode']})" if row.get("mode") else "")
        cells = [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRIC_NAMES]
        lines.append(f"| {row['budget']} | {method} | {row['text']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/world_retrieval"))
    ap.add_argument("--no-full", action="store_true", help="Skip the full-data upper-bound row.")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.world_retrieval " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    paths = make_sets([int(b) for b in args.budgets.split(",")], args.work, args.seed)
    seconds_sets = time.time() - started
    doc = evaluate(paths, EvalConfig(protocol="small", repeats=args.repeats, seed=args.seed,
                                     full=None if args.no_full else "shapes"))
    doc.update(command=command, commit=git_commit(), threads=torch.get_num_threads(),
               seconds_making_sets=round(seconds_sets, 1), seconds_total=round(time.time() - started, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "world_retrieval.json", json.dumps(doc, indent=2))
    write_text_atomic(RESULTS / "world_retrieval.md", markdown(doc, command))
    print(markdown(doc, command))


if __name__ == "__main__":
    main()
