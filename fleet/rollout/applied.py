"""What each phone runs now, and which rollout set each of its values: the ground rollouts stack on.

A phone's pushed parameters (`RolloutStore.last_pushed`) say what it runs,
not who decided each value. The rollout that pushed them is found by their
content hash (`config_version`) among the rollouts' verified phones, newest
first; its plan entry carries `set_by` (name -> [rollout id, when planned])
for every value a playbook set, its own and those it kept from earlier
rollouts, so one entry is the whole history. Read-only.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from fleet.phoneconf import secrets as secret_params
from fleet.state.store import RolloutStore

HISTORY = 500     # rollouts looked through, newest first, for the one whose push a phone runs


@dataclass(frozen=True)
class Applied:
    """What a phone runs from fleet: the last pushed parameters (secret references, never values)."""
    params: dict[str, str]
    set_by: dict[str, tuple[str, float]] = field(default_factory=dict)   # values a rollout's playbook set
    rollout: str = ""                     # the rollout whose push it runs ("" when not found)
    verbatim: tuple[str, ...] = ()        # uncatalogued names that rollout passed through
    config_hash: str = ""

    def previous(self) -> dict:
        """As a plan records it for `fleet rollout revert`: parameters masked, references apart."""
        masked, refs = secret_params.split(self.params)
        return {"params": masked, "secret_refs": refs, "verbatim": list(self.verbatim), "rollout": self.rollout,
                "config_hash": self.config_hash, "set_by": {k: list(v) for k, v in self.set_by.items()}}


def when(t: float) -> str:
    """A time as the dry run prints it: UTC, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def read(rs: RolloutStore, macs: list[str]) -> dict[str, Applied]:
    """Per MAC with a pushed configuration: what it runs and who set each value."""
    pushed = {m: p for m, p in rs.last_pushed(macs).items() if p}
    versions = rs.config_versions(list(pushed))
    origin: dict[str, tuple[str, float, dict]] = {}
    todo = [m for m in pushed if versions.get(m)]
    for row in rs.list(HISTORY):
        if not todo:
            break
        rid, created = row["id"], float(row.get("created") or 0)
        for mac, record in rs.phones(rid, todo, full=True).items():
            if record.get("state") != "verified" or not record.get("plan"):
                continue
            entry = json.loads(record["plan"])
            if entry.get("config_hash") == versions[mac]:
                origin[mac] = (rid, created, entry)
        todo = [m for m in todo if m not in origin]
    out = {}
    for mac, params in pushed.items():
        if mac not in origin:
            out[mac] = Applied(dict(params), config_hash=versions.get(mac) or "")
            continue
        rid, created, entry = origin[mac]
        if "set_by" in entry:
            set_by = {k: (str(v[0]), float(v[1])) for k, v in entry["set_by"].items()}
        else:     # a plan from before rollouts stacked: what it changed counts as set by it
            set_by = {k: (rid, created) for k, (_, new) in entry.get("diff", {}).items() if new is not None}
        out[mac] = Applied(dict(params), set_by, rid, tuple(entry.get("verbatim", [])), versions[mac])
    return out
