"""Training-free soft labels for a distilled set (issue 31's lever): a similarity matrix between the
set's pairs, computed from what ``distill`` already has, stored as LoRS stores its learned S.

LoRS learns S, an (N, N) matrix of image-i-to-text-j targets, and its learner trains with weighted
binary cross-entropy against it instead of InfoNCE (``evaluation.retrieval.weighted_bce``): each entry
is a positive when its target is above 0.5, a negative otherwise, and the two means are averaged. A
PDS set has no training to learn S from, but it knows how close its pairs are: each pair is a
prototype of many real pairs, in the CLIP's space.

Rule ``clip``: S[i, j] = exp((c_ij - 1) / T), where c_ij is the mean of the image-image and the
text-text cosine of pair i's and pair j's prototypes. Why this rule:

- both cosines are within one modality, so c_ii = 1 exactly and the diagonal is 1 by construction;
  a cross-modal cosine would carry the CLIP's modality gap (image-text cosines far below 1 even for
  a pair and its own caption), which has no meaning as a target;
- the mean of the two sides is symmetric and asks both the image and the text of j to resemble i's;
- one parameter, T, with a meaning for weighted BCE: another pair j is a positive of i (target
  > 0.5) exactly when c_ij > 1 - T ln 2, and targets fall off smoothly below that. T -> 0 is the
  identity (hard labels, InfoNCE's positives trained with BCE).

Rule ``members`` (soft co-membership, from the corpus): S[i, j] = the mean, over pair i's member
pairs m, of min(1, exp((s_m(j) - s_m(i)) / T)), where s_m(c) is member m's score for prototype c (image
cosine to c's image prototype plus text cosine to c's text prototype: the score that picks a
prototype's nearest member). Why: a member about as close to j as to its own prototype is evidence
that pairs i and j overlap; as T -> 0, S[i, j] is the share of i's members at least as close to j as
to i (the k-means assignment's second choice, counted), and a larger T also credits near misses. The
diagonal is 1 (exp(0)); a prototype without members has the identity row; S is not symmetric (a
small cluster inside a large one's reach counts the large one, not the other way round), as LoRS's
learned S need not be. Another pair is a positive when the members' mean credit is above 0.5.

The matrices are computed in float64 and rounded once to float32, so a rerun stores the same bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .configs import DEFAULT_SOFT_TEMPERATURE, SOFT_LABELS  # noqa: F401 (re-exported: their public home)

FORMULAS = {
    "clip": "S[i,j] = exp((c_ij - 1) / temperature), c_ij = mean of the image-image and text-text cosines of "
    "the pairs' prototypes (CLIP space); diagonal 1",
    "members": "S[i,j] = mean over pair i's member pairs m of min(1, exp((s_m(j) - s_m(i)) / temperature)), "
    "s_m(c) = image cosine of m to prototype c's image plus text cosine to its text (CLIP space); diagonal 1",
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def joint_cosines(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(N, N) mean of the image-image and text-text cosines of N pairs' prototypes (rows need not be
    unit: they are normalised here); the diagonal is 1."""
    img, txt = unit_rows(image), unit_rows(text)
    return (img @ img.T + txt @ txt.T) / 2


def clip_soft_labels(image: np.ndarray, text: np.ndarray, temperature: float) -> torch.Tensor:
    """The ``clip`` rule's (N, N) float32 targets: exp((c_ij - 1) / T), in (0, 1], diagonal exactly 1."""
    c = np.minimum(joint_cosines(image, text), 1.0)  # float error may put a cosine a hair above 1
    s = np.exp((c - 1.0) / temperature)
    np.fill_diagonal(s, 1.0)
    return torch.from_numpy(s.astype(np.float32))


def members_soft_labels(
    image: np.ndarray, text: np.ndarray, members: list, image_rows, text_rows, temperature: float
) -> torch.Tensor:
    """The ``members`` rule's (N, N) float32 targets from the prototypes (rows of ``image``, ``text``),
    each prototype's member pair indices and the corpus's CLIP rows (memory-mapped row sources with
    ``take``, as distill holds them), one prototype's members at a time."""
    img, txt = unit_rows(image), unit_rows(text)
    s = np.zeros((len(img), len(img)))
    for i, group in enumerate(members):
        idx = np.asarray(group, np.int64)
        if not len(idx):  # no member: no evidence of overlap
            continue
        score = unit_rows(image_rows.take(idx, axis=0)) @ img.T + unit_rows(text_rows.take(idx, axis=0)) @ txt.T
        s[i] = np.exp(np.minimum(score - score[:, i : i + 1], 0.0) / temperature).mean(axis=0)  # min(1, exp)
    np.fill_diagonal(s, 1.0)
    return torch.from_numpy(s.astype(np.float32))


def positive_cosine(temperature: float) -> float:
    """The joint cosine above which the ``clip`` rule makes another pair a positive (target > 0.5)."""
    return 1.0 - temperature * math.log(2.0)


def soft_label_record(similarity: torch.Tensor, rule: str, temperature: float) -> dict:
    """The manifest's ``soft_labels`` entry: the rule, its parameter and what the matrix looks like
    (how many other pairs each pair counts as positives, the off-diagonal targets' spread)."""
    s = similarity.double()
    n = len(s)
    off = s[~torch.eye(n, dtype=torch.bool)]
    positives = ((s > 0.5).sum(dim=1) - 1).double()
    return {
        "rule": rule,
        "temperature": temperature,
        "formula": FORMULAS[rule],
        "positive_above_cosine": round(positive_cosine(temperature), 6) if rule == "clip" else None,
        "stored_as": "embeddings.safetensors: similarity (N, N), row = image, column = text",
        "off_diagonal_mean": round(float(off.mean()), 6) if n > 1 else None,
        "off_diagonal_max": round(float(off.max()), 6) if n > 1 else None,
        "other_positives_per_pair_mean": round(float(positives.mean()), 4),
    }


def soft_labels(rule: str, protos, image_rows, text_rows, temperature: float | None) -> tuple | None:
    """(similarity, manifest record) of ``rule`` for the set's prototypes (``clustering.Prototypes``;
    ``members`` also reads the corpus's CLIP rows), or None for ``none`` (the set stores nothing, as
    before the option existed). ``temperature`` None: the rule's default."""
    if rule == "none":
        return None
    t = DEFAULT_SOFT_TEMPERATURE[rule] if temperature is None else float(temperature)
    if rule == "clip":
        sim = clip_soft_labels(protos.image, protos.text, t)
    else:
        sim = members_soft_labels(protos.image, protos.text, protos.members, image_rows, text_rows, t)
    return sim, soft_label_record(sim, rule, t)
