"""``protosynth eval retrieval`` and ``eval cross-arch``: train R retrieval models per set, report mean/std.

Each repeat r trains from seed ``seed + r``. The reported score is the final epoch's; with
``select_on_test`` it is instead the best checkpoint (every ``checkpoint_every`` epochs, by r_mean)
on the test split, which is what the LoRS/RepBlend reference code reports; every output labels it.
Standard deviations are sample standard deviations (ddof=1) over the repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..configs import EvalConfig  # noqa: F401 (re-exported: its public home)
from ..corpus import load_source
from ..errors import P, ProtosynthError
from ..models.backbones import load_backbone
from ..models.text_encoders import load_text_encoder
from ..sets.distilled import DistilledSet, load_distilled
from ..util.progress import StepBar
from ..util.runinfo import check_device
from .data import (
    check_no_overlap,
    default_test_spec,
    full_data,
    image_hashes,
    recipe_data,
    set_data,
    test_data,
)
from .metrics import METRICS
from .protocols import Protocol, get_protocol
from .retrieval import PairData, batched, train_and_score

METRIC_NAMES = list(METRICS)
FINAL = "final epoch"
SELECTED = "best checkpoint on the test split (--select-on-test; model selection on test, as the reference code does)"


def validate(cfg: EvalConfig, paths: list[Path]) -> Protocol:
    """The protocol, the values (``EvalConfig.check``), the set folders given and the device."""
    protocol = get_protocol(cfg.protocol)
    cfg.check()
    if not paths and not cfg.full:
        raise ProtosynthError(f"give at least one distilled-set folder, or {P.full('SPEC')}", param="paths")
    check_device(cfg.device)
    return protocol


def summarise(runs: list[dict[str, float]]) -> dict[str, dict]:
    out = {}
    for name in METRIC_NAMES:
        values = [r[name] for r in runs]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name] = {
            "mean": round(float(np.mean(values)), 3),
            "std": round(std, 3),
            "runs": [round(v, 3) for v in values],
        }
    return out


def _text_spec(protocol: Protocol, sets: list[DistilledSet], override: str | None) -> str:
    if override:
        return override
    if protocol.text != "clip":
        return protocol.text
    specs = {(s.manifest.get("clip") or {}).get("spec") for s in sets} or {"default"}
    if None in specs or len(specs) > 1:
        raise ProtosynthError(
            f"{P.protocol} {protocol.name} embeds text with the CLIP each set was made with; these sets "
            f"name {sorted(map(str, specs))}: evaluate sets of one CLIP together"
        )
    return f"clip:{specs.pop()}"


def _test_spec(cfg: EvalConfig, sets: list[DistilledSet]) -> str:
    """The corpus the models are scored on: the test split, or the validation split with ``split="val"``."""
    given = cfg.val if cfg.split == "val" else cfg.test
    if given:
        return given
    corpora = [s.manifest.get("corpus", {}).get("spec") for s in sets] + ([cfg.full] if cfg.full else [])
    if any(c is None for c in corpora):
        raise ProtosynthError(f"a set's manifest names no corpus; pass {P.test('SPEC')}")
    specs = {default_test_spec(c, cfg.split) for c in corpora}
    if len(specs) > 1:
        raise ProtosynthError(
            f"the sets come from corpora with different test splits ({sorted(specs)}); pass {P.test('SPEC')}"
        )
    return specs.pop()


def evaluate(paths: list[Path], cfg: EvalConfig, on_row: Callable[[int, dict, dict], None] | None = None) -> dict:
    """Evaluate every set (and the --full upper bound) under one protocol; the ``--json`` document.
    ``on_row(i, row, head)`` is called as each set's row is finished (the document without its
    ``sets``), so a caller can store rows as they come: a stopped group keeps what it finished."""
    protocol = validate(cfg, paths)
    sets = [load_distilled(p, verify=True) for p in paths]  # a set changed since it was written is refused here
    text_spec = _text_spec(protocol, sets, cfg.text_encoder)
    backbone = load_backbone(cfg.backbone or protocol.backbone)
    size = cfg.image_size or protocol.image_size or backbone.image_size
    encoder = load_text_encoder(text_spec)
    normalise = text_spec.startswith("clip:")
    test_spec = _test_spec(cfg, sets)
    test_corpus = load_source(cfg.reading.of(test_spec, skip_bad=False))  # a test split is read whole
    test = test_data(test_corpus, encoder, backbone, size, normalise)
    hashes = image_hashes(test_corpus)
    for ds in sets:
        check_no_overlap(ds, test_corpus, hashes)
    jobs: list[tuple[dict, PairData, int]] = []
    for ds in sets:
        data = recipe_data(set_data(ds, encoder, backbone, size, normalise, cfg.text), cfg.recipe)
        row = {
            "path": str(ds.root),
            "method": ds.manifest.get("method"),
            "budget": ds.manifest.get("budget", len(ds)),
            "mode": ds.manifest.get("mode"),
            "text": data.notes["text"],
            "learned_lrs": data.notes["learned_lrs"],
            "recipe": cfg.recipe,
            "loss": "wbce" if data.similarity is not None else "info_nce",
            "image_side": "frozen+head" if data.image_head else ("finetune" if protocol.train_backbone else "frozen"),
        }
        jobs.append((row, data, cfg.epochs or protocol.epochs))
    if cfg.full:
        full = load_source(cfg.reading.of(cfg.full))
        if full.fingerprint == test_corpus.fingerprint:
            raise ProtosynthError(f"{P.full} {cfg.full} is the test split {test_spec}")
        row = {
            "path": None,
            "method": "full",
            "budget": full.n_pairs,
            "mode": None,
            "text": "captions",
            "learned_lrs": False,
            "recipe": cfg.recipe,
            "corpus": cfg.full,
        }
        jobs.append((row, full_data(full, encoder, backbone, size, normalise), cfg.epochs or protocol.full_epochs))
    head = {
        "protocol": protocol.name,
        "backbone": backbone.spec,
        "text_encoder": encoder.spec,
        "image_size": size,
        "text_space": encoder.space,
        "test": test_spec,
        "split": cfg.split,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "select_on_test": cfg.select_on_test,
        "score": SELECTED if cfg.select_on_test else FINAL,
        "settings": asdict(protocol),
    }
    total = sum(cfg.repeats * epochs for _, _, epochs in jobs)
    results = []
    with StepBar(f"eval {protocol.name} ({backbone.spec})", total) as bar:
        for row, data, epochs in jobs:
            started = time.time()
            frozen = None
            if not protocol.train_backbone or data.image_head:  # a frozen backbone's features: computed once per set
                with torch.no_grad():
                    backbone.model.to(cfg.device).eval()
                    feats = lambda x: backbone.features(x, protocol.image_features)  # noqa: E731
                    frozen = (batched(feats, data.images, cfg.device), batched(feats, test.images, cfg.device))
            runs = [
                train_and_score(
                    protocol,
                    backbone,
                    data,
                    test,
                    cfg.seed + r,
                    epochs,
                    cfg.select_on_test,
                    cfg.device,
                    frozen,
                    progress=lambda: bar.advance(row["method"] or ""),
                )
                for r in range(cfg.repeats)
            ]
            scored = [r.best if cfg.select_on_test else r.final for r in runs]
            row = dict(
                row,
                epochs=epochs,
                metrics=summarise(scored),
                seconds=round(time.time() - started, 1),
                score=SELECTED if cfg.select_on_test else FINAL,
            )
            if cfg.select_on_test:
                row["best_epochs"] = [r.best_epoch for r in runs]
                row["final_metrics"] = summarise([r.final for r in runs])
            results.append(row)
            if on_row is not None:
                on_row(len(results) - 1, row, head)
    return {**head, "sets": results}


def cross_arch(paths: list[Path], cfg: EvalConfig, archs: list[str] | None = None) -> dict:
    """The same protocol over several image backbones; one result per (set, arch)."""
    protocol = validate(cfg, paths)
    archs = archs or list(protocol.cross_archs)
    if not archs:
        raise ProtosynthError(f"{P.protocol} {protocol.name} has no default {P.archs}; pass some", param="archs")
    docs = [evaluate(paths, replace(cfg, backbone=a)) for a in archs]
    sets = [dict(row, arch=arch) for arch, doc in zip(archs, docs) for row in doc["sets"]]
    head = {k: v for k, v in docs[0].items() if k not in ("sets", "backbone")}
    return dict(head, archs=archs, sets=sets)
