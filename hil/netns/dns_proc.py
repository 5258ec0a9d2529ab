"""The provider's DNS (our dnslib server) as a process inside the WAN namespace.

Arguments: ADDRESS PORT TTL NAME=IP...; prints "ready" once it listens.
"""
from __future__ import annotations

import asyncio
import signal
import sys

from ..dns_server import DnsServer


async def serve(address: str, port: int, ttl: int, records: dict[str, str]) -> None:
    server = await DnsServer.start(address, port, records, ttl=ttl)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.stop()


def main() -> None:
    address, port, ttl, *pairs = sys.argv[1:]
    records = dict(p.split("=", 1) for p in pairs)
    asyncio.run(serve(address, int(port), int(ttl), records))


if __name__ == "__main__":
    main()
