"""Asking a site's DNS server: the one DNS client fleet has (A, SRV and NAPTR questions, one each).

Three callers: the `DNSTTL` failback bound needs the TTL the site's server gives
the primary's name (`ttl_of`), the LAN-side provider probe resolves the
provider's name as the phones do (drivers.probe.resolve), and the wire
sources' SiteResolver follows a server name the way a phone in `DNSnaptr` mode
does (NAPTR, then SRV `_sip._udp.NAME`, then A). Each question is one UDP
datagram to the site's configured server (dnslib builds and parses it); the
socket is connected to that server and only a reply carrying the query's id
counts. Any failure is "unknown" (None), never an exception: a missing TTL
leaves that bound unset, and the verdict says so, rather than guessing a number.
"""
from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass

from dnslib import QTYPE, DNSRecord, DNSError


def query(name: str, qtype: str, server: str, port: int = 53, timeout: float = 1.0) -> DNSRecord | None:
    """The reply of `server` to one `qtype` question for `name`; None when none can be read in time.

    The socket is connected to the server, so only its datagrams count, and an answer to another query (another
    id) is skipped until the timeout.
    """
    q = DNSRecord.question(name, qtype)
    q.header.id = random.randint(0, 65535)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((server, port))
            sock.send(q.pack())
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                reply = DNSRecord.parse(sock.recv(4096))
                if reply.header.id == q.header.id:
                    return reply
    except (OSError, DNSError, ValueError):      # no answer in time, a socket error
        return None
    except Exception:  # dnslib raises several other types on garbage: a garbled answer is no answer
        return None


def a_records(name: str, server: str, port: int = 53, timeout: float = 1.0) -> list[tuple[str, int]] | None:
    """The (address, TTL) of each A answer for `name` from `server`, in answer order; None when none can be read."""
    reply = query(name, "A", server, port, timeout)
    if reply is None:
        return None
    found = [(str(rr.rdata), int(rr.ttl)) for rr in reply.rr if rr.rtype == QTYPE.A]
    return found or None


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str            # host name, without the trailing dot


def _records(name: str, qtype: str, server: str, port: int, timeout: float, build) -> list | None:
    """`build(rdata)` of each `qtype` answer; an answer it cannot read (garbled rdata) is skipped. [] when the
    server answered without any, None when no answer could be read."""
    reply = query(name, qtype, server, port, timeout)
    if reply is None:
        return None
    out = []
    for rr in reply.rr:
        if rr.rtype == getattr(QTYPE, qtype):
            try:
                out.append(build(rr.rdata))
            except (AttributeError, TypeError, ValueError):
                continue
    return out


def srv_records(name: str, server: str, port: int = 53, timeout: float = 1.0) -> list[Srv] | None:
    """The SRV answers for `name` (e.g. `_sip._udp.example.com`) by priority, then weight (highest first);
    [] when the server answered without any (the name has no SRV), None when no answer could be read."""
    found = _records(name, "SRV", server, port, timeout, lambda d: Srv(int(d.priority), int(d.weight), int(d.port),
                                                                        str(d.target).rstrip(".")))
    return None if found is None else sorted(found, key=lambda s: (s.priority, -s.weight, s.target, s.port))


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str           # SIP+D2U (UDP), SIP+D2T (TCP), SIPS+D2T (TLS)
    replacement: str       # the SRV name to ask next, without the trailing dot


def naptr_records(name: str, server: str, port: int = 53, timeout: float = 1.0) -> list[Naptr] | None:
    """The NAPTR answers for `name` in order, then preference; [] when there are none, None without an answer."""
    found = _records(name, "NAPTR", server, port, timeout,
                     lambda d: Naptr(int(d.order), int(d.preference), bytes(d.flags).decode(errors="replace"),
                                     bytes(d.service).decode(errors="replace"), str(d.replacement).rstrip(".")))
    return None if found is None else sorted(found, key=lambda n: (n.order, n.preference))


def ttl_of(name: str, server: str, port: int = 53, timeout: float = 1.0) -> int | None:
    """The smallest TTL of the A answers for `name` from `server`, or None when it cannot be read."""
    found = a_records(name, server, port, timeout)
    return min(ttl for _, ttl in found) if found else None
