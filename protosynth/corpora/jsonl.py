"""JSONL manifests, protosynth's own format: one object per line,
``{"image": "rel.png", "caption": "..."}`` or ``{"image": "rel.png", "captions": ["...", ...]}``,
image paths relative to the manifest's folder.

``load_jsonl`` reads a manifest whole; ``scan_jsonl`` streams it for what keys the embedding store
(the same fingerprint, the same one-line errors) holding about 20 bytes per line, not its captions."""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ProtosynthError
from . import window
from .base import (
    BadCheck,
    CaptionsByImage,
    Corpus,
    FileImages,
    FindBad,
    _stat,
    clean_captions,
    decode_utf8,
    file_corpus,
    image_folder,
    manifest_file,
    present_stat,
    read_manifest,
    unreadable,
)
from .window import Record, Stream, Window

NO_PAIRS = "manifest has no pairs"


def parse_line(line: str, where: str) -> tuple[str, list[str]]:
    """One manifest line's image path and captions; a malformed line is the error naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtosynthError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
        raise ProtosynthError(f"{where}: needs an 'image' field with a relative path")
    return obj["image"], clean_captions([obj["caption"]] if "caption" in obj else obj.get("captions"), where)


def load_jsonl(path: str | Path, skip_bad: bool = False, find_bad: FindBad = unreadable) -> Corpus:
    """Read a JSONL manifest; every malformed line is an error naming the file and line."""
    path, root, raw = read_manifest(path)
    rows = CaptionsByImage()
    for lineno, line in enumerate(decode_utf8(raw, path).splitlines(), start=1):
        if line.strip():
            rows.add(*parse_line(line, f"{path} line {lineno}"), lineno)
    return file_corpus(path, "jsonl", raw, root, rows, "line", NO_PAIRS, None, skip_bad, find_bad)


def _lines(path: Path, hasher) -> Iterator[tuple[int, str | ProtosynthError]]:
    """(line number, text) of every line as ``load_jsonl`` numbers them (``str.splitlines`` of the
    decoded file), read one line at a time; every byte goes to ``hasher``. A line that is not UTF-8
    comes as the error ``decode_utf8`` would raise, numbered by newlines as it numbers them."""
    lineno = 0
    with open(path, "rb") as fh:
        for newlines, raw in enumerate(fh, start=1):
            hasher.update(raw)
            try:
                text = raw.rstrip(b"\n").decode("utf-8-sig" if newlines == 1 else "utf-8")
            except UnicodeDecodeError:
                yield lineno, ProtosynthError(f"{path} line {newlines}: not valid UTF-8")
                return
            for part in text.splitlines() or [""]:
                lineno += 1
                yield lineno, part


def _rows(path: Path, hasher) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, image path, captions) of every non-blank line, in order. The errors come in
    ``load_jsonl``'s order: the file's first non-UTF-8 line before any malformed line."""
    malformed = None
    for lineno, line in _lines(path, hasher):
        if isinstance(line, ProtosynthError):
            raise line
        if malformed is not None or not line.strip():
            continue
        try:
            image, caps = parse_line(line, f"{path} line {lineno}")
        except ProtosynthError as exc:
            malformed = exc  # raised once the rest of the file is known to be UTF-8
            continue
        yield lineno, image, caps
    if malformed is not None:
        raise malformed


def _first_of_each_image(digests: bytearray) -> tuple[np.ndarray, np.ndarray]:
    """For rows whose image paths have the 16-byte ``digests``, whether each row is the first to name
    its image (collisions of 128-bit digests are not a concern at any corpus size), and each row's
    image in first-seen order: ``CaptionsByImage``'s order, without a dict of every path."""
    keys = np.frombuffer(bytes(digests), dtype=[("a", ">u8"), ("b", ">u8")])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    is_first = np.zeros(len(keys), dtype=bool)
    is_first[first] = True
    return is_first, rank[inverse.reshape(-1)]


@dataclass
class JsonlScan:
    """What ``scan_manifest`` learns in its two passes: the fingerprint, ``pair_image`` and the image
    count ``load_jsonl`` would give, each non-blank line's image (first-seen order, int32: 4 bytes a
    line), and the two digests the fingerprint hashes (the manifest's bytes; each image's size and
    mtime in image order) so a later streaming pass (``windows``) can tell the corpus did not change."""

    path: Path
    root: Path
    fingerprint: str
    pair_image: np.ndarray
    n_images: int
    image_of_row: np.ndarray  # -1 for the lines of an image ``--skip-bad`` dropped
    raw_sha256: bytes
    stats_sha256: bytes
    skipped: list[str] = field(default_factory=list)  # one line per image ``--skip-bad`` dropped, in image order


def scan_jsonl(path: str | Path) -> tuple[str, np.ndarray, int]:
    """``load_jsonl(path)``'s fingerprint, its ``pair_image`` and its image count (``scan_manifest``)."""
    got = scan_manifest(path)
    return got.fingerprint, got.pair_image, got.n_images


def _stat_line(root: Path, image: str, where: str) -> bytes:
    st = present_stat(root, image, where)
    return f"{image}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()


def scan_manifest(path: str | Path, find_bad: FindBad | None = None) -> JsonlScan:
    """``load_jsonl(path)``'s fingerprint, its ``pair_image`` and its image count, by two streaming
    passes: the first parses every line and keeps a digest of its image path and its caption count;
    the second stats each image once, where it is first named, in that order, as ``file_corpus``
    does. The manifest is hashed in both: a file changed between them is an error.

    ``find_bad`` (``--skip-bad``): the second pass also hands the images, ``base.CHECK_WINDOW`` at a
    time in image order (``base.BadCheck``), to ``find_bad`` (which decodes each once: in this
    process or in Ray tasks) and keeps only what it finds: the dropped images' numbers, keys and
    messages. The result is then ``load_jsonl(path, skip_bad=True)``'s: the kept images renumbered,
    the fingerprint over the kept images' stats and then the dropped keys, the same warning or the
    same every-image-bad error."""
    path = manifest_file(path)
    root = image_folder(path, None)
    first_hash, digests, counts = hashlib.sha256(), bytearray(), array("I")
    for _, image, caps in _rows(path, first_hash):
        digests += hashlib.blake2b(image.encode(), digest_size=16).digest()
        counts.append(len(caps))
    if not counts:
        raise ProtosynthError(f"corpus {str(path)!r}: {NO_PAIRS}")
    is_first, image_of_row = _first_of_each_image(digests)
    del digests
    n_images = int(is_first.sum())
    h, again, stats = first_hash.copy(), hashlib.sha256(), hashlib.sha256()
    h.update(f"root\0{root.resolve()}\n".encode())

    def kept(image: str) -> None:  # a kept image's stat, hashed as ``file_corpus`` hashes it (a plain stat)
        st = _stat(root, image)
        line = f"{image}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        h.update(line)
        stats.update(line)

    check = None if find_bad is None else BadCheck(find_bad, lambda wheres, _at: FileImages(root, wheres), kept)
    for row, (lineno, image, _) in enumerate(_rows(path, again)):
        if row < len(is_first) and is_first[row]:  # a longer file is refused below
            if check is not None:
                check.add(image, f"{path} line {lineno}")
                continue
            line = _stat_line(root, image, f"{path} line {lineno}")
            h.update(line)
            stats.update(line)
    if check is not None:
        check.flush()
    if again.digest() != first_hash.digest():
        raise ProtosynthError(f"corpus {str(path)!r}: changed while it was read; run again")
    weights = np.frombuffer(counts, dtype=f"u{counts.itemsize}")
    per_image = np.bincount(image_of_row, weights=weights, minlength=n_images)
    skipped = [] if check is None else check.finish(str(path), h)
    if check is not None and check.numbers:
        keep = check.keep()
        renumber = np.cumsum(keep) - 1
        renumber[~keep] = -1
        image_of_row, per_image, n_images = renumber[image_of_row], per_image[keep], int(keep.sum())
    pair_image = np.repeat(np.arange(n_images, dtype=np.int64), per_image.astype(np.int64))
    fingerprint = f"jsonl-{h.hexdigest()[:16]}"
    rows = image_of_row.astype(np.int32 if n_images < 2**31 else np.int64)
    return JsonlScan(path, root, fingerprint, pair_image, n_images, rows, first_hash.digest(), stats.digest(), skipped)


def _shard_ends(image_of_row: np.ndarray, n_shards: int, shard_size: int) -> np.ndarray:
    """The last row naming an image of each shard (images ``j * shard_size`` onwards)."""
    last = np.full(n_shards, -1, np.int64)
    rows = np.flatnonzero(image_of_row >= 0)  # not the lines of an image --skip-bad dropped
    np.maximum.at(last, image_of_row[rows] // shard_size, rows)
    return last


def stream(got: JsonlScan) -> Stream:
    """The manifest ``scan_manifest`` read, as ``corpora.window.windows`` streams it again."""
    return Stream(
        str(got.path),
        got.fingerprint,
        got.pair_image,
        partial(_records, got),
        lambda shards: _shard_ends(got.image_of_row, len(shards), _shard_size(shards)),
        lambda wheres, _at: FileImages(got.root, wheres),
    )


def windows(got: JsonlScan, shards: list[dict], need: set[int]) -> Iterator[tuple[list, Window]]:
    """``corpora.window.windows`` of the manifest ``scan_manifest`` read: the shards of ``need`` in
    windows, each as soon as the last line naming one of its images is read (a shard whose lines are
    scattered waits for its last one). The images are stat'ed as the load stats them; after the last
    window, a manifest or an image that changed since ``scan_manifest`` is the load's error."""
    return window.windows(stream(got), shards, need)


def _shard_size(shards: list[dict]) -> int:
    return shards[0]["images"][1] - shards[0]["images"][0] if shards else 1


def _records(got: JsonlScan) -> Iterator[Record]:
    """The manifest's non-blank lines as ``corpora.window`` records, each image stat'ed on the line
    that first names it, in image order, as the load does (the lines of an image ``--skip-bad``
    dropped come as image -1, which no shard takes); then the load's error if the manifest's bytes or
    a kept image's size or mtime changed since the scan."""
    raw, stats, new = hashlib.sha256(), hashlib.sha256(), 0
    for row, (lineno, image, captions) in enumerate(_rows(got.path, raw)):
        i = int(got.image_of_row[row]) if row < len(got.image_of_row) else -1
        if i == new:  # the line that first names image i
            where = f"{got.path} line {lineno}"
            stats.update(_stat_line(got.root, image, where))
            new += 1
            yield i, image, where, None, captions
        else:
            yield i, None, None, None, captions
    if raw.digest() != got.raw_sha256 or stats.digest() != got.stats_sha256:
        raise ProtosynthError(f"corpus {str(got.path)!r}: changed while it was read; run again")
