"""A site's router, as the tasks use it: cut, restore, read its state, and probe the provider from the LAN.

Plain functions (no Celery): each opens the site's router driver, does one
job, closes the driver, and returns a JSON-able result. A failure raises:
a driver error (naming the router) as it is, anything else about the
request as TaskFailed. Whether a failure is worth another try is the task's
decision (fleet/experiment/tasks.py), not this module's.
"""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

from fleet.config import inventory as inv_mod
from fleet.experiment import outage as outage_work
from soundpoint.deadline import poll_until
from fleet.drivers import router as routers
from fleet.drivers.errors import DriverError
from fleet.drivers.probe import probe_provider
from fleet.drivers.router import Outage, RouterDriver
from fleet.worker.errors import DeviceNotReached, TaskFailed, failure_text
from fleet.worker.context import context, stores
from fleet.base.steps import step


@contextmanager
def _router(site_name: str, unreached_fails: bool = False) -> Iterator[tuple[inv_mod.Site, RouterDriver]]:
    """The site and its connected router driver, closed afterwards whatever happens. `unreached_fails`: a router
    that cannot be connected to raises DeviceNotReached (nothing was done on it) instead of the driver's error,
    for a task that does not retry (a restore retries a timeout, so it keeps the driver's DeviceTimeout)."""
    inv, secrets = context()
    try:
        site = inv.site(site_name)
        if site.router is None:
            raise DriverError(f"site {site_name}", "no router in the inventory")
        drv = routers.connect(site.router, secrets.credentials(site.router.credentials))
    except KeyError as exc:
        raise TaskFailed(failure_text(exc)) from None
    except DriverError as exc:
        if unreached_fails:
            raise DeviceNotReached(failure_text(exc)) from None
        raise
    try:
        yield site, drv
    finally:
        drv.close()


def probe(site: inv_mod.Site) -> dict:
    """Whether the provider answers from the site's LAN (DNS, then SIP), as the phones would reach it."""
    return lan_probe(context()[0], site)


def lan_probe(inv: inv_mod.Inventory, site: inv_mod.Site) -> dict:
    """`probe` for an inventory given by the caller (fleet's pytest plugin holds its own, no worker context)."""
    if inv.provider is None:
        return {"reachable": None, "stage": "none", "detail": "no provider in the inventory"}
    dns = None
    if site.dns:
        host, _, port = site.dns.rpartition(":")
        dns = (host, int(port))
    return asyncio.run(probe_provider(inv.provider.name, inv.provider.port, dns)).to_dict()


@step("cut", args=("site_name",))
def cut(site_name: str, outage: Outage) -> dict:
    """Arm the dead-man's switch and cut in one step on the router, then prove the cut from the LAN side."""
    store, _ = stores()
    with _router(site_name, unreached_fails=True) as (site, drv):
        return {"mode": outage.mode, "outage_id": outage.id, **outage_work.cut(store, drv, outage, lambda: probe(site))}


@step("restore", args=("site_name",))
def restore(site_name: str, outage: Outage, probe_for: float = 10.0) -> dict:
    """End the outage (idempotent; cancels a cut that has not happened yet), then wait for the LAN to see the provider."""
    store, _ = stores()
    with _router(site_name) as (site, drv):
        result = {"mode": outage.mode, "outage_id": outage.id, **outage_work.restore(store, drv, outage)}
    if result["outcome"] == "cancelled-before-cut":
        return result
    last: dict = {}

    def reachable() -> bool:
        last.update(probe(site))
        return last.get("reachable") is not False

    poll_until(reachable, probe_for, 0.5)
    result["probe"] = dict(last)
    return result


def state(site_name: str, outage_id: str | None = None) -> dict:
    """The router's WAN state (and one outage's, if named) and the LAN-side probe."""
    with _router(site_name) as (site, drv):
        wan = drv.wan_state(outage_id)
    return {"state": wan.to_dict(), "probe": probe(site)}
