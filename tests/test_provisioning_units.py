"""Unit tests: override files and what they shadow, the dry run's look at a boot directory, uncatalogued parameters."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN
from fleet.sites import overrides
from fleet.rollout import record_check as plan_check
from fleet.rollout import playbook as rollout_playbook
from fleet.sites import files as site_files
from fleet.drivers.publish import open_publisher
from fleet.config.inventory import Credentials
from fleet.config.inventory import load as load_inventory
from fleet.rollout.plan import check_against, config_hash, plan
from soundpoint.yamlfile import FileError
from soundpoint import bootfiles

MAC = "0004f2000001"


def cfg(params: dict[str, str]) -> bytes:
    attrs = " ".join(f'{k}="{v}"' for k, v in params.items())
    return f"<polycomConfig><x {attrs}/></polycomConfig>".encode()


@pytest.fixture
def boot(tmp_path):
    d = tmp_path / "boot"
    d.mkdir()
    return d


def files_for(boot: Path, params: dict[str, str]) -> site_files.PhoneFiles:
    url = f"file://{boot}/"
    pub = open_publisher(url, Credentials())
    try:
        return site_files.phone_files(pub, url, MAC, params, lambda u: open_publisher(u, Credentials()))
    finally:
        pub.close()


def test_override_files_in_the_overrides_directory_shadow_what_they_set_differently(boot):
    (boot / "000000000000.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="sip.cfg" OVERRIDES_DIRECTORY="ov/"/>')
    (boot / "ov").mkdir()
    (boot / "ov" / f"{MAC}-phone.cfg").write_bytes(cfg({"reg.1.label": "mine", "reg.1.displayName": "Same"}))
    (boot / "ov" / f"{MAC}-web.cfg").write_bytes(cfg({"reg.1.label": "web", "reg.1.server.1.expires": "3600",
                                                      "reg.1.auth.password": "x"}))
    pf = files_for(boot, {"reg.1.label": "ours", "reg.1.displayName": "Same", "reg.1.server.1.expires": "600",
                          "reg.1.auth.password": "***", "reg.1.address": "1001"})
    assert [s.reason() for s in pf.shadows] == [
        f"shadowed by ov/{MAC}-phone.cfg: reg.1.label",          # the phone file wins over the web file
        f"shadowed by ov/{MAC}-web.cfg: reg.1.server.1.expires",
        f"shadowed by ov/{MAC}-web.cfg: reg.1.auth.password"]    # a masked secret: set at all is enough
    assert pf.creates_master and pf.master_from == bootfiles.DEFAULT_MASTER
    assert "ov/" in pf.shadowed() and "x" not in pf.shadowed().replace("expires", "")   # never a value


def test_override_files_beside_the_master_when_the_directory_is_empty(boot):
    (boot / f"{MAC}.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="sip.cfg" OVERRIDES_DIRECTORY=""/>')
    (boot / f"{MAC}-phone.cfg").write_bytes(cfg({"reg.1.label": "mine"}))
    pf = files_for(boot, {"reg.1.label": "ours"})
    assert [s.reason() for s in pf.shadows] == [f"shadowed by {MAC}-phone.cfg: reg.1.label"]
    assert not pf.creates_master


@pytest.mark.parametrize("directory,content,note", [
    ("missing", None, "not readable"),
    ("http://elsewhere/ov", None, "not a folder below the boot directory"),
    ("../up", None, "not a folder below the boot directory"),
    ("ov", b"<broken", "skips it as well"),
])
def test_unreadable_override_places_are_noted_not_assumed(boot, directory, content, note):
    (boot / "000000000000.cfg").write_bytes(f'<APPLICATION CONFIG_FILES="sip.cfg" OVERRIDES_DIRECTORY="{directory}"/>'.encode())
    if content is not None:
        (boot / directory).mkdir()
        (boot / directory / f"{MAC}-phone.cfg").write_bytes(content)
    pf = files_for(boot, {"reg.1.label": "ours"})
    assert not pf.shadows and note in " ".join(pf.notes)


def test_no_master_at_all_is_refused_with_both_names(boot):
    with pytest.raises(ValueError, match=f"neither {MAC}.cfg nor 000000000000.cfg"):
        files_for(boot, {})


# ---------------------------------------------------------------- uncatalogued parameters
def write(tmp: Path, doc: dict) -> Path:
    path = tmp / "pb.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


BASE = {"kind": "rollout", "name": "x", "params": {"reg.1.server.1.expires": 600, "tcpIpApp.sntp.address": "ntp.example"}}


def test_an_uncatalogued_parameter_is_refused_with_its_line_unless_the_playbook_allows_it(tmp_path):
    with pytest.raises(FileError, match=r"pb\.yml:5: params\.tcpIpApp\.sntp\.address: not a parameter this tool manages.*allow_uncatalogued: true"):
        rollout_playbook.load(write(tmp_path, BASE))
    pb = rollout_playbook.load(write(tmp_path, BASE | {"allow_uncatalogued": True}))
    assert rollout_playbook.verbatim_names(pb) == {"tcpIpApp.sntp.address"}


@pytest.mark.parametrize("name,value,why", [
    ("feature.x.password", "p", "password"), ("a.b", "secret:x", "references"), ("a.b", "{site.gateway}", "placeholders"),
    ("no_dot", "1", "not a parameter name"), ("a.b", "x\ny", "control"),
])
def test_verbatim_parameters_are_checked_for_form(tmp_path, name, value, why):
    doc = BASE | {"allow_uncatalogued": True, "params": {name: value}}
    with pytest.raises(FileError, match=why):
        rollout_playbook.load(write(tmp_path, doc))


def inventory(tmp: Path, boot: Path) -> Path:
    path = tmp / "inventory.yml"
    (tmp / "secrets.yml").write_text(yaml.safe_dump({"admin": {"username": "Polycom", "password": "456"}}))
    (tmp / "secrets.yml").chmod(0o600)
    path.write_text(yaml.safe_dump({
        "name": "unit", "firmware_family": "uc-5.x", "secrets_file": "secrets.yml",
        "sites": [{"name": "hq", "gateway": "10.0.0.1", "boot_server": {"url": f"file://{boot}/"},
                   "phones": [{"mac": MAC, "model": "VVX 410", "address": "10.0.1.2", "credentials": "admin"}]}]}))
    return path


def test_verbatim_parameters_reach_the_plan_and_the_worker_check_and_the_dry_run_says_so(tmp_path, boot):
    (boot / "000000000000.cfg").write_bytes(b'<APPLICATION CONFIG_FILES="sip.cfg"/>')
    inv_path = inventory(tmp_path, boot)
    pb_path = write(tmp_path, BASE | {"allow_uncatalogued": True, "params": {"reg.1.server.1.address": "sip.example",
                                                                             "tcpIpApp.sntp.address": "yntp"}})
    pb, inv = rollout_playbook.load(pb_path), load_inventory(inv_path)
    check_against(pb, inv, pb_path)
    p = plan(inv, pb, "r1")
    entry = p.phones[0]
    assert entry.params["tcpIpApp.sntp.address"] == "yntp" and entry.verbatim == ["tcpIpApp.sntp.address"]
    record = {"state": "pending", "attempt": "1", "plan": json.dumps(entry.to_dict())}
    assert plan_check.check(inv, "r1", MAC, record).params["tcpIpApp.sntp.address"] == "yntp"
    forged = entry.to_dict() | {"verbatim": []}
    with pytest.raises(plan_check.PlanRefused, match="catalogue"):
        plan_check.check(inv, "r1", MAC, dict(record, plan=json.dumps(forged)))
    env = {k: v for k, v in os.environ.items() if k != "FLEET_REDIS_URL"}
    out = subprocess.run([BIN / "fleet", "rollout", "run", str(pb_path), "--inventory", str(inv_path), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=60)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0, out.stderr
    assert "tcpIpApp.sntp.address: None -> yntp (uncatalogued: passed through verbatim, unchecked)" in text
    assert f"{MAC}: {MAC}.cfg created from 000000000000.cfg" in text
    other = plan(inv, pb.model_copy(update={"params": {**pb.params, "tcpIpApp.sntp.address": "zntp"}}), "r2")
    assert other.phones[0].config_hash != entry.config_hash == config_hash(dict(entry.params))   # verbatim values count


# ---------------------------------------------------------------- verification of a shadowed phone
def test_verification_fails_a_registered_phone_whose_push_found_a_shadowing_override():
    from fleet.rollout import policy as rp

    site_of = {MAC: "hq", "0004f2000002": "hq"}
    limits = rp.Limits(site_of=site_of, max_unavailable={"hq": 2}, budget_total=1, budget_per_site=None,
                       verify_within=120.0, registered_to=(1,), rollback=True, progress_deadline=600.0,
                       dispatch_stall=60.0, defer_retry=5.0)
    reason = f"shadowed by overrides/{MAC}-phone.cfg: reg.1.server.1.expires"
    snap = {MAC: {"state": "verifying", "reboot_at": "990", "attempt": "1", "shadowed": reason},
            "0004f2000002": {"state": "verifying", "reboot_at": "990", "attempt": "1", "shadowed": ""}}
    seen = {m: {1: {"state": "registered", "t": 995.0}} for m in site_of}
    actions = {a.mac: a for a in rp.advance(snap, seen, limits, 1000.0)}
    assert actions[MAC].kind == rp.FAIL and actions[MAC].fields["error"] == reason and actions[MAC].task == "rollback"
    assert actions["0004f2000002"].kind == rp.VERIFIED
    assert rp.advance(snap, {}, limits, 1000.0) == []     # not yet registered: not judged early
