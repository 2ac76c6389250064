"""The one resizing rule every stage shares: RGB, ``size x size``, bicubic, no crop.

The decoder trains and renders on images resized this way, and the evaluation protocols read the
corpus the same way, so a set's images and the corpus's meet at the same pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resized(image: Image.Image, size: int) -> np.ndarray:
    """``image`` as an RGB (size, size, 3) uint8 array (bicubic; unchanged when already that size)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)
