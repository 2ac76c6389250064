"""Render starts and conditions that carry several members of a prototype (issue 31's levers).

A prototype summarises dozens of distinct real images, but ``init="nearest"`` starts each render
from one of them and at strength 0.3 the render stays close to it: a lightly re-noised real image.
These rules build what a render starts from, or what it is conditioned on, out of the prototype's
``k`` most central member images (``prototypes.central_members``: the same image-plus-text score
that picks the nearest member, one pair per distinct image):

- ``composite_image``: the pixel-wise medoid of the k images (``init="composite"``);
- ``tiled_image``: the k images downscaled into one grid (``init="tile"``, multi-formation as IDC
  and RDED do for classification);
- ``blended_condition``: the mean direction of the k members' CLIP image embeddings at their mean
  raw norm (``condition="blend"``), the rule a prototype itself follows over all its members.

Each is a pure function of its inputs (no random draw), so a rerun gives the same bytes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from . import passes
from .util.imageops import resized


def composite_image(images: list[Image.Image]) -> Image.Image:
    """The pixel-wise medoid: at every pixel, the colour of the member image whose colour there is
    nearest (summed RGB distance) to the others' (ties: the earlier, more central image).

    Why a medoid and not a mean: a world scene is a few flat-coloured shapes on a plain background.
    A mean ghosts every shape at 1/k intensity in colours none of them has; a channel-wise median
    mixes channels of different shapes into a new colour; a union (the pixel furthest from the
    background) stacks every member's shapes into a scene none of them shows. The medoid keeps a
    pixel's real colour, so a shape that most of the k members draw at the same place survives with
    its colour, a shape only one of them draws gives way to the background the others share, and
    the background stays clean. All images are first resized to the first one's width."""
    side = images[0].size[0]
    stack = np.stack([resized(im, side) for im in images]).astype(np.int32)  # (k, H, W, 3)
    dist = np.abs(stack[:, None] - stack[None, :]).sum(axis=-1).sum(axis=1)  # (k, H, W): to all others
    pick = np.argmin(dist, axis=0)  # the first minimum: the more central image wins a tie
    out = np.take_along_axis(stack, pick[None, :, :, None], axis=0)[0]
    return Image.fromarray(out.astype(np.uint8), "RGB")


def tiled_image(images: list[Image.Image]) -> Image.Image:
    """The k images downscaled into a g x g grid (g = ceil(sqrt(k))), most central first, row by
    row, on a canvas of the first image's width; cells left over take the images' background, the
    per-channel median of their border pixels. Why: one synthetic image then shows several members
    at once, as multi-formation packs several real images into one (IDC, RDED)."""
    side = images[0].size[0]
    grid = math.ceil(math.sqrt(len(images)))
    edges = [side * i // grid for i in range(grid + 1)]
    full = np.stack([resized(im, side) for im in images])
    border = np.concatenate([full[:, 0], full[:, -1], full[:, :, 0], full[:, :, -1]], axis=1).reshape(-1, 3)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = np.median(border, axis=0).astype(np.uint8)
    for n, im in enumerate(images):
        r, c = divmod(n, grid)
        h, w = edges[r + 1] - edges[r], edges[c + 1] - edges[c]
        cell = np.asarray(Image.fromarray(full[n]).resize((w, h), Image.BICUBIC))
        canvas[edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = cell
    return Image.fromarray(canvas, "RGB")


def start_image(init: str, images: list[Image.Image]) -> Image.Image:
    """The start of ``init`` (``configs.MEMBER_STARTS``: composite or tile) from a prototype's central
    member images."""
    return composite_image(images) if init == "composite" else tiled_image(images)


def blended_condition(image_raw, groups: list[list[int]]) -> np.ndarray:
    """For each group of member pairs, the mean direction of their raw CLIP image embeddings at
    their mean raw norm (float32, one row per group). Why: an unCLIP decoder expects a raw CLIP
    embedding, and this is the rule (``prototype_norm="members"``) that makes a prototype from all
    its members, here over the few most central ones only."""
    out = np.empty((len(groups), image_raw.shape[1]), np.float32)
    for i, group in enumerate(groups):
        rows = np.asarray(image_raw.take(np.asarray(group, np.int64), axis=0), np.float32)
        norms = np.linalg.norm(rows, axis=1)
        direction = passes.unit(passes.unit(rows).mean(axis=0, keepdims=True))[0]
        out[i] = direction * norms.mean()
    return out
