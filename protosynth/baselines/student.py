"""The student of trajectory matching: the protocol's retrieval model with its trainable parameters
split by modality, so experts can be saved and students unrolled functionally.

Two shapes, as the reference methods use them:
- ``full`` (MTT-VL, LoRS, AMD): the image backbone is trained whole; image features = its pooled
  features; the text side is the ProjectionHead over frozen text features.
- ``heads`` (RepBlend): the backbone is frozen; an image ProjectionHead (feature_dim -> feature_dim)
  and the text ProjectionHead are trained on top of frozen backbone features and text features.

Parameter names start with ``image.`` or ``text.``; :func:`split` groups them by modality.
Inside matching the student runs in train mode (the heads' dropout on) under the official presets,
as the authors' loops do, and in eval mode under the world preset (``matching.match``'s ``train``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.retrieval import ProjectionHead, info_nce, weighted_bce  # noqa: F401 (re-exported)
from ..models.backbones import Backbone

SHAPES = ("full", "heads")


class BackboneFeatures(nn.Module):
    """A backbone as a module (its timm model registered as ``model``) whose forward gives the pooled
    features, so ``functional_call`` can swap its parameters."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.model = backbone.model
        self._backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone.features(x, "pool")


class Student(nn.Module):
    """``forward(images_or_features, texts) -> (unit image embeddings, unit text embeddings)``."""

    def __init__(self, backbone: Backbone, text_dim: int, shape: str = "full"):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"student shape must be one of {SHAPES}, got {shape!r}")
        self.shape = shape
        dim = backbone.feature_dim
        if shape == "full":
            self.features = None
            self.image = BackboneFeatures(backbone)  # trained whole: parameters image.model.*
            backbone.model.get_classifier().requires_grad_(False)  # unused by pooled features
        else:
            self.features = BackboneFeatures(backbone).requires_grad_(False)
            self.image = ProjectionHead(dim, dim)
        self.text = ProjectionHead(text_dim, dim)

    def encode_images(self, x: torch.Tensor, are_features: bool = False) -> torch.Tensor:
        """Unit image embeddings of pixels (or of precomputed backbone features, heads shape only)."""
        if self.shape == "full":
            return F.normalize(self.image(x), dim=-1)
        feats = x if are_features else self.features(x)
        return F.normalize(self.image(feats), dim=-1)

    def forward(self, images: torch.Tensor, texts: torch.Tensor, are_features: bool = False):
        return self.encode_images(images, are_features), F.normalize(self.text(texts), dim=-1)


def trainable(student: Student) -> dict[str, torch.Tensor]:
    """The parameters experts save and students unroll: ``image.*`` and ``text.*`` (those that train)."""
    return {k: v for k, v in student.named_parameters() if v.requires_grad and k.split(".")[0] in ("image", "text")}


def split(params: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    return {m: {k: v for k, v in params.items() if k.startswith(m + ".")} for m in ("image", "text")}


class LowRankSimilarity(nn.Module):
    """LoRS's learned similarity matrix S = diag(a) + (alpha / r) L R^T, the identity at the start
    (a = 1, L ~ N(0, 1), R = 0)."""

    def __init__(self, m: int, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.alpha, self.rank = float(alpha), int(rank)
        self.diag = nn.Parameter(torch.ones(m))
        self.left = nn.Parameter(torch.randn(m, rank, generator=generator))
        self.right = nn.Parameter(torch.zeros(m, rank))

    def forward(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        if idx is None:
            return torch.diag(self.diag) + (self.alpha / self.rank) * self.left @ self.right.T
        block = (self.alpha / self.rank) * self.left[idx] @ self.right[idx].T
        return block + torch.diag(self.diag[idx])
