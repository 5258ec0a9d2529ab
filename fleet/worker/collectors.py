"""Collectors inside a worker: `fleet worker --site S` without `--no-collect` also listens for the site's phones.

They start in the worker's main process once it is ready (Celery's
`worker_ready` signal), not in a task: the listeners must outlive any one
task and must not run once per pool process. `fleet collector` runs the same
listeners as a service of their own.
"""
from __future__ import annotations

import os

from celery import signals

from fleet.worker.context import context, stores
from fleet.evidence.collector import start_site_collectors

_collectors: list = []


@signals.worker_ready.connect
def start_collectors(sender=None, **_: object) -> None:
    """Start a collector for each site named in FLEET_COLLECT_SITES (set by `fleet worker`)."""
    sites = [s for s in os.environ.get("FLEET_COLLECT_SITES", "").split(",") if s]
    if not sites:
        return

    inv, secrets = context()
    store, _ = stores()
    _collectors.extend(start_site_collectors(inv, secrets, store, sites))
