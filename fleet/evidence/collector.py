"""Collectors that run beside a site's worker: what phones push, and the per-server sources the inventory names.

Line level: telephone notification events (and syslog, whose registration
line is a format of ours) pushed by the phones, state polling. Per server:
SIP on the wire (a router capture over SSH, a local mirror-port capture, HEP
v3 from the SIP servers) and the gateway's registrar bindings: one module
each in fleet/evidence/sources/, found by the inventory's kind through the
kind table fleet.config.source_kinds. Push sources and the wire see a change the
moment it happens, so detection latency is the network's, not a polling
interval's. Observations are stored in batches (the first to arrive wakes the
flush loop, which gathers for GATHER_S more: fleet.evidence.flush_queue.Arrivals),
and the store derives per-server state and the working server (fleet.state.observe).

Whatever reaches a collector becomes a phone's registration state, so a
collector listens only on the addresses the inventory names (never a
wildcard) and drops datagrams and requests from any source that is not one of
the site's phones (or inside the site's `collector.allow_from` networks).
"""
from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import threading
import time

from aiohttp import web

from fleet.config import source_kinds
from fleet.evidence.flush_queue import Arrivals, FlushQueue
from fleet.evidence.sources.base import Sink, SourceContext, configured_sources, start_configured
from fleet.evidence.sources.formats import parse_line_event, parse_syslog
from fleet.evidence.sources.poller import Poller
from fleet.evidence.sources.targets import Targets, unobservable
from fleet.evidence.sources.udp_reader import DrainingReader, open_reader
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.metrics.exporter import ExporterError, start_exporters
from fleet.config.inventory import Inventory, Secrets, Site
from fleet.state.observe import Observation, from_line_info
from fleet.state.sites import register_site
from fleet.state import collectors as registry
from fleet.sites.users import SiteUsers
from fleet.state.store import RolloutStore, Store
from fleet.drivers.publish import open_publisher
from fleet.config.inventory import Credentials
from soundpoint.redact import redact
from fleet.state.lease import PhoneRestLock
from fleet.drivers.control.rest import uses_rest
from fleet import phones
from soundpoint import families
from fleet.drivers.control.polling import response_mode
from fleet.drivers.control.polling import parse_call_state
from fleet.drivers.errors import DriverError
from fleet.evidence.incidents import IncidentDetector
from fleet.phoneconf.predict import configured_servers, failover_max
from fleet.state.incidents import IncidentStore

log = logging.getLogger(__name__)
FLUSH_S = 0.02   # the flush loop's longest idle wait: a backlog waiting for its pace (flush_queue) and SIP datagrams
                 # kept for an experiment's capture are seen at most this (plus GATHER_S) late
GATHER_S = 0.004   # from an observation waking the flush loop to its store call: what comes with it goes in the same call
STOP_WITHIN_S = 10.0   # how long `stop` waits for the collector's thread (its listeners closed)
INCIDENT_TICK_S = 0.5   # how often the incident detector decides (fleet.evidence.incidents)


class CollectorError(RuntimeError):
    """A collector that cannot start (its address is taken, say); the message says which."""


WILDCARDS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})


def listen_address(site: Site, what: str, value: str) -> tuple[str, int]:
    """host and port from `collector.syslog` / `collector.events`; a wildcard host is refused (CollectorError)."""
    host, _, port = value.rpartition(":")
    if host.strip("[]") in WILDCARDS or host in WILDCARDS:
        raise CollectorError(f"site {site.name}: collector.{what} is {value}: name the address the phones send to "
                             f"(listening on every address would take observations from any network)")
    return host.strip("[]"), int(port)


class SourceFilter:
    """Which source addresses a site's collector accepts: the phones' own addresses and `collector.allow_from`.

    A report from a phone's own address may speak only for the phone(s) at
    that address, so one phone cannot pass itself off as another; from an
    `allow_from` network (phones the inventory has no address for) any of the
    site's phones.
    """

    def __init__(self, site: Site) -> None:
        self.site = site.name
        self.hosts: dict[str, set[str]] = {}     # address -> MACs of the phones there
        self.unresolved: list[str] = []
        for phone in site.phones:
            try:
                addresses = {str(ipaddress.ip_address(phone.address))}
            except ValueError:   # a host name: what it resolves to now
                try:
                    addresses = {str(ipaddress.ip_address(ai[4][0])) for ai in socket.getaddrinfo(phone.address, None)}
                except (OSError, ValueError):
                    self.unresolved.append(phone.mac)
                    continue
            for address in addresses:
                self.hosts.setdefault(address, set()).add(phone.mac)
        self.macs = {p.mac for p in site.phones}
        self.networks = [ipaddress.ip_network(n, strict=False) for n in site.collector.allow_from]
        self.dropped = 0
        self._logged: set[str] = set()

    def speaks_for(self, host: str) -> set[str]:
        """The MACs a report from `host` may be about; empty: drop it."""
        if host in self.hosts:
            return self.hosts[host]
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return set()
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if str(ip) in self.hosts:
            return self.hosts[str(ip)]
        return self.macs if any(ip in net for net in self.networks) else set()

    def allows(self, host: str) -> bool:
        return bool(self.speaks_for(host))

    def drop(self, host: str, what: str) -> None:
        """Count a dropped datagram or request; say so once per source (bounded, so a flood cannot fill memory)."""
        self.dropped += 1
        if host not in self._logged and len(self._logged) < 1000:
            self._logged.add(host)
            log.warning("collector %s: dropped %s from %s: not a phone of the site nor in collector.allow_from",
                        self.site, what, host)


class _Syslog(asyncio.DatagramProtocol):
    def __init__(self, sink: list[Observation], sources: SourceFilter) -> None:
        self.sink = sink
        self.sources = sources
        self.received = 0

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.datagram_stamped(data, addr, time.time())

    def datagram_stamped(self, data: bytes, addr, arrived: float) -> None:
        """`arrived`: the kernel's receive time (udp_reader), not when this loop got to it: a line stamped late
        under load says "registered" at a time the phone may already have been told to reboot."""
        self.received += 1
        macs = self.sources.speaks_for(addr[0])
        if not macs:
            self.sources.drop(addr[0], "syslog")
            return
        obs = parse_syslog(data, arrived)
        if obs is None:
            return
        if obs.mac not in macs:
            self.sources.drop(addr[0], f"syslog about phone {obs.mac}")
            return
        self.sink.append(obs)


class SiteCollector:
    def __init__(self, site: Site, store: Store, secrets: Secrets | None = None,
                 inventory: Inventory | None = None) -> None:
        self.site, self.store, self.secrets, self.inventory = site, store, secrets, inventory
        self.pending = Arrivals()                # arrived, not yet taken by the flush loop (it wakes it)
        self.unstored = FlushQueue()              # taken, waiting for their slice of a store call
        self._syslog_transport: DrainingReader | None = None    # the listeners `stop` closes
        self._runner: web.AppRunner | None = None
        self._unseen: list[dict] = []             # evidence_report's unobservable targets, for `_unseen_of`
        self._unseen_of: tuple | None = None      # (id of the targets list, kinds) they were worked out from
        self.kept: list[dict] = []           # SIP datagrams for the running experiment's capture.pcap
        self.observing: str | None = None    # that experiment
        self.evidence: list = []             # per-server evidence sources (base.EvidenceSource), as started
        self.source_errors: list[str] = []   # sources that could not start, and why
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"collector-{site.name}", daemon=True)
        self.errors = 0
        self.start_error: str | None = None
        self.sources = SourceFilter(site)
        self.site_users = self._site_users()
        self.record: registry.CollectorRecord | None = None    # announced once the listeners are up
        self.incidents: IncidentDetector | None = None          # passive outage detection, once started
        if self.sources.unresolved:
            log.warning("collector %s: %d phones have addresses that do not resolve (%s...): their reports are dropped "
                        "unless collector.allow_from covers them", site.name, len(self.sources.unresolved),
                        ", ".join(self.sources.unresolved[:3]))

    def start(self) -> None:
        listen_address(self.site, "syslog", self.site.collector.syslog)   # a wildcard fails here, before any thread
        listen_address(self.site, "events", self.site.collector.events)
        self.thread.start()
        if not self.ready.wait(10):
            raise CollectorError(f"collector for site {self.site.name} did not start within 10 s")
        if self.start_error:
            raise CollectorError(self.start_error)

    def stop(self) -> None:
        for source in self.evidence:
            source.stop()
        if self.record is not None:
            try:
                registry.withdraw(self.store, self.record)
            except Exception as exc:   # Redis away: the record expires by itself
                log.debug("collector %s: cannot withdraw its record (%s)", self.site.name, type(exc).__name__)
        if self.loop and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))
            except RuntimeError:      # the loop closed meanwhile: nothing left to shut down
                pass
        # back only once its listeners are closed: a worker started next for the site binds the same syslog and
        # events ports (left to the garbage collector, they were still bound now and then: "Address already in use")
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(STOP_WITHIN_S)
            if self.thread.is_alive():
                log.warning("collector %s: still stopping after %.0f s", self.site.name, STOP_WITHIN_S)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._syslog_transport is not None:
            self._syslog_transport.close()
        if self._runner is not None:
            await self._runner.cleanup()
        asyncio.get_running_loop().stop()

    # ------------------------------------------------------------------ per-server evidence sources
    def _site_users(self) -> SiteUsers | None:
        """Registration users from the site's boot files, for phones fleet knows none for (needs the secrets)."""
        if self.secrets is None:
            return None
        secrets, boot = self.secrets, self.site.boot_server

        def open_pub(url: str):
            return open_publisher(url, secrets.credentials(boot.credentials) if boot.credentials else Credentials())

        return SiteUsers(boot.url, open_pub, {p.mac: p.model for p in self.site.phones})

    def phone_params(self) -> dict[str, dict[str, str]]:
        """The configuration each phone runs: what a rollout last pushed, else the inventory's; a phone whose
        registration user neither gives takes it from the site's own boot files (`site_users`)."""
        pushed = RolloutStore(self.store).last_pushed([p.mac for p in self.site.phones])
        out = {}
        for p in self.site.phones:
            if pushed.get(p.mac):
                out[p.mac] = {k: str(v) for k, v in pushed[p.mac].items()}
            elif self.inventory is not None:
                out[p.mac] = self.inventory.effective_params(self.site, p)
            else:
                out[p.mac] = {k: str(v) for layer in (self.site.params, p.params) for k, v in layer.items()}
        return self.site_users.fill(out) if self.site_users is not None else out

    def sink(self) -> Sink:
        """Callbacks for source threads: everything reaches the lists on the event loop's own thread."""
        loop = self.loop
        assert loop is not None

        def observe(obs: list[Observation]) -> None:
            # a poll's whole answer is stored a slice at a time, behind what arrives meanwhile (flush_queue)
            loop.call_soon_threadsafe(self.unstored.defer if self.unstored.is_bulk(obs) else self.pending.extend, obs)

        def keep(source: str, datagrams: list[Datagram]) -> None:
            if self.observing is None:
                return
            rows = [{"t": d.t, "src": list(d.src), "dst": list(d.dst), "source": source,
                     "payload": base64.b64encode(d.payload).decode()} for d in datagrams]
            loop.call_soon_threadsafe(self.kept.extend, rows)

        return Sink(observe, keep)

    def _secret(self, name: str, what: str):
        """The named secret, for a source's `what` (a HEP auth key)."""
        if self.secrets is None:
            raise CollectorError(f"site {self.site.name}: {what} needs the secrets file")
        return self.secrets.credentials(name)

    def _credentials(self, what: str):
        if self.secrets is None or self.site.router is None:
            raise CollectorError(f"site {self.site.name}: {what} needs the router's credentials (a secrets file)")
        return self.secrets.credentials(self.site.router.credentials)

    async def _start_sources(self) -> None:
        """Start what the inventory names, each by its kind's module (source_kinds, base.start_source); a source
        that cannot start is logged and the others still run."""
        targets = self.targets = Targets(self.site, self.phone_params)
        await asyncio.to_thread(targets.refresh, True)
        self.sources_started = time.time()
        ctx = SourceContext(self.site, self.sink(), targets, self._credentials, self._secret)
        started, errors = await start_configured(ctx, (OSError, CollectorError, KeyError, ValueError))
        self.evidence.extend(started)
        for why in errors:
            self.source_errors.append(why)
            log.error("%s", why)
        if configured_sources(self.site):
            asyncio.ensure_future(self._evidence_report_loop())

    def evidence_report(self) -> tuple[list[dict], list[dict]]:
        """(unobservable, sources) for `Store.set_site_evidence`: the targets no wire source of the site can see,
        and each evidence source's state; errors pass through `_scrub` (no secret reaches Redis)."""
        kinds = {source_kinds.get(c.kind).sees for c in self.site.capture} - {""}
        targets = getattr(self, "targets", None)
        unseen = []
        if targets is not None and kinds:
            wire = targets.wire       # worked out once per rebuild of the targets (10,000 at a 5,000-phone site)
            if self._unseen_of != (id(wire), frozenset(kinds)):
                self._unseen, self._unseen_of = unobservable(wire, kinds), (id(wire), frozenset(kinds))
            unseen = self._unseen
        sources = []
        for why in self.source_errors:
            sources.append({"source": "not started", "running": False, "error": self._scrub(why), "since": self.sources_started})
        for source in self.evidence:
            h = source.health()
            sources.append(h | {"error": self._scrub(h["error"])})
        return unseen, sources

    def _scrub(self, text: str) -> str:
        """An error as `fleet status` may show it: URLs without credentials, and no value of the site's secrets."""
        text = redact(text)
        for secret in self._secret_values():
            text = text.replace(secret, "***")
        return text

    def _secret_values(self) -> list[str]:
        if self.secrets is None:
            return []
        names = [self.site.router.credentials] if self.site.router is not None else []
        names += [name for c in self.site.capture for name in c.auth_keys.values()]     # HEP auth keys
        out = []
        for name in names:
            try:
                creds = self.secrets.credentials(name)
            except Exception:   # no such entry: nothing of it can leak either
                continue
            out += [v for v in (creds.password, creds.priv_password) if v and len(v) >= 3]
        return out

    async def _evidence_report_loop(self) -> None:
        """Every 2 s, the report `fleet status` and the experiment report read (written when it changed, and at
        least every minute so its age says the collector runs)."""
        last, written = None, 0.0
        while True:
            try:
                report = await asyncio.to_thread(self.evidence_report)     # off the loop the sources run on
                if report != last or time.monotonic() - written > 60:
                    await asyncio.to_thread(self.store.set_site_evidence, self.site.name, *report)
                    last, written = report, time.monotonic()
            except Exception as exc:   # Redis away: the next round writes it
                log.debug("collector %s: cannot store its evidence report (%s)", self.site.name, type(exc).__name__)
            await asyncio.sleep(2.0)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._start())
        except OSError as exc:
            self.start_error = (f"collector for site {self.site.name} cannot listen on syslog {self.site.collector.syslog} "
                                f"/ events {self.site.collector.events}: {exc.strerror or exc}")
            if self._syslog_transport is not None:     # the events port failed after the syslog one was bound
                self._syslog_transport.close()
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        host, port = listen_address(self.site, "syslog", self.site.collector.syslog)
        ehost, eport = listen_address(self.site, "events", self.site.collector.events)
        self._syslog_transport = await open_reader(host, port, _Syslog(self.pending, self.sources))
        app = web.Application(client_max_size=65536)
        app.router.add_post("/events", self._event)
        app.router.add_post("/state", self._state_push)     # apps.statePolling.URL (push mode)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, ehost, int(eport), reuse_address=True).start()
        # both addresses are ours now: say so in Redis before anyone is told the collector runs (a Redis that does
        # not answer delays the start by 2 s at most; the heartbeats go on trying)
        self.record = registry.this_process(self.site.name, self.site.collector.syslog, self.site.collector.events)
        await asyncio.wait({asyncio.ensure_future(self._announce())}, timeout=registry.HEARTBEAT_S)
        asyncio.ensure_future(self._heartbeat_loop())
        asyncio.ensure_future(self._flush_loop())
        asyncio.ensure_future(self._observing_loop())
        await self._start_sources()
        asyncio.ensure_future(self._incident_loop())
        if self.site.collector.poll_interval > 0 and self.secrets is not None:
            asyncio.ensure_future(self._poll_loop())

    async def _announce(self) -> None:
        """Write this collector's record (fleet.state.collectors: its addresses, host, pid); Redis away is logged."""
        try:
            await asyncio.to_thread(registry.announce, self.store, self.record)
        except Exception as exc:   # Redis away: the next heartbeat writes it
            log.debug("collector %s: cannot announce itself (%s)", self.site.name, type(exc).__name__)

    async def _heartbeat_loop(self) -> None:
        """The record refreshed every HEARTBEAT_S: `inventory check --probe` takes the addresses as this
        collector's while it is fresh."""
        while True:
            await asyncio.sleep(registry.HEARTBEAT_S)
            await self._announce()

    async def _poll_loop(self) -> None:
        """State polling as a second source: REST lineInfo where the model has it, state polling otherwise."""
        targets = [(p, self._poll_login(p)) for p in self.site.phones]
        modes = self._poll_modes()
        configured: dict | None = None      # read in the first round that reaches Redis (it may be away at start)

        def rest_lock(phone):
            return PhoneRestLock(self.store, phone.mac, owner=f"collector:{self.site.name}")

        async with Poller(concurrency=self.site.collector.poll_concurrency, rest_lock=rest_lock,
                          polling_login=lambda p: self._poll_login(p, rest=False)) as poller:
            while True:
                started = time.monotonic()
                try:
                    if configured is None:
                        configured = {r["mac"]: r["configured_servers"]
                                      for r in await asyncio.to_thread(self.store.phones, self.site.name)}
                    await self._poll_round(poller, targets, modes, configured)
                except Exception as exc:   # a bad round (Redis away, a bug) is logged; polling goes on
                    log.warning("collector %s: a polling round failed: %s", self.site.name, type(exc).__name__,
                                exc_info=True)
                await asyncio.sleep(max(0.0, self.site.collector.poll_interval - (time.monotonic() - started)))

    async def _poll_round(self, poller: Poller, targets: list, modes: dict, configured: dict) -> None:
        """Every phone polled once; what they said queued as observations and stored as phone facts."""
        infos = {}
        for res in await poller.poll(targets, modes):
            if not res.ok:
                continue
            for line in res.lines:
                self.pending.extend(from_line_info(res.mac, res.t, line, configured.get(res.mac, []), res.sent))
            if res.firmware or res.in_call is not None:
                infos[res.mac] = {"firmware": res.firmware, "in_call": res.in_call}
        if infos:
            await asyncio.to_thread(self.store.set_phone_info, infos)

    def _poll_login(self, phone, rest: bool | None = None):
        """REST: the admin login; state polling: its own login (apps.statePolling.*) where the inventory gives one.
        `rest`: which of the two (None: as fleet talks to the phone by its firmware version, `uses_rest`)."""
        creds = self.secrets.credentials(phone.credentials)  # type: ignore[union-attr]

        if (uses_rest(phone) if rest is None else rest) or self.inventory is None:
            return creds

        return phones.for_phone(phone, creds, self.inventory, self.secrets).polling_credentials()

    def _poll_modes(self) -> dict:
        """Each phone's state polling response mode, by MAC, for every phone the poller may read by state polling:
        those fleet does not talk REST to (by firmware version, `uses_rest`: a UC Software 5.0-5.3 phone is in push
        mode by default, and is not read as requestor), and REST-family phones it finds without REST (lineInfo 404)."""
        return {p.mac: self._poll_mode(p) for p in self.site.phones if families.STATE_POLLING in p.family.interfaces}

    def _poll_mode(self, phone):
        """The phone's state polling response mode from its effective parameters (requestor where unknown)."""
        if self.inventory is None:
            return "requestor"
        return response_mode(self.inventory.effective_params(self.site, phone))

    async def _event(self, request: web.Request) -> web.Response:
        macs = self.sources.speaks_for(request.remote or "")
        if not macs:
            self.sources.drop(request.remote or "?", "an event")
            return web.Response(status=403, text="not a phone of this site")
        obs = parse_line_event(await request.read(), time.time())
        if obs is None:
            return web.Response(status=400, text="not a telephone notification event")
        if obs.mac not in macs:
            self.sources.drop(request.remote or "?", f"an event about phone {obs.mac}")
            return web.Response(status=403, text="a phone reports only for itself")
        self.pending.append(obs)
        return web.Response(status=200)

    async def _state_push(self, request: web.Request) -> web.Response:
        """A phone in state-polling push mode POSTs its call state here; stored as the newest pushed state."""
        macs = self.sources.speaks_for(request.remote or "")
        if len(macs) != 1:
            self.sources.drop(request.remote or "?", "a pushed state")
            return web.Response(status=403, text="not exactly one phone of this site at that address")
        try:
            active = parse_call_state(await request.read(), f"phone at {request.remote}")
        except DriverError:
            return web.Response(status=400, text="not a call state document")
        await asyncio.to_thread(self.store.record_pushed_call_state, next(iter(macs)), active, time.time())
        return web.Response(status=200)

    def _incident_detector(self) -> IncidentDetector:
        """The site's detector: each phone's configured servers and the losses' window (the slowest phone's
        predicted failover bound) from the configuration it runs, seeded with the phones' stored states."""
        params = self.phone_params()
        configured = {p.mac: [s["index"] for s in configured_servers(params.get(p.mac, {})) if s.get("register", True)]
                      for p in self.site.phones}
        bound = {p.mac: failover_max(params.get(p.mac, {}), family=p.family.name) for p in self.site.phones}
        bounds = [b for b in bound.values() if b is not None]
        reported = {r["mac"]: r.get("firmware") for r in self.store.phones(self.site.name)}
        facts = {p.mac: {"model": p.model, "family": p.family.name, "failover_max_s": bound[p.mac],
                         "firmware": reported.get(p.mac) or p.firmware_version or ""} for p in self.site.phones}
        detector = IncidentDetector(self.site.name, [p.mac for p in self.site.phones], configured,
                                    IncidentStore(self.store), window_s=max(bounds) if bounds else None, facts=facts)
        detector.seed(self.store.phone_states([p.mac for p in self.site.phones]))
        return detector

    def _lease_now(self) -> str | None:
        """Who causes what the site's phones do now: the lease holder, or the experiment observing the site."""
        holder, _ = self.store.lease_info(self.site.name)
        observing = self.store.observing(self.site.name)
        return holder or (f"experiment:{observing}" if observing else None)

    async def _incident_loop(self) -> None:
        """Passive outage detection (fleet.evidence.incidents): a decision every INCIDENT_TICK_S."""
        while self.incidents is None:
            try:
                self.incidents = await asyncio.to_thread(self._incident_detector)
            except Exception as exc:   # Redis away: try again
                log.warning("collector %s: incident detection cannot start yet (%s)", self.site.name, type(exc).__name__)
                await asyncio.sleep(2.0)
        while True:
            await asyncio.sleep(INCIDENT_TICK_S)
            try:
                await asyncio.to_thread(self.incidents.tick, time.time(), self._lease_now)
            except Exception as exc:   # Redis away: the next tick decides
                log.warning("collector %s: incident detection failed a round (%s)", self.site.name,
                            type(exc).__name__, exc_info=True)

    async def _observing_loop(self) -> None:
        """Which experiment observes the site now: the wire sources keep its SIP for its capture.pcap."""
        while True:
            try:
                self.observing = await asyncio.to_thread(self.store.observing, self.site.name)
            except Exception:   # Redis away: keep the last answer
                pass
            await asyncio.sleep(0.5)

    async def _flush_kept(self) -> None:
        exp, rows = self.observing, list(self.kept)
        self.kept[:] = []
        if exp and rows:
            try:
                await asyncio.to_thread(self.store.keep_capture, exp, rows)
            except Exception as exc:   # the capture is a record, not state: losing a batch is logged, not retried
                log.warning("collector %s: cannot keep %d SIP datagrams (%s)", self.site.name, len(rows), type(exc).__name__)

    async def _flush_loop(self) -> None:
        while True:
            await self.pending.wait(FLUSH_S)
            if self.pending:
                # also when they were waiting already (they came during the last store call): under a steady stream
                # the store calls would otherwise follow each other back to back, a few observations each (the
                # collector took 3.3-3.7 CPU-s instead of 2.4-2.7 while the bench's bare client rebooted 1,000 phones)
                await asyncio.sleep(GATHER_S)
            if self.kept:
                await self._flush_kept()
            if not self.pending and not self.unstored.due(time.monotonic()):
                continue
            # a slice at a time, paced (fleet.evidence.flush_queue): what just arrived never waits behind a poll's
            # answer, nor for the GIL its storing would hold
            began = time.monotonic()
            batch = self.unstored.take(self.pending, began)
            self.pending[:] = []
            try:
                await asyncio.to_thread(self.store.record_observations, batch)
                self.unstored.stored(time.monotonic() - began, time.monotonic())
            except Exception as exc:  # Redis down: keep the batch and try again; never kill the collector
                self.errors += 1
                log.warning("collector %s: cannot store %d observations (%s); retrying", self.site.name, len(batch), type(exc).__name__)
                self.unstored.put_back(batch)
                await asyncio.sleep(1)
                continue
            if self.incidents is not None:
                try:
                    await asyncio.to_thread(self.incidents.observe, batch)
                except Exception as exc:   # stored already: the detector's record of it is what is lost, and said
                    log.warning("collector %s: incident detection missed a batch (%s)", self.site.name,
                                type(exc).__name__)


def start_site_collectors(inv: Inventory, secrets: Secrets, store: Store, sites: list[str]) -> list[SiteCollector]:
    """Register the sites' phones in the store and start a collector per site; a site that cannot listen is logged."""
    started = []
    for name in sites:
        site = inv.site(name)
        register_site(store, inv, site)
        collector = SiteCollector(site, store, secrets, inv)
        try:
            collector.start()
        except CollectorError as exc:
            log.error("%s; nothing is observed for that site here", exc)
            continue
        started.append(collector)
        extra = [f"capture {c.kind}" for c in site.capture] + (
            [f"{site.gateway_registrar.platform} bindings"] if site.gateway_registrar else [])
        log.warning("collecting syslog on %s and events on %s for site %s%s", site.collector.syslog, site.collector.events,
                    name, f" (and {', '.join(extra)})" if extra else "")
    try:      # /metrics for the sites that name an address (fleet.evidence.metrics): the process's, or none of it
        start_exporters(store, [c.site for c in started])
    except ExporterError as exc:
        log.error("%s", exc)
        for c in started:
            c.stop()
        return []
    return started
