"""One HTTP listener for the web servers of every phone in a process, dispatching by the local address.

A listener per phone costs a descriptor per phone. This one is bound to the wildcard address on a port free on
every address (nobody's 8080, never shared with another lab); each phone's web server is reached at its own
127.x address on that port (the phone's `http_port` in the inventory). A connection's local address (the
address the client connected to) names the phone; its request goes through that phone's own application: its
routes and middlewares (authentication, REST one at a time), exactly as on a listener of its own. A connection
to an address no phone holds is reset.
"""
from __future__ import annotations

import functools

from aiohttp import web


class SharedHttpListener:
    """The process's one phone HTTP listener; `attach(ip, app)` serves a phone's application at `ip`."""

    def __init__(self) -> None:
        self._apps: dict[str, web.Application] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.unknown = 0          # connections to an address no phone of this process holds

    @classmethod
    async def open(cls, host: str = "0.0.0.0", port: int = 0) -> "SharedHttpListener":
        self = cls()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def attach(self, ip: str, app: web.Application) -> None:
        if ip in self._apps:
            raise ValueError(f"address {ip} is already taken by another phone of this lab")
        app.freeze()
        self._apps[ip] = app

    def detach(self, ip: str) -> None:
        self._apps.pop(ip, None)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        app = self._apps.get(sockname[0]) if sockname else None
        if app is None:
            self.unknown += 1
            if request.transport:
                request.transport.abort()     # as a closed port would: no HTTP answer at all
            return web.Response()
        match = await app.router.resolve(request)

        async def route(req: web.Request) -> web.StreamResponse:
            if match.http_exception is not None:     # the phone's own 404/405, after its middlewares
                raise match.http_exception
            return await match.handler(req)

        handler = route
        for mw in reversed(app.middlewares):          # the first middleware is the outermost, as in aiohttp
            handler = functools.partial(mw, handler=handler)
        return await handler(request)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
