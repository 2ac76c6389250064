"""The built-in world: deterministic, captioned, and drawn where its captions say."""

from __future__ import annotations

import re

import numpy as np
import pytest

from protosynth.corpora.shapes import (
    BACKGROUND,
    COLOUR_SYNONYMS,
    COLOURS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZE_SYNONYMS,
    WorldConfig,
    WorldObject,
    generate_split,
    render_objects,
)

SMALL = WorldConfig(n_train=60, n_test=60, n_pretrain=60)


@pytest.fixture(scope="module")
def test_split():
    return generate_split(SMALL, "test")


def _alternation(words: list[str]) -> str:
    # longest first so that "plus sign" is preferred over "plus"
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _cell(img: np.ndarray, position: str) -> np.ndarray:
    """The pixels of one cell of the 3x3 grid, as (n, 3) ints."""
    size = img.shape[0]
    row, col = POSITIONS[position]
    c = size / 3
    block = img[int(row * c) : int((row + 1) * c), int(col * c) : int((col + 1) * c)]
    return block.reshape(-1, 3).astype(int)


# ---------------------------------------------------------------- determinism


def test_same_config_gives_identical_images_and_captions(test_split):
    again = generate_split(SMALL, "test")
    assert np.array_equal(again.images, test_split.images)
    assert again.captions == test_split.captions
    assert again.objects == test_split.objects


def test_different_split_gives_different_images(test_split):
    train = generate_split(SMALL, "train")
    assert train.images.shape == test_split.images.shape
    assert not np.array_equal(train.images, test_split.images)
    assert train.captions != test_split.captions
    # not just a different order: no test image appears verbatim in the train split
    train_bytes = {im.tobytes() for im in train.images}
    assert sum(im.tobytes() in train_bytes for im in test_split.images) < len(test_split.images) // 4


def test_different_seed_gives_different_images(test_split):
    other = generate_split(WorldConfig(n_test=60, seed=1), "test")
    assert not np.array_equal(other.images, test_split.images)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        generate_split(SMALL, "validation")


def test_fingerprint_tracks_config():
    assert WorldConfig().fingerprint() == WorldConfig().fingerprint()
    assert WorldConfig().fingerprint() != WorldConfig(seed=1).fingerprint()
    assert WorldConfig().fingerprint() != WorldConfig(image_size=16).fingerprint()


# ---------------------------------------------------------------- shape of the data


def test_images_shape_and_dtype(test_split):
    assert test_split.images.shape == (60, 32, 32, 3)
    assert test_split.images.dtype == np.uint8
    assert len(test_split.captions) == 60
    assert len(test_split.objects) == 60


@pytest.mark.parametrize("size", [16, 48])
def test_image_size_is_configurable(size):
    ws = generate_split(WorldConfig(image_size=size, n_test=7), "test")
    assert ws.images.shape == (7, size, size, 3)
    assert ws.images.dtype == np.uint8


def test_images_are_not_blank(test_split):
    bg = np.array(BACKGROUND)
    for img in test_split.images:
        assert (np.abs(img.reshape(-1, 3).astype(int) - bg).max(axis=1) > 0).any()


def test_five_distinct_captions_per_image(test_split):
    for caps in test_split.captions:
        assert len(caps) == 5
        assert len(set(caps)) == 5
        assert all(isinstance(c, str) and c.strip() for c in caps)


def test_captions_per_image_is_configurable():
    ws = generate_split(WorldConfig(n_test=10, captions_per_image=3), "test")
    assert all(len(caps) == 3 and len(set(caps)) == 3 for caps in ws.captions)


def test_object_count_within_bounds(test_split):
    for objs in test_split.objects:
        assert 1 <= len(objs) <= SMALL.max_objects
        # one object per grid cell
        assert len({o.position for o in objs}) == len(objs)


def test_max_objects_one_gives_single_objects():
    ws = generate_split(WorldConfig(n_test=30, max_objects=1), "test")
    assert all(len(objs) == 1 for objs in ws.objects)


# ---------------------------------------------------------------- captions describe the objects


def test_each_caption_names_colour_and_shape_of_every_object(test_split):
    """Each caption mentions a synonym of every object's colour right before a synonym of its shape."""
    for caps, objs in zip(test_split.captions, test_split.objects):
        for caption in caps:
            for obj in objs:
                pattern = (
                    rf"\b({_alternation(COLOUR_SYNONYMS[obj.colour])}) "
                    rf"({_alternation(SHAPE_SYNONYMS[obj.shape])})\b"
                )
                assert re.search(pattern, caption), (caption, obj)


def test_each_caption_names_every_position(test_split):
    for caps, objs in zip(test_split.captions, test_split.objects):
        for caption in caps:
            for obj in objs:
                assert any(p in caption for p in POSITION_PHRASES[obj.position]), (caption, obj)


def test_size_words_when_present_match_the_object(test_split):
    """A caption either names no sizes or names each object's size right before its colour."""
    all_sizes = [w for words in SIZE_SYNONYMS.values() for w in words]
    for caps, objs in zip(test_split.captions, test_split.objects):
        for caption in caps:
            if not re.search(rf"\b({_alternation(all_sizes)})\b", caption):
                continue
            for obj in objs:
                pattern = (
                    rf"\b({_alternation(SIZE_SYNONYMS[obj.size])}) "
                    rf"({_alternation(COLOUR_SYNONYMS[obj.colour])}) "
                    rf"({_alternation(SHAPE_SYNONYMS[obj.shape])})\b"
                )
                assert re.search(pattern, caption), (caption, obj)


def test_captions_do_not_name_absent_colours(test_split):
    """A colour word that names no object of the image must not appear (basic words only)."""
    for caps, objs in zip(test_split.captions, test_split.objects):
        present = {o.colour for o in objs}
        for caption in caps:
            for colour in COLOURS:
                if colour not in present:
                    assert not re.search(rf"\b{colour}\b", caption), (caption, objs)


# ---------------------------------------------------------------- variety


def test_attribute_tables_are_rich_enough():
    assert len(COLOURS) >= 6
    assert len(SHAPES) >= 4
    assert len(POSITIONS) >= 5
    assert set(COLOUR_SYNONYMS) == set(COLOURS)
    assert set(SHAPE_SYNONYMS) == set(SHAPES)
    assert set(POSITION_PHRASES) == set(POSITIONS)
    # colours are visually distinct from each other and from the background
    palette = np.array(list(COLOURS.values()) + [BACKGROUND], dtype=int)
    dist = np.abs(palette[:, None] - palette[None]).max(axis=2)
    assert dist[~np.eye(len(palette), dtype=bool)].min() >= 30


def test_generated_objects_cover_the_attributes(test_split):
    objs = [o for objs in test_split.objects for o in objs]
    assert len({o.colour for o in objs}) >= 6
    assert len({o.shape for o in objs}) >= 4
    assert len({o.position for o in objs}) >= 6
    assert len({o.size for o in objs}) == 2
    assert len({len(objs) for objs in test_split.objects}) >= 2  # single and multi-object images


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("shape, colour", list(zip(SHAPES, ["red", "cyan", "yellow", "purple"])))
def test_render_puts_colour_at_position_cell(position, shape, colour):
    size = 48
    obj = WorldObject(colour=colour, shape=shape, size="large", position=position)
    img = render_objects([obj], size, np.zeros((1, 2)))
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    row, col = POSITIONS[position]
    cy, cx = int((row + 0.5) * size / 3), int((col + 0.5) * size / 3)
    # the centre of the object's cell carries the object's colour exactly
    assert tuple(img[cy, cx]) == COLOURS[colour]
    # every cell that is not adjacent to the object's cell is untouched background
    for other, (r, c) in POSITIONS.items():
        if max(abs(r - row), abs(c - col)) >= 2:
            assert (_cell(img, other) == BACKGROUND).all(), other


def test_render_empty_is_background():
    img = render_objects([], 16, np.zeros((0, 2)))
    assert (img.reshape(-1, 3) == BACKGROUND).all()


def test_large_objects_cover_more_pixels_than_small():
    zero = np.zeros((1, 2))
    counts = {}
    for size in ("small", "large"):
        img = render_objects([WorldObject("blue", "circle", size, "center")], 48, zero)
        counts[size] = int((img.reshape(-1, 3) != BACKGROUND).any(axis=1).sum())
    assert counts["large"] > 2 * counts["small"] > 0


def test_generated_images_show_each_object_colour_in_its_cell(test_split):
    """Every object has pixels of exactly its colour inside its own grid cell."""
    for img, objs in zip(test_split.images, test_split.objects):
        for obj in objs:
            diff = np.abs(_cell(img, obj.position) - np.array(COLOURS[obj.colour])).max(axis=1)
            assert diff.min() <= 8, obj


def test_generated_single_objects_leave_far_cells_empty(test_split):
    singles = [(img, objs[0]) for img, objs in zip(test_split.images, test_split.objects) if len(objs) == 1]
    assert singles
    for img, obj in singles:
        row, col = POSITIONS[obj.position]
        for other, (r, c) in POSITIONS.items():
            if max(abs(r - row), abs(c - col)) >= 2:
                assert (_cell(img, other) == BACKGROUND).all(), (obj, other)
