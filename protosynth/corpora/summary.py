"""What the driver holds of a corpus that the embedding store and the corpus index already hold
(``CorpusSummary``): its spec, its fingerprint (which keys the store), each pair's image row (which
cuts the store's shards) and the reading options a manifest records, but no caption, key or image
reference. ``corpus.scan_source`` makes one by streaming the corpus once; the stages load the whole
corpus (``whole``) only when they must compute something from it: a missing shard of the store or of
the index, or the rows of a corpus without an index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ProtosynthError
from .base import Corpus


@dataclass
class CorpusSummary:
    """A corpus's spec, fingerprint and pair -> image rows, and how to load it whole (``load``). It
    answers what ``Corpus`` answers of the corpus as a whole (``n_images``, ``n_pairs``, the reading
    options a manifest's ``corpus`` entry records), so the store and a set's manifest take either."""

    spec: str
    fingerprint: str
    pair_image: np.ndarray  # (n_pairs,) int64, as ``Corpus.pair_image``
    n_images: int
    load: Callable[[], Corpus]  # the whole corpus, read as the summary was (``load_source``)
    image_root: Path | None = None
    skip_bad: bool = False
    image_column: str | None = None
    caption_column: str | None = None
    skipped: list[str] = field(default_factory=list)
    pixels: None = None  # a summarised corpus holds no image in memory
    loaded: Corpus | None = None  # the whole corpus, once ``whole`` has loaded it
    # windows(shards, need) -> (shards, window) runs of the corpus streamed again (``corpora.window``),
    # for a stage that needs some shards' captions and images but not the whole corpus (None: load it)
    windows: Callable | None = None
    # read_ref(file, offset, length, where) -> the image a corpus index row names by a file and an
    # offset (a parquet row, a tar member with its length), for a summary that is not loaded; None:
    # the index names image files only
    read_ref: Callable | None = None

    @property
    def n_pairs(self) -> int:
        return len(self.pair_image)

    def share_pairs(self, stored: np.ndarray, path: Path) -> bool:
        """Hold ``stored``, a complete store's ``pair_image.npy`` (``path``) memory-mapped, instead of
        the scan's copy, when the file holds the same numbers (read a chunk at a time through a map
        closed after, so the pages it read are not left on ``stored``): one ``pair_image`` on the
        driver, paged in by range. True when they are shared."""
        if self.pair_image is stored:
            return True
        if not same_pairs(path, self.pair_image):
            return False
        self.pair_image = stored
        return True


PAIRS_CHUNK = 1 << 20  # pairs compared at a time by ``same_pairs`` (8 MiB of each side)


def same_pairs(path: Path, pairs: np.ndarray) -> bool:
    """Whether the ``.npy`` file at ``path`` holds ``pairs`` (same shape, same int64 values)."""
    disk = np.load(path, mmap_mode="r")
    if disk.shape != pairs.shape or disk.dtype != pairs.dtype:
        return False
    return all(
        np.array_equal(disk[a : a + PAIRS_CHUNK], pairs[a : a + PAIRS_CHUNK]) for a in range(0, len(pairs), PAIRS_CHUNK)
    )


def whole(corpus: Corpus | CorpusSummary) -> Corpus:
    """The corpus itself: a summary's is loaded on first need (once), and must be the one summarised."""
    if isinstance(corpus, Corpus):
        return corpus
    if corpus.loaded is None:
        loaded = corpus.load()
        if loaded.fingerprint != corpus.fingerprint:  # the files changed between the two reads
            raise ProtosynthError(f"corpus {corpus.spec}: changed while it was read; run again")
        corpus.loaded = loaded
    return corpus.loaded
