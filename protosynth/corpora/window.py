"""A window of a corpus: the images of some consecutive store shards and their pairs, indexed as in
the whole corpus, so the code that encodes a shard (``embed._Batches``) and the code that writes a
corpus index shard (``corpora.index``) take it in place of the ``Corpus`` and write the same bytes.
``embed`` streams a JSONL manifest as windows (``corpora.jsonl.windows``) instead of loading it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .base import ImageSource


class Offset:
    """Items ``start .. start + len(items)`` of a longer sequence, read by their positions in it
    (an int or a slice inside the window)."""

    def __init__(self, items, start: int):
        self.items, self.start = items, int(start)

    def __len__(self) -> int:
        return self.start + len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            if i.step not in (None, 1) or i.start is None or i.start < self.start or i.stop > len(self):
                raise IndexError(f"slice {i} outside the window {self.start}..{len(self)}")
            return self.items[i.start - self.start : i.stop - self.start]
        if not self.start <= i < len(self):
            raise IndexError(f"item {i} outside the window {self.start}..{len(self)}")
        return self.items[i - self.start]


@dataclass
class Window:
    """Images ``[a, b)`` of a corpus (keys, read through ``source``) and their pairs ``[p0, p1)``."""

    spec: str
    fingerprint: str
    image_keys: Offset
    pair_caption: Offset
    pair_image: Offset
    source: ImageSource
    pixels: None = None

    def load_image(self, i: int, min_side: int | None = None) -> Image.Image:
        """Image ``i`` (its index in the whole corpus), as ``Corpus.load_image`` reads it."""
        return self.source.read(self.image_keys[i], min_side)
