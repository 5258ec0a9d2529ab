"""Celery tasks: each one checks its arguments, calls one plain function, and raises when that fails.

The work lives in plain modules, testable without Celery:
`router_work` (cut, restore, state of a site's router), `call_work` (a test
call), `rollout_work` (push, rollback and backup removal for one phone or
site), `schedule.run_scheduled` (one scheduled rollout). The worker's
inventory and store come from `worker_context`; its collectors start from
`worker_collectors`.

Conventions, the same for every task:
- Arguments are ids (site name, MAC, rollout id), never secrets, checked by
  `@validated` (fleet/worker/args.py) before the body runs.
- A failure raises. Driver errors and the work's own failures reach the
  result backend as `TaskFailed` with the device and the reason (Flower shows
  FAILURE, the caller's `.get()` raises it); nothing returns `{"ok": False}`.
- Retries are declared on the decorator, and only where repeating the work
  is safe: `DEVICE_RETRY` retries a device that did not answer in time
  (DeviceTimeout covers timeouts and refused connections) with exponential
  backoff and jitter, a few times within seconds. Each task's docstring says
  why it does or does not retry.
- `acks_late`: a task lost with its worker is delivered again, so every task
  is idempotent (outage ids, per-attempt reboot claims, rollout ids).

Callers use signatures (`tasks.router_outage.s(...).apply_async(queue=...)`),
never task names, so the arguments are the function's own.
"""
from __future__ import annotations

import logging
from typing import Any

from fleet.base.outage import Outage
from fleet.experiment import call_work
from fleet.experiment import router_work
from fleet.rollout import work as rollout_work
from fleet.worker import args as task_args
from fleet.worker.app import app
from fleet.drivers.errors import DeviceTimeout, DriverError
from fleet.worker.args import validated
from fleet.worker.errors import TaskFailed
from fleet.worker.collectors import start_collectors  # noqa: F401  (connects the worker_ready signal)
from fleet.worker.context import context  # noqa: F401  (`fleet worker` parses the inventory through it)

log = logging.getLogger(__name__)

# A device that did not answer in time may answer a second later (a busy boot server, an SSH server at its
# session limit, a router reloading its firewall). Errors the device answered (DeviceRefused, MalformedAnswer)
# would answer the same again: no retry. Delays: up to 1, 2, 4 s (full jitter), so all tries end within
# seconds, well inside an experiment's task timeout and a rollout's 60 s dispatch-stall window.
TRANSIENT: tuple[type[BaseException], ...] = (DeviceTimeout,)
DEVICE_RETRY: dict[str, Any] = dict(autoretry_for=TRANSIENT, retry_backoff=1, retry_backoff_max=4, retry_jitter=True,
                                    max_retries=3)


class FleetTask(app.Task):
    """Base of every fleet task: a driver error that ends the task becomes TaskFailed (one string, rebuilt as such
    on the caller's side), and expected failures are logged as one line, not as a traceback."""

    throws = (TaskFailed,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DriverError as exc:   # after the retry policy gave up, or one it does not retry
            failed = TaskFailed(str(exc))
        except TaskFailed as exc:
            failed = exc
        log.warning("%s failed: %s", self.name, failed)
        raise failed


def retry_on(task: FleetTask) -> tuple[type[BaseException], ...]:
    """The errors this run may leave to the task's retry policy: none on its last try, or when called directly
    (a test calling the task as a function gets the failure at once)."""
    req = task.request
    if req.called_directly or req.retries >= (task.max_retries or 0):
        return ()
    return tuple(task.autoretry_for or ())


# ---------------------------------------------------------------- the router
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
    return router_work.cut(site_name, outage)


@app.task(base=FleetTask, name="fleet.router_restore", acks_late=True, **DEVICE_RETRY)
@validated(task_args.RouterRestoreArgs)
def router_restore(site_name: str, exp_id: str, outage: Outage, probe_for: float = 10.0) -> dict:
    """End the outage, then wait for the LAN to see the provider.

    Retried on timeouts: a restore names the outage it ends and is idempotent
    on the router (a second one answers already-restored), and the WAN coming
    back is worth every try before the dead-man's switch has to do it.
    """
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
    return call_work.place_call(mac, number)


# ---------------------------------------------------------------- rollouts
@app.task(base=FleetTask, bind=True, name="fleet.rollout_push", acks_late=True, ignore_result=True, **DEVICE_RETRY)
@validated(task_args.RolloutPushArgs)
def rollout_push(self: FleetTask, rid: str, mac: str, attempt: int) -> dict:
    """Render, back up, publish and reboot one phone.

    Retried on timeouts: the push is idempotent per (rollout, phone, attempt)
    (backups are marked before they are taken, the reboot is claimed before
    it is sent, and a retry after the claim only confirms it). On the last
    try the phone is settled as failed with the reason.
    """
    return rollout_work.push(rid, mac, attempt, retry_on=retry_on(self))


@app.task(base=FleetTask, bind=True, name="fleet.rollout_rollback", acks_late=True, ignore_result=True, **DEVICE_RETRY)
@validated(task_args.RolloutRollbackArgs)
def rollout_rollback(self: FleetTask, rid: str, mac: str) -> dict:
    """Put the phone's previous files back and reboot it.

    Retried on timeouts while the files are written back (the same bytes
    again); a reboot that fails is not retried (see rollout_work.rollback).
    """
    return rollout_work.rollback(rid, mac, retry_on=retry_on(self))


@app.task(base=FleetTask, bind=True, name="fleet.rollout_cleanup", acks_late=True, ignore_result=True, **DEVICE_RETRY)
@validated(task_args.RolloutCleanupArgs)
def rollout_cleanup(self: FleetTask, rid: str, site_name: str) -> dict:
    """Delete a finished rollout's backups on the site's boot server. Retried on timeouts: deleting is idempotent."""
    return rollout_work.cleanup(rid, site_name, retry_on=retry_on(self))


@app.task(base=FleetTask, name="fleet.scheduled_rollout", acks_late=True)
@validated(task_args.ScheduledRolloutArgs)
def scheduled_rollout(playbook_path: str, inventory_path: str, schedule_name: str, fire_time: str | None = None) -> dict:
    """One scheduled run: create its rollout (id from the schedule's name and `fire_time`) and drive it once.

    No retry policy: the driver waits out Redis and its workers itself, and a
    redelivered copy (acks_late) computes the same id and finds the rollout
    driven or finished; see fleet.rollout.schedule.
    """
    from fleet.rollout.schedule import run_scheduled
    from fleet.worker.context import stores

    store, _ = stores()
    return run_scheduled(store, playbook_path, inventory_path, schedule_name, fire_time)
