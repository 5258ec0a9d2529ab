"""`fleet status` for people: the table (the JSON rows scripts read are shaped in fleet.state.phone_row)."""
from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Column, Table

from fleet.state.phone_row import row_for_json
from fleet.state.store import foreign_sources


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


def unobservable_cell(entries: list[dict]) -> str:
    """`2: not observable on the wire (registers over TLS (encrypted))`, one line per server no wire source sees."""
    seen: dict[tuple, str] = {}
    for u in entries:
        seen.setdefault((u.get("reg", 1), u.get("server")), f"{u.get('reason', '')} ({u.get('why', '')})")
    return "\n".join(f"{server if reg == 1 else f'reg {reg} server {server}'}: {escape(text)}"
                     for (reg, server), text in sorted(seen.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)))


def _folding(t: Table) -> Table:
    """Every column that may wrap folds a word too long for it onto the next line: an error, an address or a
    source name is shown whole at any terminal width, never ending in "…"."""
    for c in t.columns:
        if not c.no_wrap:
            c.overflow = "fold"
    return t


def table(phones: list[dict]) -> Table:
    """One row per phone; servers no wire source can see are named with why (from the collector's report)."""
    # A MAC is what a reader matches against labels and logs: it is never cut (no_wrap, its full width). Every
    # other column may wrap, and a long word folds onto the next line instead of ending in "…".
    t = _folding(Table("site", Column("MAC", no_wrap=True, min_width=12), "model", "servers (state source age)",
                       "working", "newest evidence", "not seen on the wire"))
    now = time.time()
    for p, row in zip(phones, rows_for_json(phones)):
        servers = "  ".join(server_cell(s, now) for s in row["servers"])
        for reg, line in row["lines"].items():     # registrations 2 and up, each on its own line of the cell
            servers += f"\nreg {reg}: " + "  ".join(server_cell(s, now) for s in line["servers"])
        newest = max(row["evidence"].items(), key=lambda kv: kv[1]) if row["evidence"] else None
        evidence = f"{escape(newest[0])} {_age(now, newest[1])}" if newest else _age(now, row["observed_at"])
        working = (str(row["working_server"]) + ("~" if row["working_inferred"] else "")) if row["working_server"] else "[red]none[/]"
        t.add_row(escape(str(row["site"] or "")), escape(str(row["mac"])), escape(str(row["model"] or "")), servers,
                  working, evidence, unobservable_cell(p.get("unobservable") or []))
    return t


def sources_table(evidence: dict[str, dict]) -> Table | None:
    """Per site, the evidence sources that are failing: which, since when, why (the collector's report); None when
    every source of every site works."""
    now = time.time()
    rows = [(site, e) for site, ev in sorted(evidence.items()) for e in ev.get("sources", []) if e.get("error")]
    if not rows:
        return None
    t = _folding(Table("site", "evidence source", "failing since", "why", title="evidence sources not working"))
    for site, e in rows:
        t.add_row(escape(site), escape(str(e.get("source", ""))), _age(now, e.get("since")) + " ago" if e.get("since") else "?",
                  f"[red]{escape(str(e.get('error', '')))}[/]")
    return t


FOREIGN_SHOWN = 5       # source addresses named per evidence source in the table (the JSON has them all)


def foreign_table(evidence: dict[str, dict]) -> Table | None:
    """Per site and evidence source, SIP naming the site's phones that came from addresses not theirs (issue 17:
    counted, never taken as the phones' state); None when there is none."""
    rows = [(site, f) for site, ev in sorted(evidence.items()) for f in foreign_sources(ev)]
    if not rows:
        return None
    t = _folding(Table("site", "evidence source", "messages", "from (address: count)",
                       title="foreign SIP: naming a phone, not from its address nor an allowed one (inventory allow_from)"))
    for site, f in rows:
        top = sorted(f["foreign"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{addr}: {n}" for addr, n in top[:FOREIGN_SHOWN])
        more = f" and {len(top) - FOREIGN_SHOWN} more" if len(top) > FOREIGN_SHOWN else ""
        t.add_row(escape(site), escape(str(f["source"])), f"[red]{f['total']}[/]", escape(shown + more))
    return t


def view(phones: list[dict], evidence: dict[str, dict]):
    """What `fleet status` prints: the phones' table, and below it the failing evidence sources and the foreign
    SIP they got (if any)."""
    from rich.console import Group

    extra = [x for x in (sources_table(evidence), foreign_table(evidence)) if x is not None]
    return Group(table(phones), *extra) if extra else table(phones)
