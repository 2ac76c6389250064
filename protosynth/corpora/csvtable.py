"""CSV corpora: a header with ``image`` and ``caption`` columns (others ignored), one row per
caption-level pair. Image paths are relative to ``--image-root``, default the CSV's folder. Rows
are counted as records with the header as row 1 (a caption with a quoted line break is one row)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import ProtosynthError
from .base import CaptionsByImage, Corpus, FindBad, clean_captions, decode_utf8, file_corpus, read_manifest, unreadable


def load_csv(
    path: str | Path, image_root: Path | None = None, skip_bad: bool = False, find_bad: FindBad = unreadable
) -> Corpus:
    path, root, raw = read_manifest(path, image_root)
    reader = csv.reader(io.StringIO(decode_utf8(raw, path), newline=""))
    rows = CaptionsByImage()
    row_no = 0  # the last record read, for csv.Error (reader.line_num counts physical lines)
    try:
        header = [h.strip() for h in next(reader, [])]
        row_no = 1
        missing = [c for c in ("image", "caption") if c not in header]
        if missing:
            raise ProtosynthError(
                f"{path} row 1: the header needs 'image' and 'caption' columns; "
                f"missing {', '.join(missing)} (found: {', '.join(header) or 'nothing'})"
            )
        col_image, col_caption = header.index("image"), header.index("caption")
        for row in reader:
            row_no += 1
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path} row {row_no}"
            if len(row) <= max(col_image, col_caption):
                raise ProtosynthError(f"{where}: has {len(row)} fields, the header has {len(header)}")
            image = row[col_image].strip()
            if not image:
                raise ProtosynthError(f"{where}: empty 'image' path")
            caps = clean_captions([row[col_caption]], where)
            rows.add(image, caps, row_no)
    except csv.Error as exc:
        raise ProtosynthError(f"{path} row {row_no + 1}: not valid CSV ({exc})") from None
    return file_corpus(path, "csv", raw, root, rows, "row", "the CSV has no rows", image_root, skip_bad, find_bad)
