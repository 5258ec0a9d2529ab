"""A virtual SoundPoint IP phone: boot from a boot server, register per R1-R5, report like the real one.

One asyncio object per phone; thousands share a process. Every interface is a
network one (SIP/UDP on the phone's own 127.x address, HTTP for state polling
and REST, syslog and telephone notification events pushed out, provisioning
over HTTP or FTP), so the controller cannot tell it from hardware.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
from aiohttp import web

from sipwire.endpoint import SipEndpoint

from .groundtruth import GroundTruth
from .resolver import Resolver
from .http_mux import SharedHttpListener
from .sip_mux import SharedSipSocket, bind_endpoint

from .phone_boot import Provisioning
from .phone_calls import Dialogs
from .phone_inbound import InboundCalls
from .phone_events import Reporting
from .phone_power import Power
from .phone_sip import SipRegistrations
from .phone_types import DOWN, OFF, PhoneSpec, Registration, model_info
from .phone_web import WebApi

log = logging.getLogger(__name__)


class VirtualPhone(Power, Provisioning, SipRegistrations, Dialogs, InboundCalls, Reporting, WebApi):

    def __init__(self, spec: PhoneSpec, truth: GroundTruth, http_session: aiohttp.ClientSession | None = None,
                 sip_socket: SharedSipSocket | None = None, http_listener: SharedHttpListener | None = None) -> None:
        self.spec = spec
        self.sip_socket = sip_socket       # the process's shared SIP socket (hil.sip_mux), None: one of its own
        self.http_listener = http_listener   # the process's shared HTTP listener (hil.http_mux), None: its own
        self.mac = spec.mac.lower()
        self.truth = truth
        self.model = model_info(spec.model, spec.family, spec.firmware_version)
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
        self.hang_up = asyncio.Event()     # set to end the call place_call holds (the lab's /hang-up)
        self.log_lines: list[str] = []
        self.boot_errors: list[str] = []
        self.lateness: list[float] = []   # seconds each refresh was sent after it was due
        self.register_count = 0
        self._rebooting = False
        self._boot_fault: str | None = None

    async def start(self, http: bool = True) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._http = http
        self.endpoint = await bind_endpoint(self.sip_socket, self.spec.ip, self.spec.sip_port,
                                            self._on_sip_request_powered, self.mac)
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
        if self.http_listener is not None:
            self.http_listener.detach(self.spec.ip)
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
        # no REGISTER leaves a phone that is shutting down, and its lines read as down (REST lineInfo) from the
        # moment its ground truth says so: both before the shutdown event is sent (its POST takes a round trip,
        # in which a refresh loop would still register and lineInfo still answered "registered", so a poll just
        # after the reboot's answer verified a phone on its way down)
        self._mark_down("reboot")
        await self._send_line_events("LineUnregistrationEvent")
        self.booted.clear()
        self.resolver.forget()
        self._spawn(self._boot(first=False))

    def _mark_down(self, reason: str) -> None:
        """Registrations stopped, every server down at once: the ground truth shows one step to "no working
        server" (a reboot, a power loss, a hang)."""
        self._stop_registrations()
        for reg in self.regs:
            for srv in reg.servers:
                if srv.state != (OFF if not self._sends_register(srv) else DOWN):
                    srv.state = OFF if not self._sends_register(srv) else DOWN
                    self.truth.record(self.mac, "server_state", reg=reg.index, server=srv.index, state=srv.state, reason=reason)
            self._update_working(reg)

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
            self._start_registrations()
            self._spawn(self._log_upload_loop())
            if self.spec.fault == "hung":       # lab fault: freezes once booted, until its power is cycled
                self.hang()
        finally:
            self._rebooting = False

    def _start_registrations(self) -> None:
        for reg in self.regs:
            for srv in reg.servers:
                if self._sends_register(srv):
                    srv.task = self._spawn(self._server_loop(reg, srv))
                else:
                    self._set_server_state(reg, srv, OFF, quiet=True)

    async def apply_live(self, params: dict[str, str], changed: list[str]) -> None:
        """A check-sync with alwaysReboot=0 whose changes are all live-applicable (Family.live_params): the new
        values take effect without a restart, and every registration registers again with them (no boot, no
        shutdown event; *unconfirmed*, see soundpoint/conformance check-sync entries)."""
        self._stop_registrations()
        self.params = params
        self.truth.record(self.mac, "applied_live", params=sorted(changed))
        self._configure_registrations()
        self._start_registrations()

    def summary(self) -> dict:
        return {"mac": self.mac, "model": self.spec.model, "ip": self.spec.ip, "booted": self.booted.is_set(),
                "boot_count": self.boot_count, "boot_errors": self.boot_errors, "in_call": self.in_call,
                "powered": self.powered, "hung": self.hung,
                "registrations": [{"index": r.index, "user": r.user, "working_server": r.working,
                                   "servers": [{"index": s.index, "address": s.address, "register": s.register,
                                                "state": s.state} for s in r.servers]} for r in self.regs],
                **({"rest": self.rest_summary()} if self.model["rest"] else {})}
