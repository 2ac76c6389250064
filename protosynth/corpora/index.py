"""The sharded corpus index: every caption-level pair's image key, caption and image reference in
parquet shards cut where the embedding store cuts its shards, so a stage that needs the captions or
images of some pairs reads only the shards holding them, never the whole corpus.

Layout of an index folder::

    index.json             format, corpus spec and fingerprint, shard size, counts, the shard list
                           (image range, pair range, file, sha256), "complete" last
    pairs-000000.parquet   one row per pair of shard 0's images (``COLUMNS``), in pair order
    ...

Shard ``j`` covers the images and pairs of the store's shard ``j`` for the same shard size
(``store.plan_shards``), so pair ``p``'s row is in the shard whose pair range holds it. The image
reference (``file``, ``offset``, ``length``) is ``ImageSource.locate``'s: enough for a process that
never loaded the corpus to read the image. Written as the store is: ``index.json`` first with
``"complete": false``, each shard to a temporary name renamed into place (a shard present under its
name is whole), then the hashes and ``"complete": true``. A rerun builds only the shards that are
missing (or, of a complete index, that no longer match their hash), and the result is byte-identical
to an uninterrupted build: a shard's bytes depend on its pairs alone.

pyarrow is optional (the ``corpora`` extra); it is imported when an index is built or read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import P, ProtosynthError
from ..store import plan_shards
from ..util.files import atomic_path, check_writable, read_index_json, remove_stale_temps, sha256_file, write_index_json
from .base import Corpus, ImageRef, decode
from .parquet import pyarrow_modules
from .summary import CorpusSummary, whole

FORMAT = "protosynth-corpus-index/1"
INDEX = "index.json"
CORPUS_INDEX = "corpus"  # the index's folder inside an embedding store's folder (``embed`` writes it)
ROW_GROUP = 8192  # pairs per parquet row group: a reader of a few pairs decodes this many per pair it needs
COLUMNS = ("image", "key", "caption", "file", "offset", "length", "where")


def shard_file(j: int) -> str:
    return f"pairs-{j:06d}.parquet"


def _schema():
    pa = pyarrow_modules()[0]
    text, number = pa.string(), pa.int64()
    types = (number, text, text, text, number, number, text)
    return pa.schema(list(zip(COLUMNS, types)))


def _header(corpus: Corpus | CorpusSummary, shard_size: int) -> dict:
    shards = [
        {"images": s["images"], "pairs": s["pairs"], "file": shard_file(j)}
        for j, s in enumerate(plan_shards(corpus.pair_image, corpus.n_images, shard_size))
    ]
    return {
        "format": FORMAT,
        "corpus": {"spec": corpus.spec, "fingerprint": corpus.fingerprint},
        "shard_size": shard_size,
        "n_images": corpus.n_images,
        "n_pairs": corpus.n_pairs,
        "columns": list(COLUMNS),
        "shards": shards,
        "complete": False,
    }


def read_corpus_index(folder: Path) -> dict | None:
    """The folder's ``index.json`` (None when there is none); one line when it is not a corpus index."""
    return read_index_json(Path(folder) / INDEX, FORMAT, "corpus index")


def _write_index(folder: Path, index: dict) -> None:
    write_index_json(folder / INDEX, index)


def shard_problem(path: Path, digest: str | None) -> str | None:
    """What is wrong with one shard against its recorded sha256, or None when it is intact."""
    if not path.is_file():
        return "missing"
    if not digest:
        return "index.json records no sha256 for it"
    if sha256_file(path) != digest:
        return "sha256 differs from index.json (the file changed after it was written)"
    return None


def index_problems(folder: Path, index: dict) -> list[tuple[str, str]]:
    """(file name, what is wrong) for every shard of a complete index that does not match it."""
    out = []
    for s in index["shards"]:
        why = shard_problem(Path(folder) / s["file"], s.get("sha256"))
        if why is not None:
            out.append((s["file"], why))
    return out


def _check_folder(folder: Path, found: dict | None, want: dict) -> None:
    """A folder may hold only the index of the same corpus (and, to resume, the same shard size)."""
    if folder.exists() and not folder.is_dir():
        raise ProtosynthError(f"{folder} is a file, not a folder for a corpus index")
    if found is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise ProtosynthError(f"{folder} is not empty and holds no corpus index.json: use a new or empty folder")
        return
    corpus = found.get("corpus", {})
    if corpus.get("fingerprint") != want["corpus"]["fingerprint"]:
        raise ProtosynthError(
            f"{folder} holds the index of another corpus ({corpus.get('spec')}, {corpus.get('fingerprint')}); "
            "use another folder"
        )
    if found.get("shard_size") != want["shard_size"]:
        raise ProtosynthError(
            f"{folder} holds a corpus index with {P.shard_size} {found.get('shard_size')}, not {want['shard_size']}: "
            "use that shard size or another folder"
        )


def _shard_table(corpus: Corpus, shard: dict):
    """The rows of one shard: each pair of its images, with its image's key and reference."""
    pa = pyarrow_modules()[0]
    (a, b), (p0, p1) = shard["images"], shard["pairs"]
    keys = corpus.image_keys[a:b]
    source = corpus.source  # None: images held in memory, named by their keys
    refs = [source.locate(k) for k in keys] if source is not None else [ImageRef()] * len(keys)
    per_image = {
        "key": pa.array(keys, pa.string()),
        "file": pa.array([r.file for r in refs], pa.string()),
        "offset": pa.array([r.offset for r in refs], pa.int64()),
        "length": pa.array([r.length for r in refs], pa.int64()),
        "where": pa.array([source.where(k) for k in keys] if source is not None else keys, pa.string()),
    }
    image = np.asarray(corpus.pair_image[p0:p1], dtype=np.int64)
    rows = pa.array(image - a)
    columns = {name: column.take(rows) for name, column in per_image.items()}
    columns["image"] = pa.array(image)
    columns["caption"] = pa.array(corpus.pair_caption[p0:p1], pa.string())
    return pa.table([columns[name] for name in COLUMNS], schema=_schema())


def _write_shard(path: Path, table) -> str:
    """``table`` as one parquet file at ``path``, written atomically; returns its sha256."""
    pq = pyarrow_modules()[2]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd", row_group_size=ROW_GROUP)
            fh.flush()
            os.fsync(fh.fileno())
        return sha256_file(tmp)


def write_index_shard(shard: dict, corpus: Corpus, folder: Path) -> str:
    """Build and write one shard of the index (whole, atomically); returns its sha256. The unit of
    work an engine maps: a Ray task runs it on a worker, which reads the corpus it was sent."""
    return _write_shard(Path(folder) / shard["file"], _shard_table(corpus, shard))


def _each(fn, units, shared):
    """The local way to map ``fn(unit, *shared)`` over ``units``, in order (``Engine.map_units``)."""
    for unit in units:
        yield fn(unit, *shared)


MapUnits = Callable[[Callable, list, tuple], Iterator]


class IndexBuild:
    """One run building the index of ``corpus`` into ``folder`` (see ``build_corpus_index``): the
    shards it lacks (``todo``; none when the index is complete and intact), written by ``write``
    from the corpus or from windows of it (``corpora.window``), and ``finish``, which records every
    hash and completes the index. A summary (``corpora.summary``) is never loaded here."""

    def __init__(self, corpus: Corpus | CorpusSummary, folder: Path, shard_size: int):
        if shard_size < 1:
            raise ProtosynthError(f"{P.shard_size} must be at least 1, got {shard_size}")
        self.folder = folder = Path(folder)
        want = _header(corpus, shard_size)
        found = read_corpus_index(folder)
        _check_folder(folder, found, want)
        complete = found is not None and bool(found.get("complete"))
        self.damaged = dict(index_problems(folder, found)) if complete else {}
        self.done = complete and not self.damaged
        self.index = found if complete else want  # a repair keeps the complete index's shards and hashes
        self.todo, self.digests = [], {}
        if self.done:
            return
        check_writable(folder, f"corpus index {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # what killed builds left behind
        if found is None:
            _write_index(folder, self.index)
        shards = self.index["shards"]
        self.todo = [s for s in shards if s["file"] in self.damaged or not (folder / s["file"]).is_file()]

    def write(self, corpus, shards: list[dict], map_units: MapUnits = _each) -> Iterator[dict]:
        """Build and write ``shards`` (of ``todo``) from ``corpus`` (the corpus or a window holding
        them) where ``map_units`` runs; yields each shard once it is written."""
        built = map_units(write_index_shard, shards, (corpus, self.folder)) if shards else iter(())
        for shard, digest in zip(shards, built):
            self.digests[shard["file"]] = digest
            yield shard

    def finish(self) -> Path:
        """Record every shard's sha256 and rewrite ``index.json`` with ``"complete": true`` last."""
        if self.done:
            return self.folder
        for s in self.index["shards"]:
            recorded = None if s["file"] in self.damaged else s.get("sha256")
            s["sha256"] = self.digests.get(s["file"]) or recorded or sha256_file(self.folder / s["file"])
        self.index.pop("complete", None)
        self.index["complete"] = True  # the last key, in the index written after the last shard
        _write_index(self.folder, self.index)
        return self.folder


def build_corpus_index(
    corpus: Corpus | CorpusSummary,
    folder: Path,
    shard_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    map_units: MapUnits = _each,
) -> Path:
    """Write the index of ``corpus`` into ``folder`` with the store's shards of ``shard_size`` images
    (see the module docstring), building only the shards it lacks; returns the folder.
    ``progress(done, todo)`` is called after each shard is written. ``map_units``: where the shards
    are built (``Engine.map_units``: here, or Ray tasks writing into the same folder), their hashes
    collected in shard order, so the index is the same bytes either way. A summary (``corpora.summary``)
    is loaded whole only when a shard has to be built."""
    build = IndexBuild(corpus, folder, shard_size)
    if build.todo:
        for done, _ in enumerate(build.write(whole(corpus), build.todo, map_units), start=1):
            if progress is not None:
                progress(done, len(build.todo))
    return build.finish()


class CorpusIndex:
    """A complete corpus index opened for reading: ``rows(pairs)`` reads the rows of those pairs
    from the shards that hold them (each shard checked against its sha256 the first time it is
    read), so what is read and held grows with the pairs asked for, not with the corpus."""

    def __init__(self, folder: Path, corpus: Corpus | None = None, read_ref: Callable | None = None):
        self.folder, self.corpus = Path(folder), corpus  # corpus: where images are read, when loaded
        self.read_ref = read_ref  # (file, offset, length, where) -> image, for references that are not image files
        index = read_corpus_index(self.folder)
        if index is None or not index.get("complete"):
            raise ProtosynthError(f"{self.folder}: no complete corpus index (index.json missing or unfinished)")
        self.index = index
        self.n_pairs = int(index["n_pairs"])
        self.pair_starts = np.array([s["pairs"][0] for s in index["shards"]], dtype=np.int64)
        self.checked: set[int] = set()  # shards whose file matched its hash

    def _shard(self, j: int):
        s = self.index["shards"][j]
        path = self.folder / s["file"]
        if j not in self.checked:
            why = shard_problem(path, s.get("sha256"))
            if why is not None:
                raise ProtosynthError(f"{path}: {why}; building the corpus index again rebuilds it")
            self.checked.add(j)
        return pyarrow_modules()[2].ParquetFile(path)

    def _read(self, j: int, local: np.ndarray, columns: list[str]):
        """Rows ``local`` (counted from the shard's first pair) of shard ``j``, reading only the row
        groups that hold them."""
        with self._shard(j) as pf:
            md = pf.metadata
            starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            groups = np.unique(np.searchsorted(starts, local, side="right") - 1)
            table = pf.read_row_groups(groups.tolist(), columns=columns, use_threads=False)
        sizes = np.diff(starts)[groups]
        shift = dict(zip(groups.tolist(), (np.cumsum(sizes) - sizes - starts[groups]).tolist()))
        group_of = np.searchsorted(starts, local, side="right") - 1
        return table.take(local + np.array([shift[g] for g in group_of.tolist()], dtype=np.int64))

    def rows(self, pairs: Sequence[int] | np.ndarray, columns: Sequence[str] = COLUMNS):
        """A pyarrow table of ``columns`` with one row per entry of ``pairs``, in that order."""
        pa = pyarrow_modules()[0]
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ProtosynthError(f"corpus index columns are {', '.join(COLUMNS)}, not {', '.join(unknown)}")
        idx = np.asarray(pairs, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_pairs):
            bad = int(idx.min() if idx.min() < 0 else idx.max())
            raise ProtosynthError(f"{self.folder}: pair {bad} outside the index's 0..{self.n_pairs - 1}")
        shard = np.searchsorted(self.pair_starts, idx, side="right") - 1
        order = np.argsort(shard, kind="stable")
        pieces = []
        for j in np.unique(shard).tolist():
            sel = order[shard[order] == j]
            pieces.append(self._read(j, idx[sel] - self.pair_starts[j], list(columns)))
        if not pieces:
            return _schema().empty_table().select(list(columns))
        joined = pa.concat_tables(pieces)
        return joined.take(np.argsort(order, kind="stable"))

    def captions(self, pairs: Sequence[int] | np.ndarray) -> list[str]:
        """The captions of ``pairs``, in that order."""
        return self.rows(pairs, ["caption"]).column("caption").to_pylist()

    def images(self, pairs: Sequence[int] | np.ndarray) -> np.ndarray:
        """The image row of each of ``pairs`` (int64), in that order."""
        return np.asarray(self.rows(pairs, ["image"]).column("image").to_numpy(), dtype=np.int64)

    def pairs_of_images(self, images: set[int]) -> dict[int, list[int]]:
        """image row -> its pairs (ascending), for ``images``: only the ``image`` column of the
        shards holding them is read."""
        wanted = np.unique(np.asarray(sorted(images), dtype=np.int64))
        out: dict[int, list[int]] = {}
        for j, s in enumerate(self.index["shards"]):
            (a, b), p0 = s["images"], s["pairs"][0]
            here = wanted[(wanted >= a) & (wanted < b)]
            if not len(here):
                continue
            with self._shard(j) as pf:
                column = pf.read(columns=["image"], use_threads=False).column("image").to_numpy()
            for pos in np.flatnonzero(np.isin(column, here)).tolist():
                out.setdefault(int(column[pos]), []).append(p0 + pos)
        return out

    def keys(self, images: Sequence[int]) -> list[str]:
        """The key of each of ``images`` (image rows), in that order: read from each one's first pair."""
        first = {i: pairs[0] for i, pairs in self.pairs_of_images(set(images)).items()}
        return self.rows([first[int(i)] for i in images], ["key"]).column("key").to_pylist()

    def read_images(self, images: Sequence[int], chunk: int = ROW_GROUP) -> Iterator:
        """Each of ``images`` (image rows) decoded to RGB, in that order: through the loaded corpus
        when there is one, else from the reference each image's first pair names, ``chunk`` images'
        rows read at a time: an image file (a JSONL, JSON or CSV corpus's), or a file, an offset and
        a length through ``read_ref`` (a parquet corpus's row, a tar shard's member)."""
        if self.corpus is not None:
            yield from (self.corpus.load_image(int(i)) for i in images)
            return
        images = [int(i) for i in images]
        for c in range(0, len(images), chunk):
            part = images[c : c + chunk]
            first = {i: pairs[0] for i, pairs in self.pairs_of_images(set(part)).items()}
            refs = self.rows([first[i] for i in part], ["file", "offset", "length", "where"]).to_pylist()
            for ref in refs:
                if ref["file"] is not None and ref["offset"] is None:
                    yield decode(Path(ref["file"]), ref["where"], ref["file"])
                elif ref["file"] is not None and self.read_ref is not None:
                    yield self.read_ref(ref["file"], ref["offset"], ref["length"], ref["where"])
                else:
                    raise ProtosynthError(f"{ref['where']}: the corpus index {self.folder} names no image file for it")
