"""What every per-server evidence source shares: where it delivers, what it starts with, how it runs and fails.

The sources a site's collector runs are those the inventory names (`capture:`, `gateway:`); each kind is one
module of this package, found through the kind table fleet.config.source_kinds (`start_source`), and exposes
`async start(ctx: SourceContext, entry) -> EvidenceSource`, `entry` being the inventory's capture entry (or the
gateway's registrar). A source runs on its own thread (`SourceThread`) or on the collector's event loop (HEP),
with its own decoder, so a slow or broken one never holds up another, and everything it could raise is caught:
a malformed stream is logged and the source restarts after a pause that grows with each failure. Observations
and the SIP datagrams seen reach the collector through the two callbacks of `Sink`, which must be safe to call
from any thread.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.config import source_kinds
from fleet.config.inventory import Credentials, Site
from fleet.state.observe import Observation
from fleet.evidence.wire.attribution import Attribution
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.guard import ByteBudget, ClockGuard, DropHealth, SenderClocks, SenderDrops
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.evidence.sources.targets import Targets, transaction_timeouts

log = logging.getLogger(__name__)
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
# Per source: bytes of SIP it may decode per second, and at once, each message charged DECODE_MESSAGE_COST bytes
# on top of its own (decoding a 400-byte REGISTER costs about what 2,000 more bytes of a large message do:
# bench/evidence.py's figures). Above a 5,000-phone site re-registering after an outage (some 20,000 messages,
# 20 MB, over several seconds: 60 MB charged), and a bound on the CPU one flooded source can take (some 0.1 s per
# second for large messages at ~160 MB/s decoded, as for 6,000 tiny ones per second).
DECODE_RATE, DECODE_BURST, DECODE_MESSAGE_COST = 16e6, 32e6, 2000
CLOCK_TOLERANCE_S = 10.0   # how far a packet's clock offset may stray from what the source's recent packets agree on
MAX_SENDERS = 64           # senders a per-sender source keeps a clock guard and drop health for (HEP: its agents)


@dataclass
class Sink:
    """Where sources deliver: `observe(list[Observation])`, and `keep(source, list[Datagram])` for the
    capture an experiment keeps. Both are called from source threads."""
    observe: Callable[[list[Observation]], None]
    keep: Callable[[str, list[Datagram]], None]


@dataclass
class SourceContext:
    """What the collector hands a source to start with: its site, where to deliver, the site's shared targets
    (built already), and the secrets it may need. `router_credentials(what)` gives the site router's login and
    `secret(name, what)` a named secret; both raise, saying `what` needed them, when the collector has no
    secrets file (or the site no router)."""
    site: Site
    sink: Sink
    targets: Targets
    router_credentials: Callable[[str], Credentials]
    secret: Callable[[str, str], Credentials]


class EvidenceSource(Protocol):
    """A started source, as the collector keeps it: its health for `fleet status`, and stop."""

    def health(self) -> dict: ...
    def stop(self) -> None: ...


SourceStart = Callable[[SourceContext, Any], Awaitable[EvidenceSource]]


def start_source(kind: str) -> SourceStart:
    """The `start` of the module the kind table (fleet.config.source_kinds) names for `kind`, imported on first
    use; ValueError for a kind nobody registered."""
    return importlib.import_module(source_kinds.get(kind).module).start


def configured_sources(site: Site) -> list[tuple[str, Any]]:
    """(kind, inventory entry) of every per-server source the site names: its captures, then its gateway's
    registrar (kind "gateway")."""
    out: list[tuple[str, Any]] = [(c.kind, c) for c in site.capture]
    if site.gateway_registrar is not None:
        out.append((source_kinds.GATEWAY, site.gateway_registrar))
    return out


async def start_configured(ctx: SourceContext, refused: tuple[type[BaseException], ...]
                           ) -> tuple[list[EvidenceSource], list[str]]:
    """Start every source `ctx.site` names (`configured_sources`), each by its kind's module: (the started
    sources, why each of the others could not start). A source whose start raises one of `refused` (an address
    in use, missing credentials) is named in the second list and the others still start; anything else is a bug
    and raises. The collector and fleet's pytest plugin (fleet.testing) start a site's evidence this one way."""
    started: list[EvidenceSource] = []
    errors: list[str] = []
    for kind, entry in configured_sources(ctx.site):
        try:
            started.append(await start_source(kind)(ctx, entry))
        except refused as exc:
            what = f"capture {kind}" if kind != source_kinds.GATEWAY else "gateway bindings"
            errors.append(f"site {ctx.site.name}: {what} cannot start: {getattr(exc, 'strerror', None) or exc}")
    return started, errors


def guarded_evidence(source: str, targets: Targets, max_skew: float | None,
                     health: DropHealth | SenderDrops | None = None, per_sender: bool = False) -> WireEvidence:
    """A live source's pipeline: local stamps, lapses, its own byte budget and clock guard (source_guard);
    `per_sender`: a clock guard per sender address (HEP: each SIP server's clock is its own)."""
    def guard() -> ClockGuard:
        return ClockGuard(tolerance=CLOCK_TOLERANCE_S, max_skew=max_skew)

    return WireEvidence(Attribution(targets.wire, source), source=source, stamp="local", lapse=True,
                        timeouts=transaction_timeouts(targets.wire, targets.by_mac),
                        budget=ByteBudget(DECODE_RATE, DECODE_BURST, per_message=DECODE_MESSAGE_COST),
                        clock_guard=SenderClocks(guard, MAX_SENDERS) if per_sender else guard(), health=health)


def with_drops(health: dict, drops: DropHealth | SenderDrops, since: list[float | None]) -> dict:
    """A source's health as `fleet status` shows it, failing also while it drops most of what it gets
    (`since` holds when that began, kept by the caller between calls); `dropped`: reason -> datagrams dropped
    since the source started (the exporter's counters)."""
    health = health | {"dropped": dict(drops.dropped_total)}
    why = drops.failing()
    if not why:
        since[0] = None
        return health
    if health.get("error"):
        return health
    since[0] = since[0] or time.time()
    return health | {"error": why, "since": since[0]}


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
