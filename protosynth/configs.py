"""The settings of the verbs, each field declared once with its default and its help (``opt``); the
baselines' are in ``protosynth.baselines.configs``.

They live apart from the modules that use them so that the command line reads them for ``--help``
without importing the models (open_clip, diffusers); each module re-exports its own
(``protosynth.distill.DistillConfig``). Help names other parameters through ``P``; the command line
spells them as its flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from .corpora.source import CorpusReading, CorpusSource, ReadsCorpus, reading_field, source
from .errors import P, Param, ProtosynthError
from .util.options import (
    ALSO_TEST,
    CAPTION_COLUMN_HELP,
    CLIP_ARCH_HELP,
    CLIP_SPACE_HELP,
    EVAL_CAPTION_COLUMN_HELP,
    EVAL_IMAGE_COLUMN_HELP,
    EVAL_IMAGE_ROOT_HELP,
    EVAL_SKIP_BAD_HELP,
    IMAGE_COLUMN_HELP,
    IMAGE_ROOT_HELP,
    SKIP_BAD_HELP,
    opt,
)

RAY = f"With {P.engine('ray')}:"
ONLY = ("all", "clip", "decoder")  # what `models train` trains
ENGINES = ("local", "ray")  # EngineConfig.engine
INITS = ("noise", "nearest", "composite", "tile")  # how a render starts (RenderConfig.init)
IMAGE_STARTS = INITS[1:]  # the starts from real images, noised to ``strength``
MEMBER_STARTS = ("composite", "tile")  # the starts built from several members (``starts``)
CONDITIONS = ("prototype", "blend")  # what the decoder is conditioned on (DistillConfig.condition)
DEFAULT_CENTRAL = 3  # members a composite, tile or blend combines when none is given: odd, a medoid's majority
# training-free soft labels a set may store (DistillConfig.soft_labels; ``protosynth.soft_labels``)
SOFT_LABELS = ("none", "clip", "members")
# each rule's temperature when none is given: the val argmax of a 3-value grid at 100 pairs, soft-labels recipe
# (benchmarks/results/world_val_soft_labels.md): clip 0.1 / 0.25 / 0.5 scored 23.3 / 23.6 / 23.0, members
# 0.05 / 0.2 / 0.5 scored 23.20 / 23.19 / 23.10; choices inside the noise (the values differ by less than
# one std), every one 8 points under the same sets trained with InfoNCE (31.4)
DEFAULT_SOFT_TEMPERATURE = {"clip": 0.25, "members": 0.05}
MODES = ("matched", "joint", "image", "text")  # prototype modes (DistillConfig.mode)
METHODS = ("pds", "select")  # DistillConfig.method
DEFAULT_METHOD = "select"
CAPTION_RULES = ("prototype", "render", "start")  # DistillConfig.caption
TEXT_RULES = ("captions", "members", "image", "prototype")  # DistillConfig.text
# the PDS authors' clustering rules (clustering.PrototypeConfig): protosynth's default first, then the PDS code's
CLUSTER_SPACES = ("unit", "raw")
KMEANS = ("faiss", "minibatch")
PROTOTYPE_NORMS = ("members", "mean")
PROTOTYPE_ORDERS = ("matching", "alignment")
CORESET_METHODS = ("random", "herding", "kcenter", "forgetting")  # CoresetConfig.method
# how a learner reads a set's text (EvalConfig.text) and how it trains (EvalConfig.recipe)
TEXT_MODES = ("auto", "captions", "members", "image", "image-captions", "stored", "prototype")
# DD-Ranking's toggles: everything a set stores (own), nothing (protocol), or one part at a time
RECIPES = ("own", "protocol", "soft-labels", "learned-lrs")
# faiss (k-means) and numpy's legacy seeding take a 32-bit signed seed: the one range every consumer accepts
SEED_MAX = 2**31 - 1


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ProtosynthError(f"{P.seed} must be an integer from 0 to {SEED_MAX}, got {seed!r}")


def check_prototype_rules(
    mode: str, cluster_space: str, kmeans: str, prototype_norm: str, prototype_order: str
) -> None:
    """One clear error for an unknown mode or rule, or a PDS-code rule outside ``matched`` mode."""
    if mode not in MODES:
        raise ProtosynthError(f"unknown {P.mode} {mode!r}: use one of {', '.join(MODES)}")
    for param, value, allowed in (
        (P.cluster_space, cluster_space, CLUSTER_SPACES),
        (P.kmeans, kmeans, KMEANS),
        (P.prototype_norm, prototype_norm, PROTOTYPE_NORMS),
        (P.prototype_order, prototype_order, PROTOTYPE_ORDERS),
    ):
        if value not in allowed:
            raise ProtosynthError(f"unknown {param} {value!r}: use {' or '.join(allowed)}")
    default = (CLUSTER_SPACES[0], KMEANS[0], PROTOTYPE_NORMS[0], PROTOTYPE_ORDERS[0])
    if (cluster_space, kmeans, prototype_norm, prototype_order) != default and mode != "matched":
        raise ProtosynthError(
            f"{P.cluster_space}, {P.kmeans}, {P.prototype_norm} and {P.prototype_order} other than "
            f"their defaults follow the PDS code, which has only {P.mode('matched')}",
            param="mode",
        )


@dataclass
class EngineConfig:
    """Where embedding, clustering and rendering run: this process or a Ray cluster (the same set)."""

    engine: str = opt(
        "local",
        help="Where the heavy stages run: local (this process) or ray (a Ray cluster; pip install -e '.[ray]').",
    )
    # Ray cluster to join; None: start a local Ray instance
    address: str | None = opt(
        None,
        help=f"{RAY} the Ray cluster to join (auto, HOST:PORT or ray://HOST:PORT; default: start a local "
        "Ray instance).",
    )
    workers: int | None = opt(None, help=f"{RAY} actors that embed and actors that render (default 1).")
    # GPUs each actor reserves (the encoder/decoder then runs on cuda)
    gpus_per_worker: float = opt(0.0, help=f"{RAY} GPUs each worker actor reserves (>0: it runs on cuda).")
    # CPUs each actor (and each decoding task) reserves; its torch threads
    cpus_per_worker: float = opt(1.0, help=f"{RAY} CPUs each worker actor reserves (also its torch threads).")

    @property
    def on_ray(self) -> bool:
        return self.engine == "ray"

    @property
    def n_workers(self) -> int:
        return self.workers or 1

    def check(self) -> None:
        """The values alone (``engines.connect.check_engine`` adds that Ray is installed and answers)."""
        if self.engine not in ENGINES:
            raise ProtosynthError(f"unknown {P.engine} {self.engine!r}: use local or ray")
        if not self.on_ray:
            for param, value, default in (
                (P.address, self.address, None),
                (P.workers, self.workers, None),
                (P.gpus_per_worker, self.gpus_per_worker, 0.0),
            ):
                if value != default:
                    raise ProtosynthError(f"{param} needs {P.engine('ray')}")
            return
        if self.workers is not None and self.workers < 1:
            raise ProtosynthError(f"{P.workers} must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ProtosynthError(f"{P.gpus_per_worker} must not be negative, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ProtosynthError(f"{P.cpus_per_worker} must be positive, got {self.cpus_per_worker}")


# each RenderConfig field ``check`` names: as a parameter of its own (``render_images``) and as a
# field of a ``DistillConfig``'s ``render``
RENDER_REFS = {
    "init": (P.init, P.render.init),
    "strength": (P.strength, P.render.strength),
    "steps": (P.steps, P.render.steps),
    "noise_level": (P.noise_level, P.render.noise_level),
    "clip_guidance": (P.clip_guidance, P.render.clip_guidance),
    "size": (P.size, P.render.size),
    "super_res_steps": (P.super_res_steps, P.render.super_res_steps),
    "batch_size": (P.batch_size, P.render.batch_size),
    "guidance_scale": (P.guidance_scale, P.render.guidance_scale),
}


@dataclass
class RenderConfig:
    """``None`` = the decoder's default (``models.unclip.RENDER_DEFAULTS``, or the folder's
    ``render_defaults.json``)."""

    steps: int | None = opt(
        None,
        help="Denoising steps per image (default: the decoder's; 100 for Stable unCLIP as in PDS, 50 for the small "
        "decoder).",
    )
    guidance_scale: float | None = opt(
        None,
        flag="guidance",
        help="Classifier-free guidance scale (default: 5 for Stable unCLIP, 8 for Karlo; the small decoder's measured "
        "one in its render_defaults.json, else 3).",
    )
    noise_level: int | None = opt(
        None,
        help="Noise augmentation of the image embedding, 0-999 (default: 10 for Stable unCLIP, 0 for the small "
        "decoder).",
    )
    negative_prompt: str | None = opt(
        None, help="Stable unCLIP negative prompt (default: 'text, watermark'; '' for none)."
    )
    # output side in pixels (published decoders: 224, the real protocol's)
    size: int | None = opt(
        None,
        help="Resize renders to SIZE x SIZE (default: 224 for the published decoders, the small decoder's own 32).",
    )
    super_res_steps: int | None = opt(None, help="Karlo super-resolution steps (default 7).")
    # CLIP-guided sampling with the embeddings' own CLIP (small decoder; see pixel_embedder). 0 = the
    # decoder alone (pure PDS). 0.01 measured best with the shipped decoder at budget 500: render
    # fidelity 83.0 -> 94.2 % top-1, and the independent judge agrees a little (docs/evaluation.md).
    clip_guidance: float | None = opt(
        None,
        help="Small decoder: CLIP-guided sampling step size (pixel RMS) of each x0 nudge toward the prototype "
        "(default 0.01); 0 = the decoder alone (pure PDS).",
    )
    # images per decoder call (the published decoders' default is small: GPU memory)
    batch_size: int | None = opt(
        None,
        help="Images rendered per batch (default: 100 for the small decoder, 4 for the published ones). Each image "
        "has its own seed, but another batch size may change a pixel by a level; the manifest records it.",
    )
    # "noise", or img2img (small decoder) from "nearest" (the prototype's nearest member image),
    # "composite" (the pixel-wise medoid of its most central member images) or "tile" (those images
    # downscaled into one grid); distill builds the last two (``starts``)
    init: str | None = opt(
        None,
        help="noise, or (small decoder) start from an image: nearest (the prototype's nearest member image), "
        f"composite (the pixel-wise medoid of its {P.central} most central member images) or tile (those images "
        "downscaled into one grid) (default: the decoder's; noise for the published ones).",
    )
    # with a start image: how far it is noised, in (0, 1]
    strength: float | None = opt(
        None,
        help=f"With a start image ({P.init} nearest, composite or tile): how far to noise it, (0, 1] (default: the "
        "decoder's).",
    )
    seed: int = 0

    def check(self, nested: bool = False) -> None:
        """The values alone (``None``: the decoder's default, checked when its folder is read); what a
        decoder cannot do is checked against the loaded decoder (``render.resolve_render``). ``nested``:
        the settings are a ``DistillConfig``'s ``render``, and the errors name ``P.render.*``."""
        at = {name: refs[nested] for name, refs in RENDER_REFS.items()}
        if self.init is not None and self.init not in INITS:
            raise ProtosynthError(f"unknown {at['init']} {self.init!r}: use {' or '.join(INITS)}")
        if self.strength is not None and not 0.0 < self.strength <= 1.0:
            raise ProtosynthError(f"{at['strength']} must be in (0, 1], got {self.strength}")
        for option, value, low, high in (
            (at["steps"], self.steps, 1, 1000),
            (at["noise_level"], self.noise_level, 0, 999),
            (at["clip_guidance"], self.clip_guidance, 0, 1),
            (at["size"], self.size, 8, 4096),
            (at["super_res_steps"], self.super_res_steps, 1, 1000),
        ):
            if value is not None and not low <= value <= high:
                raise ProtosynthError(f"{option} must be between {low} and {high}, got {value}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ProtosynthError(f"{at['batch_size']} must be at least 1, got {self.batch_size}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ProtosynthError(f"{at['guidance_scale']} must not be negative, got {self.guidance_scale}")


@dataclass
class EmbedConfig:
    batch_size: int = opt(
        256,
        help="Images (or captions) per encoder batch. Part of the store's key: another batch size can change "
        "the last bits of the numbers, so it makes its own store (distill reads the one of 256).",
    )
    use_cache: bool = True  # read and write the store in the cache; False: compute in memory (unless out)
    # the store folder; None: cache_dir()/embeddings/<key>[-fp16]
    out: Path | None = opt(None, help="Store folder (default: the cache, where distill finds it).")
    shard_size: int = opt(4096, help="Images per shard: the unit of work a kill can lose.")
    # store float16 (half the disk); readers still return float32
    fp16: bool = opt(False, help="Store float16 (half the disk); readers still get float32.")
    # DataLoader processes that load, preprocess and tokenise; None: see ``workers``
    num_workers: int | None = opt(None, flag="workers")

    def check(self) -> None:
        """The values alone (``embed.check_config`` adds that ``out`` can be written)."""
        for param, value, low in (
            (P.batch_size, self.batch_size, 1),
            (P.shard_size, self.shard_size, 1),
            (P.num_workers, 0 if self.num_workers is None else self.num_workers, 0),
        ):
            if value < low:
                raise ProtosynthError(f"{param} must be at least {low}, got {value}")


@dataclass
class DistillConfig(ReadsCorpus):
    budget: int = opt(
        500,
        help="Pairs in the set; a list such as 100,200,500 writes one set per budget from one embedding pass.",
    )
    corpus: CorpusSource = source()
    # None: the CLIP the decoder was trained on
    clip: str | None = opt(
        None,
        help="CLIP spec: default, small:DIR, local-dir:DIR, ARCH:PRETRAINED (e.g. ViT-L-14-quickgelu:openai) or a "
        f"checkpoint file with {P.clip_arch}. Default: the CLIP the decoder expects.",
    )
    decoder: str = opt(
        "default",
        help="Decoder spec: default, small:DIR, sd-unclip-small, sd-unclip-h, karlo, or a save_pretrained folder.",
    )
    clip_arch: str | None = opt(None, help=CLIP_ARCH_HELP)  # open_clip architecture of a checkpoint file (clip)
    clip_space: str | None = opt(None, help=CLIP_SPACE_HELP)  # declared space of such a file (e.g. ViT-L-14:openai)
    # decoder weights: float16 on CUDA for the published pipelines
    dtype: str = opt(
        "auto", help="Decoder weights: auto (float16 on CUDA for the published decoders), float32, float16, bfloat16."
    )
    mode: str = opt("matched", help="Prototype mode: matched (PDS), joint, image or text.")
    # DEFAULT_METHOD: each prototype's nearest real member pair, nothing rendered ("select"), chosen on
    # val over rendering ("pds"), whose render gain stayed inside the noise (docs/evaluation.md)
    method: str = opt(
        DEFAULT_METHOD,
        help="select (default: keep each prototype's nearest real member pair, nothing rendered; it scored with "
        "or above rendering on the world's val split at 100, 200 and 500 pairs) or pds (render an image for "
        "each prototype with the decoder).",
    )
    # the caption paired with each render: "prototype" (PDS), "render" or, with a start image, "start"
    # (the caption of the member the render started from, or of a composite's or tile's most central
    # member); None: DEFAULT_CAPTION for the render's start
    caption: str | None = opt(
        None,
        help="Caption of each render: prototype (the real caption nearest the text prototype, as PDS), render (the "
        f"member caption the CLIP scores highest against the render) or, with {P.render.init('nearest')}, start "
        "(the caption of the member image the render started from; with composite or tile, of the most central "
        "member). pairs.jsonl records the first two.",
    )
    # what the decoder is conditioned on (CONDITIONS): the image prototype, or a blend of the
    # ``central`` most central members' image embeddings (``starts.blended_condition``)
    condition: str | None = opt(
        None,
        help=f"What the decoder is conditioned on: prototype (default: the image prototype) or blend (the mean "
        f"direction of the {P.central} most central members' CLIP image embeddings at their mean norm).",
    )
    # k of the levers that combine several members (MEMBER_STARTS, condition "blend"); None: DEFAULT_CENTRAL
    central: int | None = opt(
        None,
        help=f"How many of each prototype's most central member images (distinct images, by image plus text "
        f"cosine) {P.render.init} composite or tile and {P.condition('blend')} combine (default {DEFAULT_CENTRAL}).",
    )
    # a similarity matrix between the set's pairs, stored as LoRS stores its S ("similarity"), so the
    # soft-labels and own recipes train on it with weighted BCE (``protosynth.soft_labels``)
    soft_labels: str = opt(
        "none",
        help="Store training-free soft labels with the set: none (default), clip (S[i,j] = exp((c_ij - 1) / T), "
        "c_ij the mean of the image-image and text-text CLIP cosines of pairs i and j's prototypes) or members "
        "(S[i,j] = the mean over i's member pairs of min(1, exp((s(j) - s(i)) / T)), s(c) a member's image plus "
        f"text cosine to prototype c), T = {P.soft_temperature}; the own and soft-labels recipes of `eval "
        "retrieval` train on them with weighted BCE, the protocol's recipe ignores them.",
    )
    # the rule's temperature; None: DEFAULT_SOFT_TEMPERATURE[soft_labels]
    soft_temperature: float | None = opt(
        None,
        help=f"With {P.soft_labels} clip or members: the temperature T, > 0 (clip: another pair is a positive, "
        f"target > 0.5, when its cosine exceeds 1 - T ln 2) (default: clip {DEFAULT_SOFT_TEMPERATURE['clip']}, "
        f"members {DEFAULT_SOFT_TEMPERATURE['members']}).",
    )
    # renders per prototype; the one nearest its prototype is kept
    candidates: int = opt(
        1,
        help="Render N images per prototype and keep the one whose CLIP embedding is nearest its prototype (render "
        "cost grows N-fold).",
    )
    # how a learner reads each pair's text (TEXT_RULES); None: text_rule's default
    text: str | None = opt(
        None,
        help="How a learner reads each pair's text, recorded in the manifest and followed by `eval retrieval`: "
        "captions (its one caption), members (the mean of the captions of the real pairs its prototype "
        "summarises) or image (the mean of every caption of the member image a render starts from), in the "
        "learner's text space, or prototype (the stored text prototype, as the PDS authors' evaluation) "
        "(default: members up to 100 pairs, image above; from noise: members up to 200, captions above).",
    )
    # a preset that sets the PDS authors' rules below and more (distill.PRESETS)
    preset: str | None = opt(
        None,
        help="pds-published: PDS as its authors' code runs it (raw-row MiniBatchKMeans, plain-mean prototypes "
        "ordered by alignment, renders from noise with the prototype's caption, text read as the prototype); it "
        "fills the options below and refuses a conflicting one.",
    )
    # the PDS authors' rules, one field each (prototypes.py; None: protosynth's default)
    cluster_space: str | None = opt(
        None, help="Rows k-means clusters: unit (default: L2-normalised) or raw (the PDS code)."
    )
    kmeans: str | None = opt(
        None, help="faiss (default) or minibatch (sklearn MiniBatchKMeans, batch 10000, 20 inits: the PDS code)."
    )
    prototype_norm: str | None = opt(
        None,
        help="members (default: the members' mean direction at their mean raw norm) or mean (the plain mean of the "
        "raw members; an empty match keeps the k-means centres: the PDS code).",
    )
    prototype_order: str | None = opt(
        None, help="matching (default: image cluster order) or alignment (image-text cosine, highest first: PDS)."
    )
    seed: int = 0
    out: Path | None = opt(
        None,
        help="Output folder (default: distilled/<corpus>[-select]-<mode>-b<budget>-s<seed>); with several budgets, "
        "the folder holding one set per budget.",
    )
    force: bool = opt(False, help=f"Replace an earlier distilled set at {P.out} (never another folder).")
    device: str = "cpu"
    render: RenderConfig = opt(factory=RenderConfig)
    embed: EmbedConfig = opt(factory=EmbedConfig)  # fp16: read (or write) the float16 store
    drop_fraction: float = 0.2
    kmeans_iters: int = 25
    # where embedding, clustering and rendering run: this process or a Ray cluster (the same set)
    engine: EngineConfig = opt(factory=EngineConfig)

    def check(self) -> None:
        """The values alone, before any work (``distill.validate`` adds the device, that Ray answers
        and the out folder; the decoder's abilities are checked against the loaded decoder)."""
        if self.budget < 1:
            raise ProtosynthError(f"{P.budget} must be at least 1, got {self.budget}")
        if self.mode not in MODES:
            raise ProtosynthError(f"unknown {P.mode} {self.mode!r}: use one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise ProtosynthError(f"unknown {P.method} {self.method!r}: use {' or '.join(METHODS)}")
        if self.caption is not None and self.caption not in CAPTION_RULES:
            raise ProtosynthError(f"unknown {P.caption} {self.caption!r}: use {' or '.join(CAPTION_RULES)}")
        if self.text is not None and self.text not in TEXT_RULES:
            raise ProtosynthError(f"unknown {P.text} {self.text!r}: use {' or '.join(TEXT_RULES)}")
        if self.text == "prototype" and self.method != "pds":
            raise ProtosynthError(
                f"{P.text('prototype')} reads a rendered set's text prototypes: {P.method('select')} keeps real pairs",
                param="text",
            )
        check_prototype_rules(
            self.mode,
            self.cluster_space or CLUSTER_SPACES[0],
            self.kmeans or KMEANS[0],
            self.prototype_norm or PROTOTYPE_NORMS[0],
            self.prototype_order or PROTOTYPE_ORDERS[0],
        )
        if self.candidates < 1:
            raise ProtosynthError(f"{P.candidates} must be at least 1, got {self.candidates}")
        self.check_members_levers()
        self.check_soft_labels()
        if self.method == "select":
            self.check_nothing_rendered()
        self.render.check(nested=True)
        check_seed(self.seed)
        self.engine.check()

    def check_members_levers(self) -> None:
        """``condition`` and ``central``: a known condition, and a ``central`` of at least 1 given only
        with a lever that combines members (else it would be recorded for nothing)."""
        if self.condition is not None and self.condition not in CONDITIONS:
            raise ProtosynthError(f"unknown {P.condition} {self.condition!r}: use {' or '.join(CONDITIONS)}")
        if self.central is None:
            return
        if isinstance(self.central, bool) or not isinstance(self.central, int) or self.central < 1:
            raise ProtosynthError(f"{P.central} must be an integer of at least 1, got {self.central!r}")
        if self.render.init not in MEMBER_STARTS and self.condition != "blend":
            raise ProtosynthError(
                f"{P.central} needs {P.render.init} composite or tile, or {P.condition('blend')}", param="central"
            )

    def check_soft_labels(self) -> None:
        """A known rule, and a finite positive temperature given only with the rule that uses it (else
        it would be recorded for nothing)."""
        if self.soft_labels not in SOFT_LABELS:
            raise ProtosynthError(f"unknown {P.soft_labels} {self.soft_labels!r}: use {', '.join(SOFT_LABELS)}")
        t = self.soft_temperature
        if t is None:
            return
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ProtosynthError(f"{P.soft_temperature} must be a positive number, got {t!r}")
        if self.soft_labels == "none":
            raise ProtosynthError(
                f"{P.soft_temperature} needs {P.soft_labels('clip')} or {P.soft_labels('members')}",
                param="soft_temperature",
            )

    def check_nothing_rendered(self) -> None:
        """A selection renders nothing: a render setting given with it would be recorded in the
        manifest for images nobody drew, so each one is refused by name."""
        unset_cfg, unset_render = DistillConfig(), RenderConfig()
        given = [name for name in RENDER_ONLY if getattr(self, name) != getattr(unset_cfg, name)]
        given += [f"render.{n}" for n in RENDER_SETTINGS if getattr(self.render, n) != getattr(unset_render, n)]
        if given:
            names = ", ".join(str(Param(name)) for name in given)
            raise ProtosynthError(
                f"{P.method('select')} (the default) renders nothing: {names} do not apply; pass {P.method('pds')} to "
                "render",
                param="method",
            )


@dataclass
class TextChoiceConfig:
    """How ``distill`` chooses a set's text reading on the user's own validation split
    (``protosynth.choose``): the finished set is scored on ``val`` under every reading it supports
    (``CANDIDATES``), each by the protocol's recipe, and the best val r_mean is declared. ``val=None``:
    the fixed rule (``distill.text_rule``) chooses, as before."""

    val: str | None = opt(
        None,
        help="Choose the text reading on this validation corpus (e.g. shapes:val, or a file corpus of your own "
        f"held-out pairs, read with {P.image_root}, {P.image_column} and {P.caption_column}): the set is scored "
        "there under each reading it supports (captions, members, image) and the best r_mean is declared in the "
        f"manifest with every candidate's score (default: a fixed rule, see {P.text}); {P.val_choose} adds "
        "whether to render.",
    )
    val_repeats: int = opt(2, help=f"Models trained per candidate reading on {P.val} (seeds seed..seed+R-1).")
    # what val chooses (VAL_CHOICES): the text reading alone, or also how the set is made (render or not,
    # at which strength: choose.RENDER_CANDIDATES)
    val_choose: tuple[str, ...] = opt(
        ("text",),
        help=f"What {P.val} chooses, comma-separated: text (the reading, default) or text,render (also whether to "
        "render and at which strength: the nearest real pairs (select), or renders from the nearest member at a "
        "lower or the default strength; each candidate is a whole set, scored under each reading).",
    )
    val_epochs: int | None = opt(None, help=f"Training epochs of each model on {P.val} (default: the protocol's).")
    # the evaluation protocol (None: small on the world, else nfnet-bert, as eval retrieval picks it) and
    # its image backbone (None: the protocol's); the library's alone
    val_protocol: str | None = None
    val_backbone: str | None = None

    def check(self) -> None:
        """The values alone (``choose.check_choice`` adds what they mean with a ``DistillConfig``)."""
        if isinstance(self.val_repeats, bool) or not isinstance(self.val_repeats, int) or self.val_repeats < 1:
            raise ProtosynthError(f"{P.val_repeats} must be an integer of at least 1, got {self.val_repeats!r}")
        if self.val_epochs is not None and (
            isinstance(self.val_epochs, bool) or not isinstance(self.val_epochs, int) or self.val_epochs < 1
        ):
            raise ProtosynthError(f"{P.val_epochs} must be an integer of at least 1, got {self.val_epochs!r}")
        if self.val is not None and (not isinstance(self.val, str) or not self.val.strip()):
            raise ProtosynthError(f"{P.val} needs a corpus spec, got {self.val!r}")
        self.check_val_choose()
        if self.val is None:
            for param, value, default in (
                (P.val_repeats, self.val_repeats, 2),
                (P.val_epochs, self.val_epochs, None),
                (P.val_choose, self.val_choose, ("text",)),
            ):
                if value != default:
                    raise ProtosynthError(f"{param} needs {P.val('SPEC')}")

    def check_val_choose(self) -> None:
        """Distinct known values, text among them: a render candidate is compared at its best reading, so
        the reading is always chosen with it."""
        choose = self.val_choose
        if not isinstance(choose, tuple) or not choose or len(set(choose)) < len(choose):
            raise ProtosynthError(f"{P.val_choose} {choose!r}: use distinct values of {', '.join(VAL_CHOICES)}")
        bad = [c for c in choose if c not in VAL_CHOICES]
        if bad:
            raise ProtosynthError(f"unknown {P.val_choose} {','.join(map(str, bad))}: use {', '.join(VAL_CHOICES)}")
        if "text" not in choose:
            raise ProtosynthError(
                f"{P.val_choose} {','.join(choose)} needs text too: each candidate set is compared at its best "
                "reading (use text,render)"
            )


# what distill --val can choose (TextChoiceConfig.val_choose)
VAL_CHOICES = ("text", "render")

# what only a render uses: a selection (method "select") refuses each of them by name
RENDER_ONLY = ("candidates", "caption", "condition", "central")
RENDER_SETTINGS = tuple(f.name for f in fields(RenderConfig) if f.name != "seed")


@dataclass
class CoresetConfig(ReadsCorpus):
    method: str = opt("random", help="random, herding, kcenter or forgetting.")
    budget: int = opt(500, help="Number of real pairs to keep.")
    corpus: CorpusSource = source()
    # the CLIP for herding/k-center features and the stored embeddings
    clip: str = opt("default", help="CLIP for herding/k-center features and the stored embeddings.")
    seed: int = 0
    out: Path | None = opt(None, help="Output folder (default: distilled/<corpus>-coreset-<method>-b<budget>-s<seed>).")
    force: bool = opt(False, help=f"Replace an earlier set at {P.out}.")
    device: str = "cpu"
    forgetting_protocol: str = "small"
    forgetting_epochs: int = opt(5, help="forgetting: epochs of training on all pairs to count events.")
    keep: str = opt("most", help="forgetting: keep the most- or least-forgotten pairs.")

    def check(self) -> None:
        """The values alone, before any work (``coreset.validate`` adds the device and the out folder)."""
        if self.method not in CORESET_METHODS:
            raise ProtosynthError(f"unknown {P.method} {self.method!r}: use {', '.join(CORESET_METHODS)}")
        if self.budget < 1:
            raise ProtosynthError(f"{P.budget} must be at least 1, got {self.budget}")
        if self.keep not in ("most", "least"):
            raise ProtosynthError(f"{P.keep} {self.keep!r}: use most or least")
        if self.forgetting_epochs < 1:
            raise ProtosynthError(f"{P.forgetting_epochs} must be at least 1, got {self.forgetting_epochs}")
        check_seed(self.seed)


@dataclass
class ExportConfig:
    to: str = opt(
        "parquet", help="webdataset (one tar shard: KEY.png, KEY.txt, KEY.json per pair) or parquet (one file)."
    )
    out: Path = opt(Path("set.parquet"), help="The file to write (.tar or .parquet).")
    force: bool = opt(False, help=f"Replace an earlier export at {P.out} (never another file).")


@dataclass
class ReportConfig:
    out: Path = opt(Path("report.html"), help="The HTML file to write (one self-contained page).")
    force: bool = opt(False, help=f"Replace an earlier report at {P.out} (never another file).")
    members: int = opt(3, help="Member thumbnails per synthetic pair (0: none).")
    samples: int = opt(4, help="Images per method for a compare-baselines folder.")
    thumb: int = 128  # larger images are shrunk to this side, so a page of 224 px renders stays small


@dataclass
class EvalConfig:
    protocol: str = opt(
        "small",
        help="nfnet-bert (reference), pds (PDS paper) or small (offline, the world). "
        "Default: small on the world, else nfnet-bert.",
    )
    # default: the test split of the sets' corpus
    test: str | None = opt(None, help="Test corpus spec (default: the test split of the sets' corpus).")
    # "val": score on a validation corpus instead (``val``, default: the world's shapes:val), for
    # choosing settings; the test split is kept for the final table
    split: str = "test"
    val: str | None = opt(
        None,
        help="Score on this validation corpus instead of the test split (e.g. shapes:val; a file corpus for your "
        "own data), to choose settings without looking at test.",
    )
    repeats: int = opt(5, help="Models trained per set (seeds seed..seed+R-1).")
    # default: the protocol's (full-data runs: its full_epochs)
    epochs: int | None = opt(None, help="Training epochs (default: the protocol's).")
    seed: int = 0
    select_on_test: bool = opt(
        False, help="Report the best checkpoint on the test split (the reference code's habit; labelled)."
    )
    text: str = opt(
        "auto",
        help="auto (the set's stored text embeddings in the protocol's space, else the text rule its manifest "
        "declares, else its captions), captions, members, image (every caption of the image a pair starts "
        "from), image-captions (every caption of the members' images), stored or prototype (a PDS set's "
        "stored text prototype, as the PDS authors train on; needs the set's CLIP as text encoder): which "
        "text of a set trains the model.",
    )
    # "own": a set's stored soft labels, learned lrs and frozen backbone, as its method trains;
    # "protocol": the protocol's recipe for every set (InfoNCE, its lrs, its image side);
    # "soft-labels" / "learned-lrs": the protocol's recipe plus that one part of the set's own
    recipe: str = opt(
        "own",
        help="own (a set's stored soft labels, learned lrs and frozen-backbone head, where it stores them), "
        "protocol (every set trained by the protocol's recipe, ignoring them), soft-labels or learned-lrs (the "
        "protocol's recipe plus only that part of the set's own): DD-Ranking's with and without.",
    )
    device: str = "cpu"
    backbone: str | None = opt(None, help="Image backbone spec instead of the protocol's.")
    # default: the protocol's (a tiny BERT folder in the tests)
    text_encoder: str | None = opt(
        None, help="Text encoder spec instead of the protocol's (minilm, bert-base-uncased, hf-cls:DIR, clip:SPEC)."
    )
    image_size: int | None = opt(None, help="Input size instead of the protocol's.")
    # a corpus spec: add the upper-bound row trained on all its pairs
    full: str | None = opt(None, help="Also train on every pair of this corpus (e.g. shapes): the upper-bound row.")
    # how the test and full corpora are read: image_root, image_column, caption_column for both; skip_bad
    # for full alone (compare-baselines: as its sets read it), never the test
    reading: CorpusReading = reading_field(
        image_root=EVAL_IMAGE_ROOT_HELP,
        skip_bad=EVAL_SKIP_BAD_HELP,
        image_column=EVAL_IMAGE_COLUMN_HELP,
        caption_column=EVAL_CAPTION_COLUMN_HELP,
    )

    def check(self) -> None:
        """The values alone, before any work (``evaluate.validate`` adds the protocol, the set folders
        and the device)."""
        if self.repeats < 1:
            raise ProtosynthError(f"{P.repeats} must be at least 1, got {self.repeats}")
        if self.epochs is not None and self.epochs < 1:
            raise ProtosynthError(f"{P.epochs} must be at least 1, got {self.epochs}")
        if self.split not in ("test", "val"):
            raise ProtosynthError(f"{P.split} {self.split!r}: use test or val")
        if self.split == "val" and self.test is not None:
            raise ProtosynthError(f"{P.val} and {P.test} name different splits: pass one of them", param="val")
        if self.text not in TEXT_MODES:
            raise ProtosynthError(f"{P.text} {self.text!r}: use {', '.join(TEXT_MODES)}")
        if self.recipe not in RECIPES:
            raise ProtosynthError(f"{P.recipe} {self.recipe!r}: use {', '.join(RECIPES)}")
        check_seed(self.seed)


@dataclass
class ClipTrainConfig:
    arch: str = "ps-small-clip"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    checkpoint_every: int = 250


@dataclass
class ModelsTrainConfig(ReadsCorpus):
    corpus: CorpusSource = source(
        spec="Corpus spec: shapes[:split][,n=..,size=..], a .jsonl, Karpathy .json or .csv file, .tar shards, "
        ".parquet files or a Hugging Face dataset (hf:NAME[:SPLIT] or a save_to_disk folder).",
        image_root=IMAGE_ROOT_HELP + ALSO_TEST,
        skip_bad=SKIP_BAD_HELP + ALSO_TEST,
        image_column=IMAGE_COLUMN_HELP + ALSO_TEST,
        caption_column=CAPTION_COLUMN_HELP + ALSO_TEST,
    )
    # default: the world's test split, or a held-out slice of a JSONL corpus
    test: str | None = opt(
        None, help="Held-out corpus spec for metrics (default: world test split / 10% of a file corpus)."
    )
    only: str = opt("all", help="all, clip or decoder (decoder needs OUT/clip).")  # all | clip | decoder
    seed: int = 0
    quick: bool = opt(False, help="Tiny models, a minute of training: for tests.")
    clip: ClipTrainConfig = opt(factory=ClipTrainConfig)
    decoder: dict = opt(factory=dict)

    def check(self) -> None:
        """The values alone, before any work (the corpus and the folder are checked as they are read)."""
        if self.only not in ONLY:
            raise ProtosynthError(f"{P.only} {self.only!r}: use all, clip or decoder")


@dataclass
class PretrainConfig:
    arch: str = opt("ps-nfnet", help="Small architecture: ps-nfnet, ps-resnet, ps-regnet or ps-vit.")
    n_images: int = opt(10_000, help="Images of the world's pretraining split.")  # the pretraining split's size
    holdout: int = 1_000
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    image_size: int = 32

    def check(self) -> None:
        """The values alone, before any work (the architecture and the folder are checked as they are read)."""
        if self.epochs < 1 or self.n_images < 2:
            raise ProtosynthError(f"{P.epochs} must be at least 1 and {P.n_images} at least 2")
        if self.holdout >= self.n_images:
            raise ProtosynthError(
                f"{P.holdout} {self.holdout} must be smaller than the {self.n_images} pretraining images"
            )
