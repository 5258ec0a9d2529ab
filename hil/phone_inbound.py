"""A call into the virtual phone: whether it rings, and what it answers when it does not.

A mixin of VirtualPhone (hil.phone): it works on the phone's own state. The
decision follows the phone's configuration, in the order a request meets it:

1. `voIpProt.SIP.requestValidation.n.method` source (or both/all) for INVITE: the request must come from an
   address of a registration server. Which servers count is read two ways (conformance
   sipval-invite-source-refused, *disputed*): the guides' "set of target registration servers" (every configured
   server, lab option `source_validation: configured`, the default) or the operators' report that calls "not from
   reg.1.server.1.address" are refused (`source_validation: primary`). Refused: 400 Bad Request.
2. method digest (or both/all): challenged with 401 (sipval-digest-challenge); an answer with the line's own
   credentials passes, none (the usual gateway) leaves the call unanswered.
3. `reg.x.server.y.failOver.onlySignalWithRegistered` 1 with reRegisterOn and failRegistrationOn 1: "no signaling
   is accepted from ... a server that has failed" (UC Software 4.1.6 guide): an INVITE from such a server whose
   registration is down gets no answer at all (sip-invite-only-signal-with-registered, the guide names none).
4. Already in a call: 486 Busy Here.
Otherwise the phone rings (180 Ringing), is picked up after `RING_S` (200 OK with SDP: someone at the desk; a
real phone rings until answered or the caller gives up, so "ringing" alone already counts as reached), and
hangs up after `ANSWERED_HOLD_S` with a BYE to the caller.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from sipwire import digest
from sipwire import message as sip

from . import sip_answers
from .phone_types import UP, ServerBinding
from .resolver import ResolveError

RING_S = 0.3
ANSWERED_HOLD_S = 0.5
SOURCE_READINGS = ("configured", "primary")


@dataclass(frozen=True)
class InviteDecision:
    """What the phone does with an INVITE: `entry` is the conformance entry of its answer ("" when it rings);
    `silent`: no answer at all; `why` says which setting decided (for the lab's log and ground truth)."""
    entry: str = ""
    silent: bool = False
    why: str = ""
    fill: tuple[tuple[str, str], ...] = ()

    @property
    def rings(self) -> bool:
        return not self.entry and not self.silent


class InboundCalls:
    async def _servers_at(self, addr: tuple[str, int]) -> list[ServerBinding]:
        """The configured servers (any line) whose address, or outbound proxy's, resolves to the request's source."""
        found = []
        for reg in self.regs:
            for srv in reg.servers:
                for host in {srv.address, (srv.proxy or (srv.address, 0))[0]}:
                    try:
                        if await self.resolver.resolve(host) == addr[0]:
                            found.append(srv)
                            break
                    except ResolveError:
                        continue
        return found

    async def invite_decision(self, msg: sip.SipMessage, addr: tuple[str, int]) -> InviteDecision:
        """Steps 1-4 of the module's docstring, on this phone's configuration and state."""
        at = await self._servers_at(addr)
        reading = getattr(self.spec, "source_validation", "configured")
        for n, method in self._validations(msg):
            if method in ("source", "both", "all"):
                allowed = [s for s in at if reading == "configured" or s.index == 1]
                if not allowed:
                    which = (f"server {at[0].index}" if at else addr[0])
                    return InviteDecision("sipval-invite-source-refused", why=(
                        f"voIpProt.SIP.requestValidation.{n}.method={method} refuses INVITE from {which} "
                        f"({'only server 1 counts' if at else 'not a configured registration server'})"))
        for n, method in self._validations(msg):
            if method in ("digest", "both", "all"):
                refused = self._digest_refusal(msg, n)
                if refused is not None:
                    return refused
        for srv in at:
            if srv.only_signal_with_registered and srv.re_register and srv.fail_registration_on and srv.state != UP:
                return InviteDecision(silent=True, why=(
                    f"reg.{srv.reg}.server.{srv.index}.failOver.onlySignalWithRegistered=1: server {srv.index} has "
                    "failed, no signaling is accepted from it"))
        if self.in_call:
            return InviteDecision("sip-invite-busy", why="in a call")
        return InviteDecision(why="rings")

    def _digest_refusal(self, msg: sip.SipMessage, n: int) -> InviteDecision | None:
        """Digest validation of an INVITE: the line named in the Request-URI, its own credentials; None: passed."""
        user = msg.uri.split(":", 1)[-1].split("@")[0] if "@" in msg.uri else ""
        reg = next((r for r in self.regs if r.user == user), None)
        realm = self.params.get("voIpProt.SIP.requestValidation.digest.realm", "") or "PolycomSPIP"
        header = msg.get("authorization") or ""
        if reg is not None and header and digest.verify(
                header, method="INVITE", password_for=lambda u, r: reg.password if u == reg.auth_user and r == realm else None):
            return None
        nonce = secrets.token_hex(8)
        return InviteDecision("sipval-digest-challenge", why=(
            f"voIpProt.SIP.requestValidation.{n}.method=digest challenges INVITE"),
            fill=(("WWW-Authenticate", f'Digest realm="{realm}", nonce="{nonce}", qop="auth"'),))

    async def _on_invite(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        """Answer an INVITE as `invite_decision` says; ground truth records every decision. A retransmission of an
        INVITE being answered gets the last answer again (RFC 3261 17.2.1), not a second decision."""
        key = (msg.call_id, msg.get("cseq") or "", msg.top_via_branch)
        sent = self._invites.get(key) if hasattr(self, "_invites") else None
        if sent is not None:
            return sent[0] if sent else None
        if not hasattr(self, "_invites") or len(self._invites) > 64:
            self._invites = {}
        self._invites[key] = []
        decision = await self.invite_decision(msg, addr)
        self.truth.record(self.mac, "inbound_call", source=addr[0], rings=decision.rings, why=decision.why,
                          answer=sip_answers.shape(decision.entry)[0] if decision.entry else (None if decision.silent else 200))
        if decision.silent:
            self._log(f"INVITE from {addr[0]} not answered: {decision.why}")
            return None
        if decision.entry:
            self._log(f"INVITE from {addr[0]} refused: {decision.why}")
            refusal = sip_answers.answer(decision.entry, msg, addr, fill=dict(decision.fill))
            self._invites[key] = [refusal]
            return refusal
        to_tag = sip.new_tag()
        ringing = sip_answers.answer("sipval-invite-configured-server-accepted", msg, addr, to_tag=to_tag)
        self._invites[key] = [ringing]
        self.endpoint.send(ringing, addr)  # type: ignore[union-attr]
        self.in_call = True
        await asyncio.sleep(RING_S)
        sdp = (f"v=0\r\no=- 3 3 IN IP4 {self.spec.ip}\r\ns=-\r\nc=IN IP4 {self.spec.ip}\r\nt=0 0\r\n"
               f"m=audio 2224 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
        ok = sip.make_response(msg, 200, "OK", to_tag=to_tag, received=addr,
                               extra=[("Contact", f"<sip:{self.spec.ip}:{self.spec.sip_port}>"),
                                      ("Content-Type", "application/sdp")], body=sdp)
        self._invites[key] = [ok]
        self._spawn(self._hang_up_inbound(msg, to_tag, addr))
        return ok

    async def _hang_up_inbound(self, invite: sip.SipMessage, to_tag: str, addr: tuple[str, int]) -> None:
        """After ANSWERED_HOLD_S, a BYE to the caller's Contact (else where the INVITE came from); its answer is not
        needed (a gateway that placed the call from its control interface may not answer in-dialog requests)."""
        try:
            await asyncio.sleep(ANSWERED_HOLD_S)
            contact = (invite.get("contact") or "").strip()
            target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else contact.split(";")[0]
            try:
                host, port = sip.uri_host_port(target)
                dest = (host, port or 5060)
            except sip.SipParseError:
                dest = addr
            bye = sip.SipMessage(method="BYE", uri=target or invite.uri)
            bye.add("Via", f"SIP/2.0/UDP {self.spec.ip}:{self.spec.sip_port};branch=z9hG4bK{secrets.token_hex(8)}")
            bye.add("Max-Forwards", "70")
            bye.add("From", f"{invite.get('to') or ''};tag={to_tag}")
            bye.add("To", invite.get("from") or "")
            bye.add("Call-ID", invite.call_id)
            bye.add("CSeq", "1 BYE")
            self.endpoint.send(bye, dest)  # type: ignore[union-attr]
        finally:
            self.in_call = False
