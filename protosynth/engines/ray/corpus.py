"""``--skip-bad``'s pass over every image as Ray tasks, so the driver decodes no image at load.

The driver indexes the corpus as the local engine does (captions, keys, and the samples or rows with
no image or caption member, found without decoding) and hands the image keys here with its check.
Each task runs the local engine's own check (``corpora.base.unreadable``, received as an argument)
on one chunk of keys, through the corpus
reader sent once through the object store; the chunks' results come back in key order and are
joined in that order, so the dropped rows, their messages and the corpus fingerprint are the local
engine's. At most ``pool.WINDOW_PER_CPU`` tasks per cluster CPU are in flight (``pool.in_order``).
"""

from __future__ import annotations

import ray

from ...errors import P, ProtosynthError
from ..connect import EngineConfig, ray_session, unwrapped
from .pool import DECODE_CPUS, WINDOW_PER_CPU, fetched, in_order

MAX_CHUNK = 1024  # images per task: a few seconds of decoding, so the cluster's CPUs share the work evenly


@ray.remote(num_cpus=DECODE_CPUS)
def _check_chunk(check, refs: list, keys: list[str]) -> dict[str, str]:
    return check(fetched(refs[0]), keys)


def chunk_size(n_keys: int, cpus: int) -> int:
    """Images per task: ``WINDOW_PER_CPU`` tasks per CPU, at most ``MAX_CHUNK`` images each."""
    return max(1, min(MAX_CHUNK, -(-n_keys // (WINDOW_PER_CPU * max(1, cpus)))))


def find_unreadable(check, source, keys: list[str], engine: EngineConfig) -> dict[str, str]:
    """``check(source, keys)`` (``corpora.base.unreadable``) computed by Ray tasks over chunks of ``keys``."""
    with ray_session(engine), unwrapped():
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < DECODE_CPUS:  # no task could ever start
            raise ProtosynthError(
                f"{P.skip_bad} on Ray decodes in tasks of {DECODE_CPUS:g} CPU; the Ray cluster has {cpus}"
            )
        refs = [ray.put(source)]  # inside a list: a task fetches it once per worker process (``fetched``)
        size = chunk_size(len(keys), cpus)
        bad: dict[str, str] = {}
        chunks = (keys[a : a + size] for a in range(0, len(keys), size))
        for chunk_bad in in_order(_check_chunk.remote(check, refs, chunk) for chunk in chunks):
            bad.update(chunk_bad)
        return bad
