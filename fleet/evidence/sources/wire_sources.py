"""The per-server evidence sources a site's collector runs: what the inventory's `capture` and `gateway` name.

- a router capture: `tcpdump -U -w -` run through the router's SSH (the command per router platform is
  data, pcap_stream.CAPTURE_COMMANDS), its stdout parsed as it arrives;
- a local capture: tcpdump on a mirror port of this host (needs CAP_NET_RAW);
- HEP v3 datagrams from the site's SIP servers (the collector's event loop listens; `HepSource` decodes);
- the gateway's registrar bindings, polled over the router's SSH every `interval` seconds.

Each source runs on its own thread with its own decoder, so a slow or broken one never holds up another,
and everything it could raise is caught: a malformed stream is logged and the source restarts after a
pause that grows with each failure. Observations and the SIP datagrams seen reach the collector through
the two callbacks of `Sink`, which must be safe to call from any thread.

Which phone and server a REGISTER was for follows from the configuration each phone runs (what a rollout
last pushed, else the inventory): its registration user, and its servers' addresses resolved the way the
phone resolves them (through the site's DNS server where the inventory names one).
"""
from __future__ import annotations

import contextlib

import ipaddress
import logging
import re
import socket
import threading
from abc import ABCMeta, abstractmethod
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from fleet.base import dns as dns_client
from fleet.config.inventory import Capture, Credentials, Phone, Site
from fleet.state.observe import Observation
from fleet.phoneconf.predict import server_timing
from fleet.evidence.sources import gateway_bindings
from fleet.evidence.sources.local_capture import CaptureUnavailable, start_local_capture
from fleet.evidence.wire.dns import DnsLookups, site_dns_ports
from fleet.evidence.wire.pcap import PcapFormatError, PcapStreamParser, capture_command
from fleet.evidence.wire.transactions import T1_TIMEOUT
from fleet.evidence.wire.guard import ByteBudget, ClockGuard, DropHealth, SenderClocks, SenderDrops
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.attribution import Attribution, WireTarget, foreign_counts, targets_for
from fleet.evidence.wire.pipeline import WireEvidence

log = logging.getLogger(__name__)
RETARGET_S = 60.0          # how often attribution is rebuilt (DNS answers and pushed configurations change)
RETARGET_SOON_S = 5.0      # ... or this soon when REGISTERs went to addresses no target has (a rollout moved them)
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
# Per source: bytes of SIP it may decode per second, and at once, each message charged DECODE_MESSAGE_COST bytes
# on top of its own (decoding a 400-byte REGISTER costs about what 2,000 more bytes of a large message do:
# bench/evidence.py's figures). Above a 5,000-phone site re-registering after an outage (some 20,000 messages,
# 20 MB, over several seconds: 60 MB charged), and a bound on the CPU one flooded source can take (some 0.1 s per
# second for large messages at ~160 MB/s decoded, as for 6,000 tiny ones per second).
DECODE_RATE, DECODE_BURST, DECODE_MESSAGE_COST = 16e6, 32e6, 2000
CLOCK_TOLERANCE_S = 10.0   # how far a packet's clock offset may stray from what the source's recent packets agree on
HEP_MAX_SKEW_S = 300.0     # HEP agents are SIP servers (NTP): a packet stamped further from our clock is dropped
MAX_HEP_SENDERS = 64       # senders a HEP source keeps a clock guard and drop health for (the inventory names fewer)


def guarded_evidence(source: str, targets: "Targets", max_skew: float | None,
                     health: DropHealth | SenderDrops | None = None, per_sender: bool = False) -> WireEvidence:
    """A live source's pipeline: local stamps, lapses, its own byte budget and clock guard (source_guard);
    `per_sender`: a clock guard per sender address (HEP: each SIP server's clock is its own)."""
    def guard() -> ClockGuard:
        return ClockGuard(tolerance=CLOCK_TOLERANCE_S, max_skew=max_skew)

    return WireEvidence(Attribution(targets.wire, source), source=source, stamp="local", lapse=True,
                        timeouts=transaction_timeouts(targets.wire, targets.by_mac),
                        budget=ByteBudget(DECODE_RATE, DECODE_BURST, per_message=DECODE_MESSAGE_COST),
                        clock_guard=SenderClocks(guard, MAX_HEP_SENDERS) if per_sender else guard(), health=health)


def with_drops(health: dict, drops: DropHealth | SenderDrops, since: list[float | None]) -> dict:
    """A source's health as `fleet status` shows it, failing also while it drops most of what it gets
    (`since` holds when that began, kept by the caller between calls)."""
    why = drops.failing()
    if not why:
        since[0] = None
        return health
    if health.get("error"):
        return health
    since[0] = since[0] or time.time()
    return health | {"error": why, "since": since[0]}


@dataclass
class Sink:
    """Where sources deliver: `observe(list[Observation])`, and `keep(source, list[Datagram])` for the
    capture an experiment keeps. Both are called from source threads."""
    observe: Callable[[list[Observation]], None]
    keep: Callable[[str, list[Datagram]], None]


# ---------------------------------------------------------------- attribution from the phones' configuration

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


def outbound_proxy(params: dict[str, str], reg: int = 1) -> dict | None:
    """The registration's outbound proxy ({address, port, transport}; port 0 = the transport's default):
    reg.x.outboundProxy.* where set, else the phone-wide voIpProt.SIP.outboundProxy.*; None without one."""
    for prefix in (f"reg.{reg}.outboundProxy.", "voIpProt.SIP.outboundProxy."):
        address = str(params.get(prefix + "address") or "").strip()
        if address:
            port = str(params.get(prefix + "port") or "").strip()
            return {"address": address, "port": int(port) if port.isdigit() and int(port) <= 65535 else 0,
                    "transport": str(params.get(prefix + "transport") or "")}
    return None


def phone_servers(params: dict[str, str], reg: int = 1) -> list[dict]:
    """The servers of one registration with what attribution needs: index, address, port, transport, register,
    and `proxy` (outbound_proxy) for a server whose requests go through it (reg.x.server.y.useOutboundProxy,
    default 1). Whole-server precedence, as the phone reads them: once reg.x.server.y.address is set, that
    server's values all come from reg.x.server.y.*; voIpProt.server.y.* serves only a server without one."""
    proxy = outbound_proxy(params, reg)
    out = []
    for y in range(1, 10):
        timing = server_timing(params, reg, y)
        if timing is None:
            continue
        prefix = f"reg.{reg}.server.{y}." if timing.source == "reg" else f"voIpProt.server.{y}."
        port = str(params.get(prefix + "port") or "").strip()
        server = {"index": y, "address": timing.address, "port": int(port) if port.isdigit() else 0,
                  "transport": str(params.get(prefix + "transport") or ""), "register": timing.register,
                  "expires": timing.expires}
        if proxy and str(params.get(f"reg.{reg}.server.{y}.useOutboundProxy", "1")).strip() != "0":
            server["proxy"] = proxy
        out.append(server)
    return out


def registration_user(params: dict[str, str], reg: int = 1) -> str:
    """The user part the phone registers as (reg.x.address, "1001" or "1001@example.com")."""
    addr = params.get(f"reg.{reg}.address", "")
    return addr.removeprefix("sip:").split("@", 1)[0]


_REG_ADDRESS = re.compile(r"reg\.([1-9][0-9]?)\.address")


def registrations(params: dict[str, str]) -> list[int]:
    """The registrations (lines) a phone registers: 1 always (a phone without reg.1.address still registers
    line 1, as whoever its servers know it by), and every other x with a reg.x.address."""
    found = {int(m[1]) for k, v in params.items() if str(v).strip() and (m := _REG_ADDRESS.fullmatch(k))}
    return sorted(found | {1})


def phone_ip(address: str, resolve: Callable[[str], list[str]]) -> str:
    """The inventory's phone address as a capture shows the phone's packets come from: an IP address as
    decoders print it; a name resolved (when it resolves to one address), else left as it is."""
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        found = resolve(address)
        return found[0] if len(found) == 1 else address


def phone_allowed(site: Site, phone: Phone, ip: str, resolve: Callable[[str], list[str]]) -> tuple[str, ...]:
    """Where else the inventory accepts a phone's SIP from (WireTarget.allowed): its own `allow_from`, the site's
    `collector.allow_from`, and every address its host name resolves to when that is several (`ip` then is
    the name itself, which no packet comes from). Never empty for a phone whose name resolves to nothing: it
    gets its unresolved name as address, which admits nobody (foreign until the name resolves)."""
    extra = list(phone.allow_from) + list(site.collector.allow_from)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        extra += resolve(phone.address)
    return tuple(dict.fromkeys(extra))


def site_targets(site: Site, params_by_mac: dict[str, dict[str, str]], resolve: Callable[[str], list[str]]
                 ) -> list[WireTarget]:
    """Every registration's targets (observations then carry reg=x): a phone's line 2 REGISTERs are its own,
    neither unattributed nor taken for line 1's. Each carries where the phone may send from (its address and
    `phone_allowed`): SIP naming the phone from anywhere else is foreign."""
    out: list[WireTarget] = []
    for phone in site.phones:
        params = params_by_mac.get(phone.mac) or {}
        ip = phone_ip(phone.address, resolve)
        allowed = phone_allowed(site, phone, ip, resolve)
        for reg in registrations(params):
            out += [replace(t, allowed=allowed) for t in
                    targets_for(phone.mac, reg, registration_user(params, reg), phone_servers(params, reg), resolve,
                                phone_ip=ip)]
    return out


def transaction_timeouts(targets: list[WireTarget], params_by_mac: dict[str, dict[str, str]]
                         ) -> dict[tuple, float]:
    """Per server address, how long a REGISTER may go unanswered before the phone itself gives up on it
    (retryTimeOut x (retryMaxCount + 1), else Timer F): the longest among the phones using that address; and
    per (address, Request-URI host) the same for the servers behind one outbound proxy, which may differ."""
    out: dict[tuple, float] = {}
    for t in targets:
        timing = server_timing(params_by_mac.get(t.mac, {}), t.reg, t.server)
        tx = min(T1_TIMEOUT, timing.transaction_timeout) if timing is not None else T1_TIMEOUT
        for key in (t.address, (*t.address, t.uri_host)) if t.uri_host else (t.address,):
            out[key] = max(out.get(key, 0.0), tx)
    return out


def gateway_server(site: Site, params: dict[str, str], reg: int = 1) -> int | None:
    """Which server of this phone's registration `reg` the site's gateway is: the inventory says, else the
    one at its address."""
    if site.gateway_registrar is not None and site.gateway_registrar.server:
        return site.gateway_registrar.server
    return next((s["index"] for s in phone_servers(params, reg) if s["address"] == site.gateway), None)


# ---------------------------------------------------------------- sources

class Targets:
    """The site's targets, rebuilt every RETARGET_S from `params()` (the configuration each phone runs).
    Several source threads share one Targets: `refresh` holds a lock, so one rebuild runs at a time and the
    targets, the configuration and the generation always belong together."""

    def __init__(self, site: Site, params: Callable[[], dict[str, dict[str, str]]]) -> None:
        self.site, self.params = site, params
        self.resolve = SiteResolver(site.dns)
        self.at = 0.0
        self.wire: list[WireTarget] = []
        self.by_mac: dict[str, dict[str, str]] = {}
        self.generation = 0
        self.lock = threading.Lock()
        # the wire sources' pipelines, by source object: where the gateway source finds the addresses they learned
        self.pipelines: dict[int, WireEvidence] = {}

    def learned_addresses(self, now: float) -> dict[str, tuple[str, ...]]:
        """Per phone (mac), the addresses a wire source learned from a registration the server authenticated and
        still believes at `now` (this host's clock: each learned time is in its source's packet time, shifted by
        that source's clock offset). Read from another thread than the sources': copies only."""
        out: dict[str, dict[str, None]] = {}
        for ev in list(self.pipelines.values()):
            shift = ev.clock.offset if ev.stamp == "local" else 0.0
            for (mac, ip), until in dict(ev.build.attribution.learned).items():
                if until + shift >= now:
                    out.setdefault(mac, {})[ip] = None
        return {mac: tuple(ips) for mac, ips in out.items()}

    def refresh(self, force: bool = False, soon: bool = False) -> bool:
        """Rebuild when `force`, when RETARGET_S passed, or (`soon`: traffic nobody's target fits) when
        RETARGET_SOON_S passed; True when it rebuilt them. Sources share one Targets and follow its
        `generation` (see `Follower`)."""
        with self.lock:
            age = time.monotonic() - self.at
            if not force and age < (RETARGET_SOON_S if soon else RETARGET_S):
                return False
            self.at = time.monotonic()
            try:
                by_mac = self.params()
                with self.resolve.one_round():
                    wire = site_targets(self.site, by_mac, self.resolve)
            except Exception as exc:
                log.warning("site %s: cannot rebuild wire targets (%s); keeping the previous ones", self.site.name, exc)
                return False
            self.wire, self.by_mac = wire, by_mac
            self.generation += 1
            return True


UNMATCHED_REMEMBERED = 4096    # unmatched (destination, user) keys a Follower remembers having rebuilt for


class Follower:
    """Keeps one pipeline on the site's current targets: call `tick()` about once a second.

    REGISTERs nobody's target fits ask for a rebuild within RETARGET_SOON_S (a rollout may have moved
    phones), but each unmatched destination and user only once: traffic that will never match (another
    system's trunk, a phone outside the inventory) would otherwise rebuild the targets every few seconds
    forever. What still fits nothing after its rebuild waits for the regular one every RETARGET_S."""

    def __init__(self, ev: WireEvidence, targets: Targets) -> None:
        self.ev, self.targets = ev, targets
        self.generation = targets.generation
        self.tried: set[tuple] = set()    # unmatched keys that already asked for their rebuild
        self.reading: Attribution | None = None
        self.read = 0                     # how many of `reading.unmatched` were looked at
        self.soon = False                 # a rebuild was asked for and has not happened yet

    def tick(self) -> None:
        self.refresh()
        self.apply()

    def refresh(self) -> None:
        """The slow half (Redis, DNS): may run on another thread than the pipeline's."""
        attribution = self.ev.build.attribution
        if attribution is not self.reading:
            self.reading, self.read = attribution, 0
        keys = attribution.unmatched[self.read:]
        self.read += len(keys)
        new = [k for k in keys if k not in self.tried]
        if len(self.tried) + len(new) > UNMATCHED_REMEMBERED:
            self.tried.clear()
        self.tried.update(new)
        self.soon = self.soon or bool(new)
        if self.targets.refresh(soon=self.soon):
            self.soon = False

    def apply(self) -> None:
        """The quick half: on the pipeline's own thread."""
        if self.targets.generation != self.generation:
            self.generation = self.targets.generation
            old = self.ev.build.attribution
            self.ev.build.attribution = Attribution(self.targets.wire, self.ev.source, foreign=old.foreign,
                                                    learned=old.learned)
            self.ev.matcher.timeouts = transaction_timeouts(self.targets.wire, self.targets.by_mac)
            if self.ev.dns is not None:
                self.ev.dns.retarget(self.targets.wire)


class SourceThread(threading.Thread, metaclass=ABCMeta):
    """One source on a thread of its own: `run_once()` until it returns or raises, then again after a pause
    (growing with consecutive failures) until `stop()`."""

    label = "source"

    def __init__(self, site: Site, sink: Sink) -> None:
        super().__init__(name=f"{self.label}-{site.name}", daemon=True)
        self.site, self.sink = site, sink
        self.stopping = threading.Event()
        self.failures = 0
        self.last_error = ""
        self.failing_since: float | None = None   # wall time of the first failure since it last delivered
        self.running = threading.Event()     # set while the source delivers (tests and status wait on it)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.run_once()
                self.failures = 0
            except Exception as exc:  # anything: a source never takes the collector down
                self.fail(f"{type(exc).__name__}: {exc}", after_running=self.running.is_set())
                log.warning("collector %s: %s failed (%s); restarting", self.site.name, self.label, self.last_error)
            self.running.clear()
            self.stopping.wait(BACKOFF[min(self.failures, len(BACKOFF) - 1)])

    def fail(self, why: str, after_running: bool = False) -> None:
        """Note a failure (for the collector's report in `fleet status`); `after_running`: it had worked, so
        this is a new failure (retried soon) rather than one more of a series."""
        self.failures = 1 if after_running else self.failures + 1
        if after_running or self.failing_since is None:
            self.failing_since = time.time()
        self.last_error = why[:300]

    def health(self) -> dict:
        """{source, running, error, since, foreign}: error and since are set while it fails (not after it delivers
        again); foreign counts, per source address, the messages naming a site's phone that came from an
        address not the phone's (never an observation)."""
        failing = bool(self.last_error) and not self.running.is_set()
        return {"source": self.label, "running": self.running.is_set(),
                "error": self.last_error if failing else "", "since": self.failing_since if failing else None,
                "foreign": self.foreign()}

    def foreign(self) -> dict[str, int]:
        """Foreign messages per source address so far (none for a source that attributes nothing)."""
        return {}

    @abstractmethod
    def run_once(self) -> None:
        """Deliver until the source ends (return) or fails (raise); `run` starts it again after a pause."""

    def stop(self) -> None:
        self.stopping.set()


class _WireThread(SourceThread):
    """Shared by the two capture sources: pcap bytes in, observations out, ticking once a second."""

    source = "wire"

    def __init__(self, site: Site, sink: Sink, capture: Capture, targets: Targets) -> None:
        super().__init__(site, sink)
        self.capture, self.targets = capture, targets
        self.evidence: WireEvidence | None = None
        self.ports: tuple[int, ...] = ()      # the ports the running capture's filter lets through
        self.drops = DropHealth()             # what it dropped lately, across capture restarts
        self._drops_since: list[float | None] = [None]

    def foreign(self) -> dict[str, int]:
        return foreign_counts(self.evidence.build.attribution.foreign) if self.evidence is not None else {}

    def _pipeline(self) -> WireEvidence:
        if self.targets.generation == 0:      # never built yet (run_once builds them before a capture starts)
            self.targets.refresh(force=True)
        ev = guarded_evidence(self.source, self.targets, None, self.drops)
        ev.dns = DnsLookups(self.targets.wire, self.source, site_dns_ports(self.site.dns))   # its filter takes DNS
        self.targets.pipelines[id(self)] = ev       # this source's current pipeline (a restart replaces it)
        return ev

    def health(self) -> dict:
        return with_drops(super().health(), self.drops, self._drops_since)

    def filter_ports(self) -> tuple[int, ...]:
        """The capture filter's ports: the servers' SIP ports and the site's DNS (a phone's failed lookup is
        evidence too: dns_evidence)."""
        return tuple(sorted(set(capture_ports(self.targets.wire)) | set(site_dns_ports(self.site.dns))))

    def pump(self, read: Callable[[float], bytes | None]) -> bool:
        """Read until the stream ends or we stop; every framing error ends this run (the caller restarts).
        True when it ended because the targets' ports changed (DNS moved a server, a rollout changed a port):
        the caller restarts the capture with a filter for the new ports."""
        ev = self.evidence = self._pipeline()
        follow = Follower(ev, self.targets)
        parser = PcapStreamParser()
        next_tick = time.monotonic() + 1.0
        ports_checked = self.targets.generation
        self.running.set()
        while not self.stopping.is_set():
            data = read(0.5)
            if data is None:
                if parser.pending:
                    raise PcapFormatError(f"the capture stream ended inside a record ({parser.pending} bytes)")
                return False
            out: list[Observation] = []
            kept: list[Datagram] = []
            for rec in parser.feed(data) if data else ():
                dg = ev.decoder.decode(rec.t, rec.linktype, rec.frame)
                if dg is not None:
                    out += ev.feed_datagram(dg, kept=kept)      # kept: only what was accepted and read
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                out += ev.tick()
                follow.tick()
            moved = False
            if self.ports and self.targets.generation != ports_checked:
                # the filter's ports change only with the targets (a new generation): checked once per generation
                ports_checked = self.targets.generation
                moved = capture_ports(self.targets.wire) != self.ports
            if kept:
                self.sink.keep(self.source, kept)
            if out:
                self.sink.observe(out)
            if moved:
                log.info("collector %s: %s restarts for ports %s", self.site.name, self.label,
                         capture_ports(self.targets.wire))
                return True
        return False


def unobservable(targets: list[WireTarget], kinds: set[str]) -> list[dict]:
    """The targets none of the site's wire sources (`kinds`: "wire" for a capture, "hep") can see, one per phone,
    registration and server, with why: what `fleet status` and the experiment report show as "not observable
    on the wire" instead of reading silence as an outage."""
    from fleet.evidence.wire.attribution import Unobservable

    out: dict[tuple, dict] = {}
    for t in targets:
        if kinds and not any(t.observable_by(k) for k in kinds):
            why = t.unseen_why(sorted(kinds)[-1])
            out.setdefault((t.mac, t.reg, t.server), Unobservable(t.mac, t.reg, t.server, t.address, why=why).to_dict())
    return list(out.values())


def capture_ports(targets: list[WireTarget]) -> tuple[int, ...]:
    """The destination ports a capture must let through: those of the targets it can see (a server's, an outbound
    proxy's, or what SRV gave), 5060 when there are none yet."""
    return tuple(sorted({t.address[1] for t in targets if t.observable_by("wire")})) or (5060,)


class RouterCapture(_WireThread):
    """tcpdump on the site router, its pcap stdout over the router's SSH."""

    label = "router capture"

    def __init__(self, site: Site, sink: Sink, capture: Capture, targets: Targets, credentials: Credentials) -> None:
        super().__init__(site, sink, capture, targets)
        self.credentials = credentials

    def command(self) -> str:
        return capture_command(self.capture.platform, self.capture.interface or "any", self.filter_ports())

    def run_once(self) -> None:
        from fleet.drivers.router import connect

        assert self.site.router is not None
        self.targets.refresh(force=True)
        command = self.command()
        self.ports = capture_ports(self.targets.wire)
        router = connect(self.site.router, self.credentials)
        try:
            stream = router.stream(command, what="capture")     # type: ignore[attr-defined]
            try:
                if not self.pump(stream.read) and not self.stopping.is_set():
                    raise PcapFormatError(stream.ended())
            finally:
                stream.close()
        finally:
            router.close()


class LocalCapture(_WireThread):
    """tcpdump on a local interface (a switch mirror port)."""

    label = "local capture"

    def run_once(self) -> None:
        import select

        self.targets.refresh(force=True)
        try:
            self.ports = capture_ports(self.targets.wire)
            proc = start_local_capture(self.capture.interface or "any", self.filter_ports())
        except CaptureUnavailable:
            self.failures = len(BACKOFF)       # not worth retrying quickly: it needs the host changed
            raise
        assert proc.stdout is not None
        fd = proc.stdout.fileno()

        def read(timeout: float) -> bytes | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            data = proc.stdout.read1(65536)     # type: ignore[union-attr]
            return data or None

        try:
            if not self.pump(read) and not self.stopping.is_set():
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
                raise PcapFormatError(f"tcpdump ended: {err[-1] if err else 'no message'}")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except Exception:
                proc.kill()


class HepSource:
    """HEP v3 from the site's SIP servers: fed by the collector's listener (its event loop), ticked by it.

    Decoding runs on the event loop in bounded slices: one datagram at a time, each at most 64 KB, read in
    linear time with its header lines capped (wire_sip.MAX_HEADER_LINE, MAX_HEADER_LINES), and no more bytes
    per second than the source's budget (DECODE_RATE, each message charged DECODE_MESSAGE_COST more): a flood
    costs the loop a bounded, small share of each second. Each sender (HEP agent) has its own clock guard and
    drop health: two servers whose clocks differ are each judged by their own, and one whose datagrams are
    mostly dropped shows the source failing, naming it."""

    source = "hep"

    def __init__(self, site: Site, sink: Sink, targets: Targets) -> None:
        """`targets` must be built already (its refresh blocks: not on the event loop)."""
        self.site, self.sink, self.targets = site, sink, targets
        self.drops = SenderDrops(MAX_HEP_SENDERS)     # per sender: one failing server shows, beside a healthy one
        self._drops_since: list[float | None] = [None]
        self.evidence = guarded_evidence(self.source, targets, HEP_MAX_SKEW_S, self.drops, per_sender=True)
        targets.pipelines[id(self)] = self.evidence
        self.follow = Follower(self.evidence, targets)
        self.listener = None      # the HepListener, once start_hep bound it

    def health(self) -> dict:
        """Like SourceThread.health (a HEP listener runs as long as the collector's event loop does): failing
        while most datagrams from its senders are dropped (no key, a wrong key, a clock far off, over the size
        caps or the byte budget); foreign messages per sender address."""
        return with_drops({"source": self.source, "running": True, "error": "", "since": None,
                           "foreign": foreign_counts(self.evidence.build.attribution.foreign)}, self.drops,
                          self._drops_since)

    def on_packet(self, pkt, addr) -> None:
        from fleet.evidence.wire import hep

        if pkt.proto_type != hep.PROTO_SIP or pkt.ip_proto not in (6, 17):
            return
        sender = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
        kept: list[Datagram] = []
        out = self.evidence.feed_datagram(pkt.datagram(), sender=sender, kept=kept)
        if kept:                          # only what was accepted (not over budget, clock or size caps)
            self.sink.keep(self.source, kept)
        if out:
            self.sink.observe(out)

    def tick(self) -> None:
        """On the event loop (where packets are fed): timeouts and lapses; `follow.refresh` runs elsewhere."""
        out = self.evidence.tick()
        self.follow.apply()
        if out:
            self.sink.observe(out)


def hep_senders(site: Site, capture: Capture) -> list[str]:
    """Who may send HEP: the inventory's senders, else the site's gateway (resolved when it is a name)."""
    if capture.senders:
        return list(capture.senders)
    if site.dns:        # a name: through the site's DNS server, as everything else of the site
        try:
            return [str(ipaddress.ip_address(site.gateway.strip("[]")))]
        except ValueError:
            return SiteResolver(site.dns)(site.gateway)
    try:
        return sorted({ai[4][0] for ai in socket.getaddrinfo(site.gateway, None, socket.AF_INET)})
    except OSError:
        return []


async def start_hep(site: Site, capture: Capture, source: HepSource, auth_keys: dict[str, bytes] | None = None):
    """Listen for the site's HEP; `auth_keys`: sender address -> its auth key (resolved capture.auth_keys)."""
    from fleet.evidence.sources.hep_listener import start_hep_listener

    host, _, port = (capture.listen or "").rpartition(":")
    senders = hep_senders(site, capture)
    if not senders:
        raise OSError(f"no HEP sender for site {site.name}: name them in capture.senders")
    transport, source.listener = await start_hep_listener(host.strip("[]"), int(port), senders, source.on_packet,
                                                          auth_keys, source.drops)
    return transport, source.listener


class GatewayPoller(SourceThread):
    """The gateway's registrar bindings, polled over the router's SSH every `interval` seconds."""

    label = "gateway bindings"

    def __init__(self, site: Site, sink: Sink, targets: Targets, credentials: Credentials) -> None:
        super().__init__(site, sink)
        assert site.gateway_registrar is not None
        self.registrar = site.gateway_registrar
        self.platform = gateway_bindings.platform(self.registrar.platform)
        self.targets, self.credentials = targets, credentials
        self.polls = 0
        self.foreign_bindings: Counter[str] = Counter()     # the last poll's bindings of a phone's user held from
                                                            # another address, per address

    def foreign(self) -> dict[str, int]:
        return foreign_counts(self.foreign_bindings)

    def gateway_targets(self, now: float | None = None) -> list[WireTarget]:
        """The gateway's server entry of each phone's lines; with `now`, each also admitting the addresses the
        site's wire sources learned for its phone (a phone DHCP moved, proved by a registration its server
        authenticated: Attribution._learn), so its binding from there is its own."""
        learned = self.targets.learned_addresses(now) if now is not None else {}
        out: dict[tuple[str, int, int], WireTarget] = {}
        for t in self.targets.wire:      # one per line (a name resolving to several addresses gives several)
            if t.server == gateway_server(self.site, self.targets.by_mac.get(t.mac, {}), t.reg):
                extra = tuple(ip for ip in learned.get(t.mac, ()) if ip != t.phone_ip and ip not in t.allowed)
                out.setdefault((t.mac, t.reg, t.server), replace(t, allowed=t.allowed + extra) if extra else t)
        return list(out.values())

    def run_once(self) -> None:
        from fleet.drivers.router import connect

        assert self.site.router is not None
        router = connect(self.site.router, self.credentials)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                self.targets.refresh()
                text = router.run(self.platform.command, check=False, what=f"{self.registrar.platform} bindings")  # type: ignore[attr-defined]
                t = time.time()
                try:
                    bindings = self.platform.parse(text, t)
                except gateway_bindings.GatewayOutputError as exc:
                    log.warning("collector %s: gateway answer not usable: %s", self.site.name, exc)
                    self.running.clear()            # no evidence from it: `fleet status` says why
                    self.fail(f"{type(exc).__name__}: {exc}")
                else:
                    self.running.set()
                    self.failures, self.failing_since, self.last_error = 0, None, ""
                    foreign: Counter[str] = Counter()
                    out = gateway_bindings.observations(bindings, self.gateway_targets(t), t, foreign=foreign)
                    self.foreign_bindings = foreign
                    self.polls += 1
                    if out:
                        self.sink.observe(out)
                self.stopping.wait(max(0.0, self.registrar.interval - (time.monotonic() - started)))
        finally:
            router.close()

