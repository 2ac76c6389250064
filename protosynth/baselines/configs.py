"""The settings of ``buffer``, ``baseline`` and ``compare-baselines``, each field declared once with its
default and help (``protosynth.util.options.opt``); light, like ``protosynth.configs``, for ``--help``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..configs import CORESET_METHODS, RECIPES, DistillConfig, RenderConfig, check_seed
from ..corpora.source import CorpusReading, CorpusSource, ReadsCorpus, reading_field, source
from ..errors import P, Param, ProtosynthError
from ..util.options import ALSO_TEST, CAPTION_COLUMN_HELP, IMAGE_COLUMN_HELP, IMAGE_ROOT_HELP, SKIP_BAD_HELP, opt

CORESETS = CORESET_METHODS
OPTIMISATION = ("mtt-vl", "lors", "amd", "repblend")
# each rendered method: the distill settings it sets ("render.X": a field of DistillConfig.render).
# "pds": protosynth's default distill; "pds-published": distill --preset pds-published (PDS as its code
# runs); the rest are issue 31's levers that put several members into one image (``protosynth.starts``)
RENDERED_SETTINGS: dict[str, dict] = {
    "pds": {},
    "pds-published": {"preset": "pds-published"},
    "pds-composite": {"render.init": "composite"},  # start: the pixel-wise medoid of 3 central members
    "pds-blend": {"condition": "blend"},  # condition: the blend of 3 central members' image embeddings
    "pds-tile": {"render.init": "tile", "central": 4},  # start: 4 central members in a 2 x 2 grid
    # the same levers at a higher strength (the decoder redraws more of the start, and the condition
    # weighs more), beside the default's start at that strength; and with more members
    "pds-0.6": {"render.strength": 0.6},
    "pds-composite-0.6": {"render.init": "composite", "render.strength": 0.6},
    "pds-blend-0.6": {"condition": "blend", "render.strength": 0.6},
    "pds-composite-k5": {"render.init": "composite", "central": 5},
    "pds-blend-k9": {"condition": "blend", "central": 9},
    # the default's set with training-free soft labels (``protosynth.soft_labels``): the same images and
    # pairs as pds, plus S; the protocol's table scores it without S (DD-Ranking's with and without).
    # pds-soft takes the default temperature; the others are the val grid it was chosen from
    "pds-soft": {"soft_labels": "clip"},
    "pds-soft-t0.1": {"soft_labels": "clip", "soft_temperature": 0.1},
    "pds-soft-t0.25": {"soft_labels": "clip", "soft_temperature": 0.25},
    "pds-soft-t0.5": {"soft_labels": "clip", "soft_temperature": 0.5},
    # the control: weighted BCE on hard labels (at T 0.001 every off-diagonal target of the world's
    # prototypes underflows to 0 in float32: S is the identity), the loss without the soft targets
    "pds-soft-identity": {"soft_labels": "clip", "soft_temperature": 0.001},
    # soft co-membership from the corpus (rule members), with its default temperature and its val grid
    "pds-soft-members": {"soft_labels": "members"},
    "pds-soft-members-t0.05": {"soft_labels": "members", "soft_temperature": 0.05},
    "pds-soft-members-t0.2": {"soft_labels": "members", "soft_temperature": 0.2},
    "pds-soft-members-t0.5": {"soft_labels": "members", "soft_temperature": 0.5},
}
RENDERED = tuple(RENDERED_SETTINGS)


def rendered_distill(method: str, **common) -> DistillConfig:
    """The ``DistillConfig`` that makes ``method``'s set (``select`` or a ``RENDERED`` one), with the
    settings every method shares (``common``: budget, corpus, seed, out, device)."""
    settings = RENDERED_SETTINGS.get(method, {})
    render = {k.removeprefix("render."): v for k, v in settings.items() if k.startswith("render.")}
    top = {k: v for k, v in settings.items() if not k.startswith("render.")}
    pds_or_select = "select" if method == "select" else "pds"
    return DistillConfig(method=pds_or_select, render=RenderConfig(**render), **top, **common)


ALL_METHODS = CORESETS + ("select",) + RENDERED + OPTIMISATION + ("full",)
# the evaluation's text modes a comparison may score every row under (EvalConfig.text)
COMPARE_TEXTS = ("auto", "captions", "members", "image", "image-captions")
QUICK_WORLD = "shapes,n=2000"  # --quick on the default world: its first 2,000 images (10,000 pairs)
# the choices of a BaselineConfig (presets.py re-exports them)
METHODS = OPTIMISATION
FAMILIES = ("flickr", "coco", "world")
LR_SPACES = ("linear", "log")
GRAD_MODES = ("unroll", "constant", "first-order")
VARIANTS = ("intended-temperature",)  # named departures from an official preset


@dataclass
class BufferConfig(ReadsCorpus):
    corpus: CorpusSource = source(spec="Corpus spec the experts train on (its whole train split).")
    protocol: str = opt("small", help="Retrieval protocol whose model the experts are: small or nfnet-bert.")
    experts: int = opt(5, help="Number of expert trajectories.")
    epochs: int = opt(4, help="Epochs per expert (a snapshot after each).")
    heads_only: bool = opt(False, help="Frozen backbone; train and save only the projection heads (RepBlend).")
    lr: float = opt(0.1, help="SGD learning rate (no momentum, no weight decay).")
    batch_size: int = 128
    # train on a seeded subset of this many pairs (quick runs); None = all
    max_pairs: int | None = opt(None, help="Train on a seeded subset of this many pairs (smoke runs).")
    backbone: str | None = None  # default: the protocol's (tests pass tiny ones)
    text_encoder: str | None = None
    image_size: int | None = None
    seed: int = 0
    out: Path | None = opt(None, help="Buffer folder (resumable: run again to finish an interrupted buffer).")
    device: str = "cpu"

    def check(self) -> None:
        """The values alone, before any work (``buffer._validate`` adds the device)."""
        for name in ("experts", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ProtosynthError(f"{Param(name)} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ProtosynthError(f"{P.lr} must be positive, got {self.lr}")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise ProtosynthError(f"{P.max_pairs} must be at least 2, got {self.max_pairs}")
        if self.out is None:
            raise ProtosynthError(f"{P.out} is required for a buffer")
        check_seed(self.seed)


@dataclass
class BaselineConfig:
    method: str = opt("lors", help="mtt-vl, lors, amd or repblend.")
    budget: int = opt(100, help="Synthetic pairs (LoRS-family methods store budget-1 pairs plus S).")
    buffer: Path | None = opt(None, help=f"A folder written by `protosynth buffer` ({P.heads_only} for repblend).")
    out: Path | None = opt(None, help="Output folder (default: distilled/<corpus>-<method>-b<budget>-s<seed>).")
    force: bool = opt(False, help=f"Replace an earlier set at {P.out}.")
    seed: int = 0
    device: str = "cpu"
    # preset family; default: world for the built-in world, else flickr
    family: str | None = opt(
        None,
        flag="preset",
        help="Preset family: flickr, coco or world (default: world for the built-in world, else flickr).",
    )
    quick: bool = opt(False, help="World preset with 10 iterations (a smoke run).")
    # the loop's state saved beside the set every this many iterations (0: never); a rerun resumes
    checkpoint_every: int = opt(
        100, help="Save the run's state every this many iterations; a rerun with the same settings resumes (0: never)."
    )
    iterations: int | None = None
    syn_steps: int | None = None
    expert_epochs: int | None = None
    max_start_epoch: int | None = None
    batch_syn: int | None = None
    lr_img: float | None = None
    lr_txt: float | None = None
    lr_lr: float | None = None
    lr_init: float | None = None
    # how the inner lrs are learned: "linear" (published) or "log" (log(lr) is the leaf)
    lr_space: str | None = opt(
        None, help="How the inner lrs are learned: linear (published) or log (steps by a factor; the world preset)."
    )
    lr_sim: float | None = None
    rank: int | None = None
    alpha: float | None = None
    temperature: float | None = None  # None: the protocol's (0.07); COCO LoRS uses 0.1
    # unroll (mtt-vl) or constant (the others)
    grad_mode: str | None = opt(None, help="unroll, constant or first-order (default: the method's).")
    # merged normalisation of the matching loss (default: per modality)
    merged: bool | None = opt(
        None, help="Matching-loss normalisation: both modalities together, or per modality (default)."
    )
    # the inner student in train mode (dropout on), as the official loops run it
    train_mode: bool | None = opt(
        None, help="The inner student in train mode, dropout on (official presets), or eval mode (world)."
    )
    variant: str | None = opt(  # a named departure from the preset (presets.VARIANTS)
        None, help="A named departure from the preset: intended-temperature (MTT-VL's inner temperature 0.07)."
    )
    # AMD's prototype initialisation clusters this CLIP's joint embeddings
    clip: str = opt("default", help="amd: the CLIP whose joint embeddings the prototype initialisation clusters.")
    # how the buffer's corpus is read: a None option (skip_bad False) is the buffer's recorded one
    # (skip_bad on anyway when the buffer was made with it)
    reading: CorpusReading = reading_field(
        image_root="Folder the image paths of the buffer's .json or .csv corpus are relative to "
        "(default: the one the buffer was made with).",
        skip_bad="Skip unreadable images of the buffer's corpus (default: as the buffer was made).",
        image_column="Image column of the buffer's .parquet or hf: corpus (default: the one the buffer was made with).",
        caption_column="Caption column of the buffer's .parquet or hf: corpus (default: as the buffer was made).",
    )

    def check(self) -> None:
        """The values alone, before the buffer is opened (``run.distill_baseline`` adds the device and
        the out folder; ``presets.resolve`` the filled preset against the buffer)."""
        check_seed(self.seed)
        self.check_choices()
        if self.budget < 2:
            raise ProtosynthError(
                f"{P.budget} must be at least 2 for a trajectory-matching baseline, got {self.budget}"
            )
        if self.checkpoint_every < 0:
            raise ProtosynthError(f"{P.checkpoint_every} must be 0 (never) or positive, got {self.checkpoint_every}")
        if self.buffer is None:
            raise ProtosynthError(f"{P.buffer} is required (make one with `protosynth buffer`)")

    def check_choices(self) -> None:
        """The settings that name a choice, where set: checked before the buffer is opened, so a typo is
        the error a run reports, whatever else is wrong."""
        if self.method not in METHODS:
            raise ProtosynthError(f"unknown {P.method} {self.method!r}: use {', '.join(METHODS)}")
        if self.family is not None and self.family not in FAMILIES:
            raise ProtosynthError(f"unknown {P.family} {self.family!r}: use {', '.join(FAMILIES)}")
        if self.lr_space is not None and self.lr_space not in LR_SPACES:
            raise ProtosynthError(f"{P.lr_space} {self.lr_space!r}: use {' or '.join(LR_SPACES)}")
        if self.grad_mode is not None and self.grad_mode not in GRAD_MODES:
            raise ProtosynthError(f"{P.grad_mode} {self.grad_mode!r}: use unroll, constant or first-order")
        if self.variant is not None and self.variant not in VARIANTS:
            raise ProtosynthError(f"unknown {P.variant} {self.variant!r}: use {', '.join(VARIANTS)}")
        if self.variant == "intended-temperature" and self.method != "mtt-vl":
            raise ProtosynthError(f"{P.variant} intended-temperature is MTT-VL's (method {self.method})")


@dataclass
class CompareConfig(ReadsCorpus):
    budget: int = 100
    methods: tuple[str, ...] = opt(ALL_METHODS, help="Comma-separated methods.")
    corpus: CorpusSource = source(
        image_root=IMAGE_ROOT_HELP + ALSO_TEST,
        skip_bad=SKIP_BAD_HELP + f" Not for {P.test}: a test split is read whole.",
        image_column=IMAGE_COLUMN_HELP + ALSO_TEST,
        caption_column=CAPTION_COLUMN_HELP + ALSO_TEST,
    )
    protocol: str = "small"
    repeats: int = 5
    out: Path = opt(Path("runs/compare"), help="Work and output folder (compare.json/.md/.png); reruns resume.")
    quick: bool = opt(False, help="Smoke-sized run (see README): minutes, not a result.")
    seed: int = opt(0, help=f"Seed of the buffers and of the evaluation's repeats (the sets' seeds: {P.seeds}).")
    # set seeds: each method's set made once per seed (None: just ``seed``)
    seeds: tuple[int, ...] | None = opt(
        None, help="Comma-separated set seeds: each method's set made per seed; rows report mean ± std over all."
    )
    # "protocol": every row trained the protocol's way; "own": each method's own recipe where it has one
    recipes: tuple[str, ...] = opt(
        ("protocol",),
        help="Comma-separated recipes, one table each: protocol (every row trained as the protocol trains, soft "
        "labels and learned lrs ignored) and/or own (each method's own recipe where it stores one).",
    )
    texts: tuple[str, ...] = opt(
        ("auto",),
        help="Comma-separated text readings, every row scored under each: auto (each set's own), captions, "
        "members, image, image-captions; a set that cannot be read so is marked, not scored another way.",
    )
    device: str = "cpu"
    # default: the protocol's (quick: 20)
    eval_epochs: int | None = opt(None, help="Evaluation epochs per set (default: the protocol's).")
    experts: int = 4
    expert_epochs: int = 3  # epochs per expert trajectory
    buffer_pairs: int | None = None
    # matching iterations (default: the method's preset)
    iterations: int | None = opt(None, help="Matching iterations (default: each method's preset).")
    # test corpus spec (default: the world's test split; other corpora need one)
    test: str | None = opt(None, help="Test corpus spec (default: the world's test split; another corpus needs one).")

    def check(self) -> None:
        """The values alone, before any work (``compare._validate`` adds the test split and the device)."""
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ProtosynthError(f"unknown {P.methods} {', '.join(unknown)}: use {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise ProtosynthError(f"{P.methods} is empty")
        if self.budget < 2:
            raise ProtosynthError(f"{P.budget} must be at least 2, got {self.budget}")
        if self.repeats < 1:
            raise ProtosynthError(f"{P.repeats} must be at least 1, got {self.repeats}")
        # checked here, in compare's own terms: the buffer and the evaluation would name their own
        # fields (epochs), which are not compare's (expert_epochs, eval_epochs)
        for name in ("experts", "expert_epochs"):
            if getattr(self, name) < 1:
                raise ProtosynthError(f"{Param(name)} must be at least 1, got {getattr(self, name)}")
        if self.eval_epochs is not None and self.eval_epochs < 1:
            raise ProtosynthError(f"{P.eval_epochs} must be at least 1, got {self.eval_epochs}")
        for name, values, allowed in (("recipes", self.recipes, RECIPES), ("texts", self.texts, COMPARE_TEXTS)):
            bad = [v for v in values if v not in allowed]
            if bad or not values or len(set(values)) < len(values):
                raise ProtosynthError(
                    f"{Param(name)} {','.join(values)!r}: use distinct values of {', '.join(allowed)}"
                )
        seeds = self.set_seeds()
        if len(set(seeds)) < len(seeds):
            raise ProtosynthError(f"{P.seeds} {','.join(map(str, seeds))}: a seed is repeated")
        for seed in (self.seed, *seeds):
            check_seed(seed)

    def set_seeds(self) -> tuple[int, ...]:
        return self.seeds if self.seeds else (self.seed,)

    def effective(self) -> CompareConfig:
        if not self.quick:
            return self
        spec = QUICK_WORLD if self.corpus.spec == "shapes" else self.corpus.spec
        return replace(
            self,
            corpus=self.corpus.reading(spec),
            repeats=min(self.repeats, 2),
            eval_epochs=self.eval_epochs or 20,
            experts=min(self.experts, 2),
            expert_epochs=min(self.expert_epochs, 2),
            buffer_pairs=self.buffer_pairs or 2000,
            iterations=self.iterations or 10,
        )
