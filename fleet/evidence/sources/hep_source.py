"""The `hep` source: HEP v3 from the site's SIP servers, on a UDP listener of the collector's event loop.

Only the senders the inventory names (else the site's gateway) are heard, each with its auth key where the
inventory gives one (hep_listener.py); each sender has its own clock guard and drop health.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from fleet.config.inventory import Capture, Site
from fleet.evidence.wire import hep
from fleet.evidence.wire.attribution import foreign_counts
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.guard import SenderDrops
from fleet.evidence.sources.base import MAX_SENDERS, Sink, SourceContext, guarded_evidence, with_drops
from fleet.evidence.sources.hep_listener import start_hep_listener
from fleet.evidence.sources.resolver import SiteResolver
from fleet.evidence.sources.targets import Follower, Targets

log = logging.getLogger(__name__)
HEP_MAX_SKEW_S = 300.0     # HEP agents are SIP servers (NTP): a packet stamped further from our clock is dropped
MAX_HEP_SENDERS = MAX_SENDERS   # senders it keeps a clock guard and drop health for (the inventory names fewer)


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
        self.transport: asyncio.BaseTransport | None = None     # its socket, once `start` bound it
        self.ticking: asyncio.Future | None = None              # its tick_loop
        self.loop: asyncio.AbstractEventLoop | None = None      # the collector's event loop it runs on

    def health(self) -> dict:
        """Like SourceThread.health (a HEP listener runs as long as the collector's event loop does): failing
        while most datagrams from its senders are dropped (no key, a wrong key, a clock far off, over the size
        caps or the byte budget); foreign messages per sender address."""
        return with_drops({"source": self.source, "running": True, "error": "", "since": None,
                           "foreign": foreign_counts(self.evidence.build.attribution.foreign)}, self.drops,
                          self._drops_since)

    def on_packet(self, pkt, addr) -> None:
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

    async def tick_loop(self) -> None:
        """Every 0.5 s: the targets followed (Redis and DNS: off the event loop), then `tick`."""
        while True:
            await asyncio.sleep(0.5)
            try:
                await asyncio.to_thread(self.follow.refresh)
                self.tick()
            except Exception as exc:  # never let one source's bug stop the collector
                log.warning("collector %s: %s tick failed: %s", self.site.name, self.source, exc)

    def stop(self) -> None:
        """Close its socket and end its ticks; safe from any thread (the collector stops sources from its caller's)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.ticking is not None:
            self.ticking.cancel()


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
    host, _, port = (capture.listen or "").rpartition(":")
    senders = hep_senders(site, capture)
    if not senders:
        raise OSError(f"no HEP sender for site {site.name}: name them in capture.senders")
    transport, source.listener = await start_hep_listener(host.strip("[]"), int(port), senders, source.on_packet,
                                                          auth_keys, source.drops)
    return transport, source.listener


async def start(ctx: SourceContext, capture: Capture) -> HepSource:
    """Listen for the site's HEP on the collector's event loop, and tick the source there."""
    keys = {ip: ctx.secret(name, "a HEP auth key").password.encode() for ip, name in capture.auth_keys.items()}
    source = HepSource(ctx.site, ctx.sink, ctx.targets)
    source.loop = asyncio.get_running_loop()
    source.transport, _ = await start_hep(ctx.site, capture, source, keys)
    source.ticking = asyncio.ensure_future(source.tick_loop())
    return source
