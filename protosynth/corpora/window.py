"""A window of a corpus: the images of some consecutive store shards and their pairs, indexed as in
the whole corpus, so the code that encodes a shard (``embed._Batches``) and the code that writes a
corpus index shard (``corpora.index``) take it in place of the ``Corpus`` and write the same bytes.
``embed`` streams a JSONL manifest, parquet files or webdataset shards as windows (``windows``, fed
by the format's ``Stream``: ``corpora.jsonl.stream``, ``corpora.parquet.stream``,
``corpora.webdataset.stream``) instead of loading them whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import ProtosynthError
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


WINDOW_SHARDS = 8  # store shards per window: 32,768 images' captions at the default shard size

# One record of a corpus streamed in row order: (image, key, where, at, captions): the image the row
# belongs to (first-seen order, as the load numbers images); its key, ``where`` and ``at`` (what the
# format's image source finds it by) on the row that first names it, else None; its captions.
Record = tuple[int, "str | None", "str | None", object, list[str]]


@dataclass
class Stream:
    """How a format streams its corpus again for ``windows``: its spec, fingerprint and
    ``pair_image`` (a summary's), ``records()`` (a fresh pass, ``Record`` per row, ending with the
    load's error if the corpus changed since it was summarised), ``ends(shards)`` (the last record
    naming an image of each shard) and ``source(wheres, at)`` (the image source of a window's keys)."""

    spec: str
    fingerprint: str
    pair_image: np.ndarray
    records: Callable[[], Iterator[Record]]
    ends: Callable[[list[dict]], np.ndarray]
    source: Callable[[dict[str, str], dict[str, object]], ImageSource]

    def changed(self) -> ProtosynthError:
        return ProtosynthError(f"corpus {self.spec!r}: changed while it was read; run again")


def last_images(shards: list[dict]) -> np.ndarray:
    """``Stream.ends`` for a format with one record per image in image order (parquet rows, webdataset
    samples): a shard's last record is its last image's."""
    return np.array([s["images"][1] - 1 for s in shards], dtype=np.int64)


def windows(stream: Stream, shards: list[dict], need: set[int]) -> Iterator[tuple[list, Window]]:
    """Stream the corpus once more and yield ``(shards, window)`` for the shards numbered in ``need``:
    runs of at most ``WINDOW_SHARDS`` consecutive ones, each as soon as the last record naming one of
    its images is read, so what is held is the open shards' captions, not the corpus. A corpus that
    changed since it was summarised is the load's error after the last window (the caller then
    completes nothing)."""
    shard_size = shards[0]["images"][1] - shards[0]["images"][0] if shards else 1
    ends = stream.ends(shards)
    todo, run = sorted(need), []
    keys: dict[int, str] = {}
    wheres: dict[str, str] = {}
    at: dict[str, object] = {}
    caps: dict[int, list[str]] = {}
    for row, (i, key, where, loc, captions) in enumerate(stream.records()):
        if i // shard_size in need:
            if key is not None:
                keys[i], wheres[key], at[key] = key, where, loc
            caps.setdefault(i, []).extend(captions)
        while todo and ends[todo[0]] <= row:
            run.append(shards[todo.pop(0)])
            if len(run) == WINDOW_SHARDS or not todo or todo[0] != run[-1]["images"][1] // shard_size:
                yield run, _window(stream, run, keys, wheres, at, caps)
                run = []
    if todo:
        raise stream.changed()


def _window(stream: Stream, run: list[dict], keys: dict, wheres: dict, at: dict, caps: dict) -> Window:
    """The window of ``run``'s images, taken out of the streamed buffers."""
    a, b = run[0]["images"][0], run[-1]["images"][1]
    try:
        names = [keys.pop(i) for i in range(a, b)]
        captions = [caps.pop(i) for i in range(a, b)]
    except KeyError:
        raise stream.changed() from None
    source = stream.source({k: wheres.pop(k) for k in names}, {k: at.pop(k) for k in names})
    p0, p1 = run[0]["pairs"][0], run[-1]["pairs"][1]
    flat = [c for group in captions for c in group]
    if len(flat) != p1 - p0:
        raise stream.changed()
    pairs = Offset(stream.pair_image[p0:p1], p0)
    return Window(stream.spec, stream.fingerprint, Offset(names, a), Offset(flat, p0), pairs, source)
