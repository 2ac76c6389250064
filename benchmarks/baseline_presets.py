"""The optimisation baselines' world presets, chosen on the validation split.

    python -m benchmarks.baseline_presets [--budgets 100,200,500] [--methods repblend,amd,mtt-vl,lors]
                                          [--candidates official,...] [--repeats 2]
                                          [--work runs/compare_world] [--prune 2]
                                          [--score-only] [--reuse TABLE ...]

Issue 30 asks the world presets to start from the authors' values. For each method and budget this
sweep makes the set of each candidate (``presets.WORLD_CANDIDATES``: Flickr's official preset as it
is, the same with the world's learning-rate scale, the earlier world preset), scores it on ``shapes:val`` under
the ``small`` protocol with the protocol's recipe (how every row of the headline table is trained;
the set's own recipe, with its S and learned lrs, is recorded beside it) and records how far the
run moved the set from its start. The best protocol-recipe val r_mean of a method and budget is
chosen, unless a candidate at most half as costly to make scores within the leader's noise
(``choose``). Results go to ``benchmarks/results/baseline_presets_val.{json,md}`` after every scored set,
so a stopped sweep leaves a table of what it measured; ``--candidates`` runs a subset, so one core
can make every method's official set before any alternative.

An official set at 100 pairs costs 12-27 minutes at one torch thread on an idle core (3,000 iterations), so
larger budgets only retry what the smaller one left in play: a change whose values scored more
than ``--prune`` r_mean points under its method's best at the previous budget of the run (in every
set made with them) is recorded as pruned there, the official values too: a candidate 16 points
under at 100 pairs costs hours a set at 200 and 500 and cannot become the choice.
``--score-only`` tables the sets that exist without making any, which merges the tables of sweeps
run side by side on disjoint ``--methods``. ``--reuse TABLE`` (repeatable) takes the scored and failed rows of an
earlier table (sets do not outlive a machine, their scores do) where the candidate's settings and
the repeats are the same, so a later session goes on where the table stopped.

Buffers and sets live where ``protosynth compare-baselines --out WORK`` keeps its own
(``WORK/buffers/full|heads``), so the comparison reuses the buffers; a candidate's set is in
``WORK/presets/<method>-b<budget>-<candidate>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.scoring import r_mean, scored
from protosynth.baselines.buffer import build_buffer
from protosynth.baselines.compare import CompareConfig, buffer_config
from protosynth.baselines.presets import (
    WORLD_CANDIDATES,
    BaselineConfig,
    buffer_kind,
    preset,
    world_candidate,
)
from protosynth.baselines.run import DivergedError, distill_baseline
from protosynth.corpora.spec import canonical_spec
from protosynth.evaluation.evaluate import METRIC_NAMES, EvalConfig
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
METHODS = ("repblend", "amd", "mtt-vl", "lors")  # cheapest first: a stopped sweep has the most methods


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: dict  # BaselineConfig fields set on top of the preset


def candidates(method: str, budget: int) -> list[Candidate]:
    """Starting from the authors' values (issue 30): the library's world candidates
    (``presets.world_candidate``), each with every value it sets, so a row is matched by what its set
    was made with whatever the preset is at the time."""
    return [Candidate(name, world_candidate(method, budget, name)) for name in WORLD_CANDIDATES]


def family(candidate: str) -> str:
    """The value a candidate changes (``data-lr-100`` and ``data-lr-1000`` both change the data lr)."""
    return candidate if candidate == "preset" else candidate.rsplit("-", 1)[0]


def pruned_by(rows: list[dict], method: str, budget: int, cand: Candidate, margin: float | None) -> str | None:
    """Why ``cand`` is not worth making at ``budget``: every set with its changed values lost by more
    than ``margin`` points to the method's best at the previous budget of ``rows`` (or was pruned or
    failed there); None when it is still in play. Sets are matched by the settings they were made
    with, so a preset change that renames candidates does not flip what lost into what won; by the
    family of the change (``family``) only where no set at the previous budget had its values."""
    earlier = [r for r in rows if r["method"] == method and r["budget"] < budget]
    if margin is None or not earlier:
        return None
    prev = max(r["budget"] for r in earlier)
    at_prev = [r for r in earlier if r["budget"] == prev]
    same = [r for r in at_prev if _has_values(r, cand.overrides)]
    same = same or [r for r in at_prev if family(r["candidate"]) == family(cand.name)]
    best = max((r_mean(r) for r in at_prev if "metrics" in r), default=None)
    if not same or best is None:
        return None
    scored_same = [r_mean(r) for r in same if "metrics" in r]
    if not scored_same:
        return f"{'failed' if 'failed' in same[0] else 'pruned'} at {prev} pairs"
    gap = best - max(scored_same)
    return f"{gap:.1f} under the best at {prev} pairs" if gap > margin else None


def _has_values(row: dict, overrides: dict) -> bool:
    """Whether ``row``'s set was made with every value of ``overrides`` (False when not recorded)."""
    made_with = row.get("settings")
    return made_with is not None and all(made_with.get(k) == v for k, v in overrides.items())


def settings(method: str, budget: int, cand: Candidate) -> dict:
    """The values the candidate's set is made with: the world preset with the candidate's changes."""
    return {**preset(method, "world", budget), **cand.overrides}


def _key(method: str, budget: int, made_with: dict) -> tuple[str, int, str]:
    return method, budget, json.dumps(made_with, sort_keys=True)


def reusable(table: Path, repeats: int) -> dict[tuple[str, int, str], dict]:
    """The scored and failed rows of an earlier table by method, budget and the settings their set
    was made with (so a row outlives a preset change that renames its candidate). A row without its
    settings is not taken: what it was made with is no longer known once a preset changes."""
    try:
        doc = json.loads(table.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--reuse {table}: not a presets table ({exc})") from exc
    if doc.get("recipe", "own") != "protocol":
        raise SystemExit(f"--reuse {table}: scored under the sets' own recipe; this sweep chooses under the protocol's")
    if doc.get("repeats") != repeats:
        raise SystemExit(f"--reuse {table}: scored with {doc.get('repeats')} repeats, this sweep uses {repeats}")
    origin = f"{table} (commit {str(doc.get('commit'))[:12]})"
    out = {}
    for row in doc["rows"]:
        if ("metrics" in row or "failed" in row) and "settings" in row:
            key = _key(row["method"], row["budget"], row["settings"])
            out[key] = dict(row, reused_from=row.get("reused_from", origin))
    return out


def reused(earlier: dict[tuple[str, int, str], dict], method: str, budget: int, cand: Candidate) -> dict | None:
    """The earlier row whose set was made with this candidate's settings, named as this candidate."""
    old = earlier.get(_key(method, budget, settings(method, budget, cand)))
    return None if old is None else dict(old, candidate=cand.name, overrides=cand.overrides)


def buffers(work: Path) -> dict[str, Path]:
    """The two expert buffers, made as ``compare-baselines --out work`` makes them (or reused)."""
    cfg = CompareConfig(out=work, corpus=canonical_spec("shapes"))
    out = {}
    for kind in ("full", "heads"):
        bcfg = buffer_config(cfg, kind == "heads")
        if not (bcfg.out / "manifest.json").is_file():
            build_buffer(bcfg)
        out[kind] = bcfg.out
    return out


def set_paths(method: str, budget: int, cand: Candidate, work: Path) -> tuple[Path, Path]:
    """A candidate's set folder, and the file that records why it could not be made."""
    out = work / "presets" / f"{method}-b{budget}-{cand.name}"
    return out, out.with_name(out.name + ".failed")


def make_set(method: str, budget: int, cand: Candidate, work: Path, bufs: dict[str, Path], seed: int) -> Path | str:
    """The candidate's set folder, or why it could not be made (a diverged matching loss is a result
    of the candidate, kept in ``<set>.failed`` so a resumed sweep does not run it again)."""
    out, failed = set_paths(method, budget, cand, work)
    if failed.is_file():
        return failed.read_text()
    if not (out / "manifest.json").is_file():
        cfg = BaselineConfig(method=method, budget=budget, buffer=bufs[buffer_kind(method)], out=out, seed=seed)
        try:
            distill_baseline(BaselineConfig(**{**cfg.__dict__, **cand.overrides}))
        except DivergedError as exc:  # anything else (a stale checkpoint, a bad buffer) stops the sweep
            failed.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(failed, str(exc))
            return str(exc)
    check_made_with(out, settings(method, budget, cand))
    return out


def check_made_with(out: Path, made_with: dict) -> None:
    """A set folder left by a sweep under other presets keeps its candidate's name, not its values:
    one whose manifest records other settings is an error, never scored as this candidate."""
    recorded = json.loads((out / "manifest.json").read_text())["settings"]
    differ = [f"{k}={recorded[k]} (the candidate has {v})" for k, v in made_with.items() if recorded.get(k, v) != v]
    if differ:
        raise SystemExit(f"{out}: made with {', '.join(differ)}; move the folder away to remake it")


def markdown(doc: dict) -> str:
    lines = [
        f"# World presets of the optimisation baselines, chosen on val: small protocol, scored on "
        f"shapes:val, {doc['repeats']} repeats",
        "",
        f"Command: `{doc['command']}` (commit {str(doc['commit'])[:12]}). Mean ± sample std over repeats, "
        "percent. Sets made on the train split with seed 0 from the buffers `compare-baselines` uses. "
        "r_mean is under the protocol's recipe (every headline row is trained that way), the set's own recipe "
        "(its S and learned lrs) beside it; moved: mean absolute change from the start. **Chosen**: the highest "
        "val r_mean of a method and budget among the candidates run, or, where a candidate scores within the "
        "leader's noise (the larger std over repeats) at no more than half its make time, the cheapest such "
        "(provisional while any is not run yet).",
        "",
        "| method | budget | candidate | settings | "
        + " | ".join(METRIC_NAMES)
        + " | r_mean, own recipe | moved (pixels, text, lrs, S) | make s | chosen |",
        "|---|---|---|---|" + "---|" * len(METRIC_NAMES) + "---|---|---|---|",
    ]
    for row in doc["rows"]:
        if "failed" in row or "pruned" in row:
            why = f"failed: {row['failed']}" if "failed" in row else f"pruned: {row['pruned']}"
            cells = [why] + [""] * (len(METRIC_NAMES) - 1)
        else:
            cells = [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRIC_NAMES]
        changed = _described(row)
        chosen = "**chosen**" if doc["chosen"].get(f"{row['method']}-b{row['budget']}") == row["candidate"] else ""
        lines.append(
            f"| {row['method']} | {row['budget']} | {row['candidate']} | {changed} | "
            + " | ".join(cells)
            + f" | {_own(row)} | {_moved(row)} | {row.get('seconds_to_make', '-')} | {chosen} |"
        )
    origins = sorted({row["reused_from"] for row in doc["rows"] if "reused_from" in row})
    if origins:
        n = sum("reused_from" in row for row in doc["rows"])
        lines += [
            "",
            f"{n} rows were taken from earlier tables (`--reuse`; their sets were not remade): {', '.join(origins)}.",
        ]
    if doc["not_run"]:
        lines += ["", "Not run yet: " + ", ".join(doc["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def _described(row: dict) -> str:
    """The candidate's settings as changes to Flickr's official values."""
    official = preset(row["method"], "flickr", row["budget"])
    changed = {k: v for k, v in row["overrides"].items() if official.get(k) != v}
    return "Flickr's official values" + "".join(f", {k}={v}" for k, v in changed.items())


def _own(row: dict) -> str:
    own = row.get("own_recipe")
    return "-" if own is None else f"{own['r_mean']['mean']:.1f} ± {own['r_mean']['std']:.1f}"


def _moved(row: dict) -> str:
    """Mean absolute change from the start: pixels, text features, the two inner lrs, S."""
    m = row.get("movement")
    if not m:
        return "-"
    parts = [m["pixels"], m["text"], (m["lr_image"] + m["lr_text"]) / 2]
    parts += [m["similarity"]] if "similarity" in m else []
    return ", ".join(f"{v:.3g}" for v in parts)


# A candidate within noise of the leader is taken instead when it costs at most this share of the
# leader's time to make: the test table makes each chosen preset at 3 set seeds and 3 budgets.
CHEAPER_WITHIN_NOISE = 0.5


def choose(rows: list[dict]) -> dict[str, str]:
    """Each method and budget's candidate: the highest val r_mean (protocol's recipe), unless a
    candidate costing at most ``CHEAPER_WITHIN_NOISE`` of the leader's make time scores within the
    leader's noise (the larger sample std over repeats of the two rows); then the cheapest such."""
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        if "failed" not in row and "pruned" not in row:
            by_key.setdefault(f"{row['method']}-b{row['budget']}", []).append(row)
    chosen = {}
    for key, scored_rows in by_key.items():
        leader = max(scored_rows, key=r_mean)
        near = [r for r in scored_rows if _within_noise(r, leader) and _cheaper(r, leader)]
        chosen[key] = min(near, key=lambda r: r["seconds_to_make"])["candidate"] if near else leader["candidate"]
    return chosen


def _within_noise(row: dict, leader: dict) -> bool:
    noise = max(row["metrics"]["r_mean"]["std"], leader["metrics"]["r_mean"]["std"])
    return r_mean(leader) - r_mean(row) <= noise


def _cheaper(row: dict, leader: dict) -> bool:
    made, lead = row.get("seconds_to_make"), leader.get("seconds_to_make")
    return made is not None and lead is not None and made <= CHEAPER_WITHIN_NOISE * lead


def write(doc: dict, results: Path) -> None:
    doc["chosen"] = choose(doc["rows"])
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "baseline_presets_val.json", json.dumps(doc, indent=2))
    write_text_atomic(results / "baseline_presets_val.md", markdown(doc))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--candidates", default=",".join(WORLD_CANDIDATES), help="which candidates to run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/compare_world"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--prune", type=float, default=2.0, help="r_mean points; a negative value prunes nothing")
    ap.add_argument("--score-only", action="store_true", help="table the sets that exist, make none")
    ap.add_argument(
        "--reuse", type=Path, action="append", default=[], help="an earlier table whose scored rows are not remade"
    )
    args = ap.parse_args(argv)
    command = "python -m benchmarks.baseline_presets " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    budgets, methods = [int(b) for b in args.budgets.split(",")], args.methods.split(",")
    wanted = args.candidates.split(",")
    unknown = [name for name in wanted if name not in WORLD_CANDIDATES]
    if unknown:
        raise SystemExit(f"--candidates: {', '.join(unknown)} not among {', '.join(WORLD_CANDIDATES)}")
    plan = [(b, m, c) for b in budgets for m in methods for c in candidates(m, b) if c.name in wanted]
    eval_cfg = EvalConfig(
        protocol="small", repeats=args.repeats, seed=args.seed, split="val", val="shapes:val", recipe="protocol"
    )
    doc = {"repeats": args.repeats, "recipe": "protocol", "command": command, "commit": git_commit()}
    doc.update(rows=[], not_run=[])
    earlier = {key: row for table in args.reuse for key, row in reusable(table, args.repeats).items()}
    bufs = None if args.score_only else buffers(args.work)
    margin = None if args.prune < 0 else args.prune
    not_run = []
    for i, (budget, method, cand) in enumerate(plan):
        old = reused(earlier, method, budget, cand)
        if old is not None:
            doc["rows"].append(old)
            print(f"{method} b{budget} {cand.name}: reused from {old['reused_from']}", flush=True)
            continue
        why = pruned_by(doc["rows"], method, budget, cand, margin)
        if why is None and args.score_only and not _exists(method, budget, cand, args.work):
            not_run.append(f"{method} b{budget} {cand.name}")
            continue
        if why is not None:
            row = {"pruned": why}
        else:
            path = make_set(method, budget, cand, args.work, bufs, args.seed)
            row = {"failed": path} if isinstance(path, str) else scored_both(path, eval_cfg, args.work)
        row = dict(row, method=method, budget=budget, candidate=cand.name, overrides=cand.overrides)
        row["settings"] = settings(method, budget, cand)
        doc["rows"].append(row)
        doc["not_run"] = not_run + [f"{m} b{b} {c.name}" for b, m, c in plan[i + 1 :]]
        doc.update(threads_this_process=torch.get_num_threads(), seconds_this_run=round(time.time() - started, 1))
        write(doc, args.results)
        said = row.get("failed") or (f"pruned, {row['pruned']}" if "pruned" in row else f"val r_mean {r_mean(row):.1f}")
        print(f"{method} b{budget} {cand.name}: {said}", flush=True)
    doc["not_run"] = not_run
    write(doc, args.results)


def scored_both(path: Path, cfg: EvalConfig, work: Path) -> dict:
    """The set's row under the protocol's recipe (what the choice is made on: every row of the headline
    table is trained that way), with its own recipe's metrics (stored S and lrs) and how far the run
    moved the set from its start beside it: DD-Ranking's with and without."""
    row = scored(path, cfg, work)[0]
    row["own_recipe"] = scored(path, replace(cfg, recipe="own"), work)[0]["metrics"]
    row["movement"] = json.loads((path / "manifest.json").read_text()).get("movement")
    return row


def _exists(method: str, budget: int, cand: Candidate, work: Path) -> bool:
    out, failed = set_paths(method, budget, cand, work)
    return (out / "manifest.json").is_file() or failed.is_file()


if __name__ == "__main__":
    main()
