"""Render fidelity of a decoder on the world at one budget, across render settings.

    python -m benchmarks.render_fidelity [--budget 500] [--clip default] [--decoder default]

Embeds the corpus and builds the prototypes once (matched mode, seed 0), then renders every
prototype under each setting (guidance scale, steps, --init nearest with several strengths) and
measures fidelity: how often a render, re-embedded by the CLIP, is nearest its own prototype among
all prototypes (top-1/top-5), and its mean cosine. Writes
``benchmarks/results/render_fidelity.json`` and ``render_fidelity.md``.

CLIP fidelity is judged by the CLIP that made the embeddings, which CLIP-guided sampling also uses,
so that setting is graded by its own guide. An independent judge therefore checks every setting on
held-out test images whose objects are known: their CLIP embeddings are rendered, and the shipped
``ps-resnet`` world classifier (trained on the pretraining split, never on renders) reads each
render's 3x3 cells; adherence = how often each true object is found in its cell with the right
colour, shape and size ("exact"), or the right colour / shape / presence alone. The judge's score on
the real test images is its ceiling.

The judge also reads the budget's renders against their captions (the real caption nearest each
text prototype, as ``distill`` writes it): "same objects" = the (colour, shape) set it reads equals
that of the caption's image; "objects found" = the share of the caption's objects it reads anywhere
in the render. References: the nearest member images (what a perfect copy of the best member would
score; the clustering's ceiling) and the caption images themselves (the judge's own ceiling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from protosynth.corpora.shapes import WorldConfig
from protosynth.corpus import load_corpus, world_split
from protosynth.embed import embed_corpus
from protosynth.models.backbones import load_backbone
from protosynth.models.clip import load_clip
from protosynth.models.decoders import open_decoder
from protosynth.prototypes import PrototypeConfig, build_prototypes, nearest_member_pairs, nearest_rows
from protosynth.render import RenderConfig, fidelity, render_images, resolve_render
from protosynth.training.backbone import CELL_CLASSES, cell_labels, normalise
from protosynth.util.files import write_text_atomic

RESULTS = Path(__file__).parent / "results"
# Unset keys take the decoder's defaults (its render_defaults.json: the guidance scale measured best
# on held-out images); each row records the settings it resolved to.
SETTINGS = (
    [{"steps": 50, "guidance_scale": g, "clip_guidance": 0.0} for g in (1.0, 1.5, 2.0, 3.0)]
    + [{"steps": 50, "clip_guidance": c} for c in (0.01, 0.02, 0.03)]
    + [
        {"steps": 50, "clip_guidance": 0.0, "init": "nearest", "strength": 0.6},
    ]
)
SHOWN = ("guidance_scale", "steps", "clip_guidance", "init", "strength")  # the keys a row's label names


def judge_cells(judge, images: list) -> np.ndarray:
    """(N, 9) class per cell as read by the judge backbone (0 empty, else 1 + object kind)."""
    x = normalise(np.stack([np.asarray(im.convert("RGB")) for im in images]))
    with torch.no_grad():
        logits = torch.cat([judge.model(x[s : s + 256]) for s in range(0, len(x), 256)])
    return logits.view(len(x), 9, CELL_CLASSES).argmax(-1).numpy()


def adherence(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Per true object: found in its cell at all, with the right colour, shape, and exactly."""
    occ = true > 0
    p, t = pred[occ] - 1, true[occ] - 1  # kind = (colour * 4 + shape) * 2 + size
    found = p >= 0
    pct = lambda hit: round(100 * float(np.mean(hit)), 1)  # noqa: E731
    return {
        "present": pct(found),
        "colour": pct(found & (p // 8 == t // 8)),
        "shape": pct(found & ((p // 2) % 4 == (t // 2) % 4)),
        "exact": pct(p == t),
        "empty_cells_kept_empty": pct(pred[~occ] == 0),
    }


def colour_shapes(cells: np.ndarray) -> list[frozenset]:
    """Per image, the set of (colour, shape) in its non-empty cells (cell class = 1 + kind)."""
    return [frozenset(((k - 1) // 8, ((k - 1) // 2) % 4) for k in row if k > 0) for row in cells]


def caption_agreement(pred: np.ndarray, captions: list[frozenset]) -> dict[str, float]:
    """How well the objects read in each image agree with its caption's (see the module docstring)."""
    read = colour_shapes(pred)
    same = [r == c for r, c in zip(read, captions)]
    found = [len(r & c) / len(c) for r, c in zip(read, captions) if c]
    return {
        "same_objects": round(100 * float(np.mean(same)), 1),
        "objects_found": round(100 * float(np.mean(found)), 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--corpus", default="shapes")
    ap.add_argument("--clip", default="default")
    ap.add_argument("--decoder", default="default")
    ap.add_argument("--settings", default=None, help="JSON list of RenderConfig overrides (default: built-in sweep)")
    ap.add_argument("--heldout", type=int, default=256, help="Test images for the independent judge (0: skip).")
    ap.add_argument("--out", type=Path, default=RESULTS / "render_fidelity")
    args = ap.parse_args(argv)
    settings = json.loads(args.settings) if args.settings else SETTINGS

    corpus = load_corpus(args.corpus)
    clip, decoder = load_clip(args.clip), open_decoder(args.decoder)
    emb = embed_corpus(corpus, clip)
    protos = build_prototypes(emb.image.numpy(), emb.text.numpy(), PrototypeConfig(budget=args.budget))
    nearest = nearest_member_pairs(protos, emb.image.numpy(), emb.text.numpy())
    init_images = [corpus.load_image(int(corpus.pair_image[p])) for p in nearest]
    judge = test = true = targets = captions = caption_images = None
    if args.heldout and args.corpus == "shapes":  # the judge knows the default world's objects
        judge = load_backbone("ps-resnet")
        caption_pairs = nearest_rows(protos.text, emb.text.numpy())
        train_objects = world_split(WorldConfig(), "train").objects
        caption_images = [int(corpus.pair_image[p]) for p in caption_pairs]
        captions = colour_shapes(cell_labels([train_objects[i] for i in caption_images]))
        split = world_split(WorldConfig(), "test")
        test = [Image.fromarray(a) for a in split.images[: args.heldout]]
        true = cell_labels(split.objects[: args.heldout])
        targets = clip.encode_images(test)
    rows = []
    for requested in settings:
        cfg = resolve_render(RenderConfig(**requested), decoder)
        setting = {k: getattr(cfg, k) for k in SHOWN if k in requested or k in ("guidance_scale", "clip_guidance")}
        setting["default_guidance"] = "guidance_scale" not in requested
        t = time.time()
        renders = render_images(
            decoder, torch.from_numpy(protos.image_raw), cfg, init_images if cfg.init == "nearest" else None, guide=clip
        )
        seconds = time.time() - t
        row = {
            "setting": setting,
            "fidelity": fidelity(clip, renders, protos.image),
            "seconds_per_image": round(seconds / len(renders), 4),
        }
        if judge is not None:
            row["caption_agreement"] = caption_agreement(judge_cells(judge, renders), captions)
        if judge is not None and cfg.init == "noise":
            held = render_images(decoder, targets, cfg, guide=clip)
            row["heldout_fidelity"] = fidelity(clip, held, targets)
            row["judge_adherence"] = adherence(judge_cells(judge, held), true)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    # the members' own nearest images, as a reference ceiling for what re-embedding real images gives
    real = fidelity(clip, init_images, protos.image)
    judge_ceiling = adherence(judge_cells(judge, test), true) if judge is not None else None
    members_caption = caption_agreement(judge_cells(judge, init_images), captions) if judge is not None else None
    captions_caption = (
        caption_agreement(judge_cells(judge, [corpus.load_image(i) for i in caption_images]), captions)
        if judge is not None
        else None
    )
    record = {
        "command": "python -m benchmarks.render_fidelity " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": args.budget,
        "corpus": corpus.spec,
        "clip": args.clip,
        "decoder": args.decoder,
        "rows": rows,
        "nearest_real_member_reference": real,
        "heldout_images": args.heldout,
        "judge": "ps-resnet",
        "judge_on_real_test_images": judge_ceiling,
        "caption_agreement_nearest_members": members_caption,
        "caption_agreement_caption_images": captions_caption,
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(record, indent=2))
    lines = [
        "| setting | top-1 % | top-5 % | mean cosine | s / image | held-out top-1 % | judge: exact / colour / shape / "
        "present % | caption: same objects / objects found % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    agree = lambda a: f"{a['same_objects']:.1f} / {a['objects_found']:.1f}" if a else "-"  # noqa: E731
    for r in rows:
        s, f = r["setting"], r["fidelity"]
        name = ", ".join(f"{k}={v}" for k, v in s.items() if k != "default_guidance")
        name += " (guidance_scale from the decoder's render_defaults.json)" if s.get("default_guidance") else ""
        h, j = r.get("heldout_fidelity"), r.get("judge_adherence")
        extra = (
            f"{h['top1']:.1f} | {j['exact']:.1f} / {j['colour']:.1f} / {j['shape']:.1f} / {j['present']:.1f}"
            if h
            else "- | -"
        )
        lines.append(
            f"| {name} | {f['top1']:.1f} | {f['top5']:.1f} | {f['mean_cosine']:.3f} | {r['seconds_per_image']:.3f} "
            f"| {extra} | {agree(r.get('caption_agreement'))} |"
        )
    jc = judge_ceiling
    judge_cell = f"{jc['exact']:.1f} / {jc['colour']:.1f} / {jc['shape']:.1f} / {jc['present']:.1f}" if jc else "-"
    lines.append(
        f"| real images (reference: nearest member; the test images for the judge) | {real['top1']:.1f} | "
        f"{real['top5']:.1f} | {real['mean_cosine']:.3f} | - | - | {judge_cell} | {agree(members_caption)} |"
    )
    lines.append(
        f"| the caption images themselves (the judge's ceiling) | - | - | - | - | - | - | {agree(captions_caption)} |"
    )
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
