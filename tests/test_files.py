"""The one atomic-write helper (``protosynth.util.files.atomic_path``) and the one stale-temporary rule."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from protosynth.corpus import load_corpus
from protosynth.util.files import (
    atomic_open,
    atomic_path,
    parse_temp_name,
    remove_stale_temps,
    save_safetensors_atomic,
    temp_path,
    write_bytes_atomic,
    write_text_atomic,
)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def stale_name(target: str, pid: int) -> str:
    """A temporary name of ``target`` as written by process ``pid``."""
    name = temp_path(target).name
    return name.replace(f".{os.getpid()}-", f".{pid}-", 1)


def test_temp_names_differ_per_call_and_carry_name_and_pid(tmp_path):
    names = {temp_path(tmp_path / "x.json").name for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.startswith(".x.json.") and name.endswith(".tmp")
        assert parse_temp_name(name) == ("x.json", os.getpid())
    # two calls in a row claim two different temporaries
    with atomic_path(tmp_path / "a") as t1, atomic_path(tmp_path / "a") as t2:
        assert t1 != t2 and t1.parent == t2.parent == tmp_path
        assert t1.is_file() and t2.is_file()


def test_temp_names_differ_between_processes(tmp_path):
    code = "import sys; from protosynth.util.files import temp_path; print(temp_path(sys.argv[1]).name)"
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x")], capture_output=True, text=True, check=True
    ).stdout.strip()
    mine = temp_path(tmp_path / "x").name
    assert parse_temp_name(other)[0] == parse_temp_name(mine)[0] == "x"
    assert parse_temp_name(other)[1] != parse_temp_name(mine)[1] == os.getpid()


def test_a_long_name_still_makes_a_valid_temporary(tmp_path):
    target = tmp_path / ("é" * 120)  # 240 bytes of UTF-8
    write_text_atomic(target, "ok")
    assert target.read_text() == "ok" and sorted(tmp_path.iterdir()) == [target]


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_open(target, fsync=True) as fh:
        fh.write(b"synced")
    assert target.read_bytes() == b"synced"
    assert sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("directory", [False, True])
def test_a_failure_leaves_the_target_untouched_and_no_temporary(tmp_path, directory):
    target = tmp_path / "t"
    if directory:
        target.mkdir()
        (target / "keep").write_text("old")
    else:
        target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, directory=directory) as tmp:
            if directory:
                (tmp / "keep").write_text("half")
                (tmp / "sub").mkdir()
            else:
                tmp.write_text("half")
            raise RuntimeError("disk full")
    assert sorted(tmp_path.iterdir()) == [target]
    assert (target / "keep" if directory else target).read_text() == "old"


def test_a_failure_with_no_target_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_directory_targets(tmp_path):
    target = tmp_path / "set"
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir() and not target.exists()
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    # replacing an existing, non-empty folder: the old content goes, nothing else is left behind
    (target / "old-only").write_text("x")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "b").write_text("2")
        assert (target / "a").is_file()  # the old folder is whole until the new one is complete
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(tmp_path.iterdir()) == [target]


def test_a_folder_never_replaces_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("the user's file")
    with pytest.raises(OSError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "a").write_text("1")
    assert target.read_text() == "the user's file" and sorted(tmp_path.iterdir()) == [target]


def test_a_replaced_symlink_keeps_what_it_pointed_to(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "data").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    with atomic_path(link, directory=True) as tmp:
        (tmp / "new").write_text("1")
    assert not link.is_symlink() and (link / "new").is_file()
    assert (real / "data").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_files_get_the_mode_of_a_new_file(tmp_path):
    """safetensors' save_file makes 0600 files; through the helper they get the usual mode like
    every other file (the embeddings of a set were 0600, its other files 0644)."""
    plain, weights = tmp_path / "plain.json", tmp_path / "w.safetensors"
    write_text_atomic(plain, "{}")
    save_safetensors_atomic({"a": torch.zeros(3)}, weights, metadata={"k": "v"})
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert mode == 0o666 & ~_umask()
    assert stat.S_IMODE(weights.stat().st_mode) == mode


def test_safetensors_bytes_are_those_of_save_file(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4)}
    save_file(tensors, str(tmp_path / "direct"), metadata={"text_space": "x"})
    save_safetensors_atomic(tensors, tmp_path / "atomic", metadata={"text_space": "x"})
    assert (tmp_path / "atomic").read_bytes() == (tmp_path / "direct").read_bytes()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_stale_temporaries_of_dead_writers_go_live_ones_and_others_stay(tmp_path):
    dead = dead_pid()
    stale_file = tmp_path / stale_name("x.npy", dead)
    stale_file.write_bytes(b"partial")
    stale_dir = tmp_path / stale_name("set", dead)
    (stale_dir / "images").mkdir(parents=True)
    (stale_dir / "images" / "0.png").write_bytes(b"png")
    live = tmp_path / stale_name("x.npy", os.getpid())  # this process is writing it
    live.write_bytes(b"being written")
    parent = tmp_path / stale_name("y", os.getppid())
    parent.write_bytes(b"being written by the parent")
    # names that are not ours: kept whatever they look like
    others = [
        ".x.npy.tmp",
        f".x.npy.{dead}.tmp",
        f".set.tmp-{dead}",
        f".set.old-{dead}",
        f"x.npy.{dead}-0-0123abcd.tmp",
        f".x.npy.{dead}-0-0123ABCD.tmp",
        f".x.npy.{dead}-0-0123abcd.tmp.bak",
        "x.npy",
        "set.tmp",
    ]
    for name in others:
        (tmp_path / name).write_bytes(b"the user's")

    assert remove_stale_temps(tmp_path, "set") == [stale_dir]  # only that target's
    assert stale_file.exists()
    assert remove_stale_temps(tmp_path) == [stale_file]
    assert live.exists() and parent.exists()
    assert all((tmp_path / name).read_bytes() == b"the user's" for name in others)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_stale_symlink_is_removed_not_followed(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data").write_text("mine")
    (tmp_path / stale_name("set", dead_pid())).symlink_to(keep)
    assert len(remove_stale_temps(tmp_path, "set")) == 1
    assert (keep / "data").read_text() == "mine"


WRITER = """
import sys, threading
from pathlib import Path
from protosynth.util.files import write_text_atomic

target, tag = Path(sys.argv[1]), sys.argv[2]
errors = []

def write(t):
    try:
        for i in range(100):
            write_text_atomic(target, f"{tag}-{t}-{i}" * 100)
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
sys.exit(1 if errors else 0)
"""


def test_two_runs_with_threads_writing_one_target_never_collide(tmp_path):
    target = tmp_path / "same.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), tag], stdout=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    text = target.read_text()
    unit = text[: len(text) // 100]
    assert text == unit * 100 and unit.split("-")[0] in ("a", "b")  # one write, whole
    assert sorted(tmp_path.iterdir()) == [target]


def test_a_cache_folder_is_swept_before_a_write(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path))
    (tmp_path / "world").mkdir()
    stale = tmp_path / "world" / stale_name("world-0123-train.npz", dead_pid())
    stale.write_bytes(b"half a world")
    live = tmp_path / "world" / stale_name("world-4567-train.npz", os.getppid())
    live.write_bytes(b"another run is writing this")
    load_corpus("shapes,n=8")
    assert not stale.exists() and live.exists()
    assert len(list((tmp_path / "world").glob("world-*.npz"))) == 1
