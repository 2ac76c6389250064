"""Render fidelity of a decoder on the world at one budget, across render settings.

    python -m benchmarks.render_fidelity [--budget 500] [--clip default] [--decoder default]

Embeds the corpus and builds the prototypes once (matched mode, seed 0), then renders every
prototype under each setting (guidance scale, steps, --init nearest with several strengths) and
measures fidelity: how often a render, re-embedded by the CLIP, is nearest its own prototype among
all prototypes (top-1/top-5), and its mean cosine. Writes
``benchmarks/results/render_fidelity.json`` and ``render_fidelity.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from protosynth.corpus import load_corpus
from protosynth.embed import embed_corpus
from protosynth.models.clip import load_clip
from protosynth.models.decoder import load_decoder
from protosynth.prototypes import PrototypeConfig, build_prototypes, nearest_member_pairs
from protosynth.render import RenderConfig, fidelity, render_images

RESULTS = Path(__file__).parent / "results"
SETTINGS = [
    {"guidance_scale": 1.0, "steps": 50},
    {"guidance_scale": 3.0, "steps": 50},
    {"guidance_scale": 5.0, "steps": 50},
    {"guidance_scale": 3.0, "steps": 50, "init": "nearest", "strength": 0.4},
    {"guidance_scale": 3.0, "steps": 50, "init": "nearest", "strength": 0.6},
    {"guidance_scale": 3.0, "steps": 50, "init": "nearest", "strength": 0.8},
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--corpus", default="shapes")
    ap.add_argument("--clip", default="default")
    ap.add_argument("--decoder", default="default")
    ap.add_argument("--settings", default=None, help="JSON list of RenderConfig overrides (default: built-in sweep)")
    ap.add_argument("--out", type=Path, default=RESULTS / "render_fidelity")
    args = ap.parse_args(argv)
    settings = json.loads(args.settings) if args.settings else SETTINGS

    corpus = load_corpus(args.corpus)
    clip, decoder = load_clip(args.clip), load_decoder(args.decoder)
    emb = embed_corpus(corpus, clip)
    protos = build_prototypes(emb.image.numpy(), emb.text.numpy(), PrototypeConfig(budget=args.budget))
    nearest = nearest_member_pairs(protos, emb.image.numpy())
    init_images = [corpus.load_image(int(corpus.pair_image[p])) for p in nearest]
    rows = []
    for setting in settings:
        cfg = RenderConfig(**setting)
        t = time.time()
        renders = render_images(decoder, torch.from_numpy(protos.image_raw), cfg,
                                init_images if cfg.init == "nearest" else None, guide=clip)
        seconds = time.time() - t
        rows.append({"setting": setting, "fidelity": fidelity(clip, renders, protos.image),
                     "seconds_per_image": round(seconds / len(renders), 4)})
        print(json.dumps(rows[-1]), flush=True)
    # the members' own nearest images, as a reference ceiling for what re-embedding real images gives
    real = fidelity(clip, init_images, protos.image)
    record = {"command": "python -m benchmarks.render_fidelity " + " ".join(sys.argv[1:] if argv is None else argv), "budget": args.budget,
              "corpus": corpus.spec, "clip": args.clip, "decoder": args.decoder, "rows": rows,
              "nearest_real_member_reference": real, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = ["| setting | top-1 % | top-5 % | mean cosine | s / image |", "|---|---|---|---|---|"]
    for r in rows:
        s, f = r["setting"], r["fidelity"]
        name = ", ".join(f"{k}={v}" for k, v in s.items())
        lines.append(f"| {name} | {f['top1']:.1f} | {f['top5']:.1f} | {f['mean_cosine']:.3f} | {r['seconds_per_image']:.3f} |")
    lines.append(f"| nearest real member image (reference) | {real['top1']:.1f} | {real['top5']:.1f} | "
                 f"{real['mean_cosine']:.3f} | - |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
