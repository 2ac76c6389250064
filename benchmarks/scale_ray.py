"""Local engine against the Ray engine on this machine, and what 100M pairs would cost on N GPUs.

    python -m benchmarks.scale_ray [--images 1000] [--workers 1,2]

1. Embedding the same world corpus (the shipped small CLIP, batch 256, shards of 256 images) into a
   fresh store: the local engine (no DataLoader workers, one torch thread), then Ray with each
   ``--workers`` count (one torch thread per actor), each store checked byte-identical to the local
   one. Ray's start-up (``ray.init`` of a local instance) is timed apart; each Ray run's seconds
   include starting its actors, which is most of the gap on a corpus this small.
2. The assignment pass's cost per pair: ``build_prototypes`` on ``--pass-rows`` random 768-d pairs
   (K = 500, k-means fitted on a 50,000-pair sample), the passes over every pair (norms and cosines,
   nearest centroid, per-prototype sums) timed inside it, numpy and faiss at one thread: one
   Ray task's core.
3. A cost model for 100M caption-level pairs: embedding on N GPUs at the published clip-retrieval
   throughput of ViT-L/14 on an A100 (312 samples/s) plus the fixed Ray overhead measured here
   (start-up and actor start), and the CPU cores that keep the GPUs fed (decoding and preprocessing
   a photo-sized JPEG, timed per image here, times the published rate); the assignment pass on C
   CPU cores at the measured per-pair cost; rendering, which is bounded by the budget, not the
   corpus: the default ``distill``'s render stage timed per image on a small world corpus (the
   shipped decoder, one torch thread), times the budget, over W render workers. The published
   decoders' GPU rates were not measured (no GPU, no weights here). A model from published and
   measured numbers, not a run.
4. The driver's own cost before any Ray stage, on a JSONL manifest of ``--index-images`` image
   files: the streamed scan (``scan_source``, what JSONL, parquet and webdataset corpora cost) and
   the whole load (``load_corpus``, what the other formats cost), seconds and retained memory per
   million pairs. ``--index-only`` remeasures this section alone, the others kept as recorded.

Writes ``benchmarks/results/scale_ray.json`` and ``scale_ray.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import open_clip
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from protosynth import passes
from protosynth.corpora.base import decode
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.engines.connect import EngineConfig
from protosynth.models.clip import load_clip
from protosynth.prototypes import PrototypeConfig, build_prototypes
from protosynth.util.files import git_commit, write_text_atomic

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


@contextmanager
def _one_torch_thread():
    """torch at one thread inside, the caller's count after: other work in the process must not run
    at one thread by accident."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_index(images: int, work: Path) -> dict:
    """Seconds and retained memory of what the driver does with a corpus before any Ray stage, on a
    JSONL manifest of ``images`` image files, one caption each, as in a web crawl (the files are
    empty, which neither opens: each is checked to exist and fingerprinted by size and time), each in
    a fresh process so the memory is its own: the whole load (``load_corpus``: what the formats still
    loaded whole cost) and the streamed scan ``distill``, ``coreset`` and ``embed`` make of a JSONL,
    parquet or webdataset corpus (``scan_source``)."""
    folder = work / "index"
    (folder / "img").mkdir(parents=True)
    words = "a the red blue small large dog cat man woman child ball street park sits runs holds near".split()
    rng = np.random.default_rng(0)
    with open(folder / "m.jsonl", "w") as f:
        for i in range(images):
            caption = " ".join(words[j] for j in rng.integers(0, len(words), 11))
            f.write(json.dumps({"image": f"img/{i:09d}.jpg", "caption": caption}) + "\n")
            (folder / "img" / f"{i:09d}.jpg").touch()
    try:
        whole = _driver_child(folder, "load_corpus(spec)")
        scan = _driver_child(folder, "scan_source(CorpusSource(spec))")
    finally:
        shutil.rmtree(folder)
    return {"whole_load": whole, "scan": scan}


def _driver_child(folder: Path, call: str) -> dict:
    """``call`` on the manifest in a fresh process: its seconds and the RSS it keeps."""
    code = (
        "import gc, json, time\n"
        "from protosynth.corpus import load_corpus, scan_source\n"
        "from protosynth.corpora.source import CorpusSource\n"
        "rss = lambda: int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) * 1024\n"
        f"spec = {str(folder / 'm.jsonl')!r}\n"
        f"before = rss(); started = time.perf_counter(); c = {call}\n"
        "seconds = time.perf_counter() - started; gc.collect()\n"
        "print(json.dumps({'pairs': c.n_pairs, 'seconds': seconds, 'bytes': rss() - before}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{call} failed:\n{out.stderr}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "call": call,
        "pairs": got["pairs"],
        "seconds": round(got["seconds"], 3),
        "retained_mb": round(got["bytes"] / 2**20),
        "seconds_per_million_pairs": round(got["seconds"] / got["pairs"] * 1e6, 1),
        "gb_per_million_pairs": round(got["bytes"] / got["pairs"] * 1e6 / 2**30, 3),
    }


def measure_decode(count: int = 200, size: tuple[int, int] = (640, 480)) -> dict:
    """Seconds per image of what an embedding worker's CPU does before the GPU: decoding a JPEG through
    the corpus readers' ``decode`` (at a reduced DCT scale, as ``embed`` asks) and ViT-L/14's
    preprocessing (open_clip's 224-pixel eval transform), one thread, on a synthetic photo-sized JPEG
    (a gradient with noise: it compresses like a photo, not like a flat image)."""
    rng = np.random.default_rng(0)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
    pixels = np.clip(ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    transform = open_clip.image_transform(224, is_train=False)
    with _one_torch_thread():
        started = time.perf_counter()
        for _ in range(count):
            transform(decode(data, "benchmark", "synthetic.jpg", min_side=224))
        seconds = (time.perf_counter() - started) / count
    return {"image": f"{w}x{h} JPEG, {len(data) // 1024} KiB", "images": count, "seconds_per_image": round(seconds, 5)}


def measure_passes(rows: int, dim: int = 768, budget: int = 500) -> dict:
    """Seconds per pair of clustering's passes over every pair (norms and cosines, nearest centroid,
    per-prototype sums), timed inside ``build_prototypes`` through its ``range_map`` on ``rows``
    random pairs (k-means fitted on a 50,000-pair sample, timed apart), every library at one thread:
    the cost of one Ray task's core."""
    pass_seconds = 0.0

    def timed(*args, **kwargs):
        nonlocal pass_seconds
        results, done = passes.map_local(*args, **kwargs), object()
        while True:
            started = time.perf_counter()
            out = next(results, done)
            pass_seconds += time.perf_counter() - started
            if out is done:
                return
            yield out

    rng = np.random.default_rng(0)
    image, text = (rng.standard_normal((rows, dim), dtype=np.float32) for _ in range(2))
    cfg = PrototypeConfig(budget=budget, max_train_points=50_000, niter=10)
    faiss_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:  # threadpoolctl (scikit-learn's dependency): numpy's BLAS at one thread too
        with threadpool_limits(1):
            started = time.perf_counter()
            build_prototypes(image, text, cfg, range_map=timed)
            total = time.perf_counter() - started
    finally:
        faiss.omp_set_num_threads(faiss_threads)
    return {
        "rows": rows,
        "dim": dim,
        "budget": budget,
        "seconds": round(total, 3),
        "pass_seconds": round(pass_seconds, 4),
        "seconds_per_million_pairs": round(pass_seconds / rows * 1e6, 2),
    }


def pass_model(passes: dict) -> list[dict]:
    """Minutes of the assignment pass over PAIRS pairs on C CPU cores (Ray tasks, one per core)."""
    per_pair = passes["seconds_per_million_pairs"] / 1e6
    return [{"cpu_cores": c, "minutes": round(PAIRS * per_pair / c / 60, 1)} for c in (1, 16, 64, 256)]


def measure_render(images: int, budget: int, work: Path) -> dict:
    """Seconds per rendered image of the default ``distill`` (its manifest's render stage) on a world
    corpus of ``images`` images, the shipped decoder, one torch thread."""
    with _one_torch_thread():
        out = distill(DistillConfig(corpus=f"shapes,n={images}", budget=budget, method="pds", out=work / "render"))
    seconds = json.loads((out / "manifest.json").read_text())["seconds"]["render"]
    return {
        "corpus_images": images,
        "budget": budget,
        "render_seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / budget, 4),
    }


def render_model(render: dict) -> list[dict]:
    """Minutes to render a budget of B images (one per prototype; best-of-N multiplies B by N) on W
    workers at the measured rate: the budget, not the corpus, sets the cost."""
    return [
        {"budget": b, "workers": w, "minutes": round(b * render["seconds_per_image"] / w / 60, 1)}
        for b in (500, 5_000, 50_000)
        for w in (1, 8)
    ]


def cost_model(measured: dict, decode: dict) -> list[dict]:
    """Hours to embed PAIRS pairs on N A100s at the published rate, plus Ray's fixed costs measured
    here, and the CPU cores that decode and preprocess fast enough to keep the N GPUs busy."""
    fixed = measured["ray_startup_seconds"] + max(0.0, measured["ray_fixed_overhead_seconds"])
    cores_per_gpu = A100_VIT_L14_SAMPLES_PER_S * decode["seconds_per_image"]
    out = []
    for n in (1, 8, 32, 128):
        seconds = PAIRS / (A100_VIT_L14_SAMPLES_PER_S * n) + fixed
        out.append(
            {
                "gpus": n,
                "hours": round(seconds / 3600, 2),
                "gpu_hours": round(seconds * n / 3600, 1),
                "decode_cores": round(cores_per_gpu * n, 1),
            }
        )
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(v) for v in row) + " |" for row in rows
    ]


def _markdown(result: dict) -> list[str]:
    m, dc, ps, rd, ix = (result[k] for k in ("measured", "decode", "passes", "render", "index"))
    runs = [
        [
            r["engine"],
            r["workers"],
            r["seconds"],
            r["images_per_s"],
            r["pairs_per_s"],
            "yes" if r["identical"] else "NO",
        ]
        for r in m["runs"]
    ]
    return [
        "# Local engine vs Ray engine (embedding)",
        "",
        f"`{result['command']}` at commit {result['commit']}, {result['machine']}.",
        f"World corpus, {m['images']} images ({m['pairs']} caption-level pairs), shipped CLIP, batch 256, "
        "shards of 256 images, one torch thread per encoder.",
        "",
        *_table(["engine", "workers", "seconds", "images/s", "pairs/s", "store identical to local"], runs),
        "",
        f"Ray start-up (`ray.init`, local instance): {m['ray_startup_seconds']} s. Fixed Ray overhead of the fastest "
        f"Ray run over the local one: {m['ray_fixed_overhead_seconds']} s (mostly starting the actors).",
        "",
        f"## Cost model: {PAIRS:,} pairs on N A100s (ViT-L/14)",
        "",
        f"Published rate {A100_VIT_L14_SAMPLES_PER_S} samples/s per A100 (clip-retrieval), linear in N, plus the "
        "fixed Ray costs above; a model, not a run.",
        "",
        f"Decoding and preprocessing one image (a {dc['image']}, the readers' `decode` at reduced DCT scale, "
        f"ViT-L/14's 224-pixel transform, one thread) took {dc['seconds_per_image'] * 1000:.2f} ms here; the last "
        "column is the cores that decode as fast as the GPUs encode (reading from storage not included):",
        "",
        *_table(
            ["GPUs", "hours", "GPU-hours", "decoding cores to keep them busy"],
            [[c["gpus"], c["hours"], c["gpu_hours"], c["decode_cores"]] for c in result["cost_model"]],
        ),
        "",
        f"## Assignment pass: {PAIRS:,} pairs on C CPU cores",
        "",
        f"`build_prototypes` on {ps['rows']:,} random {ps['dim']}-d pairs (K = {ps['budget']}, k-means fitted on a "
        f"50,000-pair sample), numpy and faiss at one thread: {ps['seconds']:.1f} s in all, of which the passes "
        f"over every pair took {ps['pass_seconds']:.2f} s, {ps['seconds_per_million_pairs']} s per million pairs on "
        "one core. Under `--engine ray` they are Ray tasks over the store's shards, one core each; the model divides "
        "that rate by C (reading the shards from shared storage is not in it: here the rows were in memory):",
        "",
        *_table(["CPU cores", "minutes"], [[c["cpu_cores"], c["minutes"]] for c in result["pass_model"]]),
        "",
        "## Rendering: B images on W workers",
        "",
        f"The default `distill` at budget {rd['budget']} on a world corpus of {rd['corpus_images']:,} images: its "
        f"render stage took {rd['render_seconds']} s, {rd['seconds_per_image']} s per image (the shipped decoder, "
        "one torch thread). One image per prototype, so the budget, not the corpus, sets the cost (best-of-N "
        "candidates multiply it by N). The published decoders' GPU rates were not measured here (no GPU, no "
        "weights); the rows below are the shipped decoder's:",
        "",
        *_table(
            ["budget", "workers", "minutes"],
            [[f"{r['budget']:,}", r["workers"], r["minutes"]] for r in result["render_model"]],
        ),
        "",
        "## The driver's corpus pass",
        "",
        f"Before any Ray stage the driver reads the corpus: a JSONL manifest of {ix['scan']['pairs']:,} image files "
        "with one caption each (a fresh process per row; every file checked to exist and fingerprinted, none opened; "
        "local disk, warm caches: on shared storage each check is a network round trip). The streamed scan is what "
        "`distill`, `coreset` and `embed` make of a JSONL, parquet or webdataset corpus; the whole load is what the "
        f"other formats (`hf:`, Karpathy JSON, CSV) still cost."
        + (f" Measured at commit {ix['commit'][:12]} (`{ix['command']}`)." if "commit" in ix else "")
        + f" Linear in the pairs, for {PAIRS:,} pairs:",
        "",
        *_table(
            ["pass", "seconds", "kept MiB", f"minutes at {PAIRS:,}", f"GiB at {PAIRS:,}"],
            [
                [
                    name,
                    r["seconds"],
                    r["retained_mb"],
                    f"{r['seconds_per_million_pairs'] * PAIRS / 1e6 / 60:.0f}",
                    f"{r['gb_per_million_pairs'] * PAIRS / 1e6:.1f}",
                ]
                for name, r in (
                    ("whole load (`load_corpus`)", ix["whole_load"]),
                    ("streamed scan (`scan_source`)", ix["scan"]),
                )
            ],
        ),
    ]


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_text_atomic(RESULTS / "scale_ray.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(RESULTS / "scale_ray.md", "\n".join(_markdown(result)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--pass-rows", type=int, default=400_000, help="Random pairs the pass timing clusters.")
    ap.add_argument("--index-images", type=int, default=200_000, help="Images of the driver-index timing.")
    ap.add_argument("--render-images", type=int, default=2_000, help="World images the render timing distils.")
    ap.add_argument("--render-budget", type=int, default=100, help="Images the render timing renders.")
    ap.add_argument("--index-only", action="store_true", help="remeasure the driver's corpus pass only")
    args = ap.parse_args()
    if args.index_only:  # the other sections as recorded; this one says its own commit
        result = json.loads((RESULTS / "scale_ray.json").read_text())
        work = Path(tempfile.mkdtemp(prefix="scale-ray-"))
        try:
            result["index"] = {**measure_index(args.index_images, work), "commit": git_commit()}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["index"]["command"] = "python -m benchmarks.scale_ray " + " ".join(sys.argv[1:])
        write(result)
        return
    work = Path(tempfile.mkdtemp(prefix="scale-ray-"))
    try:
        measured = measure(args.images, [int(w) for w in args.workers.split(",")], work)
        render = measure_render(args.render_images, args.render_budget, work)
        index = measure_index(args.index_images, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python -m benchmarks.scale_ray " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "measured": measured,
        "decode": measure_decode(),
    }
    result["cost_model"] = cost_model(measured, result["decode"])
    result["passes"] = measure_passes(args.pass_rows)
    result["pass_model"] = pass_model(result["passes"])
    result["render"] = render
    result["render_model"] = render_model(render)
    result["index"] = index
    write(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
