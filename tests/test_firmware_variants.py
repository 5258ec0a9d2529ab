"""Every firmware version variant on one lab (issue 16): a rollout with call checks and the WAN-outage experiment.

One lab (net 112, one site) holds a few phones per variant, each of its variant's model running its family
(`phones.family_of`) with its variant's parameters (`phones.params_of`), inside the families' real timer ranges
(expires 300, the provider grants 10 s). The site takes one rollout at a time, so one rollout covers every
variant and each phone's outcome is read per variant (`run_rollouts`):

* with call checks while one phone of each variant holds a call (the lab's /call): that phone is deferred "in a
  call" and never rebooted, the rest are rebooted exactly once (the lab's ground truth) and verified on both
  servers; once the call is hung up, `rollout resume` reboots the deferred phone once and the rollout is done;
* SIP 2.x has no state polling, so its call check is "unknown" by design (fleet.phones.sip2): the rollout with
  call checks defers every SIP 2.x phone naming that, and only `strategy.reboot_without_call_check` reboots them
  (each once, then verified).

Then the shipped WAN-outage playbook runs on the site: every phone of every variant falls back to the gateway and
returns within its own predicted bounds. The phones answer state polling only with corpus shapes (hil renders them
from soundpoint/conformance). The UC Software 5 variants set each lab phone's firmware version (`phones.version_of`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, both_registered, run_fleet, wait_until
from fleet.config import inventory
from fleet.drivers.control import polling
from fleet.drivers.control.sip_notify import check_sync_blocking
from soundpoint.redisboot import free_port
from hil import labfile

pytestmark = pytest.mark.slow

SITE = "variants"
FAST_TX = {"retry_timeout_ms": 500, "retry_max_count": 3}      # 2 s to give up on a dead server
EVENTS = f"127.0.0.1:{free_port()}"
PUSH = {"apps.statePolling.URL": f"http://{EVENTS}/state", "apps.statePolling.responseMode": "1"}
DEADLINE_S = 25       # a wave's progress deadline: the phones not in a call verify well within it


@dataclass(frozen=True)
class Variant:
    """One firmware version variant: the family (and version) its phones run, their model and own parameters, and
    whether a call check can read their call state (one of them then holds a call through the rollout)."""
    name: str
    family: str
    phones: int = 3
    params: dict[str, str] = field(default_factory=dict)
    call_state: bool = True
    in_call: str | None = "state polling, requestor mode"   # why its call check said "in-call" (None: not checked)
    model: str = "SoundPoint IP 650"
    version: str | None = None       # the lab file's phones.version_of; None: the family's own


VARIANTS = [
    Variant("sip-2.x", "sip-2.x", phones=2, call_state=False),
    Variant("sip-3.x requestor", "sip-3.x"),       # the lab's site files: apps.statePolling.responseMode=0
    Variant("sip-3.x push", "sip-3.x", params=PUSH, in_call="pushed state"),
    Variant("uc-4.0", "uc-4.0"),
]
UC5_VARIANTS = [   # REST from 5.4 (v1 callStatus, UpTime as text); UpTime and Firmware objects from 5.7; v2 from 5.8
    Variant("uc-5.4", "uc-5.x", model="VVX 410", version="5.4.0", in_call="REST callStatus v1"),
    Variant("uc-5.7", "uc-5.x", model="VVX 410", version="5.7.0", in_call="REST callStatus v1"),
    Variant("uc-5.8+", "uc-5.x", model="VVX 410", version="5.8.0", in_call="REST callStatus v2"),
]
VARIANTS += UC5_VARIANTS


def indices() -> dict[str, range]:
    """Each variant's phone indices on the site, in table order."""
    out, first = {}, 0
    for v in VARIANTS:
        out[v.name] = range(first, first + v.phones)
        first += v.phones
    return out


def lab_spec() -> dict:
    """One site; `models` has one entry per phone (phone i runs models[i]), so each variant picks its model."""
    at = indices()
    phones = {"count": sum(v.phones for v in VARIANTS), "models": [v.model for v in VARIANTS for _ in at[v.name]],
              "family_of": {i: v.family for v in VARIANTS for i in at[v.name]},
              "params_of": {i: dict(v.params) for v in VARIANTS for i in at[v.name] if v.params}}
    versions = {i: v.version for v in VARIANTS for i in at[v.name] if v.version}
    if versions:
        phones["version_of"] = versions
    # a model's default family must be one it runs (the lab's, sip-3.x, is not a VVX's)
    vvx = {v.model: v.family for v in VARIANTS if v.family == "uc-5.x"}
    if vvx:
        phones["families"] = vvx
    servers = [{"address": "provider", "expires": 300, "overlap": 60, **FAST_TX},
               {"address": "gateway", "expires": 300, "overlap": 60, **FAST_TX}]     # reRegisterOn=1 on UC 5
    return {"name": "variants", "firmware_family": "sip-3.x", "provider": {"max_expires": 10},
            # real ranges, as tests/test_family_experiments: baseTimeOut 10, maxTimeOut 60, a fixed retry of 30 s
            "timing": {"boot_time": 0.5, "retry_interval": 10, "retry_max": 60, "fixed_retry": 30,
                       "log_upload_period": 5, "dns_ttl": 1},
            "sites": [{"name": SITE, "servers": servers, "phones": phones,
                       "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": EVENTS}}]}


def rollout_playbook(tmp: Path, name: str, macs: list[str], unchecked: bool = False) -> Path:
    """One wave over the variant's phones (inside every family's range: expires 300 or more)."""
    doc = {"kind": "rollout", "name": name, "params": {"reg.1.server.1.expires": 360}, "targets": {"macs": macs},
           "strategy": {"canary": 0, "wave_size": len(macs), "max_unavailable": len(macs),
                        "failure_budget": {"total": 0}, "progress_deadline": DEADLINE_S,
                        "reboot_without_call_check": unchecked},
           "verify": {"registered_to": [1, 2], "within": 20}, "rollback": True}
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def experiment_playbook(tmp: Path) -> Path:
    """The shipped WAN-outage playbook for this site; SoundPoint IP phones cannot be made to dial (no REST API),
    so with no UC Software 5 variant the call step is left out."""
    doc = yaml.safe_load((ROOT / "playbooks/wan-outage-fallback.yml").read_text())
    doc["site"] = SITE
    if all(v.family != "uc-5.x" for v in VARIANTS):
        doc["steps"] = [s for s in doc["steps"] if "call" not in s]
    path = tmp / "wan-outage.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def reboots_since(lab, t0: float) -> dict[str, list[float]]:
    """When each phone rebooted since t0, from the lab's ground truth."""
    return {mac: [e["t"] for e in p["events"] if e["kind"] == "reboot" and e["t"] >= t0]
            for mac, p in lab.status()["ground_truth"]["phones"].items()}


def rollout(args: list[str], redis_url: str) -> tuple[dict, dict]:
    """Run (or resume) a rollout to its end: its outcome (with the exit code), and its status with each phone's
    record."""
    res = run_fleet(["rollout", *args, "--json"], redis_url, timeout=180)
    assert res.stdout.strip(), res.stderr[-3000:]
    out = json.loads(res.stdout)
    status = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
    return out | {"returncode": res.returncode}, status


def _phone(lab, mac: str) -> dict:
    return next(p for p in lab.status()["phones"] if p["mac"] == mac)


def run_rollouts(lab, macs: dict[str, list[str]], redis_url: str, tmp: Path) -> dict:
    """The rollouts of every variant at once (a site takes one rollout at a time: fleet leases it), each phone's
    outcome then read per variant:

    1. with call checks, the first phone of each variant that can tell holding a call: those and the SIP 2.x
       phones are deferred (each record says why), the wave misses its deadline and the rollout halts;
    2. the calls hung up, SIP 2.x's phones again with `reboot_without_call_check`;
    3. the first rollout resumed: the phones that were in a call are rebooted (SIP 2.x's now have the same
       configuration, so it skips them) and it is done.
    """
    inv, every = str(lab.inventory), [m for v in VARIANTS for m in macs[v.name]]
    callers = [macs[v.name][0] for v in VARIANTS if v.call_state]
    blind = [m for v in VARIANTS if not v.call_state for m in macs[v.name]]
    for mac in callers:
        assert lab.post("/call", {"mac": mac, "number": "2000", "hold": 300}).get("ok"), mac
    wait_until(lambda: all(_phone(lab, m)["in_call"] for m in callers), 10, f"phones {callers} in a call")
    t0 = time.time()
    checked = rollout(["run", str(rollout_playbook(tmp, "variants-checked", every)), "--inventory", inv], redis_url)
    reboots_checked = reboots_since(lab, t0)
    for mac in callers:
        lab.post("/hang-up", {"mac": mac})
    wait_until(lambda: not any(_phone(lab, m)["in_call"] for m in callers), 10, f"phones {callers} hung up")
    hung_up = time.time()
    unchecked = rollout(["run", str(rollout_playbook(tmp, "sip2-unchecked", blind, unchecked=True)),
                         "--inventory", inv], redis_url)
    resumed = rollout(["resume", checked[0]["id"]], redis_url)
    return {"checked": checked, "reboots_checked": reboots_checked, "hung_up": hung_up, "unchecked": unchecked,
            "resumed": resumed, "reboots": reboots_since(lab, t0)}


@pytest.fixture(scope="module")
def variants(lab_factory, worker_factory, redis_url, tmp_path_factory):
    lab = lab_factory(lab_spec())
    worker_factory(lab.inventory, SITE)
    # the collector must hear each phone register with the gateway; SIP 3.x refreshes it only every 4 minutes, so
    # the phones are rebooted once the worker listens (as in tests/test_family_experiments)
    phones = inventory.load(lab.inventory).sites[0].phones
    for phone in phones:
        assert check_sync_blocking(phone, user=phone.params["reg.1.address"]) == 200
    wait_until(lambda: both_registered(lab, SITE, redis_url), 30, "every phone seen registered with servers 1 and 2")
    macs = {v.name: [phones[i].mac for i in indices()[v.name]] for v in VARIANTS}
    tmp = tmp_path_factory.mktemp("variant-runs")
    runs = run_rollouts(lab, macs, redis_url, tmp)
    wait_until(lambda: both_registered(lab, SITE, redis_url), 30, "every phone registered with both servers again")
    res = run_fleet(["experiment", "run", str(experiment_playbook(tmp)), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp / "experiment"), "--json"], redis_url)
    experiment = (res, json.loads(res.stdout) if res.stdout.strip() else None)
    return lab, macs, runs, experiment


def test_the_lab_runs_every_variant_inside_its_real_ranges():
    spec = labfile.LabFile.model_validate(lab_spec())
    assert not spec.timing.test_speed
    for v in VARIANTS:
        assert {spec.phone_family(0, i) for i in indices()[v.name]} == {v.family}, v.name
    # the lab's site files choose requestor mode; the push variant's own file overrides it
    assert [polling.response_mode({"apps.statePolling.responseMode": "0"} | v.params) for v in VARIANTS
            if v.family in ("sip-3.x", "uc-4.0")] == ["requestor", "push", "requestor"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.call_state], ids=lambda v: v.name)
def test_phone_in_a_call_is_deferred_the_rest_reboot_once_and_verify(variants, variant):
    _, macs, runs, _ = variants
    caller, rest = macs[variant.name][0], macs[variant.name][1:]
    checked, status = runs["checked"]
    # the call outlasts the wave's deadline: the rollout halts, the phone's record says it is in a call
    assert checked["returncode"] == 1 and checked["status"] == "halted", checked
    assert "missed its progress deadline" in checked["reason"] and "deferred" in checked["reason"], checked["reason"]
    record = status["phones"][caller]
    assert record["state"] == "deferred", record
    assert record["deferred_reason"].startswith("in-call"), record
    if variant.in_call:
        assert record["deferred_reason"].startswith(f"in-call: {variant.in_call}"), record
    assert {m: status["phones"][m]["state"] for m in rest} == {m: "verified" for m in rest}, status["phones"]
    assert runs["reboots_checked"][caller] == [], "a phone in a call was rebooted"
    assert {m: len(runs["reboots_checked"][m]) for m in rest} == {m: 1 for m in rest}
    # hung up: resuming reboots that phone once, after the call, and touches the others no more
    resumed, final = runs["resumed"]
    assert resumed["returncode"] == 0 and resumed["status"] == "done", resumed
    assert {m: final["phones"][m]["state"] for m in macs[variant.name]} == {m: "verified" for m in macs[variant.name]}
    assert {m: len(runs["reboots"][m]) for m in macs[variant.name]} == {m: 1 for m in macs[variant.name]}
    assert runs["reboots"][caller][0] >= runs["hung_up"]


def test_sip2_call_check_cannot_tell_so_only_an_unchecked_rollout_reboots(variants):
    _, macs, runs, _ = variants
    phones = macs["sip-2.x"]
    checked, status = runs["checked"]
    unknown = "unknown: SIP 2.x has no state polling: the phone cannot say whether it is in a call"
    assert checked["returncode"] == 1 and checked["status"] == "halted", checked
    assert {m: (status["phones"][m]["state"], status["phones"][m]["deferred_reason"]) for m in phones} == {
        m: ("deferred", unknown) for m in phones}
    assert all(runs["reboots_checked"][m] == [] for m in phones), runs["reboots_checked"]
    unchecked, final = runs["unchecked"]
    assert unchecked["status"] == "done" and unchecked["counts"] == {"total": len(phones), "verified": len(phones)}, unchecked
    assert {m: final["phones"][m]["state"] for m in phones} == {m: "verified" for m in phones}
    assert {m: len(runs["reboots"][m]) for m in phones} == {m: 1 for m in phones}
    # the checked rollout, resumed, finds them already on its configuration
    assert {m: runs["resumed"][1]["phones"][m]["state"] for m in phones} == {m: "skipped" for m in phones}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_wan_outage_passes_for_every_variant(variants, variant):
    lab, macs, _, (res, doc) = variants
    assert res.returncode == 0 and doc, res.stderr[-3000:] + res.stdout[-3000:]
    assert doc["passed"] is True and all(s["passed"] for s in doc["steps"]), doc["steps"]
    phones = {p["mac"]: p for p in doc["phones"]}
    for mac in macs[variant.name]:
        p = phones[mac]
        assert 0 < p["failover_s"] <= p["predicted_failover_max_s"], p
        assert 0 <= p["recovery_s"] <= p["predicted_recovery_max_s"], p     # 0: back before the router's answer
    inv = inventory.load(lab.inventory)
    assert {p.family.name for p in inv.sites[0].phones if p.mac in macs[variant.name]} == {variant.family}
