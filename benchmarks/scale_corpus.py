"""A scale corpus for benchmarks and tests: N caption-level pairs of tiny images, deterministic from a seed.

    python -m benchmarks.scale_corpus OUT --pairs 1000000 [--seed 0] [--formats jsonl,wds,parquet]

Each image is 8x8 random RGB pixels saved as PNG, with 1 to 3 captions drawn from a small
vocabulary; images are added until there are ``pairs`` pairs (the last image keeps only the captions
that fit). The same pairs are written in the three formats ``protosynth.corpus.load_corpus`` reads
unchanged, each under its own folder of ``OUT``:

- ``jsonl/corpus.jsonl`` with ``{"image": "images/00000/00000000.png", "captions": [...]}`` lines and
  the PNG files, 1,000 per folder;
- ``wds/shard-00000.tar`` ..., webdataset shards of ``shard_images`` samples (``KEY.png`` and
  ``KEY.json`` with ``{"captions": [...]}``), written as USTAR with zero times and owners;
- ``parquet/corpus.parquet``, img2dataset's columns: ``jpg`` (the PNG bytes) and ``caption`` (the
  list of captions), row groups of ``shard_images`` rows.

Images are drawn in chunks of ``CHUNK`` images, chunk ``c`` from ``default_rng([seed, c])``: the same
``pairs`` and ``seed`` give byte-identical files (file times aside), and a smaller corpus is a prefix
of a larger one with the same seed.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CHUNK = 4096  # images drawn per random stream
SIDE = 8
MAX_CAPTIONS = 3
FORMATS = ("jsonl", "wds", "parquet")
WORDS = (
    ("a", "one", "the", "some"),
    ("red", "green", "blue", "small", "large", "striped", "dotted", "bright", "dark", "pale"),
    ("square", "circle", "cat", "boat", "house", "tree", "cup", "chair", "bird", "car", "lamp", "star"),
    ("on", "near", "under", "beside", "behind"),
    ("a table", "the grass", "a wall", "the sea", "a road", "the sky", "a shelf", "the sand"),
)


@dataclass(frozen=True)
class ScaleCorpus:
    """The specs of what ``write_scale_corpus`` wrote (None: that format was not asked for)."""

    n_pairs: int
    n_images: int
    jsonl: str | None
    wds: str | None
    parquet: str | None


def draw(n_pairs: int, seed: int) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """Chunks of (images (m, 8, 8, 3) uint8, their captions) holding ``n_pairs`` pairs in all."""
    left, c = n_pairs, 0
    while left > 0:
        rng = np.random.default_rng([seed, c])
        pixels = rng.integers(0, 256, (CHUNK, SIDE, SIDE, 3), dtype=np.uint8)
        counts = rng.integers(1, MAX_CAPTIONS + 1, CHUNK)
        words = [rng.integers(0, len(w), (CHUNK, MAX_CAPTIONS)) for w in WORDS]
        captions = []
        for i, k in enumerate(counts.tolist()):
            k = min(k, left)
            captions.append([" ".join(w[int(pick[i, j])] for w, pick in zip(WORDS, words)) for j in range(k)])
            left -= k
            if left == 0:
                break
        yield pixels[: len(captions)], captions
        c += 1


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class JsonlWriter:
    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest = open(folder / "corpus.jsonl", "w", encoding="utf-8", newline="\n")

    def add(self, i: int, image: bytes, captions: list[str]) -> None:
        rel = f"images/{i // 1000:05d}/{i:08d}.png"
        path = self.folder / rel
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
        self.manifest.write(json.dumps({"image": rel, "captions": captions}) + "\n")

    def close(self) -> None:
        self.manifest.close()


class WdsWriter:
    def __init__(self, folder: Path, shard_images: int):
        self.folder, self.shard_images, self.tar = folder, shard_images, None

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, i: int, image: bytes, captions: list[str]) -> None:
        if i % self.shard_images == 0:
            self.close()
            shard = self.folder / f"shard-{i // self.shard_images:05d}.tar"
            self.tar = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT)
        self._member(f"{i:08d}.png", image)
        self._member(f"{i:08d}.json", json.dumps({"captions": captions}).encode())

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


class ParquetWriter:
    SCHEMA = pa.schema([("jpg", pa.binary()), ("caption", pa.list_(pa.string()))])

    def __init__(self, folder: Path, shard_images: int):
        self.writer = pq.ParquetWriter(folder / "corpus.parquet", self.SCHEMA, compression="zstd")
        self.shard_images, self.images, self.captions = shard_images, [], []

    def add(self, i: int, image: bytes, captions: list[str]) -> None:
        self.images.append(image)
        self.captions.append(captions)
        if len(self.images) == self.shard_images:
            self._flush()

    def _flush(self) -> None:
        if self.images:
            table = pa.table([pa.array(self.images, pa.binary()), self.captions], schema=self.SCHEMA)
            self.writer.write_table(table, row_group_size=self.shard_images)
            self.images, self.captions = [], []

    def close(self) -> None:
        self._flush()
        self.writer.close()


def write_scale_corpus(
    out: Path, n_pairs: int, seed: int = 0, formats: tuple[str, ...] = FORMATS, shard_images: int = 10_000
) -> ScaleCorpus:
    """Write ``n_pairs`` pairs in each of ``formats`` under ``out`` (see the module docstring)."""
    if n_pairs < 1 or shard_images < 1:
        raise ValueError(f"n_pairs ({n_pairs}) and shard_images ({shard_images}) must be at least 1")
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}: choose from {', '.join(FORMATS)}")
    out = Path(out)
    for name in formats:
        (out / name).mkdir(parents=True, exist_ok=False)
    makers = {
        "jsonl": lambda folder: JsonlWriter(folder),
        "wds": lambda folder: WdsWriter(folder, shard_images),
        "parquet": lambda folder: ParquetWriter(folder, shard_images),
    }
    writers = [makers[name](out / name) for name in formats]
    i = 0
    try:
        for pixels, captions in draw(n_pairs, seed):
            for image, caps in zip(pixels, captions):
                data = png(image)
                for writer in writers:
                    writer.add(i, data, caps)
                i += 1
    finally:
        for writer in writers:
            writer.close()
    specs = {"jsonl": "jsonl/corpus.jsonl", "wds": "wds/shard-*.tar", "parquet": "parquet/corpus.parquet"}
    return ScaleCorpus(n_pairs, i, **{k: str(out / v) if k in formats else None for k, v in specs.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder")
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--shard-images", type=int, default=10_000)
    args = parser.parse_args()
    made = write_scale_corpus(args.out, args.pairs, args.seed, tuple(args.formats.split(",")), args.shard_images)
    print(json.dumps(made.__dict__, indent=1))


if __name__ == "__main__":
    main()
