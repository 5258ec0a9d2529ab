"""Strip credentials from URLs before they reach a message: `redis://:PASSWORD@host` becomes `redis://***@host`.

One helper for every place that prints, logs or raises with a URL (the CLI's
"cannot reach Redis", publishers' names and errors, drivers' errors), so a
password written into a URL never shows up on a terminal, in a report or in Redis.
"""
from __future__ import annotations

import re

# scheme://userinfo@ : everything up to the last '@' of the URL's token. A password with an unescaped '/' or '#'
# must not slip through, so this rather hides too much (a path with an '@') than too little.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@")


def redact_url(url: str | None) -> str:
    """The URL with any user name and password replaced by `***`; other text untouched. None gives ''."""
    return redact(url or "")


def redact(text: str) -> str:
    """Every URL inside `text` with its credentials replaced by `***`."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))
