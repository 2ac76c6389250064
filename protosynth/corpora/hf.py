"""Hugging Face datasets as corpora, read from this machine only (protosynth never downloads):

- ``hf:NAME[:SPLIT]``: ``datasets.load_dataset(NAME, split=SPLIT)`` in offline mode, whatever
  ``HF_DATASETS_OFFLINE`` says. NAME is a Hub dataset already in the local datasets cache
  (``HF_DATASETS_CACHE``; load it once where the Hub is reachable), or a local folder of data files
  (parquet, ...) that ``load_dataset`` reads by path;
- ``hf:FOLDER[:SPLIT]``, or FOLDER alone, where FOLDER is what ``save_to_disk`` wrote (``state.json``
  and ``dataset_info.json`` for one split, ``dataset_dict.json`` for several): ``datasets.load_from_disk``.

SPLIT defaults to the only split, else ``train``. Each row is one image: the ``image`` column (an
``Image()`` feature, read undecoded as bytes or path, or binary bytes) with the ``caption`` column
(a string, or a list of strings as Flickr30k's copies on the Hub have); ``image_column`` and
``caption_column`` name others. Captions are read at load; images by row when used, from the
dataset's memory-mapped Arrow files.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import ProtosynthError, held_back_logs
from .base import Corpus, FindBad, ImageRef, unreadable
from .columns import CAPTION_COLUMN, IMAGE_COLUMN, RowImages, TableRows, check_columns, table_corpus
from .parquet import null_cells
from .spec import parse_hf


def datasets_module():
    try:
        import datasets  # noqa: PLC0415 (optional dependency, the 'corpora' extra: only hf: corpora need it)
    except ImportError:
        raise ProtosynthError("hf: corpora need the datasets library: pip install 'protosynth[corpora]'") from None
    return datasets


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` is what ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` wrote."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def is_hf(spec: str) -> bool:
    return spec.startswith("hf:") or is_saved_dataset(Path(spec))


@contextmanager
def offline(datasets):
    """``datasets`` in offline mode, its progress bars and log lines held back, for one load."""
    was_offline, bars_on = datasets.config.HF_HUB_OFFLINE, datasets.is_progress_bar_enabled()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        with held_back_logs():
            yield
    finally:
        datasets.config.HF_HUB_OFFLINE = was_offline
        if bars_on:
            datasets.enable_progress_bars()


def open_split(spec: str):
    """The dataset split ``spec`` names and a label for messages (its folder or name, and split)."""
    datasets = datasets_module()
    target, split = parse_hf(spec)
    saved = is_saved_dataset(Path(target))
    try:
        with offline(datasets):
            found = datasets.load_from_disk(target) if saved else datasets.load_dataset(target)
    except ConnectionError:
        raise ProtosynthError(
            f"corpus {spec!r}: {target!r} is neither in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) "
            "nor a folder, and protosynth never downloads (load it once with datasets.load_dataset where the Hub "
            "is reachable, or save_to_disk it)"
        ) from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtosynthError(f"corpus {spec!r}: datasets cannot load {target!r}: {first}") from None
    if not isinstance(found, datasets.DatasetDict):  # one saved split
        if split is not None and split != str(found.split):
            held = f"one split, {found.split}" if found.split is not None else "one unnamed split"
            raise ProtosynthError(f"corpus {spec!r}: {target} holds {held}, not {split!r}; name no split")
        return found, target
    names = list(found)
    if split is None:
        split = names[0] if len(names) == 1 else "train" if "train" in names else None
        if split is None:
            raise ProtosynthError(f"corpus {spec!r}: name a split (hf:{target}:SPLIT); it has {', '.join(names)}")
    if split not in found:
        raise ProtosynthError(f"corpus {spec!r}: no split {split!r}; it has {', '.join(names)}")
    return found[split], f"{target} split {split}"


class DatasetImages(RowImages):
    """The image column of a dataset split, by row key (the row number as text)."""

    def __init__(self, ds, column: str, wheres: dict[str, str]):
        super().__init__(column, wheres)
        self.ds = ds.select_columns([column])

    def cell(self, key: str) -> tuple[object, Path | None]:
        return self.ds[int(key)][self.column], None

    def locate(self, key: str) -> ImageRef:
        return ImageRef(None, int(key))


def image_feature(ds, label: str, column: str):
    """``ds`` with its image column read undecoded (bytes or path, not a PIL image)."""
    datasets = datasets_module()
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return ds
    raise ProtosynthError(f"{label}: column {column!r} holds {feature}, not images (an Image() feature or binary)")


def load_hf(
    spec: str,
    image_column: str | None = None,
    caption_column: str | None = None,
    skip_bad: bool = False,
    find_bad: FindBad = unreadable,
) -> Corpus:
    """Open the split (offline), read its captions and find the rows without an image; a null image
    is an error naming the row, skipped with ``skip_bad``; a null or empty caption stays an error."""
    image_col, caption_col = image_column or IMAGE_COLUMN["hf"], caption_column or CAPTION_COLUMN
    ds, label = open_split(spec)
    check_columns(label, list(ds.features), image_col, caption_col)
    ds = image_feature(ds, label, image_col)
    if ds._indices is not None:  # a row mapping over the Arrow data: make rows and Arrow rows agree
        ds = ds.flatten_indices()
    h = hashlib.sha256(f"columns\0{image_col}\0{caption_col}\0{label}\0{ds._fingerprint}\n".encode())
    for cache in ds.cache_files:
        st = os.stat(cache["filename"])
        h.update(f"{cache['filename']}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    missing = null_cells(ds.data.column(image_col))
    rows = TableRows(image_col, skip_bad)
    for i, cell in enumerate(ds.data.column(caption_col).to_pylist()):
        rows.add(str(i), f"{label} row {i}", cell, not missing[i], i)
    source = DatasetImages(ds, image_col, rows.wheres)
    return table_corpus(spec, rows, source, h, "hf", find_bad, image_column=image_column, caption_column=caption_column)
