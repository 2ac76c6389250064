"""Check a distilled set, an embedding store or a corpus index against what it records about its own files.

A set's ``manifest.json`` records the sha256 of every other file; a store's ``index.json`` records
the shape and sha256 of every ``.npy`` file, a corpus index's the sha256 of every parquet shard.
``verify(folder)`` reads every file once and reports each one that is missing, truncated, of another
shape or changed since it was written. Evaluation (``load_distilled(verify=True)``), the embedding
stage and ``CorpusIndex`` run the same checks where they read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..corpora.index import FORMAT as CORPUS_INDEX_FORMAT
from ..corpora.index import index_problems, read_corpus_index
from ..errors import ProtosynthError
from ..store import INDEX, read_index, store_files, store_problems
from ..util.files import check_folder
from .distilled import FORMAT as SET_FORMAT
from .distilled import MANIFEST, manifest_problem, set_problems


@dataclass(frozen=True)
class Problem:
    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class Report:
    kind: str  # "distilled set", "embedding store" or "corpus index"
    checked: int  # files checked against a recorded hash
    problems: list[Problem] = field(default_factory=list)


def verify(folder: str | Path) -> Report:
    """Check every file of the set (``manifest.json``), store or corpus index (``index.json``) in
    ``folder``; raises ProtosynthError when ``folder`` is none of them."""
    folder = Path(folder)
    check_folder(folder)
    if (folder / MANIFEST).is_file():
        return _verify_set(folder)
    if (folder / INDEX).is_file():
        return _verify_corpus_index(folder) if _format(folder / INDEX) == CORPUS_INDEX_FORMAT else _verify_store(folder)
    raise ProtosynthError(f"{folder}: neither a distilled set (no {MANIFEST}) nor an embedding store (no {INDEX})")


def _format(path: Path) -> str | None:
    """The ``format`` an ``index.json`` names (None when unreadable: the store's check says why)."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return index.get("format") if isinstance(index, dict) else None


def _verify_set(folder: Path) -> Report:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return Report("distilled set", 0, [Problem(folder / MANIFEST, "not readable JSON")])
    if not isinstance(manifest, dict) or manifest.get("format") != SET_FORMAT:
        raise ProtosynthError(f"{folder / MANIFEST}: not a protosynth set manifest (format {SET_FORMAT})")
    checked, problems = set_problems(folder, manifest)
    shape = manifest_problem(manifest)  # the manifest records no hash of itself: its shape is what can be checked
    found = [Problem(folder / MANIFEST, shape)] if shape else []
    return Report("distilled set", checked, found + [Problem(path, what) for path, what in problems])


def _verify_store(folder: Path) -> Report:
    index = read_index(folder)  # one error line when it is not a protosynth index
    if not index.get("complete"):
        return Report("embedding store", 0, [Problem(folder / INDEX, "unfinished store (not complete)")])
    try:
        files = store_files(index)
    except (KeyError, TypeError, ValueError) as exc:
        return Report("embedding store", 0, [Problem(folder / INDEX, f"malformed ({type(exc).__name__}: {exc})")])
    problems = [Problem(folder / name, what) for name, what in store_problems(folder, index)]
    return Report("embedding store", len(files), problems)


def _verify_corpus_index(folder: Path) -> Report:
    index = read_corpus_index(folder)
    if not index.get("complete"):
        return Report("corpus index", 0, [Problem(folder / INDEX, "unfinished corpus index (not complete)")])
    try:
        problems = [Problem(folder / name, what) for name, what in index_problems(folder, index)]
    except (KeyError, TypeError, ValueError) as exc:
        return Report("corpus index", 0, [Problem(folder / INDEX, f"malformed ({type(exc).__name__}: {exc})")])
    return Report("corpus index", len(index["shards"]), problems)
