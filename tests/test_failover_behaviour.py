"""Both readings of UC Software's failOver.reRegisterOn=1, and reRegisterOn=0, through the WAN-outage experiment.

One lab (net 118, one site, three VVX phones on UC Software 5.x, real Redis and a real `fleet worker`):
phone 0 registers with the gateway from boot ("concurrent", TB 5844's reading, the lab's default), phone 1 only
once the provider has failed ("on-failure", lab file `failover_behaviour_of`), phone 2 has reRegisterOn=0 (the
UC Software default: it never registers with the gateway). The first two pass the experiment and the report says
which behaviour each showed; the third fails it, saying why.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, lab_spec, run_fleet

pytestmark = pytest.mark.slow

CONCURRENT, ON_FAILURE, NO_REREGISTER = 0, 1, 2


def _spec() -> dict:
    spec = lab_spec("failover-behaviour", phones=3, models=["VVX 410"], site="fo")
    # the provider located as RFC 3263 says (its servers are named, port 0, transport DNSnaptr by default)
    spec["provider"] = {"naptr_srv": True}
    spec["sites"][0]["servers"][0]["port"] = 0
    phones = spec["sites"][0]["phones"]
    phones["failover_behaviour_of"] = {ON_FAILURE: "on-failure"}
    phones["params_of"] = {NO_REREGISTER: {"reg.1.server.2.failOver.reRegisterOn": 0}}
    return spec


def _playbook(path: Path) -> Path:
    """The shipped WAN-outage playbook without its call step."""
    doc = yaml.safe_load((ROOT / "playbooks/wan-outage-fallback.yml").read_text())
    doc["site"] = "fo"
    doc["steps"] = [s for s in doc["steps"] if "call" not in s]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(lab_factory, worker_factory, redis_url, tmp_path_factory):
    lab = lab_factory(_spec())
    worker_factory(lab.inventory, "fo")
    inv = yaml.safe_load(lab.inventory.read_text())
    macs = [p["mac"] for p in inv["sites"][0]["phones"]]
    tmp = tmp_path_factory.mktemp("failover-behaviour-run")
    res = run_fleet(["experiment", "run", str(_playbook(tmp / "wan.yml")), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp), "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout) if res.stdout.strip() else None
    return lab, macs, res, doc, tmp


def _gateway_up(truth: dict, mac: str) -> list[float]:
    """When the lab phone's own registration with server 2 came up (its ground truth)."""
    return [e["t"] for e in truth["ground_truth"]["phones"][mac]["events"]
            if e["kind"] == "server_state" and e["data"]["server"] == 2 and e["data"]["state"] == "registered"]


def test_an_on_failure_vvx_passes_and_the_report_says_which_behaviour_each_phone_showed(run):
    lab, macs, res, doc, tmp = run
    assert doc is not None, res.stderr + res.stdout[-3000:]
    by_mac = {p["mac"]: p for p in doc["phones"]}
    for i in (CONCURRENT, ON_FAILURE):
        p = by_mac[macs[i]]
        assert p["passed"], (i, p["reasons"], doc["steps"])
        assert 0 < p["failover_s"] <= p["predicted_failover_max_s"], (i, p)
    assert by_mac[macs[CONCURRENT]]["failover_behaviour"] == "concurrent", by_mac[macs[CONCURRENT]]
    assert by_mac[macs[ON_FAILURE]]["failover_behaviour"] == "on-failure", by_mac[macs[ON_FAILURE]]
    # the lab agrees: the on-failure phone first registered with the gateway after the cut, the other before it
    truth = lab.status()
    cut = doc["outages"][0]["start"]
    assert _gateway_up(truth, macs[ON_FAILURE]) and min(_gateway_up(truth, macs[ON_FAILURE])) >= cut
    assert _gateway_up(truth, macs[CONCURRENT]) and min(_gateway_up(truth, macs[CONCURRENT])) < cut
    page = next(tmp.glob("**/*.html")).read_text()
    assert "on failure (registered with server 2 only after the cut)" in page
    assert "concurrent (registered with server 2 before the cut)" in page


def test_a_uc5_phone_with_reregister_off_fails_the_experiment_saying_why(run):
    lab, macs, res, doc, _ = run
    assert res.returncode != 0 and doc["passed"] is False
    p = next(p for p in doc["phones"] if p["mac"] == macs[NO_REREGISTER])
    assert not p["passed"] and p["failover_behaviour"] == "none", p
    failover = next(r for r in p["reasons"] if r.startswith("phones fall back to the gateway:"))
    assert "failOver.reRegisterOn=1" in failover and "server 2 will not see a REGISTER" in failover, p["reasons"]
    # the lab phone never sent the gateway a REGISTER
    assert _gateway_up(lab.status(), macs[NO_REREGISTER]) == []


def test_the_phones_located_the_provider_by_naptr_and_srv(run):
    lab, *_ = run
    asked = {(q["qtype"], q["name"]) for q in lab.status()["dns"]["asked"]}
    name = "voip.provider.example"
    assert {("NAPTR", name), ("SRV", f"_sip._udp.{name}"), ("A", f"sip1.{name}")} <= asked, asked


def test_a_rollout_verifies_the_on_failure_phone_on_server_1_alone_and_says_so(run, redis_url, tmp_path):
    """verify: registered_to [1, 2]: the concurrent phone shows both; the on-failure phone (reRegisterOn=1 on
    UC Software) registers with server 1 only while it works, which passes, noted as such."""
    lab, macs, *_ = run
    pb = tmp_path / "rollout.yml"
    pb.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "expiry-fo", "params": {"reg.1.server.1.expires": 12},
        "targets": {"macs": [macs[CONCURRENT], macs[ON_FAILURE]]},
        "strategy": {"canary": 0, "wave_size": 2, "max_unavailable": 2, "failure_budget": {"total": 0},
                     "progress_deadline": 120},
        "verify": {"registered_to": [1, 2], "within": 25}, "rollback": True}))
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"], redis_url, timeout=240)
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"].get("verified") == 2, out
    from fleet.state.store import RolloutStore, Store
    rows = RolloutStore(Store(redis_url)).phones(out["id"], [macs[CONCURRENT], macs[ON_FAILURE]], full=True)
    assert "reRegisterOn=1" in rows[macs[ON_FAILURE]].get("verified_note", ""), rows[macs[ON_FAILURE]]
    assert not rows[macs[CONCURRENT]].get("verified_note"), rows[macs[CONCURRENT]]
