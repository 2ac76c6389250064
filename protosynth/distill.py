"""The main job: corpus -> embeddings -> prototypes -> renders -> distilled set (PDS, training-free).

By default (``DEFAULT_METHOD``, ``method="select"``) the render stage is skipped: each prototype keeps
its nearest real member pair, which scored with or above the renders on the world's val split at
every budget (docs/evaluation.md); ``method="pds"`` renders an image for each prototype.

``distill(DistillConfig(...))`` runs the four stages, each a module of its own, and writes the set
with its manifest (every setting, per-stage seconds, peak memory, render fidelity, file hashes).
``distill_budgets(cfg, [100, 200, 500])`` writes one set per budget from one load and one
embedding pass. ``cfg.embed.fp16`` (``--fp16``) reads the float16 store that ``protosynth embed
--fp16`` writes under the same cache key, instead of embedding the corpus again in float32.

Three levers act on each synthetic pair (``docs/protocols.md`` has PDS's own rules):
- ``caption``: ``prototype`` (PDS) pairs the render with the real caption nearest the text prototype;
  ``render`` picks, among the prototype's member captions, the one the CLIP scores highest against the
  rendered image, so the caption describes what was drawn. Both are recorded in ``pairs.jsonl``.
- ``candidates``: render N images per prototype (seeds from index and candidate) and keep the one whose
  CLIP re-embedding is nearest its prototype; render cost grows N-fold.
- ``text``: how a learner reads each pair's text, recorded as the manifest's ``evaluation.text``:
  ``captions`` (its one caption) or ``members`` (the mean, in the learner's text space, of the captions
  of the real pairs the prototype summarises: a soft caption, as the optimisation methods' learned
  text embeddings are soft) or ``image`` (the mean of every caption of the member image the render
  started from, or a selection's image). ``eval retrieval`` follows the set's rule unless told otherwise.
  ``prototype`` (the preset ``pds-published``'s) reads the stored text prototype itself, as the PDS
  authors' evaluation trains on it (see ``evaluation/data.py``). Left open, a fixed rule by budget
  chooses (``text_rule``), or a ``TextChooser`` on data this module never sees: ``choose.distill_on_val``
  scores the finished set on the user's validation split, before it is renamed into place. The
  manifest's ``evaluation.chosen_by`` says which (``given``, ``rule`` or ``val``). A chooser with
  ``variants`` (``choose.RENDER_CANDIDATES``: select, or renders at two strengths) has each made as a
  whole set from the one embedding pass, scores each in a scratch folder, and only its pick is written.
- ``preset="pds-published"``: PDS as its authors' code runs it (``PRESETS``): raw-row MiniBatchKMeans,
  plain-mean prototypes, their order, renders from noise with the prototype's caption, the text
  prototype as text. Each of its settings is also a field of its own (``prototypes.py``).
- ``soft_labels``: ``none`` (default) or ``clip``, a similarity matrix between the set's pairs from their
  prototypes' CLIP cosines, stored as LoRS stores its S (``protosynth.soft_labels``), so the own and
  soft-labels recipes of ``eval retrieval`` train on it with weighted BCE; the protocol's recipe ignores it.
- ``method="select"`` (the default) renders nothing: each prototype's nearest real member pair, with its
  own caption (a training-free coreset on the same prototypes, and the start image of
  ``render.init="nearest"``).

The CLIP and the decoder come as a pair: a decoder declares the CLIP space it was trained on, and
``clip=None`` takes the CLIP it names (``sd-unclip-small`` -> ``ViT-L-14-quickgelu:openai``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .configs import (  # noqa: F401 (re-exported: their public home)
    CAPTION_RULES,
    DEFAULT_CENTRAL,
    DEFAULT_METHOD,
    IMAGE_STARTS,
    MEMBER_STARTS,
    METHODS,
    MODES,
    RENDER_ONLY,
    TEXT_RULES,
    DistillConfig,
)
from .corpora.rows import PairRows, pair_rows
from .corpora.source import flat_settings
from .corpora.spec import corpus_name
from .corpora.summary import CorpusSummary
from .corpus import Corpus, scan_source
from .embed import Embeddings, embed_corpus
from .engines.base import Engine, make_engine
from .engines.connect import check_engine
from .errors import P, ProtosynthError
from .models.clip import ClipEncoder, load_clip
from .models.decoders import UNSUPPORTED, Decoder, check_pair, open_decoder
from .prototypes import (
    PrototypeConfig,
    Prototypes,
    build_prototypes,
    central_members,
    nearest_member_pairs,
    nearest_rows,
)
from .render import RenderConfig, fidelity_scores, render_images, resolve_render
from .sets.distilled import (
    check_budget,
    check_out_dir,
    manifest_header,
    pair_tensors,
    read_manifest,
    reseal_set,
    write_distilled,
)
from .sets.texts import member_images, with_reading_texts
from .soft_labels import soft_labels
from .starts import blended_condition, start_image
from .util.runinfo import check_device, peak_rss_mb, threads, versions

log = logging.getLogger(__name__)

# PDS as the authors' code (junhyeok9712/PDS) runs it: their clustering and prototype rules (see
# prototypes.py), renders from noise conditioned on the raw image prototype with the caption nearest
# the text prototype as prompt, no CLIP guidance, and the learner reading the text prototype. A
# preset fills the fields left unset and refuses one set otherwise. The decoder settings (100 steps,
# guidance 5, noise_level 10, "text, watermark") are Stable unCLIP's defaults already; their seed 42
# is ``seed=42``.
PRESETS = {
    "pds-published": {
        "cluster_space": "raw",
        "kmeans": "minibatch",
        "prototype_norm": "mean",
        "prototype_order": "alignment",
        "caption": "prototype",
        "text": "prototype",
        "render.init": "noise",
        "render.clip_guidance": 0.0,
    }
}
# distill's own defaults for the levers, chosen on the world's validation split
# (benchmarks/results/world_val.md); a decoder that cannot start from a member image (the published
# ones) starts from noise, as PDS does.
DEFAULT_INIT = "nearest"
DEFAULT_STRENGTH = 0.3
# by how the render starts; "start" of a composite or tile: its most central member's caption
DEFAULT_CAPTION = {"nearest": "start", "composite": "start", "tile": "start", "noise": "prototype"}
# the text rule by budget, chosen on val (benchmarks/results/world_val.md): the members' mean won at 100
# pairs, the start image's captions at 200 and 500; renders from noise have no start image, and the
# members' mean beat one caption for them at 100 and 200 (500 not measured); a selection (a render's
# start image, not rendered) chose as renders from it do: members at 100, image at 200 and 500
# (benchmarks/results/world_val_readings.md)
MEMBERS_TEXT_MAX_BUDGET = 100
NOISE_MEMBERS_TEXT_MAX_BUDGET = 200
RULE_FITTED_ON = "fitted on the world's val split (benchmarks/results/world_val.md)"
SELECT_RULE_FITTED_ON = "fitted on the world's val split (benchmarks/results/world_val_readings.md)"


class TextChooser(Protocol):
    """What chooses a set's text reading on data ``distill`` does not read (``choose.ValChooser``: the
    user's validation split). ``check_corpus`` sees the corpus as soon as it is loaded, before any
    embedding or rendering; ``choose`` gets the complete set in its temporary folder, before it is
    renamed into place, and returns the reading and the record of how it was chosen."""

    def check_corpus(self, corpus: Corpus | CorpusSummary) -> None: ...

    def choose(self, folder: Path) -> tuple[str, dict]: ...

    # What else it compares, each a whole set (name, changes to the DistillConfig: ``variant_config``), in
    # cost order, cheapest first; empty: the set as configured. Each is written to a scratch folder,
    # ``choose`` scores it, and ``settle`` (given every candidate scored: name -> what ``choose``
    # returned) names the winner and returns the manifest's ``evaluation``; only the winner is written.
    variants: tuple[tuple[str, dict], ...]

    def settle(self, scored: dict[str, tuple[str, dict]]) -> tuple[str, dict]: ...


def apply_preset(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with its preset's settings filled in where unset; a setting given otherwise is an error.
    Every preset renders, so it sets ``method`` to ``pds`` over the default ``select``."""
    if cfg.preset is None:
        return cfg
    if cfg.preset not in PRESETS:
        raise ProtosynthError(f"unknown {P.preset} {cfg.preset!r}: use {' or '.join(PRESETS)}")
    if cfg.mode != "matched":
        raise ProtosynthError(
            f"{P.preset} {cfg.preset} renders matched prototypes: it needs the default {P.mode('matched')}",
            param="preset",
        )
    top, render = {"method": "pds"}, {}  # a preset is a way to render: it takes pds whatever the default
    for name, value in PRESETS[cfg.preset].items():
        field_name = name.removeprefix("render.")
        holder, into = (cfg.render, render) if name.startswith("render.") else (cfg, top)
        given = getattr(holder, field_name)
        if given is not None and given != value:
            param = P.render if holder is cfg.render else P
            raise ProtosynthError(
                f"{P.preset} {cfg.preset} sets {getattr(param, field_name)} to {value!r}; got {given!r}", param="preset"
            )
        into[field_name] = value
    return replace(cfg, render=replace(cfg.render, **render), **top)


def prototype_config(cfg: DistillConfig) -> PrototypeConfig:
    """The clustering settings of a run: its own, else protosynth's defaults (``PrototypeConfig``)."""
    rules = {
        name: getattr(cfg, name)
        for name in ("cluster_space", "kmeans", "prototype_norm", "prototype_order")
        if getattr(cfg, name) is not None
    }
    return PrototypeConfig(
        budget=cfg.budget,
        mode=cfg.mode,
        drop_fraction=cfg.drop_fraction,
        niter=cfg.kmeans_iters,
        seed=cfg.seed,
        **rules,
    )


def caption_rule(cfg: DistillConfig, render: RenderConfig) -> str:
    """The caption rule a run uses: the one asked for, else the default for how its renders start."""
    return cfg.caption or DEFAULT_CAPTION[render.init]


def text_rule(cfg: DistillConfig, render: RenderConfig) -> str:
    """The text rule a run uses: the one asked for, else by budget and by how renders start (see
    ``MEMBERS_TEXT_MAX_BUDGET``); a selection reads as a render from its image does (its val row chose
    the same readings)."""
    if cfg.text is not None:
        return cfg.text
    if cfg.method != "pds" or render.init == "nearest":
        return "members" if cfg.budget <= MEMBERS_TEXT_MAX_BUDGET else "image"
    return "members" if cfg.budget <= NOISE_MEMBERS_TEXT_MAX_BUDGET else "captions"


def text_choice(cfg: DistillConfig, render: RenderConfig) -> dict:
    """The manifest's ``evaluation`` entry without a chooser: the reading and what chose it, the
    ``text`` setting (or a preset) or ``text_rule``'s fixed rule, spelled out."""
    text = text_rule(cfg, render)
    if cfg.text is not None:
        return {"text": text, "chosen_by": "given"}
    if cfg.method != "pds" or render.init == "nearest":  # as text_rule: a selection reads as its render would
        fitted = RULE_FITTED_ON if cfg.method == "pds" else SELECT_RULE_FITTED_ON
        rule = f"members up to {MEMBERS_TEXT_MAX_BUDGET} pairs, image above, {fitted}"
    elif render.init in MEMBER_STARTS:  # no one image to read: the rule of renders from noise
        rule = (
            f"from several members' images, as from noise: members up to {NOISE_MEMBERS_TEXT_MAX_BUDGET} pairs, "
            f"captions above, {RULE_FITTED_ON}"
        )
    else:
        rule = f"from noise: members up to {NOISE_MEMBERS_TEXT_MAX_BUDGET} pairs, captions above, {RULE_FITTED_ON}"
    return {"text": text, "chosen_by": "rule", "rule": rule}


def members_levers(cfg: DistillConfig, render: RenderConfig) -> dict:
    """The condition and ``central`` a rendered set used, for its manifest: ``central`` only where a
    lever combines members (its default filled in), else None."""
    uses = render.init in MEMBER_STARTS or cfg.condition == "blend"
    return {"condition": cfg.condition or "prototype", "central": (cfg.central or DEFAULT_CENTRAL) if uses else None}


def distill_render(render: RenderConfig, decoder: Decoder) -> RenderConfig:
    """``render`` with distill's default start (``DEFAULT_INIT``, and ``DEFAULT_STRENGTH`` for a start
    from a member image) where it is left open and the decoder can start from a member image;
    everything else is the decoder's (``resolve_render``)."""
    if "init" in UNSUPPORTED[decoder.kind]:
        return render
    init = render.init or DEFAULT_INIT
    strength = render.strength if render.strength is not None or init not in IMAGE_STARTS else DEFAULT_STRENGTH
    return replace(render, init=init, strength=strength)


def set_name(cfg: DistillConfig) -> str:
    """``<corpus>[-<method>]-<preset or mode>-b<budget>-s<seed>``: the method only where neither the
    default nor the preset (every preset renders) says it."""
    method = "" if cfg.method == DEFAULT_METHOD or cfg.preset else f"-{cfg.method}"
    return f"{corpus_name(cfg.corpus.spec)}{method}-{cfg.preset or cfg.mode}-b{cfg.budget}-s{cfg.seed}"


def default_out(cfg: DistillConfig) -> Path:
    return Path("distilled") / set_name(cfg)


def validate(cfg: DistillConfig) -> Path:
    """Every check that needs no model or data, before any work starts; returns the out dir."""
    cfg.check()
    check_device(cfg.device)
    check_engine(cfg.engine)
    out = cfg.out or default_out(cfg)
    check_out_dir(out, cfg.force)
    return out


@dataclass
class Loaded:
    """What every budget of one run shares: the corpus (a summary when its store and index were
    complete: ``corpus.scan_source``), the model pair, the render settings resolved for the decoder
    (each budget sets its seed) and the embeddings."""

    corpus: Corpus | CorpusSummary
    clip: ClipEncoder
    decoder: Decoder
    render: RenderConfig
    emb: Embeddings
    seconds: dict
    engine: Engine  # where the heavy stages run (``engines.base``)


def load_stages(
    cfg: DistillConfig, budgets: list[int], engine: Engine | None = None, chooser: TextChooser | None = None
) -> Loaded:
    """Load the corpus and the CLIP/decoder pair (checked to share an embedding space), and embed
    on ``engine`` (None: the one ``cfg.engine`` names). Every check on budgets and render settings,
    and ``chooser``'s on the corpus, happens before the embedding work."""
    engine = make_engine(cfg.engine if engine is None else engine)
    t = time.time()
    decoder = open_decoder(cfg.decoder, cfg.device, cfg.dtype)  # before --skip-bad's pass over every image
    # the one resolution; a setting the decoder cannot honour fails here
    render = resolve_render(distill_render(cfg.render, decoder), decoder)
    if cfg.caption == "start" and cfg.method == "pds" and render.init not in IMAGE_STARTS:
        raise ProtosynthError(
            f"{P.caption('start')} pairs each render with the caption of the member it starts from: "
            f"it needs {P.render.init('nearest')} (or composite, tile)",
            param="caption",
        )
    if cfg.text == "image" and cfg.method == "pds" and render.init != "nearest":
        raise ProtosynthError(
            f"{P.text('image')} reads the captions of the member image each render starts from: "
            f"it needs {P.render.init('nearest')} (or {P.method('select')})",
            param="text",
        )
    # a JSONL manifest, parquet files or tar shards are streamed (a summary: embed fills missing shards from windows),
    # loaded whole only where no corpus index can be read;
    # on Ray, --skip-bad's pass decodes in Ray tasks, not here
    corpus = scan_source(cfg.corpus, engine=engine)
    for budget in budgets:
        check_budget(budget, corpus)
    if chooser is not None:
        check_variants(cfg, chooser, decoder)
        chooser.check_corpus(corpus)
    clip_spec = cfg.clip or decoder.default_clip or "default"
    clip = load_clip(clip_spec, cfg.device, arch=cfg.clip_arch, space=cfg.clip_space)
    check_pair(decoder, clip_spec, clip.space, clip.embed_dim)
    seconds = {"load": round(time.time() - t, 2)}
    t = time.time()
    emb = embed_corpus(corpus, clip, cfg.embed, engine)
    seconds["embed"] = round(time.time() - t, 2)
    return Loaded(corpus, clip, decoder, render, emb, seconds, engine)


def distill(cfg: DistillConfig, command: str | None = None) -> Path:
    """Run the whole pipeline and write the set; returns its folder. ``command``: the command line that
    ran it, recorded in the manifest and the dataset card (None from Python)."""
    return distill_budgets(cfg, [cfg.budget], command)[0]


def distill_budgets(
    cfg: DistillConfig, budgets: list[int], command: str | None = None, chooser: TextChooser | None = None
) -> list[Path]:
    """One set per budget from a single load and embedding pass. With several budgets, ``cfg.out``
    is a parent folder holding one set folder per budget. ``chooser``: what declares each set's text
    reading instead of ``text_rule`` (``choose.distill_on_val``); it needs ``cfg.text`` unset."""
    if not budgets or len(set(budgets)) != len(budgets):
        raise ProtosynthError(f"{P.budgets} needs distinct values, got {','.join(map(str, budgets))}")
    cfg = apply_preset(cfg)
    cfgs = [
        replace(
            cfg,
            budget=b,
            out=(cfg.out / set_name(replace(cfg, budget=b))) if cfg.out is not None and len(budgets) > 1 else cfg.out,
        )
        for b in budgets
    ]
    outs = [validate(c) for c in cfgs]
    if chooser is not None and cfg.text is not None:
        raise ProtosynthError(f"{P.text} is {cfg.text!r}: a text chooser has nothing to choose", param="text")
    torch.manual_seed(cfg.seed)
    engine = make_engine(cfg.engine)
    with engine.session():  # on Ray, one session for every stage and budget; none for the local engine
        loaded = load_stages(cfg, budgets, engine, chooser)
        return [_write_budget(c, out, loaded, budgets, command, chooser) for c, out in zip(cfgs, outs)]


def _write_budget(
    cfg: DistillConfig,
    out: Path,
    loaded: Loaded,
    budgets: list[int],
    command: str | None,
    chooser: TextChooser | None = None,
) -> Path:
    """Make the set of ``cfg`` and write it at ``out``; with a chooser, its text reading chosen on the
    complete set before it is renamed into place, or, if it has variants, the variant it settles on."""
    if chooser is not None and chooser.variants:
        return _write_chosen_variant(cfg, out, loaded, budgets, command, chooser)
    built = _build_budget(cfg, loaded, budgets, command)
    finish = None if chooser is None else (lambda folder, written: _chosen_text(chooser, folder, written))
    write_built(built, out, cfg.force, finish)
    log.info("wrote %s", out)
    return out


@dataclass
class Built:
    """A set made in memory, ready for ``write_distilled``."""

    images: list
    pairs: list[dict]
    tensors: dict
    manifest: dict
    text_space: str
    member_images: dict


def write_built(built: Built, out: Path, force: bool, finish=None) -> Path:
    return write_distilled(
        out,
        built.images,
        built.pairs,
        built.tensors,
        built.manifest,
        text_space=built.text_space,
        force=force,
        member_images=built.member_images,
        finish=finish,
    )


def _build_budget(cfg: DistillConfig, loaded: Loaded, budgets: list[int], command: str | None) -> Built:
    """The set of ``cfg`` (prototypes, renders or a selection, texts, manifest), in memory."""
    corpus, clip, emb = loaded.corpus, loaded.clip, loaded.emb
    rows = pair_rows(corpus, emb.corpus_index)  # captions and keys from the index's shards, when embed wrote one
    seconds = dict(loaded.seconds)
    t = time.time()
    pcfg = prototype_config(cfg)
    # row sources, memory-mapped from the store: the corpus need not fit in RAM
    # the passes over every pair: in this process, or Ray tasks over the store's shards (same bytes)
    protos = build_prototypes(emb.image_rows, emb.text_rows, pcfg, loaded.engine.map_ranges)
    # PDS's caption (the real caption nearest each text prototype): a pass over every caption row,
    # which a selection, keeping each member's own caption, does not need
    caption_idx = nearest_rows(protos.text, emb.text_rows) if cfg.method == "pds" else None
    seconds["prototypes"] = round(time.time() - t, 2)
    if cfg.method == "select":
        images, pairs, tensors, extra = _select(cfg, rows, emb, protos, seconds)
    else:
        images, pairs, tensors, extra = _synthesise(cfg, loaded, rows, protos, caption_idx, seconds)
    soft = soft_labels(cfg.soft_labels, protos, emb.image_rows, emb.text_rows, cfg.soft_temperature)
    if soft is not None:  # stored as LoRS stores S: the own and soft-labels recipes train on it
        tensors = {**tensors, "similarity": soft[0]}
    evaluation = text_choice(cfg, loaded.render)
    text = evaluation["text"]
    rules = {name: getattr(pcfg, name) for name in ("cluster_space", "kmeans", "prototype_norm", "prototype_order")}
    rules["soft_temperature"] = soft[1]["temperature"] if soft is not None else None
    cfg = replace(cfg, **rules)  # the manifest records the rules used, defaults included
    manifest = {
        **manifest_header(cfg.method, cfg.budget, cfg.mode, cfg.seed, corpus, clip),
        **extra,
        "settings": _without_no_soft_labels(
            flat_settings(
                replace(
                    cfg,
                    clip=clip.spec,
                    render=loaded.render,
                    caption=caption_rule(cfg, loaded.render),
                    text=text,
                    **members_levers(cfg, loaded.render),
                )
                if cfg.method == "pds"
                else replace(cfg, clip=clip.spec, text=text)
            )
        ),
        "evaluation": evaluation,
        **({"soft_labels": soft[1]} if soft is not None else {}),
        "prototype_stats": protos.stats,
        "embeddings_from_cache": emb.from_cache,
        "embed_compute_seconds": emb.compute_seconds,  # what the store cost, even when read from the cache
        "embeddings_dtype": "float16" if cfg.embed.fp16 else "float32",
        "versions": versions(),
        "threads": threads(),
        "budgets_in_run": budgets,
        "command": command,
    }
    manifest["seconds"] = seconds  # write_distilled adds the "write" entry
    manifest["peak_memory_mb"] = peak_rss_mb()
    pairs = with_reading_texts(pairs, rows)  # the set carries the captions its readings average
    hashes = member_images(pairs, corpus, rows)  # and its members' image digests, for the overlap check
    return Built(images, pairs, tensors, manifest, clip.space, hashes)


def _write_chosen_variant(
    cfg: DistillConfig, out: Path, loaded: Loaded, budgets: list[int], command: str | None, chooser: TextChooser
) -> Path:
    """Make each of ``chooser.variants`` from the one load and embedding pass, write it to a scratch
    folder where ``chooser`` scores it, and once every one is scored write the one it settles on at
    ``out`` from its scratch folder (``reseal_set``), its manifest saying how every candidate scored.
    Any candidate can win at the end (``settle`` is not an argmax: a later leader can bring an earlier
    candidate within its noise), so each stays on disk, and one candidate's set at most is in memory."""
    t = time.time()
    scored = {}
    with tempfile.TemporaryDirectory(prefix=f"protosynth-{out.name}-candidates-") as scratch:
        for name, changes in chooser.variants:
            folder = _write_candidate(variant_config(cfg, changes), Path(scratch) / name, loaded, budgets, command)
            scored[name] = chooser.choose(folder)
            log.info("candidate %s: %s", name, scored[name][0])
        name, evaluation = chooser.settle(scored)
        folder = Path(scratch) / name
        manifest = read_manifest(folder)
        manifest = dict(
            manifest,
            evaluation=evaluation,
            settings=dict(manifest["settings"], text=evaluation["text"]),
            seconds=dict(manifest["seconds"], choose=round(time.time() - t, 2)),
        )
        reseal_set(folder, out, manifest, cfg.force)
    log.info("wrote %s (candidate %s)", out, name)
    return out


def _write_candidate(
    vcfg: DistillConfig, folder: Path, loaded: Loaded, budgets: list[int], command: str | None
) -> Path:
    """Make the set of a chooser's variant ``vcfg`` and write it at ``folder``; its images and tensors
    are freed when this returns, before the next candidate is made."""
    built = _build_budget(vcfg, replace(loaded, render=variant_render(vcfg, loaded.decoder)), budgets, command)
    return write_built(built, folder, force=False)


def variant_config(cfg: DistillConfig, changes: dict) -> DistillConfig:
    """``cfg`` with a chooser's changes (field names, ``render.NAME`` for a render setting); a change
    to ``method`` ``select`` also drops every render-only setting, which a selection refuses."""
    fields_ = {k: v for k, v in changes.items() if not k.startswith("render.")}
    render = replace(
        cfg.render, **{k.removeprefix("render."): v for k, v in changes.items() if k.startswith("render.")}
    )
    if fields_.get("method") == "select":
        unset = DistillConfig()
        render = RenderConfig()
        fields_.update({name: getattr(unset, name) for name in RENDER_ONLY})
    out = replace(cfg, render=render, **fields_)
    out.check()
    return out


def variant_render(cfg: DistillConfig, decoder: Decoder) -> RenderConfig:
    """A variant's render settings resolved as ``load_stages`` resolves the set's."""
    return resolve_render(distill_render(cfg.render, decoder), decoder)


def check_variants(cfg: DistillConfig, chooser: TextChooser, decoder: Decoder) -> None:
    """Every variant a valid config whose render the decoder resolves, before any embedding: a variant
    that sets the strength of a start from a member needs a decoder that can start from one."""
    for name, changes in chooser.variants:
        vcfg = variant_config(cfg, changes)
        if vcfg.method == "pds" and "init" in UNSUPPORTED[decoder.kind]:
            raise ProtosynthError(
                f"candidate {name} starts each render from its nearest member, which {P.decoder} {decoder.spec} "
                f"({decoder.kind}) cannot: choose the render on val with a decoder that can",
                param="val_choose",
            )
        variant_render(vcfg, decoder)


def _chosen_text(chooser: TextChooser, folder: Path, manifest: dict) -> dict:
    """``manifest`` with the reading ``chooser`` chose on the complete set at ``folder`` (its temporary)."""
    t = time.time()
    text, record = chooser.choose(folder)
    return dict(
        manifest,
        evaluation={"text": text, "chosen_by": "val", "chosen_on": record},
        settings=dict(manifest["settings"], text=text),
        seconds=dict(manifest["seconds"], choose_text=round(time.time() - t, 2)),
    )


def _synthesise(
    cfg: DistillConfig, loaded: Loaded, rows: PairRows, protos: Prototypes, caption_idx: np.ndarray, seconds: dict
) -> tuple[list, list[dict], dict, dict]:
    """Render every prototype (best of ``cfg.candidates``) and pair it with a caption by ``cfg.caption``."""
    clip, decoder, emb = loaded.clip, loaded.decoder, loaded.emb
    t = time.time()
    rcfg = replace(loaded.render, seed=cfg.seed)
    central = central_pairs(cfg, rcfg, rows, emb, protos)
    start, init_images = render_starts(rcfg, rows, emb, protos, central)
    prompts = rows.captions(caption_idx) if decoder.uses_prompts else None
    condition = protos.image_raw if cfg.condition in (None, "prototype") else blended_condition(emb.image_rows, central)
    embeds = torch.from_numpy(condition)
    renders, got, chosen = [], None, np.zeros(cfg.budget, np.int64)
    for c in range(cfg.candidates):
        drawn = render_images(
            decoder, embeds, rcfg, init_images, guide=clip, prompts=prompts, candidate=c, engine=loaded.engine
        )
        drawn_emb = F.normalize(clip.encode_images(drawn), dim=-1)
        if got is None:
            renders, got = drawn, drawn_emb
            continue
        target = F.normalize(torch.from_numpy(protos.image), dim=-1)
        better = (drawn_emb * target).sum(-1) > (got * target).sum(-1)  # ties keep the earlier candidate
        renders = [d if b else r for r, d, b in zip(renders, drawn, better.tolist())]
        got = torch.where(better[:, None], drawn_emb, got)
        chosen[better.numpy()] = c
    seconds["render"] = round(time.time() - t, 2)

    t = time.time()
    fid = fidelity_scores(got, protos.image)
    render_idx = render_captions(got, protos, emb.text_rows, caption_idx)
    seconds["fidelity"] = round(time.time() - t, 2)

    rule = caption_rule(cfg, rcfg)
    first = None if central is None else [group[0] for group in central]  # the most central: a composite's "start"
    used = {"render": render_idx, "start": start if start is not None else first, "prototype": caption_idx}[rule]
    n = cfg.budget
    texts = rows.captions(np.concatenate([np.asarray(x, np.int64)[:n] for x in (used, caption_idx, render_idx)]))
    pairs = [
        {
            "index": i,
            "image": f"images/{i:06d}.png",
            "caption": texts[i],
            "caption_pair": int(used[i]),
            "caption_rule": rule,
            "prototype_caption": texts[n + i],
            "prototype_caption_pair": int(caption_idx[i]),
            "render_caption": texts[2 * n + i],
            "render_caption_pair": int(render_idx[i]),
            "candidate": int(chosen[i]),
            "members": [int(m) for m in protos.members[i]],
            **({"start_pair": int(start[i])} if start is not None else {}),
            **({"central_pairs": [int(m) for m in central[i]]} if central is not None else {}),
        }
        for i in range(cfg.budget)
    ]
    tensors = {
        **({"condition_raw": torch.from_numpy(condition)} if cfg.condition == "blend" else {}),
        "image_raw": torch.from_numpy(protos.image_raw),
        "image_normalised": torch.from_numpy(protos.image),
        "text_raw": torch.from_numpy(protos.text_raw),
        "text_normalised": torch.from_numpy(protos.text),
    }
    extra = {
        "decoder": {
            "spec": decoder.spec,
            "kind": decoder.kind,
            "class": type(decoder.pipe).__name__,
            "conditioning_dim": decoder.embedding_dim,
            "clip_space": decoder.clip_space,
            "prompts": "nearest real caption" if prompts is not None else None,
        },
        "render_fidelity": fid,
    }
    return renders, pairs, tensors, extra


def central_pairs(
    cfg: DistillConfig, render: RenderConfig, rows: PairRows, emb: Embeddings, protos: Prototypes
) -> list[list[int]] | None:
    """Each prototype's ``cfg.central`` (default ``DEFAULT_CENTRAL``) most central member pairs, one per
    distinct image, when a composite or tile start or a blended condition uses them; else None."""
    if render.init not in MEMBER_STARTS and cfg.condition != "blend":
        return None
    k = cfg.central or DEFAULT_CENTRAL
    members = np.unique(np.concatenate([np.asarray(m, np.int64) for m in protos.members] + [np.zeros(0, np.int64)]))
    pair_image = dict(zip(members.tolist(), rows.images(members).tolist()))  # members only, from the index
    return central_members(protos, emb.image_rows, emb.text_rows, pair_image, k)


def render_starts(
    render: RenderConfig,
    rows: PairRows,
    emb: Embeddings,
    protos: Prototypes,
    central: list[list[int]] | None,
) -> tuple[np.ndarray | None, list | None]:
    """(start pairs, start images): the nearest member's pair and image (``init="nearest"``), no pair
    and an image built from the central members' (composite, tile), or neither (from noise)."""
    if render.init == "nearest":
        start = nearest_member_pairs(protos, emb.image_rows, emb.text_rows)
        return start, list(rows.read_images(rows.images(start)))
    if render.init in MEMBER_STARTS:
        return None, [start_image(render.init, list(rows.read_images(rows.images(g)))) for g in central]
    return None, None


def render_captions(render_emb: torch.Tensor, protos: Prototypes, text_rows, fallback: np.ndarray) -> np.ndarray:
    """For each render, the member caption (pair index) the CLIP scores highest against it; a prototype
    without members keeps ``fallback`` (the caption nearest its text prototype). Ties: the lowest index."""
    out = np.asarray(fallback, np.int64).copy()
    for i, members in enumerate(protos.members):
        if len(members):
            texts = F.normalize(torch.from_numpy(np.asarray(text_rows.take(members, axis=0), np.float32)), dim=-1)
            out[i] = int(members[int(torch.argmax(texts @ render_emb[i]))])
    return out


def _select(
    cfg: DistillConfig, rows: PairRows, emb: Embeddings, protos: Prototypes, seconds: dict
) -> tuple[list, list[dict], dict, dict]:
    """Each prototype's nearest real member pair with its own image and caption; nothing rendered."""
    t = time.time()
    chosen = nearest_member_pairs(protos, emb.image_rows, emb.text_rows)
    images = list(rows.read_images(rows.images(chosen)))
    captions = rows.captions(chosen)
    pairs = [
        {
            "index": i,
            "image": f"images/{i:06d}.png",
            "caption": captions[i],
            "caption_pair": int(p),
            "selected_pair": int(p),
            "members": [int(m) for m in protos.members[i]],
        }
        for i, p in enumerate(chosen)
    ]
    tensors = pair_tensors(emb.image_rows.take(chosen, axis=0), emb.text_rows.take(chosen, axis=0))
    seconds["select"] = round(time.time() - t, 2)
    return images, pairs, tensors, {"rule": "each prototype's member pair nearest it (image plus text cosine)"}


def _without_no_soft_labels(settings: dict) -> dict:
    """The manifest's settings (JSON-ready), without the soft-label settings of a set that stores none:
    such a set, its manifest's settings and its card stay byte for byte what they were before the
    option existed (a reader takes a missing ``soft_labels`` as ``none``)."""
    if settings.get("soft_labels") == "none":
        settings = {k: v for k, v in settings.items() if k not in ("soft_labels", "soft_temperature")}
    return _jsonable(settings)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
