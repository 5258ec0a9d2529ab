"""What a flapping WAN did to each phone, counted from fleet's own evidence: pure functions, no Redis, no clock.

Per phone, over the flap's window (its first cut to the end of its last up time):
- registrations lost, per server: a server's registration going from registered to not, as ONE per-server source
  saw it (the first the phone has of wire, HEP, syslog, gateway bindings: two sources seeing the same loss a few
  milliseconds apart would count it twice);
- time registered nowhere: the seconds the phone's working server (R4, as the store derived it after each
  observation) was none;
- REGISTERs sent, per server: one per REGISTER transaction a wire source (a capture, else HEP) saw end, counted
  at the moment it was sent (an unanswered one ends at its timeout: its detail says how long after). A challenge
  and the authenticated request that answers it are one. Without a wire source the answer is "unknown": silence
  proves nothing, and nothing is invented;
- how it ended: the working server at the end of the run, when it last came back to server 1 after the last
  restore, and whether that was within its flap recovery bound (fleet.phoneconf.predict.flap_recovery_bound).
  A phone known to be back late, or known not back once the bound had passed, fails; one whose run ended before
  its bound did is undetermined, never failed on a guess.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

LOSS_SOURCES = ("wire", "hep", "syslog", "gateway")
REGISTER_SOURCES = ("wire", "hep")
UNKNOWN = "unknown"
_NO_ANSWER = re.compile(r"\bno answer within ([0-9]+(?:\.[0-9]+)?)s\b")


@dataclass(frozen=True)
class FlapWindow:
    start: float                  # the first cut (as the router confirmed it)
    end: float                    # the end of the last up time (the flap step's end)
    last_restore: float | None    # the last restore the router confirmed (None: never confirmed)


@dataclass
class PhoneFlap:
    mac: str
    registrations_lost: dict[str, int] | str = UNKNOWN   # server -> count, or "unknown"
    lost_source: str | None = None
    registered_nowhere_s: float | None = None
    registers_sent: dict[str, int] | str = UNKNOWN
    registers_source: str | None = None
    ended_on: int | None = None           # the working server at the end of the run
    back_on_1_s: float | None = None      # last restore -> the last return to server 1 (0: it never left it)
    bound_s: float | None = None
    bound: dict = field(default_factory=dict)   # the derivation (predict.Derivation.to_dict)
    within_bound: bool | None = None      # None: undetermined (no bound, or the run ended before it passed)
    judgement: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _registration(o: dict) -> bool:
    return o.get("reg", 1) == 1 and o.get("kind", "registration") == "registration"


def sent_at(o: dict) -> float:
    """When the REGISTER a wire observation is about was sent: an unanswered one's observation comes at its
    timeout, which its detail gives ("no answer within 1.6s"); an answered one's comes with the answer."""
    m = _NO_ANSWER.search(str(o.get("detail") or ""))
    return float(o["t"]) - float(m.group(1)) if m else float(o["t"])


def registrations_lost(observations: list[dict], initial_servers: dict | None, servers: list[int],
                       window: FlapWindow) -> tuple[dict[str, int] | str, str | None]:
    """(server -> losses in the window, the source counted), or ("unknown", None) without a per-server source."""
    obs = [o for o in observations if _registration(o) and o.get("server") is not None]
    source = next((s for s in LOSS_SOURCES if any(o.get("source") == s for o in obs)), None)
    if source is None:
        return UNKNOWN, None
    state = {s: ((initial_servers or {}).get(str(s)) or (initial_servers or {}).get(s) or {}).get("state")
             for s in servers}
    lost = {str(s): 0 for s in servers}
    for o in sorted((o for o in obs if o.get("source") == source), key=lambda o: o["t"]):
        if o["t"] > window.end:
            break
        server = o["server"]
        if server not in state:
            continue
        if o["t"] >= window.start and state[server] == "registered" and o.get("state") != "registered":
            lost[str(server)] += 1
        state[server] = o.get("state")
    return lost, source


def registered_nowhere_s(observations: list[dict], initial_working: int | None, window: FlapWindow) -> float:
    """Seconds of the window in which the phone's working server was none."""
    working, since, total = initial_working, window.start, 0.0
    for o in sorted((o for o in observations if _registration(o) and "working_server" in o), key=lambda o: o["t"]):
        t = min(max(o["t"], window.start), window.end)
        if working is None and t > since:
            total += t - since
        working, since = o.get("working_server"), t
        if o["t"] > window.end:
            break
    if working is None and window.end > since:
        total += window.end - since
    return round(total, 3)


def wire_source(site_sources: list[str]) -> str | None:
    """The observation source a site's evidence sources (by label: "router capture", "local capture", "hep")
    give REGISTERs from: a capture's are "wire", a HEP listener's "hep"; None: no wire source."""
    labels = [str(s).lower() for s in site_sources]
    if any("capture" in s for s in labels):
        return "wire"
    return "hep" if any("hep" in s for s in labels) else None


def registers_sent(observations: list[dict], servers: list[int], window: FlapWindow,
                   site_sources: list[str]) -> tuple[dict[str, int] | str, str | None]:
    """(server -> REGISTERs sent in the window, the source counted), or ("unknown", None) when the site has no
    wire source (`site_sources`: its evidence sources by label; a site whose capture saw nothing of this phone
    counts zeros, which is what the capture saw)."""
    source = next((s for s in REGISTER_SOURCES if any(o.get("source") == s for o in observations if _registration(o))),
                  None) or wire_source(site_sources)
    if source is None:
        return UNKNOWN, None
    sent = {str(s): 0 for s in servers}
    for o in observations:
        if _registration(o) and o.get("source") == source and o.get("server") in servers \
                and window.start <= sent_at(o) < window.end:
            sent[str(o["server"])] += 1
    return sent, source


def ending(observations: list[dict], initial_working: int | None, window: FlapWindow, run_end: float,
           bound_s: float | None) -> tuple[int | None, float | None, bool | None, str]:
    """(working server at the end, last restore -> back on server 1, within the bound?, judgement)."""
    obs = sorted((o for o in observations if _registration(o) and "working_server" in o), key=lambda o: o["t"])
    restore = window.last_restore
    working = initial_working
    back: float | None = None
    for o in obs:
        if restore is not None and o["t"] >= restore and o.get("working_server") == 1 and working != 1:
            back = o["t"]
        if restore is not None and o["t"] < restore:
            back = None if o.get("working_server") != 1 else restore   # on 1 at the restore: back at once
        working = o.get("working_server")
    if restore is None:
        return working, None, None, "the WAN's last restore was never confirmed"
    if back is None and working == 1:
        back = restore
    back_s = None if back is None or working != 1 else round(back - restore, 3)
    if bound_s is None:
        said = "no flap recovery bound for its configuration"
        return working, back_s, None, said if working == 1 else f"{said}; ended on {_server(working)}"
    if working == 1 and back_s is not None:
        ok = back_s <= bound_s
        return working, back_s, ok, (f"back on server 1 {back_s:.1f} s after the last restore, "
                                     f"{'within' if ok else 'over'} its {bound_s:.1f} s bound")
    waited = run_end - restore
    if waited > bound_s:
        return working, None, False, (f"ended on {_server(working)}, not server 1, {waited:.1f} s after the last "
                                      f"restore (bound {bound_s:.1f} s)")
    return working, None, None, (f"undetermined: the run ended {waited:.1f} s after the last restore, before its "
                                 f"{bound_s:.1f} s bound, on {_server(working)}")


def _server(n: int | None) -> str:
    return "no server" if n is None else f"server {n}"


def phone_flap(mac: str, observations: list[dict], initial: dict | None, servers: list[int], window: FlapWindow,
               run_end: float, bound: dict | None, site_sources: list[str]) -> PhoneFlap:
    """Everything above for one phone. `initial`: its stored state when the run began; `servers`: the indices
    its registration 1 registers with; `bound`: its flap recovery derivation (None: no bound)."""
    initial = initial or {}
    start_working = initial.get("working_server")
    before = [o for o in observations if _registration(o) and "working_server" in o and o["t"] < window.start]
    window_working = before[-1]["working_server"] if before else start_working
    lost, lost_source = registrations_lost(observations, initial.get("servers"), servers, window)
    sent, sent_source = registers_sent(observations, servers, window, site_sources)
    bound_s = bound.get("seconds") if bound else None
    ended, back_s, ok, said = ending(observations, start_working, window, run_end, bound_s)
    return PhoneFlap(mac=mac, registrations_lost=lost, lost_source=lost_source,
                     registered_nowhere_s=registered_nowhere_s(observations, window_working, window),
                     registers_sent=sent, registers_source=sent_source, ended_on=ended, back_on_1_s=back_s,
                     bound_s=bound_s, bound=dict(bound or {}), within_bound=ok, judgement=said)
