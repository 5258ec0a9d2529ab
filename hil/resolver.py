"""A phone's stub DNS resolver: A queries over UDP with a TTL cache.

Names that fail to resolve make the server count as down (R7), so failures
are cached only briefly and surfaced as ResolveError.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import time

from dnslib import QTYPE, DNSRecord


class ResolveError(Exception):
    pass


class _Query(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if not self.fut.done():
            self.fut.set_result(data)


class Resolver:
    def __init__(self, server: tuple[str, int] | None, local_ip: str, timeout: float = 1.0, tries: int = 2) -> None:
        self.server = server
        self.local_ip = local_ip
        self.timeout = timeout
        self.tries = tries
        self._cache: dict[str, tuple[float, str]] = {}
        self._ttls: dict[str, int] = {}       # the TTL of each name's last answer, kept past its expiry

    def forget(self) -> None:
        """A rebooted phone starts with an empty DNS cache."""
        self._cache.clear()
        self._ttls.clear()

    def ttl_of(self, name: str) -> int | None:
        """The TTL of the last answer for `name` (failOver.failBack.mode=DNSTTL); None: never resolved, or an address."""
        return self._ttls.get(name)

    async def resolve(self, name: str) -> str:
        try:
            ipaddress.ip_address(name)
            return name
        except ValueError:
            pass
        hit = self._cache.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        if self.server is None:
            raise ResolveError(f"{name}: no DNS server configured")
        loop = asyncio.get_running_loop()
        for _ in range(self.tries):
            query = DNSRecord.question(name, "A")
            query.header.id = random.randint(0, 65535)
            fut = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(lambda: _Query(fut), local_addr=(self.local_ip, 0))
            try:
                transport.sendto(query.pack(), self.server)
                data = await asyncio.wait_for(fut, self.timeout)
            except asyncio.TimeoutError:
                continue
            finally:
                transport.close()
            try:
                reply = DNSRecord.parse(data)
            except Exception as exc:  # dnslib raises several types on garbage
                raise ResolveError(f"{name}: malformed DNS answer ({exc})") from None
            if reply.header.id != query.header.id:
                continue
            for rr in reply.rr:
                if rr.rtype == QTYPE.A:
                    address = str(rr.rdata)
                    self._cache[name] = (time.monotonic() + max(int(rr.ttl), 1), address)
                    self._ttls[name] = int(rr.ttl)
                    return address
            raise ResolveError(f"{name}: no A record (rcode {reply.header.rcode})")
        raise ResolveError(f"{name}: DNS server {self.server[0]}:{self.server[1]} did not answer")
