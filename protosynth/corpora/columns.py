"""What the two table formats (parquet files, Hugging Face datasets) share: one row is one image with
its caption (a string) or captions (a list of strings), read from two named columns.

The image cell is the image's encoded bytes (img2dataset's ``jpg`` binary column), or a struct with a
``bytes`` field and a ``path`` field, as a ``datasets`` ``Image()`` feature stores it (and writes it to
parquet); a struct whose ``bytes`` is null is read from its ``path``. Rows are counted from 0, as
pyarrow and ``datasets`` index them.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import P, ProtosynthError
from .base import Corpus, FindBad, ImageSource, check_images, clean_captions, decode, unreadable

IMAGE_COLUMN = {"parquet": "jpg", "hf": "image"}  # img2dataset's name; the datasets Image() convention
CAPTION_COLUMN = "caption"


def check_columns(where: str, present: list[str], image_column: str, caption_column: str) -> None:
    """Both columns must be there; a missing one is named with the columns that are."""
    for param, column, what in ((P.image_column, image_column, "image"), (P.caption_column, caption_column, "caption")):
        if column not in present:
            raise ProtosynthError(
                f"{where}: no {what} column {column!r} (set {param}); its columns: {', '.join(present) or 'none'}"
            )


def row_captions(cell: object, where: str) -> list[str]:
    """A caption cell: one string, or a list of strings (several captions of one image)."""
    if cell is None:
        raise ProtosynthError(f"{where}: the caption is null")
    return clean_captions(cell if isinstance(cell, list) else [cell], where)


def image_data(cell: object, where: str, column: str, folder: Path | None) -> bytes | Path:
    """The encoded bytes of an image cell, or the file its struct's ``path`` names (relative paths
    against ``folder``); a null cell is an error naming ``where``."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            path = Path(cell["path"])
            return path if path.is_absolute() or folder is None else folder / path
        cell = None
    if cell is None:
        raise ProtosynthError(f"{where}: no image (the {column!r} value is null)")
    return cell


class RowImages(ImageSource):
    """Images read by row from a table; subclasses say how a row's cell is fetched (``cell``)."""

    def __init__(self, column: str, wheres: dict[str, str]):
        self.column, self.wheres = column, wheres

    def where(self, key: str) -> str:
        return self.wheres[key]

    @abstractmethod
    def cell(self, key: str) -> tuple[object, Path | None]:
        """The raw image cell of ``key``'s row (bytes, a bytes/path dict, or None) and the folder a
        relative ``path`` in it is relative to."""

    def read(self, key: str, min_side: int | None = None) -> Image.Image:
        where = self.wheres[key]
        cell, folder = self.cell(key)
        data = image_data(cell, where, self.column, folder)
        what = str(data) if isinstance(data, Path) else f"in column {self.column!r}"
        return decode(data, where, what, min_side)


@dataclass
class TableRows:
    """A table's rows as they are read: each row one image with its captions, located by key; a row
    without an image is refused by name, or with ``skip_bad`` set aside (``incomplete``) to be counted
    with the unreadable ones."""

    image_column: str
    skip_bad: bool
    located: dict[str, object] = field(default_factory=dict)  # key -> where the reader finds its image
    wheres: dict[str, str] = field(default_factory=dict)  # key -> 'FILE row N', for messages
    captions: list[list[str]] = field(default_factory=list)
    incomplete: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, where: str, caption_cell: object, has_image: bool, at: object) -> None:
        self.wheres[key] = where
        if not has_image:
            why = f"{where}: no image (the {self.image_column!r} value is null)"
            if not self.skip_bad:
                raise ProtosynthError(why)
            self.incomplete[key] = why
            return
        self.captions.append(row_captions(caption_cell, where))
        self.located[key] = at


def table_corpus(
    spec: str,
    rows: TableRows,
    source: ImageSource,
    h,
    prefix: str,
    find_bad: FindBad = unreadable,
    **columns: str | None,
) -> Corpus:
    """The corpus of a read table: the ``skip_bad`` pass over its images (``check_images`` with
    ``find_bad``), and the fingerprint ``h`` (the files and columns so far) completed with what was
    dropped. ``columns``: the ``image_column`` and ``caption_column`` it was loaded with, recorded
    to load it again."""
    if not rows.located and not rows.incomplete:
        raise ProtosynthError(f"corpus {spec!r}: the table has no rows")
    keys = list(rows.located)
    bad = check_images(spec, keys, source, rows.skip_bad, found=rows.incomplete, find_bad=find_bad)
    kept = [i for i, key in enumerate(keys) if key not in bad]
    for key in bad:
        h.update(f"skipped\0{key}\n".encode())
    return Corpus(
        spec=spec,
        fingerprint=f"{prefix}-{h.hexdigest()[:16]}",
        image_keys=[keys[i] for i in kept],
        captions=[rows.captions[i] for i in kept],
        source=source,
        skip_bad=rows.skip_bad,
        skipped=list(bad.values()),
        **columns,
    )
