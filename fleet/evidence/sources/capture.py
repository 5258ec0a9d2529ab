"""What the capture sources share: a pcap stream read as it arrives, decoded and attributed, ticking once a second.

A router capture (`tcpdump -U -w -` over the router's SSH: router_capture.py) and a local capture (tcpdump on a
mirror port of this host: local_capture.py) differ only in where the bytes come from; `CaptureThread.pump`
reads them with a `read(timeout)` of theirs. The capture filter lets through the site's servers' SIP ports and
its DNS ports; when the targets' ports change (DNS moved a server, a rollout changed a port) the capture
restarts with the new filter.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleet.config.inventory import Capture, Site
from fleet.state.observe import Observation
from fleet.evidence.wire.attribution import foreign_counts
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.dns import DnsLookups, site_dns_ports
from fleet.evidence.wire.guard import DropHealth
from fleet.evidence.wire.pcap import PcapFormatError, PcapStreamParser
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.evidence.sources.base import Sink, SourceThread, guarded_evidence, with_drops
from fleet.evidence.sources.targets import Follower, Targets, capture_ports

log = logging.getLogger(__name__)


class CaptureThread(SourceThread):
    """Shared by the capture sources: pcap bytes in, observations out, ticking once a second."""

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
