"""The phone's web server: state polling and, on models that have it, the REST API, behind digest or Basic auth.

A mixin of VirtualPhone (hil.phone): it works on the phone's own state.
"""
from __future__ import annotations

import asyncio
import random
import time

import aiohttp
from aiohttp import web

from sipwire import digest

from . import phone_reports as reports


class WebApi:
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
