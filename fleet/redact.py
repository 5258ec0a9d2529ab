"""Strip credentials from URLs before they reach a message: `redis://:PASSWORD@host` becomes `redis://***@host`.

One helper for every place that prints, logs or raises with a URL (the CLI's
"cannot reach Redis", publishers' names and errors, drivers' errors), so a
password written into a URL never shows up on a terminal, in a report or in Redis.

A password may hold any character when the user did not percent-escape it:
a space, a quote, `<`, `/`, `#` and `@` itself. So no character can end the
hidden part except the line's end: everything from a line's first `scheme://`
to its last `@` is hidden. That hides too much (a second URL on the line, or a
path with an `@`) rather than too little, and is one linear pass per line
(text from the network goes through here too).
"""
from __future__ import annotations

import re

_SCHEME = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://")


def redact_url(url: str | None) -> str:
    """The URL with any user name and password replaced by `***`; other text untouched. None gives ''."""
    return redact(url or "")


def _redact_line(line: str) -> str:
    last_at = line.rfind("@")
    if last_at < 0:
        return line
    scheme = _SCHEME.search(line, 0, last_at)
    if scheme is None:
        return line
    return line[:scheme.end()] + "***" + line[last_at:]


def redact(text: str) -> str:
    """Every URL inside `text` with its credentials replaced by `***` (see the module's note on what is hidden)."""
    return "\n".join(_redact_line(line) for line in str(text).split("\n"))
