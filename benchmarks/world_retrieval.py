"""World retrieval, the final table: every choice made on val, the test split scored once.

    python -m benchmarks.world_retrieval [--budgets 100,200,500] [--seeds 0,1,2] [--repeats 2]
                                         [--work runs/world_retrieval] [--reuse-from DIR ...]

A thin layer over ``compare-baselines``. For each budget it first checks that val has chosen what
the table needs, and refuses with one line otherwise: each method's text reading
(``world_val_readings.json`` has the budget) and each optimisation baseline's world preset
(``baseline_presets_val.json`` has every candidate of the budget, and the val-chosen one is the
library's ``presets.WORLD_CHOICE``). Then it runs ``compare-baselines`` on ``shapes:test`` with every
method, the set seeds and the readings (the one val chose for the default first) by the protocol's
recipe, copied to ``benchmarks/results/compare_world_b<budget>.{json,md,png}``; then the methods' own
recipes (own, soft-labels, learned-lrs) with each set's own text, copied to
``compare_world_b<budget>_own.*`` (random pairs and full data in those tables too). It writes
``benchmarks/results/world_retrieval.{json,md,png}``: every method under the reading val chose for the
default (the same text for every method; a baseline's row is its own learned text, what it makes,
with its images read the default's way beside it), each method under its own val-chosen reading,
the render gain (``pds`` minus ``select`` under each reading), the gain over random pairs and the cost
from corpus to set. ``--corpus``, ``--test``, ``--quick``, ``--eval-epochs`` and ``--iterations`` pass
to compare-baselines for a smoke-sized run (the tests).

Sets, buffers and rows are kept under ``WORK/b<budget>`` (``compare-baselines --out``), so a stopped run
resumes. ``--reuse-from DIR`` hard-links finished buffers and sets of another comparison on the same
corpus (``world_readings``' val runs make the same train-split sets) where this one has none; every
reused folder passes compare-baselines' own check that it was made with these settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from protosynth.baselines.compare import CompareConfig, compare_baselines
from protosynth.baselines.configs import CORESETS, OPTIMISATION
from protosynth.baselines.presets import WORLD_CANDIDATES, WORLD_CHOICE, preset_budget
from protosynth.configs import DEFAULT_METHOD
from protosynth.corpora.source import CorpusSource
from protosynth.util.files import atomic_path, git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
STEM = "world_retrieval"
READINGS = ("members", "image", "captions")
# a method's own recipes (DD-Ranking: with and without its soft labels and learned lrs) read its own
# text ("auto"): the protocol's table already reads every set every way
OWN_RECIPES = ("own", "soft-labels", "learned-lrs")
# the method `distill` runs by default: its val-chosen reading is every row's headline reading
DEFAULT = DEFAULT_METHOD
METHODS = (*CORESETS, "select", "pds", "pds-published", *OPTIMISATION, "full")


def val_choices(results: Path, budget: int, methods: tuple[str, ...] = METHODS) -> dict[str, str]:
    """Each method's val-chosen reading at ``budget``; SystemExit (one line) where val has not chosen
    what the test table needs: a reading, or the world preset of a baseline in ``methods``."""
    readings = _read(results / "world_val_readings.json")
    if budget in readings.get("not_run", []) or not any(r["budget"] == budget for r in readings["rows"]):
        raise SystemExit(f"{results / 'world_val_readings.json'}: no reading chosen at {budget} pairs on val yet")
    chosen = {r["method"]: r["chosen"] for r in readings["rows"] if r["budget"] == budget}
    if DEFAULT not in chosen:
        where = results / "world_val_readings.json"
        raise SystemExit(f"{where}: no reading of the default ({DEFAULT}) at {budget} pairs")
    presets = _read(results / "baseline_presets_val.json")
    for method in (m for m in OPTIMISATION if m in methods):
        _check_preset(presets, method, budget, results / "baseline_presets_val.json")
    return chosen


def _check_preset(doc: dict, method: str, budget: int, path: Path) -> None:
    """The val sweep ran every candidate of the method at the budget, and the library's world preset is
    the one it chose (so the test table scores what val picked)."""
    b = preset_budget(budget)
    ran = {r["candidate"] for r in doc["rows"] if r["method"] == method and r["budget"] == b}
    missing = [c for c in WORLD_CANDIDATES if c not in ran]
    if missing:
        raise SystemExit(f"{path}: {method} at {b} pairs: candidates {', '.join(missing)} not run on val yet")
    val_chose, library = doc["chosen"].get(f"{method}-b{b}"), WORLD_CHOICE.get((method, b))
    if val_chose != library:
        raise SystemExit(f"{path}: val chose {val_chose} for {method} at {b} pairs, presets.WORLD_CHOICE has {library}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the val results ({exc.__class__.__name__})") from exc


def link_finished(source: Path, out: Path) -> list[str]:
    """Hard-link the finished buffers and sets of another comparison's ``--out`` into ``out`` where
    ``out`` has none (files are never overwritten); the folder names linked."""
    linked = []
    for kind in ("buffers", "sets"):
        for folder in sorted((source / kind).glob("*")) if (source / kind).is_dir() else []:
            target = out / kind / folder.name
            if (folder / "manifest.json").is_file() and not target.exists():
                tmp = target.with_name(f".{target.name}.linking-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(folder, tmp, copy_function=os.link)
                tmp.rename(target)
                linked.append(f"{kind}/{folder.name}")
    return linked


def run_budget(budget: int, args: argparse.Namespace, headline: str, command: str) -> dict:
    """compare-baselines on test at one budget (resumed where ``WORK/b<budget>`` holds its work)."""
    out = args.work / f"b{budget}"
    for source in args.reuse_from:
        for name in link_finished(source / f"b{budget}" if (source / f"b{budget}").is_dir() else source, out):
            print(f"b{budget}: reused {name} from {source}", flush=True)
    cfg = CompareConfig(
        budget=budget,
        corpus=CorpusSource(spec=args.corpus),
        test=args.test,
        quick=args.quick,
        eval_epochs=args.eval_epochs,
        iterations=args.iterations,
        methods=tuple(args.methods.split(",")),
        texts=(headline, *[t for t in READINGS if t != headline], "auto"),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        repeats=args.repeats,
        recipes=("protocol",),
        out=out,
    )
    compared = compare_baselines(cfg, command)
    _copy_compare(out, args.results / f"compare_world_b{budget}")
    compare_baselines(replace(cfg, texts=("auto",), recipes=OWN_RECIPES), command)
    _copy_compare(out, args.results / f"compare_world_b{budget}_own")
    return compared


def _copy_compare(out: Path, stem: Path) -> None:
    """compare-baselines' document of the run just made (the next run in ``out`` writes over it)."""
    for suffix in ("json", "md", "png"):
        with atomic_path(stem.with_name(f"{stem.name}.{suffix}")) as tmp:
            shutil.copyfile(out / f"compare.{suffix}", tmp)


def summarise(budget: int, doc: dict, chosen: dict[str, str]) -> list[dict]:
    """A row per method at one budget, under the protocol's recipe: r_mean under the default's reading
    (a baseline under its own learned text, which is what it makes, with its images under the default's
    reading beside it), under its own val-chosen reading, the gain over random pairs and the cost."""
    tables = {t["text"]: {r["method"]: r for r in t["methods"]} for t in doc["tables"] if t["recipe"] == "protocol"}
    headline = chosen[DEFAULT]
    rows = []
    for method, at_headline in tables[headline].items():
        main, read = at_headline, headline
        if method == "full":  # the upper bound trains on every caption of the corpus, whatever the reading
            read = "every caption"
        elif method in OPTIMISATION:
            main, read = tables["auto"][method], "own learned text"
        elif "metrics" not in at_headline and "metrics" in tables.get("auto", {}).get(method, {}):
            # a set that cannot be read the headline way (renders from noise show no one image): its own rule
            main = tables["auto"][method]
            read = f"its own rule ({main.get('text', 'auto')})"
        own = chosen.get(method)
        rows.append(
            {
                "budget": budget,
                "method": method,
                "reading": read,
                "r_mean": _cell(main),
                "r_mean_headline_reading": _cell(at_headline),
                "own_reading": own,
                "r_mean_own_reading": _cell(tables[own][method]) if own in tables else None,
                "gain_over_random": main.get("gain_over_random"),
                "total_seconds": main.get("total_seconds"),
            }
        )
    return rows


def render_gain(doc: dict) -> dict[str, float]:
    """``pds`` minus ``select`` under each reading both can be read with (protocol's recipe); not under
    ``auto``, where each set reads its own rule (``pds`` its members, ``select`` one caption)."""
    gains = {}
    for table in doc["tables"]:
        by = {r["method"]: r for r in table["methods"]}
        paired = table["recipe"] == "protocol" and table["text"] != "auto"
        if paired and all("metrics" in by.get(m, {}) for m in ("pds", "select")):
            gains[table["text"]] = round(_mean(by["pds"]) - _mean(by["select"]), 2)
    return gains


def _mean(row: dict) -> float:
    return row["metrics"]["r_mean"]["mean"]


def _cell(row: dict) -> dict | None:
    if "metrics" not in row:
        return None
    return {"mean": round(_mean(row), 2), "std": round(row["metrics"]["r_mean"]["std"], 2)}


def markdown(doc: dict) -> str:
    lines = [
        "# World retrieval (test, scored once): small protocol, shapes:test, protocol's recipe",
        "",
        f"Command: `{doc['command']}` (commit {doc['commit'][:12]}). r_mean, mean ± sample std over set seeds "
        f"{doc['seeds']} x {doc['repeats']} repeats, percent. Every choice was made on shapes:val before this "
        "run: the readings (world_val_readings.md) and the baselines' world presets (baseline_presets_val.md). "
        f"Headline reading: the one val chose for the default (`{DEFAULT}`), for every method; a baseline's r_mean is "
        "its own learned text (what it makes), its images read the headline way beside it. Every reading: "
        "compare_world_b<budget>.md; the methods' own recipes: compare_world_b<budget>_own.md.",
        "",
    ]
    for budget in doc["budgets"]:
        b = doc["by_budget"][str(budget)]
        gains = ", ".join(f"{t} {g:+.1f}" for t, g in b["render_gain"].items())
        lines += [
            f"## {budget} pairs: headline reading {b['headline']}; render gain (pds - select) {gains}",
            "",
            "| method | read with | r_mean | gain over random | with the headline reading | own val reading "
            "| r_mean there | s, corpus to set |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in b["rows"]:
            cells = [_fmt(row["r_mean"]), _signed(row["gain_over_random"]), _fmt(row["r_mean_headline_reading"])]
            cells += [row["own_reading"] or "-"]
            cells += [_fmt(row["r_mean_own_reading"]), str(row["total_seconds"] or "-")]
            lines.append(f"| {row['method']} | {row['reading']} | " + " | ".join(cells) + " |")
        lines.append("")
    if doc.get("not_run"):
        lines += [f"Not run yet (the run was stopped before them): {', '.join(map(str, doc['not_run']))} pairs.", ""]
    return "\n".join(lines)


def figure(doc: dict, path: Path) -> None:
    """The headline per budget: each method's r_mean (a baseline's with its own learned text, hatched)
    beside its seconds from corpus to set, buffers included (log scale)."""
    import matplotlib  # noqa: PLC0415 (only the figure needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use)

    budgets = doc["budgets"]
    fig, axes = plt.subplots(len(budgets), 2, figsize=(12, 4.2 * len(budgets)), squeeze=False)
    for (score_ax, cost_ax), budget in zip(axes, budgets):
        b = doc["by_budget"][str(budget)]
        rows = [r for r in b["rows"] if r["r_mean"] is not None]
        names = [r["method"] for r in rows]
        bars = score_ax.bar(
            names, [r["r_mean"]["mean"] for r in rows], yerr=[r["r_mean"]["std"] for r in rows], capsize=3
        )
        for bar, row in zip(bars, rows):
            bar.set_hatch("//" if row["reading"] == "own learned text" else "")
        score_ax.set_ylabel("r_mean (%), test")
        score_ax.set_title(f"{budget} pairs: text read {b['headline']} (hatched: own learned text)")
        made = [r for r in rows if r["total_seconds"]]
        cost_ax.bar([r["method"] for r in made], [r["total_seconds"] for r in made], color="tab:orange")
        cost_ax.set_yscale("log")
        cost_ax.set_ylabel("seconds, corpus to set")
        cost_ax.set_title("cost, shared work (embedding, buffers) included")
        for ax in (score_ax, cost_ax):
            ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _fmt(cell: dict | None) -> str:
    return "-" if cell is None else f"{cell['mean']:.1f} ± {cell['std']:.1f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/world_retrieval"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--reuse-from", type=Path, action="append", default=[], help="another comparison's --out")
    # a smoke-sized run (tests): compare-baselines' own --corpus, --test, --quick, --eval-epochs, --iterations
    ap.add_argument("--corpus", default="shapes")
    ap.add_argument("--test", default="shapes:test")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--eval-epochs", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    args = ap.parse_args(argv)
    command = "python -m benchmarks.world_retrieval " + " ".join(argv if argv is not None else sys.argv[1:])
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = tuple(args.methods.split(","))
    choices = {b: val_choices(args.results, b, methods) for b in budgets}  # every budget checked before any work
    started, by_budget = time.time(), {}
    for i, budget in enumerate(budgets):
        headline = choices[budget][DEFAULT]
        compared = run_budget(budget, args, headline, command)
        rows = summarise(budget, compared, choices[budget])
        by_budget[str(budget)] = {"headline": headline, "rows": rows, "render_gain": render_gain(compared)}
        doc = {
            "command": command,
            "commit": git_commit(),
            "split": "test",
            "budgets": [b for b in budgets if str(b) in by_budget],
            "seeds": [int(s) for s in args.seeds.split(",")],
            "repeats": args.repeats,
            "by_budget": by_budget,
            "not_run": budgets[i + 1 :],
            "seconds_this_run": round(time.time() - started, 1),
        }
        write_text_atomic(args.results / f"{STEM}.json", json.dumps(doc, indent=2))
        write_text_atomic(args.results / f"{STEM}.md", markdown(doc))
        figure(doc, args.results / f"{STEM}.png")
        print(f"b{budget}: written {args.results / STEM}.md", flush=True)


if __name__ == "__main__":
    main()
