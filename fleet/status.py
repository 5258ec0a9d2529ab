"""Rows for `fleet status`: the JSON shape scripts rely on, and the table people read."""
from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table


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


def rows_for_json(phones: list[dict]) -> list[dict]:
    return [row_for_json(p) for p in phones]


def _age(now: float, t: float | None) -> str:
    if not t:
        return "never"
    age = max(0.0, now - t)
    return f"{age:.0f}s" if age < 120 else f"{age / 60:.0f}m" if age < 7200 else f"{age / 3600:.0f}h"


def server_cell(s: dict, now: float) -> str:
    """`1:up wire 3s`: the state at one server, who said so, and how old that evidence is."""
    if s["state"] == "registered":
        word = "[yellow]lapsed[/]" if s.get("expires_at") and s["expires_at"] < now else "[green]up[/]"
    elif s["state"] == "unregistered":
        word = f"[red]down{'(' + str(s['code']) + ')' if s.get('code') else ''}[/]"
    else:
        return f"{s['index']}:?"
    return f"{s['index']}:{word} {escape(str(s.get('source') or ''))} {_age(now, s.get('observed_at'))}"


def table(phones: list[dict]) -> Table:
    t = Table("site", "MAC", "model", "servers (state source age)", "working", "newest evidence")
    now = time.time()
    for row in rows_for_json(phones):
        servers = "  ".join(server_cell(s, now) for s in row["servers"])
        newest = max(row["evidence"].items(), key=lambda kv: kv[1]) if row["evidence"] else None
        evidence = f"{escape(newest[0])} {_age(now, newest[1])}" if newest else _age(now, row["observed_at"])
        working = (str(row["working_server"]) + ("~" if row["working_inferred"] else "")) if row["working_server"] else "[red]none[/]"
        t.add_row(escape(str(row["site"] or "")), escape(str(row["mac"])), escape(str(row["model"] or "")), servers,
                  working, evidence)
    return t
