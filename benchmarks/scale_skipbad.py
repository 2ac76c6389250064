"""``--skip-bad`` on a JSONL manifest, parquet file or webdataset shards: the whole load against the
streamed scan (issue 32).

    python -m benchmarks.scale_skipbad [--pairs 20000] [--bad 3] [--format jsonl|parquet|wds]

A scale corpus (``benchmarks.scale_corpus``, seed 0, in ``--format``) of ``--pairs`` pairs is
written to a temporary folder and ``--bad`` of its images, evenly spaced, are spoiled (an image
file or a parquet cell cut to its first 40 bytes, the file rewritten; a tar member's bytes zeroed
in place). Then, each in a fresh process with one
thread, ``load_corpus(spec, skip_bad=True)`` (the whole load) and ``scan_source(CorpusSource(spec,
skip_bad=True))`` (the streamed check and scan): wall seconds, peak RSS above the RSS after the
imports (``VmHWM``), and the fingerprint, kept-pair count and dropped count, which must agree.
Writes ``benchmarks/results/scale_skipbad-{format}-{pairs}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.scale_corpus import write_scale_corpus
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"
WHAT = {"jsonl": "JSONL manifest", "parquet": "parquet file", "wds": "webdataset corpus"}

CHILD = """
import json, sys, time
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import load_corpus, scan_source

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024

base = status("VmRSS")
t = time.perf_counter()
spec, how = sys.argv[1], sys.argv[2]
got = load_corpus(spec, skip_bad=True) if how == "load" else scan_source(CorpusSource(spec, skip_bad=True))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": round(seconds, 2), "peak_above_imports_mib": status("VmHWM") - base,
                  "fingerprint": got.fingerprint, "pairs": got.n_pairs, "dropped": len(got.skipped)}))
"""


def child(spec: str, how: str) -> dict:
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    done = subprocess.run([sys.executable, "-c", CHILD, spec, how], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def spoil(spec: str, fmt: str, bad: int) -> int:
    """Spoil ``bad`` evenly spaced images of the corpus ``spec``; its image count."""
    if fmt == "jsonl":
        images = sorted(p for p in Path(spec).parent.rglob("*") if p.suffix in (".png", ".jpg"))
        for path in images[:: max(1, len(images) // bad)][:bad]:
            path.write_bytes(path.read_bytes()[:40])
        return len(images)
    if fmt == "parquet":
        import pyarrow as pa  # noqa: PLC0415 (the corpora extra)
        import pyarrow.parquet as pq  # noqa: PLC0415 (as above)

        table = pq.read_table(spec)
        cells = table.column("jpg").to_pylist()
        for i in range(len(cells))[:: max(1, len(cells) // bad)][:bad]:
            cells[i] = cells[i][:40]
        spoilt = table.set_column(0, "jpg", pa.array(cells, table.schema.field("jpg").type))
        pq.write_table(spoilt, spec, compression="zstd", row_group_size=10_000)  # as scale_corpus writes it
        return len(cells)
    members = []
    for shard in sorted(Path(spec).parent.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members += [(shard, m.offset_data, m.size) for m in tar if m.name.endswith((".png", ".jpg"))]
    for shard, offset, size in members[:: max(1, len(members) // bad)][:bad]:
        with open(shard, "r+b") as fh:
            fh.seek(offset)
            fh.write(bytes(size))
    return len(members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--bad", type=int, default=3)
    parser.add_argument("--format", choices=("jsonl", "parquet", "wds"), default="jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        made = write_scale_corpus(Path(work) / "corpus", args.pairs, seed=0, formats=(args.format,))
        spec = getattr(made, args.format)
        images = spoil(spec, args.format, args.bad)
        load, scan = child(spec, "load"), child(spec, "scan")
    same = all(load[k] == scan[k] for k in ("fingerprint", "pairs", "dropped"))
    if not same:
        raise SystemExit(f"the streamed scan differs from the whole load: {load} against {scan}")
    command = "python -m benchmarks.scale_skipbad " + " ".join(sys.argv[1:])
    doc = {"command": command, "commit": git_commit(), "format": args.format, "pairs": args.pairs, "images": images}
    doc.update(load=load, scan=scan, same=same)
    stem = RESULTS / f"scale_skipbad-{args.format}-{args.pairs}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=2))
    write_text_atomic(stem.with_suffix(".md"), markdown(doc))
    print(json.dumps(doc))


def markdown(doc: dict) -> str:
    rows = [
        f"| {name} | {r['seconds']:.2f} | {r['peak_above_imports_mib']} | {r['pairs']:,} | {r['dropped']} |"
        for name, r in (("whole load (`load_corpus`)", doc["load"]), ("streamed (`scan_source`)", doc["scan"]))
    ]
    return "\n".join(
        [
            f"# `--skip-bad` on a {doc['pairs']:,}-pair {WHAT[doc.get('format', 'jsonl')]} ({doc['images']:,} "
            "images): whole load against the streamed scan",
            "",
            f"`{doc['command']}` at commit {doc['commit'][:12]}; each in a fresh process, one thread; the "
            "fingerprints agree.",
            "",
            "| path | seconds | peak RSS above the imports, MiB | kept pairs | dropped images |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    main()
