"""Contact headers of a REGISTER and its answer: split, compared and read for the expiry granted, one way.

Both the collector (what a phone's REGISTER was granted, from the wire) and the lab's phones (their own ground
truth) read a registrar's 200, which for a shared AoR lists every device's binding, in any order, in one header
or one each. They used to carry two copies with different rules; this is the one version, linear in the
headers' length (one pass per value, no regular expression).
"""
from __future__ import annotations

from .message import SipParseError, header_params, uri_host_port
from .uri import uri_user

WILDCARD = "*"


def split_contacts(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Contact header values -> [(uri, params)], split on commas outside <> and quotes; `*` (a wildcard
    un-REGISTER) is kept as ("*", its params). Param names lower-cased, quotes around values removed."""
    out: list[tuple[str, dict[str, str]]] = []
    for value in values:
        for part in (_split_commas(value) if "," in value else (value,)):
            part = part.strip()
            if not part:
                continue
            if part == WILDCARD or part.startswith(WILDCARD + ";"):
                out.append((WILDCARD, header_params(part)))
                continue
            lt = part.find("<")
            gt = part.find(">", lt + 1) if lt >= 0 else -1
            if lt >= 0 and gt > lt:
                rest = part[gt + 1:]
                out.append((part[lt + 1:gt].strip(), header_params("<>" + rest) if ";" in rest else {}))
            else:
                out.append((part.split(";", 1)[0].strip(), header_params(part)))
    return out


def _split_commas(value: str) -> list[str]:
    """`value` split on commas outside <> and double quotes, in one pass."""
    parts: list[str] = []
    start, depth, quoted = 0, 0, False
    for i, ch in enumerate(value):
        if ch == '"' and depth == 0:
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def same_contact(a: str, b: str) -> bool:
    """Two Contact URIs name the same binding, as RFC 3261 19.1.4 compares them in practice: scheme, user,
    host (any case) and port (the scheme's default when none is given)."""
    def key(uri: str) -> tuple:
        uri = uri.strip()
        scheme = uri.split(":", 1)[0].lower()
        try:
            host, port = uri_host_port(uri, 5061 if scheme == "sips" else 5060)
        except SipParseError:
            return (scheme, uri_user(uri), uri.lower(), 0)
        return scheme, uri_user(uri), host.lower(), port
    return a == b or key(a) == key(b)


def seconds(value: str | None) -> int | None:
    """An expires value: 1 to 10 ASCII digits, else None (a registrar's junk is not a number we act on)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 10 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def granted_expiry(contacts: list[str], expires_header: str | None, requested: int | None, own_contact: str,
                   own_user: str = "") -> int | None:
    """The expiry a 2xx to a REGISTER granted the binding `own_contact` (its Contact header values `contacts`,
    its Expires header `expires_header`): the expires of the Contact entry that is `own_contact`; where the
    registrar rewrote that contact (NAT, Asterisk's rewrite_contact: same user, another host or port) that of
    the only contact with `own_user` (the contact's user by default), else of the only contact listed; never
    another device's. Else the Expires header; else `requested`."""
    listed = [(uri, params) for uri, params in split_contacts(contacts) if uri != WILDCARD]
    if own_contact and own_contact != WILDCARD:
        own = next((params for uri, params in listed if same_contact(uri, own_contact)), None)
        if own is None:
            user = own_user or uri_user(own_contact)
            same_user = [params for uri, params in listed if user and uri_user(uri) == user]
            own = (same_user[0] if len(same_user) == 1 else
                   listed[0][1] if not same_user and len(listed) == 1 else None)
        if own is not None and (value := seconds(own.get("expires"))) is not None:
            return value
    value = seconds(expires_header)
    return value if value is not None else requested
