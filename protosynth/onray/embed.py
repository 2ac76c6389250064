"""Embedding on Ray Data: the local engine's batches, prepared by CPU tasks and encoded by an actor pool.

The driver plans the same shards and the same batches as the local engine (``embed.batch_plan``);
the Ray dataset is one row per planned batch. A CPU ``map_batches`` stage decodes and preprocesses
a batch's images (or tokenises its captions) through the corpus's own reader (``Corpus.load_image``,
so every corpus format works unchanged), and a pool of ``workers`` actors, each holding the CLIP,
encodes it. The rows come back in plan order (``preserve_order``), and the driver joins them into
shards and writes every file with the store's own atomic writers (``embed.assemble_shards``), so the
store, its index and its resumption are the local engine's.

The corpus, the preprocessing and the CLIP go to the object store once (``ray.put``), not with each
task: workers need no copy of the weights or the corpus files' manifest, only access to the images
(a path every node can read, as on any Ray cluster).
"""

from __future__ import annotations

import copy

import ray
import torch

from ..corpus import Corpus
from ..embed import EmbedConfig, assemble_shards, batch_plan
from ..engine import EngineConfig, ray_session, unwrapped
from ..errors import ProtosynthError
from ..models.clip import ClipEncoder
from .pool import DECODE_CPUS, actor_pool, check_resources, fetched
from .wire import column, error_bytes, from_bytes, raise_error, to_bytes


def _prepare(batch: dict, refs: list) -> dict:
    """CPU stage: planned batch ``id`` -> its preprocessed images or tokens, as ``.npy`` bytes; a bad
    image is the reader's one-line error, carried as data to the driver."""
    corpus, (preprocess, tokenizer, min_side), plan = (fetched(r) for r in refs)
    kinds, xs, errors = [], [], []
    for j in batch["id"]:
        kind, a, b = plan[int(j)]
        x, err = b"", None
        try:
            if kind == "image":
                x = to_bytes(torch.stack([preprocess(corpus.load_image(i, min_side)) for i in range(a, b)]).numpy())
            else:
                x = to_bytes(tokenizer(corpus.pair_caption[a:b]).numpy())
        except ProtosynthError as exc:
            err = exc
        kinds.append(kind)
        xs.append(x)
        errors.append(error_bytes(err))
    return {"id": batch["id"], "kind": column(kinds), "x": column(xs), "error": column(errors)}


class Encoder:
    """Actor stage: one CLIP per actor, on the GPU Ray gives it (``gpus_per_worker`` > 0) or the CPU."""

    def __init__(self, refs: list, device: str, threads: int):
        torch.set_num_threads(threads)
        self.encoder: ClipEncoder = ray.get(refs[0])
        self.device = torch.device(device)
        self.encoder.model.to(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        model, ys = self.encoder.model, []
        for kind, x, err in zip(batch["kind"], batch["x"], batch["error"]):
            if err:
                ys.append(b"")
                continue
            t = torch.from_numpy(from_bytes(x)).to(self.device)
            y = model.encode_image(t) if kind == "image" else model.encode_text(t)
            ys.append(to_bytes(y.float().cpu().numpy()))
        return {"id": batch["id"], "y": column(ys), "error": batch["error"]}


def on_cpu(encoder: ClipEncoder) -> ClipEncoder:
    """The encoder as the object store should hold it: on the CPU (an actor moves it to its device)."""
    if encoder.device.type == "cpu":
        return encoder
    moved = copy.deepcopy(encoder)
    moved.model.to("cpu")
    moved.device = torch.device("cpu")
    return moved


def encode_shards(
    corpus: Corpus, encoder: ClipEncoder, cfg: EmbedConfig, shards: list[dict], write, engine: EngineConfig
) -> None:
    """``embed._encode_shards`` on Ray: the same batches, the same shards, written by the driver."""
    plan = batch_plan(shards, cfg.batch_size)
    if not plan:
        return  # nothing to compute: no Ray session is needed
    with ray_session(engine), unwrapped():
        _run(corpus, encoder, cfg, shards, write, engine, plan)


def _run(corpus, encoder, cfg, shards, write, engine, plan) -> None:
    check_resources(engine, decode=True)
    refs = [ray.put(corpus), ray.put((encoder.preprocess, encoder.tokenizer, encoder.input_size)), ray.put(plan)]
    ds = ray.data.range(len(plan), override_num_blocks=len(plan))
    ds = ds.map_batches(_prepare, batch_size=1, fn_kwargs={"refs": refs}, num_cpus=DECODE_CPUS)
    ds = actor_pool(ds, Encoder, engine, [ray.put(on_cpu(encoder))])

    def encoded():
        for want, row in enumerate(ds.iter_rows()):
            if int(row["id"]) != want:
                raise AssertionError(f"Ray returned batch {row['id']} where {want} was due")  # a bug, not input
            raise_error(row["error"])
            yield from_bytes(row["y"])

    assemble_shards(encoded(), shards, cfg, encoder.embed_dim, write)
