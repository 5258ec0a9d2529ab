"""REGISTER transactions as a capture sees them: each request matched to its final response, or timed out.

A capture point sees retransmitted requests, retransmitted and forked
responses, responses whose request it never saw, and requests that are never
answered (the server is unreachable: exactly the outage we want to see). RFC
3261 17.1.3 matches a response to a client transaction by the top Via branch
and the CSeq method; we add Call-ID and the CSeq number so that phones reusing
a branch (old RFC 2543 stacks without the magic cookie) still match, falling
back to the Via sent-by when there is no branch at all.

A digest challenge (401/407) or a 423 Interval Too Brief is not an outcome for
our purpose: the phone answers it with a new REGISTER on the same Call-ID, and
the answer to that decides. Only when the phone does not follow up within the
transaction timeout does the challenge become the outcome (refused with that
code), and a challenge to a REGISTER that already carried credentials (and was
not marked stale) is a refusal at once.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

from sipwire.contacts import granted_expiry as granted_expiry_of
from sipwire.contacts import seconds as _int     # an expires value: 1 to 10 digits, else None
from sipwire.contacts import same_contact, split_contacts  # noqa: F401  (re-exported: wire readers import them here)
from sipwire.uri import parse_uri, uri_user  # noqa: F401  (uri_user: re-exported for sip_calls)

from fleet.evidence.wire.sip import WireMessage



def host_key(host: str) -> str:
    """A host as attribution compares it: lower case, no trailing dot, an IP address in its canonical form
    (so `sip:VOIP.Example.` and `voip.example`, or two spellings of one IPv6 address, are the same)."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def uri_host(uri: str) -> str:
    """The host of a SIP URI as `host_key` spells it ("" when the URI has none): which server a request is
    for when it goes through an outbound proxy that several servers share."""
    found = parse_uri(uri or "")
    return host_key(found.host) if found is not None and found.host else ""


T1_TIMEOUT = 32.0      # RFC 3261 Timer F: 64 * T1 with T1 = 500 ms
FINAL, TIMEOUT, INTERIM = "final", "timeout", "interim"
INTERIM_CODES = frozenset({401, 407, 423})
# A challenge never changes a registration's state by itself (issue 17): anyone on the LAN can draw one for a
# phone's user with one unauthenticated REGISTER, and even a request with credentials may be a forgery
# carrying garbage ones. A phone that really cannot authenticate shows when the binding it had lapses.
CHALLENGE_CODES = frozenset({401, 407})


@dataclass(slots=True)
class RegisterRequest:
    """What we keep of one REGISTER: enough to attribute it and to judge its answer (read-only by
    convention: not frozen, because a frozen dataclass costs a few microseconds per message)."""
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    call_id: str
    cseq: int
    key: tuple[str, int, str]
    aor_user: str                 # user part of the To URI (the address of record)
    from_user: str
    contact_uri: str              # "" when the request has no Contact (a binding query); "*" for remove-all
    contact_user: str
    requested_expires: int | None
    has_credentials: bool
    transport: str                # from the top Via: UDP, TCP, TLS
    uri_host: str = ""            # the Request-URI's host (host_key): the server it is for, behind a proxy
    auth_user: str = ""           # the username of its Authorization / Proxy-Authorization ("" without one)


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """How one REGISTER ended. kind FINAL: `code` is the final status; TIMEOUT: no final answer within
    the timeout. `granted_expires` is the expiry the registrar granted our contact (2xx only)."""
    kind: str
    request: RegisterRequest
    t: float
    code: int | None = None
    granted_expires: int | None = None
    retransmissions: int = 0
    after_challenge: int | None = None     # the challenge code when this answer followed one

    @property
    def unregister(self) -> bool:
        """An accepted REGISTER that removed the binding (expires=0, or Contact: *)."""
        if self.kind != FINAL or self.code is None or not 200 <= self.code < 300:
            return False
        if self.request.contact_uri == "*" or self.request.requested_expires == 0:
            return True
        return self.granted_expires == 0


def request_info(msg: WireMessage, t: float, src: tuple[str, int], dst: tuple[str, int],
                 key: tuple[str, int, str] | None = None) -> RegisterRequest | None:
    """The parts of a REGISTER we need; None when the message is not a REGISTER request."""
    cseq, method = msg.cseq
    if method != "REGISTER" or not msg.is_request:
        return None
    h = msg.headers
    contact_uri = contact_user = ""
    contact_expires: int | None = None
    raw_contacts = h.get("contact")
    if raw_contacts:
        contacts = split_contacts(raw_contacts)
        if contacts:
            contact_uri = contacts[0][0]
            contact_user = uri_user(contact_uri) if contact_uri != "*" else ""
            contact_expires = _int(contacts[0][1].get("expires"))
    requested = contact_expires if contact_expires is not None else _int((h.get("expires") or (None,))[0])
    to, frm = h["to"][0], h["from"][0]
    aor_user = uri_user(to)
    return RegisterRequest(
        t, src, dst, h["call-id"][0], cseq, key or transaction_key(msg, cseq), aor_user,
        aor_user if frm == to else uri_user(frm), contact_uri, contact_user, requested,
        "authorization" in h or "proxy-authorization" in h, _via_transport(h["via"][0]), uri_host(msg.uri or ""),
        credentials_user(h))


_AUTH_USER = re.compile(r'\busername\s*=\s*"([^"\r\n]{1,128})"', re.I)
AUTH_SCANNED = 4096        # characters of a credentials header searched for its username (bounded work)


def credentials_user(headers: dict[str, list[str]]) -> str:
    """The digest username a request's credentials name ("" without credentials): which line's password the
    server checked when it accepted them (wire_observations learns a phone's address from that)."""
    for name in ("authorization", "proxy-authorization"):
        for value in headers.get(name) or ():
            m = _AUTH_USER.search(value[:AUTH_SCANNED])
            if m:
                return m.group(1)
    return ""


_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.I)


def transaction_key(msg: WireMessage, cseq: int) -> tuple[str, int, str]:
    via = msg.headers["via"][0].split(",", 1)[0]
    m = _BRANCH.search(via)
    branch = m.group(1) if m else ""
    if not branch:
        branch = "sent-by:" + via.split(";")[0].strip()
    return (msg.headers["call-id"][0], cseq, branch)


def _via_transport(via: str) -> str:
    head = via.split(";")[0].strip().split()
    proto = head[0].upper() if head else ""
    return proto.rsplit("/", 1)[-1] if "/" in proto else ""


def granted_expiry(resp: WireMessage, req: RegisterRequest) -> int | None:
    """The expiry a 2xx granted the request's contact (sipwire.contacts.granted_expiry, the rule the lab's phones
    read their own answers by): its Contact entry's expires; where the registrar rewrote that contact the
    only one with the phone's user, else the only one listed; else the Expires header; else what was asked."""
    return granted_expiry_of(resp.get_all("contact"), resp.get("expires"), req.requested_expires, req.contact_uri,
                             req.contact_user or req.aor_user)


class RegisterMatcher:
    """Feed it every REGISTER request and response (in capture order); it returns outcomes.

    `expire(now)` turns transactions older than `timeout` into TIMEOUT outcomes ("no answer") and forgets
    unanswered challenges (and 423s: an interim answer is no state); call it regularly with a clock on the
    same base as the packet times. Memory is bounded by `max_pending` (per table: open transactions, recently finished ones,
    open challenges): the oldest entries are dropped first (counted, never turned into a false "no answer").
    Messages are WireMessage objects (wire_sip.parse), with REGISTER in their CSeq.

    `timeouts` gives a destination its own transaction timeout: a phone configured with retryTimeOut and
    retryMaxCount gives up on a server long before Timer F, and "no answer" should be reported when the
    phone itself concluded it, not 32 s later. Keys are (ip, port), or (ip, port, Request-URI host) for a
    destination several servers share (an outbound proxy): the latter wins where both fit.
    """

    def __init__(self, timeout: float = T1_TIMEOUT, max_pending: int = 200_000,
                 timeouts: dict[tuple, float] | None = None) -> None:
        self.timeout = timeout
        self.timeouts = dict(timeouts or {})
        self.max_pending = max_pending
        self._pending: dict[tuple, list] = {}       # key -> [RegisterRequest, retransmissions, challenge code]
        self._done: dict[tuple, float] = {}         # key -> t: absorbs late retransmissions and duplicates
        self._challenged: dict[str, tuple[RegisterOutcome, float]] = {}   # call-id -> (challenge, t)
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pending)

    def feed(self, msg: WireMessage, t: float, src: tuple[str, int], dst: tuple[str, int]) -> RegisterOutcome | None:
        if msg.is_request:
            self._request(msg, t, src, dst)
            return None
        return self._response(msg, t, src, dst)

    def _request(self, msg: WireMessage, t: float, src: tuple[str, int], dst: tuple[str, int]) -> None:
        key = transaction_key(msg, msg.cseq[0])
        entry = self._pending.get(key)
        if entry is not None:
            entry[1] += 1
            self.stats["retransmissions"] += 1
            return
        if key in self._done:
            self.stats["retransmissions_after_final"] += 1
            return
        req = request_info(msg, t, src, dst, key)
        if req is None:
            return
        after = None
        challenged = self._challenged.get(req.call_id)
        if challenged is not None and challenged[0].request.cseq < req.cseq:
            del self._challenged[req.call_id]        # the phone answered the challenge
            after = challenged[0].code
        if len(self._pending) >= self.max_pending:
            self._pending.pop(next(iter(self._pending)))
            self.stats["evicted"] += 1
        self._pending[key] = [req, 0, after]
        self.stats["requests"] += 1

    def _response(self, msg: WireMessage, t: float, src: tuple[str, int], dst: tuple[str, int]
                  ) -> RegisterOutcome | None:
        """A response ends its transaction only when it went from the request's destination (address and port)
        back to the request's source address (issue 17): Call-ID, CSeq and branch are text anyone who saw or sent
        the request can copy, so a LAN host could otherwise answer its own REGISTER (or a phone's) with a 200
        or a 403 and set the phone's state, or have its address learned. Such a response is counted
        (`foreign_responses`) and leaves the transaction open for the real answer. The destination port of the
        response is not compared: without rport a server answers to the Via's port (RFC 3261 18.2.2)."""
        cseq, method = msg.cseq
        if method != "REGISTER" or msg.status is None:
            return None
        key = transaction_key(msg, cseq)
        if msg.status < 200:
            self.stats["provisional"] += 1
            return None
        entry = self._pending.get(key)
        if entry is None:
            self.stats["duplicate_final" if key in self._done else "stray_responses"] += 1
            return None
        if src != entry[0].dst or dst[0] != entry[0].src[0]:
            self.stats["foreign_responses"] += 1
            return None
        del self._pending[key]
        self._finish(key, t)
        req, retrans, after = entry
        code = msg.status
        self._challenged.pop(req.call_id, None)
        if code in INTERIM_CODES:
            outcome = RegisterOutcome(INTERIM, req, t, code=code, retransmissions=retrans)
            if len(self._challenged) >= self.max_pending:
                self._challenged.pop(next(iter(self._challenged)))
                self.stats["evicted"] += 1
            self._challenged[req.call_id] = (outcome, t)
            self.stats["challenges"] += 1
            return outcome
        granted = granted_expiry(msg, req) if 200 <= code < 300 else None
        self.stats["finals"] += 1
        return RegisterOutcome(FINAL, req, t, code=code, granted_expires=granted, retransmissions=retrans,
                               after_challenge=after)

    def _finish(self, key: tuple, t: float) -> None:
        if len(self._done) >= self.max_pending:
            self._done.pop(next(iter(self._done)))
        self._done[key] = t

    def limit(self, req: RegisterRequest) -> float:
        """The transaction timeout of this request: by destination and Request-URI host, else destination."""
        found = self.timeouts.get((*req.dst, req.uri_host)) if req.uri_host else None
        return found if found is not None else self.timeouts.get(req.dst, self.timeout)

    def expire(self, now: float) -> list[RegisterOutcome]:
        """Outcomes for transactions that got no final answer within the timeout; challenges left unanswered
        are counted and forgotten (no outcome)."""
        out: list[RegisterOutcome] = []
        if self.timeouts:     # per destination: the oldest is not necessarily the first due, so look at all
            for key in [k for k, (req, _, _) in self._pending.items() if now - req.t >= self.limit(req)]:
                req, retrans, _ = self._pending.pop(key)
                self._finish(key, now)
                self.stats["timeouts"] += 1
                out.append(RegisterOutcome(TIMEOUT, req, req.t + self.limit(req), retransmissions=retrans))
        while self._pending:
            key = next(iter(self._pending))
            req, retrans, _ = self._pending[key]
            if now - req.t < self.timeout:
                break
            del self._pending[key]
            self._finish(key, now)
            self.stats["timeouts"] += 1
            out.append(RegisterOutcome(TIMEOUT, req, req.t + self.timeout, retransmissions=retrans))
        while self._done:
            key = next(iter(self._done))
            if now - self._done[key] < self.timeout:
                break
            del self._done[key]
        while self._challenged:
            call_id = next(iter(self._challenged))
            challenge, t = self._challenged[call_id]
            if now - t < self.timeout:
                break
            del self._challenged[call_id]
            self.stats["unanswered_challenges"] += 1     # no outcome: an unanswered challenge is no state (issue 17)
        return out
