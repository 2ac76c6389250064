"""CLIP encoders by spec string, all through open_clip's own factory.

Specs:
- ``default``: the small CLIP shipped inside the package for the built-in world;
- ``small:DIR``: what ``protosynth models train --out DIR`` wrote (``DIR/clip``, or DIR itself);
- ``local-dir:DIR``: any open_clip folder (``open_clip_config.json`` + weights); with ``space=`` it
  declares which space its weights are in (a local copy of OpenAI's ViT-L pairs with the published
  unCLIP decoders), else its space is named by its weights' hash;
- ``ARCH:PRETRAINED``: an open_clip architecture and pretrained tag, e.g. ``ViT-L-14-quickgelu:openai``
  (weights from the local Hugging Face / open_clip cache when present, else downloaded);
- a checkpoint file (``.pt``, ``.bin``, ``.safetensors``) together with ``arch=`` (``--clip-arch``).

Every encoder names its embedding ``space``: decoders declare the space they were trained on, and
``protosynth distill`` refuses a CLIP/decoder pair from different spaces. ``ViT-L-14`` and
``ViT-L-14-quickgelu`` with OpenAI's weights are one space: protosynth forces QuickGELU whenever the
weights were trained with it, so both load the same model.

The small CLIP is an ordinary open_clip model: its architecture is a JSON config registered with
open_clip (``ps-small-clip``), and a trained one is saved as an open_clip ``local-dir:`` folder with
a corpus-specific BPE merges file, so the code that loads it is the code that loads real models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from PIL import Image

from ..errors import P, ProtosynthError, held_back_logs
from ..util.files import sha256_file
from .bpe import BPE_FILENAME, load_tokenizer

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights" / "world"
CLIP_WEIGHTS = "open_clip_model.safetensors"
# the weight files open_clip's local-dir: loader takes, in its order of preference (open_clip factory)
LOCAL_DIR_WEIGHTS = (
    CLIP_WEIGHTS,
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


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
    weights_id: str = ""  # a checkpoint file's sha256 (its path alone does not name its content)

    @property
    def input_size(self) -> int:
        """The side of the square images the image tower takes (what preprocessing resizes to)."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

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
        out = [
            self.model.encode_text(self.tokenizer(texts[s : s + batch_size]).to(self.device)).float().cpu()
            for s in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)


def small_clip_dir(path: Path) -> Path:
    """Resolve ``small:DIR``: the CLIP folder inside a ``models train`` output, or DIR itself."""
    for cand in (path / "clip", path):
        if (cand / "open_clip_config.json").is_file():
            return cand
    raise ProtosynthError(f"{P.clip} small:{path}: no open_clip_config.json in {path} or {path / 'clip'}")


def _load_local_dir(folder: Path, spec: str, device: torch.device, space: str | None = None) -> ClipEncoder:
    """An open_clip folder. Undeclared, its space is ``small-clip:<weights hash>``; with a declared
    ``space`` the hash goes to ``weights_id`` instead (the embedding cache must still follow the
    weights), and QuickGELU is forced when that space's weights were trained with it."""
    weights = next((folder / n for n in LOCAL_DIR_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise ProtosynthError(
            f"{P.clip} {spec}: no weights file in {folder} (open_clip reads {', '.join(LOCAL_DIR_WEIGHTS[:3])}, ...)"
        )
    try:
        cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
        quick = space is not None and not cfg.get("quick_gelu") and _trained_with_quick_gelu(space)
        model, _, preprocess = open_clip.create_model_and_transforms(
            f"local-dir:{folder}", device=device, force_quick_gelu=quick
        )
    except Exception as exc:  # a corrupt config or weights file, or a bad --device
        raise ProtosynthError(f"{P.clip} {spec}: cannot load the open_clip model in {folder} ({exc})") from None
    context = cfg["text_cfg"].get("context_length", 77)
    bpe = folder / BPE_FILENAME
    tokenizer = load_tokenizer(bpe, context) if bpe.is_file() else open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    digest = sha256_file(weights)
    return ClipEncoder(
        model,
        preprocess,
        tokenizer,
        spec,
        space or f"small-clip:{digest[:12]}",
        int(cfg["embed_dim"]),
        device,
        digest if space else "",
    )


def space_name(arch: str, tag: str) -> str:
    """The embedding space of open_clip ``arch`` with pretrained weights ``tag``."""
    return f"{arch.replace('-quickgelu', '')}:{tag}"


def _embed_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[1])
    tokens = torch.zeros(1, model.context_length, dtype=torch.long, device=next(model.parameters()).device)
    return int(model.encode_text(tokens).shape[1])


def _trained_with_quick_gelu(space: str) -> bool:
    base, _, tag = space.partition(":")
    return bool(open_clip.get_pretrained_cfg(base, tag).get("quick_gelu"))


def _quick_gelu(arch: str, space: str) -> bool:
    """Whether the weights of ``space`` were trained with QuickGELU (OpenAI's are): open_clip builds a
    plain ``ViT-L-14`` with GELU and only warns, which would put the embeddings off the space a
    decoder expects, so the activation is forced to match the weights."""
    return "quickgelu" not in arch.lower() and _trained_with_quick_gelu(space)


def _load_pretrained(
    arch: str, tag: str, spec: str, device: torch.device, space: str, weights_id: str = ""
) -> ClipEncoder:
    if arch not in open_clip.list_models():
        raise ProtosynthError(f"{P.clip} {spec}: unknown open_clip architecture {arch!r}")
    is_file = Path(tag).is_file()
    if not is_file and tag not in open_clip.list_pretrained_tags_by_model(arch):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ProtosynthError(f"{P.clip} {spec}: open_clip has no pretrained tag {tag!r} for {arch} (known: {known})")
    try:
        with held_back_logs(logging.ERROR):
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=tag, device=device, force_quick_gelu=_quick_gelu(arch, space)
            )
    except Exception as exc:  # offline: the hub download fails inside open_clip; or a corrupt file
        if is_file:
            raise ProtosynthError(f"{P.clip} {tag}: cannot load it as {arch} weights ({exc})".splitlines()[0]) from None
        raise ProtosynthError(
            f"{P.clip} {spec}: the {arch} weights {tag!r} are not in the local cache and cannot be downloaded "
            f'here ({type(exc).__name__}); on a connected machine run `python -c "import open_clip; '
            f"open_clip.create_model('{arch}', pretrained='{tag}')\"` to fill the Hugging Face cache, "
            f"or pass the checkpoint file with {P.clip('FILE')} and {P.clip_arch('ARCH')}"
        ) from None
    model.eval()
    return ClipEncoder(
        model, preprocess, open_clip.get_tokenizer(arch), spec, space, _embed_dim(model), device, weights_id
    )


def load_clip(
    spec: str = "default", device: str | torch.device = "cpu", arch: str | None = None, space: str | None = None
) -> ClipEncoder:
    """Load the CLIP named by ``spec`` (see module docstring) in eval mode.

    ``arch``: the open_clip architecture of a checkpoint file given as ``spec``. ``space``: declare
    the embedding space of a checkpoint file or a ``local-dir:`` folder (e.g. ``ViT-L-14:openai`` for
    a copy of OpenAI's weights); otherwise its space is named by its content hash."""
    device = torch.device(device)
    if arch is not None or Path(spec).is_file():
        if arch is None:
            raise ProtosynthError(
                f"{P.clip} {spec}: a checkpoint file needs {P.clip_arch} (an open_clip architecture)", param="clip_arch"
            )
        if not Path(spec).is_file():
            raise ProtosynthError(f"{P.clip_arch} {arch} needs {P.clip} to be a checkpoint file; {spec} is not a file")
        digest = sha256_file(Path(spec))  # hashed once: a ViT-L checkpoint is over a gigabyte
        return _load_pretrained(
            arch, spec, spec, device, space or f"{arch.replace('-quickgelu', '')}:file-{digest[:12]}", digest
        )
    if space is not None and not spec.startswith("local-dir:"):
        raise ProtosynthError(
            f"{P.clip_space} only applies to a checkpoint file given with {P.clip('FILE')} and "
            f"{P.clip_arch('ARCH')} or a local-dir:DIR folder, not {P.clip} {spec}"
        )
    if spec == "default":
        if not (SHIPPED_DIR / "clip" / CLIP_WEIGHTS).is_file():
            raise ProtosynthError(f"{P.clip} default: the shipped small CLIP is missing from {SHIPPED_DIR / 'clip'}")
        return _load_local_dir(SHIPPED_DIR / "clip", spec, device)
    if spec.startswith("small:"):
        return _load_local_dir(small_clip_dir(Path(spec[len("small:") :])), spec, device)
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:") :])
        if not (folder / "open_clip_config.json").is_file():
            raise ProtosynthError(f"{P.clip} {spec}: no open_clip_config.json in {folder}")
        return _load_local_dir(folder, spec, device, space)
    arch, sep, tag = spec.partition(":")
    if sep and arch and tag:
        return _load_pretrained(arch, tag, spec, device, space_name(arch, tag))
    raise ProtosynthError(
        f"unknown {P.clip} spec {spec!r}: use 'default', 'small:DIR', 'local-dir:DIR', 'ARCH:PRETRAINED' "
        f"or a checkpoint file with {P.clip_arch}"
    )
