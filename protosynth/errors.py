"""User-facing errors: one line that names the culprit; the CLI turns them into exit code 2.

An error names the library's parameters, never the command line's flags: a message refers to a
parameter through ``P`` (``P.budget``, ``P.render.strength``), and each front end spells the
reference its own way. Python reads the parameter's name::

    raise ProtosynthError(f"{P.budget} must be at least 1, got {budget}")
    # ProtosynthError: budget must be at least 1, got 0

and the command line its flag for it (``protosynth.cli.flags``): ``error: --budget must be at least
1, got 0``. A reference may carry a value, for hints: ``P.force(True)`` reads ``force=True`` in
Python and ``--force`` on the command line, ``P.test("SPEC")`` ``test=SPEC`` and ``--test SPEC``.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Callable

# A reference inside a message: US name [RS value] US (ASCII unit and record separators, which
# neither a message nor a value interpolated into it contains).
_REF = re.compile("\x1f([^\x1e\x1f]+)(?:\x1e([^\x1f]*))?\x1f")


class Param:
    """A reference to a library parameter inside an error message (see the module docstring)."""

    __slots__ = ("_name", "_value")

    def __init__(self, name: str = "", value: str | None = None):
        self._name, self._value = name, value

    def __getattr__(self, attr: str) -> Param:  # P.render.strength: a field of a nested config
        if attr.startswith("_"):
            raise AttributeError(attr)
        return Param(f"{self._name}.{attr}" if self._name else attr)

    def __call__(self, value) -> Param:
        """The parameter with a value, for a hint: ``pass {P.clip("default")}``."""
        return Param(self._name, str(value))

    def __str__(self) -> str:
        return f"\x1f{self._name}\x1f" if self._value is None else f"\x1f{self._name}\x1e{self._value}\x1f"


P = Param()


def spell_references(text: str, spell: Callable[[str, str | None], str]) -> str:
    """``text`` (a message, or the help of an option) with each parameter reference written as
    ``spell(name, value)`` (``value``: the text of ``P.name(value)``, else None)."""
    return _REF.sub(lambda m: spell(m.group(1), m.group(2)), text)


def python_spelling(param: str, value: str | None) -> str:
    """``budget``; with a value, ``test=SPEC``."""
    return param if value is None else f"{param}={value}"


class ProtosynthError(Exception):
    """Bad input or a missing resource, reported to the user as one line (no stack trace).

    ``message`` may name parameters through ``P``; ``param`` is the parameter at fault (default: the
    first one the message names), ``template`` the message with its references unspelled, and
    ``str(error)`` the message in Python's terms."""

    def __init__(self, message: str, param: str | None = None):
        self.template = message
        first = _REF.search(message)
        self.param = param if param is not None else (first.group(1) if first else None)
        super().__init__(self.spelled(python_spelling))

    def spelled(self, spell: Callable[[str, str | None], str]) -> str:
        """The message with each parameter reference written as ``spell(name, value)`` (``value``:
        the text of ``P.name(value)``, else None)."""
        return spell_references(self.template, spell)

    def __reduce__(self):  # pickled whole (DataLoader workers, child processes): the references survive
        return type(self), (self.template, self.param)


@contextmanager
def held_back_logs(level: int = logging.WARNING):
    """Hold back library log records up to ``level`` while loading models: open_clip and diffusers
    log a failed hub lookup before raising, and the ProtosynthError raised from it says the same in
    one line."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)
