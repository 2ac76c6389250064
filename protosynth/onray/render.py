"""Rendering on Ray: the renderer's own batches, whole, shared out to an actor pool of decoders.

Each image is seeded by its index (``render.image_seed``), but a batch's arithmetic is not
byte-invariant on a CPU (another batch composition moves a few pixels by one level), so the work is
split at the local engine's batch boundaries (``render.batch_spans``): every image is drawn in the
batch it would be drawn in locally, and the set does not depend on the number of actors. Each actor
holds the decoder (and the CLIP, for CLIP-guided sampling); the images come back in batch order.
"""

from __future__ import annotations

import numpy as np
import ray
import torch
from PIL import Image

from ..engine import EngineConfig, ray_session, unwrapped
from ..models.clip import ClipEncoder
from ..models.unclip import Decoder
from ..progress import StepBar
from ..render import RenderConfig, pixel_embedder, render_batch
from .pool import actor_pool, check_resources
from .wire import column, from_bytes, to_bytes


class Renderer:
    """Actor stage: one decoder per actor, on the GPU Ray gives it (``gpus_per_worker`` > 0) or the CPU."""

    def __init__(self, refs: list, device: str, threads: int):
        torch.set_num_threads(threads)
        self.decoder, self.guide, self.job = ray.get(refs)
        if device != "cpu":
            self.decoder.pipe.to(device)
            if self.guide is not None:
                self.guide.model.to(device)
                self.guide.device = torch.device(device)
        cfg = self.job["cfg"]
        self.guidance = pixel_embedder(self.guide) if cfg.clip_guidance > 0 else None

    def __call__(self, batch: dict) -> dict:
        job, out = self.job, []
        for s, e in zip(batch["s"], batch["e"]):
            images = render_batch(
                self.decoder,
                job["embeds"],
                job["cfg"],
                int(s),
                int(e),
                job["init_images"],
                self.guidance,
                job["prompts"],
                job["candidate"],
            )
            out.append(to_bytes(np.stack([np.asarray(im.convert("RGB")) for im in images])))
        return {"s": batch["s"], "images": column(out)}


def render_spans(
    decoder: Decoder,
    embeds: torch.Tensor,
    cfg: RenderConfig,
    spans: list[tuple[int, int]],
    init_images: list[Image.Image] | None,
    guide: ClipEncoder | None,
    prompts: list[str] | None,
    candidate: int,
    engine: EngineConfig,
) -> list[Image.Image]:
    """``render.render_images``'s batches ``spans`` on ``engine.n_workers`` actors, in order."""
    with ray_session(engine), unwrapped():
        check_resources(engine)
        job = {"embeds": embeds, "cfg": cfg, "init_images": init_images, "prompts": prompts, "candidate": candidate}
        refs = [ray.put(decoder), ray.put(guide if cfg.clip_guidance > 0 else None), ray.put(job)]
        ds = ray.data.from_items([{"s": s, "e": e} for s, e in spans], override_num_blocks=len(spans))
        ds = actor_pool(ds, Renderer, engine, refs)
        out: list[Image.Image] = []
        with StepBar("render", len(spans)) as bar:
            for (s, e), row in zip(spans, ds.iter_rows()):
                if int(row["s"]) != s:
                    raise AssertionError(f"Ray returned the batch at {row['s']} where {s} was due")  # a bug
                out.extend(Image.fromarray(a) for a in from_bytes(row["images"]))
                bar.advance(f"{e}/{len(embeds)} images")
        return out
