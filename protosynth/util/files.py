"""Small file helpers: content hashes, and the one way protosynth writes a file or folder in place.

Every writer goes through ``atomic_path``: the content is written under a temporary name in the
target's own folder and renamed over the target when complete, so a reader (or a run killed
half-way) never sees a truncated file or a half-written folder. Temporary names follow one scheme,
``.{name}.{pid}-{n}-{random}.tmp`` (the target's name, the writing process's id, a per-process
counter and 8 random hex digits), so two processes, or two calls in one process, never share a
temporary name; ``remove_stale_temps`` is the one rule that sweeps what killed writers left behind.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from ..errors import ProtosynthError

TEMP_SUFFIX = ".tmp"
_NAME_BYTES = 160  # of the target's name kept in a temporary name: the whole stays under NAME_MAX (255)
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-\d+-[0-9a-f]{8}\.tmp", re.DOTALL)
_calls = itertools.count()
# renameat2(2) with RENAME_NOREPLACE (Linux 3.15+, glibc 2.28+): a rename that never replaces
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):
    _renameat2 = None


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


@dataclass(frozen=True)
class Claim:
    """What a writer may do to a destination it does not know: the user's paths (``--out``) are
    re-checked at the moment of the rename, since anything may appear there while a run works.

    ``what`` names the destination in errors (``out sets/race``). ``replaceable`` says why an
    existing destination must stay (a phrase such as "appeared while this run was writing"), or
    None when it may be replaced (``--force`` and the destination is ours); None for
    ``replaceable`` itself: nothing that exists is replaced."""

    what: str
    replaceable: Callable[[Path], str | None] | None = None

    def refusal(self, target: Path) -> str | None:
        if not os.path.lexists(target):
            return None
        if self.replaceable is None:
            return "appeared while this run was writing"
        return self.replaceable(target)


# A test's pause point: called with a user's destination just before its final rename, so a race can be
# driven deterministically (something appears at the destination while a run writes).
before_rename: Callable[[Path], None] | None = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``rename(src, dst)`` that fails with FileExistsError when ``dst`` exists, even an empty
    folder (which a plain rename replaces): Linux's renameat2 RENAME_NOREPLACE, else a check just
    before the rename where the file system does not offer it."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def keep_aside(tmp: Path, target: Path) -> Path:
    """Give a finished result that cannot go to ``target`` a plain name beside it
    (``NAME.protosynth-PID[-N]``), which no stale-temporary sweep removes, and return it."""
    for n in itertools.count():
        kept = target.with_name(f"{target.name}.protosynth-{os.getpid()}" + (f"-{n}" if n else ""))
        try:
            _rename_noreplace(tmp, kept)
            return kept
        except FileExistsError:
            continue
        except OSError:
            return tmp


def _kept_in(tmp: Path, target: Path) -> str:
    """Where a refused result now is, for its error line: its plain name, or, when the folder takes
    no rename at all, its temporary name, which the next run writing there sweeps once this process
    has ended (so the line says to move it)."""
    kept = keep_aside(tmp, target)
    if kept == tmp:
        return f"{kept} (a temporary name a later run there removes: move it)"
    return str(kept)


def _refuse(tmp: Path, target: Path, claim: Claim, why: str) -> None:
    raise ProtosynthError(f"{claim.what} {why}: not replaced; this run's result is kept in {_kept_in(tmp, target)}")


def _place(tmp: Path, target: Path, claim: Claim | None, directory: bool) -> None:
    """The final rename of ``atomic_path``, with ``claim``'s re-check of the destination."""
    if claim is None:  # our own file or folder (a cache, a store, a model): replaced freely
        if not directory:
            os.replace(tmp, target)
        else:
            _swap_folder(tmp, target)
        return
    if before_rename is not None:
        before_rename(target)
    why = claim.refusal(target)
    if why is not None:
        _refuse(tmp, target, claim, why)
    try:
        if not os.path.lexists(target):
            _rename_noreplace(tmp, target)
        elif not directory:
            os.replace(tmp, target)
        else:
            _swap_folder(tmp, target, _rename_noreplace)
    except FileExistsError:
        _refuse(tmp, target, claim, "appeared while this run was writing")
    except OSError as exc:
        raise ProtosynthError(
            f"{claim.what}: cannot put the result there ({exc.strerror or exc}); it is kept in {_kept_in(tmp, target)}"
        ) from None


def _swap_folder(tmp: Path, target: Path, rename: Callable[[Path, Path], None] = os.replace) -> None:
    """Replace folder ``target`` by ``tmp`` in two renames (the old one is moved aside to a
    temporary name, then deleted), so ``target`` is always the old folder or the new one."""
    aside = None
    if target.is_dir():
        aside = temp_path(target)
        os.replace(target, aside)
    try:
        rename(tmp, target)
    except BaseException:
        if aside is not None:
            if os.path.lexists(target):  # another writer's folder got there first: keep that one
                _remove(aside)
            else:
                os.replace(aside, target)
        raise
    if aside is not None:
        _remove(aside)


@contextmanager
def atomic_path(target: Path, directory: bool = False, claim: Claim | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write to; on success rename it over ``target``.

    The temporary is created first (an empty file, or with ``directory`` an empty folder) so the
    name is claimed; the caller may overwrite the file or fill the folder. If the body raises, the
    temporary is deleted and ``target`` is left exactly as it was. A file keeps the permission bits
    the empty file was created with (0o666 less the umask), whatever the writer did to them:
    safetensors' ``save_file`` makes 0600 files. A folder replaces an existing folder ``target`` in
    two renames, so ``target`` is always the old folder or the new one; a kill between the two
    renames leaves both under temporary names, for ``remove_stale_temps``.

    ``claim`` (a user's destination): at the moment of the rename, a destination that now exists
    is replaced only if ``claim`` allows it, and never an empty folder or a file that appeared
    meanwhile; otherwise, or when the rename itself fails, the finished result is kept under a
    plain name beside ``target`` and one error line says where.
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
        if not directory and stat.S_IMODE(os.stat(tmp).st_mode) != new_file_mode:
            os.chmod(tmp, new_file_mode)
    except BaseException:
        _remove(tmp)
        raise
    try:
        _place(tmp, target, claim, directory)
    except ProtosynthError:  # refused at the rename: the result is kept, and the error says where
        raise
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


_FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h: the inode flags chattr sets
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def why_not_renamable(folder: Path) -> str | None:
    """Why an existing ``folder`` cannot be renamed away (which replacing it needs), or None: a
    mount point (an empty Docker volume is one) or a folder marked immutable or append-only."""
    if os.path.ismount(folder):
        return "a mount point"
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:  # a file system without inode flags (tmpfs, NFS): nothing to refuse
        return None
    finally:
        os.close(fd)
    if flags[0] & _FS_IMMUTABLE_FL:
        return "marked immutable"
    if flags[0] & _FS_APPEND_FL:
        return "marked append-only"
    return None


def check_folder(folder: Path) -> None:
    """One line when ``folder``, a folder a verb reads, is not there or is not a folder."""
    if not os.path.lexists(folder):
        raise ProtosynthError(f"{folder}: no such folder")
    if not Path(folder).is_dir():
        raise ProtosynthError(f"{folder}: not a folder")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def read_index_json(path: Path, fmt: str, what: str) -> dict | None:
    """A folder's index file, a JSON object tagged with its ``format`` (None when there is none); one
    line naming the file when it is unreadable or of another format (``what``: "embedding index")."""
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ProtosynthError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != fmt:
        raise ProtosynthError(f"{path}: not a protosynth {what} (format {fmt})")
    return index


def write_index_json(path: Path, index: dict) -> None:
    write_text_atomic(path, json.dumps(index, indent=1) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_safetensors_atomic(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through ``atomic_path`` (so with the usual file mode, not 0600)."""
    from safetensors.torch import save_file  # noqa: PLC0415 (torch: not for the modules that only move files)

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


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through ``atomic_open``, so a kill never leaves a truncated checkpoint (to a file
    object: given a path, torch names the zip's root folder after the file, here the temporary)."""
    import torch  # noqa: PLC0415 - here, not at the top: this module stays light to import

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        torch.save(obj, fh)
