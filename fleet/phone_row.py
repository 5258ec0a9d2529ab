"""One phone's `fleet status --json` object: plain data from its stored state, no presentation.

The store keeps this object ready-made beside the state it comes from (it
is rebuilt whenever an observation changes the state), so `fleet status
--json` is one read per phone with no decoding. `fleet.status` prints it;
this module only shapes it, so the store depends on nothing that draws.
"""
from __future__ import annotations


def row_for_json(p: dict) -> dict:
    """One phone's `fleet status --json` object; the store keeps it ready-made beside the state it comes from."""
    st = p["state"]
    st_servers = st.get("servers") or {}
    configured = {s["index"]: s for s in p.get("configured_servers") or []}
    indices = sorted(set(configured) | {int(k) for k in st_servers})
    servers = [{"index": i, "address": configured.get(i, {}).get("address") or st_servers.get(str(i), {}).get("address", ""),
                "register": configured.get(i, {}).get("register", True),
                "state": st_servers.get(str(i), {}).get("state", "unknown"),
                "source": st_servers.get(str(i), {}).get("source"),
                # per-server evidence: when it was seen, the registrar's code, when the binding lapses unrefreshed
                "observed_at": st_servers.get(str(i), {}).get("t"),
                "code": st_servers.get(str(i), {}).get("code"),
                "expires_at": st_servers.get(str(i), {}).get("until")} for i in indices]
    return {"mac": p["mac"], "site": p["site"], "model": p["model"], "firmware": p.get("firmware"),
            "working_server": st.get("working_server"), "servers": servers, "observed_at": st.get("observed_at"),
            "source": st.get("last_source") or None, "evidence": st.get("evidence") or {},
            "working_inferred": bool(st.get("inferred"))}
