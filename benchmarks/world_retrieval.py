"""World retrieval benchmark: every setting chosen on the validation split, the test split scored once.

    python -m benchmarks.world_retrieval [--budgets 100,200,500] [--val-repeats 2] [--repeats 5]
                                         [--stage val|test|all] [--work runs/world_retrieval]

Stage ``val``: make every candidate set on the train split (PDS as published, the levers of
``protosynth distill`` alone and combined, prototype-guided selection, the coresets) and score each on
``shapes:val`` under the offline ``small`` protocol. The best rendered recipe at each budget is the
chosen one (the ranking by mean val r_mean over the budgets is reported too); the val table goes to
``benchmarks/results/world_val.{json,md}``.

Stage ``test``: score on ``shapes:test`` the rows the final table shows, which are fixed in advance
or chosen in the val stage: PDS as published, the protosynth default, the val-chosen recipe of each
budget, prototype-guided selection, the four coresets, k-center read with every caption of its images
and the full-data upper bound. Results go to
``benchmarks/results/world_retrieval.{json,md}``, each row naming the split that chose it.

Sets and result rows are kept under ``--work`` (a row is keyed by its set's manifest and the evaluation
settings), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.distill import DistillConfig, distill
from protosynth.evaluation.evaluate import METRIC_NAMES, EvalConfig, evaluate
from protosynth.render import RenderConfig
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
CORESETS = ("random", "herding", "kcenter", "forgetting")


# Every lever pinned, so a recipe names the same set whatever the library's defaults are; a recipe's
# options override these.
BASE = {
    "caption": "prototype",
    "text": "captions",
    "candidates": 1,
    "mode": "matched",
    "drop_fraction": 0.2,
    "render": {"init": "noise", "clip_guidance": 0.01},
}


@dataclass(frozen=True)
class Recipe:
    """One way to make a set: ``distill`` options on top of ``BASE``, or a coreset method."""

    name: str
    options: dict = field(default_factory=dict)  # DistillConfig fields; "render" holds RenderConfig fields
    coreset: str | None = None
    rendered: bool = True  # a synthesis recipe (the default must be one)
    library_defaults: bool = False  # the shipped default: nothing pinned, whatever distill does by default
    eval_text: str | None = None  # score the set with this ``eval retrieval`` text mode, not its own rule

    def distill_options(self) -> dict:
        if self.library_defaults:
            return {}
        opts = {**BASE, **self.options, "render": {**BASE["render"], **self.options.get("render", {})}}
        if opts.get("method") == "select":  # nothing is rendered: the render levers do not apply
            return {k: opts[k] for k in ("method", "mode", "drop_fraction", "text")}
        return opts

    def label(self) -> str:
        if self.library_defaults:
            return f"{self.name} (distill's defaults)"
        if self.coreset:
            return f"coreset-{self.coreset}" + (f", text = {self.eval_text}" if self.eval_text else "")
        opts = dict(self.options)
        render = opts.pop("render", {})
        parts = [f"{k}={v}" for k, v in sorted({**opts, **render}.items())]
        return f"{self.name} ({', '.join(parts) or 'PDS matched, CLIP guidance 0.01'})"


def nearest(strength: float, **more) -> dict:
    """Options of a render started from the prototype's nearest member, captioned by the render."""
    return {"caption": "render", **more, "render": {"init": "nearest", "strength": strength, **more.pop("render", {})}}


def members(recipe: Recipe) -> Recipe:
    """``recipe`` with each pair's text read as the mean of its members' captions (``text="members"``)."""
    return replace(recipe, name=f"{recipe.name}+text-members", options={**recipe.options, "text": "members"})


TEXT_SWEEP_ALSO = ("nearest-0.5+caption-start", "nearest-0.7+caption-render")


def own_image(recipe: Recipe) -> Recipe:
    """``recipe`` with each pair's text read as the mean of every caption of its start image (``text="image"``)."""
    return replace(recipe, name=f"{recipe.name}+text-image", options={**recipe.options, "text": "image"})


PUBLISHED = Recipe("pds-published", {"render": {"clip_guidance": 0.0}})
DEFAULT = Recipe("protosynth-default", library_defaults=True)
SELECT = Recipe("select", {"method": "select"}, rendered=False)
START_03 = Recipe("nearest-0.3+caption-start", nearest(0.3, caption="start"))
# Cheap references and the most promising levers first, the costly best-of-4 renders last: the sweep
# can be stopped and resumed, and what it has scored is kept.
LEVERS = [
    Recipe("pds-guided", {}),
    Recipe("caption-render", {"caption": "render"}),
    *[Recipe(f"nearest-{s}+caption-render", nearest(s)) for s in (0.7, 0.8, 0.5, 0.3)],
    *[Recipe(f"nearest-{s}+caption-start", nearest(s, caption="start")) for s in (0.5, 0.3)],
    Recipe("nearest-0.5", {"render": {"init": "nearest", "strength": 0.5}}),
    *[Recipe(f"{m}+nearest-0.7+caption-render", nearest(0.7, mode=m)) for m in ("joint", "image")],
    Recipe("drop-0+nearest-0.7+caption-render", nearest(0.7, drop_fraction=0.0)),
    *[Recipe(f"{m}+caption-render", {"mode": m, "caption": "render"}) for m in ("joint", "image", "text")],
    Recipe("drop-0+caption-render", {"drop_fraction": 0.0, "caption": "render"}),
    Recipe("nearest-0.9+caption-render", nearest(0.9)),
    Recipe("best-of-4", {"candidates": 4}),
    Recipe("best-of-4+caption-render", {"caption": "render", "candidates": 4}),
    Recipe("nearest-0.5+best-of-4+caption-render", nearest(0.5, candidates=4)),
]
CORESET_RECIPES = [Recipe(c, coreset=c, rendered=False) for c in CORESETS]
# The text sweep: the first sweep's (LEVERS, results in world_val_levers.md) chosen recipe and its
# best rendered alternatives, each with its pairs' text read as the mean of its members' captions.
VAL_RECIPES = [
    START_03,
    members(START_03),
    own_image(START_03),
    *[members(r) for r in (PUBLISHED, *[x for x in LEVERS if x.name in TEXT_SWEEP_ALSO])],
]
# How much of the text lever is caption averaging alone: k-center's pairs, each read as the mean of
# every caption of its image (a reference row of the test table, never a candidate).
KCENTER_IMAGE_CAPTIONS = Recipe("kcenter+image-captions", coreset="kcenter", rendered=False, eval_text="image-captions")


def make_set(recipe: Recipe, budget: int, work: Path, seed: int) -> Path:
    """The set of ``recipe`` at ``budget`` (made on the train split unless ``work`` already holds it)."""
    slug = recipe.name if recipe.coreset is None else f"coreset-{recipe.coreset}"
    out = work / "sets" / f"{slug}-b{budget}"
    if (out / "manifest.json").is_file():
        return out
    if recipe.coreset is not None:
        build_coreset(CoresetConfig(method=recipe.coreset, budget=budget, seed=seed, out=out))
        return out
    opts = recipe.distill_options()
    render = RenderConfig(**opts.pop("render", {}))
    distill(DistillConfig(budget=budget, seed=seed, out=out, render=render, **opts))
    return out


def _key(path: Path | None, cfg: EvalConfig) -> str:
    manifest = (path / "manifest.json").read_bytes() if path is not None else b"full:shapes"
    blob = manifest + json.dumps(cfg.__dict__, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def scored(path: Path | None, cfg: EvalConfig, work: Path) -> tuple[dict, dict]:
    """Evaluate one set (None: the full-data row), or reuse the row an earlier run stored."""
    store = work / "rows" / f"{_key(path, cfg)}.json"
    if store.is_file():
        saved = json.loads(store.read_text())
        return _with_set_facts(saved["row"], path), saved["doc"]
    doc = evaluate([path] if path is not None else [], replace(cfg, full=None if path is not None else "shapes"))
    row, head = _with_set_facts(doc["sets"][0], path), {k: v for k, v in doc.items() if k != "sets"}
    store.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(store, json.dumps({"row": row, "doc": head, "cfg": cfg.__dict__}, indent=2, default=str))
    return row, head


def _with_set_facts(row: dict, path: Path | None) -> dict:
    """The row with what the set's manifest says of it (read again for a stored row, so a stored row
    never carries a cost counted an older way)."""
    if path is None:
        return row
    manifest = json.loads((path / "manifest.json").read_text())
    return dict(
        row,
        render_fidelity=manifest.get("render_fidelity"),
        seconds_to_make=seconds_to_make(manifest.get("seconds", {})),
    )


def seconds_to_make(seconds: dict) -> float:
    """A set's seconds from corpus to set: its ``total`` where it records one (a baseline's, whose
    parts are also listed: summing everything counted them twice), else the sum of its stages."""
    if "total" in seconds:
        return round(float(seconds["total"]), 1)
    return round(sum(v for v in seconds.values() if isinstance(v, (int, float))), 1)


def eval_config(recipe: Recipe, cfg: EvalConfig) -> EvalConfig:
    """The evaluation settings of ``recipe``'s rows: ``cfg``, with the recipe's text mode if it names one."""
    return replace(cfg, text=recipe.eval_text) if recipe.eval_text else cfg


def r_mean(row: dict) -> float:
    return row["metrics"]["r_mean"]["mean"]


def _is_scored(recipe: Recipe, budgets: list[int], cfg: EvalConfig, work: Path) -> bool:
    slug = recipe.name if recipe.coreset is None else f"coreset-{recipe.coreset}"
    paths = [work / "sets" / f"{slug}-b{b}" for b in budgets]
    cfg = eval_config(recipe, cfg)
    return all((p / "manifest.json").is_file() and (work / "rows" / f"{_key(p, cfg)}.json").is_file() for p in paths)


def run_val(budgets: list[int], work: Path, seed: int, repeats: int, scored_only: bool = False) -> dict:
    """Score every val recipe (``scored_only``: only those an earlier, stopped sweep scored at every
    budget; the others are listed as not run) and rank the rendered ones."""
    cfg = EvalConfig(protocol="small", repeats=repeats, seed=seed, split="val", val="shapes:val")
    rows, head, not_run = [], {}, []
    for recipe in VAL_RECIPES:  # recipe by recipe: a stopped sweep has whole recipes scored
        if scored_only and not _is_scored(recipe, budgets, cfg, work):
            not_run.append(recipe.label())
            continue
        for budget in budgets:
            row, head = scored(make_set(recipe, budget, work, seed), eval_config(recipe, cfg), work)
            rows.append(dict(row, recipe=recipe.name, label=recipe.label(), rendered=recipe.rendered))
    rows.sort(key=lambda r: r["budget"])
    rendered = {r["recipe"] for r in rows if r["rendered"]}
    by_recipe = {name: [r for r in rows if r["recipe"] == name] for name in rendered}
    ranking = sorted(rendered, key=lambda n: -statistics.mean(r_mean(r) for r in by_recipe[n]))
    best_per_budget = {
        b: max((r for r in rows if r["budget"] == b and r["rendered"]), key=r_mean)["recipe"] for b in budgets
    }
    rows.sort(key=lambda r: r["budget"])
    return dict(
        head,
        split="val",
        sets=rows,
        ranking=ranking,
        chosen=ranking[0],
        runner_up=ranking[1],
        best_per_budget=best_per_budget,
        not_run=not_run,
    )


def _settings(path: Path) -> str:
    """A set's recorded settings without its folder: two recipes that made the same set compare equal."""
    settings = json.loads((path / "manifest.json").read_text()).get("settings", {})
    return json.dumps({k: v for k, v in settings.items() if k != "out"}, sort_keys=True)


def run_test(
    budgets: list[int], work: Path, seed: int, repeats: int, val: dict | None, full: bool, scored_only: bool = False
) -> dict:
    """Score the final table's rows on test. Without ``val`` only the rows fixed in advance (the
    references) are scored, so they can run while the val sweep is still choosing; ``scored_only``
    writes the table from the rows already scored and lists the others as not run."""
    cfg = EvalConfig(protocol="small", repeats=repeats, seed=seed, test="shapes:test")
    plan = [
        (PUBLISHED, "fixed: PDS as published", budgets),
        (SELECT, "fixed", budgets),
        *[(r, "fixed", budgets) for r in CORESET_RECIPES if r.coreset in ("random", "kcenter")],
        (KCENTER_IMAGE_CAPTIONS, "fixed: reference for the text lever", budgets),
        *[(r, "fixed", budgets) for r in CORESET_RECIPES if r.coreset not in ("random", "kcenter")],
    ]
    if val is not None:  # first: the references may still be running in a --stage test-fixed process
        recipes = {r.name: r for r in VAL_RECIPES}
        best = val["best_per_budget"]
        plan = [
            *[(recipes[best[b]], "val: best rendered recipe at this budget", [b]) for b in budgets],
            (DEFAULT, "fixed: the shipped default", budgets),
            *plan,
        ]
    rows, head, seen, not_run = [], {}, {}, []
    for recipe, chosen_by, plan_budgets in plan:
        for budget in plan_budgets:
            path = make_set(recipe, budget, work, seed)
            same = seen.get((budget, _settings(path))) if recipe.coreset is None and not recipe.eval_text else None
            if same is not None:  # the default is the val-chosen recipe: one row, both names
                same["label"] += f" = {recipe.label()}"
                same["chosen_by"] += f"; {chosen_by}"
                continue
            if scored_only and not (work / "rows" / f"{_key(path, eval_config(recipe, cfg))}.json").is_file():
                not_run.append(f"{recipe.label()} at {budget}")
                continue
            row, head = scored(path, eval_config(recipe, cfg), work)
            rows.append(dict(row, recipe=recipe.name, label=recipe.label(), chosen_by=chosen_by))
            seen[(budget, _settings(path))] = rows[-1]
    if full and scored_only and not (work / "rows" / f"{_key(None, cfg)}.json").is_file():
        not_run.append("full data")
    elif full:
        row, head = scored(None, cfg, work)
        rows.append(dict(row, recipe="full", label="full data", chosen_by="fixed"))
    random_by_budget = {r["budget"]: r_mean(r) for r in rows if r["recipe"] == "random"}
    for row in rows:
        if row["budget"] in random_by_budget:
            row["gain_over_random"] = round(r_mean(row) - random_by_budget[row["budget"]], 2)
    rows.sort(key=lambda r: (r["recipe"] == "full", r["budget"]))
    chosen = {"val_chosen": val["best_per_budget"], "val_ranking": val["ranking"]} if val else {}
    return dict(head, split="test", sets=rows, not_run=not_run, **chosen)


def markdown(doc: dict, command: str, title: str) -> str:
    lines = [
        f"# {title}: {doc['protocol']} protocol ({doc['backbone']} + {doc['text_encoder']}), "
        f"scored on {doc['test']}, {doc['repeats']} repeats, score = {doc['score']}",
        "",
        f"Command: `{command}` (commit {doc['commit'][:12]}). Mean ± sample std over repeats, percent. "
        "Sets made on the train split with seed 0; make = seconds from corpus to set (embedding cached).",
        "",
    ]
    if doc["split"] == "val":
        lines += [
            "Chosen on val (the best rendered recipe at each budget): "
            + ", ".join(f"{b}: **{n}**" for b, n in doc["best_per_budget"].items())
            + f". Highest mean r_mean over the budgets: {doc['chosen']}; runner-up {doc['runner_up']}.",
            "",
        ]
    if doc.get("not_run"):
        lines += ["Not run (the run was stopped before them): " + "; ".join(doc["not_run"]) + ".", ""]
    gain = doc["split"] == "test"
    lines += [
        "| budget | recipe | "
        + " | ".join(METRIC_NAMES)
        + (" | gain over random | chosen by" if gain else "")
        + " | make s |",
        "|---|---|" + "---|" * len(METRIC_NAMES) + ("---|---|" if gain else "") + "---|",
    ]
    for row in doc["sets"]:
        cells = [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRIC_NAMES]
        gained = row.get("gain_over_random")
        extra = [f"{gained:+.1f}" if gained is not None else "-", row["chosen_by"]] if gain else []
        lines.append(
            f"| {row['budget']} | {row['label']} | "
            + " | ".join(cells + extra)
            + f" | {row.get('seconds_to_make', '')} |"
        )
    return "\n".join(lines) + "\n"


def _write(doc: dict, results: Path, stem: str, command: str, title: str, started: float) -> None:
    doc.update(
        command=command,
        commit=git_commit(),
        threads_this_process=torch.get_num_threads(),
        seconds_this_run=round(time.time() - started, 1),
    )
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / f"{stem}.json", json.dumps(doc, indent=2))
    write_text_atomic(results / f"{stem}.md", markdown(doc, command, title))
    print(markdown(doc, command, title))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--val-repeats", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="Repeats of the test stage.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stage",
        choices=("val", "test", "all", "test-fixed"),
        default="all",
        help="test-fixed: score only the rows fixed in advance on test (no val needed; the test stage reuses them).",
    )
    ap.add_argument("--work", type=Path, default=Path("runs/world_retrieval"))
    ap.add_argument("--results", type=Path, default=RESULTS, help="Folder for the .json/.md results.")
    ap.add_argument("--no-full", action="store_true", help="Skip the full-data upper-bound row.")
    ap.add_argument(
        "--scored-only",
        action="store_true",
        help="Use only rows already scored (a stopped run): choose among the val recipes scored at every budget, "
        "write the test table from the scored rows, and list the rest as not run.",
    )
    ap.add_argument(
        "--val-from-results",
        action="store_true",
        help="Test stage: take the val choice from --results' world_val.json (a finished val stage) instead of "
        "running the val stage again.",
    )
    args = ap.parse_args(argv)
    command = "python -m benchmarks.world_retrieval " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    budgets = [int(b) for b in args.budgets.split(",")]
    if args.stage == "test-fixed":
        run_test(budgets, args.work, args.seed, args.repeats, None, not args.no_full)
        return
    if args.val_from_results:
        val = json.loads((args.results / "world_val.json").read_text())
        val["best_per_budget"] = {int(b): name for b, name in val["best_per_budget"].items()}
    else:
        val = run_val(budgets, args.work, args.seed, args.val_repeats, args.scored_only)
        _write(val, args.results, "world_val", command, "World validation sweep", started)
    if args.stage in ("test", "all"):
        test = run_test(budgets, args.work, args.seed, args.repeats, val, not args.no_full, args.scored_only)
        _write(test, args.results, "world_retrieval", command, "World retrieval (test, scored once)", started)


if __name__ == "__main__":
    main()
