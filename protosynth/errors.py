"""User-facing errors: one line that names the culprit; the CLI turns them into exit code 2."""


class ProtosynthError(Exception):
    """Bad input or a missing resource, reported to the user as one line (no stack trace)."""
