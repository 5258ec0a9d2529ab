"""INVITEs as a capture sees them: which server answered a phone's call, and with what.

A call check asks where a phone's INVITE went (R5: to the working server, or
failed over to a lower one when the higher ones do not answer). On the wire
that is the server whose address got the INVITE that received the final
answer. A digest challenge (401/407) is not that answer: the phone repeats the
INVITE with credentials and the answer to that one counts. Provisional
responses, ACK, CANCEL and everything else of the dialog are ignored; an INVITE
that never gets a final answer gives no outcome (the phone then tries the next
server, whose answer is the outcome).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from fleet.evidence.wire.transactions import RegisterRequest, transaction_key, uri_host, uri_user
from fleet.evidence.wire.sip import WireMessage
from fleet.evidence.wire.decode import sip_message

CHALLENGES = frozenset({401, 407})


def invite_message(payload: bytes) -> WireMessage | None:
    """An INVITE request or a response to one, or None (wire_decode.sip_message: one parse for either method)."""
    msg = sip_message(payload)
    return msg if msg is not None and msg.cseq[1] == "INVITE" else None


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The final answer to a phone's INVITE. `request` carries what attribution reads (the caller's user is
    its From user; the destination is the server's address)."""
    request: RegisterRequest
    t: float
    code: int
    dialled: str


class InviteMatcher:
    """Matches INVITE requests to their final answers; memory bounded by `max_pending` (oldest dropped)."""

    def __init__(self, max_pending: int = 50_000) -> None:
        self.max_pending = max_pending
        self._pending: dict[tuple, tuple[RegisterRequest, str]] = {}
        self.stats: Counter[str] = Counter()

    def feed(self, msg: WireMessage, t: float, src: tuple[str, int], dst: tuple[str, int]) -> CallOutcome | None:
        cseq = msg.cseq[0]
        key = transaction_key(msg, cseq)
        if msg.is_request:
            if key in self._pending:
                self.stats["invite_retransmissions"] += 1
                return None
            h = msg.headers
            frm = uri_user(h["from"][0])
            req = RegisterRequest(t, src, dst, h["call-id"][0], cseq, key, frm, frm, "", "", None,
                                  "authorization" in h or "proxy-authorization" in h, "UDP", uri_host(msg.uri or ""))
            if len(self._pending) >= self.max_pending:
                self._pending.pop(next(iter(self._pending)))
                self.stats["invites_evicted"] += 1
            self._pending[key] = (req, uri_user(msg.uri or "") or (msg.uri or "")[:64])
            self.stats["invites"] += 1
            return None
        if msg.status is None or msg.status < 200:
            return None
        entry = self._pending.get(key)
        if entry is None:
            self.stats["stray_invite_responses"] += 1
            return None
        if src != entry[0].dst or dst[0] != entry[0].src[0]:
            # not from the INVITE's destination back to its source: copied text (RegisterMatcher._response)
            self.stats["foreign_invite_responses"] += 1
            return None
        del self._pending[key]
        if msg.status in CHALLENGES:
            self.stats["invite_challenges"] += 1
            return None
        self.stats["calls"] += 1
        return CallOutcome(entry[0], t, msg.status, entry[1])

    def expire(self, now: float, timeout: float = 64.0) -> None:
        """Forget INVITEs never answered (a server that is down): they are no call outcome."""
        while self._pending:
            key = next(iter(self._pending))
            if now - self._pending[key][0].t < timeout:
                break
            del self._pending[key]
            self.stats["invites_unanswered"] += 1
