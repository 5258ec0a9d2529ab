"""The TTL a site's DNS server gives a name: the `DNSTTL` failback bound depends on it.

One A query over UDP (dnslib builds and parses it); any failure is "unknown",
never an exception: a missing TTL leaves that bound unset, and the verdict
says so, rather than guessing a number.
"""
from __future__ import annotations

import socket

from dnslib import QTYPE, DNSRecord, DNSError


def ttl_of(name: str, server: str, port: int = 53, timeout: float = 1.0) -> int | None:
    """The smallest TTL of the A answers for `name` from `server`, or None when it cannot be read."""
    try:
        query = DNSRecord.question(name, "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(query.pack(), (server, port))
            data, _ = sock.recvfrom(4096)
        reply = DNSRecord.parse(data)
    except (OSError, DNSError, ValueError):
        return None
    if reply.header.id != query.header.id:
        return None
    ttls = [rr.ttl for rr in reply.rr if rr.rtype == QTYPE.A]
    return min(ttls) if ttls else None
