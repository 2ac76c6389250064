"""Each method's text reading, chosen on the validation split.

    python -m benchmarks.world_readings [--budgets 100,200,500] [--methods random,kcenter,herding,select,pds]
                                        [--texts captions,members,image] [--seeds 0,1,2] [--repeats 2]
                                        [--work runs/world_readings]

A text reading (``captions``, ``members``, ``image``) is an evaluation axis open to every set that
stores what it averages, so the headline compares methods under the same reading, and each method's
own best reading is chosen on val, never on test. This runs ``compare-baselines`` on ``shapes:val``
at each budget (``WORK/b<budget>``; sets and rows are reused, so a stopped run resumes), every row
trained by the protocol's recipe, and writes ``benchmarks/results/world_val_readings.{json,md}``: each
method's val r_mean under each reading (mean ± std over set seeds and repeats), the reading with the
highest val r_mean, and the render gain (a rendered method, ``pds`` or a lever such as
``pds-composite``, minus ``select`` under the same reading: what rendering adds over the real pairs
its prototypes hold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from protosynth.baselines.compare import CompareConfig, compare_baselines
from protosynth.baselines.configs import RENDERED
from protosynth.corpora.source import CorpusSource
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
STEM = "world_val_readings"


def run_budget(budget: int, args: argparse.Namespace) -> dict:
    """One budget's val comparison (resumed where ``WORK/b<budget>`` holds its sets and rows)."""
    cfg = CompareConfig(
        budget=budget,
        corpus=CorpusSource(spec="shapes"),
        test="shapes:val",
        methods=tuple(args.methods.split(",")),
        texts=tuple(args.texts.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        repeats=args.repeats,
        recipes=("protocol",),
        out=args.work / f"b{budget}",
    )
    return compare_baselines(cfg)


def summarise(docs: dict[int, dict]) -> list[dict]:
    """A row per (budget, method): r_mean by reading, the chosen reading, the render gain by reading."""
    rows = []
    for budget, doc in docs.items():
        by_text = {t["text"]: {r["method"]: r for r in t["methods"]} for t in doc["tables"]}
        methods = next(iter(by_text.values())).keys()
        for method in methods:
            scores = {
                text: rows_[method]["metrics"]["r_mean"]
                for text, rows_ in by_text.items()
                if "metrics" in rows_[method]
            }
            row = {"budget": budget, "method": method, "r_mean": {t: _mean_std(s) for t, s in scores.items()}}
            row["chosen"] = max(scores, key=lambda t: scores[t]["mean"]) if scores else None
            if method in RENDERED and all("select" in r and "metrics" in r["select"] for r in by_text.values()):
                select = {text: by_text[text]["select"]["metrics"]["r_mean"] for text in scores}
                row["render_gain"] = {text: round(scores[text]["mean"] - select[text]["mean"], 2) for text in scores}
                row["render_gain_paired"] = {text: _paired(scores[text], select[text]) for text in scores}
            rows.append(row)
    return rows


def _paired(metric: dict, select: dict) -> dict | None:
    """The gain run by run (the same set seed and evaluation seed; ``runs`` in that order in both rows):
    its mean and sample std, which the seed-to-seed spread both rows share does not widen. None when
    the runs do not pair up."""
    a, b = metric.get("runs") or [], select.get("runs") or []
    if len(a) != len(b) or len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(a, b)]
    return {"mean": round(statistics.mean(diffs), 2), "std": round(statistics.stdev(diffs), 2), "runs": len(diffs)}


def _mean_std(metric: dict) -> dict:
    return {"mean": round(metric["mean"], 2), "std": round(metric["std"], 2), "runs": len(metric.get("runs", []))}


def markdown(doc: dict) -> str:
    texts = doc["texts"]
    lines = [
        "# Text readings, chosen on val: small protocol, protocol's recipe, scored on shapes:val",
        "",
        f"Command: `{doc['command']}` (commit {doc['commit'][:12]}). r_mean, mean ± sample std over "
        f"set seeds {doc['seeds']} x {doc['repeats']} repeats, percent. **Chosen**: a method's highest val "
        "r_mean at a budget. Render gain: a rendered method (`pds`, the default distill, or a lever) minus "
        "`select` (each prototype's nearest real pair, no rendering) under the same reading; paired: the gain run "
        "by run (same set seed and evaluation seed), mean ± sample std.",
        "",
        "| budget | method | " + " | ".join(texts) + " | chosen | render gain | paired gain |",
        "|---|---|" + "---|" * len(texts) + "---|---|---|",
    ]
    if doc.get("not_run"):
        stopped = ", ".join(map(str, doc["not_run"]))
        lines[4:4] = [f"Not run yet (the run was stopped before them): {stopped} pairs.", ""]
    for row in doc["rows"]:
        cells = []
        for text in texts:
            s = row["r_mean"].get(text)
            cell = "unsupported" if s is None else f"{s['mean']:.1f} ± {s['std']:.1f}"
            cells.append(f"**{cell}**" if text == row["chosen"] else cell)
        gain = row.get("render_gain")
        gains = ", ".join(f"{t} {g:+.1f}" for t, g in gain.items()) if gain else ""
        paired = ", ".join(
            f"{t} {g['mean']:+.1f} ± {g['std']:.1f}" for t, g in (row.get("render_gain_paired") or {}).items() if g
        )
        lines.append(
            f"| {row['budget']} | {row['method']} | " + " | ".join(cells) + f" | {row['chosen']} | {gains} | {paired} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--methods", default="random,kcenter,herding,select,pds")
    ap.add_argument("--texts", default="captions,members,image")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/world_readings"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--stem", default=STEM, help="Results file name, without .json/.md.")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.world_readings " + " ".join(argv if argv is not None else sys.argv[1:])
    started, docs = time.time(), {}
    budgets = [int(b) for b in args.budgets.split(",")]
    for i, budget in enumerate(budgets):
        docs[budget] = run_budget(budget, args)
        doc = {
            "command": command,
            "commit": git_commit(),
            "split": "val",
            "texts": args.texts.split(","),
            "seeds": [int(s) for s in args.seeds.split(",")],
            "repeats": args.repeats,
            "rows": summarise(docs),
            "not_run": budgets[i + 1 :],
            "seconds_this_run": round(time.time() - started, 1),
        }
        args.results.mkdir(parents=True, exist_ok=True)  # written after every budget: a stopped run keeps its table
        write_text_atomic(args.results / f"{args.stem}.json", json.dumps(doc, indent=2))
        write_text_atomic(args.results / f"{args.stem}.md", markdown(doc))
        print(f"b{budget}: written {args.results / args.stem}.md", flush=True)


if __name__ == "__main__":
    main()
