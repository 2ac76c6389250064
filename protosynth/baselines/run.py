"""``protosynth baseline``: distill a set with MTT-VL, LoRS, AMD or RepBlend from a buffer.

- **mtt-vl**: M random real pairs as the start; both modalities matched through the full unroll.
- **lors**: as mtt-vl, plus the low-rank similarity matrix S learned with the data, the student
  trained with weighted BCE against S; M-1 pairs at budget M (S is paid for with one pair).
- **amd**: image and text start epochs drawn independently within R_V and R_L (from the experts,
  logged); initialised from prototypes: the real pair nearest each k-means centroid of the joint
  CLIP embeddings (protosynth's prototype stage, ``--mode joint``).
- **repblend**: heads-only buffers; every inner step mixes backbone features and text features
  with one lambda ~ Beta(1, 1) and one permutation for both modalities (the S target not mixed).

The written set holds the optimised pixels both as PNGs (clamped to [0, 1]) and unclamped in
``embeddings.safetensors`` (``pixels``, normalised for the backbone), the text features (``text``,
tagged with the protocol's text space), the learned inner learning rates and S (``similarity``).
``protosynth eval retrieval`` trains on them as each method's own evaluation does; the manifest's
``evaluation`` entry says how (loss, and whether the image side is a frozen backbone + head).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from ..coreset import joint_features
from ..corpora.spec import corpus_name
from ..corpus import load_source
from ..embed import embed_corpus
from ..errors import P, ProtosynthError
from ..evaluation.pixels import denormalise
from ..models.clip import load_clip
from ..prototypes import kmeans
from ..sets.distilled import check_budget, check_out_dir, manifest_header, write_distilled
from ..sets.texts import member_images, with_reading_texts
from ..util.progress import StepBar
from ..util.runinfo import check_device, peak_rss_mb, versions
from . import amd
from .buffer import Buffer, load_buffer, make_student
from .checkpoint import LoopState, checkpoint_path, resume, run_fingerprint, save_checkpoint
from .features import ProtocolFeatures, protocol_features
from .matching import Blend, SyntheticSet, match
from .presets import USES_SIMILARITY, BaselineConfig, buffer_kind, default_family, resolve, settings
from .student import LowRankSimilarity, trainable


def default_out(cfg: BaselineConfig, corpus_spec: str) -> Path:
    return Path("distilled") / f"{corpus_name(corpus_spec)}-{cfg.method}-b{cfg.budget}-s{cfg.seed}"


def init_pairs(cfg: BaselineConfig, feats: ProtocolFeatures, m: int) -> np.ndarray:
    """The real pairs the synthetic set starts from: random, or (AMD) nearest to joint prototypes."""
    if cfg.method != "amd":
        return np.random.default_rng(cfg.seed).choice(feats.corpus.n_pairs, m, replace=False)

    emb = embed_corpus(feats.corpus, load_clip(cfg.clip, cfg.device))
    z = joint_features(emb.image.numpy(), emb.text.numpy())

    centroids, _ = kmeans(z, m, niter=25, seed=cfg.seed)
    index = faiss.IndexFlatL2(z.shape[1])
    index.add(np.ascontiguousarray(z, np.float32))
    _, near = index.search(np.ascontiguousarray(centroids, np.float32), min(m, len(z)))
    chosen, used = [], set()
    for row in near:  # the nearest pair to each centroid not already taken (m candidates always suffice)
        pick = next(int(p) for p in row if int(p) not in used)
        used.add(pick)
        chosen.append(pick)
    return np.array(chosen)


def buffer_corpus(buffer: Buffer, cfg: BaselineConfig):
    """The buffer's corpus, read as the buffer read it (its recorded image root, --skip-bad and columns) unless
    ``cfg`` says otherwise; returns it with ``cfg`` holding the options used, for the manifest."""
    rec = buffer.manifest["corpus"]
    given = cfg.reading
    root = given.image_root if given.image_root is not None else rec.get("image_root")
    reading = replace(
        given,
        image_root=Path(root) if root else None,
        skip_bad=given.skip_bad or bool(rec.get("skip_bad")),
        image_column=given.image_column if given.image_column is not None else rec.get("image_column"),
        caption_column=given.caption_column if given.caption_column is not None else rec.get("caption_column"),
    )
    return load_source(reading.of(rec["spec"])), replace(cfg, reading=reading)


def _check_buffer(buffer: Buffer, cfg: BaselineConfig, corpus) -> None:
    rec = buffer.manifest["corpus"]
    if rec["spec"] != corpus.spec:
        raise ProtosynthError(f"{P.buffer} {buffer.root} was trained on {rec['spec']}, not on {corpus.spec}")
    if rec["fingerprint"] != corpus.fingerprint:
        raise ProtosynthError(
            f"{P.buffer} {buffer.root} was trained on {rec['spec']} read as fingerprint "
            f"{rec['fingerprint']}; read now it is {corpus.fingerprint} (its images, "
            f"{P.image_root}, {P.skip_bad}, {P.image_column} or {P.caption_column} differ)"
        )
    want = buffer_kind(cfg.method)
    if buffer.shape != want:
        hint = "with" if want == "heads" else "without"
        raise ProtosynthError(
            f"{P.method} {cfg.method} needs a {want} buffer (one built {hint} {P.heads_only}); "
            f"{buffer.root} is {buffer.shape}",
            param="buffer",
        )


class DivergedError(ProtosynthError):
    """The matching loss stopped being finite: a result of the run's values (a sweep records the
    candidate as failed), not bad input."""


def _start_epochs(cfg: BaselineConfig, rng: np.random.Generator, last_start: int, amd_ranges: dict | None):
    if amd_ranges is not None:
        t_v = int(rng.integers(0, min(amd_ranges["R_V"], last_start) + 1))
        t_l = int(rng.integers(0, min(amd_ranges["R_L"], last_start) + 1))
        return t_v, t_l
    t = int(rng.integers(0, min(cfg.max_start_epoch, last_start + 1)))
    return t, t


def distill_baseline(cfg: BaselineConfig, command: str | None = None) -> Path:
    """Run one baseline and write its set; returns the set folder; ``command`` as for ``distill``."""
    check_device(cfg.device)
    cfg.check()
    if cfg.out is not None:  # before the buffer, which the default out's name needs
        check_out_dir(cfg.out, cfg.force)
    buffer = load_buffer(cfg.buffer)
    corpus_spec = buffer.manifest["corpus"]["spec"]
    out = cfg.out or default_out(cfg, corpus_spec)
    check_out_dir(out, cfg.force)
    family = cfg.family or default_family(corpus_spec)
    cfg = resolve(cfg, family, buffer.epochs)
    started = time.time()
    seconds: dict[str, float] = {}
    corpus, cfg = buffer_corpus(buffer, cfg)
    check_budget(cfg.budget, corpus)
    _check_buffer(buffer, cfg, corpus)
    b = buffer.manifest
    feats = protocol_features(
        corpus,
        b["protocol"],
        b["settings"].get("backbone"),
        b["settings"].get("text_encoder"),
        b["settings"].get("image_size"),
    )
    m = cfg.budget - 1 if cfg.method in USES_SIMILARITY else cfg.budget
    pairs = init_pairs(cfg, feats, m)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = feats.pixels[feats.pair_image[torch.from_numpy(pairs)]].clone().requires_grad_(True)
    texts = feats.texts[torch.from_numpy(pairs)].clone().requires_grad_(True)
    log_lr = cfg.lr_space == "log"
    lr0 = math.log(cfg.lr_init) if log_lr else cfg.lr_init
    syn = SyntheticSet(
        images,
        texts,
        torch.tensor(lr0, requires_grad=True),
        torch.tensor(lr0, requires_grad=True),
        LowRankSimilarity(m, cfg.rank, cfg.alpha, gen) if cfg.method in USES_SIMILARITY else None,
        log_lr=log_lr,
    )
    opt = outer_optimizer(syn, cfg)
    initial = snapshot(syn)
    seconds["setup"] = round(time.time() - started, 2)

    t0 = time.time()
    trajectories = [buffer.trajectory(e) for e in range(buffer.experts)]
    ranges = amd.expert_ranges(trajectories) if cfg.method == "amd" else None
    student = make_student(feats, buffer.shape == "heads", cfg.seed).to(cfg.device)
    # the student's own parameter order, never a set's: a set of strings iterates in an order that
    # changes with each process's hash seed, and so did the float sums over parameters (runs differed)
    names = list(trainable(student))
    if set(trajectories[0][0]) != set(names):
        raise ProtosynthError(
            f"{P.buffer} {buffer.root}: its parameters do not fit the protocol's student "
            f"({len(trajectories[0][0])} tensors saved, {len(names)} expected)"
        )
    temperature = cfg.temperature if cfg.temperature is not None else feats.protocol.temperature
    rng = np.random.default_rng(cfg.seed)
    last_start = buffer.epochs - cfg.expert_epochs
    ckpt = checkpoint_path(out)
    fingerprint = run_fingerprint(settings(cfg), buffer.root, buffer.manifest["settings"], pairs)
    state = resume(ckpt, fingerprint, cfg.force, syn, opt, gen, rng)
    if state is None:
        state = LoopState(perm=torch.randperm(m, generator=gen))
    else:
        print(f"{cfg.method} b{cfg.budget}: resuming after iteration {state.iteration} ({ckpt})", file=sys.stderr)
    losses, lr_trace = state.losses, state.lr_trace
    with StepBar(f"{cfg.method} b{cfg.budget}", cfg.iterations, completed=state.iteration) as bar:
        for it in range(state.iteration, cfg.iterations):
            e = int(rng.integers(buffer.experts))
            t_v, t_l = _start_epochs(cfg, rng, last_start, ranges)
            traj = trajectories[e]
            start = {k: (traj[t_v] if k.startswith("image.") else traj[t_l])[k] for k in names}
            target = {
                k: (traj[t_v + cfg.expert_epochs] if k.startswith("image.") else traj[t_l + cfg.expert_epochs])[k]
                for k in names
            }
            batches, blends = [], []
            for _ in range(cfg.syn_steps):
                if state.cursor + min(cfg.batch_syn, m) > m:
                    state.perm, state.cursor = torch.randperm(m, generator=gen), 0
                idx = state.perm[state.cursor : state.cursor + min(cfg.batch_syn, m)]
                state.cursor += len(idx)
                batches.append(idx)
                blends.append(
                    Blend(float(rng.beta(1.0, 1.0)), torch.randperm(len(idx), generator=gen))
                    if cfg.method == "repblend"
                    else None
                )
            loss = outer_step(student, start, target, syn, opt, batches, blends, temperature, cfg)
            if not np.isfinite(loss):
                raise DivergedError(
                    f"{cfg.method}: matching loss is {loss} at iteration {it + 1} (learned inner lrs: image "
                    f"{syn.rate('image').item():.3g}, text {syn.rate('text').item():.3g}); lower {P.lr_lr} if "
                    f"they grew large, else {P.lr_img}/{P.lr_txt}"
                )
            state.lr_clamps += clamp_lrs(syn)
            losses.append(loss)
            lr_trace.append((syn.rate("image").item(), syn.rate("text").item()))
            state.iteration = it + 1
            if cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
                state_now = replace(state, seconds=state.seconds + time.time() - t0)
                save_checkpoint(ckpt, fingerprint, syn, opt, gen, rng, state_now)
            bar.advance(f"loss {loss:.4f} t=({t_v},{t_l}) lr=({lr_trace[-1][0]:.3g},{lr_trace[-1][1]:.3g})")
    seconds["distill"] = round(state.seconds + time.time() - t0, 2)
    moved = movement(initial, snapshot(syn))
    written = _write(
        cfg, out, feats, syn, pairs, losses, ranges, state.lr_clamps, lr_trace, buffer, seconds, started, command, moved
    )
    ckpt.unlink(missing_ok=True)
    return written


def outer_optimizer(syn: SyntheticSet, cfg: BaselineConfig) -> torch.optim.SGD:
    """SGD with momentum 0.5 for images, texts, inner lrs and S, each at its own lr (all four
    official loops)."""
    groups = [
        {"params": [syn.images], "lr": cfg.lr_img},
        {"params": [syn.texts], "lr": cfg.lr_txt},
        {"params": [syn.lr_image, syn.lr_text], "lr": cfg.lr_lr},
    ]
    if syn.sim is not None:
        groups.append({"params": list(syn.sim.parameters()), "lr": cfg.lr_sim})
    return torch.optim.SGD(groups, momentum=0.5)


def outer_step(student, start, target, syn, opt, batches, blends, temperature, cfg: BaselineConfig) -> float:
    """One outer iteration: the matching gradient into the leaves, then the optimiser's step (a
    non-finite loss leaves the set unchanged); returns the matching loss."""
    opt.zero_grad(set_to_none=True)
    loss = match(
        student, start, target, syn, batches, temperature, cfg.grad_mode, blends, cfg.merged, bool(cfg.train_mode)
    )
    if np.isfinite(loss):
        opt.step()
    return loss


def clamp_lrs(syn: SyntheticSet) -> int:
    """Hold linear inner lrs at the 1e-4 floor (a negative lr would train the student backwards; the
    official loops have no floor); returns how many were clamped."""
    if syn.log_lr:  # in log space an lr is positive by construction
        return 0
    clamped = 0
    with torch.no_grad():
        for lr in (syn.lr_image, syn.lr_text):
            if lr.item() < 1e-4:
                lr.clamp_(min=1e-4)
                clamped += 1
    return clamped


def snapshot(syn: SyntheticSet) -> dict[str, torch.Tensor]:
    """The set's values now (pixels, texts, inner lrs, S), to measure how far a run moves them."""
    out = {"pixels": syn.images, "text": syn.texts, "lr_image": syn.rate("image"), "lr_text": syn.rate("text")}
    if syn.sim is not None:
        out["similarity"] = syn.sim()
    return {k: v.detach().clone() for k, v in out.items()}


def movement(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean absolute change of each part of the set from its start: a set that barely left its
    random start shows here (issue 30)."""
    return {k: float((after[k] - before[k]).abs().mean()) for k in before}


def _curve(losses: list[float], points: int = 50) -> list[float]:
    chunks = np.array_split(np.asarray(losses), min(points, len(losses)))
    return [round(float(c.mean()), 6) for c in chunks]


def _write(
    cfg, out, feats, syn, pairs, losses, ranges, lr_clamps, lr_trace, buffer, seconds, started, command, moved
) -> Path:
    pixels = syn.images.detach().cpu()
    rgb = denormalise(pixels, feats.backbone.mean, feats.backbone.std)
    arr = (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a) for a in arr]
    corpus = feats.corpus
    rows = [
        {
            "index": i,
            "image": f"images/{i:06d}.png",
            "caption": corpus.pair_caption[int(p)],
            "init_pair": int(p),
            "members": [int(p)],
        }
        for i, p in enumerate(pairs)
    ]
    tensors = {
        "pixels": pixels,
        "text": syn.texts.detach().cpu(),
        "lr_image": syn.rate("image").detach().reshape(1),
        "lr_text": syn.rate("text").detach().reshape(1),
    }
    if syn.sim is not None:
        tensors["similarity"] = syn.sim().detach().cpu()
    k = max(1, min(10, len(losses) // 5))
    manifest = {
        **manifest_header(cfg.method, cfg.budget, None, cfg.seed, corpus, None, text_space=feats.encoder.space),
        "pairs_stored": len(pairs),
        "settings": settings(cfg),
        "protocol": {
            "name": feats.protocol.name,
            "backbone": feats.backbone.spec,
            "text_encoder": feats.encoder.spec,
            "image_size": feats.size,
            "mean": list(feats.backbone.mean),
            "std": list(feats.backbone.std),
        },
        "evaluation": {
            "loss": "wbce" if syn.sim is not None else "info_nce",
            "image": "frozen+head" if cfg.method == "repblend" else "finetune",
        },
        "buffer": {
            "path": str(buffer.root),
            "settings": buffer.manifest["settings"],
            "seconds": buffer.manifest["seconds"],
        },
        "caption_note": "captions are those of the real pairs the synthetic pairs started from (init_pair); "
        "the trained text is the stored `text` tensor",
        "matching_loss": {
            "first": round(float(np.mean(losses[:k])), 6),
            "last": round(float(np.mean(losses[-k:])), 6),
            "curve": _curve(losses),
        },
        "learned_lr": {
            "image": syn.rate("image").item(),
            "text": syn.rate("text").item(),
            "clamped_steps": lr_clamps,
            # why a run stalled: an inner lr pinned at the 1e-4 floor stops the student
            "image_curve": _curve([a for a, _ in lr_trace]),
            "text_curve": _curve([b for _, b in lr_trace]),
        },
        # mean absolute change from the start, per part of the set (pixels normalised for the backbone)
        "movement": moved,
        "amd_ranges": ranges,
        "versions": versions(),
        "peak_memory_mb": peak_rss_mb(),
        "seconds": dict(seconds, total=round(time.time() - started, 2)),
        "command": command,
    }
    rows = with_reading_texts(rows, corpus)  # the start pairs' captions: its captions-like readings
    return write_distilled(
        out,
        images,
        rows,
        tensors,
        manifest,
        text_space=feats.encoder.space,
        force=cfg.force,
        member_images=member_images(rows, corpus),
    )
