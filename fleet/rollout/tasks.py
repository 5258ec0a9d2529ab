"""The rollout's Celery tasks: push, roll back and clean up one phone or site; start and tick a scheduled rollout.

Each one checks its arguments, calls one plain function (fleet.rollout.work, fleet.rollout.schedule) and raises
when that fails; the conventions every task follows are in fleet/worker/base.py. The driver sends these by
name (fleet.rollout.driver), so this module may import the driver's side (schedule -> driver) without a
circle; the task names ("fleet.rollout_push" ...) are what a message carries and never change.
"""
from __future__ import annotations

from fleet.rollout import work as rollout_work
from fleet.rollout.schedule import run_scheduled, run_tick
from fleet.worker import args as task_args
from fleet.worker.app import CONTROL_QUEUE, app
from fleet.worker.args import validated
from fleet.worker.base import DEVICE_RETRY, FleetTask, retry_on
from fleet.worker.context import stores
from fleet.worker.errors import TaskFailed


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
    """One scheduled run: create its rollout (id from the schedule's name and `fire_time`), take it for one
    driver, and send the first of the ticks that drive it (fleet.rollout.ticks); it waits for nothing.

    No retry policy: a redelivered copy (acks_late) computes the same id and
    finds the rollout driven or finished; see fleet.rollout.schedule.
    """
    store, _ = stores()
    started = run_scheduled(store, playbook_path, inventory_path, schedule_name, fire_time)
    if "tick" in started:
        rollout_tick.apply_async((started["id"], started["holder"], started["tick"]), queue=CONTROL_QUEUE)
    return started


@app.task(base=FleetTask, name="fleet.rollout_tick", acks_late=True)
@validated(task_args.RolloutTickArgs)
def rollout_tick(rid: str, holder: str, tick: int) -> dict:
    """One non-blocking move of a scheduled rollout, then the next tick sent with a countdown.

    No retry policy: a tick waits out Redis itself, and a redelivered copy
    finds its number done or running (RolloutStore.claim_tick). The last tick
    fails (TaskFailed) when the rollout ended other than done, as a scheduled
    run always has.
    """
    store, _ = stores()
    step = run_tick(store, rid, holder, tick)
    if step.next_tick is not None:
        rollout_tick.apply_async((rid, holder, step.next_tick), countdown=step.countdown, queue=CONTROL_QUEUE)
    if step.failure:
        raise TaskFailed(f"scheduled rollout {rid} {step.failure}")
    return step.summary
