"""The experiment's Celery tasks: cut and restore a site's WAN, read the router's state, dial from a phone.

Each one checks its arguments, calls one plain function (fleet.experiment.router_work, call_work) and raises
when that fails; the conventions every task follows are in fleet/worker/base.py. Callers use signatures
(`tasks.router_outage.s(...).apply_async(queue=...)`), so the arguments are the function's own; the task names
("fleet.router_outage" ...) are what a message carries and never change.
"""
from __future__ import annotations

from fleet.base.outage import Outage
from fleet.experiment import call_work, inbound_work, power_work
from fleet.experiment import router_work
from fleet.worker import args as task_args
from fleet.worker.app import app
from fleet.worker.args import validated
from fleet.worker.base import DEVICE_RETRY, FleetTask
from fleet.worker.context import stores
from fleet.base.steps import journal


def _experiment_log(exp_id: str):
    """The experiment's event log, for the device steps this task runs (fleet.base.steps); `device_step` events,
    apart from the runner's own `step` events (one per playbook step)."""
    store, _ = stores()
    return journal(lambda kind, **fields: store.log_event(exp_id, "device_step", **fields))


# Cut and restore tasks expire (the caller sets `expires`): a cut that no worker started in time must never run
# later, after the controller has moved on (the router-side protocol makes a late one harmless; expiry keeps it
# from running at all). A retried restore keeps its message's expiry.
@app.task(base=FleetTask, name="fleet.router_outage", acks_late=True)
@validated(task_args.RouterOutageArgs)
def router_outage(site_name: str, exp_id: str, outage: Outage) -> dict:
    """Arm the dead-man's switch and cut, then prove the cut from the LAN side. `outage` travels as
    `Outage.to_dict()` and arrives here validated back into an Outage.

    No retry: an outage that cannot be cut now fails fast, so the experiment
    restores and reports instead of cutting seconds later than it measures from.
    """
    with _experiment_log(exp_id):
        return router_work.cut(site_name, outage)


@app.task(base=FleetTask, name="fleet.router_restore", acks_late=True, **DEVICE_RETRY)
@validated(task_args.RouterRestoreArgs)
def router_restore(site_name: str, exp_id: str, outage: Outage, probe_for: float = 10.0) -> dict:
    """End the outage, then wait for the LAN to see the provider.

    Retried on timeouts: a restore names the outage it ends and is idempotent
    on the router (a second one answers already-restored), and the WAN coming
    back is worth every try before the dead-man's switch has to do it.
    """
    with _experiment_log(exp_id):
        return router_work.restore(site_name, outage, probe_for)


@app.task(base=FleetTask, name="fleet.router_state", acks_late=True, **DEVICE_RETRY)
@validated(task_args.RouterStateArgs)
def router_state(site_name: str, outage_id: str | None = None) -> dict:
    """The router's WAN state and the LAN-side probe. Retried on timeouts: it only reads."""
    return router_work.state(site_name, outage_id)


@app.task(base=FleetTask, name="fleet.place_call", acks_late=True)
@validated(task_args.PlaceCallArgs)
def place_call(site_name: str, exp_id: str, mac: str, number: str) -> dict:
    """Dial from one phone. No retry: a dial request that timed out may still have rung, and a second call would
    put two INVITEs where the experiment expects one."""
    with _experiment_log(exp_id):
        return call_work.place_call(mac, number)


@app.task(base=FleetTask, name="fleet.inbound_call", acks_late=True)
@validated(task_args.InboundCallArgs)
def inbound_call(site_name: str, exp_id: str, mac: str, user: str, ring_s: int) -> dict:
    """Have the site's gateway call one phone's line. No retry: a second call would ring the phone twice."""
    with _experiment_log(exp_id):
        return inbound_work.place_inbound(site_name, mac, user, ring_s)


@app.task(base=FleetTask, name="fleet.power_cycle", acks_late=True)
@validated(task_args.PowerCycleArgs)
def power_cycle(site_name: str, exp_id: str, macs: list[str], off_s: float) -> dict:
    """Power the phones' PoE ports off, wait, on (an experiment's `power` step). No retry: a cycle that failed
    has turned back on what it turned off, and a second one would be a second power loss the step never asked for."""
    with _experiment_log(exp_id):
        return power_work.cycle(site_name, macs, off_s)
