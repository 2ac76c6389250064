"""Image backbones of the retrieval protocols, by spec string, all built by ``timm.create_model``.

Specs:
- a timm model name, e.g. ``nfnet_l0`` (or ``timm:nfnet_l0``): ImageNet-pretrained timm weights from
  the local Hugging Face cache, as the reference protocols use; a clear error when they are absent;
- ``random:NAME``: the same timm class with random weights (tests, smoke runs; never a result);
- ``ps-nfnet``, ``ps-resnet``, ``ps-regnet``, ``ps-vit``: small timm architectures (JSON files in
  ``backbone_configs/``) pretrained by protosynth on the world's pretraining split, shipped in the
  package (``weights/world/backbones/``);
- ``small:DIR``: a folder written by ``protosynth models pretrain-backbone --out DIR``.

Every backbone keeps its classifier, so a protocol can take either the pooled features
(``forward_head(pre_logits=True)``) or the logits (PDS uses ImageNet logits as image features).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import load_file

from ..errors import ProtosynthError

CONFIG_DIR = Path(__file__).parent / "backbone_configs"
SHIPPED_BACKBONES = Path(__file__).resolve().parent.parent / "weights" / "world" / "backbones"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def small_archs() -> list[str]:
    """Names of the small architectures protosynth can pretrain (one JSON config each)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def arch_config(arch: str) -> dict:
    path = CONFIG_DIR / f"{arch}.json"
    if not path.is_file():
        raise ProtosynthError(f"unknown small backbone architecture {arch!r}; known: {', '.join(small_archs())}")
    return json.loads(path.read_text())


@dataclass
class Backbone:
    """A timm image model with the input convention it was trained with."""

    model: torch.nn.Module
    spec: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def feature_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def logits_dim(self) -> int:
        return int(self.model.num_classes)

    def copy(self) -> "Backbone":
        """An independent copy (its own weights) to train, leaving this one as it was loaded."""
        return Backbone(copy.deepcopy(self.model), self.spec, self.image_size, self.mean, self.std)

    def features(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """``pool``: pooled pre-logits features; ``logits``: classifier outputs."""
        if kind == "logits":
            return self.model(x)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def build_small(arch: str, num_classes: int) -> torch.nn.Module:
    """A randomly initialised small architecture (what pretraining starts from)."""
    cfg = arch_config(arch)
    return timm.create_model(cfg["timm_name"], pretrained=False, num_classes=num_classes, **cfg["kwargs"])


def _load_folder(folder: Path, spec: str) -> Backbone:
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ProtosynthError(
            f"backbone {spec}: {folder} has no {CONFIG_FILE} + {WEIGHTS_FILE} "
            f"(write one with `protosynth models pretrain-backbone`)"
        )
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    model = build_small(cfg["arch"], cfg["num_classes"])
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as exc:
        raise ProtosynthError(f"backbone {spec}: weights in {folder} do not fit {cfg['arch']} ({exc})") from None
    return Backbone(model.eval(), spec, int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"]))


def _load_timm(name: str, spec: str, pretrained: bool) -> Backbone:
    if name not in timm.list_models(pretrained=False) and name.split(".")[0] not in timm.list_models():
        raise ProtosynthError(
            f"unknown backbone spec {spec!r}: not a timm model, a small architecture "
            f"({', '.join(small_archs())}) or small:DIR"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # offline hub miss, corrupt cache: one clear line
        raise ProtosynthError(
            f"backbone {spec}: ImageNet weights of timm {name!r} are not in the local cache ({type(exc).__name__}). "
            f"On a machine with network run: python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
            f"and copy ~/.cache/huggingface here (or set HF_HOME)"
        ) from None
    cfg = model.pretrained_cfg or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    # the reference protocol normalises with CLIP's statistics whatever the backbone
    return Backbone(model.eval(), spec, size, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))


def load_backbone(spec: str) -> Backbone:
    """Load an image backbone by spec (see the module docstring)."""
    if spec.startswith("small:"):
        return _load_folder(Path(spec[len("small:") :]), spec)
    if spec in small_archs():
        folder = SHIPPED_BACKBONES / spec
        if not (folder / WEIGHTS_FILE).is_file():
            raise ProtosynthError(
                f"backbone {spec}: no shipped weights in {folder}; pretrain {spec} into a folder DIR "
                f"(`protosynth models pretrain-backbone`, or training.backbone.pretrain_backbone) "
                f"and pass small:DIR"
            )
        return _load_folder(folder, spec)
    if spec.startswith("random:"):
        return _load_timm(spec[len("random:") :], spec, pretrained=False)
    return _load_timm(spec.removeprefix("timm:"), spec, pretrained=True)
