"""Helpers of the benchmarks that compute a number themselves (not just call the library)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.prototype_purity import purity


def test_prototype_purity_counts_member_images_against_the_caption_image():
    # 4 images, two captions each (pairs 2i, 2i+1); images 0 and 1 show the same colours and shapes
    # in other places, image 2 the exact scene of image 0, image 3 something else
    scenes = [
        frozenset({("red", "circle", "small", "left")}),
        frozenset({("red", "circle", "large", "right")}),
        frozenset({("red", "circle", "small", "left")}),
        frozenset({("blue", "square", "small", "left")}),
    ]
    colour_shapes = [frozenset((c, s) for c, s, _, _ in sc) for sc in scenes]
    pair_image = np.repeat(np.arange(4), 2)
    members = [
        np.array([0, 1, 2, 4, 6]),  # images 0, 1, 2, 3 (pair 1 repeats image 0)
        np.array([7]),
    ]  # image 3 alone
    got = purity(members, np.array([0, 6]), pair_image, scenes, colour_shapes)
    # prototype 0: colours+shapes agree for images 0, 1, 2 (3/4), the exact scene for 0 and 2 (2/4)
    assert got["distinct_images"] == pytest.approx(2.5)
    assert got["members_same_colour_shape"] == pytest.approx(100 * (0.75 + 1.0) / 2)
    assert got["members_same_scene"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert got["majority_same_colour_shape"] == 100.0
