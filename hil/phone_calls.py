"""SUBSCRIBE to the primary only (R2), INVITE with failover to lower servers (R5), and requests the phone answers (check-sync NOTIFY).

A mixin of VirtualPhone (hil.phone): it works on the phone's own state.
"""
from __future__ import annotations

import asyncio
import re
import secrets

from sipwire import digest
from sipwire import message as sip
from sipwire.endpoint import TransactionTimeout

from . import sip_answers
from .resolver import ResolveError

from .phone_types import Registration, ServerBinding


class Dialogs:
    async def _subscribe(self, reg: Registration, srv: ServerBinding) -> None:
        """message-summary subscription, with server 1 only."""
        reg.subscribed_to_primary = True
        try:
            hop = await self._next_hop(srv)
            uri = f"sip:{reg.user}@{srv.address}"
            tag = sip.new_tag()
            call_id = sip.new_call_id(self.spec.ip)
            cseqs = iter(range(1, 10))
            extra = [("Event", "message-summary"), ("Accept", "application/simple-message-summary"), ("Expires", str(srv.expires))]
            await self._authenticated(
                lambda auth: sip.make_request("SUBSCRIBE", uri, local=self.endpoint.local, from_uri=uri, to_uri=uri,  # type: ignore[union-attr]
                                              call_id=call_id, cseq=next(cseqs), from_tag=tag,
                                              contact=f"<sip:{reg.user}@{self.spec.ip}:{self.spec.sip_port}>",
                                              extra=extra + ([auth] if auth else [])),
                hop, srv.timers, reg, "SUBSCRIBE", uri)
        except (TransactionTimeout, ResolveError, sip.SipParseError):
            reg.subscribed_to_primary = False

    async def place_call(self, number: str, reg_index: int = 1, hold: float = 0.5) -> dict:
        """INVITE through the servers in priority order, skipping registered-type servers that are down (each
        through its outbound proxy when it uses one)."""
        reg = next((r for r in self.regs if r.index == reg_index), None)
        if reg is None:
            return {"ok": False, "reason": f"no registration {reg_index}"}
        attempts = []
        for srv in reg.servers:
            if not self._may_signal_via(srv):
                continue
            try:
                ip, port = await self._next_hop(srv)
            except ResolveError:
                attempts.append({"server": srv.index, "result": "dns"})
                continue
            uri = f"sip:{number}@{srv.address}"
            from_uri = f"sip:{reg.user}@{srv.address}"
            tag, call_id = sip.new_tag(), sip.new_call_id(self.spec.ip)
            sdp = (f"v=0\r\no=- 1 1 IN IP4 {self.spec.ip}\r\ns=-\r\nc=IN IP4 {self.spec.ip}\r\nt=0 0\r\n"
                   f"m=audio 2222 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
            cseqs = iter(range(1, 10))
            try:
                req, resp = await self._authenticated(
                    lambda auth: sip.make_request("INVITE", uri, local=self.endpoint.local, from_uri=from_uri, to_uri=uri,  # type: ignore[union-attr]
                                                  call_id=call_id, cseq=next(cseqs), from_tag=tag,
                                                  contact=f"<sip:{reg.user}@{self.spec.ip}:{self.spec.sip_port}>",
                                                  extra=[("Content-Type", "application/sdp")] + ([auth] if auth else []), body=sdp),
                    (ip, port), srv.timers, reg, "INVITE", uri,
                    on_challenge=lambda rq, rs: self._ack(rq, rs, ip, port))
            except (TransactionTimeout, sip.SipParseError):
                attempts.append({"server": srv.index, "result": "timeout"})
                continue
            self._ack(req, resp, ip, port)
            attempts.append({"server": srv.index, "result": resp.status})
            self._report_call(number, srv, resp.status)
            if resp.status == 200:
                self.truth.record(self.mac, "call", server=srv.index, number=number)
                self.in_call = True
                self.hang_up.clear()
                try:       # held for `hold` seconds, or until the lab's /hang-up
                    await asyncio.wait_for(self.hang_up.wait(), hold)
                except asyncio.TimeoutError:
                    pass
                to_tag = sip.header_params(resp.get("to") or "").get("tag")
                bye = sip.make_request("BYE", uri, local=self.endpoint.local, from_uri=from_uri, to_uri=uri,  # type: ignore[union-attr]
                                       call_id=call_id, cseq=req.cseq[0] + 1, from_tag=tag, to_tag=to_tag)
                try:
                    await self.endpoint.request(bye, (ip, port), srv.timers)  # type: ignore[union-attr]
                except TransactionTimeout:
                    pass
                self.in_call = False
                return {"ok": True, "server": srv.index, "attempts": attempts}
            if 400 <= resp.status < 500:
                break
        return {"ok": False, "server": None, "attempts": attempts}

    def _ack(self, invite: sip.SipMessage, resp: sip.SipMessage, ip: str, port: int) -> None:
        ack = sip.SipMessage(method="ACK", uri=invite.uri)
        ack.add("Via", invite.get("via") or "")
        ack.add("Max-Forwards", "70")
        ack.add("From", invite.get("from") or "")
        ack.add("To", resp.get("to") or "")
        ack.add("Call-ID", invite.call_id)
        ack.add("CSeq", f"{invite.cseq[0]} ACK")
        self.endpoint.send(ack, (ip, port))  # type: ignore[union-attr]

    async def _on_sip_request(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        if msg.method == "NOTIFY" and (msg.get("event") or "").lower().startswith("check-sync"):
            refused = await self._source_refusal(msg, addr, "checksync-notify-source-refused") \
                or self._validate_check_sync(msg, addr)
            if refused is not None:
                return refused
            self._log(f"check-sync NOTIFY from {addr[0]}")
            self._spawn(self._check_sync())
            return sip_answers.answer("checksync-notify-accepted", msg, addr)
        if msg.method == "OPTIONS":
            return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr)
        if msg.method in ("ACK",):
            return None
        if msg.method == "INVITE":
            return await self._on_invite(msg, addr)    # hil.phone_inbound: as the configuration says
        if msg.method in ("BYE", "NOTIFY"):
            return sip.make_response(msg, 200, "OK", received=addr)
        return sip.make_response(msg, 405, "Method Not Allowed", received=addr)

    def _validate_check_sync(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        """voIpProt.SIP.requestValidation for NOTIFY with method digest (or both/all): challenge, then check the
        answer against the line's SIP credentials ("the local credentials for the associated registration",
        SIP 2.2 guide A-14); the request must name one of the phone's lines. None: accepted. The answers to a
        wrong line (404) and a wrong digest (403) are *unconfirmed* (conformance checksync-notify-*)."""
        methods = {method for _, method in self._validations(msg)}
        if not methods & {"digest", "both", "all"}:
            return None
        user = msg.uri.split(":", 1)[-1].split("@")[0] if "@" in msg.uri else ""
        lines = {r.user: r for r in self.regs}
        if user not in lines:
            return sip_answers.answer("checksync-notify-unknown-line", msg, addr)
        reg = lines[user]
        realm = self.params.get("voIpProt.SIP.requestValidation.digest.realm", "") or "PolycomSPIP"
        header = msg.get("authorization") or ""
        if header and digest.verify(header, method="NOTIFY",
                                    password_for=lambda u, r: reg.password if u == reg.auth_user and r == realm else None):
            self.truth.record(self.mac, "check_sync_authenticated", user=user)
            return None
        if header:
            return sip_answers.answer("checksync-notify-digest-wrong", msg, addr)
        nonce = secrets.token_hex(8)
        return sip_answers.answer("checksync-notify-digest-challenge", msg, addr,
                                  fill={"WWW-Authenticate": f'Digest realm="{realm}", nonce="{nonce}", qop="auth"'})

    async def _check_sync(self) -> None:
        """Reboot when alwaysReboot=1. Otherwise, outside a call, re-read the files: nothing changed, nothing
        happens; only parameters the family applies live changed (UC Software: reg.x.*, "Change Causes Restart:
        No"), they are applied and the lines register again, no reboot; anything else reboots. The rule for
        alwaysReboot=0 is *unconfirmed* in detail (conformance entries checksync-*)."""
        if self.params.get("voIpProt.SIP.specialEvent.checkSync.alwaysReboot", "0") == "1":
            await self.reboot("check-sync")
            return
        if self.in_call:
            return
        new = await self._provision()
        changed = sorted(k for k in set(new) | set(self.params) if new.get(k) != self.params.get(k))
        if not changed:
            return
        live = self.spec.profile.live_params
        if live and all(re.match(live, name) for name in changed):
            await self.apply_live(new, changed)
        else:
            await self.reboot("check-sync (configuration changed)")
