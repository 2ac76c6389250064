"""Expert trajectories ("buffers"): N retrieval models trained on the full train split, with a
snapshot of their trainable parameters after every epoch (docs/protocols.md, expert trajectories).

Layout of ``--out DIR``::

    expert_000/epoch_00.safetensors ... epoch_EE.safetensors   (epoch_00 = the starting point)
    expert_000/done.json                                       (written when the expert finished)
    manifest.json                                              (written last, when all experts are done)

Training is plain SGD (lr 0.1, no momentum, no weight decay), so an expert's state is its
parameters alone: a killed run resumes from the last snapshot of each unfinished expert, and
because every epoch's shuffle and dropout come from a seed derived from (seed, expert, epoch), the
resumed trajectory equals an uninterrupted one. Experts start from the protocol's pretrained
backbone and a text head (and, heads-only, an image head) initialised from (seed, expert).

No augmentation: the world's captions name positions (left/right, top/bottom), which crops and
flips would falsify; the reference buffers' RandAugment pipeline is for photographs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..corpora.source import flat_settings
from ..corpora.spec import canonical_root, canonical_spec
from ..corpus import Corpus, load_source
from ..errors import P, ProtosynthError
from ..sets.distilled import corpus_record
from ..util.files import check_writable, save_safetensors_atomic, write_text_atomic
from ..util.progress import StepBar
from ..util.runinfo import check_device, peak_rss_mb, versions
from .configs import BufferConfig  # noqa: F401 (re-exported: its public home)
from .features import ProtocolFeatures, protocol_features
from .student import Student, info_nce, trainable

MANIFEST = "manifest.json"


def _validate(cfg: BufferConfig) -> Path:
    """The values (``BufferConfig.check``), then the device; returns the buffer folder."""
    cfg.check()
    check_device(cfg.device)
    return Path(cfg.out)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _settings(cfg: BufferConfig) -> dict:
    """What a finished or unfinished buffer must match to be reused. The corpus-reading options are
    left out while unset, so buffers written before they existed are still reused."""
    unset = {"image_root": None, "skip_bad": False, "image_column": None, "caption_column": None}
    # absolute corpus paths: the same buffer asked for from another folder is still the same buffer
    corpus = cfg.corpus
    cfg = replace(
        cfg, corpus=replace(corpus, spec=canonical_spec(corpus.spec), image_root=canonical_root(corpus.image_root))
    )
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in flat_settings(cfg).items()
        if k not in ("out", "device") and not (k in unset and v == unset[k])
    }


def train_pairs(corpus: Corpus, cfg: BufferConfig) -> np.ndarray:
    """Indices of the caption-level pairs the experts train on (all, or a seeded subset)."""
    if cfg.max_pairs is None or cfg.max_pairs >= corpus.n_pairs:
        return np.arange(corpus.n_pairs)
    return np.sort(np.random.default_rng(cfg.seed).choice(corpus.n_pairs, cfg.max_pairs, replace=False))


def make_student(feats: ProtocolFeatures, heads_only: bool, seed: int) -> Student:
    torch.manual_seed(seed)
    return Student(feats.backbone.copy(), feats.text_dim, "heads" if heads_only else "full").eval()


def _save(params: dict[str, torch.Tensor], path: Path) -> None:
    save_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in params.items()}, path)


def _train_epoch(
    student: Student,
    feats: ProtocolFeatures,
    pairs: np.ndarray,
    cfg: BufferConfig,
    seed: int,
    image_inputs: torch.Tensor,
) -> float:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    student.train()
    if student.features is not None:
        student.features.eval()
    params = list(trainable(student).values())
    order = torch.from_numpy(pairs)[torch.randperm(len(pairs), generator=gen)]
    losses = []
    for idx in torch.tensor_split(order, -(-len(order) // cfg.batch_size)):
        x = image_inputs[feats.pair_image[idx]].to(cfg.device)
        t = feats.texts[idx].to(cfg.device)
        img, txt = student(x, t, are_features=student.shape == "heads")
        loss = info_nce(img, txt, feats.protocol.temperature)
        if not torch.isfinite(loss):
            raise ProtosynthError(f"expert training diverged (loss {loss.item()}); lower {P.lr} (now {cfg.lr})")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(cfg.lr * g)
        losses.append(loss.item())
    student.eval()
    return float(np.mean(losses))


def build_buffer(cfg: BufferConfig) -> Path:
    """Train (or finish) every expert and write the manifest; returns the buffer folder."""
    out = _validate(cfg)
    if (out / MANIFEST).is_file():
        done = json.loads((out / MANIFEST).read_text())
        if done.get("settings") != _settings(cfg):
            raise ProtosynthError(
                f"{P.out} {out} holds a finished buffer made with other settings; choose another {P.out}"
            )
        return out
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != _settings(cfg):
        raise ProtosynthError(
            f"{P.out} {out} holds an unfinished buffer with other settings; remove it or choose another {P.out}"
        )
    check_writable(out, f"{P.out} {out}")
    started = time.time()
    # the corpus is read (every image, for the pixels) before the folder is claimed: a run stopped by a
    # bad image or a wrong --image-root leaves no settings.json that the corrected command would refuse
    corpus = load_source(cfg.corpus)
    feats = protocol_features(corpus, cfg.protocol, cfg.backbone, cfg.text_encoder, cfg.image_size)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, json.dumps(_settings(cfg), indent=2, sort_keys=True))
    pairs = train_pairs(corpus, cfg)
    image_inputs = feats.backbone_features(cfg.device) if cfg.heads_only else feats.pixels
    experts = []
    with StepBar(
        f"buffer ({cfg.protocol}, {cfg.experts} experts x {cfg.epochs} epochs)", cfg.experts * cfg.epochs
    ) as bar:
        for e in range(cfg.experts):
            folder = out / f"expert_{e:03d}"
            if (folder / "done.json").is_file():
                experts.append(json.loads((folder / "done.json").read_text()))
                bar.done += cfg.epochs
                continue
            folder.mkdir(exist_ok=True)
            student = make_student(feats, cfg.heads_only, _seed(cfg.seed, e, 1_000_003)).to(cfg.device)
            params = trainable(student)
            snaps = sorted(folder.glob("epoch_*.safetensors"))
            first = 0
            if snaps:  # resume: SGD without momentum has no state beyond the parameters
                saved = load_file(str(snaps[-1]))
                with torch.no_grad():
                    for k, v in params.items():
                        v.copy_(saved[k])
                first = int(snaps[-1].stem.split("_")[1])
                bar.done += first
            else:
                _save(params, folder / "epoch_00.safetensors")
            t0, losses = time.time(), []
            for epoch in range(first, cfg.epochs):
                losses.append(_train_epoch(student, feats, pairs, cfg, _seed(cfg.seed, e, epoch), image_inputs))
                _save(params, folder / f"epoch_{epoch + 1:02d}.safetensors")
                bar.advance(f"expert {e} loss {losses[-1]:.3f}")
            info = {
                "expert": e,
                "seconds_this_run": round(time.time() - t0, 1),
                "train_loss": losses,
                "resumed_from_epoch": first,
            }
            write_text_atomic(folder / "done.json", json.dumps(info, indent=2))
            experts.append(info)
    n_params = {
        m: sum(v.numel() for k, v in trainable(student).items() if k.startswith(m + ".")) for m in ("image", "text")
    }
    # the corpus entry says how it was read (image root, --skip-bad): `baseline` reads it the same way
    manifest = {
        "format": "protosynth-buffer/1",
        "settings": _settings(cfg),
        "corpus": {**corpus_record(corpus), "trained_on": len(pairs)},
        "protocol": cfg.protocol,
        "backbone": feats.backbone.spec,
        "text_encoder": feats.encoder.spec,
        "text_space": feats.encoder.space,
        "image_size": feats.size,
        "shape": "heads" if cfg.heads_only else "full",
        "parameters": n_params,
        "experts": experts,
        "seconds": round(time.time() - started, 1),
        "peak_memory_mb": peak_rss_mb(),
        "versions": versions(),
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return out


@dataclass
class Buffer:
    """A finished buffer: its manifest and lazy access to every expert's snapshots."""

    root: Path
    manifest: dict

    @property
    def experts(self) -> int:
        return int(self.manifest["settings"]["experts"])

    @property
    def epochs(self) -> int:
        return int(self.manifest["settings"]["epochs"])

    @property
    def shape(self) -> str:
        return self.manifest["shape"]

    def snapshot(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.root / f"expert_{expert:03d}" / f"epoch_{epoch:02d}.safetensors"))

    def trajectory(self, expert: int) -> list[dict[str, torch.Tensor]]:
        return [self.snapshot(expert, t) for t in range(self.epochs + 1)]


def load_buffer(path: str | Path) -> Buffer:
    root = Path(path)
    if not (root / MANIFEST).is_file():
        hint = " (unfinished: run `protosynth buffer` again with the same options to resume)" if root.is_dir() else ""
        raise ProtosynthError(f"{P.buffer} {root}: not a finished buffer, no {MANIFEST}{hint}")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except ValueError as exc:
        raise ProtosynthError(f"{P.buffer} {root}: unreadable {MANIFEST} ({exc})") from None
    return Buffer(root, manifest)
