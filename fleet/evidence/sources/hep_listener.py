"""A HEP v3 UDP listener that only accepts datagrams from the configured capture agents, with their key.

Anyone who can reach the port could feed us invented registrations. The site's inventory names the SIP
servers that send HEP (by address) and, per sender, the HEP v3 auth key (chunk 14; Kamailio's siptrace
`auth_key`) as a secret reference. A datagram from any other address is dropped and counted before it is
parsed; from a sender with a key, one without the key or with another key is dropped and counted too
(compared in constant time). Drops from a sender count toward the source's health (source_guard.DropHealth):
a sender whose datagrams are mostly refused (a wrong key on one side) shows as a failing source.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from fleet.evidence.sources.udp_reader import DrainingReader, open_reader
from fleet.evidence.wire import hep
from fleet.evidence.wire.guard import DropHealth, SenderDrops

AUTH_MISSING, AUTH_WRONG = "auth_missing", "auth_wrong"
# The socket's receive buffer: what the kernel holds while the event loop is busy (a large batch being stored).
# The default (net.core.rmem_default, 208 KiB here) held some 90 datagrams: a 5,000-phone site re-registering
# sends a thousand a second, and bench/evidence.py lost 655 of 10,000 to it. 4 MiB (capped by
# net.core.rmem_max) holds well over a second of that.
RCVBUF_BYTES = 4 * 1024 * 1024


class HepListener(asyncio.DatagramProtocol):
    """Calls `on_packet(packet, source_address)` for each well-formed HEP v3 datagram from an allowed
    source that carries that source's key (`auth_keys`: address -> key; a sender without an entry needs
    none). `on_packet` exceptions are counted, never allowed to stop the listener."""

    def __init__(self, allowed_sources: Iterable[str], on_packet: Callable[[hep.HepPacket, tuple], None],
                 auth_keys: Mapping[str, bytes] | None = None, health: DropHealth | SenderDrops | None = None
                 ) -> None:
        self.allowed = frozenset(str(ipaddress.ip_address(a)) for a in allowed_sources)
        if not self.allowed:
            raise ValueError("a HEP listener needs at least one allowed source address")
        self.auth_keys = {str(ipaddress.ip_address(a)): bytes(k) for a, k in (auth_keys or {}).items()}
        if not self.auth_keys.keys() <= self.allowed:
            raise ValueError("a HEP auth key is set for an address that is not an allowed sender")
        if any(not k for k in self.auth_keys.values()):
            raise ValueError("a HEP auth key is empty")
        self.on_packet = on_packet
        self.health = health or DropHealth()
        self.stats: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        host = addr[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        if host not in self.allowed:
            self.stats["rejected_source"] += 1      # a stranger: not this source's health (anyone could send)
            return
        try:
            pkt = hep.parse(data)
        except hep.HepError:
            self._drop("malformed", host)
            return
        key = self.auth_keys.get(host)
        if key is not None:
            if pkt.auth_key is None:
                self._drop(AUTH_MISSING, host)
                return
            if not hmac.compare_digest(pkt.auth_key.rstrip(b"\0"), key):
                self._drop(AUTH_WRONG, host)
                return
        self.stats["accepted"] += 1
        try:
            self.on_packet(pkt, addr)
        except Exception:
            self.stats["handler_errors"] += 1

    def _drop(self, why: str, sender: str) -> None:
        self.stats[why] += 1
        self.health.saw(why, sender=sender)

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1


async def start_hep_listener(host: str, port: int, allowed_sources: Iterable[str],
                             on_packet: Callable[[hep.HepPacket, tuple], None],
                             auth_keys: Mapping[str, bytes] | None = None,
                             health: DropHealth | SenderDrops | None = None
                             ) -> tuple[DrainingReader, HepListener]:
    """Bind host:port (UDP) and serve until the returned reader is closed."""
    protocol = HepListener(allowed_sources, on_packet, auth_keys, health)
    return await open_reader(host, port, protocol, RCVBUF_BYTES), protocol
