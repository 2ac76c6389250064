"""How much a prototype's members agree with the caption it is given, on the world, per mode.

    python -m benchmarks.prototype_purity [--budgets 100,200,500] [--clip default] [--seed 0]

A synthetic pair's image is rendered from the mean of its members' image embeddings, and its caption
is the real caption nearest its text prototype. When the members show different scenes, no decoder
can draw one picture that matches that caption: the mean is of several scenes. The world knows every
image's objects, so this measures the ceiling the clustering sets for "the preview matches the
captions", before any rendering:

- ``distinct_images``: median number of distinct member images per prototype;
- ``members_same_colour_shape``: mean fraction of member images whose set of (colour, shape) equals
  that of the caption's image (positions and sizes ignored);
- ``members_same_scene``: the same, with size and position too (the exact scene);
- ``majority_same_colour_shape``: fraction of prototypes where at least half the member images
  have the caption's (colour, shape) set.

Writes ``benchmarks/results/prototype_purity.json`` and ``prototype_purity.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from protosynth.corpora.shapes import WorldConfig
from protosynth.corpus import load_corpus, world_split
from protosynth.embed import embed_corpus
from protosynth.models.clip import load_clip
from protosynth.prototypes import MODES, PrototypeConfig, build_prototypes, nearest_rows
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"


def purity(
    members: list[np.ndarray],
    caption_pairs: np.ndarray,
    pair_image: np.ndarray,
    scenes: list[frozenset],
    colour_shapes: list[frozenset],
) -> dict:
    """The agreement statistics above, for prototypes given by member pair lists and caption pairs."""
    distinct, same_cs, same_scene = [], [], []
    for mem, cap in zip(members, caption_pairs):
        images = np.unique(pair_image[np.asarray(mem, dtype=np.int64)]) if len(mem) else np.array([], np.int64)
        ci = int(pair_image[cap])
        distinct.append(len(images))
        if len(images):
            same_cs.append(np.mean([colour_shapes[i] == colour_shapes[ci] for i in images]))
            same_scene.append(np.mean([scenes[i] == scenes[ci] for i in images]))
    same_cs_arr = np.asarray(same_cs)
    return {
        "prototypes": len(members),
        "distinct_images": float(np.median(distinct)),
        "members_same_colour_shape": round(100 * float(same_cs_arr.mean()), 1),
        "members_same_scene": round(100 * float(np.mean(same_scene)), 1),
        "majority_same_colour_shape": round(100 * float(np.mean(same_cs_arr >= 0.5)), 1),
    }


def markdown(doc: dict) -> str:
    lines = [
        f"Command: `{doc['command']}` (commit {doc['commit']})",
        "",
        "| budget | mode | distinct member images (median) | members with the caption's colours+shapes % "
        "| members with the caption's exact scene % | prototypes whose majority agrees % |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['budget']} | {r['mode']} | {r['distinct_images']:g} | {r['members_same_colour_shape']} "
            f"| {r['members_same_scene']} | {r['majority_same_colour_shape']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="100,200,500")
    ap.add_argument("--clip", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    corpus = load_corpus("shapes")
    world = world_split(WorldConfig(), "train")
    scenes = [frozenset((o.colour, o.shape, o.size, o.position) for o in objs) for objs in world.objects]
    colour_shapes = [frozenset((o.colour, o.shape) for o in objs) for objs in world.objects]
    if len(scenes) != corpus.n_images:
        raise SystemExit(f"world objects ({len(scenes)}) do not match the corpus images ({corpus.n_images})")
    emb = embed_corpus(corpus, load_clip(args.clip, "cpu"))
    pair_image = np.asarray(corpus.pair_image)
    rows = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        for mode in MODES:
            t0 = time.time()
            protos = build_prototypes(
                emb.image_rows, emb.text_rows, PrototypeConfig(budget=budget, mode=mode, seed=args.seed)
            )
            caption_pairs = nearest_rows(protos.text, emb.text_rows)
            row = {
                "budget": budget,
                "mode": mode,
                **purity(protos.members, caption_pairs, pair_image, scenes, colour_shapes),
                "seconds": round(time.time() - t0, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {
        "command": " ".join(["python -m benchmarks.prototype_purity", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(),
        "clip": args.clip,
        "seed": args.seed,
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / "prototype_purity.json", json.dumps(doc, indent=2))
    write_text_atomic(args.results / "prototype_purity.md", markdown(doc))


if __name__ == "__main__":
    main()
