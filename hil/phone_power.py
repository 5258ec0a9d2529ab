"""A virtual phone's power and the hung-phone fault: what a PoE port turned off, or a frozen firmware, looks like
from the network.

A mixin of VirtualPhone (hil.phone). Power off is a power loss, not a reboot:
no unregistration, no shutdown event, the SIP socket and the web server simply
go away and the registrations lapse at the servers (the registrar's own
expiry). Power on boots the phone again from its boot server, as a reboot's
second half does. A hung phone (lab fault `hung`) keeps its sockets but answers
nothing: SIP requests (check-sync included) are dropped, HTTP requests are held
unanswered until the client gives up, and it sends nothing (its registrations
lapse). Only losing power cures it, as operators find with real phones.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from sipwire import message as sip

from .sip_mux import bind_endpoint

HUNG_HOLD_S = 60.0     # an HTTP request to a hung phone is held this long at most, then its connection dropped


class Power:
    powered: bool = True
    hung: bool = False

    def _hung_event(self) -> asyncio.Event:
        if getattr(self, "_unhung", None) is None:
            self._unhung = asyncio.Event()
        return self._unhung

    def hang(self) -> None:
        """Freeze now: stop every task (registrations, log upload, a call), answer nothing from here on."""
        if self.hung or not self.powered:
            return
        self.hung = True
        self._hung_event().clear()
        self.truth.record(self.mac, "hung")
        self._halt("hung")

    def _halt(self, reason: str) -> None:
        """Every task stopped and every server down in the ground truth (the phone is not registered anywhere
        for anyone who asks the servers, once their bindings lapse)."""
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._mark_down(reason)
        self.in_call = False

    async def power_off(self) -> None:
        """The PoE port stopped delivering power: the phone is gone at once."""
        if not self.powered:
            return
        self.powered = False
        was_hung, self.hung = self.hung, False
        self._hung_event().set()              # release held HTTP requests: their connections are dropped below
        self.truth.record(self.mac, "power", on=False, was_hung=was_hung)
        self.truth.record(self.mac, "unavailable")
        self._halt("power off")
        self.booted.clear()
        self.resolver.forget()
        if self.endpoint:
            self.endpoint.close()
            self.endpoint = None
        if self.http_runner:
            await self.http_runner.cleanup()
            self.http_runner = None
        if self.http_listener is not None:        # the lab's shared listener (hil.http_mux): no longer this phone's
            self.http_listener.detach(self.spec.ip)

    async def power_on(self) -> None:
        """Power is back: the phone boots again from its boot server (a hang does not survive a power loss)."""
        if self.powered:
            return
        self.powered = True
        if self.spec.fault == "hung":
            self.spec.fault = None
        self.truth.record(self.mac, "power", on=True)
        self.endpoint = await bind_endpoint(self.sip_socket, self.spec.ip, self.spec.sip_port,
                                            self._on_sip_request_powered, self.mac)
        if getattr(self, "_http", True):
            await self._start_http()
        self._rebooting = True
        self._spawn(self._boot(first=False))

    async def _on_sip_request_powered(self, msg: sip.SipMessage, addr: tuple[str, int]) -> sip.SipMessage | None:
        """A hung phone drops every request unanswered; otherwise the phone's own handler answers."""
        if self.hung:
            return None
        return await self._on_sip_request(msg, addr)

    @web.middleware
    async def _hung_middleware(self, request: web.Request, handler):
        """A hung phone's web server takes the connection and never answers; the client times out."""
        if not self.hung:
            return await handler(request)
        try:
            await asyncio.wait_for(self._hung_event().wait(), HUNG_HOLD_S)
        except asyncio.TimeoutError:
            pass
        request.transport.abort()    # type: ignore[union-attr]
        return web.Response()        # never sent: the connection is gone
