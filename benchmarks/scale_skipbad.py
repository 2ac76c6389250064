"""``--skip-bad`` on a JSONL manifest: the whole load against the streamed scan (issue 32).

    python -m benchmarks.scale_skipbad [--pairs 20000] [--bad 3]

A scale corpus (``benchmarks.scale_corpus``, seed 0, JSONL) of ``--pairs`` pairs is written to a
temporary folder and ``--bad`` of its images are truncated. Then, each in a fresh process with one
thread, ``load_corpus(spec, skip_bad=True)`` (the whole load) and ``scan_source(CorpusSource(spec,
skip_bad=True))`` (the streamed check and scan): wall seconds, peak RSS above the RSS after the
imports (``VmHWM``), and the fingerprint, kept-pair count and dropped count, which must agree.
Writes ``benchmarks/results/scale_skipbad-jsonl-{pairs}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.scale_corpus import write_scale_corpus
from protosynth.util.files import git_commit, write_text_atomic

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, sys, time
from protosynth.corpora.source import CorpusSource
from protosynth.corpus import load_corpus, scan_source

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024

base = status("VmRSS")
t = time.perf_counter()
spec, how = sys.argv[1], sys.argv[2]
got = load_corpus(spec, skip_bad=True) if how == "load" else scan_source(CorpusSource(spec, skip_bad=True))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": round(seconds, 2), "peak_above_imports_mib": status("VmHWM") - base,
                  "fingerprint": got.fingerprint, "pairs": got.n_pairs, "dropped": len(got.skipped)}))
"""


def child(spec: str, how: str) -> dict:
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    done = subprocess.run([sys.executable, "-c", CHILD, spec, how], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--bad", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        made = write_scale_corpus(Path(work) / "corpus", args.pairs, seed=0, formats=("jsonl",))
        images = sorted(p for p in (Path(made.jsonl).parent).rglob("*") if p.suffix in (".png", ".jpg"))
        for path in images[:: max(1, len(images) // args.bad)][: args.bad]:
            path.write_bytes(path.read_bytes()[:40])
        load, scan = child(made.jsonl, "load"), child(made.jsonl, "scan")
    same = all(load[k] == scan[k] for k in ("fingerprint", "pairs", "dropped"))
    if not same:
        raise SystemExit(f"the streamed scan differs from the whole load: {load} against {scan}")
    command = "python -m benchmarks.scale_skipbad " + " ".join(sys.argv[1:])
    doc = {"command": command, "commit": git_commit(), "pairs": args.pairs, "images": len(images)}
    doc.update(load=load, scan=scan, same=same)
    stem = RESULTS / f"scale_skipbad-jsonl-{args.pairs}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=2))
    write_text_atomic(stem.with_suffix(".md"), markdown(doc))
    print(json.dumps(doc))


def markdown(doc: dict) -> str:
    rows = [
        f"| {name} | {r['seconds']:.2f} | {r['peak_above_imports_mib']} | {r['pairs']:,} | {r['dropped']} |"
        for name, r in (("whole load (`load_corpus`)", doc["load"]), ("streamed (`scan_source`)", doc["scan"]))
    ]
    return "\n".join(
        [
            f"# `--skip-bad` on a {doc['pairs']:,}-pair JSONL manifest ({doc['images']:,} images): whole load "
            "against the streamed scan",
            "",
            f"`{doc['command']}` at commit {doc['commit'][:12]}; each in a fresh process, one thread; the "
            "fingerprints agree.",
            "",
            "| path | seconds | peak RSS above the imports, MiB | kept pairs | dropped images |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    main()
