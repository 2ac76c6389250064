"""A probe, not a benchmark: does a set's text score by its norm? (benchmarks/results/baseline_text_share.md)

    python benchmarks/text_scale_probe.py select|mtt-vl|select-centred|pds-spread|pds-mix SCALE [SET]

The baselines' learned text features have norm ~5, real MiniLM features 3.6-4.8 as read. This scores one
set on ``shapes:val`` (small protocol, protocol's recipe, 2 repeats) with the text features the
evaluation reads rescaled: ``select``, the members' mean times SCALE; ``mtt-vl``, the learned text
renormalised to norm SCALE; ``select-centred``, the members' means minus SCALE times their mean over
the set (is the learned text's lead its lower shared component?); ``pds-spread``, the default set's members'
means spread from their set mean c as c + SCALE (t - c) (the learned texts' mean pairwise cosine is
0.02-0.37, the members' means' 0.82); ``pds-mix``, SCALE x the members' means + (1 - SCALE) x the
image reading's (the cluster's text with its shown image's). It patches two readers of
``protosynth.evaluation.data`` for this process only; the default SETs are the ones the table names
(the preset sweep's and world_readings' work).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import protosynth.evaluation.data as data
from protosynth.evaluation.evaluate import EvalConfig, evaluate

SETS = {
    "select": Path("/work/runs/valB/b100/sets/select-b100"),
    "select-centred": Path("/work/runs/valB/b100/sets/select-b100"),
    "mtt-vl": Path("/work/runs/sweep/presets/mtt-vl-b100-world"),
    "pds-spread": Path("/work/runs/valB/b100/sets/pds-b100"),
    "pds-mix": Path("/work/runs/valB/b100/sets/pds-b100"),
}


def main() -> None:
    what, scale = sys.argv[1], float(sys.argv[2])
    path = Path(sys.argv[3]) if len(sys.argv) > 3 else SETS[what]
    cfg = EvalConfig(protocol="small", split="val", val="shapes:val", repeats=2, recipe="protocol")
    if what == "select":
        members = data._member_texts
        data._member_texts = lambda *a, **k: members(*a, **k) * scale
        text = "members"
    elif what == "select-centred":
        members = data._member_texts

        def centred(*a, **k):
            t = members(*a, **k)
            return t - scale * t.mean(dim=0, keepdim=True)

        data._member_texts = centred
        text = "members"
    elif what in ("pds-spread", "pds-mix"):
        members = data._member_texts

        def changed(ds, encoder, normalise, mode="members"):
            t = members(ds, encoder, normalise, mode)
            if what == "pds-spread":
                c = t.mean(dim=0, keepdim=True)
                return c + scale * (t - c)
            return scale * t + (1 - scale) * members(ds, encoder, normalise, "image")

        data._member_texts = changed
        text = "members"
    else:
        stored = data._stored_text

        def renormalised(ds, normalise):
            t = stored(ds, normalise)
            return None if t is None else t / t.norm(dim=-1, keepdim=True) * scale

        data._stored_text = renormalised
        text = "auto"
    r_mean = evaluate([path], replace(cfg, text=text))["sets"][0]["metrics"]["r_mean"]
    print(json.dumps({"what": what, "scale": scale, "text": text, "r_mean": r_mean["mean"], "std": r_mean["std"]}))


if __name__ == "__main__":
    main()
