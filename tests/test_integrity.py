"""A set you can trust: a distilled set is checked against its manifest where it is read for
evaluation, a damaged embedding shard is recomputed, and ``protosynth verify`` checks either.

Real files throughout: a random coreset of the world written by ``build_coreset`` (the shipped
CLIP, nothing trained), damaged on disk the way a user or a disk would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.distilled import load_distilled
from protosynth.errors import ProtosynthError
from protosynth.evaluation.evaluate import EvalConfig, evaluate

CORPUS = "shapes,n=40"
TEST = "shapes:test,n=40"


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "random"
    return build_coreset(CoresetConfig(method="random", budget=6, corpus=CORPUS, out=out))


@pytest.fixture
def a_set(clean_set, tmp_path) -> Path:
    """A copy of the clean set, for a test to damage."""
    return Path(shutil.copytree(clean_set, tmp_path / "set"))


def eval_cfg() -> EvalConfig:
    return EvalConfig(protocol="small", test=TEST, repeats=1, epochs=1)


def test_missing_image_is_one_error_naming_the_set_and_file(a_set):
    (a_set / "images/000003.png").unlink()
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing") as err:
        evaluate([a_set], eval_cfg())
    assert str(a_set / "images/000003.png") in str(err.value) and "\n" not in str(err.value)
    ds = load_distilled(a_set)  # without verify the set opens; its image does not, with a clear error
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing"):
        ds.image(3)
    with pytest.raises(ProtosynthError, match=r"set/images/000003\.png: missing"):
        ds[3]


def test_corrupt_image_is_one_error_naming_the_set_and_file(a_set):
    (a_set / "images/000002.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ProtosynthError, match=r"set/images/000002\.png: cannot be decoded"):
        evaluate([a_set], eval_cfg())
    with pytest.raises(ProtosynthError, match=r"set/images/000002\.png: cannot be decoded"):
        load_distilled(a_set).image(2)


def test_a_set_changed_after_it_was_written_is_refused_by_evaluation(a_set, clean_set):
    lines = (a_set / "pairs.jsonl").read_text().splitlines()
    edited = json.loads(lines[1])
    edited["caption"] = "a caption typed in by hand"
    lines[1] = json.dumps(edited, sort_keys=True)
    (a_set / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtosynthError, match=r"set/pairs\.jsonl: differs from the manifest.*remake it"):
        evaluate([a_set], eval_cfg())
    shutil.copy(clean_set / "pairs.jsonl", a_set / "pairs.jsonl")
    shutil.copy(clean_set / "images/000000.png", a_set / "images/000004.png")  # a valid image, not its own
    with pytest.raises(ProtosynthError, match=r"set/images/000004\.png: differs from the manifest.*remake it"):
        evaluate([a_set], eval_cfg())
    (a_set / "embeddings.safetensors").unlink()
    with pytest.raises(ProtosynthError, match=r"set/embeddings\.safetensors: missing \(and 1 more files\)"):
        evaluate([a_set], eval_cfg())
