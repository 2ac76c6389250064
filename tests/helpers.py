"""Helpers several test files share: the one-line error contract of the command line, and small
corpus files written byte by byte (images, CSV, tar shards)."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def store_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an embedding store's folder, its corpus index (``corpus/``) included, by path
    inside it; without cost.json (the seconds it took differ from run to run)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "cost.json"
    }


def assert_one_line_error(result, *culprits: str) -> str:
    """A CliRunner result that is the error contract: exit code 2, no traceback, exactly one line on
    stderr starting with ``error: `` and matching every regex in ``culprits``; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for culprit in culprits:
        assert re.search(culprit, line), f"{culprit!r} not named in {line!r}"
    return line


def embed_cmd(out: Path, corpus: str, shard_size: int, *options: str) -> list[str]:
    """``protosynth embed`` of ``corpus`` as a child process runs it (``python -m``), with shards and
    batches of ``shard_size`` rows, into ``out``."""
    size = str(shard_size)
    command = [sys.executable, "-m", "protosynth.cli.main", "embed", "--corpus", corpus]
    return [*command, "--shard-size", size, "--batch-size", size, *options, "--out", str(out)]


def kill_at_first_shard(proc, out: Path, seconds: float, poll: float) -> None:
    """Wait up to ``seconds`` (looking every ``poll`` seconds) for the run ``proc``, started in a
    session of its own, to write a first image shard in ``out``, then SIGKILL its whole process
    group; whatever happened, the process group is killed and ``proc`` reaped on the way out."""
    try:
        deadline = time.time() + seconds
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any(out.glob("image-*.npy")):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def jpg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def truncate(path: Path) -> None:
    """Cut a file in half: a valid header, then the data stops."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_csv(path: Path, rows: list[list[str]], header=("image", "caption", "source")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A shard with the given members in order; ``None`` content makes a directory entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
