"""Bad input through the real CLI: exit code 2, one ``error: ...`` line naming the culprit, and no
output folder that looks complete. Also an interrupted (SIGKILLed) run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.models.small_unclip import build_pipeline
from protosynth.sets.distilled import load_distilled

ROOT = Path(__file__).resolve().parent.parent
PROTOSYNTH = Path(sys.executable).parent / "protosynth"


def invoke(args: list[str], env: dict | None = None):
    return CliRunner().invoke(app, ["distill", "--method", "pds", *args], env=env)


def models_args(models: Path) -> list[str]:
    return ["--clip", f"small:{models}", "--decoder", f"small:{models}"]


# ---- checks that need no model -------------------------------------------------------------

NO_MODEL_CASES = {
    "budget 0": (["--budget", "0"], [r"--budget", r"\b0\b"]),
    "budget negative": (["--budget", "-4"], [r"--budget", r"-4"]),
    "budget above pairs": (
        ["--corpus", "shapes,n=5", "--budget", "1000"],
        [r"--budget 1000", r"\b25 pairs", r"shapes,n=5"],
    ),
    "unknown corpus": (["--corpus", "flickr99", "--budget", "4"], [r"'flickr99'"]),
    "bad world option": (["--corpus", "shapes,n=lots", "--budget", "4"], [r"n=lots"]),
    "unknown world split": (["--corpus", "shapes:valid", "--budget", "4"], [r"'valid'"]),
    "unknown clip": (["--corpus", "shapes,n=5", "--budget", "4", "--clip", "bogus"], [r"--clip", r"'bogus'"]),
    "unknown clip arch": (
        ["--corpus", "shapes,n=5", "--budget", "4", "--clip", "NoSuchArch-1:openai"],
        [r"NoSuchArch-1"],
    ),
    "unknown mode": (["--budget", "4", "--mode", "fancy"], [r"--mode", r"'fancy'"]),
    "unknown init": (["--budget", "4", "--init", "sideways"], [r"--init", r"'sideways'"]),
    "strength out of range": (["--budget", "4", "--init", "nearest", "--strength", "0"], [r"--strength", r"\b0"]),
    "strength above one": (["--budget", "4", "--init", "nearest", "--strength", "1.5"], [r"--strength", r"1\.5"]),
    "seed above 32 bits": (["--budget", "4", "--seed", "2147483648"], [r"--seed", r"2147483648", r"2147483647"]),
    "seed negative": (["--budget", "4", "--seed", "-1"], [r"--seed", r"-1"]),
    "candidates 0": (["--budget", "4", "--candidates", "0"], [r"--candidates", r"\b0\b"]),
    "unknown condition": (["--budget", "4", "--condition", "mean"], [r"--condition", r"'mean'"]),
    "central 0": (["--budget", "4", "--condition", "blend", "--central", "0"], [r"--central", r"\b0\b"]),
    "central without a lever": (["--budget", "4", "--central", "3"], [r"--central", r"--init composite or tile"]),
    "unknown soft labels": (["--budget", "4", "--soft-labels", "cosine"], [r"--soft-labels", r"'cosine'"]),
    "soft temperature 0": (
        ["--budget", "4", "--soft-labels", "clip", "--soft-temperature", "0"],
        [r"--soft-temperature", r"positive", r"\b0"],
    ),
    "soft temperature nan": (
        ["--budget", "4", "--soft-labels", "clip", "--soft-temperature", "nan"],
        [r"--soft-temperature", r"nan"],
    ),
    "soft temperature without the rule": (
        ["--budget", "4", "--soft-temperature", "0.2"],
        [r"--soft-temperature needs --soft-labels clip"],
    ),
    "preset against a flag": (
        ["--budget", "4", "--preset", "pds-published", "--text", "members"],
        [r"--preset pds-published sets --text to 'prototype'; got 'members'"],
    ),
    "unknown kmeans": (["--budget", "4", "--kmeans", "lloyd"], [r"--kmeans", r"'lloyd'"]),
    "candidates negative": (["--budget", "4", "--candidates", "-3"], [r"--candidates", r"-3"]),
    "unknown caption rule": (["--budget", "4", "--caption", "nearest"], [r"--caption", r"'nearest'"]),
    "unknown method": (["--budget", "4", "--method", "mtt"], [r"--method", r"'mtt'"]),
    "select with candidates": (
        ["--budget", "4", "--method", "select", "--candidates", "2"],
        [r"--method select", r"--candidates"],
    ),
    "steps 0": (["--budget", "4", "--steps", "0"], [r"--steps", r"\b0\b"]),
    "steps too many": (["--budget", "4", "--steps", "1001"], [r"--steps", r"1001"]),
    "noise level too high": (["--budget", "4", "--noise-level", "1000"], [r"--noise-level", r"1000"]),
    "noise level negative": (["--budget", "4", "--noise-level", "-1"], [r"--noise-level", r"-1"]),
    "batch size 0": (["--budget", "4", "--batch-size", "0"], [r"--batch-size", r"\b0\b"]),
    "negative guidance": (["--budget", "4", "--guidance", "-2"], [r"--guidance", r"-2"]),
    "unknown device": (["--budget", "4", "--device", "bogus"], [r"--device", r"'bogus'"]),
    "budget list not numbers": (["--budget", "100,lots"], [r"--budget", r"100,lots"]),
    "budget list repeated": (["--corpus", "shapes,n=5", "--budget", "4,4"], [r"--budget", r"distinct"]),
    "size too small": (["--budget", "4", "--size", "2"], [r"--size", r"\b2\b"]),
    "unknown decoder": (["--corpus", "shapes,n=5", "--budget", "4", "--decoder", "dall-e"], [r"--decoder", r"dall-e"]),
    "unknown dtype": (["--corpus", "shapes,n=5", "--budget", "4", "--dtype", "int3"], [r"--dtype", r"int3"]),
    "published decoder offline": (
        ["--corpus", "shapes,n=5", "--budget", "4", "--decoder", "sd-unclip-small"],
        [r"--decoder sd-unclip-small", r"stabilityai/stable-diffusion-2-1-unclip-small", r"hf download"],
    ),
    "published clip offline": (
        ["--corpus", "shapes,n=5", "--budget", "4", "--clip", "ViT-B-32-quickgelu:openai"],
        [r"--clip ViT-B-32-quickgelu:openai", r"not in the local cache"],
    ),
    "clip file without arch": (
        ["--corpus", "shapes,n=5", "--budget", "4", "--clip", str(Path(__file__))],
        [r"needs --clip-arch"],
    ),
    "small decoder negative prompt": (
        ["--corpus", "shapes,n=5", "--budget", "4", "--negative-prompt", "blur"],
        [r"--negative-prompt is not supported", r"--decoder default"],
    ),
}


@pytest.mark.parametrize("case", list(NO_MODEL_CASES))
def test_bad_option(case, tmp_path):
    args, culprits = NO_MODEL_CASES[case]
    out = tmp_path / "out"
    assert_one_line_error(invoke([*args, "--out", str(out)]), *culprits)
    assert not out.exists()
    assert not any(tmp_path.rglob("manifest.json"))


def test_missing_small_clip_dir(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    r = invoke(["--corpus", "shapes,n=5", "--budget", "4", "--clip", f"small:{tmp_path / 'empty'}", "--out", str(out)])
    assert_one_line_error(r, r"--clip small:", re.escape(str(tmp_path / "empty")))
    assert not out.exists()


def test_missing_jsonl_file(tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(
        invoke(["--corpus", str(tmp_path / "nope.jsonl"), "--budget", "4", "--out", str(out)]), r"nope\.jsonl"
    )
    assert not out.exists()


# ---- malformed JSONL manifests ---------------------------------------------------------------


def good_lines(jsonl_corpus: Path) -> list[str]:
    return jsonl_corpus.read_text().splitlines()


BAD_LINES = {
    "not JSON": ('{"image": "img/0.png", "caption": "a red square"', [r"line 4", r"not valid JSON"]),
    "not an object": ('["img/0.png", "a red square"]', [r"line 4", r"'image'"]),
    "no caption": ('{"image": "img/0.png"}', [r"line 4", r"caption"]),
    "no image": ('{"caption": "a red square"}', [r"line 4", r"'image'"]),
    "empty captions list": ('{"image": "img/0.png", "captions": []}', [r"line 4", r"captions"]),
    "empty caption": ('{"image": "img/0.png", "caption": "   "}', [r"line 4", r"empty"]),
    "empty caption in list": ('{"image": "img/1.png", "captions": ["a blue circle", ""]}', [r"line 4", r"empty"]),
    "missing image file": (
        '{"image": "img/missing.png", "caption": "a red square"}',
        [r"line 4", r"img/missing\.png", r"not found"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_jsonl_line(case, jsonl_corpus, tmp_path):
    bad, culprits = BAD_LINES[case]
    lines = good_lines(jsonl_corpus)
    manifest = jsonl_corpus.parent / "bad.jsonl"
    manifest.write_text("\n".join(lines[:3] + [bad] + lines[3:]) + "\n")
    out = tmp_path / "out"
    assert_one_line_error(
        invoke(["--corpus", str(manifest), "--budget", "4", "--out", str(out)]), re.escape(str(manifest)), *culprits
    )
    assert not out.exists()


def corrupt_bytes(kind: str, good: bytes) -> bytes:
    if kind == "garbage":
        return bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8)) + b"not a png"
    if kind == "truncated":  # a valid PNG header, then the data stops
        return good[: len(good) // 2]
    flipped = bytearray(good)  # "flipped": right length and header, scrambled pixel data
    for i in range(60, len(good) - 20):
        flipped[i] ^= 0x5A
    return bytes(flipped)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "flipped"])
def test_corrupt_image_is_named_with_its_line(kind, jsonl_corpus, quick_models, tmp_path):
    """A corrupt .png passes the manifest check (the file exists) and fails when embedded."""
    img = jsonl_corpus.parent / "img"
    (img / "junk.png").write_bytes(corrupt_bytes(kind, (img / "0.png").read_bytes()))
    lines = good_lines(jsonl_corpus)
    lines.insert(6, json.dumps({"image": "img/junk.png", "caption": "a green triangle"}))
    lines.insert(9, json.dumps({"image": "img/junk.png", "caption": "a triangle that is green"}))
    manifest = jsonl_corpus.parent / "corrupt.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = invoke(
        ["--corpus", str(manifest), "--budget", "4", *models_args(quick_models), "--steps", "2", "--out", str(out)]
    )
    assert_one_line_error(r, re.escape(str(manifest)), r"line 7\b", r"img/junk\.png")
    assert not out.exists()
    assert not any(tmp_path.rglob("manifest.json"))


# ---- models and output folder ----------------------------------------------------------------


def invoke_with_decoder(quick_models, decoder, out):
    """A run of the small CLIP with ``--decoder decoder``, writing to ``out``."""
    return invoke(
        ["--corpus", "shapes,n=5", "--budget", "4", "--clip", f"small:{quick_models}", "--decoder", decoder]
        + ["--out", str(out)]
    )


def test_unknown_decoder_spec(quick_models, tmp_path):
    out = tmp_path / "out"
    r = invoke_with_decoder(quick_models, "bogus", out)
    assert_one_line_error(r, r"--decoder", r"'bogus'")
    assert not out.exists()


def test_decoder_folder_without_pipeline(quick_models, tmp_path):
    out = tmp_path / "out"
    r = invoke_with_decoder(quick_models, f"small:{quick_models / 'clip'}", out)
    assert_one_line_error(r, r"--decoder", r"model_index\.json")
    assert not out.exists()


def test_decoder_dimension_mismatch(quick_models, tmp_path):
    clip_dim = json.loads((quick_models / "clip" / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"]
    wrong = clip_dim + 16
    folder = tmp_path / "wrong-decoder"
    build_pipeline(embed_dim=wrong, quick=True).save_pretrained(str(folder))
    out = tmp_path / "out"
    r = invoke_with_decoder(quick_models, str(folder), out)
    assert_one_line_error(r, r"--decoder", re.escape(str(folder)), rf"\b{wrong}-d", rf"\b{clip_dim}-d")
    assert not out.exists()


def test_out_not_empty_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = invoke(["--corpus", "shapes,n=5", "--budget", "4", "--out", str(out)])
    # a folder that is not a set: --force would refuse it too, so the line does not suggest it
    line = assert_one_line_error(r, r"--out", re.escape(str(out)), r"is not a distilled set", r"name another folder")
    assert "--force" not in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    # a file where the folder should be is refused too
    as_file = tmp_path / "file"
    as_file.write_text("x")
    assert_one_line_error(invoke(["--budget", "4", "--out", str(as_file)]), re.escape(str(as_file)))
    assert as_file.read_text() == "x"


def test_file_at_out_with_force(quick_models, tmp_path):
    as_file = tmp_path / "file"
    as_file.write_text("x")
    r = invoke(
        [
            "--corpus",
            "shapes,n=30",
            "--budget",
            "4",
            *models_args(quick_models),
            "--steps",
            "1",
            "--guidance",
            "1",
            "--out",
            str(as_file),
            "--force",
        ]
    )
    if r.exit_code == 2:  # refused up front: acceptable
        assert_one_line_error(r, re.escape(str(as_file)))
        assert as_file.read_text() == "x"
    else:  # or replaced by a complete set
        assert r.exit_code == 0, (r.exit_code, r.exception)
        assert len(load_distilled(as_file, verify=True)) == 4
    assert not list(tmp_path.glob(".file.tmp-*"))


def test_force_replaces_and_success_exits_zero(quick_models, tmp_path):
    """The contrast to the errors above: the same CLI, valid input, exit 0 and a complete set."""
    out = tmp_path / "out"
    args = ["--corpus", "shapes,n=30", *models_args(quick_models), "--steps", "1", "--guidance", "1", "--out", str(out)]
    assert invoke([*args, "--budget", "5"]).exit_code == 0
    (out / "notes.txt").write_text("mine")  # a file the set's manifest does not list: the user's
    r = invoke([*args, "--budget", "4", "--force"])
    assert_one_line_error(r, re.escape(str(out)), r"notes\.txt is not one of its files")
    assert (out / "notes.txt").read_text() == "mine" and len(load_distilled(out, verify=True)) == 5
    (out / "notes.txt").unlink()
    r = invoke([*args, "--budget", "4", "--force"])
    assert r.exit_code == 0, r.output
    assert len(load_distilled(out, verify=True)) == 4
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp or trash left


# ---- interrupted runs ------------------------------------------------------------------------


def start(args: list[str], cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PROTOSYNTH_CACHE=str(cache))
    return subprocess.Popen(
        [str(PROTOSYNTH), "distill", "--method", "pds", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def test_killed_after_two_seconds_leaves_nothing(quick_models, tmp_path):
    out = tmp_path / "sets" / "out"
    proc = start(
        ["--corpus", "shapes,n=300", "--budget", "300", *models_args(quick_models), "--steps", "2", "--out", str(out)],
        tmp_path / "cache",
    )
    try:
        time.sleep(2.5)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert not any(tmp_path.rglob("manifest.json"))


def test_killed_while_writing_leaves_no_complete_looking_folder(quick_models, tmp_path):
    """Kill the run the moment its writer has started (its temporary folder appears)."""
    parent = tmp_path / "sets"
    out = parent / "out"
    args = ["--corpus", "shapes,n=300", "--budget", "300", *models_args(quick_models), "--steps", "1"]
    args += ["--guidance", "1", "--out", str(out)]
    proc = start(args, tmp_path / "cache")
    caught = False
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if parent.is_dir() and any(parent.iterdir()):  # the writer's first folder, whatever it is
                proc.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.002)
    finally:
        kill(proc)
    assert caught, f"the writer never started (exit {proc.returncode})"
    assert not out.exists(), f"a run killed while writing left {sorted(p.name for p in out.iterdir())} at --out"
    tmp = list(parent.glob(".out.*.tmp"))
    assert len(tmp) == 1 and not (tmp[0] / "manifest.json").exists()
    assert not any(tmp_path.rglob("manifest.json"))
    with pytest.raises(Exception, match="manifest"):
        load_distilled(tmp[0])

    # rerunning the same command completes and sweeps the stale temporary folder
    r = invoke(args, env={"PROTOSYNTH_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.output
    assert len(load_distilled(out, verify=True)) == 300
    assert [p.name for p in parent.iterdir()] == ["out"]
    imgs = np.asarray(load_distilled(out).image(0))
    assert imgs.shape == (32, 32, 3)


# ---- usage errors through the console script (typer's own parsing) --------------------------------


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["distill", "--budget", "abc"], r"--budget"),
        (["distill", "--no-such-option"], r"--no-such-option"),
        (["models", "train"], r"--out"),
    ],
)
def test_usage_errors_are_one_line(args, culprit):
    proc = subprocess.run([str(PROTOSYNTH), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(culprit, lines[0]), proc.stderr


def test_force_replaces_only_a_distilled_set(tmp_path):
    """--force must never delete a folder that is not a set (say the user's project)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("precious")
    r = invoke(["--budget", "4", "--out", str(project), "--force"])
    assert_one_line_error(r, re.escape(str(project)), r"not a distilled set")
    assert (project / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "manifest",
    ['{"name": "ext"}', '{"format": "protosynth-distilled/1"}', "not json", '["a list"]'],
)
def test_force_never_deletes_a_folder_whose_manifest_is_not_ours(manifest, tmp_path):
    """Any folder with a file named manifest.json used to be replaced: another tool's build folder lost
    its code. Only our format with its file list, and nothing else in the folder, may be replaced."""
    other = tmp_path / "x"
    other.mkdir()
    (other / "manifest.json").write_text(manifest)
    (other / "code.js").write_text("keep")
    r = invoke(["--budget", "5", "--out", str(other), "--force"])
    assert_one_line_error(r, re.escape(str(other)), r"not a distilled set")
    assert (other / "code.js").read_text() == "keep" and (other / "manifest.json").read_text() == manifest


def test_models_train_refuses_the_world_test_split(tmp_path):
    r = CliRunner().invoke(
        app, ["models", "train", "--corpus", "shapes:test,n=20", "--out", str(tmp_path / "m"), "--quick"]
    )
    assert_one_line_error(r, r"shapes:test", r"--test")


@pytest.mark.parametrize("option,value", [("--decoder-lr-schedule", "linear"), ("--decoder-prediction", "x0")])
def test_models_train_names_a_bad_decoder_option(option, value, tmp_path):
    r = CliRunner().invoke(app, ["models", "train", "--out", str(tmp_path / "m"), "--quick", option, value])
    assert_one_line_error(r, re.escape(option), value)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "option,value", [("--guidances", "0.5"), ("--guidances", "1,x"), ("--guidances", ""), ("--steps", "0")]
)
def test_models_calibrate_names_bad_options(quick_models, option, value):
    r = CliRunner().invoke(app, ["models", "calibrate", "--models", str(quick_models), option, value, "--quick"])
    assert_one_line_error(r, option)


def test_models_calibrate_needs_a_models_folder(tmp_path):
    r = CliRunner().invoke(app, ["models", "calibrate", "--models", str(tmp_path), "--quick"])
    assert_one_line_error(r, r"--models", re.escape("clip/open_clip_config.json"))


def test_models_train_decoder_only_needs_a_clip(tmp_path):
    r = CliRunner().invoke(app, ["models", "train", "--only", "decoder", "--out", str(tmp_path / "m"), "--quick"])
    assert_one_line_error(r, r"--only decoder", r"clip")


def test_decoder_from_another_clip_space_is_refused(quick_models, tmp_path):
    """Same dimension, different CLIP: the decoder's conditioning.json names the space it expects."""
    dec = tmp_path / "dec"
    shutil.copytree(quick_models / "decoder", dec)
    cond = json.loads((dec / "conditioning.json").read_text())
    (dec / "conditioning.json").write_text(json.dumps(dict(cond, clip_space="small-clip:000000000000")))
    out = tmp_path / "out"
    r = invoke(
        [
            "--corpus",
            "shapes,n=30",
            "--budget",
            "4",
            "--clip",
            f"small:{quick_models}",
            "--decoder",
            str(dec),
            "--out",
            str(out),
        ]
    )
    assert_one_line_error(r, r"small-clip:000000000000", r"--clip")
    assert not out.exists()


# ---- comma-separated lists: an empty item is refused, never dropped --------------------------------


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["distill", "--budget", "3,"], r"--budget '3,'"),
        (["distill", "--budget", "3,,5"], r"--budget '3,,5'"),
        (["distill", "--budget", ","], r"--budget ','"),
        (["models", "calibrate", "--models", "nowhere", "--guidances", "1,,2"], r"--guidances '1,,2'"),
        (["eval", "cross-arch", "x", "--archs", "ps-nfnet,"], r"--archs 'ps-nfnet,'"),
        (["compare-baselines", "--methods", "random,,lors"], r"--methods 'random,,lors'"),
    ],
)
def test_a_list_with_an_empty_item_is_refused(args, culprit, tmp_path):
    """``--budget 3,`` once meant ``--budget 3``: a stray comma is a typo to report, not to guess at."""
    result = CliRunner().invoke(app, args, env={"PROTOSYNTH_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(result, culprit, r"empty item")
    assert not (tmp_path / "cache").exists()
