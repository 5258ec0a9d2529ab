"""hil.http_mux: the web servers of every phone in a process on one listener, dispatched by local address."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from hil.http_mux import SharedHttpListener


def _app(name: str, seen: list[str]) -> web.Application:
    @web.middleware
    async def mark(request: web.Request, handler):
        seen.append(f"{name} {request.path}")         # the phone's own middleware runs, also for a 404
        return await handler(request)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} at {request.transport.get_extra_info('sockname')[0]}")

    app = web.Application(middlewares=[mark])
    app.router.add_get("/hello", hello)
    return app


def test_each_address_reaches_its_own_phone_application():
    async def main():
        seen: list[str] = []
        listener = await SharedHttpListener.open()
        try:
            listener.attach("127.0.0.2", _app("a", seen))
            listener.attach("127.0.0.3", _app("b", seen))
            async with aiohttp.ClientSession() as http:
                for ip, name in (("127.0.0.2", "a"), ("127.0.0.3", "b")):
                    async with http.get(f"http://{ip}:{listener.port}/hello") as resp:
                        assert resp.status == 200 and await resp.text() == f"{name} at {ip}"
                async with http.get(f"http://127.0.0.3:{listener.port}/nothing") as resp:
                    assert resp.status == 404
                with pytest.raises(aiohttp.ClientError):     # nobody at .9: reset, no HTTP answer
                    async with http.get(f"http://127.0.0.9:{listener.port}/hello") as resp:
                        await resp.read()
            # (aiohttp tries a GET once more on a reset connection: one or two resets)
            assert seen == ["a /hello", "b /hello", "b /nothing"] and listener.unknown >= 1
            listener.detach("127.0.0.2")
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.2:{listener.port}/hello") as resp:
                        await resp.read()
        finally:
            await listener.close()

    asyncio.run(main())
