"""AMD's start-epoch ranges from the experts (docs/protocols.md, AMD).

MMD_t (linear kernel) per modality = squared distance between the experts' mean parameter vectors
at epochs t-1 and t; ratio_t = MMD_image,t / (MMD_text,t + eps); T_med = the median ratio;
R_V = min{t : ratio_t > T_med} and R_L = max{t : ratio_t <= T_med}. The paper's prose and formula
differ (see docs/protocols.md); this is the formula, and both ranges are logged in the manifest.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12


def mean_vectors(trajectories: list[list[dict[str, torch.Tensor]]], modality: str) -> list[torch.Tensor]:
    """Per epoch, the mean over experts of the modality's flattened parameters."""
    out = []
    for t in range(len(trajectories[0])):
        flat = [
            torch.cat([v.reshape(-1).double() for k, v in sorted(traj[t].items()) if k.startswith(modality + ".")])
            for traj in trajectories
        ]
        out.append(torch.stack(flat).mean(0))
    return out


def mmd_curve(means: list[torch.Tensor]) -> np.ndarray:
    """MMD_t for t = 1..E (index t-1)."""
    return np.array([float(((means[t] - means[t - 1]) ** 2).sum()) for t in range(1, len(means))])


def ranges(mmd_image: np.ndarray, mmd_text: np.ndarray) -> dict:
    """R_V, R_L (epochs, 1-based like t) and the curves they came from."""
    ratio = mmd_image / (mmd_text + EPS)
    t = np.arange(1, len(ratio) + 1)
    med = float(np.median(ratio))
    above, below = t[ratio > med], t[ratio <= med]
    r_v = int(above.min()) if len(above) else int(t.max())
    r_l = int(below.max()) if len(below) else int(t.min())
    return {
        "R_V": r_v,
        "R_L": r_l,
        "T_med": med,
        "ratio": ratio.round(6).tolist(),
        "mmd_image": mmd_image.tolist(),
        "mmd_text": mmd_text.tolist(),
    }


def expert_ranges(trajectories: list[list[dict[str, torch.Tensor]]]) -> dict:
    return ranges(mmd_curve(mean_vectors(trajectories, "image")), mmd_curve(mean_vectors(trajectories, "text")))
