"""A SIP registrar usable as the hosted provider or as the on-site gateway.

Digest authentication, bindings with expiry, SUBSCRIBE, INVITE (answered,
then hung up with BYE by the caller), OPTIONS, and a record of every request
with its time and source so tests can see what reached which server.
"""
from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass

from sipwire import digest
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint

from . import udp_buffers


NONCE_TTL_S = 300
MAX_NONCES = 500_000


@dataclass
class ReceivedRequest:
    t: float
    method: str
    source: str
    user: str
    call_id: str
    authenticated: bool


@dataclass
class Binding:
    user: str
    contact: str
    source: str
    expires_at: float


class Registrar:
    def __init__(self, name: str, host: str, port: int, realm: str, users: dict[str, str],
                 max_expires: int = 3600, keep: int = 200_000) -> None:
        self.name, self.host, self.port, self.realm = name, host, port, realm
        self.users = users
        self.max_expires = max_expires
        self.keep = keep
        self.requests: list[ReceivedRequest] = []
        self.bindings: dict[str, Binding] = {}
        self.endpoint: SipEndpoint | None = None
        self._nonces: dict[str, float] = {}          # nonce -> until (monotonic)
        self._nonce_order: deque[tuple[float, str]] = deque()   # (until, nonce) in the order issued: oldest first

    async def start(self) -> None:
        self.endpoint = await SipEndpoint.bind(self.host, self.port, self._handle, name=self.name)
        udp_buffers.enlarge_transport(self.endpoint.transport)     # every phone of its sites sends here
        self.port = self.endpoint.local[1]

    def stop(self) -> None:
        if self.endpoint:
            self.endpoint.close()

    def _record(self, msg: sip.SipMessage, addr: tuple[str, int], authenticated: bool) -> None:
        user = sip.uri_user(msg.get("from") or "")
        self.requests.append(ReceivedRequest(time.time(), msg.method or "", f"{addr[0]}:{addr[1]}", user, msg.call_id, authenticated))
        if len(self.requests) > self.keep:
            del self.requests[: self.keep // 10]

    def _challenge(self, msg: sip.SipMessage, addr) -> sip.SipMessage:
        nonce = self._new_nonce(time.monotonic())
        return sip.make_response(msg, 401, "Unauthorized", to_tag=sip.new_tag(), received=addr,
                                 extra=[("WWW-Authenticate", f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"')])

    def _new_nonce(self, now: float) -> str:
        """A nonce good for NONCE_TTL_S. Expired ones go from the front of the issue order as new ones come, so a
        challenge costs the same at any site size: the old sweep rebuilt the whole table on every challenge once
        50,000 nonces were live (a 10,000-phone site's refreshes issue that many in 300 s), and the lab spent a
        core on it (bench/lab_scale.py). At most MAX_NONCES are kept (the oldest goes first)."""
        nonce = secrets.token_hex(12)
        until = now + NONCE_TTL_S
        self._nonces[nonce] = until
        self._nonce_order.append((until, nonce))
        while self._nonce_order and (self._nonce_order[0][0] <= now or len(self._nonce_order) > MAX_NONCES):
            _, old = self._nonce_order.popleft()
            self._nonces.pop(old, None)
        return nonce

    def _authenticate(self, msg: sip.SipMessage) -> str | None:
        header = msg.get("authorization")
        if not header:
            return None
        try:
            nonce = digest.parse_challenge(header).get("nonce", "")
        except sip.SipParseError:
            return None
        if self._nonces.get(nonce, 0) < time.monotonic():
            return None
        return digest.verify(header, method=msg.method or "",
                             password_for=lambda u, r: self.users.get(u) if r == self.realm else None)

    async def _handle(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        if msg.method == "ACK":
            self._record(msg, addr, False)
            return None
        if msg.method in ("OPTIONS", "BYE", "CANCEL"):
            self._record(msg, addr, False)
            return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr)
        if msg.method not in ("REGISTER", "SUBSCRIBE", "INVITE"):
            self._record(msg, addr, False)
            return sip.make_response(msg, 405, "Method Not Allowed", received=addr)
        user = self._authenticate(msg)
        self._record(msg, addr, user is not None)
        if user is None:
            return self._challenge(msg, addr)
        if msg.method == "REGISTER":
            return self._register(msg, addr, user)
        if msg.method == "SUBSCRIBE":
            return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr,
                                     extra=[("Expires", msg.get("expires") or "3600")])
        # INVITE: answer at once; a real provider would ring, our callers only need to see where the call went
        self.endpoint.send(sip.make_response(msg, 100, "Trying", received=addr), addr)  # type: ignore[union-attr]
        sdp = (f"v=0\r\no=- 2 2 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\nt=0 0\r\n"
               f"m=audio 4000 RTP/AVP 0\r\n").encode()
        return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr,
                                 extra=[("Contact", f"<sip:{self.host}:{self.port}>"), ("Content-Type", "application/sdp")], body=sdp)

    def _register(self, msg: sip.SipMessage, addr, user: str) -> sip.SipMessage:
        requested = msg.get("expires")
        contact = msg.get("contact") or ""
        cparam = sip.header_params(contact).get("expires")
        value = cparam or requested or "3600"
        expires = min(int(value) if value.isdigit() else 3600, self.max_expires)
        aor = sip.uri_user(msg.get("to") or "") or user
        if expires == 0:
            self.bindings.pop(aor, None)
        else:
            self.bindings[aor] = Binding(aor, contact, f"{addr[0]}:{addr[1]}", time.time() + expires)
        extra = [("Contact", f"{contact.split(';')[0]};expires={expires}")] if contact and expires else []
        return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr, extra=extra)

    def active_bindings(self) -> list[dict]:
        now = time.time()
        return [asdict(b) for b in self.bindings.values() if b.expires_at > now]

    def summary(self, since: float = 0.0) -> dict:
        return {"name": self.name, "address": f"{self.host}:{self.port}",
                "bindings": self.active_bindings(),
                "requests": [asdict(r) for r in self.requests if r.t >= since]}
