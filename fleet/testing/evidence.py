"""Which server each phone of a site works with, observed in this process: no Redis, no collector, no worker.

A user's pytest must not need Redis and a Celery worker to ask "is every phone on server 2 now?". So the
plugin starts the site's per-server evidence sources itself (the inventory's `capture:` entries and gateway
registrar, each by its kind's module: fleet.evidence.sources.base.start_configured, the collector's own way)
and folds what they deliver into each phone's state with the store's own rule (fleet.state.observe.apply, R4).
The observations are kept per phone, with the working server after each, in the shape the experiment's verdict
functions read (fleet.experiment.verdict.change_interval), so failover and recovery are measured the same way.

Line-level sources (notification events, syslog) are not listened to here: their addresses belong to the site's
own collector, which may be running. A site whose inventory names no per-server source cannot tell servers
apart, and says so (EvidenceUnavailable) instead of guessing.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Callable

from fleet.config.inventory import Credentials, Inventory, Secrets, Site
from fleet.evidence.sources.base import (EvidenceSource, Sink, SourceContext, configured_sources,
                                         start_configured)
from fleet.evidence.sources.targets import Targets
from fleet.phoneconf.predict import configured_servers
from fleet.state.observe import Observation, PhoneState, apply

HISTORY = 5000          # observations kept per phone (a phone refreshing every 10 s: some 14 hours)
START_TIMEOUT_S = 30.0


class EvidenceUnavailable(RuntimeError):
    """The site's evidence cannot say which server a phone works with; the message says why and what to add."""


class SiteEvidence:
    """The site's per-server evidence sources, running on a thread of their own until `stop()`.

    Thread-safe: sources deliver from their threads, tests read from theirs."""

    def __init__(self, inventory: Inventory, secrets: Secrets, site: Site) -> None:
        self.inventory, self.secrets, self.site = inventory, secrets, site
        self.params = {p.mac: inventory.effective_params(site, p) for p in site.phones}
        self.configured = {mac: [s["index"] for s in configured_servers(params) if s.get("register", True)]
                           for mac, params in self.params.items()}
        self.states = {p.mac: PhoneState(mac=p.mac) for p in site.phones}
        self.history: dict[str, deque[dict]] = {p.mac: deque(maxlen=HISTORY) for p in site.phones}
        self.lock = threading.RLock()     # re-entrant: a `wait` check may call working_server()
        self.changed = threading.Condition(self.lock)
        self.sources: list[EvidenceSource] = []
        self.errors: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------ life
    def start(self) -> "SiteEvidence":
        """Start every per-server source the site names; EvidenceUnavailable when it names none or none starts."""
        if not configured_sources(self.site):
            raise EvidenceUnavailable(
                f"site {self.site.name} names no per-server evidence source in the inventory (`capture:` such as "
                f"`router lan0`, `hep HOST:PORT`, or a gateway registrar): which server a phone works with cannot "
                f"be observed")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(self._start())
            except BaseException as exc:   # handed to the caller, which raises it
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"fleet-evidence-{self.site.name}", daemon=True)
        self.thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise EvidenceUnavailable(f"site {self.site.name}: evidence sources did not start within {START_TIMEOUT_S:g} s")
        if failure:
            raise EvidenceUnavailable(f"site {self.site.name}: evidence sources cannot start: "
                                      f"{type(failure[0]).__name__}: {failure[0]}")
        if not self.sources:
            raise EvidenceUnavailable("; ".join(self.errors) or f"site {self.site.name}: no evidence source started")
        return self

    async def _start(self) -> None:
        targets = Targets(self.site, lambda: self.params)
        await asyncio.to_thread(targets.refresh, True)
        ctx = SourceContext(self.site, Sink(self.observe, lambda source, datagrams: None), targets,
                            self._router_credentials, self._secret)
        self.sources, self.errors = await start_configured(ctx, (OSError, KeyError, ValueError, EvidenceUnavailable))

    def _router_credentials(self, what: str) -> Credentials:
        if self.site.router is None:
            raise EvidenceUnavailable(f"site {self.site.name}: {what} needs a router in the inventory")
        return self.secrets.credentials(self.site.router.credentials)

    def _secret(self, name: str, what: str) -> Credentials:
        return self.secrets.credentials(name)

    def stop(self) -> None:
        for source in self.sources:
            source.stop()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)

    def health(self) -> list[dict]:
        """Each source's health as `fleet status` shows it, and the sources that could not start."""
        return [s.health() for s in self.sources] + [{"source": "not started", "error": e} for e in self.errors]

    # ------------------------------------------------------------ what the sources deliver
    def observe(self, observations: list[Observation]) -> None:
        """Fold observations into the phones' states (called from source threads); unknown phones are ignored."""
        with self.changed:
            for obs in sorted(observations, key=lambda o: o.t):
                state = self.states.get(obs.mac)
                if state is None:
                    continue
                apply(state, obs, self.configured[obs.mac] if obs.reg == 1 else None)
                self.history[obs.mac].append(obs.to_dict() | {"working_server": state.working_server})
            self.changed.notify_all()

    # ------------------------------------------------------------ what tests ask
    def working_server(self, mac: str) -> int | None:
        with self.lock:
            return self.states[mac].working_server

    def observations(self, mac: str, since: float = 0.0) -> list[dict]:
        """The phone's observations at or after `since` (wall clock), oldest first, each with the working server."""
        with self.lock:
            return [o for o in self.history[mac] if o["t"] >= since]

    def state(self, mac: str) -> dict:
        with self.lock:
            return self.states[mac].to_dict()

    def wait(self, check: Callable[[], bool], timeout: float) -> bool:
        """Wait until `check()` (called under the lock) holds, at most `timeout` seconds; whether it held."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.5))
            return True
