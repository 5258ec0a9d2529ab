"""The phone's web server: state polling, the web UI's reboot form and, on models that have it, the REST API.

REST (UC Software 5.4+) answers in the shapes of the phone's firmware version, rendered from the conformance
corpus (hil.phone_reports.rest_*), one request at a time (a concurrent one is answered busy and counted).

State polling has its own login when the phone is configured with one
(`apps.statePolling.username/password`, digest only). It answers in the HTTP
response only in requestor mode (`apps.statePolling.responseMode=0`); otherwise,
with `apps.statePolling.URL` set, it answers the poll with an empty 200 and POSTs
its state to that URL, and with neither it sends its state nowhere (corpus area
`polling`). The call state handler answers both spellings of its path (whether a
real phone matches it case-sensitively is unknown). The web UI's `/form-submit/Reboot`
takes Basic only and answers exactly its corpus entries (area `web-ui`): the
challenge for a missing or wrong login, the reboot answer otherwise. Everything
else takes the admin login, digest or Basic; a missing or wrong one gets the digest
challenge of its corpus entry (polling-auth-digest-challenge, rest-auth-challenge-digest).
While the phone reboots, a request's connection is reset unanswered.

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

# names per config/get: the REST manual's limit (rdbahm/Posh-UCS: "The REST API only lets us request 20
# parameters at a time"); more gets the corpus's rest-config-get-too-many answer
CONFIG_GET_MAX = 20


class WebApi:
    def _http_app(self) -> web.Application:
        app = web.Application(middlewares=[self._hung_middleware, self._rest_one_at_a_time, self._auth_middleware])
        app.router.add_get("/polling/deviceHandler", self._h_poll_device)
        app.router.add_get("/polling/callstateHandler", self._h_poll_calls)     # as public clients spell it
        app.router.add_get("/polling/callStateHandler", self._h_poll_calls)
        app.router.add_post("/form-submit/Reboot", self._h_web_reboot)
        if self.model["rest"]:
            self._add_rest_routes(app)
        return app

    async def _start_http(self) -> None:
        app = self._http_app()
        if self.http_listener is not None:     # the process's shared listener (hil.http_mux): no socket of its own
            self.http_listener.attach(self.spec.ip, app)
            return
        self.http_runner = web.AppRunner(app, access_log=None)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, self.spec.ip, self.spec.http_port, reuse_address=True)
        await site.start()

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler):
        if not self.booted.is_set():
            # a rebooting phone has no web server to answer: the connection is reset, no HTTP answer at all (no
            # source prints what a phone does while it boots; a 503 page was the lab's invention)
            request.transport.abort()    # type: ignore[union-attr]
            return web.Response()        # never sent: the connection is gone
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
        status, headers, body = reports.digest_challenge(
            "polling-auth-digest-challenge" if polling else "rest-auth-challenge-digest", f"{random.getrandbits(64):016x}")
        return web.Response(status=status, headers=headers, text=body)

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

    # ------------------------------------------------------------ REST (UC Software 5.4+), answers from the corpus
    def _add_rest_routes(self, app: web.Application) -> None:
        """The REST paths this phone's firmware has: v2 callStatus only from 5.8 (a 5.4-5.7 phone answers 404)."""
        from soundpoint.conformance import version_in

        self.rest_in_flight = 0          # REST requests being served now
        self.rest_concurrent = 0         # requests that arrived while another was served (answered busy)
        self.rest_requests = 0
        app.router.add_get("/api/v1/mgmt/device/info", self._h_device_info)
        app.router.add_get("/api/v1/mgmt/lineInfo", self._h_line_info)
        app.router.add_get("/api/v2/mgmt/lineInfo", self._h_line_info)
        app.router.add_post("/api/v1/mgmt/safeRestart", self._h_restart)
        app.router.add_post("/api/v1/mgmt/safeReboot", self._h_restart)
        app.router.add_post("/api/v1/mgmt/config/set", self._h_config_set)
        app.router.add_post("/api/v1/mgmt/config/get", self._h_config_get)
        app.router.add_get("/api/v1/webCallControl/callStatus", self._h_call_status)
        if version_in(self.model["firmware"], ">=5.8"):
            app.router.add_get("/api/v2/webCallControl/callStatus", self._h_call_status)
        app.router.add_post("/api/v1/callctrl/dial", self._h_dial)

    def rest_summary(self) -> dict:
        """For `hil status --json`: the firmware it answers as, requests served, and how many arrived while
        another was being served (a real phone refuses those: fleet must never send them)."""
        return {"firmware": self.model["firmware"], "requests": getattr(self, "rest_requests", 0),
                "concurrent": getattr(self, "rest_concurrent", 0)}

    @web.middleware
    async def _rest_one_at_a_time(self, request: web.Request, handler):
        """The REST API serves one request at a time: one that arrives while another is served (login
        included) is counted and answered busy (Status 4001, conformance rest-busy)."""
        if not self.model["rest"] or not request.path.startswith("/api/"):
            return await handler(request)
        self.rest_requests += 1
        if self.rest_in_flight:
            self.rest_concurrent += 1
            doc, status = reports.rest_status("rest-busy")
            return web.json_response(doc, status=status)
        self.rest_in_flight += 1
        try:
            return await handler(request)
        finally:
            self.rest_in_flight -= 1

    def _json(self, answer: tuple[dict, int]) -> web.Response:
        doc, status = answer
        return web.json_response(doc, status=status)

    async def _h_device_info(self, request: web.Request) -> web.Response:
        return self._json(reports.rest_device_info(self.model["firmware"], self.mac, self.spec.model,
                                                   time.monotonic() - self.booted_at))

    async def _h_line_info(self, request: web.Request) -> web.Response:
        lines = []
        for r in self.regs:
            working = next((s for s in r.servers if s.index == r.working), None)
            lines.append({"LineNumber": r.index, "RegistrationStatus": "registered" if working else "unregistered",
                          "UserID": r.user, "address": f"{r.user}@{r.servers[0].address}",
                          "ProxyAddress": working.address if working else "", "Port": working.port if working else 0})
        return self._json(reports.rest_line_info(self.model["firmware"], lines))

    async def _h_restart(self, request: web.Request) -> web.Response:
        self._spawn(self.reboot("rest"))
        return self._json(reports.rest_status("rest-safe-restart"))

    async def _h_config_set(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            values = body["data"]
            if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._json(reports.rest_status("rest-error-4000"))
        self.params.update({k: str(v) for k, v in values.items()})
        return self._json(reports.rest_status("rest-config-set"))

    async def _h_config_get(self, request: web.Request) -> web.Response:
        try:
            names = (await request.json())["data"]
            if not isinstance(names, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._json(reports.rest_status("rest-error-4000"))
        if len(names) > CONFIG_GET_MAX:
            return self._json(reports.rest_status("rest-config-get-too-many"))
        return self._json(reports.rest_config_values({str(n): self.params.get(str(n), "") for n in names}))

    async def _h_call_status(self, request: web.Request) -> web.Response:
        calls = [{"CallState": "Connected", "LineId": 1, "DurationSeconds": 1}] if self.in_call else []
        return self._json(reports.rest_call_status(self.model["firmware"], request.path.startswith("/api/v2/"), calls))

    async def _h_dial(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            dest = str(body["data"]["Dest"])
            line = int(body["data"].get("Line", 1))
        except (ValueError, KeyError, TypeError):
            return self._json(reports.rest_status("rest-error-4000"))
        self._spawn(self.place_call(dest, line))
        return self._json(reports.rest_status("rest-dial"))
