"""`fleet inventory check`: validate an inventory and its secrets; with --probe, reach every device read-only."""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from soundpoint.values import plural
from fleet.cli.common import EXIT_OK, EXIT_FAILED, EXIT_INPUT, err, fail, load_inventory, check_sites, optional_store


@click.group("inventory")
def inventory_group() -> None:
    """Check an inventory before anything uses it."""


@inventory_group.command("check")
@click.argument("inventory_path", metavar="[FILE]", required=False, type=click.Path(dir_okay=False))
@click.option("--site", "sites", multiple=True, help="Only this site (repeatable).")
@click.option("--probe", "do_probe", is_flag=True,
              help="Also try every device read-only: boot server login and read, router host key and state, "
                   "each phone's web interface or REST, the collectors' addresses. Changes nothing anywhere.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120), help="Seconds per device.")
@click.option("--json", "as_json", is_flag=True, help="One object: valid, and with --probe a list of checks.")
def inventory_check(inventory_path: str, sites: tuple[str, ...], do_probe: bool, timeout: float, as_json: bool) -> None:
    """Validate FILE (default: the inventory in fleet.toml) and its secrets file; with --probe, reach every device
    read-only.

    Exit codes: 0 valid (and every device reached), 1 a device failed its probe, 2 invalid input.
    """
    from fleet.config import inventory as inv_mod
    from fleet.sites.probe import device_count, probe

    if not inventory_path:
        fail("no inventory: give FILE, or set `inventory` in fleet.toml (fleet config init --inventory FILE)", EXIT_INPUT)
    inv = load_inventory(inventory_path)
    check_sites(inv, sites)
    phones = device_count(inv, sites)
    if not do_probe:
        summary = {"valid": True, "inventory": inv.name, "sites": [s.name for s in inv.sites], "phones": phones}
        click.echo(json.dumps(summary) if as_json else f"{inventory_path}: valid ({plural(len(inv.sites), 'site')}, {plural(phones, 'phone')})")
        return
    secrets = inv_mod.check_secrets(inv)
    # the phones' REST locks live in fleet's Redis: a probe holds them as the collectors and workers do
    store = optional_store()
    if as_json or not sys.stderr.isatty():
        rows = probe(inv, secrets, sites, timeout, store=store)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("probing phones"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("probe", total=phones)
            rows = probe(inv, secrets, sites, timeout, progress=lambda n: bar.advance(task, n), store=store)
    failed = [r for r in rows if not r.ok]
    if as_json:
        click.echo(json.dumps({"valid": True, "ok": not failed, "checks": [r.to_dict() for r in rows]}, indent=1))
    else:
        t = Table("site", "device", "target", "ok", "detail")
        for r in rows:
            t.add_row(escape(r.site), escape(r.device), escape(r.target), "yes" if r.ok else "[red]NO[/red]", escape(r.detail))
        Console().print(t)
        click.echo(f"{len(rows) - len(failed)} of {plural(len(rows), 'check')} passed" + (f"; failed: {', '.join(r.device for r in failed)}" if failed else ""))
    sys.exit(EXIT_FAILED if failed else EXIT_OK)
