"""How every stage turns a PIL image into pixels: ``to_rgb`` (any accepted mode to 8-bit RGB), and
the one resizing rule they share: RGB, ``size x size``, bicubic, no crop.

The decoder trains and renders on images resized this way, and the evaluation protocols read the
corpus the same way, so a set's images and the corpus's meet at the same pixels.

16-bit images (a 16-bit greyscale PNG opens as PIL mode ``I;16``; ``I;16B``, ``I;16L`` and ``I``
holding values 0..65535 are the same samples) keep their high byte: ``value >> 8``, the rule Pillow
itself applies when it opens a 16-bit RGB or RGBA PNG as 8-bit ``RGB``/``RGBA``. So a 16-bit grey
PNG and a 16-bit RGB PNG of the same picture give the same pixels, and an 8-bit value stored as
16 bits (``v * 257``) comes back as ``v``. (PIL's own ``convert("RGB")`` clips these modes at 255:
dark grey became white.) A mode not listed in ``MODES`` (32-bit float ``F``, ``LAB``, ``HSV``, ...) is
refused by name rather than guessed at.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Modes whose PIL conversion to RGB is exact (alpha, if any, is dropped; palettes are looked up).
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
# Single-channel 16-bit modes, reduced to 8 bits by ``>> 8``.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MODES = EIGHT_BIT_MODES + SIXTEEN_BIT_MODES


class UnsupportedImage(ValueError):
    """An image whose mode ``to_rgb`` does not read (a ValueError: readers report it as a bad image)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit RGB image: PIL's conversion for the 8-bit modes, ``value >> 8`` for the
    16-bit ones (see the module docstring); any other mode is an ``UnsupportedImage`` naming it."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:  # a new image even for RGB: the caller may close the one it opened
        return image.convert("RGB")
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)  # I;16B arrives big-endian: numpy reads it as numbers
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise UnsupportedImage(
                f"mode {mode} with values {values.min()}..{values.max()}, outside the 16-bit range 0..65535"
            )
        grey = (values >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    raise UnsupportedImage(
        f"image mode {mode} is not supported (8-bit modes {', '.join(EIGHT_BIT_MODES)} or 16-bit grey)"
    )


def resized(image: Image.Image, size: int) -> np.ndarray:
    """``image`` as an RGB (size, size, 3) uint8 array (bicubic; unchanged when already that size)."""
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)
