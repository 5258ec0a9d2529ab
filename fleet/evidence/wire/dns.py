"""A phone's failed DNS lookup of a server's name, seen on the wire, as evidence that it lost that server then.

A phone re-resolves a server's name when the answer's TTL runs out. When the
lookup fails (no answer within its timeout, SERVFAIL, NXDOMAIN) the phone
counts the server as down and sends it no REGISTER at all: a SIP capture
alone sees nothing until the binding lapses, up to a whole expiry later. The
lookup itself is on the wire, so the capture's filter takes the site's DNS
traffic and this module turns it into per-server observations:

- `parse` reads the header and the first question of a DNS message: linear in
  its size, bounded (255-octet names at most, compression pointers followed a
  bounded number of times, only backwards), None for anything malformed.
- `DnsLookups` pairs queries with answers per (phone address, port, id). A
  lookup is attributed only by the query's source address, which must be a
  phone's own (its target's `phone_ip`), and only to the servers whose
  configured name it asks for. Only A questions count: a NAPTR or SRV question
  that fails is followed by an A lookup (a site without SRV records answers
  NXDOMAIN there every time). A failure answer (or one with no address)
  becomes an UNREGISTERED observation at the answer's time; a lookup left
  unanswered (and not retried) for `wait` seconds
  becomes one that bounds the moment: `earliest` the last try (the phone gave
  up after it), `t` the last try plus `wait`. A successful answer clears it.
Its table is bounded (`max_pending`); what it drops or cannot parse is counted.
"""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from soundpoint.values import hostport

from fleet.state.observe import UNREGISTERED, Observation

DNS_PORT = 53
MAX_NAME = 255            # RFC 1035: a name's wire form is at most 255 octets
MAX_POINTERS = 16         # compression pointers followed in one name before it is called malformed
NO_ANSWER_WAIT = 3.0      # seconds without an answer or a retry before a lookup counts as failed
RCODE_TEXT = {2: "SERVFAIL", 3: "NXDOMAIN"}
QTYPE_A = 1


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    response: bool
    rcode: int
    answers: int
    qname: str        # lower case, no trailing dot; "" when the message has no question
    qtype: int = 0    # the first question's type (1: A); 0 when there is none


def _name(data: bytes, pos: int) -> tuple[str, int] | None:
    """The name at `pos` and the offset after it (in the message, not after a pointer's target)."""
    labels: list[str] = []
    size, end, hops, limit = 0, None, 0, pos
    while True:
        if pos >= len(data):
            return None
        n = data[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or hops >= MAX_POINTERS:
                return None
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= limit:             # only backwards: no loop, total work bounded by the message
                return None
            end = pos + 2 if end is None else end
            pos, limit, hops = target, target, hops + 1
            continue
        if n & 0xC0:
            return None
        pos += 1
        if n == 0:
            return ".".join(labels).lower(), (pos if end is None else end)
        size += n + 1
        if size > MAX_NAME or pos + n > len(data):
            return None
        labels.append(data[pos:pos + n].decode("ascii", "replace"))
        pos += n


def parse(data: bytes) -> DnsMessage | None:
    """A DNS message's header and first question; None when it is not one."""
    if len(data) < 12 or len(data) > 65535:
        return None
    ident, flags, qd, an = struct.unpack_from("!HHHH", data)
    if flags & 0x7800:                      # opcode other than QUERY
        return None
    qname, qtype = "", 0
    if qd:
        found = _name(data, 12)
        if found is None or found[1] + 4 > len(data):
            return None
        qname, qtype = found[0], struct.unpack_from("!H", data, found[1])[0]
    return DnsMessage(ident, bool(flags & 0x8000), flags & 0x000F, an, qname, qtype)


def site_dns_ports(dns: str | None) -> tuple[int, ...]:
    """The DNS ports a site's capture must let through: 53, and the port of the site's configured DNS server
    (`dns: host:port` in the inventory, already validated there)."""
    ports = {DNS_PORT}
    if dns:
        try:
            ports.add(hostport(dns, "dns")[1])
        except ValueError:
            pass
    return tuple(sorted(ports))


def server_name(qname: str) -> str:
    """The name a question is about: `_sip._udp.voip.example` (SRV) is about voip.example."""
    labels = qname.rstrip(".").lower().split(".")
    while labels and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)


@dataclass
class _Lookup:
    """One phone's lookup of one name: its tries (port, id) and when the first and the last were sent."""
    dns: str
    first: float
    last: float
    tries: set[tuple[int, int]]


MAX_TRIES = 16       # tries remembered per lookup (a phone retries a few times; more is a flood)


class DnsLookups:
    """Queries from the phones, paired with their answers; failed lookups out as observations.

    `targets` are the site's wire targets (fleet.evidence.wire.attribution.WireTarget): their `mac`,
    `reg`, `server`, `phone_ip` and `uri_host` (the configured server name) are what a lookup is matched on.
    `ports` are the DNS server ports the capture lets through (53 and the site's own)."""

    def __init__(self, targets: Iterable, source: str = "wire", ports: Iterable[int] = (DNS_PORT,),
                 wait: float = NO_ANSWER_WAIT, max_pending: int = 10_000) -> None:
        self.source, self.wait, self.max_pending = source, wait, max_pending
        self.ports = frozenset(ports) | {DNS_PORT}
        self.targets: dict[tuple[str, str], list] = {}
        self.retarget(targets)
        self._lookups: dict[tuple[str, str], _Lookup] = {}            # (phone ip, name) -> its lookup
        self._tries: dict[tuple[str, int, int], tuple[str, str]] = {}  # (phone ip, port, id) -> (phone ip, name)
        self.stats: Counter[str] = Counter()

    def retarget(self, targets: Iterable) -> None:
        """New targets (a rollout, DNS moved a server): lookups in flight stay, matched on the new ones."""
        self.targets = {}
        for t in targets:
            if t.phone_ip and t.uri_host:
                self.targets.setdefault((t.phone_ip, t.uri_host), []).append(t)

    def is_dns(self, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        return dst[1] in self.ports or src[1] in self.ports

    def feed(self, t: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> list[Observation]:
        msg = parse(payload)
        if msg is None:
            self.stats["dns_malformed"] += 1
            return []
        if msg.qtype != QTYPE_A:
            # only the address lookup is the phone's last word on a name: a NAPTR or SRV question that fails is
            # followed by an A lookup (a site without SRV records answers NXDOMAIN there every time), and AAAA
            # answers say nothing of an IPv4 phone
            self.stats["dns_not_a"] += 1
            return []
        if not msg.response:
            self._query(t, src, dst, msg)
            return []
        key = self._tries.get((dst[0], dst[1], msg.id))
        lookup = self._lookups.get(key) if key else None
        if key is None or lookup is None or lookup.dns != src[0]:   # an answer from another host than the one asked
            self.stats["dns_unmatched_answers"] += 1
            return []
        self._forget(key)
        if msg.rcode in RCODE_TEXT or (msg.rcode == 0 and msg.answers == 0):
            self.stats["dns_failed"] += 1
            said = RCODE_TEXT.get(msg.rcode, "no address in the answer")
            return self._lost(key, t, None, f"DNS lookup of {key[1]} failed: {said}")
        self.stats["dns_answered"] += 1
        return []

    def _query(self, t: float, src: tuple[str, int], dst: tuple[str, int], msg: DnsMessage) -> None:
        key = (src[0], server_name(msg.qname))
        if key not in self.targets:       # not a phone's own address, or not a server's name
            self.stats["dns_other_queries"] += 1
            return
        lookup = self._lookups.get(key)
        if lookup is None:
            if len(self._lookups) >= self.max_pending:
                self._forget(next(iter(self._lookups)))
                self.stats["dns_evicted"] += 1
            lookup = self._lookups[key] = _Lookup(dst[0], t, t, set())
        lookup.last = max(lookup.last, t)
        if len(lookup.tries) < MAX_TRIES:
            lookup.tries.add((src[1], msg.id))
            self._tries[(src[0], src[1], msg.id)] = key
        self.stats["dns_queries"] += 1

    def _forget(self, key: tuple[str, str]) -> None:
        lookup = self._lookups.pop(key, None)
        for port, ident in lookup.tries if lookup else ():
            self._tries.pop((key[0], port, ident), None)

    def expire(self, now: float) -> list[Observation]:
        """Lookups with neither an answer nor a retry for `wait` seconds: the phone gave up on the server between
        its last try and `wait` after it (the observation's `earliest` and `t`)."""
        out: list[Observation] = []
        for key in [k for k, v in self._lookups.items() if now - v.last >= self.wait]:
            lookup = self._lookups[key]
            self._forget(key)
            self.stats["dns_unanswered"] += 1
            out += self._lost(key, lookup.last + self.wait, lookup.last,
                              f"DNS lookup of {key[1]} unanswered ({len(lookup.tries)} tries, the last "
                              f"{lookup.last - lookup.first:.1f}s after the first; none within {self.wait:g}s)")
        return out

    def _lost(self, key: tuple[str, str], t: float, earliest: float | None, detail: str) -> list[Observation]:
        seen: set[tuple[str, int, int]] = set()
        out = []
        for target in self.targets.get(key, ()):
            ident = (target.mac, target.reg, target.server)
            if ident in seen:
                continue
            seen.add(ident)
            out.append(Observation(mac=target.mac, t=t, source=self.source, reg=target.reg, server=target.server,
                                   state=UNREGISTERED, address=key[0], detail=detail, earliest=earliest))
        return out
