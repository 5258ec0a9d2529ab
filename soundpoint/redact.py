"""Strip credentials from URLs before they reach a message: `redis://:PASSWORD@host` becomes `redis://***@host`.

One helper for every place that prints, logs or raises with a URL (the CLI's
"cannot reach Redis", publishers' names and errors, drivers' errors), so a
password written into a URL never shows up on a terminal, in a report or in Redis.

A password may hold any character when the user did not percent-escape it:
a space, a quote, `<`, `/`, `#`, `://`, a line break and `@` itself. So no
character can end the hidden part: everything from the text's first
`scheme://` to its last `@` is hidden. That hides too much (a second URL, a
path or a later word with an `@`) rather than too little, which suits what
goes through here (one error message, one log line), and it is one linear pass
(text from the network goes through here too).
"""
from __future__ import annotations

import re

_SCHEME = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://")


def redact_url(url: str | None) -> str:
    """The URL with any user name and password replaced by `***`; other text untouched. None gives ''."""
    return redact(url or "")


def redact(text: str) -> str:
    """`text` with everything from its first URL's `scheme://` to its last `@` replaced by `***` (see above)."""
    text = str(text)
    last_at = text.rfind("@")
    if last_at < 0:
        return text
    scheme = _SCHEME.search(text, 0, last_at)
    if scheme is None:
        return text
    return text[:scheme.end()] + "***" + text[last_at:]
