"""The controller's side of an experiment's `power` step: send the cycle to the site's worker, judge its answer.

The step passes when every selected phone's port read back off and then on
(fleet.experiment.power_work); what the phones do afterwards (boot, register
again) is for the `expect` steps after it, as after an outage. The task
expires unstarted after a while: a power cycle no worker took in time must not
run later, while the experiment has moved on.
"""
from __future__ import annotations

import time

from soundpoint import values

from fleet.experiment import tasks
from fleet.experiment.failures import StepFailed
from fleet.experiment.playbook import PowerStep

START_WITHIN_S = 30.0     # a power task no worker started within this never runs


def run(runner, exp: str, step: PowerStep, result_type):
    """One move of the step for `runner` (fleet.experiment.runner.ExperimentRunner, which passes its StepResult
    as `result_type`: no import back, no circle): the first sends the task, later ones read its answer (None
    while it may come)."""
    progress = runner.pending
    assert progress is not None
    phones = runner._phones(step.power.phones)
    macs = [p.mac for p in phones]
    if "sent" not in progress:
        progress["t0"] = time.time()
        runner.store.log_event(exp, "power", phase="sent", macs=macs, off_s=step.power.off_s)
        runner._send(tasks.power_cycle.s(runner.site.name, exp, macs, step.power.off_s), expires=START_WITHIN_S)
    try:
        answer = runner._answer()
    except StepFailed as exc:
        return result_type(step.name, "power", False, 0, f"power cycle failed: {exc}", {"error": str(exc)})
    if answer is None:
        runner.progress(f"{step.name}: {values.plural(len(macs), 'port')} off for {step.power.off_s:g} s")
        return None
    ports = answer.get("ports", {})
    ok = [m for m in macs if ports.get(m, {}).get("off", {}).get("enabled") is False
          and ports.get(m, {}).get("on", {}).get("enabled") is True]
    runner.store.log_event(exp, "power", phase="done", off_at=answer.get("off_at"), on_at=answer.get("on_at"),
                           ports=ports)
    passed = len(ok) == len(macs)
    return result_type(step.name, "power", passed, 0,
                       f"{values.plural(len(ok), 'port')} of {len(macs)} read back off, then on",
                       {"off_at": answer.get("off_at"), "on_at": answer.get("on_at"), "ports": ports})
