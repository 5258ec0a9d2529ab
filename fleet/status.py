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
                "source": st_servers.get(str(i), {}).get("source")} for i in indices]
    return {"mac": p["mac"], "site": p["site"], "model": p["model"], "firmware": p.get("firmware"),
            "working_server": st.get("working_server"), "servers": servers, "observed_at": st.get("observed_at"),
            "source": st.get("last_source") or None}


def rows_for_json(phones: list[dict]) -> list[dict]:
    return [row_for_json(p) for p in phones]


def table(phones: list[dict]) -> Table:
    t = Table("site", "MAC", "model", "servers", "working", "age")
    now = time.time()
    for row in rows_for_json(phones):
        servers = " ".join(f"{s['index']}:{'[green]up[/]' if s['state'] == 'registered' else ('[red]down[/]' if s['state'] == 'unregistered' else '?')}"
                           for s in row["servers"])
        age = f"{now - row['observed_at']:.0f}s" if row["observed_at"] else "never"
        t.add_row(escape(str(row["site"] or "")), escape(str(row["mac"])), escape(str(row["model"] or "")), servers,
                  str(row["working_server"]) if row["working_server"] else "[red]none[/]", age)
    return t
