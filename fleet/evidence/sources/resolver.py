"""Names resolved as a site's phones resolve them: through the site's DNS server, as RFC 3263 says for a server.

Which phone and server a REGISTER was for follows from the addresses each phone's servers resolve to, so wire
attribution (fleet.evidence.sources.targets) and the HEP source's senders ask here.
"""
from __future__ import annotations

import contextlib
import logging
import socket

from fleet.base import dns as dns_client

log = logging.getLogger(__name__)


class SiteResolver:
    """Names resolved as the site's phones resolve them: through the site's DNS server (fleet.base.dns, which
    asks that server only and reads only the reply to its own query), else this host's resolver.

    `__call__(name)` gives a name's addresses; `locate(name, transport)` follows a server name with port 0 the
    way a phone in DNSnaptr mode does (RFC 3263): NAPTR for the name (the most preferred of SIP+D2U, SIP+D2T,
    SIPS+D2T picks the transport and the SRV name), else SRV `_sip._udp.NAME`; each SRV target's A records at
    the SRV port; with no SRV answer the name's A records at 5060. Without a site DNS server there is no SRV
    (this host's resolver has no SRV question): A and 5060. When the server does not answer, what a name
    resolved to before is kept (an outage may block DNS)."""

    NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}

    def __init__(self, dns: str | None, timeout: float = 2.0) -> None:
        self.dns = dns
        self.timeout = timeout
        self.cache: dict[str, list[str]] = {}
        self.located: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
        self._round: set | None = None       # inside one_round(): what was asked already (answered or not)

    @contextlib.contextmanager
    def one_round(self):
        """Within the block every name (and located server) is asked once: a rebuild of a site's targets asks
        the same provider name for every phone, and while DNS does not answer (an outage) each question would
        wait out the timeout again."""
        self._round = set()
        try:
            yield self
        finally:
            self._round = None

    def _asked(self, key) -> bool:
        """True when `key` was asked already in this round (its answer, or the kept one, is in the cache)."""
        if self._round is None:
            return False
        if key in self._round:
            return True
        self._round.add(key)
        return False

    def _server(self) -> tuple[str, int]:
        assert self.dns
        host, sep, port = self.dns.rpartition(":")
        if not sep or not port.isdigit() or "]" in port:      # "10.0.0.1" or "[::1]": port 53
            return self.dns.strip("[]"), 53
        return host.strip("[]"), int(port)

    def __call__(self, name: str) -> list[str]:
        if self._asked(name):
            return self.cache.get(name, [])
        try:
            found = self._query(name)
        except Exception as exc:  # no answer now: keep what it resolved to before (an outage may block DNS)
            log.debug("cannot resolve %s: %s", name, exc)
            found = []
        if found:
            self.cache[name] = found
        return self.cache.get(name, [])

    def _query(self, name: str) -> list[str] | None:
        if not self.dns:
            return sorted({ai[4][0] for ai in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)})
        host, port = self._server()
        found = dns_client.a_records(name, host, port, timeout=self.timeout)
        return sorted({ip for ip, _ in found}) if found else []

    def locate(self, name: str, transport: str = "") -> list[tuple[str, int, str]]:
        """[(ip, port, kind)] the phone may send a REGISTER for server `name` (port 0) to; kind udp/tcp/tls."""
        key = (name, transport.lower())
        if self._asked(key):
            return self.located.get(key, [])
        try:
            found = self._locate(name, transport.lower())
        except Exception as exc:  # a resolver bug or garbage: keep the previous answer
            log.debug("cannot locate %s: %s", name, exc)
            found = None
        if found:
            self.located[key] = found
        return self.located.get(key, [])

    def _locate(self, name: str, transport: str) -> list[tuple[str, int, str]] | None:
        if not self.dns:
            return [(ip, 5060, "udp") for ip in self(name)]
        host, port = self._server()
        kind, srv_name = "udp", f"_sip._udp.{name}"
        if transport != "udponly":
            naptr = dns_client.naptr_records(name, host, port, timeout=self.timeout)
            if naptr is None:
                return None                     # no answer: keep the previous one
            usable = [n for n in naptr if n.service.upper() in self.NAPTR_SERVICES and n.flags.lower() == "s"
                      and n.replacement]
            if usable:
                kind, srv_name = self.NAPTR_SERVICES[usable[0].service.upper()], usable[0].replacement
        srv = dns_client.srv_records(srv_name, host, port, timeout=self.timeout)
        if srv is None:
            return None
        out: list[tuple[str, int, str]] = []
        for rec in srv:
            if rec.target in ("", ".") or not 0 < rec.port < 65536:
                continue                        # "." : the service is decidedly not available there
            for ip in self(rec.target):
                if (ip, rec.port, kind) not in out:
                    out.append((ip, rec.port, kind))
        if srv:
            return out
        return [(ip, 5061 if kind == "tls" else 5060, kind) for ip in self(name)]     # no SRV: A records
