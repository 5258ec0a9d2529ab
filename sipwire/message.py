"""SIP message parsing and building (RFC 3261 text form, UDP only).

Both the controller (check-sync NOTIFY, OPTIONS reachability probes) and the
virtual lab speak SIP, and they must agree with third-party peers such as
Kamailio, not merely with each other; the interoperability test keeps this
module honest. Parsing is strict about structure and forgiving about header
case and compact forms, because that is what real phones and servers send.
"""
from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from .uri import parse_uri, uri_user  # noqa: F401  (uri_user: re-exported, the lab and fleet read it here)

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "e": "content-encoding", "k": "supported", "o": "event", "s": "subject"}
CANONICAL = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
             "contact": "Contact", "content-length": "Content-Length", "content-type": "Content-Type",
             "max-forwards": "Max-Forwards", "www-authenticate": "WWW-Authenticate",
             "proxy-authenticate": "Proxy-Authenticate", "authorization": "Authorization",
             "proxy-authorization": "Proxy-Authorization", "expires": "Expires", "event": "Event",
             "user-agent": "User-Agent", "subscription-state": "Subscription-State", "allow": "Allow"}
MAX_MESSAGE = 65535
MAX_HEADER_LINES = 256     # physical header lines of one message (continuations included); more is refused
MAX_HEADER_LINE = 16384    # characters of one header, unfolded; a longer one is refused


class SipParseError(ValueError):
    """A datagram that is not a well-formed SIP message; the text says what is wrong."""


@dataclass
class SipMessage:
    """One request or response. Headers keep their order; names are matched case-insensitively."""

    method: str | None = None          # request method, None for a response
    uri: str | None = None
    status: int | None = None          # response status code, None for a request
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _norm(name)
        for k, v in self.headers:
            if _norm(k) == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = _norm(name)
        return [v for k, v in self.headers if _norm(k) == key]

    def set(self, name: str, value: str) -> None:
        key = _norm(name)
        self.headers = [(k, v) for k, v in self.headers if _norm(k) != key]
        self.headers.append((CANONICAL.get(key, name), value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((CANONICAL.get(_norm(name), name), value))

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        raw = self.get("cseq") or ""
        parts = raw.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"bad CSeq header: {raw!r}")
        return int(parts[0]), parts[1].upper()

    @property
    def top_via_branch(self) -> str:
        """The branch of the topmost Via, also when several Vias share one header line (comma-separated)."""
        via = (self.get("via") or "").split(",", 1)[0]
        return header_params(via).get("branch", "")

    def encode(self) -> bytes:
        if self.is_request:
            first = f"{self.method} {self.uri} SIP/2.0"
        else:
            first = f"SIP/2.0 {self.status} {self.reason}"
        lines = [first]
        for k, v in self.headers:
            if _norm(k) != "content-length":
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


def _norm(name: str) -> str:
    n = name.strip().lower()
    return COMPACT.get(n, n)


_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3}) ?(.*)$")
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


def _unfold(lines: list[str]) -> list[str]:
    """RFC 3261 7.3.1: a line starting with whitespace continues the previous header. The pieces of a header
    are joined once (linear, where appending to the joined string per line was quadratic), and a header longer
    than MAX_HEADER_LINE once unfolded is refused."""
    groups: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and groups:
            groups[-1].append(line.strip())
        else:
            groups.append([line])
    unfolded = [" ".join(g) if len(g) > 1 else g[0] for g in groups]
    for header in unfolded:
        if len(header) > MAX_HEADER_LINE:
            raise SipParseError(f"a header is longer than {MAX_HEADER_LINE} characters: {header[:40]!r}")
    return unfolded


def parse(data: bytes) -> SipMessage:
    """Parse one datagram; raise SipParseError (never anything else) on malformed input."""
    if not isinstance(data, (bytes, bytearray)):
        raise SipParseError("datagram is not bytes")
    if len(data) > MAX_MESSAGE:
        raise SipParseError("datagram larger than 65535 bytes")
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = bytes(data).partition(b"\n\n")
        if not sep:
            raise SipParseError("no blank line between headers and body")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"headers are not UTF-8: {exc}") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADER_LINES + 1:
        raise SipParseError(f"more than {MAX_HEADER_LINES} header lines")
    unfolded = _unfold(lines[1:])
    msg = SipMessage()
    first = lines[0].strip()
    if m := _REQUEST_LINE.match(first):
        msg.method, msg.uri = m.group(1).upper(), m.group(2)
    elif m := _STATUS_LINE.match(first):
        msg.status, msg.reason = int(m.group(1)), m.group(2)
        if not 100 <= msg.status <= 699:
            raise SipParseError(f"status code out of range: {msg.status}")
    else:
        raise SipParseError(f"not a SIP request or status line: {first[:80]!r}")
    for line in unfolded:
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name.strip()):
            raise SipParseError(f"malformed header line: {line[:80]!r}")
        msg.headers.append((name.strip(), value.strip()))
    for required in ("via", "call-id", "cseq", "from", "to"):
        if msg.get(required) is None:
            raise SipParseError(f"missing {CANONICAL.get(required, required)} header")
    msg.cseq  # validates
    length = msg.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise SipParseError(f"bad Content-Length: {length!r}")
        n = int(length)
        if n > len(body):
            raise SipParseError("body shorter than Content-Length")
        body = body[:n]
    msg.body = body
    return msg


def header_params(value: str) -> dict[str, str]:
    """Parameters after the first ';' of a header value (outside <>), lower-cased names."""
    depth = 0
    cut = None
    for i, ch in enumerate(value):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == ";" and depth == 0:
            cut = i
            break
    if cut is None:
        return {}
    out: dict[str, str] = {}
    for part in value[cut + 1:].split(";"):
        k, _, v = part.strip().partition("=")
        if k:
            out[k.strip().lower()] = v.strip().strip('"')
    return out


def uri_host_port(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """Host and port of the first SIP URI in `uri` (sipwire.uri, linear in the text's length)."""
    found = parse_uri(uri)
    if found is None or not found.host:
        raise SipParseError(f"not a SIP URI: {uri[:80]!r}")
    return found.host, found.port if found.port is not None else default_port


def new_tag() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=10))


def new_branch() -> str:
    return "z9hG4bK" + "".join(random.choices(string.ascii_letters + string.digits, k=16))


def new_call_id(host: str) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=20)) + "@" + host


def make_request(method: str, uri: str, *, local: tuple[str, int], from_uri: str, to_uri: str,
                 call_id: str, cseq: int, from_tag: str, to_tag: str | None = None,
                 contact: str | None = None, extra: list[tuple[str, str]] | None = None,
                 body: bytes = b"", user_agent: str | None = None) -> SipMessage:
    host, port = local
    msg = SipMessage(method=method, uri=uri)
    msg.add("Via", f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport")
    msg.add("Max-Forwards", "70")
    msg.add("From", f"<{from_uri}>;tag={from_tag}")
    msg.add("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
    msg.add("Call-ID", call_id)
    msg.add("CSeq", f"{cseq} {method}")
    if contact:
        msg.add("Contact", contact)
    if user_agent:
        msg.add("User-Agent", user_agent)
    for k, v in extra or []:
        msg.add(k, v)
    msg.body = body
    return msg


def make_response(request: SipMessage, status: int, reason: str, *, to_tag: str | None = None,
                  received: tuple[str, int] | None = None,
                  extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> SipMessage:
    """Response copying Via/From/To/Call-ID/CSeq, stamping received/rport on the top Via."""
    resp = SipMessage(status=status, reason=reason)
    vias = request.get_all("via")
    for i, via in enumerate(vias):
        if i == 0 and received is not None:
            via = re.sub(r";rport(?=;|$)", f";rport={received[1]}", via)
            if "received=" not in via:
                via += f";received={received[0]}"
        resp.add("Via", via)
    resp.add("From", request.get("from") or "")
    to = request.get("to") or ""
    if to_tag and "tag=" not in to:
        to += f";tag={to_tag}"
    resp.add("To", to)
    resp.add("Call-ID", request.call_id)
    resp.add("CSeq", request.get("cseq") or "")
    for k, v in extra or []:
        resp.add(k, v)
    resp.body = body
    return resp
