"""The SIP user agent's registrations: one loop per configured server (R1, R3), the working server (R4).

A mixin of VirtualPhone (hil.phone): it works on the phone's own state.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import time

from sipwire import contacts, digest
from soundpoint import conformance, user_agent
from soundpoint.timing import refresh_interval
from sipwire import message as sip
from sipwire.endpoint import TransactionTimeout, TransactionTimers

from . import sip_answers
from .resolver import ResolveError

from .phone_types import DOWN, FAILBACK_MODES, UP, Failback, Registration, ServerBinding


VALIDATION_METHODS = ("source", "digest", "both", "all")


def granted_expiry(resp: sip.SipMessage, requested: int, own_contact: str) -> int:
    """The expiry a 200 granted this phone's own binding (sipwire.contacts.granted_expiry, the rule the collector
    reads the wire by): its own Contact entry's, else a rewritten one's, else the Expires header, else what was
    asked for."""
    granted = contacts.granted_expiry(resp.get_all("contact"), resp.get("expires"), requested, own_contact)
    return requested if granted is None else granted


@functools.lru_cache(maxsize=None)
def register_allow(family: str) -> str:
    """The Allow header of a REGISTER, from the corpus's sip-register-* entry for the family (the SIP 3.x one where
    the family has none: no source shows another's)."""
    found = conformance.select(area="sip", family=family, prefix="sip-register-") or [
        conformance.get("sip-register-soundpoint-sip3")]
    return sip.parse(found[0].body.encode()).get("allow") or ""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class SipRegistrations:
    @property
    def user_agent(self) -> str:
        """What this model on this firmware sends (rendered from the corpus's sip-ua-* entries)."""
        return user_agent.render(self.spec.model, self.spec.family, self.model["firmware"])

    def _server_prefix(self, x: int, y: int) -> str | None:
        """Whole-server precedence (confirmed in the guides): once reg.x.server.y.address is set, that server's
        reg.x.server.y.* values are used as a whole; voIpProt.server.y.* serves only a server without one."""
        if self.params.get(f"reg.{x}.server.{y}.address", "") != "":
            return f"reg.{x}.server.{y}."
        if self.params.get(f"voIpProt.server.{y}.address", "") != "":
            return f"voIpProt.server.{y}."
        return None

    def _server_param(self, x: int, y: int, attr: str) -> str | None:
        prefix = self._server_prefix(x, y)
        v = self.params.get(prefix + attr) if prefix else None
        return v if v not in (None, "") else None

    def _knows(self, name: str) -> bool:
        """Whether this phone's firmware family has the parameter (a firmware ignores what it does not know)."""
        return self.spec.profile.lookup(name) is not None

    def _outbound_proxy(self, x: int) -> tuple[str, int] | None:
        """The line's outbound proxy: reg.x.outboundProxy.* where the family has it, else the phone-wide
        voIpProt.SIP.outboundProxy.*; port 0 or empty means 5060. None: no proxy."""
        for prefix in (f"reg.{x}.outboundProxy.", "voIpProt.SIP.outboundProxy."):
            address = self.params.get(prefix + "address", "") if self._knows(prefix + "address") else ""
            if address:
                port = str(self.params.get(prefix + "port", "")).strip()
                return address, (int(port) if port.isdigit() and 0 < int(port) <= 65535 else 5060)
        return None

    def _uses_proxy(self, x: int, y: int) -> bool:
        """reg.x.server.y.useOutboundProxy (default 1) where the family has it; without it every server does."""
        name = f"reg.{x}.server.{y}.useOutboundProxy"
        return not (self._knows(name) and str(self.params.get(name, "1")).strip() == "0")

    async def _next_hop(self, srv: ServerBinding) -> tuple[str, int]:
        """Where a request for this server goes: its outbound proxy if it uses one, else the server itself
        (resolved; ResolveError when the name does not resolve). The Request-URI stays the server's."""
        if srv.proxy is None and srv.locate:
            return await self.resolver.locate(srv.address)
        host, port = srv.proxy or (srv.address, srv.port)
        return await self.resolver.resolve(host), port

    def _configure_registrations(self) -> None:
        self.regs = []
        profile = self.spec.profile
        for x in range(1, self.model["lines"] + 1):
            user = self.params.get(f"reg.{x}.address")
            if not user:
                continue
            reg = Registration(index=x, user=user.split("@")[0], auth_user=self.params.get(f"reg.{x}.auth.userId") or user.split("@")[0],
                               password=self.params.get(f"reg.{x}.auth.password", ""))
            proxy = self._outbound_proxy(x)
            for y in range(1, 10):
                address = self._server_param(x, y, "address")
                if not address:
                    continue
                retry_ms = int(self._server_param(x, y, "retryTimeOut") or 0)
                retry_count = int(self._server_param(x, y, "retryMaxCount") or 0) or 3
                timers = TransactionTimers(retry_timeout=retry_ms / 1000 if retry_ms else None, retry_max_count=retry_count)
                port = int(self._server_param(x, y, "port") or 0) or 5060
                transport = (self._server_param(x, y, "transport") or "DNSnaptr").strip().lower()
                locate = (transport in ("dnsnaptr", "null") and not int(self._server_param(x, y, "port") or 0)
                          and not _is_address(address))
                controls = profile.failover_controls
                if controls:   # UC Software 4.1.6+: registerRetry.* backoff and the failOver.* switches (defaults per guide)
                    base = float(self._server_param(x, y, "registerRetry.baseTimeOut") or 60)
                    retry = dict(retry_interval=base, backoff=True,
                                 retry_max=max(float(self._server_param(x, y, "registerRetry.maxTimeOut") or 60), base),
                                 re_register=(self._server_param(x, y, "failOver.reRegisterOn") or "0") == "1",
                                 only_signal_with_registered=(self._server_param(x, y, "failOver.onlySignalWithRegistered") or "1") == "1",
                                 fail_registration_on=(self._server_param(x, y, "failOver.failRegistrationOn") or "0") == "1")
                else:          # SIP 2.x/3.x, UC Software 4.0: a fixed interval no parameter sets
                    retry = dict(retry_interval=self.spec.fixed_retry, retry_max=self.spec.fixed_retry)
                reg.servers.append(ServerBinding(
                    reg=x, index=y, address=address, port=port,
                    register=(self._server_param(x, y, "register") or "1") != "0",
                    expires=int(self._server_param(x, y, "expires") or 3600),
                    overlap=int(self._server_param(x, y, "expires.overlap") or 60),
                    timers=timers, call_id=sip.new_call_id(self.spec.ip),
                    proxy=proxy if proxy and self._uses_proxy(x, y) else None, locate=locate, **retry))
            if reg.servers:
                reg.failback = self._failback_setting(x)
                self.regs.append(reg)

    def _failback_setting(self, x: int) -> Failback:
        """Server 1's failOver.failBack.mode and .timeout (the server failed back to; fleet.phoneconf.predict reads the same),
        where the family has them: without them, or with a value the firmware would not take, newRequests."""
        name = f"reg.{x}.server.1.failOver.failBack.mode"
        if not self._knows(name):
            return Failback()
        mode = self._server_param(x, 1, "failOver.failBack.mode") or "newRequests"
        timeout = str(self._server_param(x, 1, "failOver.failBack.timeout") or "3600").strip()
        return Failback(mode=mode if mode in FAILBACK_MODES else "newRequests",
                        timeout=int(timeout) if timeout.isdigit() else 3600)

    def _failback_wait(self, reg: Registration) -> float | None:
        """Seconds a fallback that just started working holds the primary (None: not by time, see Failback)."""
        fb = reg.failback
        if fb.mode == "duration":
            return float(fb.timeout) if fb.timeout > 0 else None
        if fb.mode == "DNSTTL":
            # the TTL of the working server's DNS answer; a server given as an address has none, so the TTL of the
            # primary's answer (the one fleet.phoneconf.predict asks the site's DNS for); none known: no hold
            working = next(s for s in reg.servers if s.index == reg.working)
            ttl = self.resolver.ttl_of(working.address)
            if ttl is None:
                ttl = self.resolver.ttl_of(reg.servers[0].address)
            return float(ttl) if ttl is not None else 0.0
        return None      # registration: at the working server's next renewal

    @staticmethod
    def _sends_register(srv: ServerBinding) -> bool:
        """R1, except on UC Software: a fallback server (y >= 2) gets a REGISTER only with failOver.reRegisterOn=1
        (default 0: the phone assumes the servers share registrations)."""
        return srv.register and (srv.index == 1 or srv.re_register)

    def _may_signal_via(self, srv: ServerBinding) -> bool:
        """Whether a new request (INVITE) may go through this server now. A server the phone registers with must be
        up. One it does not register with takes requests (R5, and UC Software's reRegisterOn=0, which assumes the
        servers share registrations), unless onlySignalWithRegistered=1 applies: the UC Software guides make it
        apply when reRegisterOn and failRegistrationOn are both 1 (our reading; uncertain in detail)."""
        if self._sends_register(srv):
            return srv.state == UP
        return not (srv.only_signal_with_registered and srv.re_register and srv.fail_registration_on)

    def _validations(self, msg: sip.SipMessage) -> list[tuple[int, str]]:
        """voIpProt.SIP.requestValidation.n.* entries that apply to this request: (n, method), method being
        source, digest, both or all ("both or all: apply both", SIP 1.4 guide 4.6.2.1.3.3, SIP 2.2 guide A-14,
        UC 4.1.6 guide). For SUBSCRIBE/NOTIFY, `.request.y.event` names the events validated (none: all)."""
        found = []
        event = (msg.get("event") or "").split(";")[0].strip().lower()
        for n in range(1, 21):
            method = self.params.get(f"voIpProt.SIP.requestValidation.{n}.method", "")
            request = self.params.get(f"voIpProt.SIP.requestValidation.{n}.request", "")
            if method not in VALIDATION_METHODS or request.upper() != (msg.method or "").upper():
                continue
            events = [self.params.get(f"voIpProt.SIP.requestValidation.{n}.request.{y}.event", "").strip().lower()
                      for y in range(1, 11)]
            events = [e for e in events if e]
            if events and msg.method in ("SUBSCRIBE", "NOTIFY") and event not in events:
                continue
            found.append((n, method))
        return found

    async def _from_configured_server(self, addr: tuple[str, int]) -> bool:
        """Whether `addr` is an address of one of the phone's configured registration servers, registered with
        or not ("a server belonging to the set of target registration servers", SIP 2.2 guide A-14), or of the
        outbound proxy that relays their requests (*unconfirmed*: the guides do not say)."""
        for reg in self.regs:
            for srv in reg.servers:
                for host in {srv.address, (srv.proxy or (srv.address, 0))[0]}:
                    try:
                        if await self.resolver.resolve(host) == addr[0]:
                            return True
                    except ResolveError:
                        continue
        return False

    async def _source_refusal(self, msg: sip.SipMessage, addr: tuple[str, int], entry: str) -> sip.SipMessage | None:
        """The conformance `entry`'s answer (400 Bad Request, what operators report for a refused INVITE) when a
        `source` validation applies and the request is not from a configured registration server; None: accepted."""
        for n, method in self._validations(msg):
            if method in ("source", "both", "all") and not await self._from_configured_server(addr):
                self._log(f"{msg.method} from {addr[0]} refused: not from a configured registration server "
                          f"(voIpProt.SIP.requestValidation.{n})")
                return sip_answers.answer(entry, msg, addr)   # the conformance entry's answer (400 Bad Request)
        return None

    async def _late_fallback(self, reg: Registration) -> None:
        """Lab fault `late-failover`: a fallback server gets a REGISTER only once the primary has been down for
        `late_failover_s` (a firmware that keeps no standby registration and is slow to fall back). What the wire
        shows of it is real: the fallback's REGISTER comes late."""
        down_since: float | None = None
        while True:
            if reg.servers[0].state == UP:
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since >= self.spec.late_failover_s:
                return
            await asyncio.sleep(0.2)

    async def _server_loop(self, reg: Registration, srv: ServerBinding) -> None:
        fb = reg.failback
        primary = srv is reg.servers[0]
        while True:
            if not primary and self.spec.fault == "late-failover":
                await self._late_fallback(reg)
            if fb.follows:
                if primary:
                    await self._hold_primary(fb)
                elif srv.index == reg.working:
                    fb.renewal()
            if self._on_failure_fallback(srv):
                await self._stand_by(reg, srv)
            ok = await self._register_once(reg, srv)
            if ok:
                srv.failures = 0
                # the guides' overlap rule (soundpoint.timing): overlap s before the granted expiry, or at half
                # of it when the grant itself is below the overlap
                delay = refresh_interval(srv.granted, srv.overlap)
            else:
                srv.failures += 1
                delay = srv.next_retry()
            reg.standby_wake.set()      # a fallback standing by looks at the servers before it again
            due = time.monotonic() + max(delay, 0.1)
            if fb.follows and primary:
                # a registration-mode renewal may end a hold while the primary waits to retry: try it then
                if await self._wait_for_wake(fb, max(delay, 0.1)):
                    continue
            else:
                await asyncio.sleep(max(delay, 0.1))
            self.lateness.append(time.monotonic() - due)
            if len(self.lateness) > 1000:
                del self.lateness[:500]

    def _on_failure_fallback(self, srv: ServerBinding) -> bool:
        """Whether this server is a fallback that, on this phone, registers only once the servers before it failed:
        the "on-failure" reading of failOver.reRegisterOn=1 (lab option failover_behaviour), on a family that has
        the switch. The other reading ("concurrent", TB 5844, the default) registers with it from boot."""
        return (self.spec.failover_behaviour == "on-failure" and self.spec.profile.failover_controls
                and srv.index > 1 and self._sends_register(srv))

    @staticmethod
    def _standing_by(reg: Registration, srv: ServerBinding) -> bool:
        """A server before this one registers and has not failed (its last attempt succeeded, or none was made)."""
        return any(s.failures == 0 and s.register and (s.index == 1 or s.re_register)
                   for s in reg.servers if s.index < srv.index)

    async def _stand_by(self, reg: Registration, srv: ServerBinding) -> None:
        """On-failure reading: send this fallback nothing while a server before it works. A registration it holds
        from a failover is no longer refreshed once the primary is back (it lapses at the registrar: our reading,
        the guides say nothing of it); the phone's own view of it goes down without a report."""
        while self._standing_by(reg, srv):
            if srv.state == UP:
                self._set_server_state(reg, srv, DOWN, reason="standby", quiet=True)
            reg.standby_wake.clear()
            await reg.standby_wake.wait()

    @staticmethod
    async def _wait_for_wake(fb: Failback, timeout: float | None) -> bool:
        """Wait `timeout` s (None: without end) or until fb.wake is set; True when woken."""
        fb.wake.clear()
        try:
            await asyncio.wait_for(fb.wake.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _hold_primary(self, fb: Failback) -> None:
        """Send the primary nothing while its failback mode holds it (Failback)."""
        while fb.holding(time.monotonic()):
            left = fb.due_at - time.monotonic() if fb.due_at is not None else None
            await self._wait_for_wake(fb, max(left, 0.0) if left is not None else None)

    async def _register_once(self, reg: Registration, srv: ServerBinding) -> bool:
        if srv.index == 1 and ("wrong-server" in (self.spec.fault, self._boot_fault) or self._boot_fault == "bad-boot-once"):
            self._set_server_state(reg, srv, DOWN, reason="disabled")
            return False
        try:
            hop = await self._next_hop(srv)
        except ResolveError as exc:
            self._set_server_state(reg, srv, DOWN, reason="dns")
            self._log(f"reg.{reg.index}.server.{srv.index}: {exc}")
            return False
        domain = srv.address
        uri = f"sip:{domain}" + (f":{srv.port}" if srv.port != 5060 else "")
        aor = f"sip:{reg.user}@{domain}"
        tag = sip.new_tag()
        extra = [("Expires", str(srv.expires)), ("Allow", register_allow(self.spec.family))]
        contact = f"<sip:{reg.user}@{self.spec.ip}:{self.spec.sip_port}>"

        def build(auth: tuple[str, str] | None) -> sip.SipMessage:
            srv.cseq += 1
            self.register_count += 1
            return sip.make_request("REGISTER", uri, local=self.endpoint.local, from_uri=aor, to_uri=aor,  # type: ignore[union-attr]
                                    call_id=srv.call_id, cseq=srv.cseq, from_tag=tag, contact=contact,
                                    extra=extra + ([auth] if auth else []),
                                    user_agent=self.user_agent)
        self.truth.register_sent(self.mac, reg.index, srv.index)
        try:
            # through an outbound proxy that gets no answer upstream, the phone's own transaction timeout decides
            # (retryTimeOut x (retryMaxCount + 1)); the proxy's 408 comes later and is dropped as unmatched
            _, resp = await self._authenticated(build, hop, srv.timers, reg, "REGISTER", uri)
        except TransactionTimeout:
            self._set_server_state(reg, srv, DOWN, reason="timeout")
            return False
        except sip.SipParseError as exc:
            self._set_server_state(reg, srv, DOWN, reason="bad-challenge")
            self._log(f"reg.{reg.index}.server.{srv.index}: {exc}")
            return False
        if resp is None or resp.status != 200:
            self._set_server_state(reg, srv, DOWN, reason=f"status-{resp.status if resp else 'none'}")
            return False
        srv.granted = granted_expiry(resp, srv.expires, contact.strip("<>"))
        self._set_server_state(reg, srv, UP, expires=srv.granted)
        return True

    async def _authenticated(self, build, dest: tuple[str, int], timers: TransactionTimers, reg: Registration,
                             method: str, uri: str, on_challenge=None) -> tuple[sip.SipMessage, sip.SipMessage]:
        """Send `build(auth_header)`; answer one 401/407 digest challenge. Returns (last request, final response)."""
        auth_header: tuple[str, str] | None = None
        while True:
            req = build(auth_header)
            resp = await self.endpoint.request(req, dest, timers)  # type: ignore[union-attr]
            if resp.status not in (401, 407) or auth_header is not None:
                return req, resp
            if on_challenge:
                on_challenge(req, resp)
            hname = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            challenge = digest.parse_challenge(resp.get(hname) or "")
            auth_header = ("Authorization" if resp.status == 401 else "Proxy-Authorization",
                           digest.authorization(challenge, username=reg.auth_user, password=reg.password, method=method, uri=uri))

    def _set_server_state(self, reg: Registration, srv: ServerBinding, state: str, *, reason: str = "",
                          expires: int | None = None, quiet: bool = False) -> None:
        changed = srv.state != state
        srv.state = state
        if not quiet and (changed or state == UP):
            self._report_registration(reg, srv, state == UP, expires, reason)
        if changed:
            self.truth.record(self.mac, "server_state", reg=reg.index, server=srv.index, state=state, reason=reason)
        self._update_working(reg)

    def _update_working(self, reg: Registration) -> None:
        """R4: the working server is the highest-priority server whose registration is up."""
        working = next((s.index for s in reg.servers if self._sends_register(s) and s.state == UP), None)
        if working != reg.working:
            was_registered = reg.working is not None
            was = reg.working
            reg.working = working
            self._follow_failback(reg, was)
            self.truth.record(self.mac, "working_server", reg=reg.index, server=working)
            cur = self.truth.current[self.mac]
            cur.setdefault("working_server", {})[str(reg.index)] = working
            cur.setdefault("servers", {})[str(reg.index)] = {str(s.index): s.state for s in reg.servers}
            if working is not None and not was_registered:
                self._spawn(self._send_line_events("LineRegistrationEvent", only=reg.index))
            primary = reg.servers[0]
            if working == primary.index and self._sends_register(primary) and not reg.subscribed_to_primary:
                self._spawn(self._subscribe(reg, primary))
            if working != primary.index:
                reg.subscribed_to_primary = False
        else:
            cur = self.truth.current[self.mac]
            cur.setdefault("servers", {})[str(reg.index)] = {str(s.index): s.state for s in reg.servers}

    def _follow_failback(self, reg: Registration, was: int | None) -> None:
        """The working server changed from `was`: start or end the primary's hold (Failback; newRequests: none)."""
        fb = reg.failback
        if not fb.follows:
            return
        primary = reg.servers[0].index
        if reg.working == primary:
            fb.after_failover = False
            fb.end_hold(wake=False)     # the primary just registered: its loop waits for its refresh
            return
        if was == primary:
            fb.after_failover = True
        if reg.working is None:
            fb.end_hold()          # a failover on the working fallback: the primary is retried as usual
        elif fb.after_failover:
            fb.start_hold(time.monotonic(), self._failback_wait(reg))
