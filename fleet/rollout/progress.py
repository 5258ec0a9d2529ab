"""What an operator watching `fleet rollout run` reads: one line per phone as it settles, in Ansible's per-host style,
every step with `-v`, and a summary in words.

Why a module of its own: a progress bar per site says how many phones are done, not which one failed or why, and a
reason that lives only in `--json` or in the rollout's history is found hours late. The lines are made from what
the driver already reads (each phone's rollout record) and from the rollout's event log, where the workers'
device steps are traced (fleet.base.steps); nothing here sends or writes anything.

    ok: [0004f2000001] east wave 1 verified on server 1 in 23.4 s
    failed: [0004f2000002] east wave 1: call check refused: wrong credentials: ...
    deferred: [0004f2000003] east wave 1: in a call (REST callStatus v2: 1 call (Connected))
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from fleet.base.words import servers
from soundpoint.values import plural
from fleet.rollout.policy import why_deferred
from fleet.state.store import K, RolloutStore

# the order counts are told in: outcomes first, then what is still under way
COUNT_ORDER = ("verified", "skipped", "failed", "rolled_back", "rollback_failed", "deferred", "pending", "dispatched",
               "publishing", "rebooting", "verifying", "rolling_back")


def summary(counts: Mapping[str, int]) -> str:
    """Counts as words: "6 phones: 5 verified, 1 failed" (never a dict's repr); states as spoken ("rolled back")."""
    total = int(counts.get("total", sum(v for k, v in counts.items() if k != "total")))
    known = [k for k in COUNT_ORDER if counts.get(k)] + sorted(k for k in counts if k not in COUNT_ORDER + ("total",)
                                                               and counts[k])
    parts = [f"{counts[k]} {str(k).replace('_', ' ')}" for k in known]
    return plural(total, "phone") + (": " + ", ".join(parts) if parts else "")


def counts_of(states: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """{"total": n, state: how many} of rollout records (MAC -> record)."""
    out: dict[str, int] = {"total": len(states)}
    for st in states.values():
        state = st.get("state") or "?"
        out[state] = out.get(state, 0) + 1
    return out


def why(st: Mapping[str, str]) -> str:
    """Why a phone failed or waits, from its record: its error, or a deferred phone's reason; "" otherwise."""
    if st.get("error"):
        return str(st["error"])
    if st.get("state") == "deferred":
        return why_deferred(st.get("deferred_reason"))
    return ""


class PhoneLines:
    """The per-phone lines of one rollout, each said once: a phone's settling, a deferral's (new) reason, and with
    `verbose` every device step a worker traced (from the journal: none is missed) and the states the driver's
    polls see (a short state between two polls is not said)."""

    def __init__(self, plan: Mapping, registered_to: Iterable[int], verbose: bool = False) -> None:
        self.site_of = {p["mac"]: p["site"] for p in plan["phones"]}
        self.wave_of = {mac: i for i, wave in enumerate(plan["waves"]) for mac in wave}
        self.servers = servers(registered_to)
        self.verbose = verbose
        self.seen: dict[str, tuple[str, str]] = {}     # MAC -> (state, why) last said

    def _who(self, mac: str) -> str:
        return f"[{mac}] {self.site_of.get(mac, '?')} wave {self.wave_of.get(mac, '?')}"

    def states(self, records: Mapping[str, Mapping[str, str]]) -> list[str]:
        """Lines for what changed in `records` (MAC -> rollout record) since the last call."""
        out = []
        for mac, st in records.items():
            state, reason = st.get("state") or "", why(st)
            if not state or self.seen.get(mac) == (state, reason):
                continue
            before = self.seen.get(mac, ("", ""))
            self.seen[mac] = (state, reason)
            line = self.line(mac, st, state, reason, before[0])
            if line:
                out.append(line)
        return out

    def line(self, mac: str, st: Mapping[str, str], state: str, reason: str, before: str) -> str:
        """The line for `mac` now in `state` ("" when there is nothing worth saying at this verbosity)."""
        who = self._who(mac)
        if state == "verified":
            took = st.get("verified_in")
            how = f" ({st['applied']})" if st.get("applied") else ""
            return f"ok: {who} verified on {self.servers}" + (f" in {float(took):.1f} s" if took else "") + how
        if state == "skipped":
            return f"skipped: {who}: nothing to change, it runs this configuration already"
        if state == "failed":
            return f"failed: {who}: {reason or 'no reason recorded'}"
        if state == "rolled_back":
            return f"failed: {who}: rolled back to its previous files: {reason or 'no reason recorded'}"
        if state == "rollback_failed":
            return f"failed: {who}: rollback failed: {reason or 'no reason recorded'}"
        if state == "deferred":
            return f"deferred: {who}: {reason}; tried again shortly"
        if state == "pending" and not before:
            return ""          # every phone starts so: not worth a line
        if self.verbose:
            extra = f": {reason}" if reason else ""
            if state == "verifying":
                extra = f": waiting for it to register with {self.servers}"
            return f"  {who} {state.replace('_', ' ')}{extra}"
        return ""

    def steps(self, events: Iterable[Mapping]) -> list[str]:
        """With `verbose`, a line per device step a worker finished (call check, publish, reboot, state query)."""
        if not self.verbose:
            return []
        out = []
        for e in events:
            if e.get("kind") != "step" or e.get("phase") != "end":
                continue
            mac = str(e.get("mac", "?"))
            took = e.get("duration_s")
            line = f"  {self._who(mac)} step {e.get('step', '?')}: {e.get('outcome', '?')}"
            line += f" in {float(took):.1f} s" if isinstance(took, (int, float)) else ""
            if e.get("error"):
                line += f": {e['error']}"
            out.append(line)
        return out


class EventTail:
    """The rollout's event log from where it ended when the tail was made: each call returns only what is new."""

    def __init__(self, rs: RolloutStore, rid: str) -> None:
        self.r, self.key = rs.r, K.rollout_events(rid)
        last = self.r.xrevrange(self.key, count=1)
        self.position = last[0][0] if last else "0-0"

    def new(self) -> list[dict]:
        found = self.r.xread({self.key: self.position}, count=10_000) or []
        out = []
        for _, entries in found:
            for entry_id, fields in entries:
                self.position = entry_id
                try:
                    out.append(json.loads(fields["e"]))
                except (KeyError, ValueError):
                    continue
        return out
