"""The virtual phone's answers to requests, rendered from the conformance corpus (soundpoint.conformance).

Why: the lab must not hold a private guess of what a phone answers. Each
answer here is an entry's body: its status line and its own headers, with the
dialog headers (Via, From, To, Call-ID, CSeq) taken from the request as any
SIP answer does, and the few values a live answer needs (a fresh nonce, the
configured realm) filled in by name.
"""
from __future__ import annotations

from soundpoint import conformance
from sipwire import message as sip

# headers an answer copies from its request (or that belong to one phone, not to the shape)
_FROM_REQUEST = {"via", "from", "to", "call-id", "cseq", "content-length", "user-agent"}


def shape(entry_id: str) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, reason, own headers) of an entry's SIP answer body."""
    text = conformance.get(entry_id).body.replace("\r\n", "\n")
    first, *lines = text.split("\n")
    version, code, reason = (first.split(" ", 2) + [""])[:3]
    if version != "SIP/2.0" or not code.isdigit():
        raise conformance.CorpusError(f"{entry_id}: the answer body is not a SIP status line: {first[:60]!r}")
    headers = []
    for line in lines:
        if not line.strip():
            break
        name, _, value = line.partition(":")
        if name.strip().lower() not in _FROM_REQUEST:
            headers.append((name.strip(), value.strip()))
    return int(code), reason.strip(), headers


def answer(entry_id: str, request: sip.SipMessage, received: tuple[str, int], fill: dict[str, str] | None = None,
           to_tag: bool | str = True) -> sip.SipMessage:
    """The entry's answer to `request`; `fill` replaces the value of each named header (case-insensitive);
    `to_tag` a tag of the caller's (a 180 and the 200 after it share theirs), True a fresh one, False none."""
    code, reason, headers = shape(entry_id)
    wanted = {k.lower(): v for k, v in (fill or {}).items()}
    headers = [(k, wanted.get(k.lower(), v)) for k, v in headers]
    return sip.make_response(request, code, reason, to_tag=to_tag if isinstance(to_tag, str) else sip.new_tag() if to_tag else None, received=received,
                             extra=headers)
