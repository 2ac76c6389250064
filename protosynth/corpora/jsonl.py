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
from pathlib import Path

import numpy as np

from ..errors import ProtosynthError
from .base import (
    CaptionsByImage,
    Corpus,
    FindBad,
    clean_captions,
    decode_utf8,
    file_corpus,
    image_folder,
    manifest_file,
    present_stat,
    read_manifest,
    unreadable,
)

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


def _rows(path: Path, hasher) -> Iterator[tuple[int, str, int]]:
    """(line number, image path, caption count) of every non-blank line, in order. The errors come
    in ``load_jsonl``'s order: the file's first non-UTF-8 line before any malformed line."""
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
        yield lineno, image, len(caps)
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


def scan_jsonl(path: str | Path) -> tuple[str, np.ndarray, int]:
    """``load_jsonl(path)``'s fingerprint, its ``pair_image`` and its image count, by two streaming
    passes: the first parses every line and keeps a digest of its image path and its caption count;
    the second stats each image once, where it is first named, in that order, as ``file_corpus``
    does. The manifest is hashed in both: a file changed between them is an error."""
    path = manifest_file(path)
    root = image_folder(path, None)
    first_hash, digests, counts = hashlib.sha256(), bytearray(), array("I")
    for _, image, n in _rows(path, first_hash):
        digests += hashlib.blake2b(image.encode(), digest_size=16).digest()
        counts.append(n)
    if not counts:
        raise ProtosynthError(f"corpus {str(path)!r}: {NO_PAIRS}")
    is_first, image_of_row = _first_of_each_image(digests)
    del digests
    n_images = int(is_first.sum())
    h, again = first_hash.copy(), hashlib.sha256()
    h.update(f"root\0{root.resolve()}\n".encode())
    for row, (lineno, image, _) in enumerate(_rows(path, again)):
        if row < len(is_first) and is_first[row]:  # a longer file is refused below
            st = present_stat(root, image, f"{path} line {lineno}")
            h.update(f"{image}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if again.digest() != first_hash.digest():
        raise ProtosynthError(f"corpus {str(path)!r}: changed while it was read; run again")
    weights = np.frombuffer(counts, dtype=f"u{counts.itemsize}")
    per_image = np.bincount(image_of_row, weights=weights, minlength=n_images)
    pair_image = np.repeat(np.arange(n_images, dtype=np.int64), per_image.astype(np.int64))
    return f"jsonl-{h.hexdigest()[:16]}", pair_image, n_images
