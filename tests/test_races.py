"""Nothing the user owns is touched, even in a race; every message about an output path is true.

The races are driven deterministically through ``files.before_rename``, the writers' pause point
just before the final rename: what a user (or another run) does at the destination while a run
works happens there, at the worst moment, every time."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.corpora.base import decode
from protosynth.distill import DistillConfig, validate
from protosynth.errors import ProtosynthError
from protosynth.render import RenderConfig
from protosynth.sets.distilled import FORMAT, check_out_dir, load_distilled, reseal_set, write_distilled
from protosynth.sets.export import ExportConfig, export_set
from protosynth.sets.report import ReportConfig, build_report
from protosynth.sets.verify import verify
from protosynth.util import files


def tiny_set(out: Path, force: bool = False, shade: int = 0, spec: str = "shapes") -> Path:
    """A three-pair set written by the real writer, without any model."""
    images = [Image.new("RGB", (8, 8), (shade, 10 * i, 0)) for i in range(3)]
    pairs = [{"index": i, "image": f"images/{i:06d}.png", "caption": f"pair {i}", "members": []} for i in range(3)]
    tensors = {"image": torch.zeros(3, 4), "text": torch.ones(3, 4) * shade}
    manifest = {"format": FORMAT, "method": "test", "budget": 3, "seed": 0, "corpus": {"spec": spec}}
    return write_distilled(out, images, pairs, tensors, manifest, text_space="test", force=force)


@pytest.fixture
def pause(monkeypatch):
    """Run ``action(target)`` once, at the writer's next final rename."""

    def arm(action):
        def hook(target: Path) -> None:
            monkeypatch.setattr(files, "before_rename", None)
            action(target)

        monkeypatch.setattr(files, "before_rename", hook)

    return arm


def kept_result(out: Path) -> Path:
    kept = sorted(out.parent.glob(f"{out.name}.protosynth-*"))
    assert len(kept) == 1, sorted(p.name for p in out.parent.iterdir())
    return kept[0]


def test_a_folder_made_at_out_during_the_run_is_kept_and_so_is_the_set(tmp_path, pause):
    out = tmp_path / "race"

    def user_writes_notes(target: Path) -> None:
        target.mkdir()
        (target / "my_notes.txt").write_text("notes")

    pause(user_writes_notes)
    with pytest.raises(ProtosynthError, match=f"out {out} appeared or changed while this run was writing") as exc:
        tiny_set(out)
    assert (out / "my_notes.txt").read_text() == "notes" and sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]
    kept = kept_result(out)
    assert f"this run's result is kept in {kept}" in str(exc.value)
    assert verify(kept).problems == [] and len(load_distilled(kept)) == 3


def test_an_empty_folder_made_during_the_run_is_not_replaced_either(tmp_path, pause):
    out = tmp_path / "race"
    pause(lambda target: target.mkdir())
    with pytest.raises(ProtosynthError, match="appeared or changed while this run was writing"):
        tiny_set(out)
    assert out.is_dir() and not any(out.iterdir())
    assert verify(kept_result(out)).problems == []


def test_an_empty_folder_there_before_the_run_is_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    check_out_dir(out, force=False)
    tiny_set(out)
    assert verify(out).problems == [] and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_force_replaces_a_set_that_appeared_but_never_a_folder_that_is_not_one(tmp_path, pause):
    out = tmp_path / "s"
    pause(lambda target: tiny_set(target, shade=200))  # another run finished first
    tiny_set(out, force=True)
    assert verify(out).problems == [] and load_distilled(out).tensors["text"].max() == 0
    pause(lambda target: (target / "notes.txt").write_text("mine"))  # a user's file added to the old set
    with pytest.raises(ProtosynthError, match="appeared or changed"):
        tiny_set(out, force=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_the_distill_verb_keeps_a_users_folder_that_appears_during_the_run(tmp_path, pause):
    """The CLI path: one line, exit 2, the user's file intact, the finished set kept and named."""
    out = tmp_path / "race"
    pause(lambda target: (target.mkdir(), (target / "my_notes.txt").write_text("notes")))
    args = ["distill", "--method", "select", "--budget", "4", "--corpus", "shapes,n=20", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    kept = kept_result(out)
    assert r.stderr.splitlines()[-1] == (
        f"error: --out {out} appeared or changed while this run was writing: not replaced; "
        f"this run's result is kept in {kept}"
    )
    assert (out / "my_notes.txt").read_text() == "notes" and verify(kept).problems == []


@pytest.fixture
def a_set(tmp_path) -> Path:
    return tiny_set(tmp_path / "set")


def test_a_file_made_at_an_export_out_during_the_export_is_kept(a_set, tmp_path, pause):
    out = tmp_path / "ex" / "u.tar"
    out.parent.mkdir()
    pause(lambda target: target.write_text("the user's file"))
    with pytest.raises(ProtosynthError, match="appeared or changed while this run was writing"):
        export_set(a_set, ExportConfig(to="webdataset", out=out))
    assert out.read_text() == "the user's file"
    assert kept_result(out).stat().st_size > 0


def test_of_two_exports_to_one_path_only_the_first_writes(a_set, tmp_path, pause):
    out = tmp_path / "cc.tar"
    # the second export runs whole while the first is about to rename
    pause(lambda target: export_set(a_set, ExportConfig(to="webdataset", out=out)))
    with pytest.raises(ProtosynthError, match="appeared or changed while this run was writing"):
        export_set(a_set, ExportConfig(to="webdataset", out=out))
    assert out.read_bytes() == kept_result(out).read_bytes()  # the same set, two whole files


def test_export_and_report_sweep_their_own_stale_temporaries_only(a_set, tmp_path):
    dead = _dead_pid()
    for name, run in (
        ("k.tar", lambda out: export_set(a_set, ExportConfig(to="webdataset", out=out))),
        ("r.html", lambda out: build_report([a_set], ReportConfig(out=out, members=0))),
    ):
        out = tmp_path / name
        stale = tmp_path / f".{name}.{dead}-0-0123abcd.tmp"
        stale.write_bytes(b"half an export")
        live = tmp_path / f".{name}.{os.getppid()}-0-0123abcd.tmp"
        live.write_bytes(b"another run is writing this")
        other = tmp_path / f".other.{dead}-0-0123abcd.tmp"
        other.write_bytes(b"another target's")
        run(out)
        assert out.is_file() and not stale.exists() and live.exists() and other.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_symlink_out_is_written_through(tmp_path):
    real = tmp_path / "realdir"
    real.mkdir()
    link = tmp_path / "linkdir"
    link.symlink_to(real)
    check_out_dir(link, force=False)
    tiny_set(link)
    assert link.is_symlink() and verify(real).problems == [] and verify(link).problems == []
    tiny_set(link, force=True)  # again, replacing the set where the link points
    assert link.is_symlink() and verify(real).problems == []


@pytest.fixture
def mount_point(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_an_empty_mount_point_out_is_one_line_before_any_work(mount_point):
    r = CliRunner().invoke(app, ["coreset", "--method", "random", "--budget", "3", "--out", str(mount_point)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"--out {mount_point} is a mount point, which a set cannot replace" in r.stderr
    assert f"name a folder inside it, such as {mount_point / 'set'}" in r.stderr


def test_a_rename_that_fails_after_the_work_keeps_the_result(tmp_path, pause):
    """The folder --out goes in turns read-only during the run (a read-only bind mount): the final
    rename fails; the finished set stays where it was written, and one line says where."""
    parent = tmp_path / "p"
    parent.mkdir()
    out = parent / "set"

    def read_only(target: Path) -> None:
        subprocess.run(["mount", "--bind", str(parent), str(parent)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(parent), str(parent)], check=True)

    if subprocess.run(["mount", "-t", "tmpfs", "none", str(out.parent)], capture_output=True).returncode:
        pytest.skip("cannot mount here (needs root and CAP_SYS_ADMIN)")
    subprocess.run(["umount", str(out.parent)], check=True)
    pause(read_only)
    try:
        with pytest.raises(ProtosynthError, match=f"out {out}: cannot put the result there") as exc:
            tiny_set(out)
        where = str(exc.value).rpartition("it is kept in ")[2]
        # a read-only folder takes no rename: the result keeps its temporary name, and the line says so
        assert where.endswith(" (a temporary name a later run there removes: move it)")
        kept = Path(where.partition(" (")[0])
        assert kept.parent == parent and verify(kept).problems == [] and not out.exists()
    finally:
        subprocess.run(["umount", str(parent)], capture_output=True)


def test_an_immutable_empty_out_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "frozen"
    out.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
        pytest.skip("chattr +i does not work here (file system or capability)")
    try:
        with pytest.raises(ProtosynthError, match=f"out {out} is marked immutable, which a set cannot replace"):
            check_out_dir(out, force=False)
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_select_refuses_every_render_setting_by_name(tmp_path):
    with pytest.raises(ProtosynthError) as exc:
        validate(DistillConfig(method="select", render=RenderConfig(steps=5, strength=0.5), out=tmp_path / "o"))
    hint = "pass method=pds to render"
    assert (
        str(exc.value)
        == f"method=select (the default) renders nothing: render.steps, render.strength do not apply; {hint}"
    )
    for method in (["--method", "select"], []):  # the default is a selection too, and says how to render
        args = ["distill", *method, "--steps", "5", "--strength", "0.5", "--negative-prompt", "x"]
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2
        assert r.stderr == (
            "error: --method select (the default) renders nothing: --steps, --negative-prompt, --strength do not "
            "apply; pass --method pds to render\n"
        )
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("verb", ["distill", "embed"])
def test_help_names_the_ray_extra_as_it_is(verb):
    help_text = " ".join(CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "200"}).output.split())
    assert "pip install -e '.[ray]'" in help_text


def test_a_set_replaced_while_it_is_read_is_read_again_from_the_new_one(tmp_path, monkeypatch):
    out = tiny_set(tmp_path / "s")
    real_sha = files.sha256_file
    calls = []

    def sha_while_another_run_replaces(path):
        calls.append(path)
        if len(calls) == 2:  # half-way through the check, `distill --force` puts a new set there
            tiny_set(out, force=True, shade=99)
        return real_sha(path)

    monkeypatch.setattr("protosynth.sets.distilled.sha256_file", sha_while_another_run_replaces)
    ds = load_distilled(out, verify=True)
    assert ds.tensors["text"].max() == 99 and len(calls) > 2


def test_a_user_folder_is_never_answered_with_a_force_that_would_refuse(tmp_path):
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        r = CliRunner().invoke(
            app, ["distill", "--method", "pds", "--budget", "4", "--out", str(tmp_path / "userdir"), *extra]
        )
        assert r.exit_code == 2
        assert r.stderr == (
            f"error: --out {tmp_path / 'userdir'} exists and is not a distilled set (no manifest.json); "
            "name another folder\n"
        )
    set_dir = tiny_set(tmp_path / "a-set")
    r = CliRunner().invoke(app, ["distill", "--method", "pds", "--budget", "4", "--out", str(set_dir)])
    assert r.stderr == f"error: --out {set_dir} holds a distilled set; pass --force to replace it\n"


@pytest.mark.parametrize("verb", [["verify"], ["report", "--out", "r.html"]])
def test_a_missing_folder_is_named_as_missing(verb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, [*verb, "nosuchdir"])
    assert r.exit_code == 2 and r.stderr == "error: nosuchdir: no such folder\n"


def test_an_undecodable_image_in_memory_is_named_without_an_address():
    with pytest.raises(ProtosynthError) as exc:
        decode(b"not an image at all", "corpus.parquet row 3", "jpg")
    assert str(exc.value) == "corpus.parquet row 3: cannot read image jpg: not an image format PIL reads"
    png = Image.new("RGB", (4, 4))
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    with pytest.raises(ProtosynthError) as exc:
        decode(buf.getvalue()[:40], "corpus.parquet row 4", "jpg")  # truncated: an OSError of PIL's
    assert "0x" not in str(exc.value) and "object at" not in str(exc.value)


def test_a_saved_dataset_of_one_unnamed_split_says_so(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    datasets.Dataset.from_dict({"image": [image], "caption": ["a"]}).save_to_disk(str(folder))
    r = CliRunner().invoke(
        app, ["coreset", "--method", "random", "--budget", "1", "--corpus", f"hf:{folder}:validation"]
    )
    assert r.exit_code == 2
    assert "holds one unnamed split, not 'validation'; name no split" in r.stderr and "None" not in r.stderr


def test_the_shared_report_shows_no_absolute_path(tmp_path):
    secret = tmp_path / "home" / "me" / "data"
    set_dir = tiny_set(tmp_path / "s", spec=str(secret / "corpus.jsonl"))
    page = build_report([set_dir.resolve()], ReportConfig(out=tmp_path / "r.html", members=0)).read_text()
    assert "corpus.jsonl" in page and str(secret) not in page and str(tmp_path) not in page


# --- reseal_set: a complete set written again at out under a new manifest (distill's render choice) ---


def reseal_parts(shade: int = 0) -> dict:
    """A set's parts as distill holds them in memory: texts for every reading, member digests, a
    manifest with settings and an evaluation (a tuple among its values, as a dataclass's may be)."""
    images = [Image.new("RGB", (8, 8), (shade, 10 * i, 0)) for i in range(3)]
    pairs = [
        {
            "index": i,
            "image": f"images/{i:06d}.png",
            "caption": f"pair {i}",
            "members": [i, i + 3],
            "captions_members": [f"pair {i}", f"pair {i + 3}"],
            "image_pairs": [i],
            "captions_image": [f"pair {i}"],
        }
        for i in range(3)
    ]
    tensors = {"image_raw": torch.arange(12.0).reshape(3, 4), "text_raw": torch.ones(3, 4) * shade}
    manifest = {
        "format": FORMAT,
        "method": "test",
        "budget": 3,
        "seed": 0,
        "corpus": {"spec": "shapes"},
        "settings": {"budget": 3, "text": "members", "render": {"steps": 2, "strength": 0.15}},
        "evaluation": {"text": "members", "chosen_by": "rule", "rule": "a test's"},
        "budgets_in_run": (3,),
        "seconds": {"load": 1.0},
    }
    return dict(images=images, pairs=pairs, tensors=tensors, manifest=manifest, member_images={"k": ["a", "b"]})


def write_parts(out: Path, parts: dict, manifest: dict, force: bool = False) -> Path:
    return write_distilled(
        out,
        parts["images"],
        parts["pairs"],
        parts["tensors"],
        manifest,
        text_space="test",
        force=force,
        member_images=parts["member_images"],
    )


def chosen_manifest(manifest: dict) -> dict:
    """What distill's render choice changes: the evaluation, the text setting, a ``choose`` time."""
    evaluation = {
        "text": "image",
        "chosen_by": "val",
        "chosen_on": {"val": "shapes:val", "r_mean": {"image": {"mean": 1.5, "std": 0.1}}},
    }
    return dict(
        manifest,
        evaluation=evaluation,
        settings=dict(manifest["settings"], text="image"),
        seconds=dict(manifest["seconds"], choose=2.0),
    )


def test_a_resealed_set_is_byte_for_byte_what_the_writer_writes_under_that_manifest(tmp_path):
    parts = reseal_parts()
    source = write_parts(tmp_path / "scratch" / "candidate", parts, parts["manifest"])
    written = json.loads((source / "manifest.json").read_text())  # as distill reads it back
    resealed = reseal_set(source, tmp_path / "resealed", chosen_manifest(written))
    direct = write_parts(tmp_path / "direct", parts, chosen_manifest(parts["manifest"]))
    names = sorted(p.relative_to(direct).as_posix() for p in direct.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(resealed).as_posix() for p in resealed.rglob("*") if p.is_file())
    for name in names:
        if name != "manifest.json":
            assert (resealed / name).read_bytes() == (direct / name).read_bytes(), name
    one, two = (json.loads((p / "manifest.json").read_text()) for p in (resealed, direct))
    assert one["seconds"].pop("write") >= 0 and two["seconds"].pop("write") >= 0
    assert one == two and one["evaluation"]["chosen_by"] == "val" and one["settings"]["text"] == "image"
    assert "`image`" in (resealed / "README.md").read_text()  # the card is the new manifest's
    assert verify(resealed).problems == [] and verify(source).problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "resealed", "scratch"], "a temporary left"


def test_reseal_replaces_a_set_only_with_force_and_keeps_what_appeared(tmp_path, pause):
    parts = reseal_parts()
    source = write_parts(tmp_path / "candidate", parts, parts["manifest"])
    manifest = chosen_manifest(json.loads((source / "manifest.json").read_text()))
    out = tmp_path / "out"
    tiny_set(out, shade=200)  # an earlier set
    reseal_set(source, out, manifest, force=True)
    assert verify(out).problems == [] and load_distilled(out).manifest["evaluation"]["chosen_by"] == "val"
    pause(lambda target: (target / "notes.txt").write_text("mine"))  # a user's file added to the old set
    with pytest.raises(ProtosynthError, match="appeared or changed while this run was writing"):
        reseal_set(source, out, manifest, force=True)
    assert (out / "notes.txt").read_text() == "mine" and verify(kept_result(out)).problems == []


def test_reseal_refuses_a_source_changed_since_it_was_written_and_writes_nothing(tmp_path):
    parts = reseal_parts()
    source = write_parts(tmp_path / "candidate", parts, parts["manifest"])
    manifest = chosen_manifest(json.loads((source / "manifest.json").read_text()))
    Image.new("RGB", (8, 8), "white").save(source / "images" / "000001.png")
    with pytest.raises(ProtosynthError, match=r"images/000001.png: differs from the manifest; the set is not as it"):
        reseal_set(source, tmp_path / "out", manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate"]
