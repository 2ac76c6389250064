"""A set's text reading chosen on the user's own validation split (``distill --val``).

A data-dependent default is a procedure on the user's val split, not a constant fitted on the world:
``distill``'s fixed text rule (``distill.text_rule``) was chosen on the world's val split and does not
travel to other corpora. ``distill_on_val`` makes the set as ``distill`` does, then, before the set is
renamed into place (``sets.distilled.write_distilled``'s ``finish``), scores it on ``val`` under every
reading in ``CANDIDATES`` that it supports (``evaluation.data.unsupported_reading``), each by the
protocol's recipe (``recipe="protocol"``: the reading alone differs), ``val_repeats`` models each from
seeds ``seed..seed+R-1``. The reading with the highest val r_mean (final epoch, mean over the
repeats) is declared as the manifest's ``evaluation.text``; a tie goes to the earlier reading in
``CANDIDATES``. ``evaluation.chosen_on`` records the val corpus (spec and fingerprint), the
protocol, backbone, text encoder, repeats, epochs and seed, and every candidate's r_mean (mean, std),
so the choice can be checked and repeated; the dataset card says the same.

With ``val_choose`` ``("text", "render")`` the set itself is chosen too: whether to render at all and at
which strength, constants fitted on the world that cost points on a corpus they were not fitted on.
``distill`` makes each of ``RENDER_CANDIDATES`` (a whole set, from the one embedding pass), writes it to
a scratch folder, scores it as above (each at its best reading) and writes only the one ``settle``
picks by ``cheapest_within_noise``, the rule the baseline preset sweep chooses by
(``benchmarks.baseline_presets.choose``): the leader (the highest val r_mean of its best reading, a
tie to the earlier), unless a cheaper candidate (earlier in ``RENDER_CANDIDATES``) scores within the
leader's noise, the larger of the two candidates' std over the val repeats; then the cheapest such.
Cheaper is the cost order of ``RENDER_CANDIDATES``, not a measured time (the sweep also asks a
cheaper preset to cost at most half the leader's). With ``val_repeats`` 1 there is no noise estimate
(``evaluate.summarise`` gives a std of 0.0 for one run), so the rule is the plain argmax, a tie to the
cheaper. The record adds ``chose`` and ``render`` (the rule, the leader, the winner and why, the cost
order and each candidate's changes, reading, scores). The caption rule is not among the candidates:
it changes only the ``captions`` reading's text (the images and the other readings are the same), so
it is a choice within one render, which a candidate that is a whole set would pay a render for.

The protocol is the one ``eval retrieval`` would use for these corpora (``small`` on the world, else
``nfnet-bert``). The val corpus is read whole (no ``skip_bad``) with the train corpus's ``image_root``
and columns. It must be held out: a val corpus with the train corpus's fingerprint is refused as soon
as the train corpus is loaded (before any embedding or rendering), and one sharing an image with the
set or the pairs it summarises (``evaluation.data.check_no_overlap``) before any model is trained.

This module sits above both ``distill`` (which never imports evaluation) and ``evaluation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from .configs import DEFAULT_METHOD, DistillConfig, EvalConfig, TextChoiceConfig
from .corpora.source import CorpusReading, as_source
from .corpus import Corpus, load_source
from .distill import DEFAULT_STRENGTH, distill_budgets
from .errors import P, ProtosynthError
from .evaluation.data import check_no_overlap, unsupported_reading
from .evaluation.evaluate import evaluate
from .evaluation.protocols import default_protocol, get_protocol
from .sets.distilled import load_distilled

# the readings a set is scored under, in the order that breaks a tie (the earlier wins)
CANDIDATES = ("captions", "members", "image")
RECIPE = "protocol"  # every candidate trained the same way: the reading alone differs
# the strength of the rendered candidate below distill's default: half of it, between the default and
# the nearest member itself (select is strength 0)
LOWER_STRENGTH = DEFAULT_STRENGTH / 2
# with val_choose "render": the sets made and compared, each (name, its changes to the DistillConfig), in
# cost order, cheapest first (the order ``cheapest_within_noise`` prefers and that breaks a tie): no
# render, then a shorter render (img2img runs a strength's share of the steps), then distill's default
# (its start from the nearest member at DEFAULT_STRENGTH)
RENDER_CANDIDATES = (
    ("select", {"method": "select"}),
    (f"nearest-{LOWER_STRENGTH}", {"method": "pds", "render.strength": LOWER_STRENGTH}),
    (f"nearest-{DEFAULT_STRENGTH}", {"method": "pds"}),
)
RENDER_RULE = "cheapest within the leader's noise (larger std over the val repeats)"


def leader(scores: list[tuple[str, float, float]]) -> str:
    """Of ``(name, mean, std)`` in cost order, the highest mean; a tie: the earlier (the cheaper)."""
    return max(enumerate(scores), key=lambda item: (item[1][1], -item[0]))[1][0]


def noise(std: float, other: float) -> float:
    """The noise between two candidates: the larger of their stds over the repeats; a std that is not a
    number counts as none, and without any there is no noise (0.0, as ``summarise`` gives one run)."""
    return max((s for s in (std, other) if math.isfinite(s)), default=0.0)


def cheapest_within_noise(scores: list[tuple[str, float, float]]) -> str:
    """The candidate chosen among ``(name, mean, std)`` in cost order, cheapest first: the leader
    (``leader``), unless a cheaper candidate scores within the leader's noise (``noise``: the larger of
    the two stds, inclusive); then the cheapest such. With every std 0 (one repeat) it is the plain
    argmax, a tie to the cheaper."""
    if not scores:
        raise ValueError("no candidate to choose among")
    best = leader(scores)
    _, top, top_std = next(s for s in scores if s[0] == best)
    # in cost order, the first within noise is the cheapest; the leader itself ends the search
    return next(name for name, mean, std in scores if name == best or top - mean <= noise(std, top_std))


def check_choice(cfg: DistillConfig, choice: TextChoiceConfig) -> None:
    """The values alone, before any work: the choice's own, and that there is a reading to choose."""
    choice.check()
    if choice.val is None:
        return
    if cfg.text is not None:
        raise ProtosynthError(
            f"{P.val} chooses the text reading on the val split and {P.text} gives one ({cfg.text}): pass one of them",
            param="val",
        )
    if cfg.preset is not None:
        raise ProtosynthError(
            f"{P.preset} {cfg.preset} fixes the text reading (as its authors evaluate); {P.val} does not apply",
            param="val",
        )
    if choice.val_protocol is not None:
        get_protocol(choice.val_protocol)  # an unknown protocol: before any work
    if "render" in choice.val_choose:
        check_render_open(cfg)


def check_render_open(cfg: DistillConfig) -> None:
    """With ``render`` chosen on val, what the candidates set (the method, the start and its strength)
    must be left open: a value given would be overridden by every candidate but one."""
    given = [
        str(p)
        for p, value in ((P.method, cfg.method != DEFAULT_METHOD), (P.render.strength, cfg.render.strength is not None))
        if value
    ]
    if cfg.render.init not in (None, "nearest"):
        given.append(str(P.render.init(cfg.render.init)))
    if given:
        raise ProtosynthError(
            f"{P.val_choose('render')} chooses between {P.method('select')} and renders from the nearest member at "
            f"strengths {LOWER_STRENGTH} and {DEFAULT_STRENGTH}, and {', '.join(given)} sets one: pass one of them",
            param="val_choose",
        )


def distill_on_val(
    cfg: DistillConfig,
    choice: TextChoiceConfig,
    budgets: list[int] | None = None,
    command: str | None = None,
) -> list[Path]:
    """``distill.distill_budgets``, each set's text reading chosen on ``choice.val`` (see the module);
    with ``choice.val=None`` the fixed rule chooses, as ``distill_budgets`` alone does."""
    budgets = [cfg.budget] if budgets is None else budgets
    check_choice(cfg, choice)
    if choice.val is None:
        return distill_budgets(cfg, budgets, command)
    if "render" in choice.val_choose:  # its render settings are the rendered candidates' (a selection drops them)
        cfg = replace(cfg, method="pds")
    return distill_budgets(cfg, budgets, command, chooser=ValChooser(cfg, choice))


@dataclass
class ValChooser:
    """``distill.TextChooser`` on a validation corpus, loaded with the train corpus (``check_corpus``),
    after every check of the values and before any embedding or rendering."""

    cfg: DistillConfig
    choice: TextChoiceConfig

    def __post_init__(self) -> None:
        source = as_source(self.cfg.corpus)
        self.reading = CorpusReading(
            image_root=source.image_root, image_column=source.image_column, caption_column=source.caption_column
        )
        self.train_spec = source.spec
        self.corpus: Corpus | None = None
        protocol = self.choice.val_protocol or default_protocol(source.spec, self.choice.val)
        self.eval_cfg = EvalConfig(
            protocol=protocol,
            split="val",
            val=self.choice.val,
            repeats=self.choice.val_repeats,
            epochs=self.choice.val_epochs,
            seed=self.cfg.seed,
            recipe=RECIPE,
            device=self.cfg.device,
            backbone=self.choice.val_backbone,
            reading=self.reading,
        )
        self.eval_cfg.check()
        # the whole sets distill makes and scores for this chooser (none: the set as configured)
        self.variants = RENDER_CANDIDATES if "render" in self.choice.val_choose else ()

    def check_corpus(self, corpus: Corpus) -> None:
        """Load the val corpus (read whole, as a test split is) and refuse it when it is the train
        corpus ``corpus`` (same fingerprint, whatever the spec says)."""
        self.corpus = load_source(self.reading.of(self.choice.val))
        if corpus.fingerprint == self.corpus.fingerprint:
            raise ProtosynthError(
                f"{P.val} {self.choice.val} is the corpus the set is made from ({P.corpus} {self.train_spec}, "
                f"fingerprint {corpus.fingerprint}): choose on a split held out from it",
                param="val",
            )

    def choose(self, folder: Path) -> tuple[str, dict]:
        """Score the complete set at ``folder`` under each reading it supports; the best and the record."""
        if self.corpus is None:
            raise ProtosynthError(f"{P.val} {self.choice.val}: not loaded (check_corpus comes first)", param="val")
        ds = load_distilled(folder, verify=True)
        try:
            check_no_overlap(ds, self.corpus)
        except ProtosynthError as exc:
            detail = str(exc).removeprefix(f"{folder}: ")
            raise ProtosynthError(
                f"{P.val} {self.choice.val} is not held out from {P.corpus} {self.train_spec} ({detail}): "
                "choose on a split that shares no image with it",
                param="val",
            ) from None
        scores, unsupported, head = {}, {}, None
        for reading in CANDIDATES:
            why = unsupported_reading(ds, reading)
            if why is not None:
                unsupported[reading] = why
                continue
            doc = evaluate([folder], replace(self.eval_cfg, text=reading))
            row = doc["sets"][0]
            if row["text"] != reading:  # the evaluation read the set another way: no score to compare
                raise ProtosynthError(f"{folder}: {P.text(reading)} was read as {row['text']!r}")
            r_mean = row["metrics"]["r_mean"]
            scores[reading] = {"mean": r_mean["mean"], "std": r_mean["std"]}
            head = head or {
                "protocol": doc["protocol"],
                "backbone": doc["backbone"],
                "text_encoder": doc["text_encoder"],
                "epochs": row["epochs"],
            }
        if not scores:
            raise ProtosynthError(f"{folder}: the set supports none of the readings {', '.join(CANDIDATES)}")
        if not all(math.isfinite(s["mean"]) for s in scores.values()):
            raise ProtosynthError(f"{folder}: a val r_mean is not a number: {scores}")
        best = max(scores, key=lambda r: (scores[r]["mean"], -CANDIDATES.index(r)))  # a tie: the earlier
        record = {
            "val": self.choice.val,
            "fingerprint": self.corpus.fingerprint,
            **head,
            "recipe": RECIPE,
            "repeats": self.eval_cfg.repeats,
            "seed": self.eval_cfg.seed,
            "score": "r_mean, final epoch, mean and std over the repeats",
            "ties": list(CANDIDATES),  # the order that breaks a tie
            "r_mean": scores,
            "unsupported": unsupported,
        }
        return best, record

    def settle(self, scored: dict[str, tuple[str, dict]]) -> tuple[str, dict]:
        """Of the candidate sets scored (name -> ``choose``'s reading and record), the one
        ``cheapest_within_noise`` names on each candidate's chosen reading (val r_mean, mean and std over
        the repeats, in the cost order of ``variants``), and the manifest's ``evaluation`` for it: its
        reading and record, with the rule, the leader, why the winner won and every candidate's scores.
        Not monotone as candidates come (a later leader can bring an earlier candidate within its
        noise): call it once every candidate is scored."""
        order = [name for name, _ in self.variants]
        names = [name for name in order if name in scored]
        best_of = {n: scored[n][1]["r_mean"][scored[n][0]] for n in names}
        scores = [(n, best_of[n]["mean"], best_of[n]["std"]) for n in names]
        best, lead = cheapest_within_noise(scores), leader(scores)
        text, record = scored[best]
        candidates = {
            name: {
                "changes": dict(self.variants)[name],
                "text": scored[name][0],
                "r_mean": scored[name][1]["r_mean"],
                "unsupported": scored[name][1]["unsupported"],
            }
            for name in names
        }
        if best == lead:
            why = "the leader: no cheaper candidate within its noise"
            if self.eval_cfg.repeats == 1:
                why = "the leader: one val repeat, no noise estimate (the plain argmax)"
        else:
            gap = best_of[lead]["mean"] - best_of[best]["mean"]
            within = noise(best_of[best]["std"], best_of[lead]["std"])
            why = f"within the leader's noise: {gap:.3f} under it, noise {within:.3f}"
        render = {
            "rule": RENDER_RULE,
            "leader": lead,
            "chosen": best,
            "why": why,
            "ties": order,  # the cost order, cheapest first: what the rule prefers and a tie goes to
            "candidates": candidates,
        }
        record = dict(record, chose=list(self.choice.val_choose), render=render)
        return best, {"text": text, "chosen_by": "val", "chosen_on": record}
