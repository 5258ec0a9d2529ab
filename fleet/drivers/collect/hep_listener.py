"""A HEP v3 UDP listener that only accepts datagrams from the configured capture agents.

HEP carries no authentication that agents actually use (the auth-key chunk is
optional and rarely set), so anyone who can reach the port could feed us
invented registrations. The site's inventory names the SIP servers that send
HEP; everything else is dropped and counted before it is parsed.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable

from . import hep


class HepListener(asyncio.DatagramProtocol):
    """Calls `on_packet(packet, source_address)` for each well-formed HEP v3 datagram from an allowed
    source. `on_packet` exceptions are counted, never allowed to stop the listener."""

    def __init__(self, allowed_sources: Iterable[str], on_packet: Callable[[hep.HepPacket, tuple], None]) -> None:
        self.allowed = frozenset(str(ipaddress.ip_address(a)) for a in allowed_sources)
        if not self.allowed:
            raise ValueError("a HEP listener needs at least one allowed source address")
        self.on_packet = on_packet
        self.stats: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        host = addr[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        if host not in self.allowed:
            self.stats["rejected_source"] += 1
            return
        try:
            pkt = hep.parse(data)
        except hep.HepError:
            self.stats["malformed"] += 1
            return
        self.stats["accepted"] += 1
        try:
            self.on_packet(pkt, addr)
        except Exception:
            self.stats["handler_errors"] += 1

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1


async def start_hep_listener(host: str, port: int, allowed_sources: Iterable[str],
                             on_packet: Callable[[hep.HepPacket, tuple], None]
                             ) -> tuple[asyncio.DatagramTransport, HepListener]:
    """Bind host:port (UDP) and serve until the returned transport is closed."""
    loop = asyncio.get_running_loop()
    protocol = HepListener(allowed_sources, on_packet)
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(host, port))
    return transport, protocol
