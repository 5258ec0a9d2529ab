"""`fleet status`: which phone is registered where, right now."""
from __future__ import annotations

import time

import click
from rich.console import Console

from fleet.cli.common import EXIT_INPUT, EXIT_INTERRUPTED, fail, open_store
from fleet.cli.incident import open_incident_lines
from soundpoint import values

WIDE = 10_000    # `--wide`: lines as long as their cells, for a pager or a file (`less -S`, `> status.txt`)


@click.command()
@click.option("--site", help="Only this site.")
@click.option("--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--wide", is_flag=True, help="Never wrap a cell: one line per phone and server, however wide.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: mac, site, model, address, firmware (the phone's "
                                                        "own word, else the inventory's: firmware_from says which), "
                                                        "working_server, servers (registration 1's), lines (other "
                                                        "registrations), observed_at, unobservable, evidence_errors, "
                                                        "evidence_foreign.")
def status(site: str | None, live: bool, wide: bool, as_json: bool) -> None:
    """Which phone is registered where, right now (from the collectors' latest observations).

    Exit codes: 0 shown (Ctrl-C ends --live with 130), 2 no such site, 3 no fleet state (Redis).
    """
    from fleet.evidence.status import view as status_view

    store = open_store()
    if site is not None:
        known = store.site_names()
        if site not in known:
            listed = f"; known: {', '.join(known)}" if 0 < len(known) <= 10 else ""
            fail(f"no site {site!r} in the fleet state{values.did_you_mean(site, known)}{listed} (a site is known once "
                 f"its collector, worker or an experiment has registered its phones)", EXIT_INPUT)
    if as_json:
        click.echo(store.status_json(site))
        return

    def current():
        return status_view(*store.phones_and_evidence(site))

    console = Console(width=WIDE) if wide else Console()
    for line in open_incident_lines(store, site):      # a real outage under way: above the table, once
        console.print(line, style="bold red", markup=False, highlight=False, soft_wrap=True)
    if not live:
        console.print(current())
        return
    from rich.live import Live

    try:
        with Live(current(), console=console, refresh_per_second=2) as view:
            while True:
                time.sleep(1)
                view.update(current())
    except KeyboardInterrupt:
        # README's exit codes: interrupted is 130, even where Ctrl-C is the ordinary way to stop
        raise SystemExit(EXIT_INTERRUPTED) from None
