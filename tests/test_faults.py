"""Fault injection through the real command line: one table of bad inputs, damaged files and
unwritable places, every verb. Each case must end the way the error contract says (exit code 2,
exactly one ``error: ...`` line on stderr naming the culprit, no traceback) and leave nothing that
looks complete: no new ``manifest.json``, no store whose ``index.json`` says complete, no new file at
``--out``, and every file that was there before byte for byte as it was (a user's file survives
``--force``).

Cases that read images use the shipped CLIP (``--clip default``) on a dozen 32 px world images, and
fail before any heavy work. Interrupted runs (SIGKILL while rendering, and while writing) are in
tests/test_cli_errors.py (test_killed_after_two_seconds_leaves_nothing,
test_killed_while_writing_leaves_no_complete_looking_folder) and not repeated here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers import assert_one_line_error, png_bytes, truncate, write_csv, write_tar
from typer.testing import CliRunner

from protosynth.cli.main import app
from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpus import load_corpus
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.models.clip import load_clip

CORPUS = "shapes,n=40"
TEST = "shapes:test,n=40"
SEED_TOO_BIG = str(2**31)


@pytest.fixture(scope="module")
def world():
    return generate_split(WorldConfig(n_train=6), "train")


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    """A random coreset of the world (the shipped CLIP, nothing trained): seconds."""
    return build_coreset(
        CoresetConfig(method="random", budget=6, corpus=CORPUS, out=tmp_path_factory.mktemp("sets") / "set")
    )


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "store"
    embed_corpus(load_corpus(CORPUS), load_clip("default"), EmbedConfig(out=out, shard_size=16, num_workers=0))
    return out


@dataclass
class Fault:
    args: list[str]
    culprits: list[str]  # regexes the error line must match
    out: Path | None = None  # where the command would write: must not appear
    env: dict = field(default_factory=dict)


class Bench:
    """What a case may damage: fresh copies of the clean set and store, corpora in tmp_path."""

    def __init__(self, tmp: Path, request, world, clean_set: Path, clean_store: Path):
        self.tmp, self.request, self.world = tmp, request, world
        self._set, self._store = clean_set, clean_store

    @cached_property
    def set(self) -> Path:
        return Path(shutil.copytree(self._set, self.tmp / "set"))

    @cached_property
    def store(self) -> Path:
        return Path(shutil.copytree(self._store, self.tmp / "store"))

    @cached_property
    def jsonl(self) -> Path:
        """conftest's 12-image JSONL corpus (img/*.png beside it)."""
        return self.request.getfixturevalue("jsonl_corpus")

    def jsonl_with(self, line: str, at: int = 3) -> tuple[Path, int]:
        """The JSONL corpus with ``line`` inserted as line ``at + 1``; returns the file and that line number."""
        lines = self.jsonl.read_text().splitlines()
        path = self.tmp / "bad.jsonl"
        path.write_text("\n".join(lines[:at] + [line] + lines[at:]) + "\n")
        return path, at + 1

    def images(self) -> Path:
        """Six world images as w/img/0.png .. 5.png; returns w/."""
        folder = self.tmp / "w"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        for i in range(6):
            (folder / "img" / f"{i}.png").write_bytes(png_bytes(self.world.images[i]))
        return folder

    def csv_with(self, bad_image: str, write: Callable[[Path], None]) -> Path:
        """A CSV of the six images plus a row for ``bad_image`` (row 5), made by ``write``."""
        folder = self.images()
        write(folder / bad_image)
        rows = [[f"img/{i}.png", self.world.captions[i][0]] for i in range(6)]
        rows.insert(3, [bad_image, "a bad one"])
        return write_csv(folder / "c.csv", rows, header=("image", "caption"))

    def a_file(self) -> Path:
        """A regular file, for paths under it (NotADirectoryError even as root)."""
        path = self.tmp / "a-file"
        path.write_text("not a folder")
        return path

    def users_folder(self) -> Path:
        folder = self.tmp / "project"
        folder.mkdir()
        (folder / "thesis.tex").write_text("precious")
        return folder


def eval_args(*sets: Path) -> list[str]:
    return ["eval", "retrieval", *map(str, sets), "--test", TEST, "--repeats", "1", "--epochs", "1"]


def embed_args(spec: Path | str, b: Bench) -> list[str]:
    return ["embed", "--corpus", str(spec), "--clip", "default", "--workers", "0", "--out", str(b.tmp / "emb")]


def float16_tiff(path: Path) -> None:
    """A 4 x 4 16-bit float greyscale TIFF (SampleFormat 3, BitsPerSample 16), written byte by byte:
    PIL writes no such file."""
    data = np.full((4, 4), 0.25, "<f2").tobytes()
    tags = [(256, 3, 4), (257, 3, 4), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1)]
    tags += [(278, 3, 4), (279, 4, len(data)), (339, 3, 3)]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)


def bomb_png(path: Path) -> None:
    """A PNG whose header claims 40000 x 40000 pixels (PIL's decompression-bomb guard), a few bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def damage_pairs(folder: Path) -> None:
    lines = folder.joinpath("pairs.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["caption"] = "a caption typed in by hand"
    lines[1] = json.dumps(rec, sort_keys=True)
    folder.joinpath("pairs.jsonl").write_text("\n".join(lines) + "\n")


def nan_shard(path: Path) -> None:
    arr = np.load(path)
    arr[:] = np.nan
    np.save(path, arr)


def compare_folder(b: Bench, compare_json: str) -> Path:
    folder = b.tmp / "cmp"
    folder.mkdir()
    (folder / "compare.json").write_text(compare_json)
    return folder


# ---- the table: case name -> what to do to the bench, and the Fault to run -------------------------------


def _distill(b: Bench, *args: str) -> Fault:
    out = b.tmp / "out"
    return Fault(
        ["distill", "--method", "pds", "--corpus", "shapes,n=5", "--budget", "4", *args, "--out", str(out)], [], out
    )


def _coreset(b: Bench, *args: str) -> Fault:
    out = b.tmp / "out"
    return Fault(["coreset", "--corpus", "shapes,n=5", *args, "--out", str(out)], [], out)


def random_coreset_args(corpus: str, out: Path, *args: str) -> list[str]:
    """``coreset --method random --budget 2`` of ``corpus`` into ``out``."""
    return ["coreset", "--method", "random", "--budget", "2", "--corpus", corpus, *args, "--out", str(out)]


def _baseline(b: Bench, *args: str) -> Fault:
    out = b.tmp / "out"
    buffer = b.tmp / "buffer"
    buffer.mkdir(exist_ok=True)
    return Fault(["baseline", "--buffer", str(buffer), *args, "--out", str(out)], [], out)


def named(fault: Fault, *culprits: str) -> Fault:
    fault.culprits = list(culprits)
    return fault


CASES: dict[str, Callable[[Bench], Fault]] = {
    # -- bad options, verb by verb
    "distill --budget 3,": lambda b: named(_distill(b, "--budget", "3,"), r"--budget '3,'", r"empty item"),
    "distill --text unknown": lambda b: named(_distill(b, "--text", "words"), r"--text", r"'words'"),
    "distill --mode unknown": lambda b: named(_distill(b, "--mode", "fused"), r"--mode", r"'fused'"),
    "distill --seed 2**31": lambda b: named(_distill(b, "--seed", SEED_TOO_BIG), r"--seed", SEED_TOO_BIG),
    "distill --strength 0": lambda b: named(_distill(b, "--init", "nearest", "--strength", "0"), r"--strength"),
    "coreset --budget 0": lambda b: named(_coreset(b, "--method", "random", "--budget", "0"), r"--budget", r"\b0\b"),
    "coreset --budget negative": lambda b: named(_coreset(b, "--method", "random", "--budget", "-3"), r"--budget"),
    "coreset --budget above pairs": lambda b: named(
        _coreset(b, "--method", "random", "--budget", "1000"), r"--budget 1000", r"shapes,n=5"
    ),
    "coreset --seed 2**31": lambda b: named(
        _coreset(b, "--method", "random", "--budget", "2", "--seed", SEED_TOO_BIG), r"--seed", SEED_TOO_BIG
    ),
    "coreset --seed negative": lambda b: named(
        _coreset(b, "--method", "random", "--budget", "2", "--seed", "-1"), r"--seed", r"-1"
    ),
    "coreset --method unknown": lambda b: named(_coreset(b, "--method", "mtt", "--budget", "2"), r"--method", "'mtt'"),
    "coreset --keep unknown": lambda b: named(
        _coreset(b, "--method", "forgetting", "--budget", "2", "--keep", "some"), r"--keep", r"'some'"
    ),
    "coreset --forgetting-epochs 0": lambda b: named(
        _coreset(b, "--method", "forgetting", "--budget", "2", "--forgetting-epochs", "0"), r"--forgetting-epochs"
    ),
    "embed --shard-size 0": lambda b: named(Fault([*embed_args(CORPUS, b), "--shard-size", "0"], []), r"--shard-size"),
    "embed --batch-size 0": lambda b: named(Fault([*embed_args(CORPUS, b), "--batch-size", "0"], []), r"--batch-size"),
    "embed --workers negative": lambda b: named(Fault([*embed_args(CORPUS, b), "--workers", "-1"], []), r"--workers"),
    "embed --clip unknown": lambda b: named(
        Fault(["embed", "--corpus", CORPUS, "--clip", "bogus", "--out", str(b.tmp / "emb")], []), r"--clip", "'bogus'"
    ),
    "embed --device unknown": lambda b: named(Fault([*embed_args(CORPUS, b), "--device", "tpu"], []), r"--device"),
    "eval retrieval --text unknown": lambda b: named(Fault([*eval_args(b.set), "--text", "words"], []), r"--text"),
    "eval retrieval --repeats 0": lambda b: named(Fault([*eval_args(b.set), "--repeats", "0"], []), r"--repeats"),
    "eval retrieval --epochs 0": lambda b: named(Fault([*eval_args(b.set), "--epochs", "0"], []), r"--epochs"),
    "eval retrieval --seed 2**31": lambda b: named(
        Fault([*eval_args(b.set), "--seed", SEED_TOO_BIG], []), r"--seed", SEED_TOO_BIG
    ),
    "eval retrieval --protocol unknown": lambda b: named(
        Fault([*eval_args(b.set), "--protocol", "clip-l"], []), r"--protocol", r"'clip-l'"
    ),
    "eval retrieval: no such set": lambda b: named(
        Fault(eval_args(b.tmp / "nowhere"), []), r"<tmp>/nowhere: not a complete distilled set"
    ),
    "export --to unknown": lambda b: named(
        Fault(["export", str(b.set), "--to", "zip", "--out", str(b.tmp / "x.zip")], [], b.tmp / "x.zip"),
        r"--to",
        r"'zip'",
    ),
    "export: not a set": lambda b: named(
        Fault(
            ["export", str(b.users_folder()), "--to", "webdataset", "--out", str(b.tmp / "x.tar")], [], b.tmp / "x.tar"
        ),
        r"<tmp>/project: not a complete distilled set",
    ),
    "report --members negative": lambda b: named(
        Fault(["report", str(b.set), "--members", "-1", "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"),
        r"--members",
        r"-1",
    ),
    "report --samples negative": lambda b: named(
        Fault(["report", str(b.set), "--samples", "-2", "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"),
        r"--samples",
        r"-2",
    ),
    "baseline --method unknown": lambda b: named(_baseline(b, "--method", "dm", "--budget", "4"), r"--method", r"'dm'"),
    "baseline --budget 0": lambda b: named(_baseline(b, "--method", "lors", "--budget", "0"), r"--budget"),
    "baseline --seed 2**31": lambda b: named(
        _baseline(b, "--method", "lors", "--budget", "4", "--seed", SEED_TOO_BIG), r"--seed", SEED_TOO_BIG
    ),
    "baseline --grad-mode unknown": lambda b: named(
        _baseline(b, "--method", "lors", "--budget", "4", "--grad-mode", "magic"), r"--grad-mode", r"'magic'"
    ),
    "baseline --lr-space unknown": lambda b: named(
        _baseline(b, "--method", "lors", "--budget", "4", "--lr-space", "cubic"), r"--lr-space", r"'cubic'"
    ),
    "baseline: buffer not a buffer": lambda b: named(
        _baseline(b, "--method", "lors", "--budget", "4"), r"--buffer <tmp>/buffer: not a finished buffer"
    ),
    # -- corpus files: the file and the row (line, entry) at fault
    "jsonl: bad JSON on line 4": lambda b: named(
        Fault(
            [
                "distill",
                "--method",
                "pds",
                "--corpus",
                str(b.jsonl_with('{"image": "img/0.png", "caption": "x"')[0]),
                "--budget",
                "4",
            ]
            + ["--out", str(b.tmp / "out")],
            [],
            b.tmp / "out",
        ),
        r"bad\.jsonl line 4",
        r"not valid JSON",
    ),
    "jsonl: no caption": lambda b: named(
        Fault(
            random_coreset_args(str(b.jsonl_with('{"image": "img/0.png"}')[0]), b.tmp / "out"),
            [],
            b.tmp / "out",
        ),
        r"bad\.jsonl line 4",
        r"caption",
    ),
    "jsonl: no image field": lambda b: named(
        Fault([*embed_args(b.jsonl_with('{"caption": "a red square"}')[0], b)], []), r"bad\.jsonl line 4", r"'image'"
    ),
    "jsonl: empty file": lambda b: named(
        Fault([*embed_args(_write(b.tmp / "empty.jsonl", ""), b)], []), r"empty\.jsonl"
    ),
    "csv: no caption column": lambda b: named(
        Fault([*embed_args(write_csv(b.images() / "c.csv", [["img/0.png", "x"]], header=("image", "text")), b)], []),
        r"c\.csv",
        r"'caption'",
    ),
    "csv: missing image file": lambda b: named(
        Fault(
            embed_args(
                write_csv(
                    b.images() / "c.csv", [["img/0.png", "x"], ["img/9.png", "gone"]], header=("image", "caption")
                ),
                b,
            ),
            [],
        ),
        r"c\.csv row 3",
        r"9\.png",
    ),
    "karpathy json: entry without caption": lambda b: named(
        Fault(
            embed_args(
                _write(
                    b.images() / "k.json", json.dumps([{"image": "img/0.png", "caption": "a"}, {"image": "img/1.png"}])
                ),
                b,
            ),
            [],
        ),
        r"k\.json entry 1",
        r"caption",
    ),
    "karpathy json: bad JSON": lambda b: named(
        Fault(
            embed_args(_write(b.images() / "k.json", '[{"image": "img/0.png", "caption": "a"},\n {"image": '), b), []
        ),
        r"k\.json line 2",
        r"not valid JSON",
    ),
    # -- broken images, found when they are read
    "image: truncated PNG": lambda b: named(
        Fault(
            embed_args(
                b.csv_with("img/cut.png", lambda p: (p.write_bytes(png_bytes(b.world.images[0])), truncate(p))), b
            ),
            [],
        ),
        r"c\.csv row 5",
        r"cut\.png",
    ),
    "image: a text file named .png": lambda b: named(
        Fault(embed_args(b.csv_with("img/notes.png", lambda p: p.write_text("dear diary")), b), []),
        r"c\.csv row 5",
        r"notes\.png",
    ),
    "image: a directory": lambda b: named(
        Fault(embed_args(b.csv_with("img/dir.png", lambda p: p.mkdir()), b), []),
        r"c\.csv row 5",
        r"dir\.png is a directory",
    ),
    "image: 16-bit float TIFF": lambda b: named(
        Fault(embed_args(b.csv_with("img/f16.tiff", float16_tiff), b), []),
        r"c\.csv row 5",
        r"f16\.tiff",
    ),
    "image: a decompression bomb": lambda b: named(
        Fault(embed_args(b.csv_with("img/bomb.png", bomb_png), b), []), r"c\.csv row 5", r"bomb\.png"
    ),
    "image: an empty file": lambda b: named(
        Fault(embed_args(b.csv_with("img/empty.png", lambda p: p.write_bytes(b"")), b), []),
        r"c\.csv row 5",
        r"empty\.png",
    ),
    "csv: empty file": lambda b: named(Fault(embed_args(_write(b.tmp / "e.csv", ""), b), []), r"e\.csv"),
    "csv: not UTF-8": lambda b: named(
        Fault(embed_args(_write_bytes(b.tmp / "l.csv", b"image,caption\na.png,caf\xe9\n"), b), []),
        r"l\.csv line 2",
        r"UTF-8",
    ),
    "jsonl: not UTF-8": lambda b: named(
        Fault(embed_args(_write_bytes(b.tmp / "l.jsonl", b'{"image": "a.png", "caption": "caf\xe9"}\n'), b), []),
        r"l\.jsonl",
        r"UTF-8",
    ),
    "karpathy json: empty list": lambda b: named(Fault(embed_args(_write(b.tmp / "k.json", "[]"), b), []), r"k\.json"),
    "embed --image-root missing": lambda b: named(
        Fault(
            [*embed_args(write_csv(b.images() / "c.csv", [["img/0.png", "x"]], header=("image", "caption")), b)]
            + ["--image-root", str(b.tmp / "nowhere")],
            [],
        ),
        r"--image-root",
        r"nowhere",
    ),
    # -- webdataset shards
    "webdataset: sample without caption": lambda b: named(
        Fault(
            embed_args(
                write_tar(
                    b.tmp / "s.tar",
                    [
                        ("0.png", png_bytes(b.world.images[0])),
                        ("0.txt", b"a shape"),
                        ("1.png", png_bytes(b.world.images[1])),
                    ],
                ),
                b,
            ),
            [],
        ),
        r"s\.tar member 1\.png",
        r"no caption",
    ),
    "webdataset: corrupt tar": lambda b: named(
        Fault(embed_args(_write(b.tmp / "junk.tar", "not a tar file" * 100), b), []), r"<tmp>/junk\.tar: not a readable"
    ),
    # -- damaged sets and stores
    "eval retrieval: missing image": lambda b: named(
        Fault(eval_args(_unlink(b.set, "images/000003.png")), []), r"set/images/000003\.png: missing"
    ),
    "eval retrieval: edited pairs.jsonl": lambda b: named(
        Fault(eval_args(_apply(b.set, damage_pairs)), []), r"set/pairs\.jsonl: differs from the manifest"
    ),
    "eval retrieval: manifest not JSON": lambda b: named(
        Fault(eval_args(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("{oops"))), []),
        r"<tmp>/set: unreadable distilled set \(manifest\.json: ",
    ),
    "export: missing image": lambda b: named(
        Fault(
            ["export", str(_unlink(b.set, "images/000003.png")), "--to", "webdataset", "--out", str(b.tmp / "x.tar")],
            [],
            b.tmp / "x.tar",
        ),
        r"set/images/000003\.png",
    ),
    "export: edited pairs.jsonl": lambda b: named(
        Fault(
            ["export", str(_apply(b.set, damage_pairs)), "--to", "parquet", "--out", str(b.tmp / "x.parquet")],
            [],
            b.tmp / "x.parquet",
        ),
        r"set/pairs\.jsonl",
    ),
    "report: missing image": lambda b: named(
        Fault(
            ["report", str(_unlink(b.set, "images/000003.png")), "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"
        ),
        r"set/images/000003\.png",
    ),
    "report: manifest not JSON": lambda b: named(
        Fault(
            [
                "report",
                str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("{oops"))),
                "--out",
                str(b.tmp / "r.html"),
            ],
            [],
            b.tmp / "r.html",
        ),
        r"<tmp>/set: unreadable distilled set \(manifest\.json: ",
    ),
    "report: compare.json not JSON": lambda b: named(
        Fault(["report", str(compare_folder(b, "{oops")), "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"),
        r"cmp/compare\.json",
    ),
    "report: edited pairs.jsonl": lambda b: named(
        Fault(["report", str(_apply(b.set, damage_pairs)), "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"),
        r"set/pairs\.jsonl: differs from the manifest",
    ),
    "report: compare.json a list": lambda b: named(
        Fault(["report", str(compare_folder(b, "[1, 2]")), "--out", str(b.tmp / "r.html")], [], b.tmp / "r.html"),
        r"cmp/compare\.json",
        r"'methods'",
    ),
    "report: compare.json row without metrics": lambda b: named(
        Fault(
            ["report", str(compare_folder(b, '{"methods": [{"method": "pds"}]}')), "--out", str(b.tmp / "r.html")],
            [],
            b.tmp / "r.html",
        ),
        r"cmp/compare\.json: methods\[0\]",
    ),
    "report: compare.png not an image": lambda b: named(
        Fault(
            ["report", str(_apply(compare_folder(b, '{"methods": []}'), lambda f: _write(f / "compare.png", "a plot")))]
            + ["--out", str(b.tmp / "r.html")],
            [],
            b.tmp / "r.html",
        ),
        r"cmp/compare\.png: cannot be decoded",
    ),
    "export: manifest not JSON": lambda b: named(
        Fault(
            [
                "export",
                str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("{oops"))),
                "--to",
                "webdataset",
            ]
            + ["--out", str(b.tmp / "x.tar")],
            [],
            b.tmp / "x.tar",
        ),
        r"<tmp>/set: unreadable distilled set \(manifest\.json: ",
    ),
    "eval retrieval: manifest a list": lambda b: named(
        Fault(eval_args(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("[]"))), []),
        r"<tmp>/set/manifest\.json: not a JSON object",
    ),
    "eval retrieval: manifest corpus not an object": lambda b: named(
        Fault(eval_args(_apply(b.set, lambda s: _edit_manifest(s, corpus="shapes"))), []),
        r"<tmp>/set/manifest\.json: its 'corpus' entry is not a JSON object",
    ),
    "export: manifest a list": lambda b: named(
        Fault(
            ["export", str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("[]"))), "--to", "webdataset"]
            + ["--out", str(b.tmp / "x.tar")],
            [],
            b.tmp / "x.tar",
        ),
        r"<tmp>/set/manifest\.json: not a JSON object",
    ),
    "report: manifest a list": lambda b: named(
        Fault(
            ["report", str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("[]")))]
            + ["--out", str(b.tmp / "r.html")],
            [],
            b.tmp / "r.html",
        ),
        r"<tmp>/set/manifest\.json: not a JSON object",
    ),
    "report: manifest without files": lambda b: named(
        Fault(
            ["report", str(_apply(b.set, lambda s: _edit_manifest(s, files=None))), "--out", str(b.tmp / "r.html")],
            [],
            b.tmp / "r.html",
        ),
        r"<tmp>/set/manifest\.json: records no file hashes",
    ),
    "eval retrieval: embeddings not safetensors": lambda b: named(
        Fault(eval_args(_apply(b.set, lambda s: _write(s / "embeddings.safetensors", "junk"))), []),
        r"set/embeddings\.safetensors",
    ),
    "verify: manifest a list": lambda b: named(
        Fault(["verify", str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("[]")))], []),
        r"<tmp>/set/manifest\.json: not a protosynth set manifest",
    ),
    "verify: store index a list": lambda b: named(
        Fault(["verify", str(_apply(b.store, lambda s: s.joinpath("index.json").write_text("[]")))], []),
        r"<tmp>/store/index\.json: not a protosynth embedding index",
    ),
    "verify: a file": lambda b: named(Fault(["verify", str(b.a_file())], []), r"<tmp>/a-file: not a folder"),
    "embed into a store whose index.json is not JSON": lambda b: named(
        Fault(
            ["embed", "--corpus", CORPUS, "--workers", "0", "--shard-size", "16"]
            + ["--out", str(_apply(b.store, lambda s: s.joinpath("index.json").write_text("{oops")))],
            [],
        ),
        r"<tmp>/store/index\.json: unreadable embedding index",
    ),
    "export --out a folder": lambda b: named(
        Fault(["export", str(b.set), "--to", "parquet", "--out", str(b.users_folder())], []), r"--out .*project"
    ),
    "report --out a folder": lambda b: named(
        Fault(["report", str(b.set), "--out", str(b.users_folder())], []), r"--out .*project"
    ),
    "coreset --out a file": lambda b: named(
        Fault(random_coreset_args("shapes,n=5", b.a_file()), []),
        r"--out .*a-file",
    ),
    "eval retrieval --test unknown": lambda b: named(
        Fault([*eval_args(b.set)[:-4], "--test", "flickr99"], []), r"flickr99"
    ),
    "eval cross-arch --archs unknown": lambda b: named(
        Fault(["eval", "cross-arch", str(b.set), "--test", TEST, "--repeats", "1", "--archs", "ps-nothing"], []),
        r"ps-nothing",
    ),
    "verify: manifest corpus not an object": lambda b: named(
        Fault(["verify", str(_apply(b.set, lambda s: _edit_manifest(s, corpus=["shapes"])))], []),
        r"<tmp>/set: 1 problem\(s\) in this distilled set",
    ),
    "eval retrieval --protocol small: manifest corpus.spec a number": lambda b: named(
        Fault([*eval_args(_apply(b.set, lambda s: _edit_manifest(s, corpus={"spec": 5}))), "--protocol", "small"], []),
        r"<tmp>/set/manifest\.json: its 'corpus\.spec' entry is not a string",
    ),
    "verify: missing image": lambda b: named(
        Fault(["verify", str(_unlink(b.set, "images/000003.png"))], []),
        r"<tmp>/set: 1 problem\(s\) in this distilled set",
    ),
    "verify: manifest not JSON": lambda b: named(
        Fault(["verify", str(_apply(b.set, lambda s: s.joinpath("manifest.json").write_text("{oops")))], []),
        r"<tmp>/set: 1 problem\(s\) in this distilled set",
    ),
    "verify: damaged store": lambda b: named(
        Fault(["verify", str(_apply(b.store, lambda s: nan_shard(s / "text-000001.npy")))], []),
        r"<tmp>/store: 1 problem\(s\) in this embedding store",
    ),
    "verify: store index.json not JSON": lambda b: named(
        Fault(["verify", str(_apply(b.store, lambda s: s.joinpath("index.json").write_text("{oops")))], []),
        r"<tmp>/store/index\.json: unreadable embedding index",
    ),
    # -- unwritable places (under a regular file: NotADirectoryError, even as root) and --force
    "export --out under a file": lambda b: named(
        Fault(["export", str(b.set), "--to", "webdataset", "--out", str(b.a_file() / "x.tar")], []),
        r"--out <tmp>/a-file/\S+: <tmp>/a-file is a file, not a folder",
    ),
    "report --out under a file": lambda b: named(
        Fault(["report", str(b.set), "--out", str(b.a_file() / "r.html")], []),
        r"--out <tmp>/a-file/\S+: <tmp>/a-file is a file, not a folder",
    ),
    "embed --out under a file": lambda b: named(
        Fault(["embed", "--corpus", CORPUS, "--out", str(b.a_file() / "store")], []),
        r"--out <tmp>/a-file/\S+: <tmp>/a-file is a file, not a folder",
    ),
    "coreset in a cache under a file": lambda b: named(
        Fault(
            random_coreset_args("shapes,n=5", b.tmp / "out"),
            [],
            b.tmp / "out",
            env={"PROTOSYNTH_CACHE": str(b.a_file() / "cache")},
        ),
        r"cache folder <tmp>/a-file/cache\S*: <tmp>/a-file is a file",
        r"PROTOSYNTH_CACHE",
    ),
    "coreset --force on a user's folder": lambda b: named(
        Fault(
            random_coreset_args("shapes,n=5", b.users_folder(), "--force"),
            [],
        ),
        r"--out <tmp>/project exists and is not a distilled set",
    ),
    "export --force on a user's file": lambda b: named(
        Fault(
            ["export", str(b.set), "--to", "webdataset", "--force", "--out", str(_write(b.tmp / "mine.tar", "mine"))],
            [],
        ),
        r"--out .*mine\.tar",
    ),
    "report --force on a user's page": lambda b: named(
        Fault(["report", str(b.set), "--force", "--out", str(_write(b.tmp / "index.html", "<p>mine</p>"))], []),
        r"--out .*index\.html",
    ),
    "embed --out a user's folder": lambda b: named(
        Fault(["embed", "--corpus", CORPUS, "--clip", "default", "--out", str(b.users_folder())], []),
        r"<tmp>/project is not empty and holds no embedding index\.json",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _edit_manifest(folder: Path, **fields) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in fields.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _unlink(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def _apply(folder: Path, damage: Callable[[Path], None]) -> Path:
    damage(folder)
    return folder


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root``: its sha256 (a folder: "dir")."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def looks_complete(root: Path, name: str) -> bool:
    path = root / name
    if path.name == "manifest.json":
        return True
    if path.name == "index.json" and path.parent.name == "corpus" and (path.parent.parent / "index.json").is_file():
        # the corpus index inside a store is built before any image is encoded: a finished part of
        # the store, which looks complete only when the store itself does
        return looks_complete(root, str(Path(name).parent.parent / "index.json"))
    if path.name == "index.json":
        try:
            return bool(json.loads(path.read_text()).get("complete"))
        except (ValueError, AttributeError):
            return False
    return False


@pytest.mark.parametrize("case", list(CASES))
def test_fault(case, tmp_path, request, world, clean_set, clean_store):
    bench = Bench(tmp_path, request, world, clean_set, clean_store)
    fault = CASES[case](bench)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, fault.args, env=fault.env or None)
    line = assert_one_line_error(result).replace(str(tmp_path), "<tmp>")  # a culprit must not match the case's folder
    for culprit in fault.culprits:
        assert re.search(culprit, line), f"{culprit!r} not named in {line!r}"
    after = snapshot(tmp_path)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert changed == [], f"files that were there changed or went: {changed}"
    new = [name for name in after if name not in before]
    assert not [n for n in new if looks_complete(tmp_path, n)], f"complete-looking files left: {new}"
    if fault.out is not None:
        assert not fault.out.exists(), f"{fault.out} left: {new}"
        assert not [n for n in new if fault.out.name in Path(n).name], f"temporary files left: {new}"
