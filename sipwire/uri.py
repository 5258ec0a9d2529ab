"""The one SIP URI reader every decoder shares: scheme, user, host and port in linear time.

The user part used to be read with the pattern `sips?:([^@;>]+)@` (and the host with a similar one) via
`re.search`: every "sip:" in a header starts a scan to the header's end, so a header made of repeated
"sip:" costs time quadratic in its length (a 60 KB header took seconds under the GIL, before the packet
was matched to any phone). This reader makes a constant number of passes with `str.find`/`partition`
(each linear, in C) and no regular expression, whatever the input; `tests/test_sip_uri.py` holds it to
that by counting its Python steps on pathological inputs.

Accepted forms: a bare URI (`sip:1001@host:5060;transport=udp`), a name-addr (`"Desk" <sip:1001@host>;tag=x`,
the URI inside the first `<...>`, unless the text starts with the URI), and, forgivingly, text with the URI somewhere inside (the first `sip:` or
`sips:`, case-insensitive). The user part ends at `@` and must come before any `;`, `?` or `>`; a password
(`user:pw@`) is not part of the user.
"""
from __future__ import annotations

from dataclasses import dataclass

_SCHEMES = ("sips:", "sip:")
_END_OF_HOSTPORT = (";", "?", ">", " ", "\t", ",")


@dataclass(frozen=True, slots=True)
class SipUri:
    """The parts of a SIP URI the decoders compare: `port` is None when the URI names none."""
    scheme: str          # "sip" or "sips"
    user: str            # "" when the URI has no user part
    host: str            # as written (an IPv6 reference keeps its brackets)
    port: int | None


def parse_uri(text: str) -> SipUri | None:
    """The first SIP URI in `text` (see the module docstring for the forms), or None when there is none."""
    found = _locate(text)
    if found is None:
        return None
    inner, begin, scheme = found
    at, user = _user_at(inner, begin)
    rest = inner[at + 1 if at >= 0 else begin:]
    hostport = rest[:_first_of(rest, _END_OF_HOSTPORT)]
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            return SipUri(scheme, user, "", None)
        host, tail = hostport[:close + 1], hostport[close + 1:]
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 else None
    return SipUri(scheme, user, host, port if port is not None and port <= 65535 else None)


def _locate(text: str) -> tuple[str, int, str] | None:
    """(the text holding the URI, where its part after "scheme:" begins, the scheme), None without a SIP URI."""
    if not text:
        return None
    found = _at_start(text)
    if found is not None:                          # the usual bare URI (a Request-URI): no search at all
        return found
    lt = -1 if text.lstrip()[:5].lower().startswith(_SCHEMES) else text.find("<")   # a bare URI's params may hold <
    if lt >= 0:
        gt = text.find(">", lt + 1)
        inner = text[lt + 1:gt] if gt >= 0 else text[lt + 1:]
        found = _at_start(inner)                   # the usual name-addr: the URI right after '<'
        if found is not None:
            return found
    else:
        inner = text
    start, scheme = _scheme_at(inner)
    if start < 0:
        return None
    return inner, start + len(scheme) + 1, scheme


def _at_start(text: str) -> tuple[str, int, str] | None:
    """_locate's answer when `text` starts with the scheme, else None."""
    head = text[:5].lower()
    if head.startswith("sip:"):
        return text, 4, "sip"
    if head == "sips:":
        return text, 5, "sips"
    return None


def _user_at(inner: str, begin: int) -> tuple[int, str]:
    """(index of the '@' ending the user part, the user) or (-1, "") when the URI has none: the '@' must come
    before any ';', '?' or '>' (the old pattern's rule)."""
    at = inner.find("@", begin)
    if at < 0:
        return -1, ""
    userinfo = inner[begin:at]
    if ";" in userinfo or "?" in userinfo or ">" in userinfo:
        return -1, ""
    return at, userinfo.partition(":")[0]


def _scheme_at(text: str) -> tuple[int, str]:
    """(index, "sip"/"sips") of the first scheme in `text`, (-1, "") without one; case-insensitive."""
    low = text.lower()
    best, scheme = -1, ""
    for candidate in _SCHEMES:
        i = low.find(candidate)
        if i >= 0 and (best < 0 or i < best):
            best, scheme = i, candidate[:-1]
    return best, scheme


def _first_of(text: str, chars: tuple[str, ...]) -> int:
    """Index of the first of `chars` in `text`, len(text) when none occurs (one linear pass per char)."""
    end = len(text)
    for ch in chars:
        i = text.find(ch, 0, end)
        if i >= 0:
            end = i
    return end


def uri_user(text: str) -> str:
    """The user part of the first SIP URI in `text` ("" without one); reads no further than the user."""
    found = _locate(text)
    return _user_at(found[0], found[1])[1] if found is not None else ""
