"""``--image-root`` and ``--skip-bad`` through the verbs that train on a corpus (``models train``,
``buffer``, ``baseline``, ``compare-baselines``), on a real CSV corpus laid out as Karpathy files
are: the CSVs in ``ann/``, their images in ``data/`` (so only ``--image-root`` finds them), one
image truncated (so only ``--skip-bad`` gets past it)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from protosynth.world import WorldConfig, generate_split

N_TRAIN, N_TEST, BAD = 8, 3, 2  # image BAD of the train CSV is truncated (two rows per image: its first is row 2 * BAD + 2)


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
    args = ["models", "train", "--corpus", layout / "ann" / "train.csv", "--test", layout / "ann" / "test.csv",
            "--out", out, "--quick", "--clip-steps", 2, "--decoder-steps", 2]
    bad_input_then_ok(layout, args)
    code, text = invoke([*args, "--image-root", layout / "data", "--skip-bad"])
    assert code == 0, text
    run = json.loads((out / "provenance.json").read_text())["runs"][-1]
    read = run["corpus_read"]
    assert (read["image_root"], read["skip_bad"], read["skipped_bad"], read["images"]) == (
        str(layout / "data"), True, 1, N_TRAIN - 1)
    assert f"img/{BAD}.png" in read["skipped_first"][0]
    assert run["test_read"]["images"] == N_TEST and run["test_read"]["image_root"] == str(layout / "data")
    assert run["config"]["image_root"] == str(layout / "data") and run["config"]["skip_bad"] is True
