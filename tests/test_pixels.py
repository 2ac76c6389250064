"""Corpus images for the protocols: uint8 rows at the protocol's size, normalised per batch, and
decoded once into a memory-mapped cache for file corpora (Flickr30k-sized corpora do not fit as
float tensors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from protosynth.corpora.shapes import WorldConfig, generate_split, image_digest
from protosynth.corpus import cache_dir, load_corpus
from protosynth.errors import ProtosynthError
from protosynth.evaluation.data import image_hashes, to_pixels
from protosynth.evaluation.pixels import corpus_pixel_rows

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class _Backbone:
    mean, std = MEAN, STD


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def mixed_sizes(tmp_path):
    """A Karpathy-style file of 6 world images saved at different sizes (as real corpora are)."""
    world = generate_split(WorldConfig(n_train=6), "train")
    entries = []
    for i, side in enumerate((32, 48, 64, 40, 32, 57)):
        Image.fromarray(world.images[i]).resize((side, side + i), Image.NEAREST).save(tmp_path / f"{i}.png")
        entries.append({"image": f"{i}.png", "caption": world.captions[i]})
    (tmp_path / "test.json").write_text(json.dumps(entries))
    return load_corpus(str(tmp_path / "test.json"))


def test_rows_match_the_in_memory_conversion_and_index_every_way(mixed_sizes):
    rows = corpus_pixel_rows(mixed_sizes, MEAN, STD, 24)
    full = to_pixels([mixed_sizes.load_image(i) for i in range(6)], _Backbone(), 24)
    assert rows.shape == (6, 3, 24, 24) and len(rows) == 6
    assert torch.equal(rows[:], full)
    assert torch.equal(rows[torch.tensor([4, 1, 1])], full[[4, 1, 1]])
    assert torch.equal(rows[np.array([2])], full[2:3]) and torch.equal(rows[3], full[3:4])


def test_file_corpus_is_decoded_once_into_the_cache(mixed_sizes, monkeypatch):
    first = corpus_pixel_rows(mixed_sizes, MEAN, STD, 20)[:]
    cached = list((cache_dir() / "pixels").glob("*.npy"))
    assert len(cached) == 1 and not list((cache_dir() / "pixels").glob(".*tmp*"))

    def no_decoding(*_a, **_k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(type(mixed_sizes), "load_image", no_decoding)
    assert torch.equal(corpus_pixel_rows(mixed_sizes, MEAN, STD, 20)[:], first)


def test_interrupted_decoding_leaves_no_cache(mixed_sizes, monkeypatch):
    real = type(mixed_sizes).load_image

    def fails_on_the_fourth(self, i, min_side=None):
        if i == 3:
            raise ProtosynthError("test.json entry 3: cannot read 3.png")
        return real(self, i, min_side)

    monkeypatch.setattr(type(mixed_sizes), "load_image", fails_on_the_fourth)
    with pytest.raises(ProtosynthError, match="entry 3"):
        corpus_pixel_rows(mixed_sizes, MEAN, STD, 16)
    assert not (cache_dir() / "pixels").exists() or not list((cache_dir() / "pixels").iterdir())


@pytest.mark.slow  # generates the world's 10,000-image train split in its own cache
def test_world_rows_are_its_pixels_without_a_copy():
    world = load_corpus("shapes:test,n=8")
    rows = corpus_pixel_rows(world, MEAN, STD, 32)
    assert rows.pixels is world.pixels
    resized = corpus_pixel_rows(world, MEAN, STD, 16)
    assert resized.shape == (world.n_images, 3, 16, 16)


def test_image_hashes_of_images_of_different_sizes(mixed_sizes):
    hashes = image_hashes(mixed_sizes)
    assert sorted(hashes.values()) == list(range(6))
    assert hashes[image_digest(mixed_sizes.image_array(2))] == 2


def test_image_hashes_of_a_file_corpus_are_cached(mixed_sizes, monkeypatch):
    """The overlap check's digests come from the cache the second time (no image decoded), and a
    damaged cache file is recomputed rather than trusted."""
    first = image_hashes(mixed_sizes)
    (cached,) = (cache_dir() / "hashes").glob("*.json")

    def no_decoding(*_a, **_k):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(type(mixed_sizes), "load_image", no_decoding)
        assert image_hashes(mixed_sizes) == first
    cached.write_text("{not json")
    assert image_hashes(mixed_sizes) == first and len(json.loads(cached.read_text())) == 6
