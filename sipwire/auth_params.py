"""The one reader of authentication parameters (`realm="x", nonce="y", qop=auth`) for SIP and HTTP Digest.

A challenge or an Authorization header comes from the network. It used to be read with the pattern
`([A-Za-z0-9_-]+)\\s*=\\s*("([^"]*)"|[^,\\s]+)` through `finditer`: on a run of token characters with no `=`
every start position scans to the run's end, so "Digest " + "a" * 32000 cost seconds (on the collector's event
loop when a phone's web server answered it). This reader walks the text once, left to right, each character
looked at a bounded number of times, and refuses text over MAX_AUTH_PARAMS_CHARS unread (a real challenge or
answer is a few hundred characters).

Grammar (RFC 7235 auth-param, RFC 3261 25.1): `token = ( token / quoted-string )`, separated by commas and
optional white space (an unquoted value may hold any character but white space, a comma or a quote, as some
clients send `uri=sip:...` unquoted); a quoted string may hold `\\"` and `\\\\` escapes. Parameter names are lower-cased; a
name given twice keeps its first value. Anything else (a name without `=`, an unterminated quote, a
character a token cannot hold) makes the whole text malformed: None.
"""
from __future__ import annotations

MAX_AUTH_PARAMS_CHARS = 4096
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
_SPACE = " \t"
_VALUE_END = frozenset(' \t,"')    # an unquoted value (a token, or forgivingly `sip:1001@host`) ends at these


def parse_auth_params(text: str) -> dict[str, str] | None:
    """`name=value` pairs of `text` (the part after the scheme), names lower-cased; None when malformed or
    longer than MAX_AUTH_PARAMS_CHARS."""
    if len(text) > MAX_AUTH_PARAMS_CHARS:
        return None
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and (text[i] in _SPACE or text[i] == ","):
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in _SPACE:
            i += 1
        if not name or i >= n or text[i] != "=":
            return None
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        if i < n and text[i] == '"':
            i, value = _quoted(text, i + 1)
            if value is None:
                return None
        else:
            start = i
            while i < n and text[i] not in _VALUE_END:
                i += 1
            value = text[start:i]
        params.setdefault(name, value)
        while i < n and text[i] in _SPACE:
            i += 1
        if i < n and text[i] != ",":
            return None


def _quoted(text: str, i: int) -> tuple[int, str | None]:
    """(index after the closing quote, the unescaped value) of the quoted string whose text starts at `i`;
    (i, None) when it is not closed."""
    out: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return i + 1, "".join(out)
        if ch == "\\" and i + 1 < n:
            i += 1
            ch = text[i]
        out.append(ch)
        i += 1
    return i, None
