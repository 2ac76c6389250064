"""Sharing a set: every set folder is a Hugging Face ``imagefolder`` dataset (read back with the real
``datasets``), ``export`` to webdataset and parquet (read back with tarfile and pyarrow), and the
static HTML ``report`` (opened in a real headless Chromium when one is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image

from protosynth.distill import DistillConfig, distill
from protosynth.distilled import load_distilled, not_a_set
from protosynth.render import RenderConfig

datasets = pytest.importorskip("datasets", reason="the Hugging Face datasets package is not installed")

CORPUS = "shapes,n=60"
BUDGET = 8


@pytest.fixture(scope="module")
def pds_set(tmp_path_factory) -> Path:
    """A PDS set from the shipped models (no training: seconds), with its render fidelity."""
    out = tmp_path_factory.mktemp("sets") / "pds"
    return distill(DistillConfig(budget=BUDGET, corpus=CORPUS, out=out, render=RenderConfig(steps=2)))


def pairs_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("how", ["imagefolder", "card"])
def test_a_set_is_an_imagefolder_dataset(pds_set, tmp_path, how):
    """``imagefolder`` on the folder, and the folder itself (read through its card's ``configs``, as
    the Hub reads it): one row per pair, nothing else (not preview.png, not pairs.jsonl)."""
    args = ("imagefolder",) if how == "imagefolder" else (str(pds_set),)
    kwargs = {"data_dir": str(pds_set)} if how == "imagefolder" else {}
    ds = datasets.load_dataset(*args, **kwargs, split="train", cache_dir=str(tmp_path / "hf"))
    pairs = pairs_of(pds_set)
    assert ds.num_rows == len(pairs) == BUDGET
    assert ds.column_names[:4] == ["image", "caption", "members", "index"]
    ds = ds.select(np.argsort(ds["index"]))  # imagefolder promises no row order
    assert ds["index"] == [p["index"] for p in pairs]
    assert ds["caption"] == [p["caption"] for p in pairs]
    assert ds["members"] == [p["members"] for p in pairs]
    assert ds["start_pair"] == [p["start_pair"] for p in pairs]  # the other plain fields come along
    for row, pair in zip(ds, pairs):
        with Image.open(pds_set / pair["image"]) as png:
            assert np.array_equal(pixels(row["image"]), pixels(png))


def test_the_card_and_metadata_are_files_of_the_set(pds_set):
    """Hashed in the manifest like every file (so --force and verify know them), a Hub-valid YAML head."""
    manifest = json.loads((pds_set / "manifest.json").read_text())
    assert {"metadata.jsonl", "README.md"} <= set(manifest["files"])
    assert not_a_set(pds_set) is None
    load_distilled(pds_set, verify=True)
    card = (pds_set / "README.md").read_text()
    lines = card.splitlines()
    assert lines[0] == "---" and lines.count("---") == 2, "the YAML header is not closed by a line of its own"
    head = DatasetCard(card).data.to_dict()  # the Hub client's own parser
    assert head == yaml.safe_load("\n".join(lines[1 : lines.index("---", 1)]))
    assert head["size_categories"] == ["n<1K"] and "text-to-image" in head["task_categories"]
    assert head["configs"][0]["data_files"][0]["path"] == ["images/*.png", "metadata.jsonl"]
    body = "\n".join(lines[lines.index("---", 1) + 1 :])
    fid = manifest["render_fidelity"]
    assert f"top-1 {fid['top1']} %" in body and CORPUS in body and '"steps": 2' in body
