"""Parquet corpora: img2dataset's output (a binary ``jpg`` column of encoded images and a ``caption``
string column, one row per image) or any table like it, such as a ``datasets`` ``Image()`` column
written to parquet (a struct with ``bytes`` and ``path``). A spec is one ``.parquet`` file or a glob
over several, read in sorted order; ``image_column`` / ``caption_column`` name other columns.

Captions are read at load. Images are read by row when used: the image column of one row group
at a time, the last ``CACHED_GROUPS`` kept, so memory holds a few row groups of image bytes and never
the whole corpus (``datasets`` writes row groups of at most 100 MB; a file written as one huge row
group costs that group's bytes on every read that misses the cache).

``scan_parquet`` streams the caption column instead of loading it (the load's fingerprint, pair ->
image rows and one-line errors, no caption held), and ``stream`` hands the files to
``corpora.window.windows`` to be read again in windows of a few store shards.

pyarrow is optional (the ``corpora`` extra); only these corpora import it.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ProtosynthError
from .base import BadCheck, Corpus, FindBad, ImageRef, kept_pairs, unreadable
from .columns import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    RowImages,
    TableRows,
    check_columns,
    row_captions,
    table_corpus,
)
from .webdataset import shard_paths
from .window import Record, Stream, last_images

CACHED_GROUPS = 4  # row groups of image bytes each process keeps (DataLoader workers read in order)


def pyarrow_modules():
    """``pyarrow``, ``pyarrow.compute`` and ``pyarrow.parquet``, or one line naming the extra."""
    try:
        import pyarrow  # noqa: PLC0415 (optional dependency, the 'corpora' extra: only parquet corpora need it)
        import pyarrow.compute  # noqa: PLC0415 (as above)
        import pyarrow.parquet  # noqa: PLC0415 (as above)
    except ImportError:
        raise ProtosynthError("parquet corpora need pyarrow: pip install 'protosynth[corpora]'") from None
    return pyarrow, pyarrow.compute, pyarrow.parquet


def has_pyarrow() -> bool:
    """Whether pyarrow (the 'corpora' extra) can be imported."""
    try:
        pyarrow_modules()
    except ProtosynthError:
        return False
    return True


def open_parquet(path: Path):
    try:
        return pyarrow_modules()[2].ParquetFile(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ProtosynthError(f"{path}: not a readable parquet file ({exc})") from None


def check_image_type(where: str, typ, column: str) -> None:
    pa = pyarrow_modules()[0]
    binary = pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_binary_view(typ)
    if not (binary or (pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0)):
        raise ProtosynthError(
            f"{where}: column {column!r} holds {typ}, not images (binary bytes, or a struct with a 'bytes' field)"
        )


def null_cells(column) -> np.ndarray:
    """Which cells of an image column (a pyarrow array) hold no image: null, or a struct whose
    ``bytes`` is null and that has no ``path`` either."""
    pa, pc, _ = pyarrow_modules()
    missing = pc.is_null(column)
    if pa.types.is_struct(column.type):
        missing = pc.is_null(pc.struct_field(column, "bytes"))
        if column.type.get_field_index("path") >= 0:
            missing = pc.and_(missing, pc.is_null(pc.struct_field(column, "path")))
    return np.asarray(missing.to_numpy(), dtype=bool)


def null_image_rows(pf, column: str) -> list[int]:
    """Rows of a parquet file whose image cell is empty (``null_cells``). Only the row groups whose
    statistics count nulls in the column (or have none) are read."""
    md = pf.metadata
    leaf = next(i for i in range(md.num_columns) if md.schema.column(i).path in (column, f"{column}.bytes"))
    rows, start = [], 0
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(leaf).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            cells = pf.read_row_group(g, columns=[column], use_threads=False).column(0)
            rows += (start + np.flatnonzero(null_cells(cells))).tolist()
        start += md.row_group(g).num_rows
    return rows


class ParquetImages(RowImages):
    """The image column of parquet files, by row key ``FILE#ROW``; read one row group at a time,
    a few cached. Each read opens the file anew, so nothing is shared across forked workers."""

    def __init__(
        self,
        files: list[Path],
        column: str,
        rows: dict[str, tuple[int, int]],
        wheres: dict[str, str],
        starts: list[list[int]],
    ):
        super().__init__(column, wheres)
        self.files, self.rows, self.starts = files, rows, starts  # starts[f][g]: first row of row group g
        self.cache: OrderedDict[tuple[int, int], object] = OrderedDict()

    def group(self, f: int, g: int, where: str):
        if (f, g) in self.cache:
            self.cache.move_to_end((f, g))
            return self.cache[(f, g)]
        try:
            with open_parquet(self.files[f]) as pf:
                column = pf.read_row_group(g, columns=[self.column], use_threads=False).column(0)
        except (OSError, ValueError) as exc:
            raise ProtosynthError(f"{where}: cannot read row group {g} of the file ({exc})") from None
        self.cache[(f, g)] = column
        if len(self.cache) > CACHED_GROUPS:
            self.cache.popitem(last=False)
        return column

    def cell(self, key: str) -> tuple[object, Path | None]:
        f, row = self.rows[key]
        g = bisect_right(self.starts[f], row) - 1
        column = self.group(f, g, self.wheres[key])
        return column[row - self.starts[f][g]].as_py(), self.files[f].parent

    def locate(self, key: str) -> ImageRef:
        f, row = self.rows[key]
        return ImageRef(str(self.files[f]), row)


def load_parquet(
    spec: str,
    image_column: str | None = None,
    caption_column: str | None = None,
    skip_bad: bool = False,
    find_bad: FindBad = unreadable,
) -> Corpus:
    """Read the captions of every file of ``spec`` and index its rows. A row with a null image is an
    error naming file and row; with ``skip_bad`` it is skipped and counted, as an unreadable image is.
    A null or empty caption stays an error (``skip_bad`` drops what cannot be read, not what was
    written wrong)."""
    image_col, caption_col = image_column or IMAGE_COLUMN["parquet"], caption_column or CAPTION_COLUMN
    files = shard_paths(spec)
    h = hashlib.sha256(f"columns\0{image_col}\0{caption_col}\n".encode())
    rows = TableRows(image_col, skip_bad)
    starts: list[list[int]] = []  # per file, the first row of each row group
    for f, path in enumerate(files):
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        with open_parquet(path) as pf:
            check_columns(str(path), pf.schema_arrow.names, image_col, caption_col)
            check_image_type(str(path), pf.schema_arrow.field(image_col).type, image_col)
            cells = pf.read(columns=[caption_col], use_threads=False).column(0).to_pylist()
            no_image = set(null_image_rows(pf, image_col))
            md = pf.metadata
            starts.append(list(accumulate((md.row_group(g).num_rows for g in range(md.num_row_groups)), initial=0)))
        for row, cell in enumerate(cells):
            rows.add(f"{path}#{row}", f"{path} row {row}", cell, row not in no_image, (f, row))
    source = ParquetImages(files, image_col, rows.located, rows.wheres, starts)
    return table_corpus(
        spec, rows, source, h, "parquet", find_bad, image_column=image_column, caption_column=caption_column
    )


SCAN_BATCH = 65_536  # caption cells a scan or a window pass converts to Python at a time


@dataclass
class ParquetScan:
    """What ``scan_parquet`` learns in one pass: the fingerprint, ``pair_image`` and image count
    ``load_parquet`` would give, and what a later streaming pass (``stream``) needs: the files, the
    columns, each file's row group starts and each file's (size, mtime) the fingerprint hashed; with
    ``--skip-bad``, the keys of the rows it dropped (which the streaming pass leaves out) and their
    messages."""

    spec: str
    files: list[Path]
    image_column: str
    caption_column: str
    fingerprint: str
    pair_image: np.ndarray
    n_images: int
    starts: list[list[int]]
    stats: list[tuple[int, int]]
    skip_bad: bool = False
    dropped: set[str] = field(default_factory=set)  # ``FILE#ROW`` of each row --skip-bad dropped
    skipped: list[str] = field(default_factory=list)  # one line per dropped row, in the load's order


def _group_starts(pf) -> list[int]:
    md = pf.metadata
    return list(accumulate((md.row_group(g).num_rows for g in range(md.num_row_groups)), initial=0))


def _checked(path: Path, image_col: str, caption_col: str):
    """The open parquet file, its columns checked as ``load_parquet`` checks them."""
    pf = open_parquet(path)
    try:
        check_columns(str(path), pf.schema_arrow.names, image_col, caption_col)
        check_image_type(str(path), pf.schema_arrow.field(image_col).type, image_col)
    except ProtosynthError:
        pf.close()
        raise
    return pf


def _captions(
    pf, path: Path, image_col: str, caption_col: str, no_image: set[int], skip: set[int] = frozenset()
) -> Iterator[tuple]:
    """(row, where, captions) of every row of one file, in order, ``SCAN_BATCH`` caption cells at a
    time; a row in ``skip`` comes with captions None, its caption unread (a row ``--skip-bad`` drops,
    as ``TableRows`` does not read it); else a row in ``no_image`` or with a bad caption is
    ``load_parquet``'s error for it."""
    row = 0
    for batch in pf.iter_batches(batch_size=SCAN_BATCH, columns=[caption_col], use_threads=False):
        for cell in batch.column(0).to_pylist():
            where = f"{path} row {row}"
            if row in skip:
                yield row, where, None
            elif row in no_image:
                raise ProtosynthError(f"{where}: no image (the {image_col!r} value is null)")
            else:
                yield row, where, row_captions(cell, where)
            row += 1


def scan_parquet(
    spec: str, image_column: str | None = None, caption_column: str | None = None, find_bad: FindBad | None = None
) -> ParquetScan:
    """``load_parquet(spec, image_column, caption_column)``'s fingerprint, ``pair_image`` and image
    count, with the same one-line errors, by streaming each file's caption column (and, as the load
    does, the image column of the row groups whose statistics count nulls): 4 bytes a row held, not
    its captions.

    ``find_bad`` (``--skip-bad``): a row with a null image is dropped (its caption unread), and the
    other rows' images are handed, ``base.CHECK_WINDOW`` at a time in row order, to ``find_bad``
    (``base.BadCheck``: in this process or in Ray tasks) through ``ParquetImages`` as the load reads
    them; only the dropped rows are kept. The result is then ``load_parquet(..., skip_bad=True)``'s:
    the kept rows renumbered, the null-image rows then the undecodable ones hashed into the
    fingerprint, the same messages, warning or every-image-bad error."""
    image_col, caption_col = image_column or IMAGE_COLUMN["parquet"], caption_column or CAPTION_COLUMN
    files = shard_paths(spec)
    h = hashlib.sha256(f"columns\0{image_col}\0{caption_col}\n".encode())
    counts, starts, stats = array("I"), [], []
    check = None
    if find_bad is not None:
        check = BadCheck(find_bad, lambda wheres, at: ParquetImages(files, image_col, at, wheres, starts))
    for f, path in enumerate(files):
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        stats.append((st.st_size, st.st_mtime_ns))
        with _checked(path, image_col, caption_col) as pf:
            no_image = set(null_image_rows(pf, image_col))
            starts.append(_group_starts(pf))
            skip = no_image if check is not None else frozenset()
            for row, where, caps in _captions(pf, path, image_col, caption_col, no_image, skip):
                if check is not None:
                    if caps is None:
                        check.found[f"{path}#{row}"] = f"{where}: no image (the {image_col!r} value is null)"
                        continue
                    check.add(f"{path}#{row}", where, (f, row))
                counts.append(len(caps))
    if not counts and not (check is not None and check.found):
        raise ProtosynthError(f"corpus {spec!r}: the table has no rows")
    pair_image, n_images, skipped, dropped = kept_pairs(spec, counts, check, h)
    fingerprint = f"parquet-{h.hexdigest()[:16]}"
    return ParquetScan(
        spec,
        files,
        image_col,
        caption_col,
        fingerprint,
        pair_image,
        n_images,
        starts,
        stats,
        check is not None,
        dropped,
        skipped,
    )


def stream(got: ParquetScan) -> Stream:
    """The files ``scan_parquet`` read, as ``corpora.window.windows`` streams them again: one record
    per row (a row is an image), images read by row through ``ParquetImages`` as the load reads them."""
    return Stream(
        got.spec,
        got.fingerprint,
        got.pair_image,
        lambda: _records(got),
        last_images,
        lambda wheres, at: ParquetImages(got.files, got.image_column, at, wheres, got.starts),
    )


def _records(got: ParquetScan) -> Iterator[Record]:
    """Every kept row's record, in order (a row ``--skip-bad`` dropped is left out, its caption
    unread); then the load's error if a file's size or mtime (what the fingerprint hashed) or the
    row count changed since the scan."""
    i = 0
    for f, path in enumerate(got.files):
        skip = {int(row) for file, _, row in (key.rpartition("#") for key in got.dropped) if file == str(path)}
        with open_parquet(path) as pf:
            for row, where, caps in _captions(pf, path, got.image_column, got.caption_column, set(), skip):
                if caps is not None:
                    yield i, f"{path}#{row}", where, (f, row), caps
                    i += 1
    now = [(st.st_size, st.st_mtime_ns) for st in (p.stat() for p in got.files)]
    if now != got.stats or i != got.n_images:
        raise ProtosynthError(f"corpus {got.spec!r}: changed while it was read; run again")


class ParquetRows:
    """Images read by the references a corpus index records for a parquet corpus (the file and the
    row as ``offset``): how a summarised parquet corpus (``corpus.scan_source``) reads the images of
    the pairs it writes, through ``ParquetImages`` (a few row groups cached) as the load reads them.
    (A row's reference has no ``length``: ``CorpusIndex`` passes None.)"""

    def __init__(self, column: str):
        self.images = ParquetImages([], column, {}, {}, [])
        self.numbers: dict[str, int] = {}  # file -> its index in ``images.files``

    def __call__(self, file: str, row: int, length: None, where: str) -> Image.Image:
        if file not in self.numbers:
            with open_parquet(Path(file)) as pf:
                self.images.starts.append(_group_starts(pf))
            self.numbers[file] = len(self.images.files)
            self.images.files.append(Path(file))
        key = f"{file}#{row}"
        self.images.rows[key], self.images.wheres[key] = (self.numbers[file], int(row)), where
        return self.images.read(key)
