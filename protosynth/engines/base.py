"""The engine the stages call: what they need run (passes over ranges of pairs, a check over image
keys, encoding planned batches, drawing render batches), without knowing where it runs.

``make_engine`` turns an ``EngineConfig`` (``engines.connect``) into an ``Engine``: ``LocalEngine`` runs
everything in this process, ``engines.ray.engine.RayEngine`` on a Ray cluster. The factory is the one
place that imports ``protosynth.engines.ray`` (lazily: Ray is an optional extra), so no stage branches on
Ray or imports it. Both engines run the stage's own functions on the same units of work and hand
the results back in the same order, so their files are byte-identical (docs/scale.md). The stages
hand over their work as functions and picklable jobs, so the engines import no stage module.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence

from torch.utils.data import DataLoader

from ..errors import ProtosynthError
from .connect import EngineConfig, import_ray


@dataclass
class EncodeJob:
    """Planned batches to encode: ``batches[j]`` prepares batch j on a CPU (a tensor, or the
    ProtosynthError of a bad input, returned rather than raised: a worker would wrap it); ``kinds[j]``
    says what it is; ``encode(model, kind, x)`` (a module-level function, so it pickles by name) runs
    the model on it and returns a float32 array. ``loader_workers``: the local engine's DataLoader
    processes. ``batches`` holds no model, so the Ray engine sends it to CPU tasks without weights."""

    batches: Sequence
    kinds: list[str]
    model: Any  # with ``.device`` (and ``.model``, the module the Ray engine moves to an actor's device)
    encode: Callable[[Any, str, Any], Any]
    loader_workers: int = 0


class Engine(Protocol):
    """What the stages need run; every result comes back in the order of the work's units."""

    def session(self) -> ContextManager:
        """One session for several stages (none for the local engine)."""

    def map_ranges(self, fn, ranges, per_range, shared, image_raw, text_raw) -> Iterable:
        """``fn(image_raw, text_raw, a, b, *per_range[j], *shared)`` for each range ``(a, b)``, in order."""

    def map_units(self, fn, units: list, shared: tuple) -> Iterable:
        """``fn(unit, *shared)`` for each of ``units``, in order (``shared`` sent once)."""

    def find_unreadable(self, check, source, keys: list[str]) -> dict[str, str]:
        """``check(source, keys)``: key -> message of each unreadable image, in key order."""

    def encode_batches(self, job: EncodeJob, consume: Callable[[Iterator], None]) -> None:
        """Call ``consume`` with an iterator of each planned batch's embeddings, in plan order."""

    def render_spans(self, job, spans: list[tuple[int, int]], done: Callable) -> None:
        """``done(s, e, images)`` for each span in order, ``images`` drawn by ``job.drawer()(s, e)``."""


class LocalEngine:
    """Everything in this process, one unit after another."""

    def session(self) -> ContextManager:
        return nullcontext()

    def map_ranges(self, fn, ranges, per_range, shared, image_raw, text_raw) -> Iterator:
        for (a, b), extra in zip(ranges, per_range):
            yield fn(image_raw, text_raw, a, b, *extra, *shared)

    def map_units(self, fn, units: list, shared: tuple) -> Iterator:
        for unit in units:
            yield fn(unit, *shared)

    def find_unreadable(self, check, source, keys: list[str]) -> dict[str, str]:
        return check(source, keys)

    def encode_batches(self, job: EncodeJob, consume: Callable[[Iterator], None]) -> None:
        """Batches prepared by ``job.loader_workers`` DataLoader processes (whole batches:
        ``batch_size=None`` keeps the plan's boundaries), encoded here."""
        loader = DataLoader(
            job.batches,
            batch_size=None,
            shuffle=False,
            num_workers=job.loader_workers,
            pin_memory=job.model.device.type == "cuda",
            persistent_workers=False,
        )
        batches = [iter(loader)]  # the one reference: cleared below, so the workers stop now, also on an error
        try:
            consume(_encoded(batches, job))
        finally:
            batches.clear()

    def render_spans(self, job, spans: list[tuple[int, int]], done: Callable) -> None:
        draw = job.drawer()
        for s, e in spans:
            done(s, e, draw(s, e))


def _encoded(batches: list, job: EncodeJob) -> Iterator:
    """Each planned batch's embeddings, in plan order."""
    for kind in job.kinds:
        x = next(batches[0])
        if isinstance(x, ProtosynthError):
            raise x
        yield job.encode(job.model, kind, x)


def make_engine(engine: EngineConfig | Engine | None) -> Engine:
    """The engine ``engine`` asks for (None: the local one; an Engine: itself). The Ray engine's
    module imports Ray, an optional extra: a missing Ray is one line naming the extra."""
    if engine is None:
        return LocalEngine()
    if not isinstance(engine, EngineConfig):
        return engine
    if not engine.on_ray:
        return LocalEngine()
    import_ray()
    from .ray.engine import RayEngine  # noqa: PLC0415 -- imports Ray, an optional extra

    return RayEngine(engine)
