"""The errors every input file reader raises: FileError (file, line, field, message) and FieldError.

Kept apart from `soundpoint.yamlfile` (which re-exports both) so that what only
catches or raises them (the command lines' exit-code table, fleet.toml's
reader, the value checks) does not import YAML and pydantic: `fleet status`
starts in a fraction of the time without them.
"""
from __future__ import annotations

from pathlib import Path


class FileError(ValueError):
    """An input file that cannot be used; str() is the message to show the user."""

    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        message = " ".join(str(message).split())      # one line, whatever the parser said
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


class FieldError(ValueError):
    """Raised by validators to name a field below the model being validated (loc is relative to it).

    pydantic reports a model validator's error at the model itself; load_model appends `loc`, so
    `overlap must be below expires` points at the overlap line, not at the server's first line.
    """

    def __init__(self, loc: tuple, message: str) -> None:
        self.loc = tuple(loc)
        super().__init__(message)
