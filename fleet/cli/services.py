"""The long-running services: `fleet worker`, `fleet collector`, `fleet scheduler` (systemd or compose run them)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import click
from rich.text import Text

from soundpoint.yamlfile import FileError

from fleet.cli.common import EXIT_INPUT, EXIT_INFRA, err, fail, open_store, load_inventory, check_sites, check_secrets_file


@click.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (default: FLEET_INVENTORY, or `inventory` in fleet.toml).")
@click.option("--playbooks", "playbook_dir", default="playbooks", show_default=True, type=click.Path(file_okay=False),
              help="Directory of rollout playbooks; those with a `schedule` are run by cron.")
@click.option("--check", is_flag=True, help="Print the schedule and any missed runs, then exit.")
def scheduler(inventory_path: str, playbook_dir: str, check: bool) -> None:
    """Run Celery beat with the schedules of the rollout playbooks (a worker with --control runs them)."""
    from fleet.rollout import schedule

    load_inventory(inventory_path)
    try:
        entries = schedule.load_entries(playbook_dir)
    except FileError as exc:
        fail(f"invalid playbook: {exc}", EXIT_INPUT)
    store = open_store()
    for e in entries:
        click.echo(f"{e.name}: '{e.cron}' ({e.timezone}) -> {e.playbook}")
    for message in schedule.check_missed(store, entries):
        err.print(Text(f"missed: {message}", style="yellow"))
    if check:
        return
    from fleet.worker.app import app, configure

    configure(store.url)
    app.conf.beat_schedule = schedule.beat_schedule(entries, str(Path(inventory_path).resolve()))
    # no schedule file: the schedule comes from the playbooks, last-sent times go to Redis (fleet.rollout.schedule)
    app.Beat(loglevel="WARNING", scheduler=schedule.scheduler_for(store, entries)).run()


@click.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (default: FLEET_INVENTORY, or `inventory` in fleet.toml).")
@click.option("--site", "sites", multiple=True, required=True, help="Collect for this site (repeatable).")
def collector(inventory_path: str, sites: tuple[str, ...]) -> None:
    """Run the sites' collectors (every evidence source the inventory names) as a service of their own.

    Per site: syslog and telephone notification events (and state polling with
    poll_interval); the SIP wire sources of `capture:` (`router [IFACE]`:
    tcpdump over the router's SSH; `interface NAME`: a local mirror port,
    needs CAP_NET_RAW; `hep HOST:PORT`: a HEP v3 listener fed by the SIP
    servers); and the gateway registrar's bindings of `gateway: {platform:
    kamailio|asterisk|freeswitch}`, polled over the router's SSH.

    Phones push their registration changes the moment they happen; whatever
    arrives while nobody listens is lost until the phone reports again. Run
    this beside workers started with --no-collect, so that a worker that
    crashes or restarts does not blind the site (docker-compose.yml does).
    """
    import logging
    import signal
    import threading

    from fleet.evidence.collector import start_site_collectors
    from fleet.config.inventory import Secrets

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    from soundpoint import gc_policy

    gc_policy.young_die_young()
    inv = load_inventory(inventory_path)
    check_sites(inv, sites)
    secrets = Secrets(inv)
    running = start_site_collectors(inv, secrets, open_store(), list(sites))
    gc_policy.settled()      # the inventory, the sites' targets and phone states live as long as the service
    if len(running) != len(sites):
        fail("a collector could not start (see the log above)", EXIT_INFRA)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    err.print(Text(f"collecting for {', '.join(sites)}; Ctrl-C stops"))
    done.wait()
    for c in running:
        c.stop()


@click.command()
@click.option("--inventory", "inventory_path", required=True, envvar="FLEET_INVENTORY", type=click.Path(dir_okay=False),
              help="Inventory file (default: FLEET_INVENTORY, or `inventory` in fleet.toml).")
@click.option("--site", "sites", multiple=True, help="Serve this site's queue (repeatable).")
@click.option("--control", is_flag=True, help="Also serve the fleet.control queue (scheduled rollouts run there).")
@click.option("--concurrency", default=2, show_default=True)
@click.option("--pool", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True,
              help="threads suits rollouts: their tasks wait on the network, not the CPU.")
@click.option("--no-collect", is_flag=True, help="Do not run the site collectors (syslog, events, capture, HEP, "
              "gateway bindings) in this worker.")
def worker(inventory_path: str, sites: tuple[str, ...], control: bool, concurrency: int, pool: str, no_collect: bool) -> None:
    """Start a Celery worker for the given sites' queues (site.NAME), with their collectors."""
    if not sites and not control:
        fail("give at least one --site, or --control", EXIT_INPUT)
    os.environ["FLEET_INVENTORY"] = str(Path(inventory_path).resolve())
    os.environ["FLEET_COLLECT_SITES"] = "" if no_collect else ",".join(sites)
    from fleet.worker.app import app, configure
    from fleet.worker.context import context
    from fleet.worker.files_beacon import FilesBeacon

    # the tasks' own copy, parsed once before the pool starts (and before prefork forks), not by its first tasks
    try:
        inv, _ = context()
    except FileError as exc:
        fail(f"invalid inventory: {exc}", EXIT_INPUT)
    check_secrets_file(inv)
    check_sites(inv, sites)
    store = open_store()
    configure(store.url)
    queues = [f"site.{s}" for s in sites] + (["fleet.control"] if control else [])
    node = f"{'+'.join(list(sites) + (['control'] if control else []))}@{socket.gethostname()}"
    # which inventory and secrets file this worker acts with (hashes), for CLI runs to compare with theirs
    beacon = FilesBeacon(store, inv, list(sites), node).start()
    try:
        app.worker_main(["worker", "-Q", ",".join(queues), "--concurrency", str(concurrency), "--pool", pool,
                         "-n", node, "--loglevel", "WARNING", "--without-gossip", "--without-mingle"])
    finally:
        beacon.stop()
