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
# A registration reported by a source that knows only when it received the report (syslog, events, bindings) this
# soon after one a source saw sent (wire, HEP, a poll) is taken for the same registration, and keeps that one's
# `sent`: the later report must not erase what proves when the phone sent it (fleet.rollout.policy.registered).
# Counted from that `sent`, so reports in a row never carry an old one along.
SAME_REGISTRATION_S = 1.0


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
    earliest: float | None = None   # the change happened between this and `t`, not exactly at `t`: a lapsed
                                    # binding, an unanswered DNS lookup (None: `t` is the moment)
    sent: float | None = None    # when the phone sent the REGISTER this answers (wire, HEP), or when the question
                                 # its answer holds after was asked (poll-rest: lineInfo): a registration from
                                 # before a reboot went out proves nothing about the reboot (None: unknown)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Observation":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class LineState:
    """One registration's (line's) state: per-server states, the line-level state and the working server."""
    servers: dict[int, dict] = field(default_factory=dict)   # index -> {state, t, source, address[, code, until, sent]}
    line_state: str = UNKNOWN
    working_server: int | None = None
    line_down_at: float | None = None   # last line unregistration: a phone sends it when it shuts down gracefully
    line_up_at: float | None = None     # last line-level registration (events, polling): the line is up, server unsaid
    inferred: bool = False              # working_server follows from a line-level source plus per-server gaps

    def to_dict(self) -> dict:
        return {"servers": {str(k): v for k, v in self.servers.items()}, "line_state": self.line_state,
                "working_server": self.working_server, "line_down_at": self.line_down_at,
                "line_up_at": self.line_up_at, "inferred": self.inferred}

    @classmethod
    def from_dict(cls, d: dict) -> "LineState":
        return cls(servers={int(k): v for k, v in (d.get("servers") or {}).items()},
                   line_state=d.get("line_state", UNKNOWN), working_server=d.get("working_server"),
                   line_down_at=d.get("line_down_at"), line_up_at=d.get("line_up_at"),
                   inferred=bool(d.get("inferred", False)))


def _line1(name: str) -> property:
    """PhoneState.<name> is registration 1's: what status, experiments and verification read."""
    return property(lambda self: getattr(self.line(1), name),
                    lambda self, value: setattr(self.line(1), name, value),
                    doc=f"registration 1's {name}")


class PhoneState:
    """A phone's observed state: one LineState per registration (`lines`), and what is the phone's own
    (when and from which source it was last observed). `servers`, `working_server`, `line_state`,
    `line_up_at`, `line_down_at` and `inferred` are registration 1's, as `fleet status`, experiments and
    rollout verification read them; `line(x)` is registration x's.

    JSON: registration 1's fields at the top level, as before lines were kept apart, plus `lines`
    (registration -> LineState.to_dict()) for every other registration observed."""

    def __init__(self, mac: str, lines: dict[int, LineState] | None = None, observed_at: float | None = None,
                 last_source: str = "", evidence: dict[str, float] | None = None) -> None:
        self.mac = mac
        self.lines: dict[int, LineState] = lines if lines is not None else {}
        self.observed_at = observed_at
        self.last_source = last_source
        self.evidence: dict[str, float] = evidence if evidence is not None else {}   # source -> newest observation

    servers = _line1("servers")
    line_state = _line1("line_state")
    working_server = _line1("working_server")
    line_down_at = _line1("line_down_at")
    line_up_at = _line1("line_up_at")
    inferred = _line1("inferred")

    def line(self, reg: int = 1) -> LineState:
        """Registration `reg`'s state (created empty when nothing was observed of it)."""
        found = self.lines.get(reg)
        if found is None:
            found = self.lines[reg] = LineState()
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhoneState) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PhoneState({self.to_dict()!r})"

    def to_dict(self) -> dict:
        others = {str(reg): ls.to_dict() for reg, ls in sorted(self.lines.items()) if reg != 1}
        return {"mac": self.mac, **self.line(1).to_dict(), "observed_at": self.observed_at,
                "last_source": self.last_source, "evidence": self.evidence, "lines": others}

    @classmethod
    def from_dict(cls, d: dict) -> "PhoneState":
        lines = {1: LineState.from_dict(d)}
        for reg, ld in (d.get("lines") or {}).items():
            if int(reg) != 1:
                lines[int(reg)] = LineState.from_dict(ld or {})
        return cls(mac=d["mac"], lines=lines, observed_at=d.get("observed_at"), last_source=d.get("last_source", ""),
                   evidence=dict(d.get("evidence") or {}))


def working_server(servers: dict[int, dict]) -> int | None:
    up = [i for i, s in servers.items() if s.get("state") == REGISTERED]
    return min(up) if up else None


def derive_working(state: LineState | PhoneState, configured: list[int] | None = None) -> tuple[int | None, bool]:
    """(working server, inferred?) of one registration (a PhoneState: its registration 1). R4 over the
    per-server states; when none is known registered but a line-level source said the line is up after the
    newest per-server evidence, and that evidence rules out every configured server but one, that one is
    working (inferred). `configured`: the indices of the servers the registration registers with."""
    if isinstance(state, PhoneState):
        state = state.line(1)
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
    """Fold one observation into its registration's state (`obs.reg`: a phone's line 2 never touches line
    1's servers); True when that registration's working server changed.
    `configured` (the indices of the servers registration `obs.reg` registers with) lets a line-level source
    complete per-server evidence that leaves only one server possible."""
    if obs.kind != "registration":
        return False
    line = state.line(obs.reg)
    before = line.working_server
    state.observed_at = obs.t
    state.last_source = obs.source
    state.evidence[obs.source] = max(obs.t, state.evidence.get(obs.source, 0.0))
    if obs.server is not None:
        prev = line.servers.get(obs.server)
        if prev is not None and prev.get("t", 0) > obs.t:
            if (obs.state == REGISTERED == prev.get("state") and obs.sent is not None
                    and obs.sent > prev.get("sent", float("-inf"))):
                prev["sent"] = obs.sent   # a capture of a REGISTER after the one a later report took its `sent` from
            return False   # an older message arriving late never overrides a newer one
        entry = {"state": obs.state, "t": obs.t, "source": obs.source, "address": obs.address}
        if obs.code is not None:
            entry["code"] = obs.code
        if obs.sent is not None:
            entry["sent"] = obs.sent
        elif (obs.state == REGISTERED and prev is not None and prev.get("state") == REGISTERED
              and prev.get("sent") is not None and obs.t - prev["sent"] <= SAME_REGISTRATION_S):
            entry["sent"] = prev["sent"]   # from its send time, not the last report's: reports in a row never chain it
        if obs.state == REGISTERED and obs.expires is not None:
            entry["until"] = round(obs.t + obs.expires, 3)    # when the binding lapses unless it is refreshed
        line.servers[obs.server] = entry
        if working_server(line.servers) is not None:
            line.line_state = REGISTERED
    else:
        line.line_state = obs.state
        if obs.state == REGISTERED:
            line.line_up_at = max(obs.t, line.line_up_at or 0.0)
        if obs.state == UNREGISTERED:
            line.line_down_at = max(obs.t, line.line_down_at or 0.0)
            for s in line.servers.values():
                s["state"] = UNREGISTERED
    line.working_server, line.inferred = derive_working(line, configured)
    return line.working_server != before


def from_line_info(mac: str, t: float, line: dict, configured: list[dict], sent: float | None = None) -> list[Observation]:
    """REST lineInfo names only the server in use (ProxyAddress, our inference). By R4 every server of
    higher priority is then not registered; lower-priority servers stay unknown. `sent`: when the request
    left (the answer describes the phone at some moment between it and `t`)."""
    try:
        reg = int(line.get("LineNumber", 1))
    except (TypeError, ValueError):
        return []
    status = str(line.get("RegistrationStatus", "")).lower()
    proxy = str(line.get("ProxyAddress", ""))
    if status != "registered":
        return [Observation(mac=mac, t=t, source="poll-rest", sent=sent, reg=reg, server=None, state=UNREGISTERED)]
    index = next((s["index"] for s in configured if s.get("address") == proxy and s.get("register", True)), None)
    if index is None:
        return [Observation(mac=mac, t=t, source="poll-rest", sent=sent, reg=reg, server=None, state=REGISTERED, address=proxy)]
    out = [Observation(mac=mac, t=t, source="poll-rest", sent=sent, reg=reg, server=s["index"], state=UNREGISTERED,
                       address=s.get("address", ""), detail="inferred: a lower-priority server is working")
           for s in configured if s["index"] < index and s.get("register", True)]
    out.append(Observation(mac=mac, t=t, source="poll-rest", sent=sent, reg=reg, server=index, state=REGISTERED, address=proxy))
    return out
