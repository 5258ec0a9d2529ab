"""`fleet incident`: the real WAN outages the collectors found in their evidence (observed, not caused)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleet.cli.common import EXIT_INPUT, fail, load_inventory, open_store


@click.group()
def incident() -> None:
    """Real outages the collectors found without an experiment: list them, show one's report."""


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else "-"


@incident.command("list")
@click.option("--site", help="Only this site's incidents.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: id, site, status, started, detected, restored, "
                                                        "finished, closed_because, baseline, threshold, phones.")
def incident_list(site: str | None, as_json: bool) -> None:
    """Incidents, newest first (read back from Redis). Exit 0, or 3 without fleet state."""
    from fleet.state.incidents import IncidentStore

    rows = IncidentStore(open_store()).list(site=site)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("id", "site", "status", "started", "phones on server 1 before", "closed because")
    for r in rows:
        t.add_row(escape(r["id"]), escape(r.get("site", "")), escape(r.get("status", "")), _when(r.get("started")),
                  str(len(r.get("baseline") or [])), escape(r.get("closed_because") or "-"))
    Console().print(t)


@incident.command("show")
@click.argument("incident_id")
@click.option("--inventory", "inventory_path", envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file: each phone's configuration gives its predicted bounds (default: FLEET_INVENTORY, "
                   "or `inventory` in fleet.toml; without one the report has no bounds).")
@click.option("--report-dir", type=click.Path(file_okay=False),
              help="Also write report.json, junit.xml and report.html in a subdirectory named after the incident.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (report.json's content).")
def incident_show(incident_id: str, inventory_path: str | None, report_dir: str | None, as_json: bool) -> None:
    """One incident measured as an experiment: per phone failover and recovery against its predicted bounds, the
    phones that never reached server 2 with their last evidence. Exit 0, 2 no such incident or a bad inventory,
    3 without fleet state."""
    from fleet.incident.report import IncidentNotFound, build, write

    inv = load_inventory(inventory_path) if inventory_path else None
    store = open_store()
    try:
        doc = build(store, incident_id, inv)
    except IncidentNotFound:
        fail(f"no incident {incident_id} (`fleet incident list` shows them)", EXIT_INPUT)
    if report_dir:
        written = write(doc, Path(report_dir))
        if not as_json:
            click.echo(f"report: {written / 'report.html'}")
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"{doc['id']} on site {doc['site']}: {doc['status']}, observed, not caused; started "
               f"{_when(doc['outages'][0]['start'])}, found {doc['detected_after_s']:.1f} s later"
               + (f"; closed: {doc['closed_because']}" if doc.get("closed_because") else ""))
    s = doc["summary"]
    click.echo(f"failover p50 {_s(s['failover_s']['p50'])}, max {_s(s['failover_s']['max'])}; recovery p50 "
               f"{_s(s['recovery_s']['p50'])}, max {_s(s['recovery_s']['max'])}")
    t = Table("phone", "model", "failover s", "predicted max", "recovery s", "predicted max", "result", "why")
    for p in doc["phones"]:
        t.add_row(p["mac"], escape(p.get("model") or ""), _s(p["failover_s"]), _s(p["predicted_failover_max_s"]),
                  _s(p["recovery_s"]), _s(p["predicted_recovery_max_s"]), "pass" if p["passed"] else "FAIL",
                  escape("; ".join(p["reasons"])))
    Console().print(t)


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def open_incident_lines(store, site: str | None) -> list[str]:
    """One line per open incident (of `site`, or of every site), for `fleet status` to print above its table."""
    from fleet.state import open_incidents

    sites = [site] if site is not None else store.site_names()
    out = []
    for name, found in open_incidents.read(store, sites).items():
        for i in found:
            out.append(f"OPEN INCIDENT {i.id} on site {name} since {_when(i.started)}: server 1 lost; "
                       f"{i.failed_over} of {i.phones} phones on server 2 (`fleet incident show {i.id}`)")
    return out
