"""One site's virtual phones (and its boot server) in a process of their own, inside the site's LAN namespace.

Started by the namespace lab with `ip netns exec`; its configuration (with the
phones' and boot server's passwords) arrives on stdin, never in the command
line. The lab reads the ground truth over a Unix socket in the state
directory, which is reachable from every namespace.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from ..bootserver import HttpBootServerProcess
from ..groundtruth import GroundTruth
from ..phone import VirtualPhone
from ..phone_types import PhoneSpec, set_fault


async def serve(config: dict) -> None:
    truth = GroundTruth()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), connector=aiohttp.TCPConnector(limit=0))
    boot = HttpBootServerProcess(Path(config["boot"]["root"]), config["boot"]["host"], int(config["boot"]["port"]),
                                 config["boot"]["username"], config["boot"]["password"])
    await boot.start()
    phones = []
    for p in config["phones"]:
        p = dict(p)
        if p.get("dns"):
            p["dns"] = tuple(p["dns"])
        phones.append(VirtualPhone(PhoneSpec(**p), truth, session))
    for phone in phones:
        await phone.start(http=config.get("http", True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def status(request: web.Request) -> web.Response:
        ready = all(p.spec.fault is not None or (p.booted.is_set() and all(r.working for r in p.regs)) for p in phones)
        return web.json_response({"ready": ready, "ground_truth": truth.snapshot(), "phones": [p.summary() for p in phones]})

    async def fault(request: web.Request) -> web.Response:
        answer, status = set_fault(phones, await request.json())
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/fault", fault)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    Path(config["control"]).unlink(missing_ok=True)
    await web.UnixSite(runner, config["control"]).start()
    print("ready", flush=True)
    await stop.wait()
    for phone in phones:
        await phone.stop()
    await boot.stop()
    await runner.cleanup()
    await session.close()


def main() -> None:
    from ..cli import raise_file_limit

    raise_file_limit()
    asyncio.run(serve(json.loads(sys.stdin.readline())))


if __name__ == "__main__":
    main()
