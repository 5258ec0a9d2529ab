"""`fleet record`: the survivability record, per site and per firmware and model, from experiments and incidents."""
from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleet.cli.common import EXIT_INPUT, fail, open_store
from soundpoint import values


@click.command("record")
@click.option("--site", help="Only this site.")
@click.option("--json", "as_json", is_flag=True, help="A list, one object per site: site, outages, experiments, "
                                                        "incidents, phone_outages, failover_s and recovery_s ({count, "
                                                        "p50, p95, max}), failed ([{mac, outage, origin, t, why}]), "
                                                        "by_firmware_and_model (the same per family, firmware, model).")
def record_cmd(site: str | None, as_json: bool) -> None:
    """How the phones lived through every outage so far (experiments that cut the WAN, and incidents): count,
    p50/p95/max failover and recovery, the phones that failed and why. Exit 0, 2 no such site, 3 no fleet state."""
    from fleet.state import record

    store = open_store()
    known = store.site_names()
    if site is not None and site not in known:
        fail(f"no site {site!r} in the fleet state{values.did_you_mean(site, known)}", EXIT_INPUT)
    docs = [record.summarize(s, record.read(store, s)) for s in ([site] if site else known)]
    if as_json:
        click.echo(json.dumps(docs, indent=1))
        return
    out = Console()
    for doc in docs:
        out.print(f"site {doc['site']}: {doc['outages']} outages ({doc['experiments']} experiments, "
                  f"{doc['incidents']} incidents); failover {_figures(doc['failover_s'])}; recovery "
                  f"{_figures(doc['recovery_s'])}", markup=False, highlight=False, soft_wrap=True)
        if not doc["outages"]:
            continue
        t = Table("family", "firmware", "model", "outages", "failover p50/p95/max s", "recovery p50/p95/max s",
                  "failed")
        for g in doc["by_firmware_and_model"]:
            t.add_row(escape(g["family"] or "-"), escape(g["firmware"] or "-"), escape(g["model"] or "-"),
                      str(g["outages"]), _three(g["failover_s"]), _three(g["recovery_s"]), str(len(g["failed"])))
        out.print(t)
        for f in doc["failed"]:
            out.print(f"  {f['mac']} failed in {f['origin']} {f['outage']} "
                      f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(f['t']))}): {'; '.join(f['why']) or '-'}",
                      markup=False, highlight=False, soft_wrap=True)


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _three(f: dict) -> str:
    return f"{_s(f['p50'])} / {_s(f['p95'])} / {_s(f['max'])}"


def _figures(f: dict) -> str:
    return f"p50 {_s(f['p50'])} s, p95 {_s(f['p95'])} s, max {_s(f['max'])} s over {f['count']} phone outages"
