"""``--image-root`` and ``--skip-bad`` through the verbs that train on a corpus (``models train``,
``buffer``, ``baseline``, ``compare-baselines``), on a real CSV corpus laid out as Karpathy files
are: the CSVs in ``ann/``, their images in ``data/`` (so only ``--image-root`` finds them), one
image truncated (so only ``--skip-bad`` gets past it)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from protosynth.baselines.buffer import BufferConfig, _settings
from protosynth.baselines.compare import _row_key
from protosynth.cli.main import app
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpora.source import CorpusReading, CorpusSource, flat_settings
from protosynth.evaluation.evaluate import EvalConfig

N_TRAIN, N_TEST, BAD = 8, 3, 2  # train image BAD is truncated; two CSV rows per image, its first is row 2 * BAD + 2


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("karpathy_like")
    world = generate_split(WorldConfig(n_train=N_TRAIN + N_TEST), "train")
    (root / "data" / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i, im in enumerate(world.images):
        Image.fromarray(im).save(root / "data" / "img" / f"{i}.png")
    data = (root / "data" / "img" / f"{BAD}.png").read_bytes()
    (root / "data" / "img" / f"{BAD}.png").write_bytes(data[: len(data) // 2])
    for name, images in (("train", range(N_TRAIN)), ("test", range(N_TRAIN, N_TRAIN + N_TEST))):
        with open(root / "ann" / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "caption"])
            w.writerows([f"img/{i}.png", world.captions[i][c]] for i in images for c in range(2))
    return root


def invoke(args: list) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stderr if r.exit_code else r.output


def assert_one_line(code: int, err: str, *patterns: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for p in patterns:
        assert re.search(p, lines[0]), (p, lines[0])


def bad_input_then_ok(layout: Path, args: list) -> None:
    """Without --image-root the images are not found; with it but without --skip-bad the corrupt one
    stops the run; each a one-line error naming the file and its row."""
    train = layout / "ann" / "train.csv"
    code, err = invoke(args)
    assert_one_line(code, err, rf"{re.escape(str(train))} row 2: image file not found: .*ann/img/0\.png")
    code, err = invoke([*args, "--image-root", layout / "data"])
    assert_one_line(code, err, rf"{re.escape(str(train))} row {BAD * 2 + 2}: cannot read image .*data/img/{BAD}\.png")


def test_models_train(layout, tmp_path):
    out = tmp_path / "models"
    args = [
        "models",
        "train",
        "--corpus",
        layout / "ann" / "train.csv",
        "--test",
        layout / "ann" / "test.csv",
        "--out",
        out,
        "--quick",
        "--clip-steps",
        2,
        "--decoder-steps",
        2,
    ]
    bad_input_then_ok(layout, args)
    code, text = invoke([*args, "--image-root", layout / "data", "--skip-bad"])
    assert code == 0, text
    run = json.loads((out / "provenance.json").read_text())["runs"][-1]
    read = run["corpus_read"]
    assert (read["image_root"], read["skip_bad"], read["skipped_bad"], read["images"]) == (
        str(layout / "data"),
        True,
        1,
        N_TRAIN - 1,
    )
    assert f"img/{BAD}.png" in read["skipped_first"][0]
    assert run["test_read"]["images"] == N_TEST and run["test_read"]["image_root"] == str(layout / "data")
    assert run["config"]["image_root"] == str(layout / "data") and run["config"]["skip_bad"] is True


def buffer_args(corpus, out, *options) -> list:
    """``buffer`` of ``corpus`` (one expert, one epoch, batches of 8) into ``out``."""
    return ["buffer", "--corpus", corpus, *options, "--experts", 1, "--epochs", 1, "--batch-size", 8, "--out", out]


def mtt_vl_args(buffer) -> list:
    """``baseline --method mtt-vl`` of ``buffer`` with the fewest steps (no --out)."""
    steps = ["--iterations", 1, "--syn-steps", 1, "--batch-syn", 2]
    return ["baseline", "--method", "mtt-vl", "--budget", 4, "--buffer", buffer, *steps]


def test_buffer_then_baseline_reads_the_corpus_as_the_buffer_did(layout, tmp_path):
    buf = tmp_path / "buf"
    args = buffer_args(layout / "ann" / "train.csv", buf)
    bad_input_then_ok(layout, args)
    assert not buf.exists()  # a failed read claims no folder the corrected command would refuse
    code, text = invoke([*args, "--image-root", layout / "data", "--skip-bad"])
    assert code == 0, text
    man = json.loads((buf / "manifest.json").read_text())
    assert man["corpus"]["skipped_bad"] == 1 and man["corpus"]["image_root"] == str(layout / "data")
    assert man["settings"]["skip_bad"] is True and man["corpus"]["trained_on"] == 2 * (N_TRAIN - 1)

    base = mtt_vl_args(buf)
    code, text = invoke([*base, "--out", tmp_path / "set"])  # no options: the buffer's are used
    assert code == 0, text
    man = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert (man["corpus"]["skipped_bad"], man["corpus"]["image_root"]) == (1, str(layout / "data"))
    assert man["settings"]["image_root"] == str(layout / "data") and man["settings"]["skip_bad"] is True
    shutil.copytree(layout / "data", tmp_path / "copy", copy_function=shutil.copy2)  # same files, another root
    code, err = invoke([*base, "--out", tmp_path / "other", "--image-root", tmp_path / "copy"])
    assert_one_line(
        code,
        err,
        rf"--buffer {re.escape(str(buf))} was trained on .*train\.csv read as fingerprint "
        r"csv-\w+; read now it is csv-\w+ "
        r"\(its images, --image-root, --skip-bad, --image-column or --caption-column differ\)",
    )


def test_relative_paths_are_recorded_absolute_so_another_folder_can_reuse_the_buffer(layout, tmp_path, monkeypatch):
    """A buffer made with relative --corpus/--image-root is read again by ``baseline`` run from
    another folder (the manifest records absolute paths, not the paths as typed)."""
    monkeypatch.chdir(layout / "ann")
    code, text = invoke(buffer_args("train.csv", tmp_path / "buf", "--image-root", "../data", "--skip-bad"))
    assert code == 0, text
    corpus = json.loads((tmp_path / "buf" / "manifest.json").read_text())["corpus"]
    assert (corpus["spec"], corpus["image_root"]) == (str(layout / "ann" / "train.csv"), str(layout / "data"))
    monkeypatch.chdir(tmp_path)
    code, text = invoke([*mtt_vl_args("buf"), "--out", "set"])
    assert code == 0, text
    assert json.loads((tmp_path / "set" / "manifest.json").read_text())["corpus"]["spec"] == corpus["spec"]


@pytest.mark.slow  # makes and evaluates sets in child processes
def test_compare_baselines(layout, tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare-baselines",
        "--corpus",
        layout / "ann" / "train.csv",
        "--budget",
        2,
        "--methods",
        "random,full",
        "--quick",
        "--repeats",
        1,
        "--eval-epochs",
        1,
        "--out",
        out,
    ]
    code, err = invoke(args)
    assert_one_line(code, err, r"--corpus .*train\.csv has no built-in test split; pass --test SPEC")
    args += ["--test", layout / "ann" / "test.csv"]
    code, err = invoke(args)  # read in a child process; its error comes back as the command's one line
    train = re.escape(str(layout / "ann" / "train.csv"))
    assert_one_line(code, err, rf"prepare step: {train} row 2: image file not found")
    code, text = invoke([*args, "--image-root", layout / "data", "--skip-bad"])
    assert code == 0, text
    doc = json.loads((out / "compare.json").read_text())
    assert doc["test"] == str(layout / "ann" / "test.csv") and doc["settings"]["skip_bad"] is True
    assert [r["method"] for r in doc["methods"]] == ["random", "full"]
    assert doc["methods"][1]["budget"] == 2 * (N_TRAIN - 1)  # the full row read the corpus as the sets did
    man = json.loads((out / "sets" / "random-b2" / "manifest.json").read_text())
    assert man["corpus"]["skipped_bad"] == 1 and man["corpus"]["image_root"] == str(layout / "data")


def test_buffers_and_rows_made_before_the_options_keep_their_keys():
    """Unset, the new options stay out of a buffer's settings and a compare row's key, so finished
    buffers and evaluated rows from earlier runs are still reused."""
    assert not {"image_root", "skip_bad", "image_column", "caption_column"} & set(_settings(BufferConfig()))
    assert _settings(BufferConfig(corpus=CorpusSource(caption_column="text")))["caption_column"] == "text"
    assert _settings(BufferConfig(corpus=CorpusSource(image_root=Path("data"), skip_bad=True)))[
        "image_root"
    ] == os.path.abspath("data")
    later = ("skip_bad", "image_column", "caption_column", "recipe")
    # EvalConfig's settings as recorded before its reading options moved into a CorpusReading: flat
    flat = ["full", "image_root", "skip_bad", "image_column", "caption_column"]
    assert list(flat_settings(EvalConfig()))[-5:] == flat
    before = {k: v for k, v in flat_settings(EvalConfig()).items() if k not in later}  # EvalConfig's fields before
    key = hashlib.sha256(b"full" + json.dumps(before, sort_keys=True).encode()).hexdigest()[:20]
    assert _row_key(None, EvalConfig()) == key
    assert _row_key(None, EvalConfig(reading=CorpusReading(skip_bad=True))) != _row_key(None, EvalConfig())
    assert _row_key(None, EvalConfig(reading=CorpusReading(caption_column="text"))) != _row_key(None, EvalConfig())


def test_eval_retrieval_full_row_skips_bad_images(layout, tmp_path):
    """The upper-bound row reads its corpus like the other verbs: one line for the truncated image,
    and with --skip-bad it trains on the readable pairs."""
    train, test = layout / "ann" / "train.csv", layout / "ann" / "test.csv"
    args = [
        "eval",
        "retrieval",
        "--full",
        train,
        "--test",
        test,
        "--image-root",
        layout / "data",
        "--protocol",
        "small",
        "--repeats",
        1,
        "--epochs",
        1,
        "--json",
        tmp_path / "full.json",
    ]
    code, err = invoke(args)  # the test split's decoding bar comes first on stderr
    assert code == 2 and re.match(
        rf"error: {re.escape(str(train))} row {2 * BAD + 2}: ", err.strip().splitlines()[-1]
    ), err
    code, text = invoke([*args, "--skip-bad"])
    assert code == 0, text
    row = json.loads((tmp_path / "full.json").read_text())["sets"][0]
    assert row["path"] is None and row["budget"] == 2 * (N_TRAIN - 1)
