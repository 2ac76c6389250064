"""The one table from the library's parameter names (what its errors and its help name,
``protosynth.errors.P``) to this command line's flags, and the one place they are spelled with them.
A config field's flag is its name (or the rename its ``opt`` declares); the table adds the rest."""

from __future__ import annotations

import dataclasses

from rich.markup import escape

from protosynth import configs
from protosynth.baselines import configs as baseline_configs
from protosynth.configs import DistillConfig
from protosynth.corpora.source import CorpusSource
from protosynth.errors import ProtosynthError, python_spelling, spell_references
from protosynth.util.options import flag_name

# every config whose fields a verb's error can name
CONFIGS = [getattr(m, name) for m in (configs, baseline_configs) for name in vars(m) if name.endswith("Config")] + [
    CorpusSource
]

# Parameters no config field declares: the arguments of library functions, ``ModelsTrainConfig.decoder``'s
# keys, and those no flag sets (None: the verb computes them, so the error keeps the library's name).
UNDECLARED: dict[str, str | None] = {
    "budgets": "--budget",  # distill_budgets' list (distill --budget 100,200)
    "archs": "--archs",  # cross_arch's backbones
    "decoder.guidances": "--guidances",
    "decoder.render_steps": "--steps",
    "decoder.lr_schedule": "--decoder-lr-schedule",
    "decoder.prediction_type": "--decoder-prediction",
    "decoder.init_from": "--decoder-init-from",
    "decoder.coords": "--decoder-coords",
    "split": None,  # eval retrieval sets it from --val
    "holdout": None,  # pretrain-backbone derives it from --n-images
    "folders": None,  # report's DIR arguments
}


def _field_flags() -> dict[str, str]:
    """Every config field's flag: its name (or its declared rename) with dashes. A nested config of
    ``DistillConfig`` (render, embed, engine) gives dotted names too: ``render.strength``."""
    flags = {}
    for cls in CONFIGS:
        for field in dataclasses.fields(cls):
            flags[field.name] = dashed(flag_name(field))
    for field in dataclasses.fields(DistillConfig):
        if dataclasses.is_dataclass(field.default_factory):
            for inner in dataclasses.fields(field.default_factory):
                flags[f"{field.name}.{inner.name}"] = dashed(flag_name(inner))
    return flags


def dashed(name: str) -> str:
    """A field's flag: ``--`` and its name with dashes for underscores."""
    return "--" + name.replace("_", "-")


# library parameter -> flag, for every verb (a dotted name is a field of a nested config)
FLAGS: dict[str, str | None] = {**_field_flags(), **UNDECLARED}

# Where a verb sets a library parameter with another flag, its entry wins.
VERB_FLAGS: dict[str, dict[str, str]] = {
    "models calibrate": {"out": "--models"},
}


def flag_spelling(verb: str | None):
    """How ``verb`` writes a parameter reference: its flag, with the value after it (a boolean
    flag alone); the library's name where no flag sets the parameter."""
    table = {**FLAGS, **VERB_FLAGS.get(verb or "", {})}

    def spell(param: str, value: str | None) -> str:
        flag = table.get(param)
        if flag is None:
            return python_spelling(param, value)
        return flag if value in (None, "True") else f"{flag} {value}"

    return spell


def cli_message(error: ProtosynthError, verb: str | None = None) -> str:
    """The error as ``verb`` reports it: the library's message with its flags for the parameters."""
    return error.spelled(flag_spelling(verb))


def cli_help(text: str | None, verb: str | None = None) -> str | None:
    """A field's help as ``verb`` shows it: the parameters it names spelled as flags, and escaped for
    rich, which typer renders help with and which would drop what reads as a markup tag (the
    ``[ray]`` of ``pip install -e '.[ray]'``)."""
    return None if text is None else escape(spell_references(text, flag_spelling(verb)))
