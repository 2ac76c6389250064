"""What the driver pays for the corpus index: loading a corpus whole, building the sharded index from
it, and reading the captions of a few pairs from the index in a process that never loads the corpus.

    python -m benchmarks.scale_index [--pairs 100000] [--format jsonl] [--read 500] [--shard-size 4096]
                                     [--stages] [--budget 500] [--steps 5] [--models default|quick|DIR]
                                     [--engine local|ray] [--workers N] [--stages-only] [--corpus-dir DIR]

A scale corpus (``benchmarks.scale_corpus``, seed 0) of ``--pairs`` pairs is written to a temporary
folder (its seconds reported apart). Each stage then runs in a fresh spawned process, which reports
its wall seconds and its peak RSS (``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would carry the
parent's peak across exec) beside the RSS after its imports: (1) ``load_corpus`` (the whole load)
followed by ``build_corpus_index`` into a new folder; (2) ``CorpusIndex(folder).captions`` of
``--read`` random pairs, checked against the captions the load saw; (3) ``scan_source``, the pass
``distill`` and ``coreset`` make before they know the store is complete (a JSONL manifest, parquet
files or webdataset shards streamed, no caption held; other formats loaded whole), checked to give
the load's fingerprint. With ``--stages``, then (4) ``protosynth embed`` (it writes the store and the
corpus index beside it) and (5) ``protosynth distill --budget`` (``--steps`` render steps: rendering
costs the budget, not the corpus) on the same corpus and cache, each a fresh process: the driver's
wall seconds and peak RSS, and distill's per-stage seconds from its manifest. ``--stages-only`` skips
(1)-(3), whose whole load is the path the stages no longer take (gigabytes at 10M pairs).

``--models``: the CLIP and decoder of the stages: the shipped small ones (``default``), a ``protosynth
models train`` folder, or ``quick``: a tiny CLIP (``ps-tiny-clip``) and decoder trained for a minute
on 300 world images into the work folder, so that embedding 10M pairs is cheap (the driver's costs do
not depend on the CLIP's width; its per-pair time does). ``--engine ray --workers N`` runs both stages
on a local Ray instance. ``--corpus-dir`` keeps the corpus and the cache (the store, one per engine
and models, so that each run's ``embed`` is timed) there instead of a temporary folder: a second run
reuses the corpus (written once, marked complete) and a killed ``embed`` resumes from its finished
shards.

Writes ``benchmarks/results/scale_index-{format}-{pairs}[-stages[-{engine}{workers}][-{models}]].json``
and ``.md``.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.scale_corpus import write_scale_corpus
from protosynth.configs import ClipTrainConfig, ModelsTrainConfig
from protosynth.corpora.source import CorpusSource
from protosynth.training.small_models import train_models
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
    result = json.loads(done.stdout.splitlines()[-1])
    if result.get("exit", 0) != 0:
        raise RuntimeError(f"protosynth {args[0]} exited with {result['exit']}:\n{done.stderr[-2000:]}")
    return result


def measure(spec: str, read: int, shard_size: int, work: Path) -> dict:
    build = _child(BUILD, spec, str(work / "index"), str(shard_size), str(read))
    sample, expected = build.pop("sample"), build.pop("captions")
    got = _child(READ, str(work / "index"), json.dumps(sample))
    if got.pop("captions") != expected:
        raise RuntimeError("the index's captions differ from the loaded corpus's")
    scan = _child(SCAN, spec)
    if scan.pop("fingerprint") != build.pop("fingerprint"):
        raise RuntimeError("the scan's fingerprint differs from the load's")
    index_bytes = sum(p.stat().st_size for p in (work / "index").iterdir())
    return {
        "read_pairs": len(sample),
        "index_bytes": index_bytes,
        "build": build,
        "read": got,
        "scan": scan,
    }


@dataclass(frozen=True)
class Stages:
    """How ``--stages`` runs: the budget and render steps, the models' flags, the engine's flags."""

    budget: int = 500
    steps: int = 5
    models: str = "default"
    model_flags: tuple[str, ...] = ()
    engine: str = "local"
    workers: int = 1

    def engine_flags(self) -> list[str]:
        if self.engine != "ray":
            return []
        cpus = min(1.0, (os.cpu_count() - 1) / self.workers)  # the actors and a decoding task fit the machine
        return ["--engine", "ray", "--workers", str(self.workers), "--cpus-per-worker", f"{cpus:g}"]


def measure_stages(spec: str, stages: Stages, shard_size: int, cache: Path, work: Path) -> dict:
    """``embed`` then ``distill --budget`` on ``spec`` through the command line, each a fresh process
    sharing one cache (distill reads the store and the index embed wrote)."""
    os.environ["PROTOSYNTH_CACHE"] = str(cache)
    clip = list(stages.model_flags[:2])  # embed takes the CLIP alone
    embed = _child(STAGE, "embed", "--corpus", spec, "--shard-size", str(shard_size), *clip, *stages.engine_flags())
    out = work / "set"
    args = distill_args(spec, out, stages.budget, stages.steps)
    # distill finds embed's store (its key holds no shard size) and its index
    distill = _child(STAGE, *args, *stages.model_flags, *stages.engine_flags())
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "embed": embed,
        "distill": distill,
        "distill_seconds": manifest["seconds"],
        **{k: v for k, v in asdict(stages).items() if k != "model_flags"},
    }


def distill_args(spec: str, out: Path, budget: int = 500, steps: int = 5) -> list[str]:
    """The ``distill`` command the driver benchmarks time: rendered (``--method pds``, ``steps`` DDIM
    steps), since rendering costs the budget whatever the corpus."""
    return ["distill", "--corpus", str(spec), "--budget", str(budget), "--method", "pds", "--steps", str(steps),
            "--out", str(out)]  # fmt: skip


def scale_corpus(pairs: int, fmt: str, folder: Path) -> dict:
    """The scale corpus under ``folder`` (its spec, pairs, images and the seconds writing it took):
    written once and marked complete (``complete.json``), then reused; a folder without the mark is
    refused, since a killed write leaves a corpus short of pairs."""
    out = folder / f"corpus-{pairs}-{fmt}"
    mark = out / "complete.json"
    if mark.is_file():
        return dict(json.loads(mark.read_text()), reused=True)
    if out.exists():
        raise SystemExit(f"--corpus-dir: {out} holds an unfinished corpus (no complete.json); remove it and rerun")
    started = time.perf_counter()
    made = write_scale_corpus(out, pairs, seed=0, formats=(fmt,))
    seconds = time.perf_counter() - started
    made_doc = {"spec": getattr(made, fmt), "pairs": made.n_pairs, "images": made.n_images, "seconds": seconds}
    write_text_atomic(mark, json.dumps(made_doc) + "\n")
    return dict(made_doc, reused=False)


def model_flags(models: str, folder: Path) -> tuple[str, ...]:
    """The ``--clip``/``--decoder`` flags of ``--models``; ``quick`` trains its tiny pair into ``folder``
    once (reused when both parts are there)."""
    if models == "default":
        return ()
    if models == "quick":
        path = folder / "models-quick"
        parts = (path / "clip" / "open_clip_config.json", path / "decoder" / "model_index.json")
        if not all(part.is_file() for part in parts):
            clip = ClipTrainConfig(arch="ps-tiny-clip", steps=60, batch_size=64, checkpoint_every=20)
            cfg = ModelsTrainConfig(corpus=CorpusSource("shapes,n=300"), quick=True, clip=clip)
            train_models(cfg, path, command="python -m benchmarks.scale_index --models quick")
    else:
        path = Path(models)
    return ("--clip", f"small:{path}", "--decoder", f"small:{path}")


def _row(stage: str, seconds: float, peak: int, child: dict) -> str:
    mib = 1 << 20
    return f"| {stage} | {seconds:.2f} | {peak / mib:.0f} | {(peak - child['rss_after_imports']) / mib:.0f} |"


def _markdown(r: dict) -> list[str]:
    mib = 1 << 20
    c = r["corpus"]
    made = "reused from --corpus-dir" if c["reused"] else f"generated in {c['seconds']:.1f} s"
    lines = [
        f"# Corpus index at {c['pairs']:,} pairs ({c['images']:,} images, {r['format']}, shards of "
        f"{r['shard_size']} images)",
        "",
    ]
    if "build" in r:
        b, g, s = r["build"], r["read"], r["scan"]
        lines += [
            "| stage (fresh process) | seconds | peak RSS MiB | peak over the imports' RSS, MiB |",
            "| --- | ---: | ---: | ---: |",
            _row("load_corpus (the whole corpus)", b["load_seconds"], b["load_peak_rss"], b),
            _row("build_corpus_index (after that load)", b["build_seconds"], b["build_peak_rss"], b),
            _row(f"CorpusIndex.captions of {r['read_pairs']} pairs", g["read_seconds"], g["read_peak_rss"], g),
            _row("scan_source (distill's and coreset's pass)", s["scan_seconds"], s["scan_peak_rss"], s),
            "",
            f"RSS after the imports (protosynth, numpy, pyarrow): {b['rss_after_imports'] / mib:.0f} MiB.",
            f"Index on disk: {r['index_bytes'] / mib:.1f} MiB.",
        ]
    return [
        *lines,
        f"Corpus {made}. Machine: {r['machine']}; commit {r['commit']}; `{r['command']}`.",
        *(_stage_rows(r["stages"]) if "stages" in r else []),
    ]


MODELS = {"default": "shipped small CLIP and decoder", "quick": "tiny CLIP and decoder (`--models quick`)"}


def _stage_rows(st: dict) -> list[str]:
    e, d = st["embed"], st["distill"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in st["distill_seconds"].items())
    engine = "local engine" if st["engine"] == "local" else f"Ray, {st['workers']} workers"
    models = MODELS.get(st["models"], f"models `{st['models']}`")
    per_pair = 1000 * e["seconds"] / st["pairs"]
    return [
        "",
        f"## The stages' driver ({engine}, {models}, budget {st['budget']}, {st['steps']} render steps)",
        "",
        "| command (fresh process, torch imported inside) | wall s | peak RSS MiB | peak over the imports' RSS, MiB |",
        "| --- | ---: | ---: | ---: |",
        _row("protosynth embed (store + corpus index)", e["seconds"], e["peak_rss"], e),
        _row(f"protosynth distill --budget {st['budget']}", d["seconds"], d["peak_rss"], d),
        "",
        f"embed: {per_pair:.3f} ms a pair. distill's stages (manifest seconds): {parts}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--format", choices=("jsonl", "wds", "parquet"), default="jsonl")
    parser.add_argument("--read", type=int, default=500)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--stages", action="store_true", help="also time protosynth embed and distill")
    parser.add_argument("--stages-only", action="store_true", help="--stages without the whole load, index and scan")
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", default="default", help="default, quick (tiny, trained here) or a models folder")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (with --engine ray)")
    parser.add_argument("--work", type=Path, default=None, help="folder for temporary files (default: the system's)")
    parser.add_argument("--corpus-dir", type=Path, default=None, help="keep the corpus, cache and models here")
    args = parser.parse_args()
    stages = args.stages or args.stages_only
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        keep = args.corpus_dir or Path(work)
        corpus = scale_corpus(args.pairs, args.format, keep)
        result = {"format": args.format, "shard_size": args.shard_size, "corpus": corpus}
        if not args.stages_only:
            result.update(measure(corpus["spec"], args.read, args.shard_size, Path(work)))
        if stages:
            flags = model_flags(args.models, keep)
            run = Stages(args.budget, args.steps, args.models, flags, args.engine, args.workers)
            cache = keep / f"cache-{result_name(args)}"  # each engine and models' own store: each embed is timed
            result["stages"] = dict(
                measure_stages(corpus["spec"], run, args.shard_size, cache, Path(work)), pairs=corpus["pairs"]
            )
    corpus.pop("spec")  # a path of this machine
    result.update(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        commit=git_commit(),
        command="python -m benchmarks.scale_index " + " ".join(sys.argv[1:]),
    )
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / f"{result_name(args)}.json", json.dumps(result, indent=1) + "\n")
    text = "\n".join(_markdown(result)) + "\n"
    write_text_atomic(RESULTS / f"{result_name(args)}.md", text)
    print(text)


def result_name(args: argparse.Namespace) -> str:
    """``scale_index-{format}-{pairs}``, then what the stages ran with where it is not the default."""
    name = f"scale_index-{args.format}-{args.pairs}"
    if args.stages or args.stages_only:
        name += "-stages" + (f"-ray{args.workers}" if args.engine == "ray" else "")
        name += "" if args.models == "default" else f"-{args.models if args.models == 'quick' else 'models'}"
    return name


if __name__ == "__main__":
    main()
