"""One trajectory-matching engine for MTT-VL, LoRS, AMD and RepBlend.

One outer iteration: the student starts at an expert's parameters theta_start (per modality: AMD
starts image and text at different epochs), takes ``syn_steps`` SGD steps on mini-batches of the
synthetic set with the learnable inner learning rates, and the loss is the normalised squared
distance of where it lands to the expert's later parameters theta_target:

    separate: sum over modalities of |theta_N - theta_target|^2 / |theta_start - theta_target|^2
    merged:   (sum of the numerators) / (sum of the denominators)

Gradients reach the synthetic images, texts, learning rates and similarity matrix in one of
three ways (``grad_mode``):
- ``unroll`` (MTT-VL's official loop): autograd through the whole unrolled graph; memory grows with
  syn_steps.
- ``constant``: the exact gradient of ``unroll`` at constant memory. A forward pass keeps only each
  step's parameters (no graph); a backward pass walks the steps in reverse, recomputes each step's
  gradient with a graph and back-propagates the adjoint through it (a Hessian-vector product carries
  it to the previous step). No official loop computes this; it is protosynth's exact alternative.
- ``first-order`` (TESLA's gradient, as the official LoRS and RepBlend loops compute it; AMD is built
  on LoRS's code): every inner step's gradient g_i is treated as a constant of the parameters, so the
  end point is theta_start - lr * sum_i g_i. The data (and S) get the gradient of the matching loss
  through each g_i alone; the lrs get d/d lr of the loss with the gradient sum held fixed, always per
  modality (LoRS's code divides each modality by its own distance there, even with the merged loss).

With ``train`` the student runs in train mode (its heads' dropout on), as the official loops do.
``unroll`` draws one mask per step; ``constant`` replays each step with the masks of its forward
pass (it must see the same function twice); ``first-order`` replays the steps in forward order with
fresh masks, as the official code does.
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
    train: bool = False,
) -> float:
    """Unroll the student from ``start``; accumulate d(matching loss)/d(leaf) into each synthetic
    leaf's ``.grad``; return the matching loss. ``train``: the student in train mode (dropout on)."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    run = Unroll(
        student,
        {k: v.detach() for k, v in start.items()},
        {k: v.detach() for k, v in target.items()},
        syn,
        batches,
        blends or [None] * len(batches),
        temperature,
        merged,
    )
    was_training = student.training
    student.train(train)
    if student.features is not None:
        student.features.eval()  # RepBlend's backbone is frozen: only its heads train
    try:
        return {"unroll": _unroll, "constant": _constant, "first-order": _first_order}[grad_mode](run)
    finally:
        student.train(was_training)


@dataclass
class Unroll:
    """One outer iteration's inputs to the inner loop."""

    student: Student
    start: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]
    syn: SyntheticSet
    batches: list[torch.Tensor]
    blends: list[Blend | None]
    temperature: float
    merged: bool

    def loss(self, params: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        return step_loss(self.student, params, self.syn, self.batches[i], self.temperature, self.blends[i])

    def step_grads(self, params: dict[str, torch.Tensor], i: int, create_graph: bool = False):
        """Step i's gradient at ``params`` (leaves requiring grad), one tensor per parameter name."""
        return torch.autograd.grad(self.loss(params, i), list(params.values()), create_graph=create_graph)

    def leaves(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.syn.leaves().items() if v.requires_grad}


def _with_grad(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _accumulate(leaves: dict[str, torch.Tensor], grads) -> None:
    for leaf, g in zip(leaves.values(), grads):
        if g is not None:
            leaf.grad = g if leaf.grad is None else leaf.grad + g


def _unroll(run: Unroll) -> float:
    params = {k: v.clone().requires_grad_(True) for k, v in run.start.items()}
    for i in range(len(run.batches)):
        grads = run.step_grads(params, i, create_graph=True)
        params = {k: params[k] - _lr(run.syn, k) * g for k, g in zip(params, grads)}
    loss = matching_loss(params, run.start, run.target, run.merged)
    loss.backward()
    return float(loss.detach())


def _forward(run: Unroll):
    """The inner steps without a graph: each step's parameters, the RNG state its loss drew its
    dropout masks from, the end parameters and the sum of the steps' gradients."""
    history, states = [], []
    params = dict(run.start)
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(len(run.batches)):
        history.append(params)
        states.append(torch.get_rng_state())
        with torch.enable_grad():
            grads = dict(zip(params, run.step_grads(_with_grad(params), i)))
        params = {k: (params[k] - _lr(run.syn, k).detach() * g).detach() for k, g in grads.items()}
        total = {k: total[k] + g for k, g in grads.items()}
    return history, states, params, total


def _adjoint(run: Unroll, end: dict[str, torch.Tensor], merged: bool) -> tuple[torch.Tensor, dict]:
    end = _with_grad(end)
    loss = matching_loss(end, run.start, run.target, merged)
    return loss, dict(zip(end, torch.autograd.grad(loss, list(end.values()))))


def _inner(adjoint: dict, grads, names) -> dict[str, torch.Tensor]:
    """Per modality, the dot product of the adjoint with a step's gradient."""
    return {m: sum((adjoint[k] * g).sum() for k, g in zip(names, grads) if k.startswith(m + ".")) for m in MODALITIES}


def _constant(run: Unroll) -> float:
    history, states, end, _ = _forward(run)
    loss, adjoint = _adjoint(run, end, run.merged)
    leaves = run.leaves()
    after = torch.get_rng_state()
    for i in reversed(range(len(run.batches))):
        p = _with_grad(history[i])
        torch.set_rng_state(states[i])  # the forward pass's dropout masks: the same function
        grads = run.step_grads(p, i, create_graph=True)
        inner = _inner(adjoint, grads, list(p))
        # theta_{i+1} = theta_i - lr * g_i: the vector-Jacobian product of -lr * g_i with the adjoint
        surrogate = -(run.syn.rate("image") * inner["image"] + run.syn.rate("text") * inner["text"])
        out = torch.autograd.grad(surrogate, list(leaves.values()) + list(p.values()), allow_unused=True)
        _accumulate(leaves, out[: len(leaves)])
        adjoint = {k: adjoint[k] + (g if g is not None else 0) for k, g in zip(p, out[len(leaves) :])}
    torch.set_rng_state(after)
    return float(loss.detach())


def _first_order(run: Unroll) -> float:
    history, _, end, total = _forward(run)
    loss, adjoint = _adjoint(run, end, run.merged)
    data = {k: v for k, v in run.leaves().items() if k not in ("lr_image", "lr_text")}
    for i in range(len(run.batches)):  # forward order, fresh dropout masks: as the official loops
        p = _with_grad(history[i])
        inner = _inner(adjoint, run.step_grads(p, i, create_graph=True), list(p))
        lrs = {m: run.syn.rate(m).detach() for m in MODALITIES}
        surrogate = -(lrs["image"] * inner["image"] + lrs["text"] * inner["text"])
        _accumulate(data, torch.autograd.grad(surrogate, list(data.values()), allow_unused=True))
    # the lrs: the per-modality loss of theta_start - lr * (sum of the steps' gradients), that sum fixed
    lr_loss = 0
    for m in MODALITIES:
        keys = [k for k in run.start if k.startswith(m + ".")]
        moved = {k: run.start[k] - run.syn.rate(m) * total[k] for k in keys}
        num = sum(((moved[k] - run.target[k]) ** 2).sum() for k in keys)
        den = sum(((run.start[k] - run.target[k]) ** 2).sum() for k in keys)
        lr_loss = lr_loss + num / torch.as_tensor(den).clamp_min(1e-12)
    lr_leaves = {k: v for k, v in run.leaves().items() if k in ("lr_image", "lr_text")}
    if lr_leaves:
        _accumulate(lr_leaves, torch.autograd.grad(lr_loss, list(lr_leaves.values()), allow_unused=True))
    return float(loss.detach())
