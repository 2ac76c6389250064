"""JSONL manifests, protosynth's own format: one object per line,
``{"image": "rel.png", "caption": "..."}`` or ``{"image": "rel.png", "captions": ["...", ...]}``,
image paths relative to the manifest's folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ProtosynthError
from .base import CaptionsByImage, Corpus, FindBad, clean_captions, decode_utf8, file_corpus, read_manifest, unreadable


def load_jsonl(path: str | Path, skip_bad: bool = False, find_bad: FindBad = unreadable) -> Corpus:
    """Read a JSONL manifest; every malformed line is an error naming the file and line."""
    path, root, raw = read_manifest(path)
    rows = CaptionsByImage()
    for lineno, line in enumerate(decode_utf8(raw, path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProtosynthError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
            raise ProtosynthError(f"{where}: needs an 'image' field with a relative path")
        caps = clean_captions([obj["caption"]] if "caption" in obj else obj.get("captions"), where)
        rows.add(obj["image"], caps, lineno)
    return file_corpus(path, "jsonl", raw, root, rows, "line", "manifest has no pairs", None, skip_bad, find_bad)
