"""One trajectory-matching engine for MTT-VL, LoRS, AMD and RepBlend.

One outer iteration: the student starts at an expert's parameters theta_start (per modality: AMD
starts image and text at different epochs), takes ``syn_steps`` SGD steps on mini-batches of the
synthetic set with the learnable inner learning rates, and the loss is the normalised squared
distance of where it lands to the expert's later parameters theta_target:

    separate: sum over modalities of |theta_N - theta_target|^2 / |theta_start - theta_target|^2
    merged:   (sum of the numerators) / (sum of the denominators)

Gradients reach the synthetic images, texts, learning rates and similarity matrix in one of
three ways (``grad_mode``):
- ``unroll`` (MTT-VL): autograd through the whole unrolled graph; memory grows with syn_steps.
- ``constant`` (TESLA-style, as LoRS/AMD/RepBlend use): a forward pass keeps only each step's
  parameters (no graph); a backward pass walks the steps in reverse, recomputes each step's
  gradient with a graph, and back-propagates the adjoint through it (a Hessian-vector product
  carries it to the previous step). Memory is that of one step; the gradient equals ``unroll``'s.
- ``first-order``: the constant-memory pass without the Hessian-vector products (the adjoint is
  held fixed), a cheaper approximation that drops how a step's batch moves later steps' parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from .student import LowRankSimilarity, Student, info_nce, weighted_bce

GRAD_MODES = ("unroll", "constant", "first-order")
MODALITIES = ("image", "text")


@dataclass
class SyntheticSet:
    """The learnable synthetic data: pixels (normalised for the backbone), text features in the
    protocol's text space, one inner learning rate per modality, and LoRS's similarity matrix.

    With ``log_lr`` the lr leaves hold log(lr), so the outer optimiser moves each lr by a factor
    rather than by an amount: one overshooting iteration can halve an lr but not throw it below
    zero (with the lr itself as the leaf, such a spike pinned it at the 1e-4 floor)."""

    images: torch.Tensor  # (M, 3, S, S), requires grad
    texts: torch.Tensor  # (M, D), requires grad
    lr_image: torch.Tensor  # scalar, requires grad: the image side's inner lr (or its log)
    lr_text: torch.Tensor
    sim: LowRankSimilarity | None = None
    log_lr: bool = False

    def rate(self, modality: str) -> torch.Tensor:
        """The inner learning rate of ``modality`` (``image`` or ``text``), differentiable."""
        raw = self.lr_image if modality == "image" else self.lr_text
        return raw.exp() if self.log_lr else raw

    def leaves(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, "texts": self.texts, "lr_image": self.lr_image, "lr_text": self.lr_text}
        if self.sim is not None:
            out.update({f"sim.{k}": v for k, v in self.sim.named_parameters()})
        return out


@dataclass
class Blend:
    """RepBlend's mixing for one inner step: one lambda and one permutation for both modalities."""

    lam: float
    perm: torch.Tensor


def step_loss(
    student: Student,
    params: dict[str, torch.Tensor],
    syn: SyntheticSet,
    idx: torch.Tensor,
    temperature: float,
    blend: Blend | None = None,
) -> torch.Tensor:
    """The student's training loss on one synthetic mini-batch (InfoNCE, or LoRS's weighted BCE
    against the batch's block of S). Blending mixes backbone features and text features before the
    heads; the similarity target is not mixed."""
    x, t = syn.images[idx], syn.texts[idx]
    if student.shape == "heads":
        f = student.features(x)
        if blend is not None:
            f = (1 - blend.lam) * f + blend.lam * f[blend.perm]
            t = (1 - blend.lam) * t + blend.lam * t[blend.perm]
        img, txt = functional_call(student, params, (f, t), {"are_features": True}, strict=False)
    else:
        if blend is not None:
            raise ValueError("representation blending needs the heads-only student")
        img, txt = functional_call(student, params, (x, t), strict=False)
    if syn.sim is not None:
        return weighted_bce(img, txt, syn.sim(idx), temperature)
    return info_nce(img, txt, temperature)


def _lr(syn: SyntheticSet, name: str) -> torch.Tensor:
    return syn.rate("image" if name.startswith("image.") else "text")


def matching_loss(
    end: dict[str, torch.Tensor], start: dict[str, torch.Tensor], target: dict[str, torch.Tensor], merged: bool = False
) -> torch.Tensor:
    num = {m: sum(((end[k] - target[k]) ** 2).sum() for k in end if k.startswith(m + ".")) for m in MODALITIES}
    den = {m: sum(((start[k] - target[k]) ** 2).sum() for k in end if k.startswith(m + ".")) for m in MODALITIES}
    if merged:
        return (num["image"] + num["text"]) / (den["image"] + den["text"]).clamp_min(1e-12)
    return sum(num[m] / torch.as_tensor(den[m]).clamp_min(1e-12) for m in MODALITIES)


def match(
    student: Student,
    start: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    syn: SyntheticSet,
    batches: list[torch.Tensor],
    temperature: float,
    grad_mode: str = "unroll",
    blends: list[Blend | None] | None = None,
    merged: bool = False,
) -> float:
    """Unroll the student from ``start``; accumulate d(matching loss)/d(leaf) into each synthetic
    leaf's ``.grad``; return the matching loss."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    blends = blends or [None] * len(batches)
    start = {k: v.detach() for k, v in start.items()}
    target = {k: v.detach() for k, v in target.items()}
    names = list(start)
    if grad_mode == "unroll":
        params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        for idx, blend in zip(batches, blends):
            loss = step_loss(student, params, syn, idx, temperature, blend)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: params[k] - _lr(syn, k) * g for k, g in zip(names, grads)}
        loss = matching_loss(params, start, target, merged)
        loss.backward()
        return float(loss.detach())
    # constant memory: forward without a graph, keeping only each step's parameters
    history = []
    params = dict(start)
    for idx, blend in zip(batches, blends):
        history.append(params)
        p = {k: v.requires_grad_(True) for k, v in ((k, v.detach().clone()) for k, v in params.items())}
        with torch.enable_grad():
            grads = torch.autograd.grad(step_loss(student, p, syn, idx, temperature, blend), list(p.values()))
        params = {k: (params[k] - _lr(syn, k).detach() * g).detach() for k, g in zip(names, grads)}
    end = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = matching_loss(end, start, target, merged)
    adjoint = dict(zip(names, torch.autograd.grad(loss, list(end.values()))))
    leaves = {k: v for k, v in syn.leaves().items() if v.requires_grad}
    for i in reversed(range(len(batches))):
        p = {k: v.clone().requires_grad_(True) for k, v in history[i].items()}
        grads = torch.autograd.grad(
            step_loss(student, p, syn, batches[i], temperature, blends[i]), list(p.values()), create_graph=True
        )
        # theta_{i+1} = theta_i - lr * g_i: the vector-Jacobian product of -lr * g_i with the adjoint
        inner = {
            m: sum((adjoint[k] * g).sum() for k, g in zip(names, grads) if k.startswith(m + ".")) for m in MODALITIES
        }
        surrogate = -(syn.rate("image") * inner["image"] + syn.rate("text") * inner["text"])
        wrt = list(leaves.values()) + ([] if grad_mode == "first-order" else list(p.values()))
        out = torch.autograd.grad(surrogate, wrt, allow_unused=True)
        for leaf, g in zip(leaves.values(), out[: len(leaves)]):
            if g is not None:
                leaf.grad = g if leaf.grad is None else leaf.grad + g
        if grad_mode == "constant":
            adjoint = {k: adjoint[k] + (g if g is not None else 0) for k, g in zip(names, out[len(leaves) :])}
    return float(loss.detach())
