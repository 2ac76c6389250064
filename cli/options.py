"""The adapter from the configs' fields to typer: a verb lists the fields it offers (in ``--help``
order), and the flags, their types, defaults and help come from the fields (``protosynth.util.options``).
The one ``typer.Option`` of the command line is here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, get_type_hints

import typer

from protosynth.corpora.source import READING
from protosynth.util.options import NOT_SET, flag_name, help_of

from .flags import cli_help

REQUIRED: Any = ...  # a flag the verb cannot do without, whatever the config's default

# the four options that say how a corpus is read, as a verb lists its flags
READING_FLAGS = " ".join(READING)


@dataclass
class Flag:
    """One option of a verb: the name its body receives (the flag with underscores), its type,
    default and help, and its declarations where typer's own (``--name/--no-name``) do not fit."""

    name: str
    annotation: Any
    default: Any = None
    help: str | None = None
    decls: tuple[str, ...] = ()


def flag(name: str, annotation: Any, default: Any = None, help: str | None = None, *decls: str) -> Flag:
    """An option no config field holds (the verb turns it into settings itself)."""
    return Flag(name, annotation, default, help, decls)


def fields(cls, names: str, **changes: dict) -> list[Flag]:
    """The flags of ``cls``'s fields ``names`` (their flag names, space-separated, in ``--help`` order),
    each as the field declares it but for ``changes[name]`` (the verb's own default, type, help or
    declarations: ``default=REQUIRED``). The fields of a nested ``CorpusSource`` are the config's own."""
    by_flag = _flat_fields(cls)
    flags = []
    for name in names.split():
        owner, field, help = by_flag[name]
        default = None if field.default is NOT_SET else field.default
        option = Flag(name, _hints(owner)[field.name], default, help)
        flags.append(dataclasses.replace(option, **changes.get(name, {})))
    return flags


@functools.cache
def _hints(cls) -> dict[str, Any]:
    """A config class's resolved field types (resolving them is most of building the CLI)."""
    return get_type_hints(cls)


def _flat_fields(cls) -> dict[str, tuple[type, dataclasses.Field, str | None]]:
    """Flag name -> (the class declaring the field, the field, its help for ``cls``): a nested
    config's fields (``source()``) in its place, with the help ``cls`` gives them."""
    flat = {}
    for field in dataclasses.fields(cls):
        if field.metadata.get("nested"):
            for inner in dataclasses.fields(field.default_factory):
                flat[flag_name(inner)] = (field.default_factory, inner, help_of(field).get(inner.name, help_of(inner)))
        else:
            flat[flag_name(field)] = (cls, field, help_of(field))
    return flat


def build(cls, values: dict, names: str | None = None, **settings):
    """A ``cls`` of the parsed ``values`` of its fields' flags (only ``names``, space-separated, when
    given: another config of the verb has a flag of the same name), and ``settings``; a nested
    config (the ``CorpusSource``) of its own fields' flags."""
    wanted = names.split() if names is not None else None
    for field in dataclasses.fields(cls):
        name = flag_name(field)
        if field.name in settings:
            continue
        if field.metadata.get("nested"):
            settings[field.name] = build(field.default_factory, values)
        elif name in values and (wanted is None or name in wanted):
            settings[field.name] = values[name]
    return cls(**settings)


def argument(name: str, annotation: Any, default: Any, help: str) -> inspect.Parameter:
    """A positional argument of a verb (folders)."""
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=typer.Argument(default, help=help), annotation=annotation
    )


def command(app: typer.Typer, verb: str, flags: list[Flag], arguments: tuple[inspect.Parameter, ...] = ()):
    """Register the decorated body as ``verb`` (its last word: the command of ``app``), with
    ``arguments`` then ``flags`` as its parameters, their help naming parameters by ``verb``'s flags;
    the body receives each by name, and its docstring is the verb's help."""

    def register(body: Callable[..., None]) -> Callable[..., None]:
        params = list(arguments) + [_parameter(f, verb) for f in flags]

        def callback(**values) -> None:
            body(**values)

        callback.__signature__ = inspect.Signature(params)
        callback.__doc__ = body.__doc__
        callback.__name__ = body.__name__
        app.command(verb.split()[-1])(callback)
        return body

    return register


def _parameter(option: Flag, verb: str) -> inspect.Parameter:
    default = typer.Option(option.default, *option.decls, help=cli_help(option.help, verb))
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option.annotation)
