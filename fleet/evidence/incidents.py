"""Passive outage detection: a site-wide loss of server 1 found in the evidence alone, followed until the site is back.

Real WAN outages happen between experiments, and the collector already sees
each one: the phones' server-1 registrations go, the phones move to server 2,
and come back. This module turns that into an incident, without touching a
device:

- a phone *leaves* server 1 when its registration 1's working server was 1
  and no longer is, or when the first evidence of its server 1 is a failure
  towards it (a refresh that got no answer: it was registered there before
  the collector started); the loss time is the evidence's own (the
  observation's `earliest` where it only bounds the moment);
- the site has an incident when at least max(2, half) of the phones that were
  on server 1 leave it within `window_s` of each other (the slowest phone's
  predicted failover bound: phones notice a cut at their next refresh, so the
  losses of one outage spread over that much), and no lease holder (an
  experiment or a rollout: work that causes such moves) holds the site;
  a single phone's loss (a reboot, a cable) never opens one;
- the incident starts at the earliest of those losses and follows every phone
  (to server 2 when, registered nowhere how long, back on server 1 when); its
  phones' observations go to the incident's streams from `window_s` before
  the start, so the report reads them as an experiment's;
- it closes when every phone that was on server 1 is back on it, or most are
  and `settle_s` passed since, or after `max_s`, or when the site's lease is
  taken (the work holding it is now the cause, and reports for itself).

The detector is plain logic fed with observations and ticks; the collector
drives it and gives it the sink that stores (fleet.state.incidents).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from fleet.state import record
from fleet.state.observe import REGISTERED, Observation, PhoneState, apply

HISTORY_MAX = 2000          # observations kept per phone before an incident (bounded memory)
DEFAULT_WINDOW_S = 120.0    # the losses' window when no phone's failover bound is known
DEFAULT_MAX_S = 6 * 3600.0  # an incident still open after this is closed as timed out


class IncidentSink(Protocol):
    """Where incidents go (fleet.state.incidents.IncidentStore has these methods)."""

    def open(self, site: str, started: float, detected: float, baseline: list[str], threshold: int,
             window_s: float) -> str: ...

    def set(self, iid: str, **fields) -> None: ...

    def set_summary(self, site: str, iid: str, started: float, phones: int, failed_over: int) -> None: ...

    def close(self, iid: str, site: str, finished: float, because: str) -> None: ...

    def log(self, iid: str, kind: str, **data) -> None: ...

    def keep_observations(self, iid: str, rows: list[dict]) -> None: ...

    def record(self, outage: record.Outage) -> None: ...


def threshold(baseline: int) -> int:
    """How many of `baseline` phones on server 1 must leave it for a site incident: max(2, half, rounded up)."""
    return max(2, math.ceil(baseline / 2))


@dataclass
class Followed:
    """One phone through an incident (wall times from the evidence)."""
    lost_at: float | None = None
    on2_at: float | None = None
    nowhere_since: float | None = None
    nowhere_s: float = 0.0
    back_at: float | None = None


@dataclass
class OpenIncident:
    id: str
    started: float
    baseline: set[str]
    threshold: int
    phones: dict[str, Followed] = field(default_factory=dict)
    restored: float | None = None       # the first evidence that server 1 answers again
    most_back_at: float | None = None
    pending: list[dict] = field(default_factory=list)    # observations not stored yet


class IncidentDetector:
    """One site's detector. `observe` and `tick` may be called from different threads (a lock keeps them apart)."""

    def __init__(self, site: str, macs: list[str], configured: dict[str, list[int]], sink: IncidentSink,
                 window_s: float | None = None, settle_s: float | None = None, max_s: float = DEFAULT_MAX_S,
                 facts: dict[str, dict] | None = None) -> None:
        self.site, self.sink = site, sink
        # per phone: model, family, firmware and failover_max_s (its predicted bound), for the survivability record
        self.facts = facts or {}
        self.macs = set(macs)
        self.configured = configured
        self.window_s = window_s or DEFAULT_WINDOW_S
        self.settle_s = settle_s if settle_s is not None else self.window_s
        self.max_s = max_s
        self.states: dict[str, PhoneState] = {m: PhoneState(mac=m) for m in macs}
        self.history: dict[str, deque[dict]] = {m: deque(maxlen=HISTORY_MAX) for m in macs}
        self.on1: set[str] = set()
        self.lost: dict[str, float] = {}
        self.quiet_until = 0.0            # losses before this were caused (a lease holder's work)
        self.open: OpenIncident | None = None
        self.lock = threading.Lock()

    def seed(self, states: dict[str, PhoneState]) -> None:
        """Start from the phones' stored states (where each stood when the collector started)."""
        with self.lock:
            for mac, state in states.items():
                if mac in self.macs:
                    self.states[mac] = state
                    if state.working_server == 1:
                        self.on1.add(mac)

    # ------------------------------------------------------------ evidence
    def observe(self, observations: list[Observation]) -> None:
        """Fold a batch in (each phone's state as the store folds it) and note who left or reached server 1."""
        with self.lock:
            for obs in sorted(observations, key=lambda o: o.t):
                if obs.mac not in self.macs or obs.kind != "registration":
                    continue
                state = self.states[obs.mac]
                before = state.working_server
                unseen = 1 not in state.line(1).servers and state.line_state != REGISTERED
                was1 = state.line(1).servers.get(1, {}).get("state")
                configured = self.configured.get(obs.mac) if obs.reg == 1 else None
                apply(state, obs, configured)
                row = obs.to_dict() | {"working_server": state.line(obs.reg).working_server}
                self.history[obs.mac].append(row)
                if obs.reg != 1:
                    if self.open is not None:
                        self.open.pending.append(row)
                    continue
                after = state.working_server
                if after == 1:
                    self.on1.add(obs.mac)
                    self.lost.pop(obs.mac, None)
                elif before == 1 or (obs.server == 1 and obs.state != REGISTERED and (obs.mac in self.on1 or unseen)):
                    # left server 1; or a first word of it is a failure towards it (a refresh that found no answer,
                    # of a phone registered there before the collector started)
                    self.on1.discard(obs.mac)
                    at = obs.earliest if obs.earliest is not None else obs.t
                    self.lost.setdefault(obs.mac, at)
                if self.open is not None:
                    self._follow(obs, row, before, after, regained=was1 not in (None, REGISTERED))

    def _follow(self, obs: Observation, row: dict, before: int | None, after: int | None,
                regained: bool = False) -> None:
        """One observation of an open incident. `regained`: it shows server 1 registered where the phone's last
        word of server 1 was a loss: the first such is the evidence that server 1 answers again (a phone that has
        not noticed the cut yet still says registered, which says nothing of the restore)."""
        inc = self.open
        assert inc is not None
        inc.pending.append(row)
        f = inc.phones.setdefault(obs.mac, Followed())
        t = obs.t
        if (obs.server == 1 and obs.state == REGISTERED and regained and inc.restored is None
                and t >= inc.started):
            inc.restored = t
            self.sink.set(inc.id, restored=t)
            self.sink.log(inc.id, "server 1 answers again", t=t, mac=obs.mac, source=obs.source)
        if before == after:
            return
        if before == 1 and f.lost_at is None:
            f.lost_at = obs.earliest if obs.earliest is not None else t
        if after is None and f.nowhere_since is None:
            f.nowhere_since = t
        if after is not None and f.nowhere_since is not None:
            f.nowhere_s += t - f.nowhere_since
            f.nowhere_since = None
        if after == 2 and f.on2_at is None:
            f.on2_at = t
            if obs.mac in inc.baseline:
                self.sink.set_summary(self.site, inc.id, inc.started, len(inc.baseline),
                                      sum(1 for m in inc.baseline if m in inc.phones and inc.phones[m].on2_at))
        if after == 1 and f.back_at is None and (f.lost_at is not None or f.on2_at is not None):
            f.back_at = t
        self.sink.log(inc.id, "working server", mac=obs.mac, t=t, **{"from": before, "to": after},
                      source=obs.source)

    # ------------------------------------------------------------ decisions
    def tick(self, now: float, lease: Callable[[], str | None]) -> None:
        """Decide: open, follow, close. `lease()` says who holds the site's lease or observes it for an experiment
        (None: nobody); it is asked with the evidence already in hand (observe() waits), so a loss judged here
        came before the answer, and a cut made under a lease is never taken for an outage nobody caused."""
        with self.lock:
            held_by = lease()
            if held_by:
                self.quiet_until = now
                self.lost.clear()
                if self.open is not None:
                    self._close(now, f"the site's lease was taken by {held_by}: the outage from here is its work")
                return
            if self.open is None:
                self._maybe_open(now)
            else:
                self._maybe_close(now)

    def _maybe_open(self, now: float) -> None:
        for mac, at in list(self.lost.items()):
            if at < self.quiet_until or at < now - 2 * self.window_s:
                del self.lost[mac]         # caused, or a lone loss long past: not part of a site-wide one
        baseline = self.on1 | set(self.lost)
        need = threshold(len(baseline))
        times = sorted(self.lost.values())
        for i, start in enumerate(times):
            cluster = [t for t in times[i:] if t <= start + self.window_s]
            if len(cluster) >= need:
                self._open(start, now, baseline, need)
                return

    def _open(self, start: float, now: float, baseline: set[str], need: int) -> None:
        iid = self.sink.open(self.site, start, now, sorted(baseline), need, self.window_s)
        inc = self.open = OpenIncident(iid, start, set(baseline), need)
        for mac in sorted(baseline):
            f = inc.phones.setdefault(mac, Followed())
            f.lost_at = self.lost.get(mac)
        self.sink.log(iid, "opened", t=now, started=start, lost={m: t for m, t in sorted(self.lost.items())},
                      baseline=sorted(baseline), threshold=need, window_s=self.window_s)
        # what the evidence said since shortly before the start: the report's lanes begin there
        rows = [r for mac in sorted(self.macs) for r in self.history[mac] if r["t"] >= start - self.window_s]
        self.sink.keep_observations(iid, sorted(rows, key=lambda r: r["t"]))
        for mac in sorted(self.macs):     # replay each phone's moves since the start into its follow record
            prev, prev1 = None, None
            for r in self.history[mac]:
                if r.get("reg", 1) != 1:
                    continue
                ws = r.get("working_server")
                regained = r.get("server") == 1 and prev1 not in (None, REGISTERED)
                if r["t"] >= start and prev is not None and (ws != prev or regained):
                    self._replay(inc, mac, r, prev, ws, regained)
                prev = ws
                if r.get("server") == 1:
                    prev1 = r.get("state")
        self.lost.clear()

    def _replay(self, inc: OpenIncident, mac: str, r: dict, before, after, regained: bool) -> None:
        obs = Observation.from_dict(r)
        pending = inc.pending
        inc.pending = []
        self._follow(obs, r, before, after, regained)
        inc.pending = pending             # already stored with the history

    def _maybe_close(self, now: float) -> None:
        inc = self.open
        assert inc is not None
        if inc.pending:
            rows, inc.pending = inc.pending, []
            self.sink.keep_observations(inc.id, rows)
        back = [m for m in inc.baseline if self.states[m].working_server == 1]
        if len(back) == len(inc.baseline):
            self._close(now, "every phone that was on server 1 is back on it")
        elif len(back) >= inc.threshold:
            inc.most_back_at = inc.most_back_at or now
            if now - inc.most_back_at >= self.settle_s:
                self._close(now, f"most phones back on server 1 ({len(back)} of {len(inc.baseline)}), "
                                 f"{self.settle_s:g} s since")
        else:
            inc.most_back_at = None
            if now - inc.started >= self.max_s:
                self._close(now, f"timed out after {self.max_s:g} s ({len(back)} of {len(inc.baseline)} back)")

    def _outcome(self, inc: OpenIncident, mac: str, moves: dict) -> record.PhoneOutcome:
        """How one phone lived through the incident: failover from its start, recovery from the first evidence
        that server 1 answered again; failed when it never reached server 2, never came back, or took longer to
        fail over than its configuration predicts."""
        facts = self.facts.get(mac, {})
        failover = round(moves["on2_at"] - inc.started, 3) if moves.get("on2_at") is not None else None
        recovery = (round(max(0.0, moves["back_at"] - inc.restored), 3)
                    if moves.get("back_at") is not None and inc.restored is not None else None)
        why = []
        if moves.get("lost_at") is None and failover is None and moves.get("back_at") is None:
            return record.PhoneOutcome(mac, str(facts.get("model") or ""), str(facts.get("family") or ""),
                                       str(facts.get("firmware") or ""), None, None, True, [])   # kept server 1
        if failover is None:
            why.append("never reached server 2" + ("" if 2 in self.configured.get(mac, [1, 2])
                                                   else " (no server 2 configured)"))
        elif facts.get("failover_max_s") is not None and failover > facts["failover_max_s"]:
            why.append(f"failover took {failover:.1f}s, over the {facts['failover_max_s']:.1f}s its configuration "
                       f"predicts")
        if moves.get("back_at") is None:
            why.append("not back on server 1 when the incident closed")
        return record.PhoneOutcome(mac, str(facts.get("model") or ""), str(facts.get("family") or ""),
                                   str(facts.get("firmware") or ""), failover, recovery, not why, why)

    def _close(self, now: float, because: str) -> None:
        inc = self.open
        assert inc is not None
        if inc.pending:
            self.sink.keep_observations(inc.id, inc.pending)
        phones = {}
        for mac, f in sorted(inc.phones.items()):
            nowhere = f.nowhere_s + ((now - f.nowhere_since) if f.nowhere_since is not None else 0.0)
            phones[mac] = {"lost_at": f.lost_at, "on2_at": f.on2_at, "nowhere_s": round(nowhere, 3),
                           "back_at": f.back_at}
        self.sink.set(inc.id, phones=phones)
        self.sink.log(inc.id, "closed", t=now, because=because, phones=phones)
        self.sink.close(inc.id, self.site, now, because)
        self.sink.record(record.Outage("incident", inc.id, self.site, inc.started,
                                       [self._outcome(inc, mac, phones[mac]) for mac in sorted(inc.baseline)]))
        self.open = None
        for mac in inc.baseline:          # phones still off server 1 are this incident's, not the next one's
            self.lost.pop(mac, None)
