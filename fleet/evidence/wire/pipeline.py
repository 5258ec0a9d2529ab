"""One decoder for the three wire inputs: frames from a pcap stream, HEP v3 datagrams, plain UDP datagrams.

frame/HEP -> Datagram -> REGISTER message -> RegisterMatcher -> outcome -> attributed Observation.
INVITEs take the same path through InviteMatcher: the final answer to a phone's INVITE becomes a "call"
observation naming the server that answered it (what a call check asks).
Each input gets its own WireEvidence (its own source label: "wire" for a
capture, "hep" for HEP) so reports can name which one saw a transition.
Nothing fed in can raise out of here: malformed input is counted in `stats`.
"""
from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import replace

from fleet.state.observe import REGISTERED, UNREGISTERED, Observation
from fleet.evidence.wire import hep
from fleet.evidence.wire.calls import CallOutcome, InviteMatcher
from fleet.evidence.wire.dns import DnsLookups
from fleet.evidence.wire.transactions import T1_TIMEOUT, RegisterMatcher, RegisterOutcome
from fleet.evidence.wire.guard import ByteBudget, ClockGuard, DropHealth, SenderClocks, SenderDrops
from fleet.evidence.wire.decode import Datagram, FrameDecoder, sip_message
from fleet.evidence.wire.attribution import Attribution, ObservationBuilder


class PacketClock:
    """`now` on the capture's clock: the newest packet time advanced by our own monotonic time since it
    arrived. Timeouts then neither depend on the router's clock agreeing with ours nor stall when the
    traffic stops (an outage is exactly when it stops). `offset` maps capture time to our wall clock
    (router clock skew plus transport delay, as of the newest packet)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._at = 0.0
        self.offset = 0.0

    def saw(self, t: float, offset: float | None = None, step_back: float | None = None) -> None:
        """A packet at `t`. `offset`: the source's agreed offset (ClockGuard) instead of this packet's own;
        `step_back`: a packet this much older than the newest resets the clock (the guard agreed the
        capture's clock stepped back), where otherwise an older packet never moves it."""
        if self._last is None or t >= self._last or (step_back is not None and t < self._last - step_back):
            self._last, self._at = t, time.monotonic()
            self.offset = time.time() - t if offset is None else offset

    def now(self) -> float | None:
        if self._last is None:
            return None
        return self._last + (time.monotonic() - self._at)


class WireEvidence:
    """The pipeline for one input. `stamp="capture"` keeps the capture's packet times in observations (right
    for a pcap file replayed later); `stamp="local"` moves them onto this host's wall clock through the packet
    clock's offset (right for a live stream from a router whose clock may be off, since fleet.state.observe orders
    observations from all sources by time). Call `tick()` every second or so: it ends unanswered transactions
    and forgets old state.

    `lapse=True`: a registration this input saw granted is reported unregistered when its expiry passes
    with no refresh seen (t = the expiry): the registrar has dropped the binding by then. That is how a
    phone that went silent shows (switched off, or it stopped sending because its DNS lookup of the server
    failed, which a SIP capture cannot see).

    `budget` (source_guard.ByteBudget) caps the bytes this input decodes per second; `clock_guard`
    (source_guard.ClockGuard, `stamp="local"` only) drops packets whose time is far from what the source's
    recent packets agree on; `health` (source_guard.DropHealth) learns of every datagram and every drop.
    Drops are counted in `stats` by reason (over_budget, clock_ahead, clock_behind, register_oversize)."""

    LAPSE_GRACE = 1.0      # seconds past the expiry before calling it lapsed (an answer may be in flight)

    def __init__(self, attribution: Attribution, *, source: str = "wire", timeout: float = T1_TIMEOUT,
                 max_pending: int = 200_000, stamp: str = "capture",
                 timeouts: dict[tuple[str, int], float] | None = None, lapse: bool = False,
                 budget: ByteBudget | None = None, clock_guard: ClockGuard | SenderClocks | None = None,
                 health: DropHealth | SenderDrops | None = None) -> None:
        if stamp not in ("capture", "local"):
            raise ValueError(f"stamp must be 'capture' or 'local', got {stamp!r}")
        if clock_guard is not None and stamp != "local":
            raise ValueError("a clock guard judges packet times against the local clock: stamp='local' only")
        self.budget, self.clock_guard = budget, clock_guard
        self.health = health or DropHealth()
        self.stamp = stamp
        self.source = source
        self.decoder = FrameDecoder()
        self.matcher = RegisterMatcher(timeout=timeout, max_pending=max_pending, timeouts=timeouts)
        self.invites = InviteMatcher()
        self.build = ObservationBuilder(attribution, source)
        self.clock = PacketClock()
        self.outcomes: list[RegisterOutcome] | None = None     # set to [] to keep outcomes (tests, reports)
        self.lapse = lapse
        self.dns: DnsLookups | None = None      # set by a capture source: the phones' DNS lookups (dns_evidence)
        self._bound: dict[tuple[str, int, int], Observation] = {}   # newest granted registration per target
        # (lapse time, key) of every grant, the stale ones left in place: a tick pops only what is due, instead of
        # looking at every target's grant twice a second (10,000 at a 5,000-phone site, on the event loop)
        self._lapses: list[tuple[float, tuple[str, int, int]]] = []
        self._stats: Counter[str] = Counter()

    def feed_frame(self, t: float, linktype: int, frame: bytes) -> list[Observation]:
        dg = self.decoder.decode(t, linktype, frame)
        return self.feed_datagram(dg) if dg is not None else []

    def feed_hep(self, data: bytes) -> list[Observation]:
        try:
            pkt = hep.parse(data)
        except hep.HepError:
            self._stats["hep_malformed"] += 1
            return []
        if pkt.proto_type != hep.PROTO_SIP or pkt.ip_proto not in (6, 17):
            self._stats["hep_not_sip"] += 1
            return []
        return self.feed_datagram(pkt.datagram())

    def feed_datagram(self, dg: Datagram, sender: str | None = None,
                      kept: list[Datagram] | None = None) -> list[Observation]:
        """Observations from one datagram. `sender`: the address that delivered it (a HEP agent), judged by its
        own clock guard and drop health when they are per sender (SenderClocks, SenderDrops). `kept`: the
        datagram is appended when it was accepted and is SIP or DNS read whole (not over the byte budget, the
        clock guard or the size caps): what an experiment keeps as its capture."""
        why, dg = self._refused(dg, sender)
        if why is not None:
            self._stats[why] += 1
            self.health.saw(why, sender=sender)
            return []
        if self.dns is not None and self.dns.is_dns(dg.src, dg.dst):
            if kept is not None:
                kept.append(dg)
            return self._stamped(self.dns.feed(dg.t, dg.src, dg.dst, dg.payload))
        oversize = self._stats["register_oversize"]
        msg = sip_message(dg.payload, self._stats)
        refused = self._stats["register_oversize"] != oversize
        self.health.saw("register_oversize" if refused else None, sender=sender)
        if kept is not None and not refused:
            kept.append(dg)
        if msg is None or msg.cseq[1] != "REGISTER":
            if msg is not None:
                return self._call(self.invites.feed(msg, dg.t, dg.src, dg.dst))
            self._stats["not_register"] += 1
            return []
        self._stats["register_messages"] += 1
        outcome = self.matcher.feed(msg, dg.t, dg.src, dg.dst)
        return self._observe([outcome] if outcome is not None else [])

    def _refused(self, dg: Datagram, sender: str | None) -> tuple[str | None, Datagram]:
        """(why this datagram is dropped before decoding: over the byte budget, a time far off the source's
        clock, a sender past SenderClocks' bound; else None) and the datagram to read. An accepted one moves
        the packet clock. With a clock guard per sender the datagram's time is moved onto this host's clock by
        its sender's agreed offset (senders' clocks differ; the packet clock then holds local time)."""
        if self.budget is not None and not self.budget.take(len(dg.payload)):
            return "over_budget", dg
        guard = self.clock_guard
        if guard is None:
            self.clock.saw(dg.t)
            return None, dg
        if isinstance(guard, SenderClocks):
            own = guard.guard(sender or "")
            if own is None:
                return "too_many_senders", dg
            why = own.check(dg.t, time.time())
            if why is None:
                dg = replace(dg, t=dg.t + (own.offset or 0.0))
                self.clock.saw(dg.t, 0.0, step_back=own.tolerance)
            return why, dg
        why = guard.check(dg.t, time.time())
        if why is None:
            self.clock.saw(dg.t, guard.offset, step_back=guard.tolerance)
        return why, dg

    def tick(self, now: float | None = None) -> list[Observation]:
        """Time out unanswered transactions; `now` defaults to the packet clock."""
        now = self.clock.now() if now is None else now
        if now is None:
            return []
        self.decoder.reassembler.expire(now)
        self.invites.expire(now)
        out = self._observe(self.matcher.expire(now))
        if self.dns is not None:
            out += self._stamped(self.dns.expire(now))
        if self.lapse:
            out += self._lapsed(now + (self.clock.offset if self.stamp == "local" else 0.0))
        return out

    def _track(self, obs: Observation) -> None:
        key = (obs.mac, obs.reg, obs.server or 0)
        if obs.state == REGISTERED and obs.expires:
            self._bound[key] = obs
            heapq.heappush(self._lapses, (obs.t + obs.expires, key))
            if len(self._lapses) > 4 * len(self._bound) + 64:    # refreshes leave stale entries: rebuild now and then
                self._lapses = [(o.t + (o.expires or 0), k) for k, o in self._bound.items()]
                heapq.heapify(self._lapses)
        else:
            self._bound.pop(key, None)

    def _lapsed(self, now: float) -> list[Observation]:
        out = []
        while self._lapses and now >= self._lapses[0][0] + self.LAPSE_GRACE:
            _, key = heapq.heappop(self._lapses)
            obs = self._bound.get(key)
            if obs is None:
                continue
            until = obs.t + (obs.expires or 0)
            if now >= until + self.LAPSE_GRACE:     # else a stale entry: the grant was refreshed since
                del self._bound[key]
                self._stats["lapsed"] += 1
                out.append(Observation(mac=obs.mac, t=until, source=self.source, reg=obs.reg, server=obs.server,
                                       state=UNREGISTERED, address=obs.address, earliest=obs.t,
                                       detail=f"lapsed: no refresh seen within expires={obs.expires}"))
        return out

    def _stamped(self, found: list[Observation]) -> list[Observation]:
        """Observations stamped in capture time, on this host's clock when `stamp="local"`."""
        if self.stamp != "local" or not found:
            return found
        shift = self.clock.offset
        return [replace(o, t=o.t + shift, earliest=None if o.earliest is None else o.earliest + shift,
                        sent=None if o.sent is None else o.sent + shift) for o in found]

    def _call(self, outcome: CallOutcome | None) -> list[Observation]:
        if outcome is None:
            return []
        obs = self.build.call(outcome)
        if obs is None:
            return []
        return [replace(obs, t=obs.t + self.clock.offset) if self.stamp == "local" else obs]

    def _observe(self, outcomes: list[RegisterOutcome]) -> list[Observation]:
        out: list[Observation] = []
        for outcome in outcomes:
            if self.outcomes is not None:
                self.outcomes.append(outcome)
            obs = self.build(outcome)
            if obs is not None:
                if self.stamp == "local":
                    obs = replace(obs, t=obs.t + self.clock.offset)
                if self.lapse:
                    self._track(obs)
                out.append(obs)
        return out

    @property
    def stats(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for c in (self._stats, self.decoder.stats, self.decoder.reassembler.stats, self.matcher.stats,
                  self.invites.stats, self.build.attribution.stats, self.dns.stats if self.dns else {}):
            total.update(c)
        return dict(total)
