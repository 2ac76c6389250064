"""Clustering's passes over every pair (``passes.py``) as Ray tasks, one per range (a store's shard).

The driver fits k-means on its seeded sample and keeps only histograms, member lists, K x K counts
and K x D sums (``passes``: the cosines and labels stay in the scratch folder, or are recomputed by
a task that does not see it); the tasks read the rows (the store's shard files, by path: every node must
see the store's folder, as the workers of any Ray cluster see shared storage). Results come back in
range order and are combined in that order, as the local engine combines them, so both engines give
byte-identical prototypes. At most ``pool.WINDOW_PER_CPU`` tasks per cluster CPU are in flight
(``pool.in_order``), so the driver never holds more than that many ranges' results.
"""

from __future__ import annotations

import ray

from ..connect import EngineConfig, ray_session, unwrapped
from .pool import in_order


@ray.remote
def _range_task(fn, image_raw, text_raw, a: int, b: int, extra: tuple, shared: tuple):
    return fn(image_raw, text_raw, a, b, *extra, *shared)


def map_ray(fn, ranges, per_range, shared, image_raw, text_raw, engine: EngineConfig):
    """``passes.map_local`` on Ray: ``fn`` over ``ranges`` as tasks, results yielded in range order."""
    with ray_session(engine), unwrapped():
        rows = [ray.put(image_raw), ray.put(text_raw)]  # a store's Rows pickle as paths, arrays as data
        shared_ref = ray.put(shared)
        yield from in_order(
            _range_task.remote(fn, *rows, a, b, extra, shared_ref) for (a, b), extra in zip(ranges, per_range)
        )


@ray.remote
def _unit_task(fn, unit, shared: tuple):
    return fn(unit, *shared)


def map_units(fn, units: list, shared: tuple, engine: EngineConfig):
    """``LocalEngine.map_units`` on Ray: ``fn(unit, *shared)`` as one task per unit (the corpus
    index's shards: each task builds and writes one), results yielded in unit order; ``shared`` goes
    to the object store once."""
    with ray_session(engine), unwrapped():
        shared_ref = ray.put(shared)
        yield from in_order(_unit_task.remote(fn, unit, shared_ref) for unit in units)
