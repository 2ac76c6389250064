"""Train one retrieval model on image-text pairs and score it on a test split.

The model is the reference protocols' dual encoder: an image backbone (fine-tuned or frozen) and a
frozen text encoder whose features pass through a trainable ProjectionHead into the image
feature space. Loss: symmetric InfoNCE at a fixed temperature. Optimiser: SGD with momentum and
weight decay, one learning rate per modality (a distilled set's learned ones when it has them),
x0.1 after half the epochs. No augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProtosynthError
from ..models.backbones import Backbone
from .metrics import retrieval_metrics
from .pixels import PixelRows
from .protocols import Protocol


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout, plus a residual from the first Linear, then LayerNorm
    (the text head of the reference protocol)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(F.gelu(projected))) + projected)


@dataclass
class PairData:
    """Training pairs: images already normalised for the backbone, frozen text features."""

    images: torch.Tensor | PixelRows  # (M, 3, S, S): one row per pair, or per image with image_index
    texts: torch.Tensor  # (N, D)
    lr_image: float | None = None
    lr_text: float | None = None
    notes: dict = field(default_factory=dict)
    image_index: torch.Tensor | None = None  # (N,) row of ``images`` for each pair (caption-level corpora)
    similarity: torch.Tensor | None = None  # (N, N) soft targets: train with weighted BCE (LoRS) instead of InfoNCE
    image_head: bool = False  # freeze the backbone and train an image ProjectionHead (RepBlend's evaluation)

    def __post_init__(self) -> None:
        n_images = len(self.image_index) if self.image_index is not None else len(self.images)
        if n_images != len(self.texts):
            raise ProtosynthError(f"{n_images} images but {len(self.texts)} text features")
        if len(self.images) < 2:
            raise ProtosynthError("retrieval training needs at least 2 pairs (InfoNCE contrasts pairs within a batch)")


@dataclass
class TestData:
    images: torch.Tensor | PixelRows  # (I, 3, S, S)
    texts: torch.Tensor  # (T, D)
    text_to_image: np.ndarray  # (T,)


class DualEncoder(nn.Module):
    def __init__(self, backbone: Backbone, kind: str, text_dim: int, train_backbone: bool, image_head: bool = False):
        super().__init__()
        self.backbone = backbone.model
        self._bb = backbone
        self.kind = kind
        self.train_backbone = train_backbone
        out_dim = backbone.logits_dim if kind == "logits" else backbone.feature_dim
        self.image_head = ProjectionHead(out_dim, out_dim) if image_head else None
        self.text_head = ProjectionHead(text_dim, out_dim)
        if not train_backbone:
            self.backbone.requires_grad_(False)

    def embed_features(self, f: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings from backbone features (through the image head when there is one)."""
        return F.normalize(self.image_head(f) if self.image_head is not None else f, dim=-1)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self._bb.features(x, self.kind))

    def encode_texts(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(t), dim=-1)

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self


def info_nce(img: torch.Tensor, txt: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = img @ txt.T / temperature
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def weighted_bce(img: torch.Tensor, txt: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """LoRS's student loss: binary cross-entropy between sigmoid(cosine / temperature) and the
    similarity target, averaged separately over positives (target > 0.5) and negatives, then the
    two means averaged (a batch with no negatives uses the positive mean alone).

    The target is used as it is, never clamped (as in LoRS's code): S starts at exactly the identity,
    where every entry sits on a clamp bound, and clamp passes no gradient there, so a clamped target
    left S frozen at the identity for good."""
    logits = img @ txt.T / temperature
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = target > 0.5
    parts = [bce[pos].mean()] if pos.any() else []
    if (~pos).any():
        parts.append(bce[~pos].mean())
    return torch.stack(parts).mean()


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device, size: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[s : s + size].to(device)).cpu() for s in range(0, len(x), size)])


@torch.no_grad()
def score(model: DualEncoder, test: TestData, device, image_feats: torch.Tensor | None = None) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``test`` (definitions: docs/protocols.md)."""
    was_training = model.training
    model.eval()
    img = (
        batched(model.embed_features, image_feats, device)
        if image_feats is not None
        else batched(model.encode_images, test.images, device)
    )
    txt = batched(model.encode_texts, test.texts, device)
    model.train(was_training)
    return retrieval_metrics((img @ txt.T).numpy(), test.text_to_image)


@dataclass
class RunResult:
    final: dict[str, float] | None  # None when trained without a test split
    best: dict[str, float] | None  # best checkpoint by r_mean (select-on-test mode only)
    best_epoch: int | None


def train_and_score(
    protocol: Protocol,
    backbone: Backbone,
    data: PairData,
    test: TestData | None,
    seed: int,
    epochs: int,
    select_on_test: bool = False,
    device: str = "cpu",
    frozen_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    progress: Callable[[], None] | None = None,
) -> RunResult:
    """Train a fresh dual encoder (a copy of ``backbone``) for ``epochs`` and score it.

    ``frozen_features``: (train, test) image features precomputed once for a frozen backbone.
    ``on_batch(indices, logits)``: called after every step (forgetting events are counted there).
    """
    torch.manual_seed(seed)
    bb = backbone.copy()
    train_backbone = protocol.train_backbone and not data.image_head
    model = DualEncoder(bb, protocol.image_features, data.texts.shape[1], train_backbone, data.image_head).to(device)
    lr_img = data.lr_image if data.lr_image is not None else protocol.lr
    lr_txt = data.lr_text if data.lr_text is not None else protocol.lr
    groups = [{"params": list(model.text_head.parameters()), "lr": lr_txt, "base": lr_txt}]
    image_side = model.image_head if data.image_head else (model.backbone if train_backbone else None)
    if image_side is not None:
        groups.append({"params": list(image_side.parameters()), "lr": lr_img, "base": lr_img})
    opt = torch.optim.SGD(groups, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.texts)
    n_batches = -(-n // protocol.batch_size)
    train_img = frozen_features[0] if frozen_features else None
    test_img = frozen_features[1] if frozen_features else None
    best, best_epoch = None, None
    model.train()
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = g["base"] * (0.1 if epoch >= epochs // 2 else 1.0)
        # near-equal batches (no batch of one: BatchNorm backbones need two)
        for idx in torch.tensor_split(torch.randperm(n, generator=gen), n_batches):
            rows = data.image_index[idx] if data.image_index is not None else idx
            if train_img is not None:
                img = model.embed_features(train_img[rows].to(device))
            else:
                img = model.encode_images(data.images[rows].to(device))
            txt = model.encode_texts(data.texts[idx].to(device))
            if data.similarity is not None:
                loss = weighted_bce(img, txt, data.similarity[idx][:, idx].to(device), protocol.temperature)
            else:
                loss = info_nce(img, txt, protocol.temperature)
            if not torch.isfinite(loss):
                raise ProtosynthError(
                    f"retrieval training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                    f"learning rates image {lr_img}, text {lr_txt}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_batch is not None:
                on_batch(idx, (img @ txt.T).detach().cpu())
        if progress is not None:
            progress()
        if (
            select_on_test
            and test is not None
            and ((epoch + 1) % protocol.checkpoint_every == 0 or epoch + 1 == epochs)
        ):
            m = score(model, test, device, test_img)
            if best is None or m["r_mean"] > best["r_mean"]:
                best, best_epoch = m, epoch + 1
    return RunResult(score(model, test, device, test_img) if test is not None else None, best, best_epoch)
