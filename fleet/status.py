"""`fleet status` for people: the table (the JSON rows scripts read are shaped in fleet.phone_row)."""
from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table

from .phone_row import row_for_json


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
