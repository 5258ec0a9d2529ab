"""The `gateway` source: the site gateway's registrar bindings, polled over the router's SSH.

Each gateway platform (Kamailio, Asterisk, FreeSWITCH) is a command and a parser of its answer
(gateway_bindings.py); a binding becomes an observation of the phone's line at the gateway's server entry.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace

from fleet.config.inventory import Credentials, GatewayRegistrar, Site
from fleet.drivers.router import connect
from fleet.evidence.wire.attribution import WireTarget, foreign_counts
from fleet.evidence.sources import gateway_bindings
from fleet.evidence.sources.base import Sink, SourceContext, SourceThread
from fleet.evidence.sources.targets import Targets, gateway_server

log = logging.getLogger(__name__)

ENTRIES_CHUNK = 200   # targets looked at between two short sleeps while the gateway entries are worked out (some
                      # 0.3 s of Python at a 5,000-phone site, which would otherwise take the GIL from HEP and events),
                      # and while a poll's answer is attributed to them
COURTESY_S = 0.002    # one such sleep: a thread holding the GIL is made to give it up only every 5 ms, and the event
                      # loop of the wire, HEP and events sources needs it once per socket call


def _courtesy() -> None:
    """The GIL back to the collector's event loop for a moment, between two pieces of a poll's answer (parsing a
    5,000-binding answer and attributing it is some 70 ms of Python, which held every other source's detection)."""
    time.sleep(COURTESY_S)


class GatewayPoller(SourceThread):
    """The gateway's registrar bindings, polled over the router's SSH every `interval` seconds."""

    label = "gateway bindings"
    _entries: list[WireTarget] = []               # the gateway's entry of each line (`_gateway_entries`), replaced whole
    _entries_of: list[WireTarget] | None = None   # the targets list they were worked out from

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
        out: list[WireTarget] = []
        for t in self._gateway_entries():
            extra = tuple(ip for ip in learned.get(t.mac, ()) if ip != t.phone_ip and ip not in t.allowed)
            out.append(replace(t, allowed=t.allowed + extra) if extra else t)
        return out

    def _gateway_entries(self) -> list[WireTarget]:
        """The gateway's entry of each line among the site's current targets, worked out once per rebuild of them
        (a poll at a 5,000-phone site asked the configuration of 10,000 targets each time: 0.4 s of the GIL
        that every other source's detection waited behind)."""
        wire, by_mac = self.targets.wire, self.targets.by_mac     # one rebuild's pair: refresh replaces both
        if self._entries_of is not wire:
            out: dict[tuple[str, int, int], WireTarget] = {}
            gateway_of: dict[tuple[str, int], int | None] = {}     # each line's configuration read once
            for n, t in enumerate(wire):      # one per line and server (a name with several addresses: several)
                line = (t.mac, t.reg)
                if line not in gateway_of:
                    gateway_of[line] = gateway_server(self.site, by_mac.get(t.mac, {}), t.reg)
                if t.server == gateway_of[line]:
                    out.setdefault((t.mac, t.reg, t.server), t)
                if n % ENTRIES_CHUNK == ENTRIES_CHUNK - 1:
                    _courtesy()     # the GIL back to the sources' event loop now and then (see ENTRIES_CHUNK)
            self._entries, self._entries_of = list(out.values()), wire
        return self._entries

    def deliver(self, text: str) -> None:
        """One poll's answer: parsed, attributed to the phones and delivered; an answer that is not one marks
        the source failing, saying why."""
        t = time.time()
        try:
            bindings = self.platform.parse(text, t)
        except gateway_bindings.GatewayOutputError as exc:
            log.warning("collector %s: gateway answer not usable: %s", self.site.name, exc)
            self.running.clear()            # no evidence from it: `fleet status` says why
            self.fail(f"{type(exc).__name__}: {exc}")
            return
        self.running.set()
        self.failures, self.failing_since, self.last_error = 0, None, ""
        _courtesy()
        foreign: Counter[str] = Counter()
        out = gateway_bindings.observations(bindings, self.gateway_targets(t), t, foreign=foreign, pause=_courtesy,
                                            pause_every=ENTRIES_CHUNK)
        self.foreign_bindings = foreign
        self.polls += 1
        if out:
            self.sink.observe(out)

    def run_once(self) -> None:
        assert self.site.router is not None
        router = connect(self.site.router, self.credentials)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                self.targets.refresh()
                text = router.run(self.platform.command, check=False, what=f"{self.registrar.platform} bindings")  # type: ignore[attr-defined]
                self.deliver(text)
                self.stopping.wait(max(0.0, self.registrar.interval - (time.monotonic() - started)))
        finally:
            router.close()


async def start(ctx: SourceContext, registrar: GatewayRegistrar) -> GatewayPoller:
    """Start polling the site gateway's bindings (it needs the router's credentials)."""
    source = GatewayPoller(ctx.site, ctx.sink, ctx.targets, ctx.router_credentials("gateway polling"))
    source.start()
    return source
