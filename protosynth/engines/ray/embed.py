"""Embedding on Ray Data: the local engine's batches, prepared by CPU tasks and encoded by an actor pool.

The stage plans the shards and batches (``embed.batch_plan``) and hands over an ``engines.EncodeJob``;
the Ray dataset is one row per planned batch. A CPU ``map_batches`` stage prepares a batch
(``job.batches[j]``: the images decoded and preprocessed through the corpus's own reader, so every
corpus format works unchanged, or the captions tokenised), and a pool of ``workers`` actors, each
holding the CLIP, encodes it with the stage's ``job.encode``. The rows come back in plan order
(``preserve_order``) and go to the stage's ``consume``, which joins them into shards and writes every
file with the store's own atomic writers, so the store, its index and its resumption are the local
engine's.

The prepared batches (the corpus, the preprocessing, the plan) and the CLIP go to the object store
once (``ray.put``), not with each task: workers need no copy of the weights or the corpus files'
manifest, only access to the images (a path every node can read, as on any Ray cluster).
"""

from __future__ import annotations

import copy

import ray
import torch

from ...errors import ProtosynthError
from ..connect import EngineConfig, ray_session, unwrapped
from .pool import DECODE_CPUS, actor_pool, check_resources, fetched
from .wire import column, error_bytes, from_bytes, raise_error, to_bytes


def _prepare(batch: dict, refs: list) -> dict:
    """CPU stage: planned batch ``id`` -> its prepared images or tokens, as ``.npy`` bytes; a bad
    image is the reader's one-line error, carried as data to the driver."""
    batches, kinds = (fetched(r) for r in refs)
    out_kinds, xs, errors = [], [], []
    for j in batch["id"]:
        x = batches[int(j)]
        err = x if isinstance(x, ProtosynthError) else None
        out_kinds.append(kinds[int(j)])
        xs.append(b"" if err is not None else to_bytes(x.numpy()))
        errors.append(error_bytes(err))
    return {"id": batch["id"], "kind": column(out_kinds), "x": column(xs), "error": column(errors)}


class Encoder:
    """Actor stage: one CLIP per actor, on the GPU Ray gives it (``gpus_per_worker`` > 0) or the CPU."""

    def __init__(self, refs: list, device: str, threads: int):
        torch.set_num_threads(threads)
        self.model, self.encode = ray.get(refs)
        self.model.device = torch.device(device)
        self.model.model.to(self.model.device)

    def __call__(self, batch: dict) -> dict:
        ys = []
        for kind, x, err in zip(batch["kind"], batch["x"], batch["error"]):
            ys.append(b"" if err else to_bytes(self.encode(self.model, kind, torch.from_numpy(from_bytes(x)))))
        return {"id": batch["id"], "y": column(ys), "error": batch["error"]}


def on_cpu(model):
    """The model as the object store should hold it: on the CPU (an actor moves it to its device)."""
    if model.device.type == "cpu":
        return model
    moved = copy.deepcopy(model)
    moved.model.to("cpu")
    moved.device = torch.device("cpu")
    return moved


def encode_batches(job, consume, engine: EngineConfig) -> None:
    """``engines.LocalEngine.encode_batches`` on Ray: the same batches, handed to ``consume`` in order."""
    if not job.kinds:
        return  # nothing to compute: no Ray session is needed
    with ray_session(engine), unwrapped():
        _run(job, consume, engine)


def _run(job, consume, engine: EngineConfig) -> None:
    check_resources(engine, decode=True)
    n = len(job.kinds)
    ds = ray.data.range(n, override_num_blocks=n)
    refs = [ray.put(job.batches), ray.put(job.kinds)]
    ds = ds.map_batches(_prepare, batch_size=1, fn_kwargs={"refs": refs}, num_cpus=DECODE_CPUS)
    ds = actor_pool(ds, Encoder, engine, [ray.put(on_cpu(job.model)), ray.put(job.encode)])

    def encoded():
        for want, row in enumerate(ds.iter_rows()):
            if int(row["id"]) != want:
                raise AssertionError(f"Ray returned batch {row['id']} where {want} was due")  # a bug, not input
            raise_error(row["error"])
            yield from_bytes(row["y"])

    consume(encoded())
