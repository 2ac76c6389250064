"""A set folder as a Hugging Face dataset: ``metadata.jsonl`` and a dataset card ``README.md``.

With these two files beside ``pairs.jsonl`` every set is an ``imagefolder`` dataset, so
``datasets.load_dataset("imagefolder", data_dir=SET)`` (or ``load_dataset(SET)``, which reads the
card's ``configs``, as the Hub does) yields image, caption, members and the pair's other plain
fields, and the folder can be pushed to the Hub as it is. ``imagefolder`` only takes the images
``metadata.jsonl`` names, so ``preview.png`` is not a row, and the card's ``configs`` name the
images and ``metadata.jsonl`` only, so neither ``pairs.jsonl`` nor ``manifest.json`` is read as data.
The card is made from the manifest alone (no timings), so the same command writes the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCardData

METADATA = "metadata.jsonl"
CARD = "README.md"
# the metadata's first columns, in this order; "image" is imagefolder's own column (from file_name)
LEAD = ("file_name", "caption", "members", "index")
SETTINGS_LEFT_OUT = ("out", "force")  # where and how a set was written, not how it was made

METHODS = {
    "pds": "prototype-guided synthesis (PDS): each image rendered by an unCLIP decoder from a k-means "
    "prototype of the corpus's CLIP embeddings, paired with a real caption",
    "select": "prototype-guided selection: each prototype's nearest real member pair, nothing rendered",
    "mtt-vl": "trajectory matching (MTT-VL): images and text embeddings optimised against expert trajectories",
    "lors": "trajectory matching with low-rank similarity (LoRS)",
    "amd": "trajectory matching (AMD)",
    "repblend": "trajectory matching on frozen-backbone heads (RepBlend)",
}


def plain(value) -> bool:
    """A value a metadata row carries as it is: a scalar, or a list of scalars (``members``)."""
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def metadata_rows(pairs: list[dict]) -> list[dict]:
    """One ``imagefolder`` row per pair: ``file_name`` (relative to the set), caption, members,
    index, then the pair's other plain fields by name; ``image`` becomes ``file_name``."""
    rows = []
    for rec in pairs:
        row = {"file_name": rec["image"], **{k: rec.get(k) for k in LEAD[1:]}}
        row.update({k: rec[k] for k in sorted(rec) if k not in row and k != "image" and plain(rec[k])})
        rows.append(row)
    return rows


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def describe_method(method: str) -> str:
    if method.startswith("coreset-"):
        return f"a coreset: real pairs chosen by {method.removeprefix('coreset-')}"
    return METHODS.get(method, method)


def card_yaml(manifest: dict, n: int) -> str:
    """The card's YAML header, built by huggingface_hub so its keys are the ones the Hub reads."""
    data = DatasetCardData(
        pretty_name=f"protosynth {manifest.get('method', 'set')}, {n} pairs",
        task_categories=["text-to-image", "image-to-text"],
        size_categories=[size_category(n)],
        tags=["dataset-distillation", "synthetic", "protosynth", "image-text-retrieval"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": ["images/*.png", METADATA]}]}],
    )
    return data.to_yaml().rstrip("\n") + "\n"  # to_yaml ends without one: the closing --- needs its own line


def how_made(manifest: dict) -> list[str]:
    """The card's bullet list: method, corpus, models, budget, render fidelity when measured."""
    corpus = manifest.get("corpus") or {}
    lines = [
        f"- **method**: `{manifest.get('method')}`, {describe_method(str(manifest.get('method')))}",
        f"- **budget**: {manifest.get('budget')} pairs, seed {manifest.get('seed')}"
        + (f", prototype mode `{manifest['mode']}`" if manifest.get("mode") else ""),
        f"- **corpus**: `{corpus.get('spec')}` ({corpus.get('images')} images, {corpus.get('pairs')} caption-level "
        f"pairs, fingerprint `{corpus.get('fingerprint')}`)",
    ]
    if manifest.get("clip"):
        clip = manifest["clip"]
        lines.append(f"- **CLIP**: `{clip.get('spec')}` (space `{clip.get('space')}`, {clip.get('dim')}-d)")
    if manifest.get("decoder"):
        dec = manifest["decoder"]
        lines.append(f"- **decoder**: `{dec.get('spec')}` ({dec.get('class')})")
    if manifest.get("protocol"):
        proto = manifest["protocol"]
        lines.append(f"- **protocol**: `{proto.get('name')}` (backbone `{proto.get('backbone')}`)")
    fid = manifest.get("render_fidelity")
    if fid:
        lines.append(
            f"- **render fidelity** (each render's CLIP embedding against the {fid.get('n')} image prototypes): "
            f"top-1 {fid.get('top1')} %, top-5 {fid.get('top5')} %, mean cosine {fid.get('mean_cosine')}"
        )
    soft = manifest.get("soft_labels")
    if soft:
        lines.append(
            f"- **soft labels**: rule `{soft.get('rule')}`, temperature {soft.get('temperature')}: "
            f"{soft.get('formula')}; another pair counts as a positive where its target is above 0.5"
            + (f" (a cosine above {soft['positive_above_cosine']})" if soft.get("positive_above_cosine") else "")
            + f": {soft.get('other_positives_per_pair_mean')} per pair on average. "
            "Stored as `similarity` in `embeddings.safetensors`; the own and soft-labels recipes of `eval retrieval` "
            "train on it with weighted BCE, the protocol's recipe ignores it"
        )
    version = (manifest.get("versions") or {}).get("protosynth")
    if version:
        lines.append(f"- **protosynth**: {version}")
    return lines


def text_lines(manifest: dict, stores_texts: bool) -> list[str]:
    """The card's lines on the text a learner trains on: the reading the set declares and, for a set
    that stores them, the per-pair caption lists each reading averages."""
    evaluation = manifest.get("evaluation") or {}
    reading = evaluation.get("text", "captions")
    lines = [
        f"- **text reading** (what `eval retrieval` trains on by default): `{reading}`, each pair's text the "
        "mean, in the learner's text space, of the captions that reading lists (a set storing embeddings in "
        "that space is trained on them instead)\n",
        *chosen_lines(evaluation),
    ]
    if stores_texts:
        lines.append(
            "- `captions_members` (aligned with `members`) and `captions_image` (aligned with `image_pairs`, "
            "every caption of the one real image a pair shows or starts from): the captions the `members` and "
            "`image` readings average, each listed caption weighing 1/len; `member_images.json`: the key and "
            "pixel digest of every member image (the train/test overlap check). No source corpus is needed "
            "to train on or score the set.\n"
        )
    return lines


def chosen_lines(evaluation: dict) -> list[str]:
    """The card's line on how the text reading was chosen (``evaluation.chosen_by``; none for a set
    that does not say)."""
    by = evaluation.get("chosen_by")
    if by == "given":
        return ["- chosen: given when the set was made (its text setting, or its preset)\n"]
    if by == "rule":
        return [f"- chosen by a fixed rule: {evaluation.get('rule')}\n"]
    if by != "val":
        return []
    on = evaluation.get("chosen_on") or {}
    scores = ", ".join(f"`{r}` {s['mean']:.2f} ± {s['std']:.2f}" for r, s in in_order(on.get("r_mean"), on))
    skipped = "".join(f"; `{r}` not scored ({why})" for r, why in in_order(on.get("unsupported"), on))
    return [
        f"- chosen on the validation split `{on.get('val')}` (fingerprint `{on.get('fingerprint')}`), the highest "
        f"val r_mean of the readings the set supports, each trained {on.get('repeats')} times for "
        f"{on.get('epochs')} epochs by the `{on.get('protocol')}` protocol's recipe (backbone "
        f"`{on.get('backbone')}`, text encoder `{on.get('text_encoder')}`): {scores}{skipped}; a tie goes to the "
        f"earlier of {', '.join(on.get('ties') or [])}\n",
        *render_lines(on.get("render")),
    ]


def in_order(readings: dict | None, on: dict) -> list[tuple]:
    """The items of a per-reading entry of ``chosen_on`` in its tie order (``ties``; others after, as
    they come), so a card made from a manifest read back from ``manifest.json`` (keys sorted:
    ``sets.distilled.reseal_set``'s) reads as one made from the manifest in memory."""
    order = list(on.get("ties") or [])
    return sorted((readings or {}).items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def render_lines(render: dict | None) -> list[str]:
    """The card's line on the set chosen among whole candidate sets (``evaluation.chosen_on.render``):
    each candidate's best reading and its val r_mean, the rule, the leader and why the chosen one won;
    none when only the reading was chosen."""
    if not render:
        return []
    scores = ", ".join(
        f"`{name}` {c['r_mean'][c['text']]['mean']:.2f} ± {c['r_mean'][c['text']]['std']:.2f} (`{c['text']}`)"
        for name, c in ((n, render["candidates"][n]) for n in render["ties"] if n in render["candidates"])
    )
    if "rule" in render:
        how = (
            f"{render['rule']}, cheapest first in the order listed: the leader is `{render['leader']}`, "
            f"`{render['chosen']}` is {render['why']}"
        )
    else:  # a set chosen before the rule: the plain argmax
        how = "a tie goes to the earlier (the cheaper)"
    return [
        f"- the set itself chosen on the same split among whole candidate sets, each at its best reading: "
        f"`{render['chosen']}` of {scores}; {how}\n"
    ]


def card_text(manifest: dict, n: int, stores_texts: bool = False) -> str:
    """The dataset card: Hub YAML, how the set was made, its files, the text it is scored with and how
    to load it."""
    settings = {k: v for k, v in (manifest.get("settings") or {}).items() if k not in SETTINGS_LEFT_OUT}
    made = how_made(manifest)
    if manifest.get("command"):
        made.append(f"- **command**: `{manifest['command']}`")
    parts = [
        f"---\n{card_yaml(manifest, n)}---\n",
        f"# A distilled image-caption set ({n} pairs)\n",
        "Made by protosynth (multimodal dataset distillation): a small set of image-caption pairs meant "
        "to train an image-text retrieval model almost as well as the corpus it summarises.\n",
        "## How it was made\n",
        "\n".join(made) + "\n",
        "Settings, as the manifest records them:\n",
        "```json\n" + json.dumps(settings, indent=2, sort_keys=True) + "\n```\n",
        "## Files\n",
        f"- `images/`: one PNG per pair; `{METADATA}`: one row per image (`file_name`, `caption`, `members`, "
        "`index` and the pair's other plain fields), read by `imagefolder`\n"
        "- `pairs.jsonl`: the full pair records; `embeddings.safetensors`: the prototype embeddings; "
        "`preview.png`: the first images; `manifest.json`: every setting and the sha256 of every file\n"
        "- `members`: indices of the real caption-level pairs of the source corpus each pair summarises, in the "
        "order protosynth reads that corpus\n",
        *text_lines(manifest, stores_texts),
        "## Loading\n",
        '```python\nfrom datasets import load_dataset\n\nds = load_dataset("imagefolder", data_dir="SET", '
        'split="train")  # or load_dataset("SET")\n```\n',
    ]
    return "\n".join(parts)


def write_hub_files(folder: Path, pairs: list[dict], manifest: dict) -> None:
    """Write ``metadata.jsonl`` and ``README.md`` into a set folder being written (its temporary)."""
    with open(folder / METADATA, "w", encoding="utf-8") as fh:
        for row in metadata_rows(pairs):
            fh.write(json.dumps(row) + "\n")
    stores_texts = all("captions_members" in p for p in pairs)
    (folder / CARD).write_text(card_text(manifest, len(pairs), stores_texts), encoding="utf-8")
