"""A corpus as a retrieval protocol sees it: normalised pixels at the protocol's size, frozen
text-encoder features of every caption, and the protocol's pretrained backbone.

Buffers and every trajectory-matching method start from these (the text features come from the
evaluation's on-disk cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..corpus import Corpus
from ..errors import P, ProtosynthError
from ..evaluation.data import corpus_text_features
from ..evaluation.pixels import PixelRows, corpus_pixel_rows
from ..evaluation.protocols import Protocol, get_protocol
from ..evaluation.retrieval import batched
from ..models.backbones import Backbone, load_backbone
from ..models.text_encoders import TextEncoder, load_text_encoder


@dataclass
class ProtocolFeatures:
    corpus: Corpus
    protocol: Protocol
    backbone: Backbone  # the pretrained backbone (students and experts train a Backbone.copy())
    encoder: TextEncoder
    size: int
    pixels: PixelRows  # (images, 3, size, size), normalised for the backbone as rows are read
    texts: torch.Tensor  # (pairs, text_dim)
    pair_image: torch.Tensor  # (pairs,)

    @property
    def text_dim(self) -> int:
        return int(self.texts.shape[1])

    @torch.no_grad()
    def backbone_features(self, device: str = "cpu") -> torch.Tensor:
        """Pooled features of every corpus image under the frozen pretrained backbone."""
        self.backbone.model.to(device).eval()
        return batched(lambda x: self.backbone.features(x, "pool"), self.pixels, device)


def protocol_features(
    corpus: Corpus,
    protocol_name: str,
    backbone: str | None = None,
    text_encoder: str | None = None,
    image_size: int | None = None,
) -> ProtocolFeatures:
    """``backbone``/``text_encoder``/``image_size`` override the protocol's (tests use tiny ones)."""
    protocol = get_protocol(protocol_name)
    if protocol.text == "clip" and text_encoder is None:
        raise ProtosynthError(
            f"{P.protocol} {protocol_name} embeds text with a set's own CLIP; trajectory matching "
            f"needs a fixed text encoder: use small or nfnet-bert"
        )
    bb = load_backbone(backbone or protocol.backbone)
    size = image_size or protocol.image_size or bb.image_size
    encoder = load_text_encoder(text_encoder or protocol.text)
    pixels = corpus_pixel_rows(corpus, bb.mean, bb.std, size)
    return ProtocolFeatures(
        corpus,
        protocol,
        bb,
        encoder,
        size,
        pixels,
        corpus_text_features(corpus, encoder),
        torch.from_numpy(corpus.pair_image.astype(np.int64)),
    )
