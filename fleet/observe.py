"""Observations from every source turned into per-server registration state and the working server.

No phone reports which server it is using. This module is the one place that
derives it (R4: the working server is the highest-priority server whose
registration is up), and every observation keeps its source and time so a
report can show where each conclusion came from.

Two kinds of evidence meet here. Line-level sources (telephone notification
events, state polling, REST lineInfo) say whether a registration is up at all
but not with which server. Per-server sources (SIP on the wire: a router
capture, a mirror port or HEP from a SIP server; the gateway's registrar
bindings) say, per server, registered with the granted expiry, refused with
the code, or no answer. The working server follows from the per-server states
(R4), and only while every higher-priority configured server is known to be down:
evidence about server 2 alone (a gateway's registrar, its HEP) says nothing of
the provider, so the working server stays unknown. Where per-server evidence
leaves exactly one configured server possible and a line-level source says the
line is up, that server is the working one.
The syslog registration line is a format of ours (drivers/collect/formats.py)
and is just one more per-server source: nothing here depends on it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

REGISTERED, UNREGISTERED, UNKNOWN = "registered", "unregistered", "unknown"


@dataclass(frozen=True)
class Observation:
    mac: str
    t: float                     # wall clock when the controller received it
    source: str                  # event, poll-rest, poll-state (line level); wire, hep, gateway, syslog (per server)
    reg: int = 1
    server: int | None = None    # None: line-level (not per server)
    state: str = UNKNOWN
    address: str = ""
    detail: str = ""
    kind: str = "registration"   # registration, call
    code: int | None = None      # the registrar's final status code (wire, HEP), when the source saw one
    expires: int | None = None   # seconds the binding was granted for (wire, HEP) or has left (gateway)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Observation":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class PhoneState:
    mac: str
    servers: dict[int, dict] = field(default_factory=dict)   # index -> {state, t, source, address}
    line_state: str = UNKNOWN
    working_server: int | None = None
    observed_at: float | None = None
    last_source: str = ""
    line_down_at: float | None = None   # last line unregistration: a phone sends it when it shuts down gracefully
    line_up_at: float | None = None     # last line-level registration (events, polling): the line is up, server unsaid
    evidence: dict[str, float] = field(default_factory=dict)   # source -> time of its newest observation
    inferred: bool = False              # working_server follows from a line-level source plus per-server gaps

    def to_dict(self) -> dict:
        return {"mac": self.mac, "servers": {str(k): v for k, v in self.servers.items()}, "line_state": self.line_state,
                "working_server": self.working_server, "observed_at": self.observed_at, "last_source": self.last_source,
                "line_down_at": self.line_down_at, "line_up_at": self.line_up_at, "evidence": self.evidence,
                "inferred": self.inferred}

    @classmethod
    def from_dict(cls, d: dict) -> "PhoneState":
        return cls(mac=d["mac"], servers={int(k): v for k, v in (d.get("servers") or {}).items()},
                   line_state=d.get("line_state", UNKNOWN), working_server=d.get("working_server"),
                   observed_at=d.get("observed_at"), last_source=d.get("last_source", ""),
                   line_down_at=d.get("line_down_at"), line_up_at=d.get("line_up_at"), evidence=dict(d.get("evidence") or {}),
                   inferred=bool(d.get("inferred", False)))


def working_server(servers: dict[int, dict]) -> int | None:
    up = [i for i, s in servers.items() if s.get("state") == REGISTERED]
    return min(up) if up else None


def derive_working(state: PhoneState, configured: list[int] | None = None) -> tuple[int | None, bool]:
    """(working server, inferred?). R4 over the per-server states; when none is known registered but a
    line-level source said the line is up after the newest per-server evidence, and that evidence rules out
    every configured server but one, that one is working (inferred). `configured`: the indices of the
    servers the phone registers with."""
    ws = working_server(state.servers)
    if ws is not None and configured and any(state.servers.get(i, {}).get("state") != UNREGISTERED
                                             for i in configured if i < ws):
        # a higher-priority server we have no word on may be the one in use (gateway-only evidence cannot see the
        # provider): the working server is unknown, not the lowest one we happen to see
        return None, False
    if ws is not None or state.line_state != REGISTERED or not configured or state.line_up_at is None:
        return ws, False
    if any(s.get("t", 0.0) > state.line_up_at for s in state.servers.values()):
        return None, False      # a server went down after the line said it was up: the line may be down now
    possible = [i for i in configured if state.servers.get(i, {}).get("state") != UNREGISTERED]
    return (possible[0], True) if len(possible) == 1 else (None, False)


def apply(state: PhoneState, obs: Observation, configured: list[int] | None = None) -> bool:
    """Fold one observation into the phone's state; True when the working server changed.
    `configured` (the indices of the servers the phone registers with) lets a line-level source complete
    per-server evidence that leaves only one server possible."""
    if obs.kind != "registration":
        return False
    before = state.working_server
    state.observed_at = obs.t
    state.last_source = obs.source
    state.evidence[obs.source] = max(obs.t, state.evidence.get(obs.source, 0.0))
    if obs.server is not None:
        prev = state.servers.get(obs.server)
        if prev is not None and prev.get("t", 0) > obs.t:
            return False   # an older message arriving late never overrides a newer one
        entry = {"state": obs.state, "t": obs.t, "source": obs.source, "address": obs.address}
        if obs.code is not None:
            entry["code"] = obs.code
        if obs.state == REGISTERED and obs.expires is not None:
            entry["until"] = round(obs.t + obs.expires, 3)    # when the binding lapses unless it is refreshed
        state.servers[obs.server] = entry
        if working_server(state.servers) is not None:
            state.line_state = REGISTERED
    else:
        state.line_state = obs.state
        if obs.state == REGISTERED:
            state.line_up_at = max(obs.t, state.line_up_at or 0.0)
        if obs.state == UNREGISTERED:
            state.line_down_at = max(obs.t, state.line_down_at or 0.0)
            for s in state.servers.values():
                s["state"] = UNREGISTERED
    state.working_server, state.inferred = derive_working(state, configured)
    return state.working_server != before


def from_line_info(mac: str, t: float, line: dict, configured: list[dict]) -> list[Observation]:
    """REST lineInfo names only the server in use (ProxyAddress, our inference). By R4 every server of
    higher priority is then not registered; lower-priority servers stay unknown."""
    try:
        reg = int(line.get("LineNumber", 1))
    except (TypeError, ValueError):
        return []
    status = str(line.get("RegistrationStatus", "")).lower()
    proxy = str(line.get("ProxyAddress", ""))
    if status != "registered":
        return [Observation(mac=mac, t=t, source="poll-rest", reg=reg, server=None, state=UNREGISTERED)]
    index = next((s["index"] for s in configured if s.get("address") == proxy and s.get("register", True)), None)
    if index is None:
        return [Observation(mac=mac, t=t, source="poll-rest", reg=reg, server=None, state=REGISTERED, address=proxy)]
    out = [Observation(mac=mac, t=t, source="poll-rest", reg=reg, server=s["index"], state=UNREGISTERED,
                       address=s.get("address", ""), detail="inferred: a lower-priority server is working")
           for s in configured if s["index"] < index and s.get("register", True)]
    out.append(Observation(mac=mac, t=t, source="poll-rest", reg=reg, server=index, state=REGISTERED, address=proxy))
    return out
