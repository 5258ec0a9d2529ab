"""A site's wire targets: which phone, line and server each REGISTER is for, from the configuration each phone runs.

Config to targets: what a rollout last pushed, else the inventory (the collector's `phone_params`), read through
fleet.phoneconf.servers (the lines and servers the rollout's load check counts too): each registration's user,
and its servers' addresses resolved the way the phone resolves them (`SiteResolver`, through the site's DNS
server where the inventory names one). `Targets` keeps them current for every source of the site; `Follower`
keeps one source's pipeline on them.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from fleet.config.inventory import Phone, Site
from fleet.phoneconf import servers
from fleet.phoneconf.predict import server_timing
from fleet.phoneconf.servers import phone_servers, registration_user, registrations
from fleet.evidence.wire.attribution import Attribution, Unobservable, WireTarget, targets_for
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.evidence.wire.transactions import T1_TIMEOUT
from fleet.evidence.sources.resolver import SiteResolver

log = logging.getLogger(__name__)
RETARGET_S = 60.0          # how often attribution is rebuilt (DNS answers and pushed configurations change)
RETARGET_SOON_S = 5.0      # ... or this soon when REGISTERs went to addresses no target has (a rollout moved them)


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
    one at its address (fleet.phoneconf.servers.gateway_server)."""
    configured = site.gateway_registrar.server if site.gateway_registrar is not None else None
    return servers.gateway_server(params, reg, site.gateway, configured)


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
            # by_mac before wire: a reader that takes `wire` and then `by_mac` (GatewayPoller) gets one rebuild's pair
            self.by_mac = by_mac
            self.wire = wire
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


def unobservable(targets: list[WireTarget], kinds: set[str]) -> list[dict]:
    """The targets none of the site's wire sources (`kinds`: "wire" for a capture, "hep") can see, one per phone,
    registration and server, with why: what `fleet status` and the experiment report show as "not observable
    on the wire" instead of reading silence as an outage."""
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
