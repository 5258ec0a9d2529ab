"""Which lines a phone registers and the servers of each, from its configuration: the one answer.

The rollout's refresh-load check (fleet.rollout.plan.refresh_load) counts the
REGISTERs each server receives, and wire attribution (fleet.evidence.sources)
expects the REGISTERs of the same registrations at the same servers; both read
the phone's parameters through these functions, so a phone cannot be one thing
to the plan and another to the wire.

What a line registers (SIP 2.x-3.1 admin guides, `reg.x.address`: "the actual
address corresponding to this registration", default Null): a registration
exists where its `reg.x.address` is set; a line without one has no SIP URI to
register. So a
phone configured on line 2 only registers line 2. A configuration that names no
line at all is taken as line 1: fleet's known configuration of a phone (the
inventory, what a rollout pushed) may leave `reg.1.address` to the site's own
files (the collector reads it there: fleet.sites.users), and a phone in the
fleet registers at least one line; such a line 1 is matched on the wire by the
phone's source address alone.
"""
from __future__ import annotations

import re

from fleet.phoneconf.predict import server_timing

_REG_ADDRESS = re.compile(r"reg\.([1-9][0-9]?)\.address")


def registrations(params: dict[str, str]) -> list[int]:
    """The registrations (lines) a phone registers: every x with a non-empty reg.x.address; line 1 when no line
    names one (its user is set where fleet does not see it)."""
    found = {int(m[1]) for k, v in params.items() if str(v).strip() and (m := _REG_ADDRESS.fullmatch(k))}
    return sorted(found) or [1]


def registration_user(params: dict[str, str], reg: int = 1) -> str:
    """The user part the phone registers as (reg.x.address, "1001" or "1001@example.com"); "" when unknown."""
    addr = params.get(f"reg.{reg}.address", "")
    return addr.removeprefix("sip:").split("@", 1)[0]


def outbound_proxy(params: dict[str, str], reg: int = 1) -> dict | None:
    """The registration's outbound proxy ({address, port, transport}; port 0 = the transport's default):
    reg.x.outboundProxy.* where set, else the phone-wide voIpProt.SIP.outboundProxy.*; None without one."""
    for prefix in (f"reg.{reg}.outboundProxy.", "voIpProt.SIP.outboundProxy."):
        address = str(params.get(prefix + "address") or "").strip()
        if address:
            port = str(params.get(prefix + "port") or "").strip()
            return {"address": address, "port": int(port) if port.isdigit() and int(port) <= 65535 else 0,
                    "transport": str(params.get(prefix + "transport") or "")}
    return None


def phone_servers(params: dict[str, str], reg: int = 1) -> list[dict]:
    """The servers of one registration with what attribution needs: index, address, port, transport, register,
    expires, and `proxy` (outbound_proxy) for a server whose requests go through it
    (reg.x.server.y.useOutboundProxy, default 1). Whole-server precedence, as the phone reads them: once
    reg.x.server.y.address is set, that server's values all come from reg.x.server.y.*; voIpProt.server.y.*
    serves only a server without one (fleet.phoneconf.predict.server_timing, which the plan's load reads too)."""
    proxy = outbound_proxy(params, reg)
    out = []
    for y in range(1, 10):
        timing = server_timing(params, reg, y)
        if timing is None:
            continue
        prefix = f"reg.{reg}.server.{y}." if timing.source == "reg" else f"voIpProt.server.{y}."
        port = str(params.get(prefix + "port") or "").strip()
        server = {"index": y, "address": timing.address, "port": int(port) if port.isdigit() else 0,
                  "transport": str(params.get(prefix + "transport") or ""), "register": timing.register,
                  "expires": timing.expires}
        if proxy and str(params.get(f"reg.{reg}.server.{y}.useOutboundProxy", "1")).strip() != "0":
            server["proxy"] = proxy
        out.append(server)
    return out


def gateway_server(params: dict[str, str], reg: int, gateway: str, configured: int | None = None) -> int | None:
    """Which server of registration `reg` the site's gateway (at address `gateway`) is: `configured` where the
    inventory says (gateway.server), else the one at the gateway's address; None when none is."""
    if configured:
        return configured
    return next((s["index"] for s in phone_servers(params, reg) if s["address"] == gateway), None)
