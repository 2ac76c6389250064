# ruff: noqa  (a one-off measuring script, kept as it ran)
"""build_prototypes (default matched mode, budget 500) on a complete store with the checkout on
sys.path, tracemalloc's peak and VmHWM at each pass boundary (the range_map is wrapped). On a
checkout with ``CorpusSummary.share_pairs`` the summary then shares the store's memory-mapped
``pair_image``, as ``embed_corpus`` does on a complete store."""

import json
import sys
import time
import tracemalloc


def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024


from protosynth import passes
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import scan_source
from protosynth.embed import open_embeddings
from protosynth.prototypes import PrototypeConfig, build_prototypes

out = {"imports_rss": status("VmRSS")}
rows = []
clock = [time.perf_counter()]


def mark(step, **arrays):
    cur, peak = tracemalloc.get_traced_memory()
    rows.append(
        {
            "step": step,
            "seconds": round(time.perf_counter() - clock[0], 2),
            "traced_now": cur,
            "traced_peak": peak,
            "rss": status("VmRSS"),
            "hwm": status("VmHWM"),
            "arrays": {k: int(v) for k, v in arrays.items()},
        }
    )
    print(rows[-1], flush=True)
    tracemalloc.reset_peak()
    clock[0] = time.perf_counter()


tracemalloc.start()
summary = scan_source(CorpusSource(sys.argv[2]))
mark("scan_source", summary_pair_image=summary.pair_image.nbytes)
store = open_embeddings(sys.argv[1])
mark("open store", store_pair_image=store.pair_image.nbytes)
if hasattr(summary, "share_pairs"):  # issue 32, fifth step: embed_corpus's _open does this
    from protosynth.store import PAIR_IMAGE

    shared = summary.share_pairs(store.pair_image, store.folder / PAIR_IMAGE)
    mark("summary shares the store's pair_image", shared=shared)


def range_map(fn, ranges, per_range, shared, image_raw, text_raw):
    mark("before " + fn.__name__)
    yield from passes.map_local(fn, ranges, per_range, shared, image_raw, text_raw)


protos = build_prototypes(store.image_pairs, store.texts, PrototypeConfig(budget=500), range_map)
mark("after range_sums + means", members=sum(m.nbytes for m in protos.members))
out.update(
    pairs=len(store.texts),
    members=int(sum(len(m) for m in protos.members)),
    steps=rows,
    peak_hwm=status("VmHWM"),
    digest=__import__("hashlib")
    .sha256(
        b"".join(getattr(protos, n).tobytes() for n in ("image", "text", "image_raw", "text_raw"))
        + b"".join(m.tobytes() for m in protos.members)
    )
    .hexdigest(),
)
json.dump(out, open(sys.argv[3], "w"), indent=1)
