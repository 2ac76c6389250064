"""Rendering on Ray: the renderer's own batches, whole, shared out to an actor pool of decoders.

Each image is seeded by its index (``render.image_seed``), but a batch's arithmetic is not
byte-invariant on a CPU (another batch composition moves a few pixels by one level), so the work is
split at the local engine's batch boundaries (``render.batch_spans``): every image is drawn in the
batch it would be drawn in locally, and the set does not depend on the number of actors. Each actor
holds the stage's job (``render.RenderJob``: the decoder, and the CLIP for CLIP-guided sampling)
and draws with its ``drawer``; the images come back in batch order.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import ray
import torch
from PIL import Image

from ..connect import EngineConfig, ray_session, unwrapped
from .pool import actor_pool, check_resources
from .wire import column, from_bytes, to_bytes


class Renderer:
    """Actor stage: one decoder per actor, on the GPU Ray gives it (``gpus_per_worker`` > 0) or the CPU."""

    def __init__(self, refs: list, device: str, threads: int):
        torch.set_num_threads(threads)
        (job,) = ray.get(refs)
        if device != "cpu":
            job.to(device)
        self.draw = job.drawer()

    def __call__(self, batch: dict) -> dict:
        out = []
        for s, e in zip(batch["s"], batch["e"]):
            images = self.draw(int(s), int(e))
            out.append(to_bytes(np.stack([np.asarray(im.convert("RGB")) for im in images])))
        return {"s": batch["s"], "images": column(out)}


def render_spans(job, spans: list[tuple[int, int]], done: Callable, engine: EngineConfig) -> None:
    """``engines.LocalEngine.render_spans`` on ``engine.n_workers`` actors: ``done(s, e, images)`` in order."""
    with ray_session(engine), unwrapped():
        check_resources(engine)
        refs = [ray.put(job)]
        ds = ray.data.from_items([{"s": s, "e": e} for s, e in spans], override_num_blocks=len(spans))
        ds = actor_pool(ds, Renderer, engine, refs)
        for (s, e), row in zip(spans, ds.iter_rows()):
            if int(row["s"]) != s:
                raise AssertionError(f"Ray returned the batch at {row['s']} where {s} was due")  # a bug
            done(s, e, [Image.fromarray(a) for a in from_bytes(row["images"])])
