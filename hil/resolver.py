"""A phone's stub DNS resolver: A queries (and RFC 3263 NAPTR, SRV, A location) over UDP with a TTL cache.

Names that fail to resolve make the server count as down (R7), so failures
are cached only briefly and surfaced as ResolveError.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import time

from dnslib import QTYPE, DNSRecord

from . import limits


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
        self._located: dict[str, tuple[float, tuple[str, int]]] = {}   # locate(): expiry, (address, port)

    def forget(self) -> None:
        """A rebooted phone starts with an empty DNS cache."""
        self._cache.clear()
        self._ttls.clear()
        self._located.clear()

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
        reply = await self._ask(name, "A")
        for rr in reply.rr:
            if rr.rtype == QTYPE.A:
                address = str(rr.rdata)
                self._cache[name] = (time.monotonic() + max(int(rr.ttl), 1), address)
                self._ttls[name] = int(rr.ttl)
                return address
        raise ResolveError(f"{name}: no A record (rcode {reply.header.rcode})")

    async def locate(self, name: str) -> tuple[str, int]:
        """RFC 3263 as the guides' DNSnaptr transport says (a name, port 0 or Null): NAPTR for the name, the most
        preferred SIP+D2U record with flag "s" names an SRV name; SRV gives target and port (lowest priority,
        then highest weight); the target's A record. No usable NAPTR: SRV _sip._udp.<name>; no SRV either: the
        name's A record at 5060. The answer is cached for the smallest TTL on the way; the name's TTL
        (failOver.failBack.mode=DNSTTL) is the target's A record's."""
        hit = self._located.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        srv_name, ttls = f"_sip._udp.{name}", []
        naptr = [rr for rr in (await self._ask(name, "NAPTR")).rr if rr.rtype == QTYPE.NAPTR]
        usable = sorted((rr for rr in naptr if bytes(rr.rdata.flags).decode(errors="replace").lower() == "s"
                         and bytes(rr.rdata.service).decode(errors="replace").upper() == "SIP+D2U"),
                        key=lambda rr: (rr.rdata.order, rr.rdata.preference))
        if usable:
            srv_name = str(usable[0].rdata.replacement).rstrip(".")
            ttls.append(int(usable[0].ttl))
        srv = sorted((rr for rr in (await self._ask(srv_name, "SRV")).rr if rr.rtype == QTYPE.SRV),
                     key=lambda rr: (rr.rdata.priority, -rr.rdata.weight))
        if srv:
            target, port = str(srv[0].rdata.target).rstrip("."), int(srv[0].rdata.port)
            ttls.append(int(srv[0].ttl))
        else:
            target, port = name, 5060
        address = await self.resolve(target)
        self._ttls[name] = self._ttls.get(target, 0)
        ttls.append(self._ttls[name])
        self._located[name] = (time.monotonic() + max(min(ttls), 1), (address, port))
        return address, port

    async def _ask(self, name: str, qtype: str) -> DNSRecord:
        """One question, retried `tries` times; the parsed reply with our id (ResolveError: none came)."""
        if self.server is None:
            raise ResolveError(f"{name}: no DNS server configured")
        loop = asyncio.get_running_loop()
        for _ in range(self.tries):
            query = DNSRecord.question(name, qtype)
            query.header.id = random.randint(0, 65535)
            fut = loop.create_future()
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Query(fut), local_addr=(self.local_ip, 0))
            except OSError as exc:     # out of descriptors stops the lab (hil.limits); anything else: no answer
                limits.check(exc, f"DNS question from {self.local_ip}")
                raise ResolveError(f"{name}: no socket for the question ({exc.strerror})") from None
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
            return reply
        raise ResolveError(f"{name}: DNS server {self.server[0]}:{self.server[1]} did not answer")
