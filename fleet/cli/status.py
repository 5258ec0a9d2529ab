"""`fleet status`: which phone is registered where, right now."""
from __future__ import annotations

import time

import click
from rich.console import Console

from fleet.cli.common import open_store


@click.command()
@click.option("--site", help="Only this site.")
@click.option("--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: mac, site, working_server, servers (registration 1's), "
                                                        "lines (other registrations), observed_at, unobservable, evidence_errors, "
                                                        "evidence_foreign.")
def status(site: str | None, live: bool, as_json: bool) -> None:
    """Which phone is registered where, right now (from the collectors' latest observations)."""
    from fleet.evidence.status import view as status_view

    store = open_store()
    if as_json:
        click.echo(store.status_json(site))
        return

    def current():
        return status_view(*store.phones_and_evidence(site))

    console = Console()
    if not live:
        console.print(current())
        return
    from rich.live import Live

    with Live(current(), console=console, refresh_per_second=2) as view:
        try:
            while True:
                time.sleep(1)
                view.update(current())
        except KeyboardInterrupt:
            pass
