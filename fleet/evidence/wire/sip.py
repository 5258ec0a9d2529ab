"""A lean, strict SIP header parser for captured traffic: headers indexed once, no body handling.

sipwire.message is the project's SIP parser for endpoints that build and
answer messages; it keeps headers as an ordered list and looks each one up by
a linear scan, which is right for a phone and four times too slow for a
capture point that must decode some 20,000 messages per second on one core.
This parser checks the same structure (request or status line, header lines,
the mandatory headers, CSeq, Content-Length against the bytes present) and
builds a dict of lower-cased (compact forms expanded) header name -> values,
so every later look-up is one dict access. It only reads; it never builds.
"""
from __future__ import annotations

import re

from sipwire.message import COMPACT, MAX_HEADER_LINE, MAX_HEADER_LINES, MAX_MESSAGE, SipParseError, header_params

_REQUEST_LINE = re.compile(r"([A-Za-z]+) (\S+) SIP/2\.0")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6]\d\d)(?: (.*))?")
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_DIGITS = re.compile(r"[0-9]{1,10}")
_REQUIRED = ("via", "call-id", "cseq", "from", "to")
# MAX_HEADER_LINE (characters of one header, unfolded) and MAX_HEADER_LINES (physical header lines, continuations
# included) are sipwire.message's, the caps both parsers hold to: no REGISTER or answer comes near them (the longest
# lines are an Authorization of a few hundred bytes and a registrar's 200 listing a shared AoR's contacts), so a
# message over either is an attack or junk, refused before its text is read further, and the lines bound the work
# a small datagram of tiny (or folded) lines can ask for.
_NAMES: dict[str, str] = {}       # raw header name -> normalised name (cache: real traffic uses few spellings)


class SipOversizeError(SipParseError):
    """A message or header line over the caps (MAX_MESSAGE, MAX_HEADER_LINE): counted apart from junk."""


def _name(raw: str) -> str:
    n = _NAMES.get(raw)
    if n is None:
        stripped = raw.strip()
        if not _TOKEN.fullmatch(stripped):
            raise SipParseError(f"malformed header name: {raw[:40]!r}")
        low = stripped.lower()
        n = COMPACT.get(low, low)
        if len(_NAMES) < 4096:
            _NAMES[raw] = n
    return n


class WireMessage:
    """The parts of a captured SIP message the REGISTER matcher reads (the same accessors as SipMessage)."""

    __slots__ = ("method", "uri", "status", "reason", "headers", "_cseq")

    def __init__(self, method: str | None, uri: str | None, status: int | None, reason: str,
                 headers: dict[str, list[str]], cseq: tuple[int, str]) -> None:
        self.method, self.uri, self.status, self.reason = method, uri, status, reason
        self.headers = headers
        self._cseq = cseq

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.headers.get(COMPACT.get(name.lower(), name.lower()))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return self.headers.get(COMPACT.get(name.lower(), name.lower()), [])

    @property
    def call_id(self) -> str:
        return self.headers["call-id"][0]

    @property
    def cseq(self) -> tuple[int, str]:
        return self._cseq

    @property
    def top_via(self) -> str:
        """The first Via, also when several are folded into one header line with commas."""
        return self.headers["via"][0].split(",", 1)[0]

    @property
    def top_via_branch(self) -> str:
        return header_params(self.top_via).get("branch", "")


def _unfolded(lines: list[str]):
    """(normalised name, value) per header of `lines[1:]`, continuation lines joined to their header once
    (RFC 3261 7.3.1): pieces are collected and joined when the header ends, so folding costs linear time, and
    the unfolded value is held to MAX_HEADER_LINE as a raw line is."""
    names = _NAMES
    name: str | None = None
    pieces: list[str] = []
    size = 0
    for i in range(1, len(lines)):
        line = lines[i]
        if not line:
            continue
        if line[0] in " \t":
            if name is None:
                raise SipParseError("continuation line before any header")
            piece = line.strip()
            size += 1 + len(piece)
            if size > MAX_HEADER_LINE:
                raise SipOversizeError(f"a folded header is longer than {MAX_HEADER_LINE} bytes")
            pieces.append(piece)
            continue
        if name is not None:
            yield name, " ".join(pieces)
        colon = line.find(":")
        if colon <= 0:
            raise SipParseError(f"malformed header line: {line[:80]!r}")
        raw = line[:colon]
        name = names.get(raw) or _name(raw)
        value = line[colon + 1:].strip()
        pieces, size = [value], len(value)
    if name is not None:
        yield name, " ".join(pieces)


def parse(data: bytes) -> WireMessage:
    """Parse one datagram's SIP message; raise SipParseError (never anything else) on malformed input."""
    if len(data) > MAX_MESSAGE:
        raise SipOversizeError("datagram larger than 65535 bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no blank line between headers and body")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    # splitlines also breaks at \x0b, \x0c, \x1c-\x1e and Unicode line separators: inside SIP headers those
    # are junk either way, and the message is then refused as malformed rather than read differently
    lines = text.splitlines()
    if len(lines) > MAX_HEADER_LINES + 1:
        raise SipOversizeError(f"more than {MAX_HEADER_LINES} header lines")
    if len(text) > MAX_HEADER_LINE and max(map(len, lines)) > MAX_HEADER_LINE:
        raise SipOversizeError(f"a header line is longer than {MAX_HEADER_LINE} bytes")
    first = lines[0].strip() if lines else ""
    method = uri = None
    status = None
    reason = ""
    m = _REQUEST_LINE.fullmatch(first)
    if m:
        method, uri = m.group(1).upper(), m.group(2)
    else:
        m = _STATUS_LINE.fullmatch(first)
        if not m:
            raise SipParseError(f"not a SIP request or status line: {first[:80]!r}")
        status, reason = int(m.group(1)), m.group(2) or ""
    headers: dict[str, list[str]] = {}
    for name, value in _unfolded(lines):
        found = headers.get(name)
        if found is None:
            headers[name] = [value]
        else:
            found.append(value)
    for required in _REQUIRED:
        if required not in headers:
            raise SipParseError(f"missing {required} header")
    parts = headers["cseq"][0].split()
    if len(parts) != 2 or not _DIGITS.fullmatch(parts[0]):
        raise SipParseError(f"bad CSeq header: {headers['cseq'][0][:40]!r}")
    length = headers.get("content-length")
    if length is not None:
        if not _DIGITS.fullmatch(length[0]):
            raise SipParseError(f"bad Content-Length: {length[0][:20]!r}")
        if int(length[0]) > len(body):
            raise SipParseError("body shorter than Content-Length")
    return WireMessage(method, uri, status, reason, headers, (int(parts[0]), parts[1].upper()))
