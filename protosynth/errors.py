"""User-facing errors: one line that names the culprit; the CLI turns them into exit code 2."""
from __future__ import annotations

import logging
from contextlib import contextmanager


class ProtosynthError(Exception):
    """Bad input or a missing resource, reported to the user as one line (no stack trace)."""


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
