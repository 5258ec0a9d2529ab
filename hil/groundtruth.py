"""Lab-only ground truth: what really happened to each virtual phone, and when.

Kept apart from every phone interface on purpose: the controller never sees
it; tests read it (``hil status --json``) to judge what the controller observed.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field

REGISTERS_KEPT = 1000    # REGISTER attempts kept per phone (a long-running demo lab must not grow without end)


@dataclass
class TruthEvent:
    t: float            # wall clock, seconds since the epoch
    mac: str
    kind: str           # boot, reboot, server_state, working_server, config, call, unavailable, available
    # `config`: what a boot applied: master file, files read in order (overrides first), parameters and their file
    data: dict = field(default_factory=dict)


class GroundTruth:
    def __init__(self, keep: int = 2000) -> None:
        self.keep = keep
        self.events: dict[str, list[TruthEvent]] = defaultdict(list)
        self.current: dict[str, dict] = defaultdict(dict)
        # each REGISTER attempt a phone started (a challenged one and its authenticated retry are one attempt,
        # as a capture's transaction matcher counts them): kept apart from `events` so that a busy phone's
        # refreshes never push its boot and config events out
        self.registers: dict[str, deque] = defaultdict(lambda: deque(maxlen=REGISTERS_KEPT))

    def register_sent(self, mac: str, reg: int, server: int) -> None:
        self.registers[mac].append({"t": time.time(), "reg": reg, "server": server})

    def record(self, mac: str, kind: str, **data) -> None:
        events = self.events[mac]
        events.append(TruthEvent(time.time(), mac, kind, data))
        if len(events) > self.keep:
            del events[: len(events) - self.keep]

    def applied(self, mac: str) -> dict[str, str]:
        """The parameters the phone's last boot applied (passwords as ***), as `current.applied` in the snapshot."""
        return dict(self.current.get(mac, {}).get("applied", {}))

    def snapshot(self) -> dict:
        return {"phones": {mac: {"current": dict(self.current[mac]),
                                 "events": [asdict(e) for e in self.events.get(mac, [])],
                                 "registers": list(self.registers.get(mac, ()))}
                           for mac in sorted(set(self.events) | set(self.current))}}


def window_counts(phone: dict, start: float, end: float, reg: int = 1) -> dict:
    """What really happened to one phone (its `snapshot()` entry) between `start` and `end`, in the shape a flap
    report counts (fleet.experiment.flap_counts): REGISTER attempts started per server, registrations lost per
    server (a server's state going from registered to anything else), and the seconds with no working server."""
    sent: dict[str, int] = defaultdict(int)
    for r in phone.get("registers") or []:
        if r["reg"] == reg and start <= r["t"] < end:
            sent[str(r["server"])] += 1
    lost: dict[str, int] = defaultdict(int)
    state: dict[int, str] = {}
    working, since, nowhere = None, start, 0.0
    for e in sorted(phone.get("events") or [], key=lambda e: e["t"]):
        data = e.get("data") or {}
        if data.get("reg", 1) != reg or e["t"] > end:
            continue
        if e["kind"] == "server_state":
            if start <= e["t"] and state.get(data["server"]) == "registered" and data["state"] != "registered":
                lost[str(data["server"])] += 1
            state[data["server"]] = data["state"]
        elif e["kind"] == "working_server":
            t = max(e["t"], start)
            if working is None and t > since:
                nowhere += t - since
            working, since = data["server"], t
    if working is None and end > since:
        nowhere += end - since
    return {"registers_sent": dict(sent), "registrations_lost": dict(lost), "registered_nowhere_s": round(nowhere, 3)}
