# ruff: noqa  (a one-off measuring script, kept as it ran)
"""protosynth distill --budget 500 --steps 5 in this process, each named stage's own peak RSS
(VmHWM reset through /proc/self/clear_refs before it) and the RSS left after it. Usage:
probe_distill.py CORPUS OUTSET RESULT.json"""

import functools
import json
import sys
import time


def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024


def reset():
    open("/proc/self/clear_refs", "w").write("5")


import protosynth.distill as D
from protosynth.cli.main import main

rows, imported = [], status("VmRSS")


def wrap(mod, name):
    fn = getattr(mod, name)

    @functools.wraps(fn)
    def run(*a, **k):
        before = status("VmRSS")
        reset()
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            rows.append(
                {
                    "stage": name,
                    "seconds": round(time.perf_counter() - t, 2),
                    "rss_before": before,
                    "peak": status("VmHWM"),
                    "rss_after": status("VmRSS"),
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)

    setattr(mod, name, run)


for name in (
    "scan_source",
    "embed_corpus",
    "pair_rows",
    "build_prototypes",
    "nearest_rows",
    "_synthesise",
    "with_reading_texts",
    "member_images",
):
    wrap(D, name)
peak0 = status("VmHWM")
RESULT = sys.argv[3]
sys.argv = [
    "protosynth",
    "distill",
    "--corpus",
    sys.argv[1],
    "--budget",
    "500",
    "--method",
    "pds",
    "--steps",
    "5",
    "--out",
    sys.argv[2],
    "--force",
]
try:
    main()
except SystemExit:
    pass
json.dump({"imports_rss": imported, "imports_peak": peak0, "stages": rows}, open(RESULT, "w"), indent=1)
