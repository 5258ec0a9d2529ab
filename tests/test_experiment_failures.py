"""A step's device task that gives no answer to use raises a typed StepFailed (fleet.experiment.failures), read
without blocking (fleet.experiment.sent_task), and the step turns it into the same result and words as before.

No worker here: answers are written into the result backend (Redis) the way a worker writes them.
"""
from __future__ import annotations

import uuid

import pytest
import yaml
from billiard.exceptions import WorkerLostError

from fleet.config import inventory
from fleet.experiment import sent_task as sent_task_mod
from fleet.experiment.failures import NoWorker, StepFailed, TaskRefused, WorkerLost
from fleet.experiment.playbook import ExperimentPlaybook
from fleet.experiment.runner import ExperimentRunner
from fleet.experiment.sent_task import SentTask
from fleet.state.store import Store
from fleet.worker.app import app, configure
from fleet.worker.errors import TaskFailed


@pytest.fixture()
def backend(redis_url):
    configure(redis_url)
    return app.backend


def _sent(task: str = "fleet.router_outage", timeout: float = 60.0, sent_at: float = 1000.0) -> SentTask:
    return SentTask(task, uuid.uuid4().hex, "site.hq", "hq", sent_at, timeout)


def test_no_answer_yet_is_none_and_past_the_timeout_names_the_queue_and_the_command(backend):
    sent = _sent(timeout=60)
    assert sent.answer(now=1059.0) is None
    with pytest.raises(NoWorker) as caught:
        sent.answer(now=1060.0)
    assert str(caught.value) == ("fleet.router_outage: no answer from a worker of queue site.hq within 60s "
                                 "(is `fleet worker --site hq` running?)")
    assert caught.value.queue == "site.hq" and isinstance(caught.value, StepFailed)


def test_an_answer_is_the_tasks_own_dict(backend):
    sent = _sent()
    backend.mark_as_done(sent.id, {"outcome": "cut", "deadman": "at 12:00"})
    assert sent.answer(now=5000.0) == {"outcome": "cut", "deadman": "at 12:00"}   # an answer beats the timeout


def test_a_failed_task_is_refused_in_the_workers_words(backend):
    sent = _sent()
    backend.mark_as_failure(sent.id, TaskFailed("router 10.1.0.1:22: no SSH answer within 10s"))
    with pytest.raises(TaskRefused, match=r"^router 10.1.0.1:22: no SSH answer within 10s$"):
        sent.answer()


def test_a_lost_worker_is_named_with_the_task(backend):
    sent = _sent("fleet.router_restore")
    backend.mark_as_failure(sent.id, WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."))
    with pytest.raises(WorkerLost) as caught:
        sent.answer()
    assert not isinstance(caught.value, TaskRefused)
    assert str(caught.value).startswith("fleet.router_restore: WorkerLostError: Worker exited prematurely")


def test_a_sent_task_survives_being_kept_as_json():
    sent = _sent()
    assert SentTask.from_dict(yaml.safe_load(yaml.safe_dump(sent.to_dict()))) == sent


def _runner(tmp_path, store: Store, steps: list[dict]) -> ExperimentRunner:
    doc = {"name": "t", "firmware_family": "uc-5.x", "sites": [{
        "name": f"f{uuid.uuid4().hex[:6]}", "gateway": "127.46.9.1", "boot_server": {"url": "http://127.0.0.1:9/"},
        "phones": [{"mac": "0004f2000001", "model": "VVX 410", "address": "127.46.9.20", "credentials": "admin"}]}]}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    inv = inventory.load(path)
    pb = ExperimentPlaybook.model_validate({"kind": "experiment", "name": "x", "site": doc["sites"][0]["name"],
                                            "steps": steps})
    return ExperimentRunner(pb, inv, store, task_timeout=5)


def test_failed_device_tasks_become_the_steps_results_with_the_same_words(backend, redis_url, tmp_path, monkeypatch):
    """The cut is refused by the router, the cleanup's restore is lost with its worker: the run says so in its
    step results, outage record and event log, exactly as when failures were `{"ok": False}` dicts."""
    failures = {"fleet.router_outage": TaskFailed("router 10.1.0.1:22: no SSH answer within 10s"),
                "fleet.router_restore": WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL).")}
    sent_names = []

    def send(sig, queue, site, timeout, expires=None):
        sent = SentTask(sig.task, uuid.uuid4().hex, queue, site, 0.0, timeout)
        backend.mark_as_failure(sent.id, failures[sig.task])
        sent_names.append(sig.task)
        return sent

    monkeypatch.setattr(sent_task_mod.SentTask, "send", staticmethod(send))
    store = Store(redis_url)
    runner = _runner(tmp_path, store, [{"name": "cut", "outage": "link-down", "max_duration": 30}])
    result = runner.run()
    assert sent_names == ["fleet.router_outage", "fleet.router_restore"]
    assert not result.passed
    [step] = result.steps
    assert (step.kind, step.passed) == ("outage", False)
    assert step.message == "cut failed: router 10.1.0.1:22: no SSH answer within 10s"
    lost = "fleet.router_restore: WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL)."
    assert result.errors == [f"cleanup restore failed: restore failed: {lost}"]
    [outage] = result.outages
    assert outage["cut"] == "unknown (router 10.1.0.1:22: no SSH answer within 10s)"
    assert outage["restore"] == f"failed ({lost})"
    assert outage["confirmed"] == f"NOT confirmed: {lost}; no dead-man's switch is armed: restore the WAN by hand"
    events = {e["kind"]: e for e in store.events(result.id)}
    assert events["outage"]["ok"] is False and events["outage"]["error"].startswith("router 10.1.0.1:22")
    assert events["restore"]["ok"] is False and events["restore"]["error"] == lost


def test_a_dial_nobody_takes_fails_the_call_step_with_the_hint(backend, redis_url, tmp_path, monkeypatch):
    monkeypatch.setattr(sent_task_mod.SentTask, "send", staticmethod(
        lambda sig, queue, site, timeout, expires=None: SentTask(sig.task, uuid.uuid4().hex, queue, site, 0.0, timeout)))
    runner = _runner(tmp_path, Store(redis_url), [{"name": "dial", "call": "2000", "from_phone": "0004f2000001",
                                                   "expect_server": 1}])
    [step] = runner.run().steps
    assert step.message == (f"dial failed: fleet.place_call: no answer from a worker of queue {runner.queue} within 5s "
                            f"(is `fleet worker --site {runner.site.name}` running?)")
