"""Asking a site's DNS server for a name's A records: the one query fleet makes to a site's DNS.

Two callers: the `DNSTTL` failback bound needs the TTL the site's server gives
the primary's name (`ttl_of`), and the LAN-side provider probe resolves the
provider's name as the phones do (drivers.probe.resolve). One A query over UDP
(dnslib builds and parses it); any failure is "unknown" (None), never an
exception: a missing TTL leaves that bound unset, and the verdict says so,
rather than guessing a number.
"""
from __future__ import annotations

import random
import socket
import time

from dnslib import QTYPE, DNSRecord, DNSError


def a_records(name: str, server: str, port: int = 53, timeout: float = 1.0) -> list[tuple[str, int]] | None:
    """The (address, TTL) of each A answer for `name` from `server`, in answer order; None when none can be read.

    The socket is connected to the server, so only its datagrams count, and an answer to another query (another
    id) is skipped until the timeout.
    """
    query = DNSRecord.question(name, "A")
    query.header.id = random.randint(0, 65535)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((server, port))
            sock.send(query.pack())
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                reply = DNSRecord.parse(sock.recv(4096))
                if reply.header.id == query.header.id:
                    break
    except (OSError, DNSError, ValueError):      # no answer in time, a socket error
        return None
    except Exception:  # dnslib raises several other types on garbage: a garbled answer is no answer
        return None
    found = [(str(rr.rdata), int(rr.ttl)) for rr in reply.rr if rr.rtype == QTYPE.A]
    return found or None


def ttl_of(name: str, server: str, port: int = 53, timeout: float = 1.0) -> int | None:
    """The smallest TTL of the A answers for `name` from `server`, or None when it cannot be read."""
    found = a_records(name, server, port, timeout)
    return min(ttl for _, ttl in found) if found else None
