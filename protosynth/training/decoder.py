"""Train the small unCLIP decoder on a corpus, conditioned on a trained CLIP's image embeddings.

DDPM training (v-prediction by default, epsilon available) with Stable unCLIP's conditioning recipe: the embedding is
noise-augmented at a random level (so the decoder tolerates prototype embeddings, which are means
and sit off the data manifold) and dropped to zeros 10% of the time for classifier-free guidance.
EMA weights are kept and are what gets saved. Checkpoints every few minutes make it resumable.

Render fidelity (the adherence measure): render held-out embeddings, re-embed the renders with the
same CLIP, and count how often each render is nearest to its own target (top-1/top-5 among all
targets), with the mean cosine to the target. It is measured at several classifier-free guidance
scales, because the best one moves as training goes on (about 3 for an undertrained decoder, about 1
for a trained one, where 3 ruins it). The final sweep runs at the steps ``distill`` renders with
(``render_steps``; the best scale depends on them too) and saves the best scale and those steps as
the folder's render defaults (``render_defaults.json``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from ..corpus import Corpus
from ..errors import P, ProtosynthError
from ..models.clip import ClipEncoder, load_clip
from ..models.decoders import Decoder, open_decoder
from ..models.small_unclip import (
    COORD_CHANNELS,
    build_pipeline,
    to_unit_range,
    write_conditioning,
    write_render_defaults,
)
from ..render import RenderConfig, fidelity, render_images, resolve_render
from ..util.files import atomic_path, remove_stale_temps, write_text_atomic
from ..util.progress import StepBar
from .clip import corpus_tensor
from .common import cosine_lr, restore_rng, rng_state, save_atomic

GUIDANCES = (1.0, 1.5, 2.0, 3.0)
LR_SCHEDULES = ("constant", "cosine")
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass
class DecoderTrainConfig:
    steps: int = 20_000
    max_minutes: float | None = None  # stop early (after a checkpoint) when this much time has passed
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 200
    lr_schedule: str = (
        "constant"  # after warm-up: "constant" (what the shipped decoder used) or "cosine" to 0 at `steps`
    )
    ema_decay: float = 0.999
    max_noise_level: int = 200  # conditioning noise augmentation drawn from [0, max)
    cond_drop: float = 0.1
    seed: int = 0
    quick: bool = False
    checkpoint_minutes: float = 5.0
    eval_every: int = 2000
    eval_images: int = 256
    eval_steps: int = 25
    guidances: tuple[float, ...] = GUIDANCES  # classifier-free guidance scales each evaluation measures
    # DDIM steps of the final sweep, saved with its best scale as the folder's render defaults: the best
    # scale depends on them (the shipped decoder at guidance 1.5: 84 % held-out top-1 at 25 steps, 64 % at 50)
    render_steps: int = 50
    init_from: str | None = None  # a decoder spec to start from (e.g. "default") instead of random weights
    prediction_type: str = "v_prediction"  # or "epsilon" (what the shipped decoder uses)
    coords: bool = False  # give the UNet (x, y) position channels (see decoder.build_unet)

    def __post_init__(self) -> None:
        self.guidances = tuple(float(g) for g in self.guidances)
        if not self.guidances or any(g < 1.0 for g in self.guidances):
            raise ProtosynthError(
                f"{P.decoder.guidances} {','.join(map(str, self.guidances))}: give one or more "
                "scales of at least 1 (1 = no classifier-free guidance)"
            )
        if self.render_steps < 1:
            raise ProtosynthError(
                f"{P.decoder.render_steps} {self.render_steps}: the sweep needs at least one denoising step"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ProtosynthError(f"{P.decoder.lr_schedule} {self.lr_schedule!r}: use {' or '.join(LR_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ProtosynthError(
                f"{P.decoder.prediction_type} {self.prediction_type!r}: use {' or '.join(PREDICTION_TYPES)}"
            )

    @classmethod
    def preset(cls, quick: bool, **overrides) -> "DecoderTrainConfig":
        """The full configuration, or the tiny one ``--quick`` trains in well under a minute."""
        base = (
            dict(
                quick=True,
                steps=40,
                batch_size=32,
                eval_every=0,
                eval_images=32,
                eval_steps=5,
                render_steps=5,
                checkpoint_minutes=0.2,
            )
            if quick
            else {}
        )
        return cls(**{**base, **overrides})


def decoder_lr(cfg: DecoderTrainConfig, step: int) -> float:
    """The learning rate at ``step``: linear warm-up, then constant or a cosine decay to zero at
    ``cfg.steps``. The shipped decoder was fine-tuned with the cosine decay (docs/models.md)."""
    if cfg.lr_schedule == "cosine":
        return cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


def widened_for_coords(state: dict[str, torch.Tensor], unet) -> dict[str, torch.Tensor]:
    """A UNet state dict made loadable into ``unet`` when only ``unet`` takes the (x, y) position
    channels: their input weights start at zero, so the widened UNet computes exactly what the
    original did and training learns how to use position from there."""
    key = "conv_in.weight"
    w, want = state[key], unet.conv_in.weight
    if w.shape[1] + COORD_CHANNELS == want.shape[1] and w.shape[0] == want.shape[0]:
        state = dict(state)
        state[key] = torch.cat([w, w.new_zeros(w.shape[0], COORD_CHANNELS, *w.shape[2:])], dim=1)
    return state


@torch.no_grad()
def embed_images(encoder: ClipEncoder, corpus: Corpus) -> torch.Tensor:
    return encoder.encode_images(corpus_tensor(corpus, encoder.preprocess))


@torch.no_grad()
def render_fidelity(
    decoder: Decoder,
    encoder: ClipEncoder,
    targets: torch.Tensor,
    steps: int,
    guidance: float,
    seed: int = 0,
    batch: int = 128,
) -> dict[str, float]:
    """Render each raw target embedding, re-embed, and score top-1/top-5 retrieval of its target."""
    # the decoder alone: CLIP guidance would grade the guide, not the decoder
    cfg = RenderConfig(steps=steps, guidance_scale=guidance, batch_size=batch, seed=seed, clip_guidance=0.0)
    return fidelity(encoder, render_images(decoder, targets, resolve_render(cfg, decoder)), targets)


def guidance_sweep(
    decoder: Decoder,
    encoder: ClipEncoder,
    targets: torch.Tensor,
    steps: int,
    guidances: tuple[float, ...],
    seed: int = 0,
) -> tuple[float, dict[str, dict]]:
    """Held-out fidelity at each guidance scale, and the scale with the best (top-1, top-5, mean
    cosine); a tie goes to the scale listed first."""
    sweep = {str(float(g)): render_fidelity(decoder, encoder, targets, steps, g, seed=seed) for g in guidances}
    key = {g: (sweep[g]["top1"], sweep[g]["top5"], sweep[g]["mean_cosine"]) for g in sweep}
    best = max(sweep, key=lambda g: key[g])  # max keeps the first of equal keys
    return float(best), sweep


def measured_defaults(best: float, sweep: dict, cfg: DecoderTrainConfig, n: int) -> tuple[dict, dict]:
    """What ``render_defaults.json`` records: the chosen guidance and the measurements behind it."""
    settings = {"guidance_scale": best, "steps": cfg.render_steps}
    return settings, {
        "guidance_sweep": sweep,
        "held_out_images": n,
        "seed": cfg.seed,
        "chosen_by": "top-1, then top-5, then mean cosine",
    }


def calibrate_decoder(decoder_dir: Path, clip_dir: Path, test: Corpus, cfg: DecoderTrainConfig) -> dict:
    """Measure a saved decoder's held-out fidelity at ``cfg.guidances`` and record the best scale
    in its ``render_defaults.json`` (for decoders trained before the trainer did this itself)."""
    encoder = load_clip(f"small:{clip_dir}")
    decoder = open_decoder(str(decoder_dir))
    if decoder.clip_space not in (None, encoder.space):
        raise ProtosynthError(
            f"{decoder_dir}: decoder trained on CLIP {decoder.clip_space}, not on {encoder.space} ({clip_dir})"
        )
    targets = embed_images(encoder, test)[: cfg.eval_images]
    best, sweep = guidance_sweep(decoder, encoder, targets, cfg.render_steps, cfg.guidances, cfg.seed)
    write_render_defaults(decoder_dir, *measured_defaults(best, sweep, cfg, len(targets)))
    return {"render_fidelity": sweep[str(best)], "guidance_scale": best, "guidance_sweep": sweep}


def train_decoder(corpus: Corpus, test: Corpus, clip_dir: Path, out: Path, cfg: DecoderTrainConfig) -> dict:
    """Train into ``out`` (a ``save_pretrained`` folder, EMA weights); resume from its checkpoint."""
    encoder = load_clip(f"small:{clip_dir}")
    torch.manual_seed(cfg.seed)
    size = encoder.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    pipe = build_pipeline(
        encoder.embed_dim, image_size=size, quick=cfg.quick, prediction_type=cfg.prediction_type, coords=cfg.coords
    )
    embeds = embed_images(encoder, corpus)
    pipe.image_normalizer.mean.data.copy_(embeds.mean(0, keepdim=True))
    pipe.image_normalizer.std.data.copy_(embeds.std(0, keepdim=True).clamp_min(1e-6))
    images = to_unit_range([corpus.load_image(i) for i in range(corpus.n_images)], size)
    decoder = Decoder.from_pipeline(pipe, clip_space=encoder.space)  # renders the evaluations, as training goes
    unet = pipe.unet
    ckpt_dir = out.with_name(out.name + ".ckpt")
    ckpt = ckpt_dir / "checkpoint.pt"
    if cfg.init_from and not ckpt.is_file():  # continue from a saved decoder (e.g. the shipped one)
        start = open_decoder(cfg.init_from)
        if start.clip_space not in (None, encoder.space):
            raise ProtosynthError(
                f"{P.decoder.init_from} {cfg.init_from}: trained on CLIP {start.clip_space}, "
                f"not on {encoder.space} ({clip_dir})"
            )
        try:
            unet.load_state_dict(widened_for_coords(start.pipe.unet.state_dict(), unet))
        except RuntimeError:
            raise ProtosynthError(
                f"{P.decoder.init_from} {cfg.init_from}: its UNet architecture differs from "
                f"the one being trained ({'quick' if cfg.quick else 'full'})"
            ) from None
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state.get("quick", cfg.quick) != cfg.quick:
            raise ProtosynthError(
                f"{ckpt}: checkpoint is from a {'quick' if state.get('quick') else 'full'} run; "
                f"delete {ckpt_dir} to start over"
            )
        if state.get("coords", False) != cfg.coords:
            raise ProtosynthError(
                f"{ckpt}: checkpoint is from a run {'with' if state.get('coords') else 'without'} "
                f"{P.decoder.coords}; delete {ckpt_dir} to start over"
            )
        if state.get("prediction_type", "epsilon") != cfg.prediction_type:
            raise ProtosynthError(
                f"{ckpt}: checkpoint predicts {state.get('prediction_type', 'epsilon')}, not "
                f"{cfg.prediction_type}; delete {ckpt_dir} to start over"
            )
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        if state.get("clip_space", encoder.space) != encoder.space:
            raise ProtosynthError(
                f"{ckpt}: this decoder checkpoint was trained on CLIP {state.get('clip_space')}, but {clip_dir} is "
                f"{encoder.space}; delete {ckpt_dir} to start over"
            )
        restore_rng(state["rng"], gen)
        step, history = state["step"], state["history"]
    test_targets = embed_images(encoder, test)[: cfg.eval_images]
    sched = pipe.image_noising_scheduler  # the DDPM training schedule (same betas as the sampler)
    t_start, last_ckpt = time.time(), time.time()

    def checkpoint() -> None:
        save_atomic(
            {
                "unet": unet.state_dict(),
                "opt": opt.state_dict(),
                "ema": ema.state_dict(),
                "rng": rng_state(gen),
                "step": step,
                "history": history,
                "clip_space": encoder.space,
                "quick": cfg.quick,
                "prediction_type": cfg.prediction_type,
                "coords": cfg.coords,
            },
            ckpt,
        )

    def evaluate() -> dict:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        unet.eval()
        best, sweep = guidance_sweep(decoder, encoder, test_targets, cfg.eval_steps, cfg.guidances, cfg.seed)
        ema.restore(unet.parameters())
        unet.train()
        return {"guidance_scale": best, **sweep[str(best)], "sweep": sweep}

    with StepBar("train decoder", cfg.steps, step) as bar:
        while step < cfg.steps:
            idx = torch.randint(0, corpus.n_images, (cfg.batch_size,), generator=gen)
            x0, e = images[idx], embeds[idx]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
            levels = torch.randint(0, cfg.max_noise_level, (len(idx),), generator=gen)
            class_labels, cond = pipe.condition(e, levels, torch.randn(e.shape, generator=gen))
            keep = (torch.rand(len(idx), generator=gen) >= cfg.cond_drop).float()[:, None]
            class_labels, cond = class_labels * keep, cond * keep
            for g in opt.param_groups:
                g["lr"] = decoder_lr(cfg, step)
            pred = pipe.predict(sched.add_noise(x0, noise, t), t, class_labels, cond)
            target = sched.get_velocity(x0, noise, t) if cfg.prediction_type == "v_prediction" else noise
            loss = F.mse_loss(pred, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.step(unet.parameters())
            step += 1
            bar.advance(f"loss {loss.item():.4f}")
            if cfg.eval_every and step % cfg.eval_every == 0:
                history.append({"step": step, "minutes": round((time.time() - t_start) / 60, 1), **evaluate()})
                print(f"decoder eval {json.dumps(history[-1])}", flush=True)
            out_of_time = cfg.max_minutes is not None and time.time() - t_start > cfg.max_minutes * 60
            if time.time() - last_ckpt > cfg.checkpoint_minutes * 60 or step == cfg.steps or out_of_time:
                checkpoint()
                last_ckpt = time.time()
            if out_of_time:
                break
    ema.copy_to(unet.parameters())
    unet.eval()
    best, sweep = guidance_sweep(decoder, encoder, test_targets, cfg.render_steps, cfg.guidances, cfg.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)  # what killed runs writing this folder left behind
    with atomic_path(out, directory=True) as tmp:  # an earlier decoder folder is replaced only now
        pipe.save_pretrained(str(tmp))
        write_conditioning(tmp, encoder.space, encoder.embed_dim)
        write_render_defaults(tmp, *measured_defaults(best, sweep, cfg, len(test_targets)))
        record = {
            "steps": step,
            "config": asdict(cfg),
            "history": history,
            "test_fidelity": sweep[str(best)],
            "guidance_scale": best,
            "guidance_sweep": sweep,
            "seconds_this_run": round(time.time() - t_start, 1),
        }
        write_text_atomic(tmp / "train_metrics.json", json.dumps(record, indent=2))
    return {"steps": step, "render_fidelity": sweep[str(best)], "guidance_scale": best, "guidance_sweep": sweep}
