"""A rollout onto a boot server holding a realistic site: the site's files stay, its phones keep their settings.

Lab net 8, one site, three phones. The boot directory is rewritten into what
a real site has: a default master with the UC Software 4 template set and
every directory attribute, one phone with its own SIP 2.x-style master
(`phone1.cfg, sip.cfg`), shared files full of settings fleet does not manage,
and an override file for one phone that shadows a value the rollout pushes.
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
from soundpoint import bootfiles

pytestmark = pytest.mark.slow
PUSHED = "reg.1.server.1.expires"

DEFAULT_MASTER = b"""<?xml version="1.0" standalone="yes"?>
<!-- Default Master SIP Configuration File, edited by the site's administrator -->
<APPLICATION APP_FILE_PATH="sip.ld"
  CONFIG_FILES="[PHONE_MAC_ADDRESS]-reg.cfg, site.cfg, features.cfg, sip-basic.cfg"
  MISC_FILES="" LOG_FILE_DIRECTORY="logs" OVERRIDES_DIRECTORY="overrides" CONTACTS_DIRECTORY="contacts"
  LICENSE_DIRECTORY="" USER_PROFILES_DIRECTORY="" CALL_LISTS_DIRECTORY="calls" COREFILE_DIRECTORY="">
  <APPLICATION_SPIP650 APP_FILE_PATH_SPIP650="" CONFIG_FILES_SPIP650=""/>
  <APPLICATION_VVX410 APP_FILE_PATH_VVX410="" CONFIG_FILES_VVX410=""/>
</APPLICATION>
"""
OWN_MASTER = (b'<?xml version="1.0" standalone="yes"?>\r\n<APPLICATION APP_FILE_PATH="sip.ld" '
              b'CONFIG_FILES="[PHONE_MAC_ADDRESS]-reg.cfg, phone1.cfg, sip.cfg, site.cfg" MISC_FILES="" '
              b'LOG_FILE_DIRECTORY="logs" OVERRIDES_DIRECTORY="overrides" CONTACTS_DIRECTORY="contacts"/>\r\n')
# settings of the site that fleet does not manage, one file each; sip-basic.cfg also sets the pushed parameter
SITE_ONLY = {
    "features.cfg": {"feature.presence.enabled": "1", "tcpIpApp.sntp.address": "pool.ntp.example"},
    "sip-basic.cfg": {"voice.codecPref.G711_Mu": "1", "dialplan.digitmap": "[2-9]xxxxxxxxx|011xxx.T", PUSHED: "3600"},
    "phone1.cfg": {"lineKey.1.category": "Line", "up.backlight.idleIntensity": "1"},
    "sip.cfg": {"voice.codecPref.G722": "2", "tcpIpApp.sntp.gmtOffset": "3600"},
}
OVERRIDE = {PUSHED: "3600", "up.screenSaver.enabled": "1"}   # changed on the phone by its user


def config_xml(params: dict[str, str]) -> bytes:
    attrs = "\n    ".join(f'{k}="{v}"' for k, v in params.items())
    return f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<polycomConfig>\n  <site\n    {attrs}/>\n</polycomConfig>\n'.encode()


files_of = directory_files    # the boot directory as the phones see it, polled while workers change it


def digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory, worker_factory):
    spec = lab_spec("provision", phones=3, models=["VVX 410"])
    spec["timing"]["log_upload_period"] = 0
    lab = start_lab(tmp_path_factory.mktemp("provision"), spec)
    try:
        boot = lab.state / "boot-hq"
        inv = inv_mod.load(lab.inventory)
        macs = sorted(p.mac for p in inv.site("hq").phones)
        for mac in macs:
            (boot / f"{mac}.cfg").unlink()           # the lab's own masters: the site's replace them
        (boot / "000000000000.cfg").write_bytes(DEFAULT_MASTER)
        (boot / f"{macs[0]}.cfg").write_bytes(OWN_MASTER)
        for name, params in SITE_ONLY.items():
            (boot / name).write_bytes(config_xml(params))
        for folder in ("overrides", "logs", "contacts", "calls"):
            (boot / folder).mkdir()
        (boot / "contacts" / "000000000000-directory.xml").write_bytes(b"<directory><item_list/></directory>\n")
        (boot / "overrides" / f"{macs[2]}-phone.cfg").write_bytes(config_xml(OVERRIDE))
        lab.boot, lab.macs, lab.inv = boot, macs, inv
        lab.worker = worker_factory(lab.inventory, "hq")
        yield lab
    finally:
        lab.down()


def playbook(tmp: Path) -> Path:
    path = tmp / "pb.yml"
    path.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "site-files", "params": {PUSHED: 12},
        "strategy": {"canary": 1, "wave_size": 3, "max_unavailable": 3, "failure_budget": {"total": 1},
                     "progress_deadline": 120},
        "verify": {"registered_to": [1], "within": 30}, "rollback": True, "keep_backups": True}))
    return path


def test_rollout_keeps_the_sites_files_and_settings_and_rolls_back_byte_for_byte(site, redis_url, tmp_path):
    boot, (own, plain, shadowed) = site.boot, site.macs
    before = files_of(boot)
    pb = playbook(tmp_path)

    # the dry run names the phone whose override file shadows the pushed value, and only that one
    dry = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--dry-run", "--json"], redis_url)
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)["site_files"]
    reason = f"shadowed by overrides/{shadowed}-phone.cfg: {PUSHED}"
    assert found[shadowed]["shadowed"] == [reason]
    assert found[own] == {"master": f"{own}.cfg", "creates": False, "shadowed": [], "notes": []}
    assert found[plain] == {"master": "000000000000.cfg", "creates": True, "shadowed": [], "notes": []}
    text = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--dry-run"], redis_url)
    assert f"{shadowed}: {reason}" in " ".join(text.stdout.split())   # rich wraps long lines
    assert files_of(boot) == before                       # a dry run touches nothing

    run = run_fleet(["rollout", "run", str(pb), "--inventory", str(site.inventory), "--json"], redis_url)
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    rid = outcome["id"]
    states = RolloutStore(Store(redis_url)).phones(rid, site.macs, full=True)
    assert {m: s["state"] for m, s in states.items()} == {own: "verified", plain: "verified", shadowed: "rolled_back"}, \
        run.stdout + run.stderr
    assert states[shadowed]["error"] == reason              # verification failed that phone, with the reason

    # every byte of the site's files unchanged, except the master's CONFIG_FILES gaining our file in front
    after = files_of(boot)
    for mac in (own, plain):
        assert after[f"{mac}-fleet.cfg"].count(f'{PUSHED}="12"'.encode()) == 1
    assert after[f"{own}.cfg"] == OWN_MASTER.replace(b'CONFIG_FILES="', f'CONFIG_FILES="{own}-fleet.cfg, '.encode())
    assert after[f"{plain}.cfg"] == DEFAULT_MASTER.replace(b'CONFIG_FILES="', f'CONFIG_FILES="{plain}-fleet.cfg, '.encode())
    assert after[f"{own}.cfg.before-{rid}"] == OWN_MASTER
    assert {n: d for n, d in after.items() if n in before and n != f"{own}.cfg"} == \
        {n: d for n, d in before.items() if n != f"{own}.cfg"}
    assert set(after) - set(before) == {f"{own}-fleet.cfg", f"{plain}.cfg", f"{plain}-fleet.cfg", f"{own}.cfg.before-{rid}"}

    # each phone applied our values and kept its others (the lab's ground truth of applied parameters)
    truth = site.status()["ground_truth"]["phones"]
    for mac, site_files in ((own, ["phone1.cfg", "sip.cfg"]), (plain, ["features.cfg", "sip-basic.cfg"])):
        current = truth[mac]["current"]
        assert current["files"][0] == f"{mac}-fleet.cfg"
        ours = bootfiles.parse_parameters("ours", after[f"{mac}-fleet.cfg"])
        for name, value in ours.items():
            assert current["applied"][name] == ("***" if "password" in name.lower() else value), name
            assert current["applied_from"][name] == f"{mac}-fleet.cfg", name
        for f in site_files:
            for name, value in SITE_ONLY[f].items():
                if name != PUSHED:
                    assert (current["applied"].get(name), current["applied_from"].get(name)) == (value, f), (mac, name)
        assert current["applied"]["reg.1.address"] == ours["reg.1.address"]
    # the shadowed phone, at its boot on our files, took the override's value, as a real phone does
    boots = [e["data"] for e in truth[shadowed]["events"] if e["kind"] == "config"]
    with_ours = [b for b in boots if f"{shadowed}-fleet.cfg" in b["files"]]
    assert with_ours and with_ours[-1]["applied"][PUSHED] == "3600"
    assert with_ours[-1]["source"][PUSHED] == f"overrides/{shadowed}-phone.cfg"

    # rolling back the verified phones too returns the boot directory to exactly its earlier state
    client = Celery("provision-client", broker=redis_url, backend=redis_url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    try:
        for mac in (own, plain):
            client.send_task("fleet.rollout_rollback", args=[rid, mac], queue="site.hq", ignore_result=True)
        wait_until(lambda: {n: d for n, d in files_of(boot).items() if ".before-" not in n} == before, 60,
                   "the rolled-back boot directory")
        client.send_task("fleet.rollout_cleanup", args=[rid, "hq"], queue="site.hq", ignore_result=True)
        wait_until(lambda: digest(files_of(boot)) == digest(before), 60,
                   f"every file as before (now: {sorted(set(files_of(boot)) ^ set(before))})")
    finally:
        client.close()
