"""Small file helpers: content hashes, and the one way protosynth writes a file or folder in place.

Every writer goes through ``atomic_path``: the content is written under a temporary name in the
target's own folder and renamed over the target when complete, so a reader (or a run killed
half-way) never sees a truncated file or a half-written folder. Temporary names follow one scheme,
``.{name}.{pid}-{n}-{random}.tmp`` (the target's name, the writing process's id, a per-process
counter and 8 random hex digits), so two processes, or two calls in one process, never share a
temporary name; ``remove_stale_temps`` is the one rule that sweeps what killed writers left behind.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psutil
from safetensors.torch import save_file

from .errors import ProtosynthError

TEMP_SUFFIX = ".tmp"
_NAME_BYTES = 160  # of the target's name kept in a temporary name: the whole stays under NAME_MAX (255)
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-\d+-[0-9a-f]{8}\.tmp", re.DOTALL)
_calls = itertools.count()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _name_part(name: str) -> str:
    """``name`` as it appears in its temporary names (cut to ``_NAME_BYTES`` bytes of UTF-8)."""
    return name.encode("utf-8", "surrogateescape")[:_NAME_BYTES].decode("utf-8", "ignore")


def temp_path(target: Path) -> Path:
    """A fresh temporary sibling of ``target``: unique per process and per call."""
    target = Path(target)
    return target.with_name(
        f".{_name_part(target.name)}.{os.getpid()}-{next(_calls)}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    )


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """``(target name, writer pid)`` of a name made by ``temp_path``; None for any other name."""
    m = _TEMP_RE.fullmatch(name)
    return (m["name"], int(m["pid"])) if m else None


def _remove(path: Path) -> None:
    """Delete a file, symlink or folder (a symlink itself, never what it points to), as far as it
    can be deleted: cleaning up must never hide the error that made it necessary."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """The one rule for leftovers: delete the temporary files and folders in ``folder`` (of target
    ``name``, or of any target) whose writer process is no longer alive. Temporaries of a live
    process (this one included) and anything not named by ``temp_path`` are never touched.
    Returns what was removed."""

    removed: list[Path] = []
    want = None if name is None else _name_part(name)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        parsed = parse_temp_name(entry.name)
        if parsed is None or (want is not None and parsed[0] != want):
            continue
        pid = parsed[1]
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        path = Path(folder) / entry.name
        _remove(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


@contextmanager
def atomic_path(target: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write to; on success rename it over ``target``.

    The temporary is created first (an empty file, or with ``directory`` an empty folder) so the
    name is claimed; the caller may overwrite the file or fill the folder. If the body raises, the
    temporary is deleted and ``target`` is left exactly as it was. A file keeps the permission bits
    the empty file was created with (0o666 less the umask), whatever the writer did to them:
    safetensors' ``save_file`` makes 0600 files. A folder replaces an existing folder ``target`` in
    two renames (the old one is moved aside to a temporary name, then deleted), so ``target`` is
    always the old folder or the new one; a kill between the two renames leaves both under
    temporary names, for ``remove_stale_temps``.
    """
    target = Path(target)
    tmp = temp_path(target)
    if directory:
        tmp.mkdir()
    else:
        with open(tmp, "xb"):
            pass
        new_file_mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        yield tmp
        if not directory:
            if stat.S_IMODE(os.stat(tmp).st_mode) != new_file_mode:
                os.chmod(tmp, new_file_mode)
            os.replace(tmp, target)
            return
        aside = None
        if target.is_dir():
            aside = temp_path(target)
            os.replace(target, aside)
        try:
            os.replace(tmp, target)
        except BaseException:
            if aside is not None:
                if os.path.lexists(target):  # another writer's folder got there first: keep that one
                    _remove(aside)
                else:
                    os.replace(aside, target)
            raise
        if aside is not None:
            _remove(aside)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_open(target: Path, mode: str = "wb", fsync: bool = False, **kwargs: Any) -> Iterator[IO]:
    """``open(target, mode)`` through ``atomic_path``: the file appears at ``target`` only when the
    ``with`` block ends without an error (``fsync``: flushed to disk before the rename)."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def check_writable(folder: Path, what: str, hint: str = "") -> None:
    """Check that a writer will be able to create files in ``folder`` (and, when it does not exist
    yet, to create it and its parents), before the work whose result it writes: one line,
    ``{what}: cannot write in PLACE (REASON){hint}``, instead of a traceback after a long run.

    Nothing is left behind: the check probes the nearest folder that exists (``folder`` itself, or
    the ancestor in which its parents would be created) by creating and removing an empty file
    named by ``temp_path``, and creates no folder. A path under a file is refused as such. The
    probe runs as the writer will, so it honours ACLs, read-only mounts and root's exemptions alike."""
    folder = Path(folder)
    place = folder
    while True:
        try:
            mode = os.stat(place).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            if place.parent == place:
                raise ProtosynthError(f"{what}: cannot write in {folder} (no such folder){hint}") from None
            place = place.parent
        except OSError as exc:
            raise ProtosynthError(f"{what}: cannot write in {place} ({exc.strerror or exc}){hint}") from None
    if not stat.S_ISDIR(mode):
        raise ProtosynthError(f"{what}: {place} is a file, not a folder{hint}")
    probe = temp_path(place / "write-check")
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        raise ProtosynthError(f"{what}: cannot write in {place} ({exc.strerror or exc}){hint}") from None
    _remove(probe)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_safetensors_atomic(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through ``atomic_path`` (so with the usual file mode, not 0600)."""

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def git_commit() -> str:
    """The commit of the protosynth checkout (recorded in provenance files), or "unknown"."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
