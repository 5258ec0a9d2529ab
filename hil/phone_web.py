"""The phone's web server: state polling, the web UI's reboot form and, on models that have it, the REST API.

State polling has its own login when the phone is configured with one
(`apps.statePolling.username/password`, digest only). It answers in the HTTP
response only in requestor mode (`apps.statePolling.responseMode=0`); otherwise,
with `apps.statePolling.URL` set, it answers the poll with an empty 200 and POSTs
its state to that URL, and with neither it sends its state nowhere (corpus area
`polling`). The call state handler answers both spellings of its path (whether a
real phone matches it case-sensitively is unknown). The web UI's `/form-submit/Reboot`
takes Basic only and answers exactly its corpus entries (area `web-ui`): the
challenge for a missing or wrong login, the reboot answer otherwise. Everything
else takes the admin login, digest or Basic.

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
        app.router.add_get("/polling/callstateHandler", self._h_poll_calls)     # as public clients spell it
        app.router.add_get("/polling/callStateHandler", self._h_poll_calls)
        app.router.add_post("/form-submit/Reboot", self._h_web_reboot)
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
        login = (self.spec.admin_user, self.spec.admin_password)
        poll_user = self.params.get("apps.statePolling.username", "")
        polling = request.path.startswith("/polling/")
        if polling and poll_user:       # state polling's own login, digest only
            login = (poll_user, self.params.get("apps.statePolling.password", ""))
        web_form = request.path.startswith("/form-submit/")
        if header.startswith("Basic ") and not (polling and poll_user):
            try:
                auth = aiohttp.BasicAuth.decode(header)
                if (auth.login, auth.password) == login:
                    return await handler(request)
            except ValueError:
                pass
        elif header.startswith("Digest ") and not web_form:
            user = digest.verify(header, method=request.method,
                                 password_for=lambda u, r: login[1] if u == login[0] else None)
            if user:
                return await handler(request)
        if web_form:
            status, headers, body = reports.web_answer("web-ui-challenge")
            return web.Response(status=status, headers=headers, text=body)
        nonce = f"{random.getrandbits(64):016x}"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Digest realm="PolycomSPIP", nonce="{nonce}", qop="auth"'})

    def _lines(self) -> dict[int, str]:
        return {r.index: r.user for r in self.regs}

    async def _h_poll_device(self, request: web.Request) -> web.Response:
        body = reports.polling_device(self.mac.upper(), self.spec.model, self.model["firmware"], self._lines())
        if self.params.get("apps.statePolling.responseMode", "") == "0":
            return web.Response(body=body, content_type="application/xml")
        url = self.params.get("apps.statePolling.URL", "")
        if url:
            self._spawn(self._push_state(url, body))
        return web.Response(status=200)

    async def _h_poll_calls(self, request: web.Request) -> web.Response:
        body = reports.polling_call_state({r.index: (r.user, self.in_call) for r in self.regs})
        if self.params.get("apps.statePolling.responseMode", "") == "0":     # requestor: the state in the answer
            return web.Response(body=body, content_type="application/xml")
        url = self.params.get("apps.statePolling.URL", "")
        if url:      # push mode: the state goes to the URL, the poll gets an empty answer (polling-callstate-push-*)
            self._spawn(self._push_state(url, body))
        return web.Response(status=200)     # no URL either: sent nowhere (polling-callstate-nothing-sent)

    async def _push_state(self, url: str, body: bytes) -> None:
        try:
            async with self._events().post(url, data=body, headers={"Content-Type": "application/xml"}):
                pass
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            self._log(f"state push to {url} failed")

    async def _h_web_reboot(self, request: web.Request) -> web.Response:
        """The web UI's reboot button (UC Software 4.x path); its answer is corpus web-ui-reboot-accepted."""
        self._spawn(self.reboot("web"))
        status, headers, body = reports.web_answer("web-ui-reboot-accepted")
        return web.Response(status=status, headers=headers, text=body)

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
