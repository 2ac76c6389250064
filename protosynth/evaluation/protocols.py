"""The retrieval protocols: which backbone, which text encoder, what trains, and how.

- ``nfnet-bert`` (MTT-VL, LoRS, RepBlend, AMD): ImageNet ``nfnet_l0`` fine-tuned whole, pooled
  2304-d features; frozen ``bert-base-uncased`` [CLS] through a ProjectionHead; 224 px.
- ``pds`` (the PDS paper's own evaluation): a frozen ImageNet backbone whose 1000 logits are the
  image features (``nf_resnet50``); the set's CLIP text embeddings through a ProjectionHead; lr 0.2.
- ``small`` (offline, the world): ``nfnet-bert``'s structure at the world's scale, with a small
  normaliser-free ResNet pretrained on the world's pretraining split (``ps-nfnet``) and MiniLM as
  the frozen "BERT"; 32 px.

All share the loss (symmetric InfoNCE, fixed temperature 0.07) and optimiser (SGD momentum 0.9,
weight decay 5e-4, learning rate x0.1 after half the epochs: epoch 51 of 100).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..corpora.spec import is_world
from ..errors import P, ProtosynthError


@dataclass(frozen=True)
class Protocol:
    name: str
    backbone: str  # image backbone spec (evaluation.backbones)
    text: str  # text encoder spec (models.text_encoders); "clip" = the CLIP the set was made with
    image_features: str = "pool"  # "pool" or "logits"
    train_backbone: bool = True  # fine-tune the backbone (else frozen, features computed once)
    image_size: int | None = None  # None: the backbone's own input size
    epochs: int = 100
    full_epochs: int = 100  # epochs of the --full upper-bound run
    batch_size: int = 128
    lr: float = 0.1  # used when the set has no learned learning rates
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 0.07
    checkpoint_every: int = 10  # --select-on-test evaluates every this many epochs
    cross_archs: tuple[str, ...] = ()

    @property
    def lr_drop_epoch(self) -> int:
        """The 0-based epoch from which the lr is x0.1 (50 of 100: "epoch 51" counted from 1)."""
        return self.epochs // 2

    def with_options(self, **kw) -> "Protocol":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PROTOCOLS: dict[str, Protocol] = {
    "nfnet-bert": Protocol(
        name="nfnet-bert",
        backbone="nfnet_l0",
        text="bert-base-uncased",
        image_size=224,
        cross_archs=("nfnet_l0", "nf_resnet50", "regnety_016", "resnet50", "vit_tiny_patch16_224"),
    ),
    "pds": Protocol(
        name="pds",
        backbone="nf_resnet50",
        text="clip",
        image_features="logits",
        train_backbone=False,
        image_size=224,
        lr=0.2,
        cross_archs=("nf_resnet50", "vit_tiny_patch16_224", "resnet50"),
    ),
    "small": Protocol(
        name="small",
        backbone="ps-nfnet",
        text="minilm",
        image_size=32,
        full_epochs=2,
        cross_archs=("ps-nfnet", "ps-resnet", "ps-vit"),
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtosynthError(f"unknown {P.protocol} {name!r}; use {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def default_protocol(*specs: str) -> str:
    """The protocol for sets of these corpora when none is named: small on the world, else nfnet-bert."""
    return "small" if all(is_world(s) for s in specs) else "nfnet-bert"
