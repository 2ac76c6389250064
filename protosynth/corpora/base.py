"""What every corpus reader shares: the ``Corpus`` record, where its images come from, and the
``--skip-bad`` pass.

Images are read by key through an ``ImageSource`` (files under a root folder, or members of tar
shards) rather than by index, so a subset of a corpus (``Corpus.subset``) reads the same images.
Every read error is one line naming the manifest file and the row (or the shard and member) the
image came from: a user with 30,000 images needs to know which line to fix.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import P, ProtosynthError
from ..util.imageops import to_rgb

log = logging.getLogger(__name__)

# PIL raises many exception types on corrupt data (a truncated PNG is an OSError, a bad header a
# SyntaxError or struct.error, a huge one DecompressionBombError); all mean "this image is bad".
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def decode(data: bytes | Path, where: str, what: str, min_side: int | None = None) -> Image.Image:
    """Fully decode an image (file path or bytes) to 8-bit RGB (``imageops.to_rgb``: 16-bit images
    keep their high byte, a mode without a rule is refused by name); any failure is one line naming
    ``where``.

    ``min_side``: the caller only needs an image whose sides are at least this long (an encoder
    that resizes to it next). A JPEG is then decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    still has both sides >= ``min_side`` (PIL's ``draft``), which skips most of the decoding work."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if min_side and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            return to_rgb(im)
    except FileNotFoundError:
        raise ProtosynthError(f"{where}: image file not found: {what}") from None
    except IsADirectoryError:
        raise ProtosynthError(f"{where}: {what} is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ProtosynthError(f"{where}: cannot read image {what}: not an image format PIL reads") from None
    except DECODE_ERRORS as exc:
        raise ProtosynthError(f"{where}: cannot read image {what}: {decode_reason(exc)}") from None


# PIL names an in-memory file by its repr, which carries a memory address (``<_io.BytesIO object at
# 0x7f...>``): nothing a user can act on, and it would make manifests differ between runs
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-f]+>")


def decode_reason(exc: BaseException) -> str:
    """Why PIL could not decode an image, in one line without object reprs."""
    text = " ".join(_OBJECT_REPR.sub("", str(exc)).split())
    return text or type(exc).__name__


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: an image ``file``; a tar shard ``file`` with the member's byte
    ``offset`` and ``length``; a parquet ``file`` (or a dataset, no file) with the row as ``offset``;
    nothing for images held in memory."""

    file: str | None = None
    offset: int | None = None
    length: int | None = None


class ImageSource(ABC):
    """Where a file-backed corpus's images live, addressed by image key."""

    @abstractmethod
    def where(self, key: str) -> str:
        """The manifest file and row (or shard and member) of ``key``, for messages."""

    @abstractmethod
    def read(self, key: str, min_side: int | None = None) -> Image.Image:
        """Image ``key`` as RGB, or a ProtosynthError naming ``where(key)`` (``min_side``: see ``decode``)."""

    def check_present(self, key: str) -> None:
        """Cheap existence check at load time (without ``--skip-bad``); decoding waits for use."""

    def locate(self, key: str) -> ImageRef:
        """Where image ``key``'s bytes are, for the corpus index (``corpora.index``): a process that
        holds this and not the loaded corpus can read the image."""
        return ImageRef()


class FileImages(ImageSource):
    """Image files at ``root / key`` (JSONL, Karpathy JSON, CSV); ``rows[key]`` is 'file line 3' etc."""

    def __init__(self, root: Path, rows: dict[str, str]):
        self.root, self.rows = root, rows

    def where(self, key: str) -> str:
        return self.rows[key]

    def read(self, key: str, min_side: int | None = None) -> Image.Image:
        return decode(self.root / key, self.rows[key], str(self.root / key), min_side)

    def locate(self, key: str) -> ImageRef:
        return ImageRef(os.path.join(self.root, key))

    def check_present(self, key: str) -> None:
        self.present_stat(key)

    def present_stat(self, key: str) -> os.stat_result:
        """The file's stat (``present_stat``)."""
        return present_stat(self.root, key, self.rows[key])


def present_stat(root: Path, key: str, where: str) -> os.stat_result:
    """The stat of image file ``root / key``, which also tells that it is a regular file (else the
    one-line error naming ``where``): the one stat a load makes of an image, its size and mtime going
    into the fingerprint."""
    # one fast stat first: a corpus of millions of files is stat-bound, and pathlib's is_dir +
    # is_file cost twice as much; pathlib's checks name whatever is not a regular file
    try:
        st = _stat(root, key)
        if stat.S_ISREG(st.st_mode):
            return st
    except (OSError, ValueError):
        pass
    path = root / key
    if path.is_dir():
        raise ProtosynthError(f"{where}: {path} is a directory, not an image file")
    if not path.is_file():
        raise ProtosynthError(f"{where}: image file not found: {path}")
    return path.stat()


@dataclass
class Corpus:
    """Images with captions. ``pair_image[p]`` is the image of caption-level pair ``p``."""

    spec: str
    fingerprint: str
    image_keys: list[str]
    captions: list[list[str]]
    pixels: np.ndarray | None = None  # (N, H, W, 3) uint8 when held in memory (the world)
    root: Path | None = None  # image folder of file-backed corpora
    image_lines: list[int] = field(default_factory=list)  # manifest line / CSV row / JSON entry of each image
    source: ImageSource | None = None  # how to read images not held in ``pixels``
    image_root: Path | None = None  # the --image-root it was loaded with, recorded to reload it the same way
    skip_bad: bool = False  # loaded with --skip-bad
    image_column: str | None = None  # the image_column a parquet or hf: corpus was loaded with (None: default)
    caption_column: str | None = None  # its caption_column, likewise
    skipped: list[str] = field(default_factory=list)  # one line per unreadable image --skip-bad dropped
    pair_image: np.ndarray = field(init=False)
    pair_caption: list[str] = field(init=False)

    def __post_init__(self) -> None:
        counts = [len(c) for c in self.captions]
        self.pair_image = np.repeat(np.arange(len(self.captions), dtype=np.int64), counts)
        self.pair_caption = [c for caps in self.captions for c in caps]

    @property
    def n_images(self) -> int:
        return len(self.captions)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_caption)

    def load_image(self, i: int, min_side: int | None = None) -> Image.Image:
        """Image ``i`` as RGB; a missing or corrupt file is a ProtosynthError naming file and row.
        ``min_side``: JPEGs may come back smaller, down to this side (see ``decode``)."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        if self.source is None:
            raise ProtosynthError(f"corpus {self.spec}: holds captions only, no images")
        return self.source.read(self.image_keys[i], min_side)

    def image_array(self, i: int) -> np.ndarray:
        return np.asarray(self.load_image(i), dtype=np.uint8)

    def subset(self, indices: list[int], fingerprint: str) -> Corpus:
        """The images ``indices`` (with their captions), reading from the same source."""
        pick = list(indices)
        return replace(
            self,
            fingerprint=fingerprint,
            image_keys=[self.image_keys[i] for i in pick],
            captions=[self.captions[i] for i in pick],
            pixels=None if self.pixels is None else self.pixels[pick],
            image_lines=[self.image_lines[i] for i in pick] if self.image_lines else [],
        )


class CaptionsByImage:
    """Captions grouped by image path in first-seen order, with the row that first named each image
    (its line, CSV row or JSON entry): how every file format turns rows into images."""

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.captions: list[list[str]] = []
        self.first_rows: list[int] = []

    def add(self, image: str, caps: list[str], row: int) -> None:
        if image not in self.order:
            self.order[image] = len(self.captions)
            self.captions.append([])
            self.first_rows.append(row)
        self.captions[self.order[image]].extend(caps)

    @property
    def images(self) -> list[str]:
        return list(self.order)


def clean_captions(caps: object, where: str) -> list[str]:
    """Stripped captions; an empty or non-string caption is an error naming ``where``."""
    if not isinstance(caps, list) or not caps:
        raise ProtosynthError(f"{where}: needs a 'caption' string or a non-empty 'captions' list")
    for c in caps:
        if not isinstance(c, str) or not c.strip():
            raise ProtosynthError(f"{where}: empty or non-string caption")
    return [c.strip() for c in caps]


def decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise ProtosynthError(f"{path} line {line_no}: not valid UTF-8") from None


def manifest_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ProtosynthError(f"corpus {str(path)!r}: no such file")
    return path


def read_manifest(path: str | Path, image_root: Path | None = None) -> tuple[Path, Path, bytes]:
    """A manifest file (it must exist), the folder its image paths are relative to (see
    ``image_folder``) and its bytes."""
    path = manifest_file(path)
    root = image_folder(path, image_root)
    return path, root, path.read_bytes()


def image_folder(manifest: Path, image_root: Path | None) -> Path:
    """``--image-root`` if given (it must be a folder), else the manifest's own folder."""
    if image_root is None:
        return manifest.parent
    if not Path(image_root).is_dir():
        raise ProtosynthError(f"{P.image_root} {image_root}: no such folder")
    return Path(image_root)


# The --skip-bad check of a list of image keys: key -> one-line message for each unreadable image,
# in key order. ``unreadable`` runs it in this process; the Ray engine maps it over chunks of keys
# as Ray tasks (``protosynth.engines.ray.corpus``), which is why a reader takes it as a parameter.
FindBad = Callable[[ImageSource, list[str]], dict[str, str]]


def unreadable(source: ImageSource, keys: list[str]) -> dict[str, str]:
    """Decode each image of ``keys`` once; key -> the reader's one-line error for each one that
    cannot be read, in ``keys`` order. The one function both engines run, so a row is dropped (and
    named) the same way whichever process decoded it."""
    bad: dict[str, str] = {}
    for key in keys:
        try:
            source.read(key)
        except ProtosynthError as exc:
            bad[key] = str(exc)
    return bad


def check_images(
    spec: str,
    keys: list[str],
    source: ImageSource,
    skip_bad: bool,
    found: dict[str, str] | None = None,
    find_bad: FindBad = unreadable,
) -> dict[str, str]:
    """Without ``skip_bad``: every image must exist (the first missing one is the error). With it:
    decode every image once (``find_bad``: here, or in Ray tasks); returns key -> message for each
    unreadable one (after those a reader already ``found``, such as tar samples without an image
    member)."""
    bad = dict(found or {})
    if skip_bad:
        bad.update(find_bad(source, keys))
    else:
        for key in keys:
            source.check_present(key)
    report_bad(spec, bad, len(keys) + len(found or {}))
    return bad


def report_bad(spec: str, bad: dict[str, str], n_images: int) -> None:
    """What ``--skip-bad`` says of the ``bad`` images of a corpus of ``n_images`` (dropped ones
    included): the one-line error when every image is bad, else one warning naming the first."""
    if bad:
        first = next(iter(bad.values()))
        if len(bad) == n_images:
            raise ProtosynthError(f"corpus {spec}: every one of its {len(bad)} images is unreadable ({first})")
        log.warning("corpus %s: skip_bad skipped %d unreadable images (first: %s)", spec, len(bad), first)


CHECK_WINDOW = 32768  # images a streamed --skip-bad check hands ``find_bad`` at a time (their keys are all it holds)


class BadCheck:
    """The ``--skip-bad`` check of a corpus streamed in image order (``corpus.scan_source``), the same
    check ``check_images`` makes of a loaded one: the images queued (``add``: key, ``where``, and
    ``at``, what the format's image source finds it by), handed to ``find_bad`` ``CHECK_WINDOW`` at a
    time through ``source(wheres, at)`` (the format's image source of those keys; ``find_bad`` decodes
    each once, in this process or in Ray tasks); ``kept(key)`` is called for each image found readable,
    in order. What a reader drops before decoding (a null image cell, a sample without a member) goes
    in ``found`` and comes first, as ``check_images``'s ``found``. What it holds is one window's keys
    and the dropped ones (key -> message); ``numbers`` are the undecodable images' numbers among the
    ``add``-ed ones."""

    def __init__(
        self,
        find_bad: FindBad,
        source: Callable[[dict[str, str], dict[str, object]], ImageSource],
        kept: Callable[[str], None] | None = None,
    ):
        self.find_bad, self.source, self.kept = find_bad, source, kept
        self.queued: list[tuple[str, str, object]] = []
        self.seen = 0  # images checked so far: the number of the first queued one
        self.numbers: list[int] = []
        self.found: dict[str, str] = {}
        self.bad: dict[str, str] = {}

    def add(self, key: str, where: str, at: object = None) -> None:
        self.queued.append((key, where, at))
        if len(self.queued) >= CHECK_WINDOW:
            self.flush()

    def flush(self) -> None:
        if not self.queued:
            return
        keys = [key for key, _, _ in self.queued]
        source = self.source({key: where for key, where, _ in self.queued}, {key: at for key, _, at in self.queued})
        found = self.find_bad(source, keys)
        for j, key in enumerate(keys):
            if key in found:
                self.numbers.append(self.seen + j)
                self.bad[key] = found[key]
            elif self.kept is not None:
                self.kept(key)
        self.seen += len(keys)
        self.queued = []

    def keep(self) -> np.ndarray:
        """Which of the ``add``-ed images were found readable (a bool per image, in order)."""
        keep = np.ones(self.seen, dtype=bool)
        keep[np.asarray(self.numbers, dtype=np.int64)] = False
        return keep

    def finish(self, spec: str, h) -> list[str]:
        """After the last image: the dropped keys hashed into the fingerprint ``h`` last, as the loads
        do (``found`` first); ``report_bad``'s error or warning; the messages, in that order."""
        self.flush()
        dropped = {**self.found, **self.bad}
        for key in dropped:
            h.update(f"skipped\0{key}\n".encode())
        report_bad(spec, dropped, self.seen + len(self.found))
        return list(dropped.values())


def kept_pairs(spec: str, counts, check: BadCheck | None, h) -> tuple[np.ndarray, int, list[str], set[str]]:
    """A streamed scan's end (parquet rows, webdataset samples: one record per image): each kept
    image's pairs from ``counts`` (captions per image read, an ``array``), as ``pair_image``; with a
    ``--skip-bad`` check, its ``finish`` (the dropped keys hashed into ``h``, the warning or error)
    first: ``pair_image``, the number of kept images, the messages and the dropped keys."""
    per_image = np.frombuffer(counts, dtype=f"u{counts.itemsize}")
    skipped, dropped = [], set()
    if check is not None:
        skipped = check.finish(spec, h)
        per_image, dropped = per_image[check.keep()], {*check.found, *check.bad}
    return np.repeat(np.arange(len(per_image), dtype=np.int64), per_image), len(per_image), skipped, dropped


def _stat(root: Path, key: str) -> os.stat_result:
    """``(root / key).stat()``, by os.stat on the joined string where that works (faster by far)."""
    try:
        return os.stat(os.path.join(root, key))
    except (OSError, ValueError):
        return (root / key).stat()


def file_corpus(
    path: Path,
    prefix: str,
    raw: bytes,
    root: Path,
    rows: CaptionsByImage,
    unit: str,
    empty: str,
    image_root: Path | None,
    skip_bad: bool,
    find_bad: FindBad = unreadable,
) -> Corpus:
    """The corpus of a parsed manifest whose images are files under ``root``: existence checks (or
    the --skip-bad pass, ``find_bad``), then the fingerprint that keys the embedding cache. Each image
    is placed as ``{path} {unit} {n}`` by the row that first named it; no rows at all is the error
    ``corpus '{path}': {empty}``."""
    if not rows.captions:
        raise ProtosynthError(f"corpus {str(path)!r}: {empty}")
    spec, keys, captions, first = str(path), rows.images, rows.captions, rows.first_rows
    where = [f"{path} {unit} {n}" for n in first]
    source = FileImages(root, dict(zip(keys, where)))
    # manifest bytes, image root, each kept image's size and mtime, and what was dropped: any change
    # to what would be embedded gives a new fingerprint. Each image is stat'ed once: without
    # skip_bad that stat is also the existence check (a corpus of millions of files is stat-bound)
    h = hashlib.sha256(raw)
    h.update(f"root\0{root.resolve()}\n".encode())
    bad = check_images(spec, keys, source, skip_bad, find_bad=find_bad) if skip_bad else {}
    if bad:
        kept = [i for i, key in enumerate(keys) if key not in bad]
        keys, captions, first = [keys[i] for i in kept], [captions[i] for i in kept], [first[i] for i in kept]
    stat_of = source.present_stat if not skip_bad else (lambda key: _stat(root, key))
    for key in keys:
        st = stat_of(key)
        h.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for key in bad:
        h.update(f"skipped\0{key}\n".encode())
    return Corpus(
        spec=spec,
        fingerprint=f"{prefix}-{h.hexdigest()[:16]}",
        image_keys=keys,
        captions=captions,
        root=root,
        image_lines=first,
        source=source,
        image_root=image_root,
        skip_bad=skip_bad,
        skipped=list(bad.values()),
    )
