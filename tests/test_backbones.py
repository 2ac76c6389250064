"""Image backbones: the world pretraining task, the saved folder round trip, the shipped weights."""

from __future__ import annotations

import json

import pytest
import torch

from protosynth.corpora.shapes import WorldObject
from protosynth.errors import ProtosynthError
from protosynth.evaluation.protocols import get_protocol
from protosynth.models.backbones import SHIPPED_BACKBONES, load_backbone, small_archs
from protosynth.training.backbone import CELL_CLASSES, PretrainConfig, cell_labels, pretrain_backbone


def test_cell_labels():
    objs = [[WorldObject("red", "circle", "small", "top left"), WorldObject("cyan", "cross", "large", "center")], []]
    labels = cell_labels(objs)
    assert labels.shape == (2, 9) and CELL_CLASSES == 65
    assert labels[0, 0] == 1  # red (colour 0), circle (shape 0), small (size 0)
    assert labels[0, 4] == 1 + (7 * 4 + 3) * 2 + 1  # cyan (7), cross (3), large (1)
    assert labels[0].tolist().count(0) == 7 and (labels[1] == 0).all()


def test_pretrained_folder_round_trip(tiny_backbone):
    bb = load_backbone(f"small:{tiny_backbone}")
    cfg = json.loads((tiny_backbone / "config.json").read_text())
    assert cfg["arch"] == "ps-nfnet" and cfg["num_classes"] == 9 * 65 and bb.image_size == 32
    assert bb.logits_dim == 585 and bb.feature_dim == 512
    x = torch.randn(2, 3, 32, 32)
    again = load_backbone(f"small:{tiny_backbone}")
    with torch.no_grad():
        assert torch.equal(bb.features(x, "pool"), again.features(x, "pool"))
        assert bb.features(x, "logits").shape == (2, 585)
    prov = json.loads((tiny_backbone / "provenance.json").read_text())
    assert prov["command"] == "test fixture" and "holdout" in prov


@pytest.mark.slow  # trains a backbone twice (and makes the pretrain split)
def test_pretraining_is_seeded(tmp_path):
    cfg = PretrainConfig(arch="ps-vit", n_images=120, holdout=20, epochs=1, batch_size=50)
    a = pretrain_backbone(cfg, tmp_path / "a")
    pretrain_backbone(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert 0 <= a["holdout"]["cell_accuracy"] <= 100


def test_pretrain_refuses_a_foreign_out_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ProtosynthError, match="not a backbone folder"):
        pretrain_backbone(PretrainConfig(n_images=50, holdout=10, epochs=1), tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ProtosynthError, match="unknown small backbone architecture"):
        pretrain_backbone(PretrainConfig(arch="ps-huge"), tmp_path / "x")


def test_shipped_backbones_cover_the_small_protocol():
    """Every arch of the small protocol's cross-arch list ships, with provenance and a held-out
    accuracy above the trivial one (always "empty" scores 81.6 % of cells and 0 % of images)."""
    for arch in get_protocol("small").cross_archs:
        assert arch in small_archs()
        folder = SHIPPED_BACKBONES / arch
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["config"]["arch"] == arch and prov["command"].startswith("protosynth models pretrain-backbone")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["holdout"]["cell_accuracy"] > 84 and metrics["holdout"]["image_accuracy"] > 10
        assert load_backbone(arch).image_size == 32
