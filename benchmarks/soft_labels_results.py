"""The soft-labels measurement's results file, from the compare-baselines documents that made it.

    python -m benchmarks.soft_labels_results --compare RUN/compare.json [--grid GRID.json ...] \
        [--stem world_val_soft_labels]

Each document is a ``compare.json`` (its command and commit are kept). Writes
``benchmarks/results/<stem>.{json,md}``: every (recipe, method) row's r_mean (mean ± sample std over
set seeds x repeats), its loss, and its paired difference to ``pds`` in the same table (run by run:
same set seed and evaluation seed; the sets of ``pds`` and of a ``pds-soft*`` method are the same
images and text, so the difference is what the soft labels and weighted BCE change). Only reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"


def rows_of(doc: dict, source: str) -> list[dict]:
    """One row per (table, method) of a compare document, with the paired difference to pds."""
    out = []
    for table in doc["tables"]:
        by_method = {r["method"]: r for r in table["methods"] if "metrics" in r}
        pds = by_method.get("pds")
        for method, row in by_method.items():
            runs = row["metrics"]["r_mean"]["runs"]
            rec = {
                "source": source,
                "recipe": table["recipe"],
                "text": table["text"],
                "method": method,
                "loss": row.get("loss"),
                "r_mean": row["metrics"]["r_mean"]["mean"],
                "std": row["metrics"]["r_mean"]["std"],
                "runs": runs,
                "seed_means": row["metrics"]["r_mean"]["seed_means"],
            }
            if pds is not None and method != "pds" and row["set_seeds"] == pds["set_seeds"]:
                diffs = [a - b for a, b in zip(runs, pds["metrics"]["r_mean"]["runs"])]
                rec["paired_vs_pds"] = {
                    "mean": round(statistics.mean(diffs), 3),
                    "std": round(statistics.stdev(diffs), 3) if len(diffs) > 1 else 0.0,
                }
            out.append(rec)
    return out


def markdown(doc: dict) -> str:
    lines = [
        "# Training-free soft labels on val: small protocol, 100 pairs, shapes:val",
        "",
        "r_mean, mean ± sample std over 3 set seeds x 2 repeats, percent; paired: the row minus `pds` run "
        "by run (same set seed and evaluation seed), mean ± sample std of the 6 differences. "
        "Made by (each with its commit):",
        "",
    ]
    lines += [f"- `{d['command']}` (commit {d['commit'][:7]})" for d in doc["documents"]]
    lines += ["", "| source | recipe | method | loss | r_mean | paired vs pds |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        paired = r.get("paired_vs_pds")
        lines.append(
            f"| {r['source']} | {r['recipe']} | {r['method']} | {r['loss']} | {r['r_mean']:.1f} ± {r['std']:.1f} | "
            + (f"{paired['mean']:+.1f} ± {paired['std']:.1f}" if paired else "")
            + " |"
        )
    lines += ["", *[f"- {note}" for note in doc["notes"]]] if doc["notes"] else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, required=True, help="the final comparison's compare.json")
    ap.add_argument("--grid", type=Path, action="append", default=[], help="a val grid's compare.json")
    ap.add_argument("--stem", default="world_val_soft_labels")
    ap.add_argument("--note", action="append", default=[], help="a line for the markdown's notes")
    args = ap.parse_args(argv)
    docs = [(f"grid {i + 1}", p) for i, p in enumerate(args.grid)] + [("final", args.compare)]
    loaded = [(name, json.loads(p.read_text())) for name, p in docs]
    doc = {
        "documents": [{"source": n, "command": d["command"], "commit": d["commit"]} for n, d in loaded],
        "rows": [r for n, d in loaded for r in rows_of(d, n)],
        "notes": args.note,
        "written_at_commit": git_commit(),
    }
    write_text_atomic(RESULTS / f"{args.stem}.json", json.dumps(doc, indent=2))
    write_text_atomic(RESULTS / f"{args.stem}.md", markdown(doc))


if __name__ == "__main__":
    main()
