"""One phone's `fleet status --json` object: plain data from its stored state, no presentation.

The store keeps this object ready-made beside the state it comes from (it
is rebuilt whenever an observation changes the state), so `fleet status
--json` is one read per phone with no decoding. `fleet.evidence.status` prints it;
this module only shapes it, so the store depends on nothing that draws.
"""
from __future__ import annotations


def _servers(st: dict, configured: dict[int, dict]) -> list[dict]:
    """One registration's server list: its configured servers and any other it was observed with."""
    st_servers = st.get("servers") or {}
    indices = sorted(set(configured) | {int(k) for k in st_servers})
    return [{"index": i, "address": configured.get(i, {}).get("address") or st_servers.get(str(i), {}).get("address", ""),
             "register": configured.get(i, {}).get("register", True),
             "state": st_servers.get(str(i), {}).get("state", "unknown"),
             "source": st_servers.get(str(i), {}).get("source"),
             # per-server evidence: when it was seen, the registrar's code, when the binding lapses unrefreshed
             "observed_at": st_servers.get(str(i), {}).get("t"),
             "code": st_servers.get(str(i), {}).get("code"),
             "expires_at": st_servers.get(str(i), {}).get("until")} for i in indices]


def row_for_json(p: dict) -> dict:
    """One phone's `fleet status --json` object; the store keeps it ready-made beside the state it comes from.
    `working_server` and `servers` are registration 1's; `lines` has every other registration observed
    (registration -> {working_server, working_inferred, servers}); the store keeps registration 1's configured
    servers only, so another line lists the servers it was observed with."""
    st = p["state"]
    configured = {s["index"]: s for s in p.get("configured_servers") or []}
    lines = {reg: {"working_server": ls.get("working_server"), "working_inferred": bool(ls.get("inferred")),
                   "servers": _servers(ls, {})} for reg, ls in sorted((st.get("lines") or {}).items())}
    # firmware: what the phone itself said (a REST poll), else the version the inventory declares for it;
    # firmware_from says which ("phone", "inventory", or None when neither knows)
    read, declared = p.get("firmware") or None, p.get("firmware_declared") or None
    return {"mac": p["mac"], "site": p["site"], "model": p["model"], "address": p.get("address") or None,
            "firmware": read or declared, "firmware_from": "phone" if read else "inventory" if declared else None,
            "working_server": st.get("working_server"), "servers": _servers(st, configured),
            "observed_at": st.get("observed_at"), "source": st.get("last_source") or None,
            "evidence": st.get("evidence") or {}, "working_inferred": bool(st.get("inferred")), "lines": lines}
