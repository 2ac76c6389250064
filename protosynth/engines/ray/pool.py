"""What the Ray stages share: the actor pool's settings, its resources and objects fetched once per worker."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator

import ray

from ...errors import P, ProtosynthError
from ..connect import EngineConfig

DECODE_CPUS = 1.0  # CPUs a decoding task reserves
WINDOW_PER_CPU = 2  # tasks in flight per cluster CPU: every CPU stays busy, the driver holds few results
# Actors are not restarted: Ray logs an error line to the driver's stderr for every actor whose
# constructor arguments live in the object store and may restart, which would break the one-line
# error contract; a lost actor fails the run instead, and rerunning it resumes from the finished shards.
# (It also keeps Ray Data from fusing the CPU stage into the actors, which it does when their remote
# arguments match: decoding stays in CPU tasks, scaling with the cluster's CPUs.)
# Ray 2.60 has no named parameter for it, and warns that the generic ones are deprecated (``actor_pool``).
ACTOR_ARGS = {"max_restarts": 0}


def actor_pool(ds, actor, engine: EngineConfig, refs: list):
    """``ds`` mapped one row at a time by ``engine.n_workers`` ``actor`` instances, each built as
    ``actor(refs=refs, device=..., threads=...)`` with the resources ``engine`` asks for, with
    ``max_restarts=0`` and without the deprecation warning that prints (see ACTOR_ARGS)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            actor,
            batch_size=1,
            concurrency=engine.n_workers,
            num_cpus=engine.cpus_per_worker,
            num_gpus=engine.gpus_per_worker or None,
            fn_constructor_kwargs={"refs": refs, "device": worker_device(engine), "threads": worker_threads(engine)},
            **ACTOR_ARGS,
        )


def in_order(submitted: Iterable[ray.ObjectRef]) -> Iterator:
    """The results of ``submitted`` (task refs, submitted lazily as this is consumed), in submission
    order, with at most ``WINDOW_PER_CPU`` tasks per cluster CPU in flight: the driver never holds
    more than that many results, and results are combined in the order the local engine combines them."""
    window = max(2, WINDOW_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()
    for ref in submitted:
        pending.append(ref)
        if len(pending) >= window:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


_FETCHED: dict[str, object] = {}  # per worker process: objects of the current run, fetched once


def fetched(ref: ray.ObjectRef):
    """``ray.get(ref)``, once per worker process (Ray reuses a task's process for the next task)."""
    key = ref.hex()
    if key not in _FETCHED:
        if len(_FETCHED) > 8:
            _FETCHED.clear()
        _FETCHED[key] = ray.get(ref)
    return _FETCHED[key]


def check_resources(engine: EngineConfig, decode: bool = False) -> None:
    """Resources the cluster can never give are one line now, not a pipeline waiting for ever
    (``decode``: a CPU decoding stage runs beside the actors and needs a CPU of its own)."""
    total = ray.cluster_resources()
    if engine.gpus_per_worker > 0 and total.get("GPU", 0) < engine.gpus_per_worker:
        raise ProtosynthError(
            f"{P.gpus_per_worker} {engine.gpus_per_worker}: the Ray cluster has {total.get('GPU', 0):g} GPUs"
        )
    need = engine.n_workers * engine.cpus_per_worker + (DECODE_CPUS if decode else 0)
    if total.get("CPU", 0) < need:  # the actors would hold every CPU and no decoding task could start
        extra = " plus one CPU to decode" if decode else ""
        raise ProtosynthError(
            f"{P.workers} {engine.n_workers} x {P.cpus_per_worker} {engine.cpus_per_worker:g}{extra} "
            f"need {need:g} CPUs; the Ray cluster has {total.get('CPU', 0):g}"
        )


def worker_device(engine: EngineConfig) -> str:
    return "cuda" if engine.gpus_per_worker > 0 else "cpu"


def worker_threads(engine: EngineConfig) -> int:
    """Torch threads of an actor: the CPUs it reserved (at least one). The same thread count as the
    local engine gives the same bits (docs/scale.md)."""
    return max(1, int(engine.cpus_per_worker))
