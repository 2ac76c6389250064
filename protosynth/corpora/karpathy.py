"""Karpathy / BLIP JSON, the files MTT-VL and LoRS train and test on: one JSON list. An entry with
a string ``caption`` is one caption-level pair (the train files); an entry with a list ``caption``
is one image with all its captions (the test files). Entries of one image are grouped in
first-seen order. Image paths are relative to ``--image-root`` (the dataset's image folder),
default the JSON file's folder. Entries are counted from 0, as list indices."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ProtosynthError
from .base import CaptionsByImage, Corpus, FindBad, clean_captions, decode_utf8, file_corpus, read_manifest, unreadable


def load_karpathy(
    path: str | Path, image_root: Path | None = None, skip_bad: bool = False, find_bad: FindBad = unreadable
) -> Corpus:
    path, root, raw = read_manifest(path, image_root)
    try:
        entries = json.loads(decode_utf8(raw, path))
    except json.JSONDecodeError as exc:
        raise ProtosynthError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(entries, list):
        raise ProtosynthError(
            f"{path}: expected a JSON list of entries (Karpathy/BLIP format), got a {type(entries).__name__}"
        )
    rows = CaptionsByImage()
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
            raise ProtosynthError(f"{where}: needs an 'image' field with a path relative to the image root")
        if "caption" not in entry:
            raise ProtosynthError(f"{where}: needs a 'caption' (a string, or a list of strings for a test file)")
        cap = entry["caption"]
        caps = clean_captions(cap if isinstance(cap, list) else [cap], where)
        rows.add(entry["image"], caps, i)
    empty = "the JSON list has no entries"
    return file_corpus(path, "karpathy", raw, root, rows, "entry", empty, image_root, skip_bad, find_bad)
