"""Memory of a parquet corpus read through ``load_corpus``: what the row-group cache holds after
every image was read once, against reading the whole file with ``pyarrow.parquet.read_table``.

    python -m benchmarks.table_memory [--images 3000] [--row-group 100] [--out /tmp/table_memory]

Writes a parquet file of random 256x256 JPEGs (seed 0; the file is kept and reused), loads it as a
corpus, decodes every image in order (as the embedding stage does), and prints the load time, the
peak RSS and the bytes Arrow still holds; then the same for ``read_table`` of the whole file.
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from protosynth.corpus import load_corpus


def write_corpus(path: Path, n: int, row_group: int) -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    table = pa.table({"jpg": images, "caption": [f"image {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=row_group)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--row-group", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("/tmp/table_memory"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"corpus-{args.images}-{args.row_group}.parquet"
    if not path.exists():
        write_corpus(path, args.images, args.row_group)
    before, started = peak_mb(), time.time()
    corpus = load_corpus(str(path))
    print(f"file {path.stat().st_size / 2**20:.0f} MB; load {time.time() - started:.2f} s, peak RSS {peak_mb():.0f} MB")
    started = time.time()
    for i in range(corpus.n_images):
        corpus.load_image(i)
    print(
        f"read {corpus.n_images} images in {time.time() - started:.1f} s: peak RSS {peak_mb():.0f} MB "
        f"(before loading: {before:.0f} MB), Arrow holds {pa.total_allocated_bytes() / 2**20:.1f} MB"
    )
    table = pq.read_table(path)
    print(
        f"read_table of the whole file: Arrow holds {pa.total_allocated_bytes() / 2**20:.0f} MB, "
        f"peak RSS {peak_mb():.0f} MB ({table.num_rows} rows)"
    )


if __name__ == "__main__":
    main()
