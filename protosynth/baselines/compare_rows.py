"""The rows of ``compare-baselines``: every (method, set seed) set evaluated under each recipe and text
reading, cached one file per row so reruns resume, then pooled into one table per (recipe, reading).

A row of a table pools its method's sets over the set seeds: mean ± sample std over every (set seed,
training repeat) run, with the number of each. A set that cannot be read with a table's text reading
(``evaluation.data.unsupported_reading``) is marked with the reason, never scored another way. The full
data row does not depend on the recipe or the reading (it trains on every caption, with nothing a
method's own recipe adds), so it is trained once and shown in every table; likewise a set that stores
nothing of its own recipe (random, coresets, PDS) is trained once per reading for both recipes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..corpora.source import flat_settings
from ..evaluation.data import has_own_recipe, unsupported_reading
from ..evaluation.evaluate import METRIC_NAMES, EvalConfig, evaluate
from ..sets.distilled import load_distilled
from ..util.files import write_text_atomic

# EvalConfig settings added after rows were first stored: left out of a row's key while at these
# values, so rows stored before keep their keys (they were scored with a set's own recipe)
LATER = {"skip_bad": False, "image_column": None, "caption_column": None, "recipe": "own"}


def row_key(path: Path | None, eval_cfg: EvalConfig) -> str:
    """Rows are reused while the set and the evaluation settings are unchanged."""
    settings = {k: v for k, v in flat_settings(eval_cfg).items() if not (k in LATER and v == LATER[k])}
    blob = ((path / "manifest.json").read_bytes() if path is not None else b"full") + json.dumps(
        settings, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _store(out: Path, method: str, path: Path | None, eval_cfg: EvalConfig) -> Path:
    return out / "rows" / f"{method}-{row_key(path, eval_cfg)}.json"


def evaluate_group(out: Path, sets: dict[tuple[str, int], Path], eval_cfg: EvalConfig) -> dict[tuple[str, int], dict]:
    """Every set under one (recipe, reading): a stored row where there is one, else one evaluation of
    all the others (test data loaded once); a set the reading cannot read gets ``unsupported``."""
    rows: dict[tuple[str, int], dict] = {}
    todo = {}
    for key, path in sets.items():
        ds = load_distilled(path)
        # a set with nothing of its own trains the same under both recipes: one row serves both tables
        store = _store(out, key[0], path, eval_cfg if has_own_recipe(ds) else replace(eval_cfg, recipe="own"))
        if store.is_file():
            rows[key] = json.loads(store.read_text())
        elif reason := unsupported_reading(ds, eval_cfg.text):
            rows[key] = {"unsupported": f"text {eval_cfg.text}: {reason}"}
        else:
            todo[key] = store
    if todo:
        keys = list(todo)

        def store_row(i: int, row: dict, head: dict) -> None:  # each row stored as it finishes: a stopped group resumes
            rows[keys[i]] = {"row": row, "head": head}
            todo[keys[i]].parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(todo[keys[i]], json.dumps(rows[keys[i]], indent=2))

        evaluate([sets[k] for k in keys], eval_cfg, on_row=store_row)
    return rows


def evaluate_full(out: Path, eval_cfg: EvalConfig) -> dict:
    """The upper-bound row, its settings keyed as before recipes and readings existed (it has neither)."""
    cfg = replace(eval_cfg, text="auto", recipe="own")
    store = _store(out, "full", None, cfg)
    if not store.is_file():
        doc = evaluate([], cfg)
        saved = {"row": doc["sets"][0], "head": {k: v for k, v in doc.items() if k != "sets"}}
        store.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(store, json.dumps(saved, indent=2))
    return json.loads(store.read_text())


def pooled(method: str, per_seed: dict[int, dict]) -> dict:
    """One table row from a method's rows at each set seed: metrics pooled over seeds x repeats."""
    scored = {s: r["row"] for s, r in per_seed.items() if "row" in r}
    marked = {s: r["unsupported"] for s, r in per_seed.items() if "unsupported" in r}
    if marked:
        return {"method": method, "set_seeds": sorted(per_seed), "unsupported": next(iter(marked.values()))}
    first = next(iter(scored.values()))
    metrics = {}
    for name in METRIC_NAMES:
        runs = [v for r in scored.values() for v in r["metrics"][name]["runs"]]
        metrics[name] = {
            "mean": round(float(np.mean(runs)), 3),
            "std": round(float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0, 3),
            "runs": runs,
            "seed_means": {str(s): r["metrics"][name]["mean"] for s, r in scored.items()},
        }
    keep = ("text", "learned_lrs", "loss", "image_side", "epochs", "recipe", "budget", "score")
    return dict(
        {k: first[k] for k in keep if k in first},
        method=method,
        metrics=metrics,
        set_seeds=sorted(scored),
        repeats=len(first["metrics"]["r_mean"]["runs"]),
    )
