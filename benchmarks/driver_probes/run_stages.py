# ruff: noqa  (a one-off measuring script, kept as it ran)
"""Measure `protosynth embed` / `protosynth distill --budget 500 --steps 5` through
benchmarks.scale_index's fresh-process child (wall seconds, VmHWM), on a kept generated JSONL corpus
and cache, with whichever protosynth PYTHONPATH selects. Usage (env PAIRS, WORK):
python run_stages.py OUT.json embed|distill|both"""

import json
import os
import sys
import time
from pathlib import Path

import benchmarks.scale_index as si
import protosynth
from benchmarks.scale_corpus import write_scale_corpus

PAIRS = int(os.environ.get("PAIRS", "1000000"))
work = Path(os.environ.get("WORK", f"/work/runs/scale3/w{PAIRS}"))
spec = work / "corpus" / "jsonl" / "corpus.jsonl"
if not spec.is_file():
    t = time.perf_counter()
    made = write_scale_corpus(work / "corpus", PAIRS, seed=0, formats=("jsonl",))
    print("generated", made, time.perf_counter() - t, flush=True)
os.environ["PROTOSYNTH_CACHE"] = str(work / "cache")
out = {"protosynth": protosynth.__file__, "pairs": PAIRS}
what = sys.argv[2]
if what in ("embed", "both"):
    out["embed"] = si._child(si.STAGE, "embed", "--corpus", str(spec), "--shard-size", "4096")
    print(out["embed"], flush=True)
if what in ("distill", "both"):
    s = work / f"set-{Path(sys.argv[1]).stem}"
    out["distill"] = si._child(si.STAGE, *si.distill_args(spec, s), "--force")
    out["distill_seconds"] = json.loads((s / "manifest.json").read_text())["seconds"]
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print(out)
