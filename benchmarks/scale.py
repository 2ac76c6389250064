"""Scale benchmark on this machine: embedding throughput, k-means at large N, render speed.

    python -m benchmarks.scale [--quick] [--corpus shapes,n=5000] [--repeats 2] [--kmeans-n 10000,100000,1000000]

1. Embedding: the pipeline (``embed_corpus`` into a temporary store: loading, preprocessing and
   tokenising in DataLoader workers, encoding, writing shards) against the bare encoder forward
   (``encode_image`` + ``encode_text``) on the same batches, preprocessed and tokenised beforehand
   (timed apart). Images/s of each and their ratio (the goal: at least 0.85), for 0 and 2 workers;
   the best of ``--repeats`` runs of each, since other jobs share the CPU. Three times: the shipped
   small CLIP (32 px input) on the in-memory world and on the same images as a file-backed JSONL
   corpus of 384 px JPEGs (decoding is work); then a real open_clip architecture (``--real-arch``,
   random weights, its own 224 px preprocessing and 49k-merge tokenizer) on 200 such JPEGs. The
   small CLIP's forward is so cheap (about 0.2 ms per image) that fixed per-item Python work
   dominates; the real one is what users' encoders cost per item.
2. k-means (``prototypes.kmeans``, K = 500, d = 768, 25 iterations) on N random float32 vectors, each
   N in a fresh spawned process: seconds and the child's peak RSS, beside the size of the data.
   Peak RSS is ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``: Linux carries the maximum
   across fork + exec, so a spawned child's ``ru_maxrss`` starts at this parent's peak (measured:
   791 MB in a child whose own peak was 29 MB).
   Then the largest N once more, written as ``.npy`` shards and clustered memory-mapped through
   ``store.Rows`` (how ``distill`` reads a store): the peak anonymous memory during k-means is what
   has to fit in RAM (mapped file pages count in RSS, but the kernel can drop them).
3. Render: seconds per image of the shipped decoder with the default ``RenderConfig``.

Writes ``benchmarks/results/scale.json`` (numbers, machine, command, commit) and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from protosynth.corpus import load_corpus
from protosynth.prototypes import kmeans
from protosynth.store import Rows, plan_shards
from protosynth.util.files import git_commit, write_text_atomic

# open_clip, and the modules that bring it or diffusers (embed, models, render, training), are imported inside
# the functions that use them, not here: the k-means children are spawned processes that re-import this
# module, and those imports would add about 300 MB (and 4 s) to each child, inflating the peak RSS it reports.
# Everything imported here a child loads anyway (importing protosynth brings torch).
RESULTS = Path(__file__).parent / "results"


def _status_kb(field: str) -> int:
    """A kB field of ``/proc/self/status``: ``VmHWM`` is this process's own peak resident set (since
    its exec), ``RssAnon`` its anonymous memory now."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _timed_kmeans(x, n: int, d: int, k: int, niter: int) -> tuple[dict, dict]:
    """One k-means of ``x`` (seed 0): the row's first columns (its size and seconds) and the stats
    k-means reports."""
    stats: dict = {}
    t = time.perf_counter()
    kmeans(x, k, niter, seed=0, stats=stats)
    seconds = time.perf_counter() - t
    return {"n": n, "d": d, "k": k, "niter": niter, "seconds": round(seconds, 2)}, stats


def _kmeans_child(n: int, d: int, k: int, niter: int) -> dict:
    """Runs in a spawned process: random data, one k-means, this process's own peak memory."""
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    before = psutil.Process().memory_info().rss
    row, stats = _timed_kmeans(x, n, d, k, niter)
    return {
        **row,
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
        "rss_before_kmeans_mb": round(before / 2**20, 1),
        "data_mb": round(x.nbytes / 2**20, 1),
        "trained_on": stats["kmeans_trained_on"],
        "gpu": stats["kmeans_gpu"],
    }


def _kmeans_mmap_child(n: int, d: int, k: int, niter: int, folder: str, shard: int) -> dict:
    """Runs in a spawned process: N random rows written as ``.npy`` shards (a chunk at a time), then
    k-means over them memory-mapped (``store.Rows``, what ``distill`` clusters). Mapped file pages
    count in RSS but the kernel can drop them, so the measure of what must fit in RAM is the peak
    *anonymous* memory during k-means, sampled every 20 ms."""
    rng, paths, lengths = np.random.default_rng(0), [], []
    for i, start in enumerate(range(0, n, shard)):
        rows = rng.standard_normal((min(shard, n - start), d), dtype=np.float32)
        paths.append(Path(folder) / f"part-{i:04d}.npy")
        np.save(paths[-1], rows)
        lengths.append(len(rows))
        del rows
    x = Rows(paths, lengths, d)
    peak, done = [_status_kb("RssAnon")], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _status_kb("RssAnon"))

    before = _status_kb("RssAnon")
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    row, stats = _timed_kmeans(x, n, d, k, niter)
    done.set()
    watcher.join()
    return {
        **row,
        "shards": len(paths),
        "data_mb": round(n * d * 4 / 2**20, 1),
        "anon_before_kmeans_mb": round(before / 1024, 1),
        "peak_anon_mb": round(max(peak[0], _status_kb("RssAnon")) / 1024, 1),
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
        "trained_on": stats["kmeans_trained_on"],
    }


def bench_kmeans_mmap(n: int, d: int, k: int, niter: int, shard: int = 100_000) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="ps-scale-mmap-"))
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(_kmeans_mmap_child, n, d, k, niter, str(folder), shard).result()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"k-means memory-mapped N={n}: {row}", file=sys.stderr, flush=True)
    return row


def bench_kmeans(sizes: list[int], d: int, k: int, niter: int) -> list[dict]:
    rows = []
    for n in sizes:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(_kmeans_child, n, d, k, niter).result())
        print(f"k-means N={n}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def bench_embed(
    corpus_spec: str, repeats: int, workers: list[int], batch_size: int, clip_spec: str = "default"
) -> dict:
    from protosynth.embed import EmbedConfig, batch_plan, embed_corpus  # noqa: PLC0415 (off k-means children)
    from protosynth.models.clip import load_clip  # noqa: PLC0415 (off k-means children)

    corpus, clip = load_corpus(corpus_spec), load_clip(clip_spec)
    cfg = EmbedConfig(batch_size=batch_size)
    plan = batch_plan(plan_shards(corpus.pair_image, corpus.n_images, cfg.shard_size), batch_size)
    t = time.perf_counter()
    images = [
        torch.stack([clip.preprocess(corpus.load_image(i, clip.input_size)) for i in range(a, b)])
        for kind, a, b in plan
        if kind == "image"
    ]
    prep = time.perf_counter() - t
    t = time.perf_counter()
    tokens = [clip.tokenizer(corpus.pair_caption[a:b]) for kind, a, b in plan if kind == "text"]
    tok = time.perf_counter() - t
    best: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="ps-scale-"))
    try:
        for _ in range(repeats):
            with torch.no_grad():
                t = time.perf_counter()
                for x in images:
                    clip.model.encode_image(x).float().cpu().numpy()
                t_img = time.perf_counter() - t
                t = time.perf_counter()
                for x in tokens:
                    clip.model.encode_text(x).float().cpu().numpy()
                t_txt = time.perf_counter() - t
            best["image_forward"] = min(best.get("image_forward", 1e9), t_img)
            best["text_forward"] = min(best.get("text_forward", 1e9), t_txt)
            for w in workers:
                out = work / f"w{w}"
                t = time.perf_counter()
                embed_corpus(corpus, clip, EmbedConfig(batch_size=batch_size, out=out, num_workers=w))
                best[f"pipeline_w{w}"] = min(best.get(f"pipeline_w{w}", 1e9), time.perf_counter() - t)
                shutil.rmtree(out)
            print(f"embed: {best}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = best["image_forward"] + best["text_forward"]
    n = corpus.n_images
    return {
        "corpus": corpus_spec,
        "clip": clip_spec,
        "input_size": clip.input_size,
        "images": n,
        "pairs": corpus.n_pairs,
        "batch_size": batch_size,
        "shard_size": cfg.shard_size,
        "repeats": repeats,
        "bare": {
            "image_forward_s": round(best["image_forward"], 2),
            "text_forward_s": round(best["text_forward"], 2),
            "seconds": round(bare, 2),
            "images_per_s": round(n / bare, 1),
            "preprocess_s": round(prep, 2),
            "tokenise_s": round(tok, 2),
        },
        "pipeline": [
            {
                "workers": w,
                "seconds": round(best[f"pipeline_w{w}"], 2),
                "images_per_s": round(n / best[f"pipeline_w{w}"], 1),
                "ratio_to_bare": round(bare / best[f"pipeline_w{w}"], 3),
            }
            for w in workers
        ],
    }


def jsonl_copy(corpus_spec: str, folder: Path) -> str:
    """The corpus's images as 384 px JPEG files with a JSONL manifest: a file-backed corpus."""
    corpus = load_corpus(corpus_spec)
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(corpus.n_images):
        corpus.load_image(i).resize((384, 384), Image.BICUBIC).save(folder / "img" / f"{i}.jpg", quality=90)
        lines.append(json.dumps({"image": f"img/{i}.jpg", "captions": corpus.captions[i]}))
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "corpus.jsonl")


def random_clip_dir(arch: str, folder: Path) -> str:
    """An open_clip ``local-dir:`` folder holding ``arch`` with random weights, as a ``--clip`` spec.

    Throughput does not depend on the weights' values, so a random-initialised real architecture
    times what a user's pretrained one costs per image (same towers, same 224 px preprocessing, same
    49k-merge tokenizer), loaded the way a user's local copy is."""
    import open_clip  # noqa: PLC0415 (off k-means children)

    from protosynth.training.clip import write_clip_dir  # noqa: PLC0415 (off k-means children)

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_clip_dir(open_clip.create_model(arch), open_clip.get_model_config(arch), folder)
    return f"local-dir:{folder}"


def bench_render(n_images: int, corpus_spec: str) -> dict:
    from protosynth.models.clip import load_clip  # noqa: PLC0415 (off k-means children)
    from protosynth.models.decoders import open_decoder  # noqa: PLC0415 (off k-means children)
    from protosynth.render import RenderConfig, render_images, resolve_render  # noqa: PLC0415 (off k-means children)

    corpus, clip, decoder = load_corpus(corpus_spec), load_clip("default"), open_decoder("default")
    embeds = clip.encode_images([corpus.load_image(i) for i in range(n_images)])
    cfg = resolve_render(RenderConfig(), decoder)  # the settings the run uses, for the record
    t = time.perf_counter()
    with torch.no_grad():
        render_images(decoder, embeds, cfg, guide=clip)
    seconds = time.perf_counter() - t
    return {
        "images": n_images,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "clip_guidance": cfg.clip_guidance,
        "batch_size": min(cfg.batch_size, n_images),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / n_images, 3),
    }


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu_cores": os.cpu_count(),
        "cpu": model,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def embed_rows(e: dict) -> list[str]:
    lines = [
        f"| {e['corpus']} | bare encoder forward (image {e['bare']['image_forward_s']} s + text "
        f"{e['bare']['text_forward_s']} s; inputs made beforehand: preprocess {e['bare']['preprocess_s']} s, "
        f"tokenise {e['bare']['tokenise_s']} s) | {e['bare']['seconds']} | {e['bare']['images_per_s']} | 1.00 |"
    ]
    for p in e["pipeline"]:
        lines.append(
            f"| {e['corpus']} | pipeline `embed_corpus`, {p['workers']} workers | {p['seconds']} | "
            f"{p['images_per_s']} | {p['ratio_to_bare']:.2f} |"
        )
    return lines


def markdown(doc: dict) -> str:
    e, lines = doc["embed"], []
    lines += [
        f"# Scale on this machine ({doc['machine']['cpu_cores']} cores, {doc['machine']['cpu']}, "
        f"torch threads {doc['machine']['torch_threads']})",
        "",
        f"Command: `{doc['command']}` (commit {doc['commit'][:12]}, {doc['seconds_total']:.0f} s wall; "
        f"load average {doc['machine']['load_average_at_start']} at start and "
        f"{doc['machine']['load_average_at_end']} at the end, this benchmark's own work included).",
        "",
        f"**Embedding** ({e['images']} images, {e['pairs']} caption-level pairs, unless the row names "
        f"another corpus), the shipped small CLIP unless the row names another, batch {e['batch_size']}, "
        f"best of {e['repeats']}. The pipeline loads, preprocesses, tokenises, encodes "
        "and writes the shards; the bare forward only encodes.",
        "",
        "| corpus | run | seconds | images/s | vs bare forward |",
        "|---|---|---|---|---|",
        *embed_rows(e),
        *(embed_rows(doc["embed_files"]) if "embed_files" in doc else []),
        *(embed_rows(doc["embed_real"]) if "embed_real" in doc else []),
    ]
    lines += [
        "",
        "**k-means** (`prototypes.kmeans`, random float32 vectors, each N in a fresh spawned process):",
        "",
        "| N | d | K | trained on | seconds | peak RSS MB | data MB | RSS before k-means MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["kmeans"]:
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['k']} | {r['trained_on']:,} | {r['seconds']} | "
            f"{r['peak_rss_mb']:.0f} | {r['data_mb']:.0f} | {r['rss_before_kmeans_mb']:.0f} |"
        )
    if "kmeans_mmap" in doc:
        m = doc["kmeans_mmap"]
        lines += [
            "",
            f"**k-means over memory-mapped shards** (N = {m['n']:,} rows in {m['shards']} `.npy` files, "
            f"{m['data_mb']:.0f} MB, read through `store.Rows` as `distill` reads a store; trained on "
            f"{m['trained_on']:,}): {m['seconds']} s; peak anonymous memory during k-means "
            f"**{m['peak_anon_mb']:.0f} MB** ({m['anon_before_kmeans_mb']:.0f} MB before it), peak RSS "
            f"{m['peak_rss_mb']:.0f} MB including mapped file pages the kernel may drop.",
        ]
    r = doc["render"]
    lines += [
        "",
        f"**Render**: shipped decoder, default RenderConfig ({r['steps']} steps, "
        f"guidance {r['guidance_scale']}, "
        f"CLIP guidance {r['clip_guidance']}), {r['images']} images in batches of {r['batch_size']}: "
        f"**{r['seconds_per_image']} s / image** ({r['seconds']} s).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Small sizes, for a smoke test (seconds, not minutes).")
    ap.add_argument("--corpus", default=None, help="World corpus for the embedding runs (default shapes,n=5000).")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts to time the pipeline with.")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--real-arch",
        default="ViT-B-32",
        help="open_clip architecture (random weights) timed on JPEG files too; 'none' skips it.",
    )
    ap.add_argument("--real-images", type=int, default=None, help="Images for the --real-arch run (default 200).")
    ap.add_argument("--kmeans-n", default=None, help="Comma-separated N (default 10000,100000,1000000).")
    ap.add_argument("--render-images", type=int, default=None, help="Images to render (default 20).")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    command = "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    corpus = args.corpus or ("shapes,n=500" if args.quick else "shapes,n=5000")
    sizes = [int(v) for v in (args.kmeans_n or ("2000,20000" if args.quick else "10000,100000,1000000")).split(",")]
    started = time.time()
    doc = {"command": command.strip(), "commit": git_commit(), "machine": machine()}
    repeats, workers = 1 if args.quick else args.repeats, [int(w) for w in args.workers.split(",")]
    doc["embed"] = bench_embed(corpus, repeats, workers, args.batch_size)
    files = Path(tempfile.mkdtemp(prefix="ps-scale-jsonl-"))
    try:
        doc["embed_files"] = bench_embed(jsonl_copy(corpus, files), repeats, workers, args.batch_size)
        doc["embed_files"]["corpus"] = f"{corpus} as 384 px JPEG files (JSONL)"
        if args.real_arch != "none":
            real_corpus = f"shapes,n={args.real_images or (20 if args.quick else 200)}"
            clip = random_clip_dir(args.real_arch, files / "real-clip")
            doc["embed_real"] = bench_embed(
                jsonl_copy(real_corpus, files / "real"), repeats, workers, args.batch_size, clip
            )
            doc["embed_real"]["corpus"] = (
                f"{real_corpus} as 384 px JPEG files, open_clip {args.real_arch} "
                f"(random weights, {doc['embed_real']['input_size']} px)"
            )
    finally:
        shutil.rmtree(files, ignore_errors=True)
    doc["kmeans"] = bench_kmeans(sizes, d=768, k=50 if args.quick else 500, niter=25)
    doc["kmeans_mmap"] = bench_kmeans_mmap(
        max(sizes), d=768, k=50 if args.quick else 500, niter=25, shard=10_000 if args.quick else 100_000
    )
    doc["render"] = bench_render(args.render_images or (4 if args.quick else 20), corpus)
    doc["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    doc["seconds_total"] = round(time.time() - started, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / "scale.json", json.dumps(doc, indent=2) + "\n")
    write_text_atomic(args.results / "scale.md", markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
