"""Each settings class checks its own values in one place (``check()``, issue 28): no model, data or
folder is touched, the error names the parameter at fault, and the value tuples the checks use are
still importable from the modules that held them before."""

from __future__ import annotations

from pathlib import Path

import pytest

from protosynth import clustering, configs, coreset, distill, prototypes
from protosynth.baselines import configs as baseline_configs
from protosynth.baselines import presets
from protosynth.baselines.configs import BaselineConfig, BufferConfig, CompareConfig
from protosynth.configs import CoresetConfig, DistillConfig, EvalConfig, RenderConfig
from protosynth.errors import ProtosynthError
from protosynth.evaluation import data
from protosynth.util import runinfo

MISSING = Path("/nonexistent/protosynth-check")  # never read: check() touches no folder

CASES = [
    (DistillConfig(method="pds", budget=0), "budget"),
    (DistillConfig(method="pds", mode="nope"), "mode"),
    (DistillConfig(method="nope"), "method"),
    (DistillConfig(method="pds", caption="nope"), "caption"),
    (DistillConfig(method="pds", text="nope"), "text"),
    (DistillConfig(method="select", text="prototype"), "text"),
    (DistillConfig(method="pds", kmeans="nope"), "kmeans"),
    (DistillConfig(method="pds", mode="joint", kmeans="minibatch"), "mode"),
    (DistillConfig(method="pds", candidates=0), "candidates"),
    (DistillConfig(method="select", candidates=2), "method"),
    (DistillConfig(method="pds", render=RenderConfig(strength=2.0)), "render.strength"),
    (DistillConfig(method="pds", seed=-1), "seed"),
    (CoresetConfig(method="nope"), "method"),
    (CoresetConfig(budget=0), "budget"),
    (CoresetConfig(keep="nope"), "keep"),
    (CoresetConfig(forgetting_epochs=0), "forgetting_epochs"),
    (CoresetConfig(seed=2**31), "seed"),
    (EvalConfig(repeats=0), "repeats"),
    (EvalConfig(epochs=0), "epochs"),
    (EvalConfig(split="nope"), "split"),
    (EvalConfig(split="val", test="shapes:test"), "val"),
    (EvalConfig(text="nope"), "text"),
    (EvalConfig(recipe="nope"), "recipe"),
    (EvalConfig(seed=-1), "seed"),
    (BaselineConfig(buffer=MISSING, method="nope"), "method"),
    (BaselineConfig(buffer=MISSING, family="nope"), "family"),
    (BaselineConfig(buffer=MISSING, method="lors", variant="intended-temperature"), "variant"),
    (BaselineConfig(buffer=MISSING, budget=1), "budget"),
    (BaselineConfig(), "buffer"),
    (BufferConfig(out=MISSING, experts=0), "experts"),
    (BufferConfig(out=MISSING, lr=0.0), "lr"),
    (BufferConfig(out=MISSING, max_pairs=1), "max_pairs"),
    (BufferConfig(), "out"),
    (CompareConfig(methods=("nope",)), "methods"),
    (CompareConfig(budget=1), "budget"),
    (CompareConfig(eval_epochs=0), "eval_epochs"),
    (CompareConfig(recipes=("own", "own")), "recipes"),
    (CompareConfig(seeds=(1, 1)), "seeds"),
]


@pytest.mark.parametrize("cfg, param", CASES, ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_check_names_the_parameter_at_fault(cfg, param):
    with pytest.raises(ProtosynthError) as err:
        cfg.check()
    assert err.value.param == param


@pytest.mark.parametrize(
    "cfg",
    [
        DistillConfig(method="pds"),
        DistillConfig(method="pds", preset="pds-published"),
        CoresetConfig(),
        EvalConfig(),
        BaselineConfig(buffer=MISSING),
        BufferConfig(out=MISSING),
        CompareConfig(),
    ],
    ids=lambda c: type(c).__name__,
)
def test_the_defaults_pass_without_touching_a_folder(cfg):
    cfg.check()


def test_the_value_tuples_keep_their_old_homes():
    assert distill.METHODS is configs.METHODS and distill.MODES is configs.MODES
    assert distill.CAPTION_RULES is configs.CAPTION_RULES and distill.TEXT_RULES is configs.TEXT_RULES
    assert prototypes.MODES is configs.MODES and clustering.KMEANS is configs.KMEANS
    assert coreset.METHODS is configs.CORESET_METHODS
    assert data.TEXT_MODES is configs.TEXT_MODES and data.RECIPES is configs.RECIPES
    assert runinfo.check_seed is configs.check_seed and runinfo.SEED_MAX == 2**31 - 1
    for name in ("METHODS", "FAMILIES", "LR_SPACES", "GRAD_MODES", "VARIANTS"):
        assert getattr(presets, name) is getattr(baseline_configs, name)
