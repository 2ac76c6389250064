"""Every writer checks, before its work, that it can write where it will: the cache (PROTOSYNTH_CACHE)
and every output folder. A folder it cannot write is one line (exit 2 on the command line), never a
PermissionError traceback, and never after minutes of work.

Three kinds of unwritable folder, so the checks run whoever runs the tests: a folder chmod-ed
read-only (skipped as root, whom permissions do not stop), a path under a file, and a new folder in
sysfs, which the kernel refuses even to root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import assert_one_line_error
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.corpus import load_corpus
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.errors import ProtosynthError
from protosynth.models.clip import load_clip
from protosynth.sets.distilled import check_out_dir
from protosynth.util.files import check_writable


@pytest.fixture(params=["read-only folder", "under a file", "sysfs"])
def unwritable(request, tmp_path) -> Path:
    """A folder path no writer can create files in (it may not exist yet)."""
    if request.param == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("running as root, which ignores folder permissions (the other kinds still run)")
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        request.addfinalizer(lambda: folder.chmod(0o755))
        return folder / "sub"
    if request.param == "under a file":
        (tmp_path / "a-file").write_text("not a folder")
        return tmp_path / "a-file" / "sub"
    probe = Path("/sys") / f"protosynth-probe-{os.getpid()}"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs mounted")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys") / "protosynth-test" / "sub"
    probe.rmdir()
    pytest.skip("sysfs takes new folders here")


def test_check_writable_creates_nothing(tmp_path):
    """The check probes the nearest existing folder and removes its probe: no folder, no file left."""
    (tmp_path / "keep").write_text("x")
    check_writable(tmp_path / "a" / "b" / "c", "out")
    check_writable(tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_check_writable_refuses_in_one_line(unwritable):
    with pytest.raises(ProtosynthError) as exc:
        check_writable(unwritable, "out x")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("out x: ")
    assert re.search(r"cannot write in |is a file, not a folder", msg), msg


def test_world_split_in_an_unwritable_cache(unwritable, monkeypatch):
    """An empty read-only cache with the built-in world: a PermissionError (or NotADirectoryError)
    traceback from mkdir, before the fix."""
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(unwritable))
    with pytest.raises(ProtosynthError) as exc:
        load_corpus("shapes,n=5")
    assert re.search(r"cache folder .*world.*PROTOSYNTH_CACHE", str(exc.value)), exc.value


def test_distill_in_an_unwritable_cache_is_one_line(unwritable, tmp_path):
    result = CliRunner().invoke(
        app,
        ["distill", "--corpus", "shapes,n=5", "--budget", "2", "--method", "select", "--out", str(tmp_path / "set")],
        env={"PROTOSYNTH_CACHE": str(unwritable)},
    )
    assert_one_line_error(result, r"cache folder", r"PROTOSYNTH_CACHE")
    assert not (tmp_path / "set").exists()


def test_embedding_a_new_corpus_in_an_unwritable_cache(unwritable, jsonl_corpus, monkeypatch):
    corpus = load_corpus(str(jsonl_corpus))
    clip = load_clip("default", "cpu")
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(unwritable))
    with pytest.raises(ProtosynthError) as exc:
        embed_corpus(corpus, clip, EmbedConfig(num_workers=0))
    assert re.search(r"cache folder .*embeddings.*PROTOSYNTH_CACHE", str(exc.value)), exc.value
    with pytest.raises(ProtosynthError, match=r"^out .*: (cannot write in|.* is a file)"):
        embed_corpus(corpus, clip, EmbedConfig(num_workers=0, out=unwritable / "store"))


def test_embed_verb_in_an_unwritable_cache_or_out(unwritable, jsonl_corpus, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["embed", "--corpus", str(jsonl_corpus)], env={"PROTOSYNTH_CACHE": str(unwritable)})
    assert_one_line_error(result, r"cache folder", r"PROTOSYNTH_CACHE")
    result = runner.invoke(
        app,
        ["embed", "--corpus", str(jsonl_corpus), "--out", str(unwritable)],
        env={"PROTOSYNTH_CACHE": str(tmp_path / "cache")},
    )
    assert_one_line_error(result, r"--out ")


@pytest.mark.parametrize(
    "verb",
    [
        ["distill", "--corpus", "shapes,n=5", "--budget", "2", "--method", "select"],
        ["distill", "--corpus", "shapes,n=5", "--budget", "2,3", "--method", "select"],
        ["coreset", "--method", "random", "--corpus", "shapes,n=5", "--budget", "2"],
        ["baseline", "--method", "mtt-vl", "--budget", "2", "--buffer", "nowhere"],
        ["buffer", "--corpus", "shapes,n=5", "--experts", "1", "--epochs", "1"],
        ["compare-baselines", "--budget", "2", "--quick"],
        ["models", "train", "--corpus", "shapes,n=20", "--quick"],
        ["models", "pretrain-backbone", "--n-images", "20", "--epochs", "1"],
    ],
    ids=lambda v: " ".join(v[:2]),
)
def test_an_unwritable_out_stops_a_verb_before_its_work(verb, unwritable, tmp_path):
    """``--out`` in a read-only folder used to fail after the whole render (or training): now the
    first thing a verb checks, so nothing is computed, not even the world in the cache."""
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, [*verb, "--out", str(unwritable / "set")], env={"PROTOSYNTH_CACHE": str(cache)})
    assert_one_line_error(result, r"--out ", r"cannot write in |is a file, not a folder")
    assert not cache.exists()


def test_models_calibrate_checks_its_folder_before_measuring(tmp_path):
    """calibrate writes decoder/render_defaults.json after minutes of renders: a decoder folder it
    cannot write is refused first (the check runs before anything is loaded, so stubs suffice)."""
    if os.geteuid() == 0:
        pytest.skip("running as root, which ignores folder permissions (no other kind fits a models folder)")
    models = tmp_path / "models"
    for part in ("clip/open_clip_config.json", "decoder/model_index.json"):
        (models / part).parent.mkdir(parents=True, exist_ok=True)
        (models / part).write_text("{}")
    (models / "decoder").chmod(0o555)
    try:
        result = CliRunner().invoke(
            app,
            ["models", "calibrate", "--models", str(models), "--quick"],
            env={"PROTOSYNTH_CACHE": str(tmp_path / "c")},
        )
    finally:
        (models / "decoder").chmod(0o755)
    assert_one_line_error(result, r"--models ", r"cannot write in .*decoder")
    assert not (tmp_path / "c").exists()


def test_check_out_dir_checks_the_parent(unwritable):
    """The one check every set writer (distill, coreset, baseline, write_distilled) goes through."""
    with pytest.raises(ProtosynthError, match=r"^out "):
        check_out_dir(unwritable / "set", force=False)


def test_eval_json_is_checked_before_the_evaluation(unwritable, tmp_path):
    runner = CliRunner()
    for verb in (["eval", "retrieval"], ["eval", "cross-arch"]):
        result = runner.invoke(app, [*verb, str(tmp_path / "no-set"), "--json", str(unwritable / "r.json")])
        assert_one_line_error(result, r"--json ", r"cannot write in |is a file, not a folder")
        result = runner.invoke(app, [*verb, str(tmp_path / "no-set"), "--json", str(tmp_path)])
        assert_one_line_error(result, r"--json .* is a folder, not a file")


def test_a_read_only_cache_that_holds_the_world_is_read(tmp_path, monkeypatch):
    """Only a writer needs to write: a cache that already holds the split may be read-only."""
    if os.geteuid() == 0:
        pytest.skip("running as root, which ignores folder permissions")
    monkeypatch.setenv("PROTOSYNTH_CACHE", str(tmp_path / "cache"))
    first = load_corpus("shapes,n=5")
    for folder in (tmp_path / "cache", tmp_path / "cache" / "world"):
        folder.chmod(0o555)
    try:
        assert load_corpus("shapes,n=5").pair_caption == first.pair_caption
    finally:
        for folder in (tmp_path / "cache", tmp_path / "cache" / "world"):
            folder.chmod(0o755)
