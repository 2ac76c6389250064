"""``export``: a set as one webdataset shard or one parquet file, for loaders that read those.

- ``webdataset``: a tar with ``KEY.png`` (the image file as it is), ``KEY.txt`` (the caption) and
  ``KEY.json`` (the pair's full ``pairs.jsonl`` record) per pair, ``KEY`` the zero-padded index.
- ``parquet``: one row per pair: ``image`` as the Hugging Face image struct (``bytes``: the PNG,
  ``path``), ``caption``, ``members``, ``index`` and the pair's other plain fields, with the
  ``datasets`` features in the schema metadata so ``load_dataset("parquet", ...)`` decodes images.

Each file is written under a temporary name and renamed when complete, and says it is ours (a pax
global header in the tar, a schema metadata key in the parquet): an existing output is replaced only
with ``force`` and only when it is one of ours, so a user's file is never overwritten.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

from ..configs import ExportConfig  # noqa: F401 (re-exported: its public home)
from ..errors import P, ProtosynthError
from ..util.files import Claim, atomic_path, check_writable, remove_stale_temps
from .card import metadata_rows
from .distilled import DistilledSet, load_distilled

FORMATS = ("webdataset", "parquet")
MARK = "protosynth-export"  # the pax header / schema metadata key that says a file is ours
MARK_VALUE = "1"


def check_out_file(out: Path, force: bool, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse an existing ``out`` unless ``force``, and with it anything but a file we wrote
    (``ours``): ``force`` replaces our own outputs, never a user's file or a folder. The folder it goes
    in must take new files (the output is written beside ``out`` and renamed over it)."""
    check_writable(out.parent, f"{P.out} {out}")
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() or not out.is_file():
        raise ProtosynthError(f"{P.out} {out} exists and is not a file")
    if out.is_symlink() or not ours(out):
        raise ProtosynthError(f"{P.out} {out} is not a protosynth {what}; name another file")
    if not force:
        raise ProtosynthError(f"{P.out} {out} exists; pass {P.force(True)} to replace it")


def out_file_claim(out: Path, force: bool, ours: Callable[[Path], bool]) -> Claim:
    """What a file writer may replace at ``out`` when it renames its finished file into place: with
    ``force`` a file of ours; never anything else, whenever it appeared (it is kept, and the result
    too)."""

    def refusal(path: Path) -> str | None:
        if force and path.is_file() and not path.is_symlink() and ours(path):
            return None
        return "appeared or changed while this run was writing"

    return Claim(f"{P.out} {out}", refusal)


def write_out_file(out: Path, force: bool, ours: Callable[[Path], bool], write: Callable[[Path], None]) -> Path:
    """``write(tmp)``, then the file renamed to ``out`` under ``out_file_claim``; what killed earlier
    writers of ``out`` left behind is swept first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)
    with atomic_path(out, claim=out_file_claim(out, force, ours)) as tmp:
        write(tmp)
    return out


def is_our_tar(path: Path) -> bool:
    try:
        with tarfile.open(path) as tf:
            return tf.pax_headers.get(MARK) == MARK_VALUE
    except (OSError, tarfile.TarError):
        return False


def _arrow():
    """pyarrow, which only the parquet export needs (``datasets`` brings it: ``pip install datasets``)."""
    try:
        import pyarrow.parquet  # noqa: PLC0415 (optional: only the parquet export needs it)
    except ImportError:
        raise ProtosynthError(f"{P.to('parquet')} needs pyarrow: pip install pyarrow (or datasets)") from None
    return pyarrow


def is_our_parquet(path: Path) -> bool:
    pa = _arrow()
    try:
        meta = pa.parquet.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return meta.get(MARK.encode()) == MARK_VALUE.encode()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed owner and time, so the same set exports to the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


def write_webdataset(ds: DistilledSet, path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={MARK: MARK_VALUE}) as tf:
        for rec in ds.pairs:
            key = f"{int(rec['index']):06d}"
            _add(tf, f"{key}.png", (ds.root / rec["image"]).read_bytes())
            _add(tf, f"{key}.txt", rec["caption"].encode("utf-8"))
            _add(tf, f"{key}.json", json.dumps(rec, sort_keys=True).encode("utf-8"))


def hf_features(table) -> str:
    """The ``datasets`` features of the table, with ``image`` declared an Image (not a plain struct)."""
    from datasets import Features  # noqa: PLC0415 (optional: only to declare the features when installed)

    features = Features.from_arrow_schema(table.schema).to_dict()
    features["image"] = {"_type": "Image"}
    return json.dumps({"info": {"features": features}})


def write_parquet(ds: DistilledSet, path: Path) -> None:
    rows = []
    for row in metadata_rows(ds.pairs):
        name = row.pop("file_name")
        rows.append({"image": {"bytes": (ds.root / name).read_bytes(), "path": name}, **row})
    pa = _arrow()
    table = pa.Table.from_pylist(rows)
    meta = {MARK: MARK_VALUE}
    try:
        meta["huggingface"] = hf_features(table)
    except ImportError:
        pass
    pa.parquet.write_table(table.replace_schema_metadata(meta), path)


# format -> (writer, "is this existing file one of ours?", what it is called in errors)
WRITERS = {
    "webdataset": (write_webdataset, is_our_tar, "webdataset export"),
    "parquet": (write_parquet, is_our_parquet, "parquet export"),
}


def export_set(folder: str | Path, cfg: ExportConfig) -> Path:
    """Write the set at ``folder`` as ``cfg.to`` to ``cfg.out`` (atomically); returns ``cfg.out``. The set
    is checked against its manifest first: a set changed after it was written is not passed on."""
    if cfg.to not in FORMATS:
        raise ProtosynthError(f"{P.to} {cfg.to!r}: use one of {', '.join(FORMATS)}")
    folder, out = Path(folder), Path(cfg.out)
    ds = load_distilled(folder, verify=True)
    if out.resolve().is_relative_to(folder.resolve()):
        raise ProtosynthError(f"{P.out} {out} is inside the set {folder}, which holds only its own files")
    write, ours, what = WRITERS[cfg.to]
    check_out_file(out, cfg.force, ours, what)
    return write_out_file(out, cfg.force, ours, lambda tmp: write(ds, tmp))
