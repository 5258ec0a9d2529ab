"""A UC Software 4.0 phone with check-sync alwaysReboot=0: a rollout of reg.x.* applies live, verified without a reboot.

Lab net 116, one site, one SoundPoint IP 650 on UC Software 4.0 with
`voIpProt.SIP.specialEvent.checkSync.alwaysReboot=0`. Its check-sync re-reads
the files; only `reg.1.server.1.expires` changes, a parameter UC Software
applies without a restart (*unconfirmed* rule, conformance entry
checksync-uc-live-apply), so the phone registers again with the new value and
never reboots. The rollout verifies it by that registration and says the files
were applied without a reboot; before this change the lab rebooted the phone
anyway and the rollout never said how the files took effect.
"""
from __future__ import annotations

import time

import pytest
import yaml

from conftest import lab_spec, run_fleet, start_lab
from fleet.state.store import RolloutStore, Store

pytestmark = pytest.mark.slow
PUSHED = "reg.1.server.1.expires"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, worker_factory):
    spec = lab_spec("checksync-live", phones=1, models=["SoundPoint IP 650"])
    spec["firmware_family"] = "uc-4.0"
    spec["timing"]["log_upload_period"] = 0
    spec["sites"][0]["params"] = {"voIpProt.SIP.specialEvent.checkSync.alwaysReboot": 0}
    running = start_lab(tmp_path_factory.mktemp("checksync-live"), spec)
    try:
        running.worker = worker_factory(running.inventory, "hq")
        yield running
    finally:
        running.down()


def test_a_reg_only_change_is_applied_live_and_verified_without_a_reboot(lab, redis_url, tmp_path):
    pb = tmp_path / "pb.yml"
    pb.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "live", "params": {PUSHED: 12},
        "strategy": {"canary": 0, "wave_size": 1, "max_unavailable": 1, "failure_budget": {"total": 0},
                     "progress_deadline": 120},
        "verify": {"registered_to": [1], "within": 30}, "rollback": True}))
    started = time.time()
    run = run_fleet(["rollout", "run", str(pb), "--inventory", str(lab.inventory)], redis_url)
    assert run.returncode == 0, run.stdout + run.stderr
    rid = run.stdout.split("rollout ", 1)[1].split()[0]

    truth = lab.status()["ground_truth"]["phones"]
    (mac,) = truth
    record = RolloutStore(Store(redis_url)).phone(rid, mac)
    events = [e for e in truth[mac]["events"] if e["t"] >= started]
    kinds = [e["kind"] for e in events]
    assert (record["state"], record.get("applied"), record.get("reboot_optional")) == \
        ("verified", "without a reboot", "1"), (record, [k for k in kinds if k not in ("server_state", "working_server")])
    assert "applied without a reboot" in " ".join(run.stdout.split()), run.stdout
    assert "reboot" not in kinds, kinds
    live = [e["data"] for e in events if e["kind"] == "applied_live"]
    assert live and live[-1]["params"] == [PUSHED]
    assert truth[mac]["current"]["applied"][PUSHED] == "12"
    assert truth[mac]["current"]["applied_from"][PUSHED] == f"{mac}-fleet.cfg"



def test_a_change_that_needs_a_restart_reboots_the_phone_and_the_rollout_says_so(lab, redis_url, tmp_path):
    """log.upload.period is not reg.x.*: the check-sync with alwaysReboot=0 reboots the phone, which sends its
    shutdown event, and the verified record says the files were applied after a reboot."""
    pb = tmp_path / "pb.yml"
    pb.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "restart", "params": {"log.upload.period": 3600},
        "strategy": {"canary": 0, "wave_size": 1, "max_unavailable": 1, "failure_budget": {"total": 0},
                     "progress_deadline": 120},
        "verify": {"registered_to": [1], "within": 30}, "rollback": True}))
    started = time.time()
    run = run_fleet(["rollout", "run", str(pb), "--inventory", str(lab.inventory)], redis_url)
    assert run.returncode == 0, run.stdout + run.stderr
    rid = run.stdout.split("rollout ", 1)[1].split()[0]
    truth = lab.status()["ground_truth"]["phones"]
    (mac,) = truth
    record = RolloutStore(Store(redis_url)).phone(rid, mac)
    kinds = [e["kind"] for e in truth[mac]["events"] if e["t"] >= started]
    assert "reboot" in kinds and "applied_live" not in kinds, \
        ([e for e in truth[mac]["events"] if e["t"] >= started and e["kind"] == "applied_live"], record)
    assert (record["state"], record.get("applied")) == ("verified", "after a reboot"), record
    assert "applied after a reboot" in " ".join(run.stdout.split()), run.stdout
