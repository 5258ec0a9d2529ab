"""`fleet status` for people: the table (the JSON rows scripts read are shaped in fleet.phone_row)."""
from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table

from .phone_row import row_for_json


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
