"""What the stages after embedding read of a corpus's pairs: captions, the image of a pair, the pairs
of an image, image keys (``PairRows``). Two readers give the same answers: ``CorpusRows`` from a
corpus loaded in memory, and ``index.CorpusIndex`` from the sharded corpus index that ``embed``
writes beside the store, which reads only the shards holding the rows asked for, so the set writer
need not hold every caption and key of the corpus. ``pair_rows`` picks the index when there is one.
Images (``read_images``) come from the loaded corpus when there is one (the world's are in memory, a
table's are read by its reader), else from the index's references (a summarised JSONL corpus's image
files; a summarised parquet corpus's rows and a webdataset corpus's tar members, through the
summary's ``read_ref``: ``corpora.summary``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .base import Corpus
from .summary import CorpusSummary, whole


class PairRows(Protocol):
    def captions(self, pairs: Sequence[int] | np.ndarray) -> list[str]:
        """The caption of each of ``pairs``, in that order."""

    def images(self, pairs: Sequence[int] | np.ndarray) -> np.ndarray:
        """The image row of each of ``pairs`` (int64), in that order."""

    def pairs_of_images(self, images: set[int]) -> dict[int, list[int]]:
        """image row -> its pairs (ascending), for ``images``, in ascending image order."""

    def keys(self, images: Sequence[int]) -> list[str]:
        """The key of each of ``images``, in that order."""

    def read_images(self, images: Sequence[int]) -> Iterator[Image.Image]:
        """Each of ``images`` (image rows) decoded to RGB, in that order, one at a time."""


class CorpusRows:
    """``PairRows`` of a corpus held in memory."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def captions(self, pairs) -> list[str]:
        return [self.corpus.pair_caption[int(p)] for p in np.asarray(pairs, dtype=np.int64).reshape(-1)]

    def images(self, pairs) -> np.ndarray:
        return self.corpus.pair_image[np.asarray(pairs, dtype=np.int64).reshape(-1)]

    def pairs_of_images(self, images: set[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for pair, image in enumerate(self.corpus.pair_image):
            if int(image) in images:
                out.setdefault(int(image), []).append(pair)
        return out

    def keys(self, images) -> list[str]:
        return [self.corpus.image_keys[int(i)] for i in images]

    def read_images(self, images) -> Iterator[Image.Image]:
        return (self.corpus.load_image(int(i)) for i in images)


def pair_rows(corpus: Corpus | CorpusSummary, index: Path | None) -> PairRows:
    """The corpus index at ``index`` when there is one (``Embeddings.corpus_index``), reading images
    through ``corpus`` when it is loaded; else ``corpus`` itself (a summary is loaded whole)."""
    if index is None:
        return CorpusRows(whole(corpus))
    from .index import CorpusIndex  # noqa: PLC0415 (pyarrow, an optional extra, comes with it)

    if isinstance(corpus, Corpus):
        return CorpusIndex(index, corpus)
    return CorpusIndex(index, corpus.loaded, corpus.read_ref)


def as_rows(source: Corpus | PairRows) -> PairRows:
    """A reader for ``source``: a corpus's own rows, or the reader given."""
    return CorpusRows(source) if isinstance(source, Corpus) else source
