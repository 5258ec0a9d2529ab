"""A virtual SoundPoint IP phone: boot from a boot server, register per R1-R5, report like the real one.

One asyncio object per phone; thousands share a process. Every interface is a
network one (SIP/UDP on the phone's own 127.x address, HTTP for state polling
and REST, syslog and telephone notification events pushed out, provisioning
over HTTP or FTP), so the controller cannot tell it from hardware.
"""
from __future__ import annotations

import asyncio
import base64
import ftplib
import logging
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, unquote

import aiohttp
from aiohttp import web

from sipwire import digest
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimeout, TransactionTimers

from . import phone_reports as reports
from .config_files import ConfigFileError, merge_first_wins, parse_master, parse_parameters
from .groundtruth import GroundTruth
from .resolver import ResolveError, Resolver

log = logging.getLogger(__name__)

# Models and what they offer. SoundPoint (SIP 2.x-4.x): no REST. VVX (UC Software 5+): REST.
MODELS = {
    "SoundPoint IP 650": {"rest": False, "firmware": "3.1.8.0070", "lines": 6},
    "SoundPoint IP 550": {"rest": False, "firmware": "3.1.8.0070", "lines": 4},
    "SoundPoint IP 331": {"rest": False, "firmware": "3.1.8.0070", "lines": 2},
    "VVX 410": {"rest": True, "firmware": "5.9.7.3480", "lines": 12},
}

UP, DOWN, OFF = "registered", "unregistered", "not-registering"
# lab faults, taking effect at a phone's next boot: it never comes back; it ignores server 1; it ignores server 1 once
FAULTS = ("never-return", "wrong-server", "bad-boot-once")


@dataclass
class PhoneSpec:
    mac: str
    model: str
    ip: str
    boot_url: str                       # http://user:pass@host:port/dir/ or ftp://...
    sip_port: int = 5060
    http_port: int = 8080
    dns: tuple[str, int] | None = None
    admin_user: str = "Polycom"
    admin_password: str = "456"
    boot_time: float = 2.0
    boot_jitter: float = 1.0
    http_latency: float = 0.0
    # lab faults: a phone that never comes back after a reboot, or that ignores server 1 after reboot
    fault: str | None = None


@dataclass
class ServerBinding:
    reg: int
    index: int
    address: str
    port: int
    register: bool
    expires: int
    overlap: int
    timers: TransactionTimers
    retry_interval: float
    state: str = DOWN
    call_id: str = ""
    cseq: int = 0
    granted: int = 0
    task: asyncio.Task | None = None
    last_refresh_due: float | None = None


@dataclass
class Registration:
    index: int
    user: str
    auth_user: str
    password: str
    servers: list[ServerBinding] = field(default_factory=list)
    working: int | None = None
    subscribed_to_primary: bool = False


def _basic(parts) -> dict[str, str]:
    """Basic auth header from the credentials in a boot server URL (none when the URL has none)."""
    if not parts.username:
        return {}
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class VirtualPhone:
    def __init__(self, spec: PhoneSpec, truth: GroundTruth, http_session: aiohttp.ClientSession | None = None) -> None:
        self.spec = spec
        self.mac = spec.mac.lower()
        self.truth = truth
        self.model = MODELS[spec.model]
        self.params: dict[str, str] = {}
        self.regs: list[Registration] = []
        self.endpoint: SipEndpoint | None = None
        self.resolver = Resolver(spec.dns, spec.ip)
        self.http_runner: web.AppRunner | None = None
        self._session = http_session
        self._own_session = http_session is None
        self._events_session: aiohttp.ClientSession | None = None   # bound to the phone's own address
        self._tasks: set[asyncio.Task] = set()
        self.booted = asyncio.Event()
        self.booted_at = time.monotonic()
        self.boot_count = 0
        self.in_call = False
        self.log_lines: list[str] = []
        self.boot_errors: list[str] = []
        self.lateness: list[float] = []   # seconds each refresh was sent after it was due
        self.register_count = 0
        self._rebooting = False
        self._boot_fault: str | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, http: bool = True) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.endpoint = await SipEndpoint.bind(self.spec.ip, self.spec.sip_port, self._on_sip_request, name=self.mac)
        if http:
            await self._start_http()
        self._spawn(self._boot(first=True))

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._stop_registrations()
        if self.endpoint:
            self.endpoint.close()
        if self.http_runner:
            await self.http_runner.cleanup()
        if self._own_session and self._session:
            await self._session.close()
        if self._events_session:
            await self._events_session.close()
            self._events_session = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_registrations(self) -> None:
        for reg in self.regs:
            for srv in reg.servers:
                if srv.task:
                    srv.task.cancel()

    async def reboot(self, reason: str) -> None:
        if self._rebooting:
            return
        self._rebooting = True
        self.truth.record(self.mac, "reboot", reason=reason)
        self.truth.record(self.mac, "unavailable")
        await self._send_line_events("LineUnregistrationEvent")
        self._stop_registrations()
        for reg in self.regs:
            # all of a registration's servers go at once: the ground truth shows one step to "no working server"
            for srv in reg.servers:
                if srv.state != (OFF if not srv.register else DOWN):
                    srv.state = OFF if not srv.register else DOWN
                    self.truth.record(self.mac, "server_state", reg=reg.index, server=srv.index, state=srv.state, reason="reboot")
            self._update_working(reg)
        self.booted.clear()
        self.resolver.forget()
        self._spawn(self._boot(first=False))

    async def _boot(self, first: bool) -> None:
        try:
            await asyncio.sleep(self.spec.boot_time if not first else random.uniform(0, self.spec.boot_jitter))
            if self.spec.fault == "never-return" and not first:
                self.truth.record(self.mac, "dead")
                return
            # lab faults that strike at a boot: this boot ignores server 1 ("bad-boot-once": the next one is fine)
            self._boot_fault = self.spec.fault if not first else None
            if self.spec.fault == "bad-boot-once" and not first:
                self.spec.fault = None
            self.boot_count += 1
            self.boot_errors = []
            params = await self._provision()
            self.params = params
            self.truth.record(self.mac, "boot", count=self.boot_count, errors=list(self.boot_errors))
            self.truth.current[self.mac].update(model=self.spec.model, ip=self.spec.ip, boot_count=self.boot_count)
            self._configure_registrations()
            self.booted_at = time.monotonic()
            self.booted.set()
            self.truth.record(self.mac, "available")
            for reg in self.regs:
                for srv in reg.servers:
                    if srv.register:
                        srv.task = self._spawn(self._server_loop(reg, srv))
                    else:
                        self._set_server_state(reg, srv, OFF, quiet=True)
            self._spawn(self._log_upload_loop())
        finally:
            self._rebooting = False

    # ---------------------------------------------------------------- provisioning
    async def _fetch(self, name: str) -> bytes | None:
        target = name if "://" in name else self.spec.boot_url.rstrip("/") + "/" + name
        parts = urlsplit(target)
        try:
            if parts.scheme in ("http", "https"):
                clean = f"{parts.scheme}://{parts.hostname}:{parts.port or 80}{parts.path}"
                async with self._session.get(clean, headers=_basic(parts)) as resp:  # type: ignore[union-attr]
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        self.boot_errors.append(f"{name}: HTTP {resp.status}")
                        return None
                    return await resp.read()
            if parts.scheme == "ftp":
                return await asyncio.to_thread(self._ftp_get, parts)
            self.boot_errors.append(f"{name}: unsupported protocol {parts.scheme}")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ftplib.Error) as exc:
            self.boot_errors.append(f"{name}: {type(exc).__name__}")
        return None

    def _ftp_get(self, parts) -> bytes | None:
        chunks: list[bytes] = []
        with ftplib.FTP(timeout=5) as ftp:
            ftp.connect(parts.hostname, parts.port or 21, source_address=(self.spec.ip, 0))
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))
            try:
                ftp.retrbinary(f"RETR {parts.path}", chunks.append)
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):
                    return None
                raise
        return b"".join(chunks)

    async def _provision(self) -> dict[str, str]:
        master_name, data = f"{self.mac}.cfg", await self._fetch(f"{self.mac}.cfg")
        if data is None:
            master_name, data = "000000000000.cfg", await self._fetch("000000000000.cfg")
        if data is None:
            self.boot_errors.append("no master configuration file")
            return dict(self.params)  # keep running with what it had, as a real phone does
        try:
            master = parse_master(master_name, data)
        except ConfigFileError as exc:
            self.boot_errors.append(str(exc))
            return dict(self.params)
        layers = []
        for name in master.config_files:
            body = await self._fetch(name)
            if body is None:
                self.boot_errors.append(f"{name}: not found")
                continue
            try:
                layers.append(parse_parameters(name, body))
            except ConfigFileError as exc:
                self.boot_errors.append(str(exc))
        return merge_first_wins(layers)

    async def _log_upload_loop(self) -> None:
        interval = float(self.params.get("log.upload.period", "60") or 60)
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            body = ("\n".join(self.log_lines[-500:]) + "\n").encode()
            parts = urlsplit(self.spec.boot_url)
            name = f"{self.mac}-app.log"
            try:
                if parts.scheme == "http":
                    url = f"http://{parts.hostname}:{parts.port or 80}{parts.path.rstrip('/')}/{name}"
                    async with self._session.put(url, data=body, headers=_basic(parts)):  # type: ignore[union-attr]
                        pass
                elif parts.scheme == "ftp":
                    await asyncio.to_thread(self._ftp_put, parts, name, body)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ftplib.Error) as exc:
                self._log(f"log upload failed: {type(exc).__name__}")

    def _ftp_put(self, parts, name: str, body: bytes) -> None:
        import io
        with ftplib.FTP(timeout=5) as ftp:
            ftp.connect(parts.hostname, parts.port or 21, source_address=(self.spec.ip, 0))
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))
            ftp.storbinary(f"STOR {parts.path.rstrip('/')}/{name}", io.BytesIO(body))

    # ---------------------------------------------------------------- configuration
    def _server_param(self, x: int, y: int, attr: str) -> str | None:
        """reg.x.server.y.* overrides voIpProt.server.y.* (confirmed precedence)."""
        v = self.params.get(f"reg.{x}.server.{y}.{attr}")
        if v in (None, ""):
            v = self.params.get(f"voIpProt.server.{y}.{attr}")
        return v if v not in (None, "") else None

    def _configure_registrations(self) -> None:
        self.regs = []
        for x in range(1, self.model["lines"] + 1):
            user = self.params.get(f"reg.{x}.address")
            if not user:
                continue
            reg = Registration(index=x, user=user.split("@")[0], auth_user=self.params.get(f"reg.{x}.auth.userId") or user.split("@")[0],
                               password=self.params.get(f"reg.{x}.auth.password", ""))
            for y in range(1, 10):
                address = self._server_param(x, y, "address")
                if not address:
                    continue
                retry_ms = int(self._server_param(x, y, "retryTimeOut") or 0)
                retry_count = int(self._server_param(x, y, "retryMaxCount") or 0) or 3
                timers = TransactionTimers(retry_timeout=retry_ms / 1000 if retry_ms else None, retry_max_count=retry_count)
                port = int(self._server_param(x, y, "port") or 0) or 5060
                reg.servers.append(ServerBinding(
                    reg=x, index=y, address=address, port=port,
                    register=(self._server_param(x, y, "register") or "1") != "0",
                    expires=int(self._server_param(x, y, "expires") or 3600),
                    overlap=int(self._server_param(x, y, "expires.overlap") or 60),
                    timers=timers,
                    retry_interval=float(self._server_param(x, y, "registerRetry.baseTimeOut") or 60),
                    call_id=sip.new_call_id(self.spec.ip)))
            if reg.servers:
                self.regs.append(reg)

    # ---------------------------------------------------------------- registration (R1, R3, R4)
    async def _server_loop(self, reg: Registration, srv: ServerBinding) -> None:
        while True:
            ok = await self._register_once(reg, srv)
            if ok:
                # Refresh `overlap` s before the granted expiry, or at half of it if that is sooner.
                delay = srv.granted - srv.overlap if srv.granted / 2 >= srv.overlap else srv.granted / 2
            else:
                delay = srv.retry_interval
            due = time.monotonic() + max(delay, 0.1)
            await asyncio.sleep(max(delay, 0.1))
            self.lateness.append(time.monotonic() - due)
            if len(self.lateness) > 1000:
                del self.lateness[:500]

    async def _register_once(self, reg: Registration, srv: ServerBinding) -> bool:
        if srv.index == 1 and ("wrong-server" in (self.spec.fault, self._boot_fault) or self._boot_fault == "bad-boot-once"):
            self._set_server_state(reg, srv, DOWN, reason="disabled")
            return False
        try:
            ip = await self.resolver.resolve(srv.address)
        except ResolveError as exc:
            self._set_server_state(reg, srv, DOWN, reason="dns")
            self._log(f"reg.{reg.index}.server.{srv.index}: {exc}")
            return False
        domain = srv.address
        uri = f"sip:{domain}" + (f":{srv.port}" if srv.port != 5060 else "")
        aor = f"sip:{reg.user}@{domain}"
        tag = sip.new_tag()
        extra = [("Expires", str(srv.expires)), ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, SUBSCRIBE")]
        contact = f"<sip:{reg.user}@{self.spec.ip}:{self.spec.sip_port}>"

        def build(auth: tuple[str, str] | None) -> sip.SipMessage:
            srv.cseq += 1
            self.register_count += 1
            return sip.make_request("REGISTER", uri, local=self.endpoint.local, from_uri=aor, to_uri=aor,  # type: ignore[union-attr]
                                    call_id=srv.call_id, cseq=srv.cseq, from_tag=tag, contact=contact,
                                    extra=extra + ([auth] if auth else []),
                                    user_agent=f"PolycomSoundPointIP-SPIP_650-UA/{self.model['firmware']}")
        try:
            _, resp = await self._authenticated(build, (ip, srv.port), srv.timers, reg, "REGISTER", uri)
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
        srv.granted = self._granted_expiry(resp, srv.expires)
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

    @staticmethod
    def _granted_expiry(resp: sip.SipMessage, requested: int) -> int:
        for contact in resp.get_all("contact"):
            value = sip.header_params(contact).get("expires")
            if value and value.isdigit():
                return int(value)
        hdr = resp.get("expires")
        return int(hdr) if hdr and hdr.isdigit() else requested

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
        working = next((s.index for s in reg.servers if s.register and s.state == UP), None)
        if working != reg.working:
            was_registered = reg.working is not None
            reg.working = working
            self.truth.record(self.mac, "working_server", reg=reg.index, server=working)
            cur = self.truth.current[self.mac]
            cur.setdefault("working_server", {})[str(reg.index)] = working
            cur.setdefault("servers", {})[str(reg.index)] = {str(s.index): s.state for s in reg.servers}
            if working is not None and not was_registered:
                self._spawn(self._send_line_events("LineRegistrationEvent", only=reg.index))
            primary = reg.servers[0]
            if working == primary.index and primary.register and not reg.subscribed_to_primary:
                self._spawn(self._subscribe(reg, primary))
            if working != primary.index:
                reg.subscribed_to_primary = False
        else:
            cur = self.truth.current[self.mac]
            cur.setdefault("servers", {})[str(reg.index)] = {str(s.index): s.state for s in reg.servers}

    # ---------------------------------------------------------------- SUBSCRIBE (R2)
    async def _subscribe(self, reg: Registration, srv: ServerBinding) -> None:
        """message-summary subscription, with server 1 only."""
        reg.subscribed_to_primary = True
        try:
            ip = await self.resolver.resolve(srv.address)
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
                (ip, srv.port), srv.timers, reg, "SUBSCRIBE", uri)
        except (TransactionTimeout, ResolveError, sip.SipParseError):
            reg.subscribed_to_primary = False

    # ---------------------------------------------------------------- calls (R5)
    async def place_call(self, number: str, reg_index: int = 1, hold: float = 0.5) -> dict:
        """INVITE through the servers in priority order, skipping registered-type servers that are down."""
        reg = next((r for r in self.regs if r.index == reg_index), None)
        if reg is None:
            return {"ok": False, "reason": f"no registration {reg_index}"}
        attempts = []
        for srv in reg.servers:
            if srv.register and srv.state != UP:
                continue
            try:
                ip = await self.resolver.resolve(srv.address)
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
                    (ip, srv.port), srv.timers, reg, "INVITE", uri,
                    on_challenge=lambda rq, rs: self._ack(rq, rs, ip, srv.port))
            except (TransactionTimeout, sip.SipParseError):
                attempts.append({"server": srv.index, "result": "timeout"})
                continue
            self._ack(req, resp, ip, srv.port)
            attempts.append({"server": srv.index, "result": resp.status})
            self._report_call(number, srv, resp.status)
            if resp.status == 200:
                self.truth.record(self.mac, "call", server=srv.index, number=number)
                self.in_call = True
                await asyncio.sleep(hold)
                to_tag = sip.header_params(resp.get("to") or "").get("tag")
                bye = sip.make_request("BYE", uri, local=self.endpoint.local, from_uri=from_uri, to_uri=uri,  # type: ignore[union-attr]
                                       call_id=call_id, cseq=req.cseq[0] + 1, from_tag=tag, to_tag=to_tag)
                try:
                    await self.endpoint.request(bye, (ip, srv.port), srv.timers)  # type: ignore[union-attr]
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

    # ---------------------------------------------------------------- incoming SIP
    async def _on_sip_request(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        if msg.method == "NOTIFY" and (msg.get("event") or "").lower().startswith("check-sync"):
            self._log(f"check-sync NOTIFY from {addr[0]}")
            self._spawn(self._check_sync())
            return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr)
        if msg.method == "OPTIONS":
            return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr)
        if msg.method in ("ACK",):
            return None
        if msg.method == "INVITE":
            return sip.make_response(msg, 486, "Busy Here", to_tag=sip.new_tag(), received=addr)
        if msg.method in ("BYE", "NOTIFY"):
            return sip.make_response(msg, 200, "OK", received=addr)
        return sip.make_response(msg, 405, "Method Not Allowed", received=addr)

    async def _check_sync(self) -> None:
        """Reboot when alwaysReboot=1; otherwise, outside a call, only when the files changed (our model of the
        uncertain rule)."""
        if self.params.get("voIpProt.SIP.specialEvent.checkSync.alwaysReboot", "0") == "1":
            await self.reboot("check-sync")
        elif not self.in_call and await self._provision() != self.params:
            await self.reboot("check-sync (configuration changed)")

    # ---------------------------------------------------------------- reports
    def _log(self, text: str) -> None:
        self.log_lines.append(f"{time.strftime('%m%d%H%M%S')}|{text}")
        if len(self.log_lines) > 1000:
            del self.log_lines[:500]

    def _syslog_target(self) -> tuple[str, int] | None:
        server = self.params.get("device.syslog.serverName")
        if not server:
            return None
        host, _, port = server.partition(":")
        return host, int(port or self.params.get("device.syslog.serverPort", "514") or 514)

    def _send_udp(self, payload: bytes, target: tuple[str, int]) -> None:
        if self.endpoint and self.endpoint.transport:
            # syslog leaves from the phone's own address, like every other packet of the phone
            self.endpoint.transport.sendto(payload, target)

    def _report_registration(self, reg: Registration, srv: ServerBinding, ok: bool, expires: int | None, reason: str) -> None:
        self._log(f"reg.{reg.index}.server.{srv.index} {srv.address} {'registered' if ok else 'failed ' + reason}")
        target = self._syslog_target()
        if target:
            self._send_udp(reports.syslog_registration(self.mac, self.spec.ip, reg.index, srv.index,
                                                       f"{srv.address}:{srv.port}", ok, expires, reason), target)

    def _report_call(self, number: str, srv: ServerBinding, status: int) -> None:
        target = self._syslog_target()
        if target:
            self._send_udp(reports.syslog_call(self.mac, self.spec.ip, number, srv.index, f"{srv.address}:{srv.port}", status), target)

    def _events(self) -> aiohttp.ClientSession:
        """Events leave from the phone's own address, as a real phone's do (collectors drop other sources)."""
        if self._events_session is None or self._events_session.closed:
            self._events_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5),
                connector=aiohttp.TCPConnector(local_addr=(self.spec.ip, 0), limit=2))
        return self._events_session

    async def _send_line_events(self, kind: str, only: int | None = None) -> None:
        url = self.params.get("apps.telNotification.URL")
        if not url or self.params.get("apps.telNotification.lineRegistrationEvent", "1") == "0":
            return
        for reg in self.regs:
            if only is not None and reg.index != only:
                continue
            try:
                async with self._events().post(url, data=reports.line_event(kind, self.mac, self.spec.ip, reg.index),
                                              headers={"Content-Type": "application/xml"}):
                    pass
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                self._log(f"telephone notification to {url} failed")

    # ---------------------------------------------------------------- HTTP: state polling and REST
    async def _start_http(self) -> None:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/polling/deviceHandler", self._h_poll_device)
        app.router.add_get("/polling/callStateHandler", self._h_poll_calls)
        if self.model["rest"]:
            app.router.add_get("/api/v1/mgmt/device/info", self._h_device_info)
            app.router.add_get("/api/v1/mgmt/lineInfo", self._h_line_info)
            app.router.add_get("/api/v2/mgmt/lineInfo", self._h_line_info)
            app.router.add_post("/api/v1/mgmt/safeRestart", self._h_restart)
            app.router.add_post("/api/v1/mgmt/safeReboot", self._h_restart)
            app.router.add_post("/api/v1/mgmt/config/set", self._h_config_set)
            app.router.add_post("/api/v1/mgmt/config/get", self._h_config_get)
            app.router.add_get("/api/v2/webCallControl/callStatus", self._h_call_status)
            app.router.add_post("/api/v1/callctrl/dial", self._h_dial)
        self.http_runner = web.AppRunner(app, access_log=None)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, self.spec.ip, self.spec.http_port, reuse_address=True)
        await site.start()

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler):
        if not self.booted.is_set():
            return web.Response(status=503, text="booting")
        if self.spec.http_latency:
            await asyncio.sleep(self.spec.http_latency)
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                auth = aiohttp.BasicAuth.decode(header)
                if auth.login == self.spec.admin_user and auth.password == self.spec.admin_password:
                    return await handler(request)
            except ValueError:
                pass
        elif header.startswith("Digest "):
            user = digest.verify(header, method=request.method,
                                 password_for=lambda u, r: self.spec.admin_password if u == self.spec.admin_user else None)
            if user:
                return await handler(request)
        nonce = f"{random.getrandbits(64):016x}"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Digest realm="PolycomSPIP", nonce="{nonce}", qop="auth"'})

    def _lines(self) -> dict[int, str]:
        return {r.index: r.user for r in self.regs}

    async def _h_poll_device(self, request: web.Request) -> web.Response:
        return web.Response(body=reports.polling_device(self.mac.upper(), self.spec.model, self.model["firmware"], self._lines()),
                            content_type="application/xml")

    async def _h_poll_calls(self, request: web.Request) -> web.Response:
        return web.Response(body=reports.polling_call_state({r.index: (r.user, self.in_call) for r in self.regs}),
                            content_type="application/xml")

    async def _h_device_info(self, request: web.Request) -> web.Response:
        return web.json_response(reports.rest_ok({"ModelNumber": self.spec.model, "MACAddress": self.mac,
                                                  "FirmwareRelease": self.model["firmware"], "IPV4Address": self.spec.ip,
                                                  "UpTimeSinceLastReboot": reports.uptime_text(time.monotonic() - self.booted_at)}))

    async def _h_line_info(self, request: web.Request) -> web.Response:
        data = []
        for r in self.regs:
            working = next((s for s in r.servers if s.index == r.working), None)
            data.append({"LineNumber": str(r.index), "RegistrationStatus": "registered" if working else "unregistered",
                         "UserID": r.user, "Label": r.user, "LineType": "private", "SIPAddress": f"{r.user}@{r.servers[0].address}",
                         "ProxyAddress": working.address if working else "", "Port": str(working.port if working else 0),
                         "Protocol": "SIP"})
        return web.json_response(reports.rest_ok(data))

    async def _h_restart(self, request: web.Request) -> web.Response:
        self._spawn(self.reboot("rest"))
        return web.json_response(reports.rest_ok({}))

    async def _h_config_set(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            values = body["data"]
            if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(reports.rest_error("4000"), status=400)
        self.params.update({k: str(v) for k, v in values.items()})
        return web.json_response(reports.rest_ok({}))

    async def _h_config_get(self, request: web.Request) -> web.Response:
        try:
            names = (await request.json())["data"]
            if not isinstance(names, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(reports.rest_error("4000"), status=400)
        return web.json_response(reports.rest_ok({str(n): self.params.get(str(n), "") for n in names}))

    async def _h_call_status(self, request: web.Request) -> web.Response:
        return web.json_response(reports.rest_ok({"CallState": "Connected" if self.in_call else "Idle"}))

    async def _h_dial(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            dest = str(body["data"]["Dest"])
            line = int(body["data"].get("Line", 1))
        except (ValueError, KeyError, TypeError):
            return web.json_response(reports.rest_error("4000"), status=400)
        self._spawn(self.place_call(dest, line))
        return web.json_response(reports.rest_ok({}))

    # ---------------------------------------------------------------- lab view
    def summary(self) -> dict:
        return {"mac": self.mac, "model": self.spec.model, "ip": self.spec.ip, "booted": self.booted.is_set(),
                "boot_count": self.boot_count, "boot_errors": self.boot_errors,
                "registrations": [{"index": r.index, "user": r.user, "working_server": r.working,
                                   "servers": [{"index": s.index, "address": s.address, "register": s.register,
                                                "state": s.state} for s in r.servers]} for r in self.regs]}
