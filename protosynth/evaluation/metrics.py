"""Retrieval metrics with the names of the reference code (BLIP ``itm_eval``).

- TR@K (image -> text): for each image, rank all captions; a hit when the best-ranked of its own
  captions is within the top K. Works with any number of captions per image.
- IR@K (text -> image): for each caption, rank all images; a hit when its own image is in the top K.
- r_mean: the mean of the six recalls, in percent.
Ties are broken against the query (a tied wrong item ranks ahead), so a constant score matrix
never looks good.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
# the order tables and reports show the metrics in
METRICS = tuple(f"IR@{k}" for k in KS) + tuple(f"TR@{k}" for k in KS) + ("r_mean",)


def _rank_of_targets(scores: np.ndarray, target_mask: np.ndarray) -> np.ndarray:
    """For each row, the 0-based rank of its best target (pessimistic on ties)."""
    best_target = np.where(target_mask, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best_target) & ~target_mask).sum(axis=1)


def retrieval_metrics(scores_i2t: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Recall metrics from an (n_images, n_texts) score matrix and each text's image index."""
    scores = np.asarray(scores_i2t, dtype=np.float64)
    text_to_image = np.asarray(text_to_image)
    n_images, n_texts = scores.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({n_texts},)")
    if not np.isfinite(scores).all():
        raise ValueError("score matrix contains NaN or inf")
    if not np.issubdtype(text_to_image.dtype, np.integer) or ((text_to_image < 0) | (text_to_image >= n_images)).any():
        raise ValueError(f"text_to_image must hold image indices in [0, {n_images})")
    own = text_to_image[None, :] == np.arange(n_images)[:, None]  # (I, T)
    if not own.any(axis=1).all():
        raise ValueError("every image needs at least one caption")
    tr_rank = _rank_of_targets(scores, own)
    ir_rank = _rank_of_targets(scores.T, own.T)
    out: dict[str, float] = {}
    for k in KS:
        out[f"IR@{k}"] = float(100.0 * (ir_rank < k).mean())
    for k in KS:
        out[f"TR@{k}"] = float(100.0 * (tr_rank < k).mean())
    out["r_mean"] = float(np.mean([out[f"{d}@{k}"] for d in ("IR", "TR") for k in KS]))
    return out
