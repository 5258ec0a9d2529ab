"""`fleet`: run WAN-outage experiments, see which phone is registered where, start workers.

Exit codes: 0 success / every expectation held; 1 an expectation failed;
2 bad input (playbook, inventory, parameters): nothing was touched;
3 infrastructure unavailable (Redis, workers, lease held).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .yamlfile import FileError

EXIT_FAILED, EXIT_INPUT, EXIT_INFRA = 1, 2, 3
err = Console(stderr=True)


def _store():
    from .redisboot import RedisUnavailable, redis_url
    from .store import Store

    try:
        store = Store(redis_url())
        store.ping()
        return store
    except RedisUnavailable as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(EXIT_INFRA)
    except Exception as exc:  # redis.ConnectionError and friends
        err.print(f"[red]cannot reach Redis at {os.environ.get('FLEET_REDIS_URL')}: {type(exc).__name__}[/red]")
        sys.exit(EXIT_INFRA)


def _inventory(path: str):
    from . import inventory

    try:
        return inventory.load(path)
    except FileError as exc:
        err.print(f"[red]invalid inventory: {exc}[/red]")
        sys.exit(EXIT_INPUT)


@click.group(help=__doc__)
def main() -> None:
    pass


@main.group()
def experiment() -> None:
    """WAN-outage experiments: run a playbook, list and show past runs."""


@experiment.command("run")
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (or FLEET_INVENTORY).")
@click.option("--report-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where report.json, junit.xml and report.html go (in a subdirectory per run).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of progress lines.")
@click.option("--task-timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to answer a task.")
def experiment_run(playbook_path: str, inventory_path: str, report_dir: str, as_json: bool, task_timeout: float) -> None:
    """Run an experiment PLAYBOOK against its site; exit 0 only if every expectation held."""
    from . import playbook as pb_mod
    from . import report
    from .celeryapp import configure
    from .experiment import ExperimentRunner
    from .store import LeaseHeld

    try:
        pb = pb_mod.load(playbook_path)
    except FileError as exc:
        err.print(f"[red]invalid playbook: {exc}[/red]")
        sys.exit(EXIT_INPUT)
    inv = _inventory(inventory_path)
    try:
        pb_mod.check_against(pb, inv, playbook_path)
    except FileError as exc:
        err.print(f"[red]invalid playbook: {exc}[/red]")
        sys.exit(EXIT_INPUT)
    store = _store()
    configure(store.url)
    out = Console(stderr=as_json)
    runner = ExperimentRunner(pb, inv, store, say=lambda s: out.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {s}"),
                              task_timeout=task_timeout)
    try:
        with out.status("running", spinner="dots") if not as_json else _null():
            result = runner.run()
    except LeaseHeld as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(EXIT_INFRA)
    directory = Path(report_dir) / result.id
    doc = report.write(result, directory)
    store.finish_experiment(result.id, result.passed, str(directory.resolve()))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        s = doc["summary"]
        out.print(f"[bold {'green' if result.passed else 'red'}]{'PASSED' if result.passed else 'FAILED'}[/]: "
                  f"{s['phones_passed']}/{s['phones']} phones; failover p50/p95/max "
                  f"{_f(s['failover_s']['p50'])}/{_f(s['failover_s']['p95'])}/{_f(s['failover_s']['max'])} s; recovery "
                  f"{_f(s['recovery_s']['p50'])}/{_f(s['recovery_s']['p95'])}/{_f(s['recovery_s']['max'])} s")
        for p in doc["phones"]:
            if not p["passed"]:
                out.print(f"  [red]{p['mac']}[/red]: {'; '.join(p['reasons'])}")
        for e in doc["errors"]:
            out.print(f"  [red]{e}[/red]")
        out.print(f"report: {(directory / 'report.html').resolve()}")
    _exit_now(0 if result.passed else EXIT_FAILED)


def _exit_now(code: int) -> None:
    """Exit without interpreter teardown: Celery's result objects otherwise try to unsubscribe from Redis
    while the interpreter is shutting down and print noise after an interrupted run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True)
def experiment_list(as_json: bool) -> None:
    """Past and running experiments, newest first (read back from Redis)."""
    rows = _store().experiments()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("id", "playbook", "site", "status", "started")
    for r in rows:
        t.add_row(r.get("id", ""), r.get("playbook", ""), r.get("site", ""), r.get("status", ""),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("started", 0)))))
    Console().print(t)


@experiment.command("show")
@click.argument("exp_id")
@click.option("--json", "as_json", is_flag=True)
def experiment_show(exp_id: str, as_json: bool) -> None:
    """One experiment's metadata and its append-only event log."""
    store = _store()
    meta = store.experiment(exp_id)
    if not meta:
        err.print(f"[red]no experiment {exp_id}[/red]")
        sys.exit(EXIT_INPUT)
    events = store.events(exp_id)
    if as_json:
        click.echo(json.dumps({"experiment": meta, "events": events}, indent=1))
        return
    click.echo(f"{meta['id']} {meta['playbook']} site={meta['site']} status={meta['status']} report={meta.get('report_dir', '-')}")
    for e in events:
        click.echo(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['kind']:<15} "
                   + " ".join(f"{k}={v}" for k, v in e.items() if k not in ('kind', 't', 'mono'))[:200])


@main.command()
@click.option("--site", help="Only this site.")
@click.option("--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="A list of objects: mac, site, working_server, servers, observed_at.")
def status(site: str | None, live: bool, as_json: bool) -> None:
    """Which phone is registered where, right now (from the collectors' latest observations)."""
    from .status import table

    store = _store()
    if as_json:
        click.echo(store.status_json(site))
        return
    console = Console()
    if not live:
        console.print(table(store.phones(site)))
        return
    from rich.live import Live

    with Live(table(store.phones(site)), console=console, refresh_per_second=2) as view:
        try:
            while True:
                time.sleep(1)
                view.update(table(store.phones(site)))
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False))
@click.option("--site", "sites", multiple=True, required=True, help="Serve this site's queue (repeatable).")
@click.option("--concurrency", default=2, show_default=True)
@click.option("--no-collect", is_flag=True, help="Do not run the syslog/event collectors in this worker.")
def worker(inventory_path: str, sites: tuple[str, ...], concurrency: int, no_collect: bool) -> None:
    """Start a Celery worker for the given sites' queues (site.NAME), with their collectors."""
    inv = _inventory(inventory_path)
    for s in sites:
        try:
            inv.site(s)
        except KeyError as exc:
            err.print(f"[red]{exc.args[0]}[/red]")
            sys.exit(EXIT_INPUT)
    store = _store()
    os.environ["FLEET_INVENTORY"] = str(Path(inventory_path).resolve())
    os.environ["FLEET_COLLECT_SITES"] = "" if no_collect else ",".join(sites)
    from .celeryapp import app, configure

    configure(store.url)
    app.worker_main(["worker", "-Q", ",".join(f"site.{s}" for s in sites), "--concurrency", str(concurrency),
                     "-n", f"{'+'.join(sites)}@{socket.gethostname()}", "--loglevel", "WARNING", "--without-gossip",
                     "--without-mingle"])


if __name__ == "__main__":
    main()
