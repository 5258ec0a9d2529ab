"""The provider's DNS zone over UDP (dnslib), with a short TTL so outages show quickly.

A records for every name; for the names in `located` (the provider's, lab file `provider.naptr_srv`) also
the records a phone in DNSnaptr mode asks for first (RFC 3263): NAPTR for the name, SRV for the name the NAPTR
record gives, and A for the SRV target. Those answers are rendered from the conformance corpus's `dns-*`
entries (RFC 3263 section 4.1 shapes), with the owner, replacement, target and port replaced.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from dnslib import NAPTR, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord

from soundpoint import conformance

from . import udp_buffers

log = logging.getLogger(__name__)

SRV_TARGET = "sip1"        # the SRV target is <this>.<provider name>, an A record for the provider's address


def _corpus_rr(entry_id: str) -> RR:
    """The one resource record an entry's body holds, parsed (zone-file text)."""
    return RR.fromZone(conformance.get(entry_id).body)[0]


def naptr_answer(name: str, ttl: int) -> RR:
    """dns-naptr-sip-udp for `name`: its replacement becomes _sip._udp.<name>."""
    rr = _corpus_rr("dns-naptr-sip-udp")
    d: NAPTR = rr.rdata
    return RR(name, QTYPE.NAPTR, ttl=ttl, rdata=NAPTR(d.order, d.preference, d.flags, d.service, d.regexp,
                                                        DNSLabel(f"_sip._udp.{name}.")))


def srv_answer(srv_name: str, name: str, port: int, ttl: int) -> RR:
    """dns-srv-sip for `srv_name`: its target becomes sip1.<name>, its port the provider's SIP port."""
    rr = _corpus_rr("dns-srv-sip")
    d: SRV = rr.rdata
    return RR(srv_name, QTYPE.SRV, ttl=ttl, rdata=SRV(d.priority, d.weight, port, f"{SRV_TARGET}.{name}."))


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, records: dict[str, str], ttl: int = 5) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        # split horizon: answers for queries from a given source address (each site's router WAN side
        # reaches the provider through its own relay address)
        self.views: dict[str, dict[str, str]] = {}
        self.ttl = ttl
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0
        self.located: dict[str, int] = {}          # name -> SIP port its SRV record gives (NAPTR/SRV served)
        self.asked: Counter[tuple[str, str]] = Counter()   # (qtype, name) -> count, for tests and `hil status`

    @classmethod
    async def start(cls, host: str, port: int, records: dict[str, str], ttl: int = 5,
                    located: dict[str, int] | None = None) -> "DnsServer":
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(records, ttl), local_addr=(host, port))
        proto.located = {k.rstrip(".").lower(): v for k, v in (located or {}).items()}
        udp_buffers.enlarge_transport(proto.transport)      # a site booting asks at once
        return proto

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def stop(self) -> None:
        if self.transport:
            self.transport.close()

    def _address(self, name: str, source: str) -> str | None:
        return self.views.get(source, {}).get(name) or self.records.get(name)

    def _locate_parts(self, name: str) -> tuple[str, str] | None:
        """("srv"|"target", provider name) when `name` is an SRV name or SRV target of a located name."""
        for base in self.located:
            if name == f"_sip._udp.{base}":
                return "srv", base
            if name == f"{SRV_TARGET}.{base}":
                return "target", base
        return None

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types on garbage; a bad packet is dropped
            log.debug("malformed DNS query from %s", addr)
            return
        self.queries += 1
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        qtype = query.q.qtype
        if len(self.asked) < 1000:
            self.asked[(QTYPE.get(qtype, str(qtype)), name)] += 1
        part = self._locate_parts(name)
        address = self._address(part[1] if part and part[0] == "target" else name, addr[0])
        if part and part[0] == "srv":
            if qtype in (QTYPE.SRV, QTYPE.ANY):
                reply.add_answer(srv_answer(str(query.q.qname), part[1], self.located[part[1]], self.ttl))
        elif name in self.located and qtype == QTYPE.NAPTR:
            reply.add_answer(naptr_answer(name, self.ttl))
        elif address and qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif not address:
            reply.header.rcode = RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)  # type: ignore[union-attr]
