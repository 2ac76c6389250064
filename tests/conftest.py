"""Shared fixtures: an isolated cache, and tiny models trained once per session with ``--quick``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Every test run gets its own cache, so tests never read or write the user's ~/.cache/protosynth.
os.environ.setdefault("PROTOSYNTH_CACHE", tempfile.mkdtemp(prefix="protosynth-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting threads crawl on a shared CPU

import torch  # noqa: E402

torch.set_num_threads(2)

QUICK_CORPUS = "shapes,n=300"


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory) -> Path:
    """``protosynth models train --quick`` on a 300-image world: a tiny CLIP and decoder."""
    from protosynth.models.train import ModelsTrainConfig, train_models
    from protosynth.models.train_clip import ClipTrainConfig

    out = tmp_path_factory.mktemp("quick_models")
    clip = ClipTrainConfig(arch="ps-tiny-clip", steps=60, batch_size=64, checkpoint_every=20)
    train_models(ModelsTrainConfig(corpus=QUICK_CORPUS, quick=True, clip=clip), out, command="test fixture")
    return out


@pytest.fixture
def jsonl_corpus(tmp_path) -> Path:
    """A 12-image JSONL corpus drawn from the world, with both line forms."""
    import json

    from PIL import Image

    from protosynth.world import WorldConfig, generate_split

    split = generate_split(WorldConfig(n_train=12), "train")
    (tmp_path / "img").mkdir()
    lines = []
    for i, (im, caps) in enumerate(zip(split.images, split.captions)):
        Image.fromarray(im).save(tmp_path / "img" / f"{i}.png")
        if i % 2:
            lines.append({"image": f"img/{i}.png", "captions": caps})
        else:
            lines.extend({"image": f"img/{i}.png", "caption": c} for c in caps)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path
