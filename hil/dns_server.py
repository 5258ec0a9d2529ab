"""The provider's DNS zone: A records over UDP (dnslib), with a short TTL so outages show quickly."""
from __future__ import annotations

import asyncio
import logging

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

log = logging.getLogger(__name__)


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, records: dict[str, str], ttl: int = 5) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        # split horizon: answers for queries from a given source address (each site's router WAN side
        # reaches the provider through its own relay address)
        self.views: dict[str, dict[str, str]] = {}
        self.ttl = ttl
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    @classmethod
    async def start(cls, host: str, port: int, records: dict[str, str], ttl: int = 5) -> "DnsServer":
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(records, ttl), local_addr=(host, port))
        return proto

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def stop(self) -> None:
        if self.transport:
            self.transport.close()

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types on garbage; a bad packet is dropped
            log.debug("malformed DNS query from %s", addr)
            return
        self.queries += 1
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        address = self.views.get(addr[0], {}).get(name) or self.records.get(name)
        if address and query.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif not address:
            reply.header.rcode = RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)  # type: ignore[union-attr]
