"""The tasks' conventions, without a worker: failures reach the caller as TaskFailed with the worker's words,
retries are declared where repeating is safe and only there, and a phone is settled only when no retry follows."""
from __future__ import annotations

import pytest
from celery.backends.base import BaseBackend

from fleet.experiment import router_work
from fleet.rollout import work as rollout_work
from fleet.experiment import tasks as experiment_tasks
from fleet.rollout import tasks as rollout_tasks
from fleet.worker import base as task_base
from fleet.worker.app import app
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, DriverError
from fleet.worker.errors import TaskFailed


def _round_trip(exc: BaseException) -> BaseException:
    """What the caller's `.get()` raises for `exc`: Celery's JSON result backend, both directions."""
    backend = BaseBackend(app=app, serializer="json")
    return backend.exception_to_python(backend.prepare_exception(exc))


def test_a_task_failure_reaches_the_caller_as_the_same_class_and_words():
    back = _round_trip(TaskFailed("router 10.1.0.1:22: no SSH answer within 10s"))
    assert type(back) is TaskFailed and str(back) == "router 10.1.0.1:22: no SSH answer within 10s"
    # why tasks do not let driver errors through: they would come back as a bare Exception with mangled text
    lost = _round_trip(DeviceTimeout("router 10.1.0.1:22", "no SSH answer within 10s"))
    assert not isinstance(lost, DriverError)


def test_retries_are_declared_only_where_repeating_is_safe():
    retried = {"fleet.router_restore", "fleet.router_state", "fleet.rollout_push", "fleet.rollout_rollback",
               "fleet.rollout_cleanup"}
    never = {"fleet.router_outage", "fleet.place_call", "fleet.inbound_call", "fleet.power_cycle", "fleet.scheduled_rollout",
             "fleet.rollout_tick"}
    fleet_tasks = {name: t for name, t in app.tasks.items() if name.startswith("fleet.")}
    assert set(fleet_tasks) == retried | never
    for name in retried:
        t = fleet_tasks[name]
        assert tuple(t.autoretry_for) == (DeviceTimeout,), name
        assert t.retry_backoff and t.retry_jitter and 1 <= t.max_retries <= 5, name
    for name in never:
        assert not getattr(fleet_tasks[name], "autoretry_for", ()), name
    assert all(t.acks_late and isinstance(t, task_base.FleetTask) for t in fleet_tasks.values())


def test_a_driver_error_fails_the_task_as_task_failed(monkeypatch):
    def timed_out(site_name, outage_id=None):
        raise DeviceTimeout("router 10.1.0.1:22", "no SSH answer within 10s")

    monkeypatch.setattr(router_work, "state", timed_out)
    with pytest.raises(TaskFailed, match="router 10.1.0.1:22: no SSH answer within 10s"):
        experiment_tasks.router_state("hq")


def test_retry_on_is_empty_on_the_last_try_and_when_called_directly():
    task = rollout_tasks.rollout_push
    assert task_base.retry_on(task) == ()   # called directly: the failure comes at once
    task.push_request(retries=0, called_directly=False)
    try:
        assert task_base.retry_on(task) == (DeviceTimeout,)
    finally:
        task.pop_request()
    task.push_request(retries=task.max_retries, called_directly=False)
    try:
        assert task_base.retry_on(task) == ()
    finally:
        task.pop_request()


class _Records:
    """A RolloutStore stand-in that keeps what the work writes."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str, dict]] = []

    def set_phone(self, rid: str, mac: str, **fields) -> None:
        self.written.append((rid, mac, fields))


def test_a_phone_is_settled_only_when_no_retry_follows():
    rs = _Records()
    with pytest.raises(DeviceTimeout):
        with rollout_work._settles_as(rs, "r1", "0004f2000001", "failed", retry_on=(DeviceTimeout,)):
            raise DeviceTimeout("boot server", "no answer within 10s")
    assert rs.written == [], "a retry follows: the phone stays as it is"
    with pytest.raises(TaskFailed, match="phone 0004f2000001 failed: boot server: no answer"):
        with rollout_work._settles_as(rs, "r1", "0004f2000001", "failed", retry_on=()):
            raise DeviceTimeout("boot server", "no answer within 10s")
    with pytest.raises(TaskFailed, match="login refused"):
        with rollout_work._settles_as(rs, "r1", "0004f2000001", "failed", retry_on=(DeviceTimeout,)):
            raise DeviceRefused("boot server", "login refused")   # an answer: the same again, no retry
    states = [(f["state"], f["error"]) for _, _, f in rs.written]
    assert states == [("failed", "boot server: no answer within 10s"), ("failed", "boot server: login refused")]
