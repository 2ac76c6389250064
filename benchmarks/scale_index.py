"""What the driver pays for the corpus index: loading a corpus whole, building the sharded index from
it, and reading the captions of a few pairs from the index in a process that never loads the corpus.

    python -m benchmarks.scale_index [--pairs 100000] [--format jsonl] [--read 500] [--shard-size 4096]
                                     [--stages] [--budget 500] [--steps 5]

A scale corpus (``benchmarks.scale_corpus``, seed 0) of ``--pairs`` pairs is written to a temporary
folder (its seconds reported apart). Each stage then runs in a fresh spawned process, which reports
its wall seconds and its peak RSS (``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would carry the
parent's peak across exec) beside the RSS after its imports: (1) ``load_corpus`` (the whole load)
followed by ``build_corpus_index`` into a new folder; (2) ``CorpusIndex(folder).captions`` of
``--read`` random pairs, checked against the captions the load saw; (3) ``scan_source``, the pass
``distill`` and ``coreset`` make before they know the store is complete (a JSONL manifest, parquet
files or webdataset shards streamed, no caption held; other formats loaded whole), checked to give
the load's fingerprint. With ``--stages``, then (4) ``protosynth embed`` (the shipped small CLIP, the local
engine; it writes the store and the corpus index beside it) and (5) ``protosynth distill --budget``
(``--steps`` render steps: rendering costs the budget, not the corpus) on the same corpus and cache,
each a fresh process: the driver's wall seconds and peak RSS, and distill's per-stage seconds from
its manifest.

Writes ``benchmarks/results/scale_index-{format}-{pairs}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.scale_corpus import write_scale_corpus
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"

PRELUDE = """
import json, sys, time
import numpy as np
import pyarrow.parquet  # what every reader of the index loads: outside what is measured
def status(field):
    return int(open('/proc/self/status').read().split(field + ':')[1].split()[0]) * 1024
"""

BUILD = """
from protosynth.corpus import load_corpus
from protosynth.corpora.index import build_corpus_index
spec, folder, shard_size, read = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
imported = status('VmRSS')
started = time.perf_counter()
corpus = load_corpus(spec)
loaded = time.perf_counter()
load_peak = status('VmHWM')
build_corpus_index(corpus, folder, shard_size)
built = time.perf_counter()
pairs = np.random.default_rng(0).choice(corpus.n_pairs, size=min(read, corpus.n_pairs), replace=False)
print(json.dumps({
    "pairs": corpus.n_pairs, "images": corpus.n_images, "rss_after_imports": imported,
    "load_seconds": loaded - started, "load_peak_rss": load_peak,
    "build_seconds": built - loaded, "build_peak_rss": status('VmHWM'),
    "sample": pairs.tolist(), "captions": [corpus.pair_caption[p] for p in pairs],
    "fingerprint": corpus.fingerprint,
}))
"""

SCAN = """
from protosynth.corpus import scan_source
from protosynth.corpora.source import CorpusSource
imported = status('VmRSS')
started = time.perf_counter()
summary = scan_source(CorpusSource(sys.argv[1]))
print(json.dumps({
    "rss_after_imports": imported, "scan_seconds": time.perf_counter() - started,
    "scan_peak_rss": status('VmHWM'), "fingerprint": summary.fingerprint, "summary": type(summary).__name__,
}))
"""

READ = """
from protosynth.corpora.index import CorpusIndex
folder, pairs = sys.argv[1], json.loads(sys.argv[2])
imported = status('VmRSS')
started = time.perf_counter()
captions = CorpusIndex(folder).captions(pairs)
print(json.dumps({
    "rss_after_imports": imported, "read_seconds": time.perf_counter() - started,
    "read_peak_rss": status('VmHWM'), "captions": captions,
}))
"""


STAGE = """
from protosynth.cli.main import main
imported = status('VmRSS')
started = time.perf_counter()
sys.argv = ['protosynth', *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print()
print(json.dumps({"rss_after_imports": imported, "seconds": time.perf_counter() - started,
                  "peak_rss": status('VmHWM'), "exit": code}))
"""


def _child(script: str, *args: str) -> dict:
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(pairs: int, fmt: str, read: int, shard_size: int, work: Path) -> dict:
    started = time.perf_counter()
    made = write_scale_corpus(work / "corpus", pairs, seed=0, formats=(fmt,))
    generate = time.perf_counter() - started
    build = _child(BUILD, getattr(made, fmt), str(work / "index"), str(shard_size), str(read))
    sample, expected = build.pop("sample"), build.pop("captions")
    got = _child(READ, str(work / "index"), json.dumps(sample))
    if got.pop("captions") != expected:
        raise RuntimeError("the index's captions differ from the loaded corpus's")
    scan = _child(SCAN, getattr(made, fmt))
    if scan.pop("fingerprint") != build.pop("fingerprint"):
        raise RuntimeError("the scan's fingerprint differs from the load's")
    index_bytes = sum(p.stat().st_size for p in (work / "index").iterdir())
    return {
        "spec": getattr(made, fmt),
        "format": fmt,
        "shard_size": shard_size,
        "read_pairs": len(sample),
        "generate_seconds": generate,
        "index_bytes": index_bytes,
        "build": build,
        "read": got,
        "scan": scan,
    }


def measure_stages(spec: str, budget: int, steps: int, shard_size: int, work: Path) -> dict:
    """``embed`` then ``distill --budget`` on ``spec`` through the command line, each a fresh process
    sharing one cache (distill reads the store and the index embed wrote)."""
    os.environ["PROTOSYNTH_CACHE"] = str(work / "cache")
    embed = _child(STAGE, "embed", "--corpus", spec, "--shard-size", str(shard_size))
    out = work / "set"
    args = ["distill", "--corpus", spec, "--budget", str(budget), "--steps", str(steps), "--out", str(out)]
    distill = _child(STAGE, *args)  # finds embed's store (its key holds no shard size) and its index
    for name, run in (("embed", embed), ("distill", distill)):
        if run["exit"] != 0:
            raise RuntimeError(f"{name} exited with {run['exit']}")
    manifest = json.loads((out / "manifest.json").read_text())
    seconds = manifest["seconds"]
    return {"embed": embed, "distill": distill, "distill_seconds": seconds, "budget": budget, "steps": steps}


def _row(stage: str, seconds: float, peak: int, child: dict) -> str:
    mib = 1 << 20
    return f"| {stage} | {seconds:.2f} | {peak / mib:.0f} | {(peak - child['rss_after_imports']) / mib:.0f} |"


def _markdown(r: dict) -> list[str]:
    mib = 1 << 20
    b, g, s = r["build"], r["read"], r["scan"]
    return [
        f"# Corpus index at {b['pairs']:,} pairs ({b['images']:,} images, {r['format']}, shards of "
        f"{r['shard_size']} images)",
        "",
        "| stage (fresh process) | seconds | peak RSS MiB | peak over the imports' RSS, MiB |",
        "| --- | ---: | ---: | ---: |",
        _row("load_corpus (the whole corpus)", b["load_seconds"], b["load_peak_rss"], b),
        _row("build_corpus_index (after that load)", b["build_seconds"], b["build_peak_rss"], b),
        _row(f"CorpusIndex.captions of {r['read_pairs']} pairs", g["read_seconds"], g["read_peak_rss"], g),
        _row("scan_source (distill's and coreset's pass)", s["scan_seconds"], s["scan_peak_rss"], s),
        "",
        f"RSS after the imports (protosynth, numpy, pyarrow): {b['rss_after_imports'] / mib:.0f} MiB.",
        f"Index on disk: {r['index_bytes'] / mib:.1f} MiB. Corpus generated in {r['generate_seconds']:.1f} s.",
        f"Machine: {r['machine']}; commit {r['commit']}; `{r['command']}`.",
        *(_stage_rows(r["stages"]) if "stages" in r else []),
    ]


def _stage_rows(st: dict) -> list[str]:
    e, d = st["embed"], st["distill"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in st["distill_seconds"].items())
    return [
        "",
        f"## The stages' driver (local engine, shipped small CLIP, budget {st['budget']}, {st['steps']} render steps)",
        "",
        "| command (fresh process, torch imported inside) | wall s | peak RSS MiB | peak over the imports' RSS, MiB |",
        "| --- | ---: | ---: | ---: |",
        _row("protosynth embed (store + corpus index)", e["seconds"], e["peak_rss"], e),
        _row(f"protosynth distill --budget {st['budget']}", d["seconds"], d["peak_rss"], d),
        "",
        f"distill's stages (manifest seconds): {parts}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--format", choices=("jsonl", "wds", "parquet"), default="jsonl")
    parser.add_argument("--read", type=int, default=500)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--stages", action="store_true", help="also time protosynth embed and distill")
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the corpus (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        result = measure(args.pairs, args.format, args.read, args.shard_size, Path(work))
        if args.stages:
            result["stages"] = measure_stages(result.pop("spec"), args.budget, args.steps, args.shard_size, Path(work))
        result.pop("spec", None)  # a temporary path
    result.update(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        commit=git_commit(),
        command="python -m benchmarks.scale_index " + " ".join(sys.argv[1:]),
    )
    RESULTS.mkdir(exist_ok=True)
    name = f"scale_index-{args.format}-{args.pairs}" + ("-stages" if args.stages else "")
    write_text_atomic(RESULTS / f"{name}.json", json.dumps(result, indent=1) + "\n")
    text = "\n".join(_markdown(result)) + "\n"
    write_text_atomic(RESULTS / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
