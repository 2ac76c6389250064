"""One set scored under one evaluation, its row stored so a stopped benchmark resumes (the presets sweep)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from protosynth.evaluation.evaluate import EvalConfig, evaluate
from protosynth.util.files import write_text_atomic


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


def r_mean(row: dict) -> float:
    return row["metrics"]["r_mean"]["mean"]
