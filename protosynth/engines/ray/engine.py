"""The Ray engine (``engines.Engine`` on a Ray cluster): each method opens or reuses the Ray session
(``engine.ray_session``) and runs the stage's own functions and jobs, which it receives as
arguments, in the modules beside this one; nothing here imports a stage."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Iterator

from ..connect import EngineConfig, ray_session
from . import cluster, corpus, embed, render


class RayEngine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    def session(self) -> AbstractContextManager:
        return ray_session(self.cfg)

    def map_ranges(self, fn, ranges, per_range, shared, image_raw, text_raw) -> Iterator:
        return cluster.map_ray(fn, ranges, per_range, shared, image_raw, text_raw, self.cfg)

    def map_units(self, fn, units: list, shared: tuple) -> Iterator:
        return cluster.map_units(fn, units, shared, self.cfg)

    def find_unreadable(self, check, source, keys: list[str]) -> dict[str, str]:
        return corpus.find_unreadable(check, source, keys, self.cfg)

    def encode_batches(self, job, consume: Callable[[Iterator], None]) -> None:
        embed.encode_batches(job, consume, self.cfg)

    def render_spans(self, job, spans: list[tuple[int, int]], done: Callable) -> None:
        render.render_spans(job, spans, done, self.cfg)
