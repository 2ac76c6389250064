"""CLIP encoders by spec string, all through open_clip's own factory.

Specs:
- ``default``: the small CLIP shipped inside the package for the built-in world;
- ``small:DIR``: what ``protosynth models train --out DIR`` wrote (``DIR/clip``, or DIR itself);
- ``local-dir:DIR``: any open_clip folder (``open_clip_config.json`` + weights);
- ``ARCH:PRETRAINED``: an open_clip architecture and pretrained tag, e.g. ``ViT-L-14-quickgelu:openai``.

The small CLIP is an ordinary open_clip model: its architecture is a JSON config registered with
open_clip (``ps-small-clip``), and a trained one is saved as an open_clip ``local-dir:`` folder with
a corpus-specific BPE merges file, so the code that loads it is the code that loads real models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from PIL import Image

from ..errors import ProtosynthError
from ..files import sha256_file
from .bpe import BPE_FILENAME, load_tokenizer

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights" / "world"
CLIP_WEIGHTS = "open_clip_model.safetensors"


@dataclass
class ClipEncoder:
    """A CLIP with its preprocessing and tokenizer; ``space`` names its embedding space."""

    model: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: str
    space: str
    embed_dim: int
    device: torch.device

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image] | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw (un-normalised) image embeddings of PIL images or a preprocessed tensor, in batches."""
        out = []
        for s in range(0, len(images), batch_size):
            chunk = images[s : s + batch_size]
            if not isinstance(chunk, torch.Tensor):
                chunk = torch.stack([self.preprocess(im) for im in chunk])
            out.append(self.model.encode_image(chunk.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Raw (un-normalised) text embeddings, in batches."""
        out = [self.model.encode_text(self.tokenizer(texts[s : s + batch_size]).to(self.device)).float().cpu()
               for s in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)


def small_clip_dir(path: Path) -> Path:
    """Resolve ``small:DIR``: the CLIP folder inside a ``models train`` output, or DIR itself."""
    for cand in (path / "clip", path):
        if (cand / "open_clip_config.json").is_file():
            return cand
    raise ProtosynthError(f"--clip small:{path}: no open_clip_config.json in {path} or {path / 'clip'}")


def _load_local_dir(folder: Path, spec: str, device: torch.device) -> ClipEncoder:
    if not (folder / CLIP_WEIGHTS).is_file():
        raise ProtosynthError(f"--clip {spec}: no weights file {folder / CLIP_WEIGHTS}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
        cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    except Exception as exc:  # a corrupt config or weights file, or a bad --device
        raise ProtosynthError(f"--clip {spec}: cannot load the open_clip model in {folder} ({exc})") from None
    context = cfg["text_cfg"].get("context_length", 77)
    bpe = folder / BPE_FILENAME
    tokenizer = load_tokenizer(bpe, context) if bpe.is_file() else open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    space = f"small-clip:{sha256_file(folder / CLIP_WEIGHTS)[:12]}"
    return ClipEncoder(model, preprocess, tokenizer, spec, space, int(cfg["embed_dim"]), device)


def _load_pretrained(arch: str, tag: str, spec: str, device: torch.device) -> ClipEncoder:
    if arch not in open_clip.list_models():
        raise ProtosynthError(f"--clip {spec}: unknown open_clip architecture {arch!r}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, device=device)
    except Exception as exc:  # offline: the hub download fails inside open_clip
        raise ProtosynthError(
            f"--clip {spec}: cannot load pretrained weights {tag!r} for {arch} ({type(exc).__name__}); "
            "download them on a connected machine into the Hugging Face cache, or pass a local file"
        ) from None
    model.eval()
    embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else -1
    arch_space = arch.replace("-quickgelu", "")
    return ClipEncoder(model, preprocess, open_clip.get_tokenizer(arch), spec, f"{arch_space}:{tag}", embed_dim, device)


def load_clip(spec: str = "default", device: str | torch.device = "cpu") -> ClipEncoder:
    """Load the CLIP named by ``spec`` (see module docstring) in eval mode."""
    device = torch.device(device)
    if spec == "default":
        if not (SHIPPED_DIR / "clip" / CLIP_WEIGHTS).is_file():
            raise ProtosynthError(f"--clip default: the shipped small CLIP is missing from {SHIPPED_DIR / 'clip'}")
        return _load_local_dir(SHIPPED_DIR / "clip", spec, device)
    if spec.startswith("small:"):
        return _load_local_dir(small_clip_dir(Path(spec[len("small:"):])), spec, device)
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise ProtosynthError(f"--clip {spec}: no open_clip_config.json in {folder}")
        return _load_local_dir(folder, spec, device)
    arch, sep, tag = spec.partition(":")
    if sep and arch and tag:
        return _load_pretrained(arch, tag, spec, device)
    raise ProtosynthError(
        f"unknown --clip spec {spec!r}: use 'default', 'small:DIR', 'local-dir:DIR' or 'ARCH:PRETRAINED'"
    )
