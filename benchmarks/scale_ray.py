"""Local engine against the Ray engine on this machine, and what 100M pairs would cost on N GPUs.

    python -m benchmarks.scale_ray [--images 1000] [--workers 1,2]

1. Embedding the same world corpus (the shipped small CLIP, batch 256, shards of 256 images) into a
   fresh store: the local engine (no DataLoader workers, one torch thread), then Ray with each
   ``--workers`` count (one torch thread per actor), each store checked byte-identical to the local
   one. Ray's start-up (``ray.init`` of a local instance) is timed apart; each Ray run's seconds
   include starting its actors, which is most of the gap on a corpus this small.
2. The assignment pass's cost per pair: ``build_prototypes`` on ``--pass-rows`` and twice as many
   random 768-d pairs (K = 500, k-means fitted on the same 50,000-pair sample size both times), the
   difference divided by the added pairs: the marginal cost of the passes over every pair (norms and
   cosines, nearest centroid, per-prototype sums) on one core.
3. A cost model for 100M caption-level pairs: embedding on N GPUs at the published clip-retrieval
   throughput of ViT-L/14 on an A100 (312 samples/s) plus the fixed Ray overhead measured here
   (start-up and actor start); the assignment pass on C CPU cores at the measured per-pair cost;
   rendering, which is bounded by the budget, not the corpus: the default ``distill``'s render stage
   timed per image on a small world corpus (the shipped decoder, one torch thread), times the budget,
   over W render workers. The published decoders' GPU rates were not measured (no GPU, no weights
   here). A model from published and measured numbers, not a run.

Writes ``benchmarks/results/scale_ray.json`` and ``scale_ray.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.engine import EngineConfig
from protosynth.files import git_commit, write_text_atomic
from protosynth.models.clip import load_clip
from protosynth.prototypes import PrototypeConfig, build_prototypes

RESULTS = Path(__file__).parent / "results"
A100_VIT_L14_SAMPLES_PER_S = 312  # clip-retrieval's published ViT-L/14 inference throughput on one A100
PAIRS = 100_000_000


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "cost.json"}


def _embed(corpus, clip, out: Path, engine: EngineConfig | None) -> float:
    cfg = EmbedConfig(out=out, shard_size=256, batch_size=256, num_workers=0)
    started = time.perf_counter()
    embed_corpus(corpus, clip, cfg, engine)
    return time.perf_counter() - started


def measure(images: int, workers: list[int], work: Path) -> dict:
    import ray  # noqa: PLC0415 -- the optional extra this benchmark is about

    torch.set_num_threads(1)
    corpus, clip = load_corpus(f"shapes,n={images}"), load_clip("default")
    rows = []
    local_s = _embed(corpus, clip, work / "local", None)
    rows.append({"engine": "local", "workers": 0, "seconds": round(local_s, 2), "identical": True})
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    startup = time.perf_counter() - started
    try:
        for w in workers:
            cpus = min(1.0, (os.cpu_count() - 1) / w)  # the actors and a decoding task fit the machine
            seconds = _embed(corpus, clip, work / f"ray{w}", EngineConfig("ray", workers=w, cpus_per_worker=cpus))
            same = _files(work / f"ray{w}") == _files(work / "local")
            rows.append({"engine": "ray", "workers": w, "cpus_per_worker": cpus, "seconds": round(seconds, 2)})
            rows[-1]["identical"] = same
    finally:
        ray.shutdown()
    for r in rows:
        r["images_per_s"] = round(images / r["seconds"], 1)
        r["pairs_per_s"] = round(corpus.n_pairs / r["seconds"], 1)
    overhead = min(r["seconds"] for r in rows if r["engine"] == "ray") - local_s
    return {
        "images": images,
        "pairs": corpus.n_pairs,
        "ray_startup_seconds": round(startup, 2),
        "runs": rows,
        "ray_fixed_overhead_seconds": round(overhead, 2),
    }


def measure_passes(rows: int, dim: int = 768, budget: int = 500) -> dict:
    """Marginal seconds per pair of clustering's passes: ``rows`` and ``2 * rows`` pairs, the same
    k-means sample size, one thread."""
    torch.set_num_threads(1)
    timings = {}
    for n in (rows, 2 * rows):
        rng = np.random.default_rng(0)
        image, text = (rng.standard_normal((n, dim), dtype=np.float32) for _ in range(2))
        cfg = PrototypeConfig(budget=budget, max_train_points=50_000, niter=10)
        started = time.perf_counter()
        build_prototypes(image, text, cfg)
        timings[n] = time.perf_counter() - started
        del image, text
    per_pair = (timings[2 * rows] - timings[rows]) / rows
    return {
        "rows": [rows, 2 * rows],
        "dim": dim,
        "budget": budget,
        "seconds": [round(timings[rows], 2), round(timings[2 * rows], 2)],
        "seconds_per_million_pairs": round(per_pair * 1e6, 2),
    }


def pass_model(passes: dict) -> list[dict]:
    """Hours of the assignment pass over PAIRS pairs on C CPU cores (Ray tasks, one per core)."""
    per_pair = passes["seconds_per_million_pairs"] / 1e6
    return [{"cpu_cores": c, "hours": round(PAIRS * per_pair / c / 3600, 2)} for c in (16, 64, 256)]


def measure_render(images: int, budget: int, work: Path) -> dict:
    """Seconds per rendered image of the default ``distill`` (its manifest's render stage) on a world
    corpus of ``images`` images, the shipped decoder, one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = distill(DistillConfig(corpus=f"shapes,n={images}", budget=budget, out=work / "render"))
    finally:  # the caller's thread count: other work in the process must not run at one thread by accident
        torch.set_num_threads(before)
    seconds = json.loads((out / "manifest.json").read_text())["seconds"]["render"]
    return {
        "corpus_images": images,
        "budget": budget,
        "render_seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / budget, 4),
    }


def render_model(render: dict) -> list[dict]:
    """Hours to render a budget of B images (one per prototype; best-of-N multiplies B by N) on W
    workers at the measured rate: the budget, not the corpus, sets the cost."""
    return [
        {"budget": b, "workers": w, "hours": round(b * render["seconds_per_image"] / w / 3600, 3)}
        for b in (500, 5_000, 50_000)
        for w in (1, 8)
    ]


def cost_model(measured: dict) -> list[dict]:
    """Hours to embed PAIRS pairs on N A100s at the published rate, plus Ray's fixed costs measured here."""
    fixed = measured["ray_startup_seconds"] + max(0.0, measured["ray_fixed_overhead_seconds"])
    out = []
    for n in (1, 8, 32, 128):
        seconds = PAIRS / (A100_VIT_L14_SAMPLES_PER_S * n) + fixed
        out.append({"gpus": n, "hours": round(seconds / 3600, 2), "gpu_hours": round(seconds * n / 3600, 1)})
    return out


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / "scale_ray.json", json.dumps(result, indent=2) + "\n")
    m = result["measured"]
    lines = [
        "# Local engine vs Ray engine (embedding)",
        "",
        f"`{result['command']}` at commit {result['commit']}, {result['machine']}.",
        f"World corpus, {m['images']} images ({m['pairs']} caption-level pairs), shipped CLIP, batch 256, "
        "shards of 256 images, one torch thread per encoder.",
        "",
        "| engine | workers | seconds | images/s | pairs/s | store identical to local |",
        "|---|---|---|---|---|---|",
    ]
    for r in m["runs"]:
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r['seconds']} | {r['images_per_s']} | {r['pairs_per_s']} | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    lines += [
        "",
        f"Ray start-up (`ray.init`, local instance): {m['ray_startup_seconds']} s. Fixed Ray overhead of the fastest "
        f"Ray run over the local one: {m['ray_fixed_overhead_seconds']} s (mostly starting the actors).",
        "",
        f"## Cost model: {PAIRS:,} pairs on N A100s (ViT-L/14)",
        "",
        f"Published rate {A100_VIT_L14_SAMPLES_PER_S} samples/s per A100 (clip-retrieval), linear in N, plus the "
        "fixed Ray costs above; a model, not a run.",
        "",
        "| GPUs | hours | GPU-hours |",
        "|---|---|---|",
    ]
    lines += [f"| {c['gpus']} | {c['hours']} | {c['gpu_hours']} |" for c in result["cost_model"]]
    ps = result["passes"]
    lines += [
        "",
        f"## Assignment pass: {PAIRS:,} pairs on C CPU cores",
        "",
        f"`build_prototypes` on {ps['rows'][0]:,} and {ps['rows'][1]:,} random {ps['dim']}-d pairs "
        f"(K = {ps['budget']}, "
        f"the same 50,000-pair k-means sample): {ps['seconds'][0]} s and {ps['seconds'][1]} s, so "
        f"{ps['seconds_per_million_pairs']} s per million pairs for the passes over every pair, on this machine "
        "(faiss and numpy may use both its cores, so one core's cost may be up to twice that). Under `--engine ray` "
        "they are Ray tasks over the store's shards; the model divides that rate by C, so it may be optimistic "
        "by up to 2x:",
        "",
        "| CPU cores | hours |",
        "|---|---|",
    ]
    lines += [f"| {c['cpu_cores']} | {c['hours']} |" for c in result["pass_model"]]
    rd = result["render"]
    lines += [
        "",
        "## Rendering: B images on W workers",
        "",
        f"The default `distill` at budget {rd['budget']} on a world corpus of {rd['corpus_images']:,} images: its "
        f"render stage took {rd['render_seconds']} s, {rd['seconds_per_image']} s per image (the shipped decoder, "
        "one torch thread). One image per prototype, so the budget, not the corpus, sets the cost (best-of-N "
        "candidates multiply it by N). The published decoders' GPU rates were not measured here (no GPU, no "
        "weights); the rows below are the shipped decoder's:",
        "",
        "| budget | workers | hours |",
        "|---|---|---|",
    ]
    lines += [f"| {r['budget']:,} | {r['workers']} | {r['hours']} |" for r in result["render_model"]]
    write_text_atomic(RESULTS / "scale_ray.md", "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--pass-rows", type=int, default=200_000, help="Pairs of the smaller pass measurement.")
    ap.add_argument("--render-images", type=int, default=2_000, help="World images the render timing distils.")
    ap.add_argument("--render-budget", type=int, default=100, help="Images the render timing renders.")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-ray-"))
    try:
        measured = measure(args.images, [int(w) for w in args.workers.split(",")], work)
        render = measure_render(args.render_images, args.render_budget, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python -m benchmarks.scale_ray " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "measured": measured,
        "cost_model": cost_model(measured),
    }
    result["passes"] = measure_passes(args.pass_rows)
    result["pass_model"] = pass_model(result["passes"])
    result["render"] = render
    result["render_model"] = render_model(render)
    write(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
