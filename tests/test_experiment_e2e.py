"""End to end: real Redis, a real `fleet worker` process, the virtual lab over loopback, the shipped playbooks."""
from __future__ import annotations

import json
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, lab_spec, run_fleet

pytestmark = pytest.mark.slow
SAMPLE = 0.25


@pytest.fixture(scope="module")
def lab(lab_factory, worker_factory):
    lab = lab_factory(lab_spec("e2e", 21, phones=6, poll_interval=2.0))
    worker_factory(lab.inventory)
    return lab


def _truth_change_time(lab_status: dict, mac: str, server: int, after: float) -> float | None:
    for e in lab_status["ground_truth"]["phones"][mac]["events"]:
        if e["kind"] == "working_server" and e["data"]["server"] == server and e["t"] >= after:
            return e["t"]
    return None


def _run(playbook: Path, lab, redis_url: str, tmp_path: Path):
    res = run_fleet(["experiment", "run", str(playbook), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp_path), "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def test_wan_outage_playbook_passes_within_predicted_bounds(lab, redis_url, tmp_path):
    res, doc = _run(ROOT / "playbooks/wan-outage-fallback.yml", lab, redis_url, tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    assert doc["passed"] is True
    assert [s["passed"] for s in doc["steps"]] == [True] * 6
    assert len(doc["phones"]) == 6
    for p in doc["phones"]:
        assert 0 < p["failover_s"] <= p["predicted_failover_max_s"], p
        assert 0 < p["recovery_s"] <= p["predicted_recovery_max_s"], p
        assert {e["working_server"] for e in p["timeline"]} >= {1, 2}
    assert doc["summary"]["failover_s"]["count"] == 6
    failovers = sorted(p["failover_s"] for p in doc["phones"])
    assert doc["summary"]["failover_s"]["max"] == failovers[-1]
    assert doc["summary"]["failover_s"]["p50"] == pytest.approx(statistics.median(failovers), abs=0.01), failovers
    # REST polling is a source of its own: the VVX phones' timelines hold polled observations, the SoundPoints' none
    by_model = {}
    for p in doc["phones"]:
        by_model.setdefault(p["model"], set()).update(e["source"] for e in p["timeline"])
    assert "poll-rest" in by_model["VVX 410"], by_model
    assert "poll-rest" not in by_model["SoundPoint IP 650"], by_model
    # the call step went to the gateway (server 2)
    call = next(s for s in doc["steps"] if s["name"].startswith("a call"))
    assert "server 2" in call["message"]

    # the measured times agree with the lab's ground truth within the sampling interval
    truth = lab.status()
    outage = doc["outages"][0]
    for p in doc["phones"]:
        t_true_fail = _truth_change_time(truth, p["mac"], 2, outage["start"])
        t_true_back = _truth_change_time(truth, p["mac"], 1, outage["end"])
        assert t_true_fail is not None and t_true_back is not None
        assert abs((outage["start"] + p["failover_s"]) - t_true_fail) <= SAMPLE, p["mac"]
        assert abs((outage["end"] + p["recovery_s"]) - t_true_back) <= SAMPLE, p["mac"]

    # the gateway really received the INVITE, and the router really went down and up
    site = truth["sites"][0]
    assert any(r["method"] == "INVITE" and r["authenticated"] for r in site["gateway"]["requests"])
    changes = [h["change"] for h in site["router"]["history"]]
    assert "link down" in changes and "link up" in changes
    assert site["router"]["wan_state"]["admin_up"] is True

    # reports for people and machines
    report_dir = next(tmp_path.iterdir())
    suite = ET.parse(report_dir / "junit.xml").getroot()
    assert int(suite.get("tests")) == 6 + 6 * 3 and suite.get("failures") == "0"
    page = (report_dir / "report.html").read_text()
    assert page.count('class="lane"') >= 12 and 'class="outage"' in page

    # history survives the run: list and show read it back from Redis
    listed = json.loads(run_fleet(["experiment", "list", "--json"], redis_url).stdout)
    assert doc["id"] in [e["id"] for e in listed]
    shown = json.loads(run_fleet(["experiment", "show", doc["id"], "--json"], redis_url).stdout)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[0] == "start" and "outage" in kinds and "restore" in kinds and kinds[-1] == "finish"
    assert all("mono" in e for e in shown["events"])
    # the worker traced its device steps into the same log (fleet.base.steps): the cut, the restore, the test call
    ends = {e["step"]: e for e in shown["events"] if e["kind"] == "device_step" and e["phase"] == "end"}
    assert set(ends) == {"cut", "restore", "test call"}, ends
    assert all(e["outcome"] == "ok" and e["duration_s"] >= 0 for e in ends.values()), ends
    assert ends["cut"]["site_name"] == doc["site"] and len(ends["test call"]["mac"]) == 12, ends


@pytest.mark.parametrize("playbook", ["dns-failure-fallback.yml", "wan-drop-fallback.yml"])
def test_other_outage_modes_pass(lab, redis_url, tmp_path, playbook):
    res, doc = _run(ROOT / "playbooks" / playbook, lab, redis_url, tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout[-3000:]
    assert all(p["failover_s"] is not None and p["recovery_s"] is not None for p in doc["phones"])
    cut = next(s for s in doc["steps"] if s["name"] == "cut the WAN")
    assert "does not resolve" in cut["message"] or "no answer" in cut["message"]


def test_status_json_shows_every_phone_on_the_provider(lab, redis_url):
    res = run_fleet(["status", "--site", "hq", "--json"], redis_url)
    mine = {p["mac"] for p in yaml.safe_load(lab.inventory.read_text())["sites"][0]["phones"]}
    # only this lab's phones: another module's lab may have registered a site "hq" of its own in the session's Redis
    rows = [r for r in json.loads(res.stdout) if r["mac"] in mine]
    assert len(rows) == 6 == len(mine)
    for row in rows:
        assert row["working_server"] == 1
        assert [s["index"] for s in row["servers"]] == [1, 2]
        assert row["servers"][0]["address"] == "voip.provider.example"
        assert row["servers"][0]["state"] == "registered"
        assert time.time() - row["observed_at"] < 30
    # the SoundPoints have no REST API: none of their evidence can come from REST polling
    sources = {row["model"]: {s["source"] for s in row["servers"]} for row in rows}
    assert "poll-rest" not in sources["SoundPoint IP 650"], sources


def test_invalid_playbook_is_rejected_before_anything_is_touched(lab, redis_url, tmp_path):
    before = len(lab.status()["sites"][0]["router"]["commands"])
    bad = tmp_path / "bad.yml"
    bad.write_text("kind: experiment\nname: x\nsite: hq\nsteps:\n  - {name: cut, outage: link-down, max_duration: 60}\n"
                   "  - {name: wait, expect: working_server, server: 2, within: -1}\n  - {name: back, restore: true}\n")
    res = run_fleet(["experiment", "run", str(bad), "--inventory", str(lab.inventory)], redis_url)
    assert res.returncode == 2
    assert f"{bad}:6" in res.stderr and "within" in res.stderr
    unknown_mode = tmp_path / "mode.yml"
    unknown_mode.write_text("kind: experiment\nname: x\nsite: hq\nsteps:\n  - {name: cut, outage: unplug, max_duration: 60}\n")
    res = run_fleet(["experiment", "run", str(unknown_mode), "--inventory", str(lab.inventory)], redis_url)
    assert res.returncode == 2 and "mode.yml:5" in res.stderr
    assert len(lab.status()["sites"][0]["router"]["commands"]) == before


def test_router_that_does_not_answer_gives_a_typed_error_not_a_traceback(lab, redis_url, tmp_path, worker_factory):
    inv = yaml.safe_load(lab.inventory.read_text())
    inv["sites"][0]["name"] = "deadrouter"
    inv["sites"][0]["router"]["port"] = 1  # nothing listens there
    inv["sites"][0]["router"]["timeout"] = 2
    broken = tmp_path / "inventory.yml"
    broken.write_text(yaml.safe_dump(inv))
    worker = worker_factory(broken, "deadrouter", collect=False)
    pb = tmp_path / "pb.yml"
    pb.write_text("kind: experiment\nname: dead\nsite: deadrouter\nsteps:\n"
                  "  - {name: cut, outage: link-down, max_duration: 30}\n  - {name: back, restore: true}\n")
    res = run_fleet(["experiment", "run", str(pb), "--inventory", str(broken), "--report-dir", str(tmp_path), "--json"],
                    redis_url)
    worker.stop()
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert "router 127.21.0.1:1" in doc["steps"][0]["message"] and "cannot connect" in doc["steps"][0]["message"]
    assert "Traceback" not in res.stderr and "Traceback" not in worker.log.read_text()


def test_playbook_expecting_a_fallback_the_phones_lack_is_refused_before_the_cut(lab_factory, worker_factory, redis_url,
                                                                                   tmp_path):
    """Phones with one server cannot fall back: the playbook is refused with its line, and the router never touched.
    (The verdict for a phone without fallback that reaches a run anyway is unit-tested in test_verdict.py.)"""
    spec = lab_spec("nofb", 22, phones=2, site="solo", servers=[
        {"address": "provider", "expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}])
    solo = lab_factory(spec)
    worker_factory(solo.inventory, "solo")
    pb = tmp_path / "pb.yml"
    pb.write_text((ROOT / "playbooks/wan-outage-fallback.yml").read_text().replace("site: hq", "site: solo"))
    before = len(solo.status()["sites"][0]["router"]["commands"])
    res = run_fleet(["experiment", "run", str(pb), "--inventory", str(solo.inventory), "--report-dir", str(tmp_path)],
                    redis_url)
    assert res.returncode == 2, res.stderr
    assert f"{pb}:" in res.stderr and ".server: server 2 does not exist" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert len(solo.status()["sites"][0]["router"]["commands"]) == before
    assert solo.status()["sites"][0]["router"]["wan_state"]["admin_up"] is True
