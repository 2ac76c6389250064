"""One outer iteration of MTT-VL, LoRS and RepBlend under their official presets equals an independent
transcription of the authors' update (issue 30), to 1e-6 relative, for images, texts, lrs and S.

The transcriptions below are written from the papers and from the formulas in the official loops
(princetonvisualai/multimodal_dataset_distillation ``distill.py``; silicx/LoRS_Distill
``distill_tesla_lors.py`` and ``src/similarity_mining.py``; zhangxin-xd/RepBlend ``distill_repblend.py``),
in their shape: flat parameter vectors per modality, the student in train mode (dropout drawn from
the global RNG, in the official order), the hyperparameters of the official scripts written out
here, and the outer SGD step by hand. They call the protocol's network modules, never the engine.
The tiny problem has 8 pairs, so LoRS's and RepBlend's mini-batch of 20 is scaled down to 4.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call

from protosynth.baselines.matching import Blend, SyntheticSet
from protosynth.baselines.presets import BaselineConfig, resolve
from protosynth.baselines.run import clamp_lrs, outer_optimizer, outer_step
from protosynth.baselines.student import LowRankSimilarity, Student, trainable
from protosynth.models.backbones import Backbone

M, TEXT_DIM, STEPS, DROPOUT_SEED = 8, 5, 8, 1234
TARGET_SCALE = 0.5  # how far the expert moved (nearer, one outer step throws the lrs below zero)
# the official scripts' values, written out (Flickr 100 pairs; LoRS's COCO 500 pairs)
OFFICIAL = {
    ("mtt-vl", "flickr"): dict(lr_img=1000.0, lr_txt=1000.0, lr_lr=1e-2, scale=math.log(1 / 0.07)),
    ("lors", "flickr"): dict(lr_img=100.0, lr_txt=100.0, lr_lr=1e-2, lr_sim=10.0, rank=10, alpha=3.0, tau=0.07),
    ("lors", "coco"): dict(lr_img=5000.0, lr_txt=5000.0, lr_lr=1e-2, lr_sim=500.0, rank=40, alpha=1.0, tau=0.1),
    ("repblend", "flickr"): dict(lr_img=100.0, lr_txt=100.0, lr_lr=1e-2, lr_sim=10.0, rank=10, alpha=3.0, tau=0.07),
}
BUDGET = {("lors", "coco"): 500}


def tiny_student(shape: str) -> Student:
    torch.manual_seed(0)
    model = timm.create_model("nf_resnet26", pretrained=False, num_classes=4, channels=[4, 8, 8, 8])
    return Student(Backbone(model.eval(), "tiny", 16, (0.5,) * 3, (0.5,) * 3), TEXT_DIM, shape).double()


def problem(method: str, rank: int):
    student = tiny_student("heads" if method == "repblend" else "full")
    g = torch.Generator().manual_seed(3)
    start = {k: v.detach().clone() for k, v in trainable(student).items()}
    target = {k: v + TARGET_SCALE * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in start.items()}
    data = {
        "images": torch.randn(M, 3, 16, 16, generator=g, dtype=torch.float64),
        "texts": torch.randn(M, TEXT_DIM, generator=g, dtype=torch.float64),
        "lr_image": torch.tensor(0.1, dtype=torch.float64),  # the official inner lrs' start
        "lr_text": torch.tensor(0.1, dtype=torch.float64),
    }
    if method != "mtt-vl":  # S mid-run (R off zero), so every factor's update is exercised
        data.update(
            diag=1 + 0.1 * torch.randn(M, generator=g, dtype=torch.float64),
            left=torch.randn(M, rank, generator=g, dtype=torch.float64),
            right=0.3 * torch.randn(M, rank, generator=g, dtype=torch.float64),
        )
    if method == "mtt-vl":  # the whole set, freshly permuted, at every step
        batches = [torch.randperm(M, generator=g) for _ in range(STEPS)]
    else:  # the official cursor over a permutation, 4 at a time
        batches = [torch.randperm(M, generator=g)[:4] for _ in range(STEPS)]
    blends = None
    if method == "repblend":
        blends = [Blend(float(torch.rand(1, generator=g)), torch.randperm(4, generator=g)) for _ in range(STEPS)]
    return student, start, target, data, batches, blends


def engine_iteration(method, family, student, start, target, data, batches, blends):
    """The engine's one outer iteration under the official preset (what `protosynth baseline` runs)."""
    cfg = resolve(BaselineConfig(method=method, budget=BUDGET.get((method, family), 100), family=family), family, 2)
    assert cfg.syn_steps == STEPS and cfg.train_mode and cfg.lr_space == "linear" and cfg.lr_init == 0.1
    sim = None
    if "diag" in data:
        sim = LowRankSimilarity(M, cfg.rank, cfg.alpha).double()
        with torch.no_grad():
            sim.diag.copy_(data["diag"]), sim.left.copy_(data["left"]), sim.right.copy_(data["right"])
    syn = SyntheticSet(*(data[k].clone().requires_grad_(True) for k in ("images", "texts", "lr_image", "lr_text")), sim)
    opt = outer_optimizer(syn, cfg)
    temperature = cfg.temperature if cfg.temperature is not None else 0.07  # the protocol's
    torch.manual_seed(DROPOUT_SEED)
    loss = outer_step(student, start, target, syn, opt, batches, blends, temperature, cfg)
    assert math.isfinite(loss) and clamp_lrs(syn) == 0
    out = {"images": syn.images, "texts": syn.texts, "lr_image": syn.lr_image, "lr_text": syn.lr_text}
    if sim is not None:
        out["S"] = sim()
    return cfg, {k: v.detach() for k, v in out.items()}


# ---- the transcription: flat parameters per modality, as the official ReparamModule loops hold them


def names_of(start: dict, modality: str) -> list[str]:
    return [k for k in start if k.startswith(modality + ".")]


def flat(params: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([params[k].reshape(-1) for k in names])


def unflat(vector: torch.Tensor, start: dict, names: list[str]) -> dict:
    out, at = {}, 0
    for k in names:
        n = start[k].numel()
        out[k.split(".", 1)[1]] = vector[at : at + n].view(start[k].shape)
        at += n
    return out


def embed(student, start, img_vec, txt_vec, x, y, mix=None):
    """Unit image and text embeddings of a mini-batch (RepBlend: the frozen features mixed first,
    ``lam * a + (1 - lam) * a[index]`` for both modalities, as its mix_embedding_up)."""
    if student.shape == "heads":
        x = student.features(x)
        if mix is not None:
            lam, index = mix
            x, y = lam * x + (1 - lam) * x[index], lam * y + (1 - lam) * y[index]
    img = functional_call(student.image, unflat(img_vec, start, names_of(start, "image")), (x,))
    txt = functional_call(student.text, unflat(txt_vec, start, names_of(start, "text")), (y,))
    return img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)


def clip_loss(logits):
    truth = torch.arange(len(logits))
    return (F.cross_entropy(logits, truth) + F.cross_entropy(logits.t(), truth)) / 2


def wbce(logits, sim):
    """LoRS's WBCE: BCE of sigmoid(logits) against S, the mean over entries with S > 0.5 and the mean
    over the others, averaged (their 1e-6 guards left out)."""
    loss = -(sim * F.logsigmoid(logits) + (1 - sim) * F.logsigmoid(-logits))
    pos = (sim > 0.5).detach()
    return (loss[pos].sum() / pos.sum() + loss[~pos].sum() / (~pos).sum()) / 2


def student_mode(student):
    student.train()
    if student.features is not None:
        student.features.eval()


def official_mtt_vl(student, start, target, data, batches, hp):
    """distill.py: the full unroll, logits = log(1/0.07) * cosines (no exp), loss per modality."""
    student_mode(student)
    images, texts = data["images"].clone().requires_grad_(True), data["texts"].clone().requires_grad_(True)
    lr_img, lr_txt = data["lr_image"].clone().requires_grad_(True), data["lr_text"].clone().requires_grad_(True)
    img_names, txt_names = names_of(start, "image"), names_of(start, "text")
    p_img = flat(start, img_names).clone().requires_grad_(True)
    p_txt = flat(start, txt_names).clone().requires_grad_(True)
    torch.manual_seed(DROPOUT_SEED)
    for idx in batches:
        img, txt = embed(student, start, p_img, p_txt, images[idx], texts[idx])
        g_img, g_txt = torch.autograd.grad(clip_loss(hp["scale"] * img @ txt.t()), [p_img, p_txt], create_graph=True)
        p_img, p_txt = p_img - lr_img * g_img, p_txt - lr_txt * g_txt
    loss = 0
    for p, names in ((p_img, img_names), (p_txt, txt_names)):
        loss = loss + ((p - flat(target, names)) ** 2).sum() / ((flat(start, names) - flat(target, names)) ** 2).sum()
    loss.backward()
    return {  # three SGD optimisers with momentum 0.5: the first step is lr * gradient
        "images": images - hp["lr_img"] * images.grad,
        "texts": texts - hp["lr_txt"] * texts.grad,
        "lr_image": lr_img - hp["lr_lr"] * lr_img.grad,
        "lr_text": lr_txt - hp["lr_lr"] * lr_txt.grad,
    }


def official_tesla(student, start, target, data, batches, blends, hp, merged):
    """distill_tesla_lors.py / distill_repblend.py: each step's gradient detached; then per step
    the gradient of 2 * (lr (target - start) + lr^2 * sum of gradients) . g_i / distance (merged: one
    distance for both) into that step's images, texts and rows of S's factors; the lrs' gradient of
    |start - lr * sum of gradients - target|^2 / distance per modality."""
    student_mode(student)
    images, texts = data["images"].clone(), data["texts"].clone()
    a, left, right = (data[k].clone().requires_grad_(True) for k in ("diag", "left", "right"))
    lr = {"image": data["lr_image"].item(), "text": data["lr_text"].item()}
    names = {m: names_of(start, m) for m in lr}
    theta0 = {m: flat(start, names[m]) for m in lr}
    theta1 = {m: flat(target, names[m]) for m in lr}
    mixes = [None] * len(batches) if blends is None else [(1 - b.lam, b.perm) for b in blends]

    def step_loss(i, p_img, p_txt, x, y):
        idx = batches[i]
        sim = torch.diag(a[idx]) + left[idx] @ right[idx].t() * hp["alpha"] / hp["rank"]
        img, txt = embed(student, start, p_img, p_txt, x, y, mixes[i])
        return wbce(math.exp(math.log(1 / hp["tau"])) * img @ txt.t(), sim)

    torch.manual_seed(DROPOUT_SEED)
    params = {m: [theta0[m].clone()] for m in lr}
    gsum = {m: torch.zeros_like(theta0[m]) for m in lr}
    for i, idx in enumerate(batches):
        p = {m: params[m][-1].clone().requires_grad_(True) for m in lr}
        grads = torch.autograd.grad(
            step_loss(i, p["image"], p["text"], images[idx], texts[idx]), [p["image"], p["text"]]
        )
        for m, g in zip(lr, grads):
            params[m].append(params[m][-1] - lr[m] * g)
            gsum[m] += g
    dist = {m: ((theta0[m] - theta1[m]) ** 2).sum() for m in lr}
    grad_img, grad_txt = torch.zeros_like(images), torch.zeros_like(texts)
    grad_s = [torch.zeros_like(t) for t in (a, left, right)]
    for i, idx in enumerate(batches):
        x, y = images[idx].clone().requires_grad_(True), texts[idx].clone().requires_grad_(True)
        p = {m: params[m][i].clone().requires_grad_(True) for m in lr}
        gi = torch.autograd.grad(step_loss(i, p["image"], p["text"], x, y), [p["image"], p["text"]], create_graph=True)
        term = {m: (lr[m] * (theta1[m] - theta0[m]) + lr[m] ** 2 * gsum[m]) @ g for m, g in zip(lr, gi)}
        if merged:
            grand = (term["image"] + term["text"]) / (dist["image"] + dist["text"])
        else:
            grand = term["image"] / dist["image"] + term["text"] / dist["text"]
        out = torch.autograd.grad(2 * grand, [x, y, a, left, right], allow_unused=True)
        grad_img[idx] += out[0]
        grad_txt[idx] += out[1]
        for acc, g in zip(grad_s, out[2:]):
            if g is not None:
                acc += g
    new = {"images": images - hp["lr_img"] * grad_img, "texts": texts - hp["lr_txt"] * grad_txt}
    for m, key in (("image", "lr_image"), ("text", "lr_text")):
        rate = data[key].clone().requires_grad_(True)
        loss_m = ((theta0[m] - rate * gsum[m] - theta1[m]) ** 2).sum() / dist[m]
        new[key] = rate.detach() - hp["lr_lr"] * torch.autograd.grad(loss_m, rate)[0]
    a2, l2, r2 = (t.detach() - hp["lr_sim"] * g for t, g in zip((a, left, right), grad_s))
    new["S"] = torch.diag(a2) + l2 @ r2.t() * hp["alpha"] / hp["rank"]
    return new


@pytest.mark.parametrize("method,family", list(OFFICIAL))
def test_one_outer_iteration_equals_the_authors_update(method, family):
    hp = OFFICIAL[(method, family)]
    student, start, target, data, batches, blends = problem(method, hp.get("rank", 1))
    cfg, got = engine_iteration(method, family, student, start, target, data, batches, blends)
    if method == "mtt-vl":
        assert cfg.grad_mode == "unroll" and cfg.batch_syn >= M
        want = official_mtt_vl(student, start, target, data, batches, hp)
    else:
        assert cfg.grad_mode == "first-order" and cfg.merged == (family == "coco")
        want = official_tesla(student, start, target, data, batches, blends, hp, merged=family == "coco")
    assert set(got) == set(want)
    for k in want:
        moved = (want[k] - data.get(k, want[k])).abs().max() if k in data else 1.0
        assert moved > 0, k  # the iteration changed it, so the comparison says something
        torch.testing.assert_close(got[k], want[k].detach(), rtol=1e-6, atol=1e-12, msg=k)


def test_the_intended_temperature_variant_changes_mtt_vls_update():
    """The 0.07 MTT-VL meant is a different update from the one its code computes (the check above
    has teeth for the inner scale)."""
    hp = OFFICIAL[("mtt-vl", "flickr")]
    student, start, target, data, batches, _ = problem("mtt-vl", 1)
    _, got = engine_iteration("mtt-vl", "flickr", student, start, target, data, batches, None)
    want = official_mtt_vl(student, start, target, data, batches, dict(hp, scale=1 / 0.07))
    assert not torch.allclose(got["images"], want["images"].detach(), rtol=1e-3)
