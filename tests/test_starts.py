"""The levers that put several members into one render (``protosynth.starts``, ``central_members``)
on hand-made images and embeddings, and their settings' errors. Fast: no model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from protosynth.baselines.configs import RENDERED, rendered_distill
from protosynth.configs import DistillConfig, RenderConfig
from protosynth.errors import ProtosynthError
from protosynth.prototypes import Prototypes, central_members, nearest_member_pairs
from protosynth.starts import blended_condition, composite_image, start_image, tiled_image

BG = (24, 24, 32)


def scene(side: int = 8, shapes: tuple = ()) -> Image.Image:
    """A flat background with filled squares ``(row0, row1, col0, col1, colour)``."""
    arr = np.empty((side, side, 3), np.uint8)
    arr[:] = BG
    for r0, r1, c0, c1, colour in shapes:
        arr[r0:r1, c0:c1] = colour
    return Image.fromarray(arr, "RGB")


def test_composite_keeps_the_shape_most_members_draw_and_drops_the_odd_one():
    red = (0, 4, 0, 4, (220, 40, 40))
    a, b = scene(shapes=(red,)), scene(shapes=(red, (4, 8, 4, 8, (40, 180, 60))))
    c = scene(shapes=((0, 4, 0, 4, (230, 50, 40)),))  # the same place, a slightly other red
    out = np.asarray(composite_image([a, b, c]))
    assert (out[:4, :4] == (220, 40, 40)).all()  # two of three draw this red: it wins, not a mix
    assert (out[4:, 4:] == BG).all()  # only b's green: the background the others share
    inputs = np.stack([np.asarray(im) for im in (a, b, c)])
    assert all((inputs[:, y, x] == out[y, x]).all(-1).any() for y in range(8) for x in range(8))  # real colours


def test_composite_ties_go_to_the_more_central_image_and_sizes_follow_the_first():
    a, b = scene(shapes=((0, 8, 0, 8, (200, 0, 0)),)), scene(16, ((0, 16, 0, 16, (0, 0, 200)),))
    out = composite_image([a, b])  # two images: every pixel a tie
    assert out.size == (8, 8) and (np.asarray(out) == (200, 0, 0)).all()
    assert np.array_equal(np.asarray(composite_image([b, a])), np.asarray(scene(16, ((0, 16, 0, 16, (0, 0, 200)),))))


def test_tile_puts_the_members_in_a_grid_most_central_first():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    full = [scene(shapes=((0, 8, 0, 8, c),)) for c in colours]
    out = np.asarray(tiled_image(full))
    assert out.shape == (8, 8, 3)
    for (r, c), colour in zip([(0, 0), (0, 4), (4, 0), (4, 4)], colours):
        assert (out[r : r + 4, c : c + 4] == colour).all()
    three = np.asarray(tiled_image([scene(shapes=((3, 5, 3, 5, colours[0]),))] * 3))
    assert (three[4:, 4:] == BG).all()  # the empty cell: the members' background (their border's median)
    assert start_image("tile", full).size == (8, 8) and start_image("composite", full).size == (8, 8)


def test_blend_is_the_mean_direction_at_the_mean_norm():
    rows = np.array([[3.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)
    blend = blended_condition(rows, [[0, 1], [2]])
    assert np.allclose(blend[0], np.array([1.0, 1.0]) / np.sqrt(2) * 2.0)  # directions (1,0),(0,1); norms 3, 1
    assert np.allclose(blend[1], rows[2])  # one member: itself


def protos_of(image: np.ndarray, text: np.ndarray, members: list[list[int]]) -> Prototypes:
    return Prototypes(image, text, image, text, [np.asarray(m, np.int64) for m in members])


def test_central_members_rank_by_the_nearest_members_score_one_pair_per_image():
    # six pairs of four images (pairs 0, 1 show image 0); the prototype points along x
    image = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [0.9, 0.1]], np.float32)
    text = np.array([[1.0, 0.0], [0.9, 0.1], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], np.float32)
    pair_image = np.array([0, 0, 1, 2, 3, 3])
    protos = protos_of(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]), [[1, 0, 2, 3, 5], []])
    got = central_members(protos, image, text, pair_image, 3)
    assert got[0] == [0, 5, 3]  # pair 1 shows image 0 again: skipped; pair 2 is the least central
    assert got[0][0] == nearest_member_pairs(protos, image, text)[0]
    assert got[1] == [4]  # no members: the nearest pair of all
    assert central_members(protos, image, text, pair_image, 9)[0] == [0, 5, 3, 2]  # fewer images than k


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"condition": "mean"}, r"^unknown condition 'mean': use prototype or blend$"),
        ({"condition": "blend", "central": 0}, r"^central must be an integer of at least 1, got 0$"),
        ({"central": 2}, r"^central needs render\.init composite or tile, or condition=blend$"),
        (
            {"method": "select", "condition": "blend"},
            r"^method=select \(the default\) renders nothing: condition do not apply; pass method=pds to render$",
        ),
        ({"render": RenderConfig(init="mosaic")}, r"^unknown render\.init 'mosaic': use noise or nearest or"),
    ],
)
def test_bad_lever_settings_are_one_line_errors(kw, message):
    with pytest.raises(ProtosynthError, match=message) as err:
        DistillConfig(**{"method": "pds", **kw}).check()
    assert "\n" not in str(err.value)


def test_central_is_accepted_with_each_lever_that_uses_it():
    levers = ({"condition": "blend"}, {"render": RenderConfig(init="composite")}, {"render": RenderConfig(init="tile")})
    for kw in levers:
        DistillConfig(method="pds", central=5, **kw).check()


def test_each_rendered_compare_method_is_a_valid_distill():
    made = {m: rendered_distill(m, budget=10) for m in ("select", *RENDERED)}
    for cfg in made.values():
        cfg.check()
    assert made["select"].method == "select" and made["pds"] == DistillConfig(method="pds", budget=10)
    assert made["pds-composite"].render.init == "composite" and made["pds-blend"].condition == "blend"
    assert (made["pds-tile"].render.init, made["pds-tile"].central) == ("tile", 4)
    assert made["pds-published"].preset == "pds-published"
