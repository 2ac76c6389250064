"""``protosynth models train``: the small CLIP, then the small unCLIP decoder conditioned on it.

Writes ``OUT/clip`` (open_clip local-dir model), ``OUT/decoder`` (diffusers pipeline folder),
``OUT/metrics.json`` (held-out metrics of both) and ``OUT/provenance.json`` (command, seed, commit,
seconds). Both trainers checkpoint and resume, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..configs import ModelsTrainConfig  # noqa: F401 (re-exported: its public home)
from ..corpora.source import flat_settings
from ..corpus import Corpus, load_corpus, load_source
from ..errors import P, ProtosynthError
from ..sets.distilled import corpus_record
from ..util.files import check_writable, git_commit, write_text_atomic
from .clip import train_clip
from .decoder import DecoderTrainConfig, calibrate_decoder, train_decoder


def split_corpus(cfg: ModelsTrainConfig) -> tuple[Corpus, Corpus]:
    """Train and held-out corpora: the world's own test split, or a seeded 10% of a file corpus's
    images. ``--image-root``, ``--skip-bad`` and the column options read ``--test`` as they read
    ``--corpus``: a Karpathy train and test file share one image folder."""
    train = load_source(cfg.corpus)
    if cfg.test:
        test = load_source(cfg.corpus.reading(cfg.test))
    elif train.pixels is not None:  # the world: its own test split
        if train.image_keys and train.image_keys[0].startswith("test/"):
            raise ProtosynthError(
                f"{P.corpus} {cfg.corpus.spec}: training on the world's test split; pass {P.test('SPEC')}"
            )
        opts = [o for o in cfg.corpus.spec.split(",")[1:] if not o.startswith("n=")]
        test = load_corpus(",".join(["shapes:test"] + opts + (["n=200"] if cfg.quick else [])))
    else:
        return _hold_out(train, cfg.seed)
    if test.fingerprint == train.fingerprint:
        raise ProtosynthError(
            f"{P.corpus} {cfg.corpus.spec}: the held-out corpus is the training corpus; pass another {P.test('SPEC')}"
        )
    return train, test


def _hold_out(train: Corpus, seed: int) -> tuple[Corpus, Corpus]:
    """A seeded 10% of the images (at least one) held out of a file corpus for metrics."""

    rng = np.random.default_rng(seed)
    n_test = max(1, train.n_images // 10)
    if train.n_images < 2:
        raise ProtosynthError(f"corpus {train.spec}: needs at least 2 images to hold one out")
    test_idx = set(rng.choice(train.n_images, n_test, replace=False).tolist())
    parts = [[i for i in range(train.n_images) if (i in test_idx) == held] for held in (False, True)]
    out = [train.subset(idx, fingerprint=train.fingerprint + f"-{len(idx)}") for idx in parts]
    return out[0], out[1]


def train_models(cfg: ModelsTrainConfig, out: Path, command: str | None = None) -> dict:
    """Train what ``cfg.only`` names into ``out``; returns the merged metrics."""
    cfg.check()
    if out.exists() and not out.is_dir():
        raise ProtosynthError(f"{P.out} {out} is a file, not a folder")
    if cfg.only == "decoder" and not (out / "clip" / "open_clip_config.json").is_file():
        raise ProtosynthError(
            f"{P.only('decoder')} needs a trained CLIP in {out / 'clip'}; run with {P.only('clip')} first"
        )

    dcfg = DecoderTrainConfig.preset(cfg.quick, **cfg.decoder)  # checked now, not after the CLIP's training
    check_writable(out, f"{P.out} {out}")
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_corpus(cfg)
    metrics = _read(out / "metrics.json", {})
    t0 = time.time()
    if cfg.only in ("all", "clip"):
        metrics["clip"] = train_clip(train, test, out / "clip", cfg.clip)
    if cfg.only in ("all", "decoder"):
        metrics["decoder"] = train_decoder(train, test, out / "clip", out / "decoder", dcfg)
    _record(out, cfg, train, test, metrics, time.time() - t0, command)
    return metrics


def calibrate_models(cfg: ModelsTrainConfig, out: Path, command: str | None = None) -> dict:
    """Measure ``out/decoder``'s held-out fidelity at each guidance scale (``cfg.decoder["guidances"]``,
    default ``GUIDANCES``) and record the best as its render default (``render_defaults.json``), for
    decoders trained before the trainer did so; ``metrics.json`` and ``provenance.json`` get the run."""
    cfg.check()
    for part in ("clip/open_clip_config.json", "decoder/model_index.json"):
        if not (out / part).is_file():
            raise ProtosynthError(f"{P.out} {out}: no {part} (a `protosynth models train` output folder is needed)")
    dcfg = DecoderTrainConfig.preset(cfg.quick, **cfg.decoder)
    for folder in (out, out / "decoder"):  # metrics and provenance, and the decoder's render defaults
        check_writable(folder, f"{P.out} {out}")
    train, test = split_corpus(cfg)
    t0 = time.time()
    metrics = _read(out / "metrics.json", {})
    metrics["decoder"] = {**metrics.get("decoder", {}), **calibrate_decoder(out / "decoder", out / "clip", test, dcfg)}
    _record(out, cfg, train, test, metrics, time.time() - t0, command)
    return metrics


def _read(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.is_file() else default


def _record(
    out: Path, cfg: ModelsTrainConfig, train: Corpus, test: Corpus, metrics: dict, seconds: float, command: str | None
) -> None:
    """Append this run to ``out/provenance.json`` and write the merged ``out/metrics.json``."""
    provenance = _read(out / "provenance.json", {"runs": []})
    provenance["runs"].append(
        {
            "command": command,  # the command line that ran it; None from Python
            "only": cfg.only,
            "seed": cfg.seed,
            "corpus": train.spec,
            "corpus_fingerprint": train.fingerprint,
            "test_corpus": test.spec,
            "corpus_read": corpus_record(train),
            "test_read": corpus_record(test),
            "commit": git_commit(),
            "seconds": round(seconds, 1),
            "threads": os.cpu_count(),
            "config": json.loads(json.dumps(flat_settings(cfg), default=str)),
        }
    )
    provenance["metrics"] = metrics
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(out / "provenance.json", json.dumps(provenance, indent=2))
