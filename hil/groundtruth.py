"""Lab-only ground truth: what really happened to each virtual phone, and when.

Kept apart from every phone interface on purpose: the controller never sees
it; tests read it (``hil status --json``) to judge what the controller observed.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field


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
                                 "events": [asdict(e) for e in self.events.get(mac, [])]}
                           for mac in sorted(set(self.events) | set(self.current))}}
