"""Collectors that run beside a site's worker: syslog and telephone notification events, pushed by phones.

Push sources see a change the moment the phone reports it, so detection
latency is the network's, not a polling interval's. Observations are batched
(every 20 ms) into the store, which derives per-server state and the working
server (fleet.observe).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from aiohttp import web

from .drivers.collect.formats import parse_line_event, parse_syslog
from .drivers.collect.poller import Poller
from .inventory import Inventory, Secrets, Site
from .observe import Observation, from_line_info
from .store import Store

log = logging.getLogger(__name__)
FLUSH_S = 0.02   # observations reach the store in batches this far apart


class CollectorError(RuntimeError):
    """A collector that cannot start (its address is taken, say); the message says which."""


class _Syslog(asyncio.DatagramProtocol):
    def __init__(self, sink: list[Observation]) -> None:
        self.sink = sink
        self.received = 0

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.received += 1
        obs = parse_syslog(data, time.time())
        if obs is not None:
            self.sink.append(obs)


class SiteCollector:
    def __init__(self, site: Site, store: Store, secrets: Secrets | None = None) -> None:
        self.site, self.store, self.secrets = site, store, secrets
        self.pending: list[Observation] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"collector-{site.name}", daemon=True)
        self.errors = 0
        self.start_error: str | None = None

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(10):
            raise CollectorError(f"collector for site {self.site.name} did not start within 10 s")
        if self.start_error:
            raise CollectorError(self.start_error)

    def stop(self) -> None:
        if self.loop:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._start())
        except OSError as exc:
            self.start_error = (f"collector for site {self.site.name} cannot listen on syslog {self.site.collector.syslog} "
                                f"/ events {self.site.collector.events}: {exc.strerror or exc}")
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        host, _, port = self.site.collector.syslog.rpartition(":")
        await self.loop.create_datagram_endpoint(lambda: _Syslog(self.pending), local_addr=(host, int(port)))  # type: ignore[union-attr]
        ehost, _, eport = self.site.collector.events.rpartition(":")
        app = web.Application(client_max_size=65536)
        app.router.add_post("/events", self._event)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ehost, int(eport), reuse_address=True).start()
        asyncio.ensure_future(self._flush_loop())
        if self.site.collector.poll_interval > 0 and self.secrets is not None:
            asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        """State polling as a second source: REST lineInfo where the model has it, state polling otherwise."""
        targets = [(p, self.secrets.credentials(p.credentials)) for p in self.site.phones]  # type: ignore[union-attr]
        configured = {r["mac"]: r["configured_servers"] for r in await asyncio.to_thread(self.store.phones, self.site.name)}
        async with Poller(concurrency=self.site.collector.poll_concurrency) as poller:
            while True:
                started = time.monotonic()
                infos = {}
                for res in await poller.poll(targets):
                    if not res.ok:
                        continue
                    for line in res.lines:
                        self.pending.extend(from_line_info(res.mac, res.t, line, configured.get(res.mac, [])))
                    if res.firmware or res.in_call is not None:
                        infos[res.mac] = {"firmware": res.firmware, "in_call": res.in_call}
                if infos:
                    await asyncio.to_thread(self.store.set_phone_info, infos)
                await asyncio.sleep(max(0.0, self.site.collector.poll_interval - (time.monotonic() - started)))

    async def _event(self, request: web.Request) -> web.Response:
        obs = parse_line_event(await request.read(), time.time())
        if obs is None:
            return web.Response(status=400, text="not a telephone notification event")
        self.pending.append(obs)
        return web.Response(status=200)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            if not self.pending:
                continue
            batch, self.pending[:] = list(self.pending), []
            try:
                await asyncio.to_thread(self.store.record_observations, batch)
            except Exception as exc:  # Redis down: keep the batch and try again; never kill the collector
                self.errors += 1
                log.warning("collector %s: cannot store %d observations (%s); retrying", self.site.name, len(batch), type(exc).__name__)
                self.pending[:0] = batch
                await asyncio.sleep(1)


def start_site_collectors(inv: Inventory, secrets: Secrets, store: Store, sites: list[str]) -> list[SiteCollector]:
    """Register the sites' phones in the store and start a collector per site; a site that cannot listen is logged."""
    started = []
    for name in sites:
        site = inv.site(name)
        store.register_site(inv, site)
        collector = SiteCollector(site, store, secrets)
        try:
            collector.start()
        except CollectorError as exc:
            log.error("%s; nothing is observed for that site here", exc)
            continue
        started.append(collector)
        log.warning("collecting syslog on %s and events on %s for site %s", site.collector.syslog, site.collector.events, name)
    return started
