# ruff: noqa  (a one-off measuring script, kept as it ran)
"""Step-by-step replica of build_prototypes (default matched mode, code at 05193b3) on a complete
store, reporting each O(n) array's bytes and tracemalloc's peak per step, plus VmHWM/VmRSS."""

import json
import sys
import time
import tracemalloc
from functools import partial

import numpy as np


def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024


from protosynth import passes
from protosynth.clustering import PrototypeConfig, _match, fit_kmeans
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import scan_source
from protosynth.embed import open_embeddings
from protosynth.prototypes import _combine, _means, _View

out = {"imports_rss": status("VmRSS")}
rows = []


def mark(step, t0, **arrays):
    cur, peak = tracemalloc.get_traced_memory()
    rows.append(
        {
            "step": step,
            "seconds": round(time.perf_counter() - t0, 2),
            "traced_now": cur,
            "traced_peak": peak,
            "rss": status("VmRSS"),
            "hwm": status("VmHWM"),
            "arrays": {k: int(v) for k, v in arrays.items()},
        }
    )
    print(rows[-1], flush=True)
    tracemalloc.reset_peak()


tracemalloc.start()
t = time.perf_counter()
summary = scan_source(CorpusSource(sys.argv[2]))
mark("scan_source", t, summary_pair_image=summary.pair_image.nbytes)
t = time.perf_counter()
store = open_embeddings(sys.argv[1])
image_raw, text_raw = store.image_pairs, store.texts
n, d = image_raw.shape
mark("open store", t, store_pair_image=store.pair_image.nbytes)
cfg = PrototypeConfig(budget=500)
ranges = passes.pass_ranges(text_raw, d)
run = partial(passes.map_local, image_raw=image_raw, text_raw=text_raw)
t = time.perf_counter()
norms_i, norms_t, sims = (np.concatenate(v) for v in zip(*run(passes.range_stats, ranges, [()] * len(ranges), ())))
mark("stats pass", t, norms_i=norms_i.nbytes, norms_t=norms_t.nbytes, sims=sims.nbytes)
t = time.perf_counter()
n_drop = min(int(np.floor(cfg.drop_fraction * n)), n - cfg.budget)
order = np.argsort(sims, kind="stable")
keep = np.sort(order[n_drop:])
mark("drop (argsort)", t, argsort=order.nbytes, keep=keep.nbytes)
del order
k = cfg.budget
stats = {}
fits = []
t = time.perf_counter()
for space in ("image", "text"):
    view = _View(len(keep), d, lambda i, sp=space: passes.features(image_raw, text_raw, keep[i], sp))
    fits.append((space, fit_kmeans(view, k, cfg.niter, cfg.seed, cfg.max_train_points, stats)[0]))
mark("k-means fits (image, text)", t, train_matrix=min(len(keep), cfg.max_train_points) * d * 4)
t = time.perf_counter()
bounds = np.searchsorted(keep, [a for a, _ in ranges] + [ranges[-1][1]])
kept = [(keep[bounds[j] : bounds[j + 1]],) for j in range(len(ranges))]
labels = [np.concatenate(v) for v in zip(*run(passes.range_labels, ranges, kept, (fits,)))]
mark("labels pass", t, labels_image=labels[0].nbytes, labels_text=labels[1].nbytes)
t = time.perf_counter()
members, img_members, txt_members, img_target, txt_target = _match(keep, labels[0], labels[1], k, n, stats)
mark(
    "matching",
    t,
    img_target=img_target.nbytes,
    txt_target=txt_target.nbytes,
    members=sum(m.nbytes for m in members),
    pi_pc_transient=2 * labels[0].nbytes,
)
t = time.perf_counter()
centres = [(fits[0][1][r], fits[1][1][c]) for r, c in stats.pop("_matching")]
per_range = [(img_target[a:b], txt_target[a:b]) for a, b in ranges]
sums = _combine(run(passes.range_sums, ranges, per_range, (k,)), k, d)
protos = _means(sums, norms_i.mean(), norms_t.mean(), lambda c: centres[c])
mark("sums pass + means", t)
out.update(
    pairs=n,
    dim=d,
    kept=len(keep),
    ranges=len(ranges),
    members=int(sum(len(m) for m in members)),
    steps=rows,
    peak_hwm=status("VmHWM"),
)
json.dump(out, open(sys.argv[3], "w"), indent=1)
import hashlib

print(
    "digest",
    hashlib.sha256(
        b"".join(protos[i].tobytes() for i in (0, 2, 1, 3)) + b"".join(m.tobytes() for m in members)
    ).hexdigest(),
)
out["digest"] = hashlib.sha256(
    b"".join(protos[i].tobytes() for i in (0, 2, 1, 3)) + b"".join(m.tobytes() for m in members)
).hexdigest()
json.dump(out, open(sys.argv[3], "w"), indent=1)
