"""A site whose boot-server address names its master file (ftp://host/campus.cfg): rollout, verification, rollback.

Lab net 114, one site, two phones over FTP. The phones read `campus.cfg`
first (SIP 3.1 admin guide, appendix A: a master named in the boot-server
address, then `<MAC>.cfg`, then `000000000000.cfg`); there is no `<MAC>.cfg`.
The inventory gives the phones' own address, which names the file; fleet
splits it (boot_server.url the directory, boot_server.master_file the name), puts
`[PHONE_MAC_ADDRESS]-fleet.cfg` first in that shared master, each phone reads
its own fleet file, and rolling both phones back returns every byte.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from celery import Celery

from conftest import directory_files, lab_spec, run_fleet, start_lab, wait_until
from fleet.config import inventory as inv_mod
from fleet.state.store import RolloutStore, Store

pytestmark = pytest.mark.slow
PUSHED = "reg.1.server.1.expires"
MASTER = "campus.cfg"


files_of = directory_files


def digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory, worker_factory):
    spec = lab_spec("named-master", phones=2, models=["VVX 410"], boot_protocol="ftp")
    spec["timing"]["log_upload_period"] = 0
    spec["sites"][0]["boot_master"] = MASTER
    lab = start_lab(tmp_path_factory.mktemp("named-master"), spec)
    try:
        lab.boot = lab.state / "boot-hq"
        lab.inv = inv_mod.load(lab.inventory)
        lab.macs = sorted(p.mac for p in lab.inv.site("hq").phones)
        lab.worker = worker_factory(lab.inventory, "hq")
        yield lab
    finally:
        lab.down()


def playbook(tmp: Path) -> Path:
    path = tmp / "pb.yml"
    path.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "named-master", "params": {PUSHED: 12},
        "strategy": {"canary": 1, "wave_size": 2, "max_unavailable": 2, "failure_budget": {"total": 1},
                     "progress_deadline": 120},
        "verify": {"registered_to": [1], "within": 30}, "rollback": True, "keep_backups": True}))
    return path


def test_the_lab_phones_boot_from_the_master_their_address_names(site):
    # the inventory gives the phones' own address (ftp://host:port/campus.cfg); fleet splits it as they do
    raw = next(s for s in yaml.safe_load(Path(site.inventory).read_text())["sites"] if s["name"] == "hq")["boot_server"]
    assert raw["url"].endswith("/" + MASTER) and "master_file" not in raw
    boot_server = site.inv.site("hq").boot_server
    assert (boot_server.url, boot_server.master_file) == (raw["url"][:-len(MASTER)], MASTER)
    truth = site.status()["ground_truth"]["phones"]
    for mac in site.macs:
        assert not (site.boot / f"{mac}.cfg").exists()
        assert truth[mac]["current"]["master"] == MASTER
        assert truth[mac]["current"]["files"] == [f"{mac}-reg.cfg", "site.cfg"]


def test_rollout_edits_the_named_master_verifies_and_rolls_back_byte_for_byte(site, redis_url, tmp_path):
    boot, macs = site.boot, site.macs
    before = files_of(boot)
    pb = playbook(tmp_path)

    dry = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--dry-run", "--json"], redis_url)
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)["site_files"]
    for mac in macs:
        assert found[mac] == {"master": MASTER, "creates": False, "shadowed": [], "notes": [], "shared": True}
    text = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--dry-run"], redis_url)
    assert f"{MASTER} (named in the boot-server address" in " ".join(text.stdout.split())
    assert files_of(boot) == before

    run = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--json"], redis_url)
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    rid = outcome["id"]
    states = RolloutStore(Store(redis_url)).phones(rid, macs, full=True)
    assert {m: s["state"] for m, s in states.items()} == {m: "verified" for m in macs}, run.stdout + run.stderr

    after = files_of(boot)
    assert after[MASTER] == before[MASTER].replace(b'CONFIG_FILES="', b'CONFIG_FILES="[PHONE_MAC_ADDRESS]-fleet.cfg, ')
    assert after[f"{MASTER}.before-{rid}"] == before[MASTER]
    assert set(after) - set(before) == {f"{m}-fleet.cfg" for m in macs} | {f"{MASTER}.before-{rid}"}
    truth = site.status()["ground_truth"]["phones"]
    for mac in macs:
        current = truth[mac]["current"]
        assert current["master"] == MASTER and current["files"][0] == f"{mac}-fleet.cfg"
        assert (current["applied"][PUSHED], current["applied_from"][PUSHED]) == ("12", f"{mac}-fleet.cfg")

    client = Celery("named-master-client", broker=redis_url, backend=redis_url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    try:
        # one phone rolled back: the shared master keeps the entry the other phone still needs
        client.send_task("fleet.rollout_rollback", args=[rid, macs[0]], queue="site.hq", ignore_result=True)
        wait_until(lambda: f"{macs[0]}-fleet.cfg" not in files_of(boot), 60, "the first phone's fleet file removed")
        wait_until(lambda: RolloutStore(Store(redis_url)).phone(rid, macs[0]).get("state") in ("rolled_back", "rolling_back"),
                   30, "the first phone rolling back")
        assert files_of(boot)[MASTER] == after[MASTER]
        client.send_task("fleet.rollout_rollback", args=[rid, macs[1]], queue="site.hq", ignore_result=True)
        wait_until(lambda: {n: d for n, d in files_of(boot).items() if ".before-" not in n} == before, 60,
                   "the rolled-back boot directory",
                   state=lambda: sorted(set(files_of(boot)) ^ set(before)))
        client.send_task("fleet.rollout_cleanup", args=[rid, "hq"], queue="site.hq", ignore_result=True)
        wait_until(lambda: digest(files_of(boot)) == digest(before), 60,
                   f"every file as before (now: {sorted(set(files_of(boot)) ^ set(before))})")
    finally:
        client.close()
