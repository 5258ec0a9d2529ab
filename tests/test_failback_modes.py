"""The lab's phones follow their failback mode, and fleet's predicted recovery bounds hold for each mode.

One lab (net 109, one site, five VVX phones on UC Software 5.x), each phone with its own
failOver.failBack.mode through the lab file's `phones.params_of`: newRequests (the default), DNSTTL,
registration, duration with a short timeout (test_speed: below the real 60 s minimum; the exported inventory
carries 60, so fleet's bound for it is looser than the lab's timer) and duration 0 (never fails back). The
WAN-outage experiment runs with real Redis and a real `fleet worker`; its report is compared with the lab's
ground truth (working_server events).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import agrees_with_truth, ROOT, lab_spec, run_fleet, wait_until

pytestmark = pytest.mark.slow

DNS_TTL = 12            # the lab DNS's TTL: the DNSTTL phone holds the primary this long
DURATION = 14           # the duration phone's failOver.failBack.timeout (lab only: test_speed)
S1 = "reg.1.server.1."
MODES = {
    0: {},                                                                   # newRequests, the default
    1: {S1 + "failOver.failBack.mode": "DNSTTL"},
    2: {S1 + "failOver.failBack.mode": "registration"},
    3: {S1 + "failOver.failBack.mode": "duration", S1 + "failOver.failBack.timeout": DURATION},
    4: {S1 + "failOver.failBack.mode": "duration", S1 + "failOver.failBack.timeout": 0},
}
NEVER = 4


def _spec() -> dict:
    spec = lab_spec("failback", phones=len(MODES), models=["VVX 410"], site="fb")
    spec["timing"]["dns_ttl"] = DNS_TTL
    spec["sites"][0]["phones"]["params_of"] = {i: p for i, p in MODES.items() if p}
    return spec


def _playbook(path: Path, macs: list[str]) -> Path:
    """The shipped WAN-outage playbook without its call step; the recovery step holds the phones that fail back,
    and a last step checks that the duration-0 phone is still on the gateway after they did."""
    doc = yaml.safe_load((ROOT / "playbooks/wan-outage-fallback.yml").read_text())
    doc["site"] = "fb"
    steps = [s for s in doc["steps"] if "call" not in s]
    back = next(s for s in steps if s.get("measure") == "recovery")
    back["phones"] = {"macs": [m for i, m in enumerate(macs) if i != NEVER]}
    back["within"] = DURATION + 10
    steps.append({"name": "the duration-0 phone stays on the gateway", "expect": "working_server", "server": 2,
                  "within": 2, "phones": {"macs": [macs[NEVER]]}})
    doc["steps"] = steps
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _events(truth: dict, mac: str) -> list[dict]:
    return [e for e in truth["ground_truth"]["phones"][mac]["events"] if e["kind"] == "working_server"]


def _first(events: list[dict], server: int, after: float) -> float | None:
    return next((e["t"] for e in events if e["data"]["server"] == server and e["t"] >= after), None)


@pytest.fixture(scope="module")
def run(lab_factory, worker_factory, redis_url, tmp_path_factory):
    lab = lab_factory(_spec())
    worker_factory(lab.inventory, "fb")
    inv = yaml.safe_load(lab.inventory.read_text())
    macs = [p["mac"] for p in inv["sites"][0]["phones"]]
    tmp = tmp_path_factory.mktemp("failback-run")
    res = run_fleet(["experiment", "run", str(_playbook(tmp / "wan.yml", macs)), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp), "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout) if res.stdout.strip() else None
    return lab, inv, macs, res, doc


def test_lab_file_modes_reach_the_phones_and_the_inventory(run):
    lab, inv, macs, _, _ = run
    phones = inv["sites"][0]["phones"]
    assert [p["params"].get(S1 + "failOver.failBack.mode", "newRequests") for p in phones] == [
        "newRequests", "DNSTTL", "registration", "duration", "duration"]
    # the inventory describes real phones: the lab's 14 s is exported at the real minimum, 0 (never) as it is
    assert phones[3]["params"][S1 + "failOver.failBack.timeout"] == "60"
    assert phones[NEVER]["params"][S1 + "failOver.failBack.timeout"] == "0"


def test_each_phone_recovers_within_the_bound_its_mode_predicts(run):
    lab, _, macs, res, doc = run
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    assert doc["passed"] is True and all(s["passed"] for s in doc["steps"]), doc["steps"]
    by_mac = {p["mac"]: p for p in doc["phones"]}
    for i, mac in enumerate(macs):
        p = by_mac[mac]
        assert 0 < p["failover_s"] <= p["predicted_failover_max_s"], (i, p)
        if i == NEVER:
            continue
        assert p["predicted_recovery_max_s"] is not None, (i, p["prediction_notes"])
        assert 0 <= p["recovery_s"] <= p["predicted_recovery_max_s"], (i, p)     # 0: back before the router's answer
    # the DNSTTL bound follows the TTL fleet read from the site's DNS: above the newRequests phone's
    assert by_mac[macs[1]]["predicted_recovery_max_s"] == pytest.approx(
        by_mac[macs[0]]["predicted_recovery_max_s"] + DNS_TTL)


def test_the_report_says_the_duration_0_phone_never_fails_back(run):
    lab, _, macs, _, doc = run
    p = next(p for p in doc["phones"] if p["mac"] == macs[NEVER])
    assert p["recovery_s"] is None and p["predicted_recovery_max_s"] is None, p
    assert any(n.startswith("recovery:") and "never fails back" in n for n in p["prediction_notes"]), p
    # the lab agrees: after the WAN came back it stayed on the gateway, while every other phone went back
    truth = lab.status()
    end = doc["outages"][0]["end"]
    assert _first(_events(truth, macs[NEVER]), 1, end) is None, _events(truth, macs[NEVER])
    assert truth["ground_truth"]["phones"][macs[NEVER]]["current"]["working_server"]["1"] == 2


def test_held_phones_went_back_no_sooner_than_their_mode_allows(run):
    """The lab's ground truth: a phone holding the primary returns to it only once its mode allows (the DNSTTL
    phone the TTL after the gateway started working, the duration phone the timeout after); and the recovery the
    report measured is the one the lab recorded."""
    lab, _, macs, _, doc = run
    truth = lab.status()
    outage = doc["outages"][0]
    for i, hold in ((1, DNS_TTL), (3, DURATION)):
        events = _events(truth, macs[i])
        on_gateway = _first(events, 2, outage["start"])
        back = _first(events, 1, outage["start"])
        assert on_gateway is not None and back is not None, events
        assert back - on_gateway >= hold, (i, events)
    by_mac = {p["mac"]: p for p in doc["phones"]}
    for i, mac in enumerate(macs):
        if i == NEVER:
            continue
        back = _first(_events(truth, mac), 1, min(outage["end"], outage.get("asked_end") or outage["end"]))
        assert agrees_with_truth(by_mac[mac]["recovery_s"], outage["end"], outage.get("asked_end"), back), (i, mac, back)
