"""Pretrain a small image backbone on the world's pretraining split: our stand-in for ImageNet.

The reference protocols start from ImageNet-supervised backbones. The world has its own supervised
task with the same character (recognise what is where): for each of the 3x3 position cells,
classify its content among "empty" and the 8 colours x 4 shapes x 2 sizes (65 classes), so the
classifier has 9 x 65 = 585 logits and the loss is the mean of the nine cross-entropies. The
pretraining split is disjoint from train and test (its own seed stream, and no image equal to a
train or test image), so no evaluation image is ever seen here. AdamW with a cosine schedule; the last
``holdout`` images are held out for the accuracy written to ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..configs import PretrainConfig  # noqa: F401 (re-exported: its public home)
from ..corpora.shapes import COLOURS, POSITIONS, SHAPES, SIZES, WorldConfig
from ..corpus import world_split
from ..errors import P, ProtosynthError
from ..models.backbones import CONFIG_FILE, WEIGHTS_FILE, arch_config, build_small
from ..util.files import (
    atomic_path,
    check_writable,
    git_commit,
    remove_stale_temps,
    save_safetensors_atomic,
    write_text_atomic,
)
from ..util.progress import StepBar

CELL_CLASSES = 1 + len(COLOURS) * len(SHAPES) * len(SIZES)  # "empty" + every object kind
LABELS = "world-cells-v1"


def cell_labels(objects) -> np.ndarray:
    """(N, 9) class index per position cell: 0 empty, else 1 + (colour, shape, size) index."""
    colours, cells = list(COLOURS), list(POSITIONS)
    out = np.zeros((len(objects), len(cells)), dtype=np.int64)
    for i, objs in enumerate(objects):
        for o in objs:
            kind = (colours.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)) * len(SIZES) + SIZES.index(o.size)
            out[i, cells.index(o.position)] = 1 + kind
    return out


def normalise(images_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cell_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.view(len(logits), -1, CELL_CLASSES).transpose(1, 2), labels)


@torch.no_grad()
def cell_accuracy(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    model.eval()
    pred = torch.cat(
        [model(x[s : s + 256]).view(-1, len(POSITIONS), CELL_CLASSES).argmax(-1) for s in range(0, len(x), 256)]
    )
    hit = pred == labels
    return {
        "cell_accuracy": round(100 * hit.float().mean().item(), 2),
        "image_accuracy": round(100 * hit.all(1).float().mean().item(), 2),
    }


def pretrain_backbone(cfg: PretrainConfig, out: Path, command: str = "") -> dict:
    """Train ``cfg.arch`` on the pretraining split and write a backbone folder to ``out`` atomically."""
    cfg.check()
    arch_config(cfg.arch)  # unknown arch: clear error before any work
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise ProtosynthError(f"{P.out} {out} is not empty and not a backbone folder; choose another folder")
    check_writable(out.parent, f"{P.out} {out}")  # written beside ``out`` after the training
    started = time.time()
    world = WorldConfig(n_pretrain=cfg.n_images, image_size=cfg.image_size)
    split = world_split(world, "pretrain")  # disjoint from train and test by construction
    x, y = normalise(split.images), torch.from_numpy(cell_labels(split.objects))
    n_train = cfg.n_images - cfg.holdout
    torch.manual_seed(cfg.seed)
    model = build_small(cfg.arch, len(POSITIONS) * CELL_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    with StepBar(f"pretrain {cfg.arch}", total) as bar:
        for _ in range(cfg.epochs):
            model.train()
            order = torch.randperm(n_train, generator=gen)
            for s in range(0, n_train, cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                loss = cell_loss(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(f"loss {loss.item():.3f}")
    metrics = {
        "holdout": cell_accuracy(model, x[n_train:], y[n_train:]),
        "train_seconds": round(time.time() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)  # what killed runs writing this folder left behind
    with atomic_path(out, directory=True) as tmp:  # an earlier backbone folder is replaced only now
        save_safetensors_atomic({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "arch": cfg.arch,
                    **arch_config(cfg.arch),
                    "num_classes": len(POSITIONS) * CELL_CLASSES,
                    "image_size": cfg.image_size,
                    "mean": list(OPENAI_DATASET_MEAN),
                    "std": list(OPENAI_DATASET_STD),
                    "labels": LABELS,
                },
                indent=2,
            )
        )
        write_text_atomic(tmp / "metrics.json", json.dumps(metrics, indent=2))
        write_text_atomic(
            tmp / "provenance.json",
            json.dumps(
                {
                    "command": command,
                    "commit": git_commit(),
                    "config": asdict(cfg),
                    "world": asdict(world),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    **metrics,
                },
                indent=2,
            ),
        )
    return metrics
