"""Rollouts that stack, on a virtual lab with real Redis and a `fleet worker`: `--limit` runs only the phones it
names, a second playbook keeps (and its dry run reports) what the first set, and `fleet rollout revert` puts the
boot server's files and the phones' applied values back, or refuses. (`--limit SITE` on two sites:
tests/test_rollout.py, whose lab has two.)"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import free_port, run_fleet, start_lab
from fleet.state.store import RolloutStore, Store

pytestmark = pytest.mark.slow
SRV = {"expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}
EXPIRES = "reg.1.server.1.expires"


def spec() -> dict:
    return {"name": "stack", "firmware_family": "uc-5.x",
            "timing": {"boot_time": 0.3, "boot_jitter": 1, "retry_interval": 3, "log_upload_period": 0, "dns_ttl": 1,
                       "test_speed": True},
            "sites": [{"name": "hq", "phones": {"count": 4, "models": ["SoundPoint IP 650", "VVX 410"]},
                       "servers": [{"address": "provider", **SRV}, {"address": "gateway", **SRV}],
                       "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"}}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, worker_factory):
    running = start_lab(tmp_path_factory.mktemp("stack"), spec())
    try:
        running.worker = worker_factory(running.inventory, "hq")
        inv = yaml.safe_load(running.inventory.read_text())
        running.models = {p["mac"]: p["model"] for p in inv["sites"][0]["phones"]}
        vvx = sorted(m for m, model in running.models.items() if model == "VVX 410")
        spa = sorted(m for m in running.models if m not in vvx)
        assert len(vvx) == 2 and len(spa) == 2, running.models
        running.named, running.left = spa          # one SoundPoint named by MAC, one no limit names
        running.chosen = sorted([running.named, *vvx])
        running.ids = {}
        yield running
    finally:
        running.down()


def playbook(tmp: Path, name: str, params: dict, **extra) -> Path:
    doc = {"kind": "rollout", "name": name, "params": params,
           "strategy": {"canary": 1, "wave_size": 3, "max_unavailable": 2, "failure_budget": {"total": 0},
                        "progress_deadline": 120},
           "verify": {"registered_to": [1, 2], "within": 25}, **extra}
    path = tmp / f"{name}-{time.time_ns()}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def files(lab) -> dict[str, bytes]:
    """The site's boot-server files, the rollouts' backups and the phones' uploads left out."""
    return {f.name: f.read_bytes() for f in sorted((lab.state / "boot-hq").iterdir())
            if f.is_file() and ".before-" not in f.name and not f.name.endswith(".log")}


def reboots(lab, since: float) -> dict[str, int]:
    truth = lab.status()["ground_truth"]["phones"]
    return {mac: sum(1 for e in p["events"] if e["kind"] == "reboot" and e["t"] >= since) for mac, p in truth.items()}


def applied(lab, mac: str) -> dict[str, str]:
    """What the phone's last boot applied (the lab's ground truth)."""
    return lab.status()["ground_truth"]["phones"][mac]["current"]["applied"]


def fleet(lab, redis_url: str, *args: str) -> tuple[int, dict | None, str]:
    res = run_fleet([*args, "--json"] if "--json" not in args else list(args), redis_url, timeout=240)
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError:
        out = None
    return res.returncode, out, res.stderr


def test_a_limit_naming_nothing_is_bad_input_with_a_suggestion(lab, redis_url, tmp_path):
    res = run_fleet(["rollout", "run", str(playbook(tmp_path, "first", {EXPIRES: 12})), "--inventory",
                     str(lab.inventory), "--limit", "VVX 41O", "--dry-run"], redis_url)
    assert res.returncode == 2 and "--limit 'VVX 41O': no phone, site or model" in res.stderr
    assert "did you mean VVX 410?" in res.stderr and "Traceback" not in res.stderr


def test_limit_by_mac_and_model_runs_only_those_phones(lab, redis_url, tmp_path):
    lab.before_first = files(lab)
    colons = ":".join(lab.named[i:i + 2] for i in range(0, 12, 2)).upper()
    limit = ["--limit", colons, "--limit", "VVX 410"]
    pb = playbook(tmp_path, "first", {EXPIRES: 12}, keep_backups=True)
    code, dry, err = fleet(lab, redis_url, "rollout", "run", str(pb), "--inventory", str(lab.inventory), *limit,
                           "--dry-run")
    assert code == 0, err
    assert sorted(p["mac"] for p in dry["phones"]) == lab.chosen
    assert all(p["diff"][EXPIRES] == ["10", "12"] for p in dry["phones"]), "old values from the site's files"
    t0 = time.time()
    code, out, err = fleet(lab, redis_url, "rollout", "run", str(pb), "--inventory", str(lab.inventory), *limit)
    assert code == 0 and out["counts"] == {"total": 3, "verified": 3}, err[-3000:]
    lab.ids["first"] = out["id"]
    assert RolloutStore(Store(redis_url)).get(out["id"])["limit"] == f"{colons},VVX 410", "kept for a resume"
    count = reboots(lab, t0)
    assert {m: count[m] for m in lab.models} == {m: int(m in lab.chosen) for m in lab.models}
    assert [m for m in lab.models if applied(lab, m)[EXPIRES] == "12"] == sorted(lab.chosen, key=list(lab.models).index)
    lab.after_first = files(lab)


def test_a_second_playbook_keeps_the_first_ones_value_and_its_dry_run_says_what_it_would_undo(lab, redis_url, tmp_path):
    first = lab.ids["first"]
    limit = ["--limit", ",".join(lab.chosen)]
    second = playbook(tmp_path, "second", {"reg.1.label": "stacked"}, keep_backups=True)
    code, dry, err = fleet(lab, redis_url, "rollout", "run", str(second), "--inventory", str(lab.inventory), *limit,
                           "--dry-run")
    assert code == 0, err
    for p in dry["phones"]:
        assert EXPIRES not in p["diff"] and p["params"][EXPIRES] == "12" and p["set_by"][EXPIRES][0] == first
        assert p["diff"]["reg.1.label"][1] == "stacked" and p["undoes"] == []
    reset = playbook(tmp_path, "reset", {"reg.1.label": "stacked"}, reset=[EXPIRES])
    res = run_fleet(["rollout", "run", str(reset), "--inventory", str(lab.inventory), *limit, "--dry-run"], redis_url)
    text = " ".join(res.stdout.split())
    assert res.returncode == 0, res.stderr
    assert f"{EXPIRES}: 12 (set by rollout {first} on " in text
    assert "-> 10 (this playbook resets it to the inventory's value)" in text and "changes values earlier rollouts set" in text
    # the real run keeps it too: the phones apply the first playbook's value and the second's
    code, out, err = fleet(lab, redis_url, "rollout", "run", str(second), "--inventory", str(lab.inventory), *limit)
    assert code == 0 and out["counts"] == {"total": 3, "verified": 3}, err[-3000:]
    lab.ids["second"] = out["id"]
    assert all(applied(lab, m)[EXPIRES] == "12" and applied(lab, m)["reg.1.label"] == "stacked" for m in lab.chosen)


def test_revert_restores_the_files_and_applied_values_and_refuses_what_it_cannot(lab, redis_url, tmp_path):
    first, second = lab.ids["first"], lab.ids["second"]
    code, _, err = fleet(lab, redis_url, "rollout", "revert", first)
    assert code == 2 and f"a later rollout changed phones of rollout {first}" in err and second in err
    t0 = time.time()
    code, out, err = fleet(lab, redis_url, "rollout", "revert", second)
    assert code == 0 and out["status"] == "done" and out["counts"] == {"total": 3, "verified": 3}, err[-3000:]
    assert files(lab) == lab.after_first
    assert all(applied(lab, m)[EXPIRES] == "12" and applied(lab, m).get("reg.1.label") != "stacked"
               for m in lab.chosen)
    assert {m: n for m, n in reboots(lab, t0).items() if m in lab.models} == {m: int(m in lab.chosen) for m in lab.models}
    code, out, err = fleet(lab, redis_url, "rollout", "revert", first)
    assert code == 0 and out["status"] == "done" and out["counts"] == {"total": 3, "verified": 3}, err[-3000:]
    assert files(lab) == lab.before_first, "every file byte for byte as before the first rollout"
    assert all(applied(lab, m)[EXPIRES] == "10" for m in lab.chosen)
    # what they run is fleet's nothing: an empty pushed configuration (readers fall back to the inventory's)
    assert not any(RolloutStore(Store(redis_url)).last_pushed(lab.chosen).values())
    # a rollout that did not keep its backups cannot be reverted
    pb = playbook(tmp_path, "nokeep", {EXPIRES: 13})
    code, out, err = fleet(lab, redis_url, "rollout", "run", str(pb), "--inventory", str(lab.inventory),
                           "--limit", lab.left)
    assert code == 0 and out["counts"] == {"total": 1, "verified": 1}, err[-3000:]
    code, _, err = fleet(lab, redis_url, "rollout", "revert", out["id"])
    assert code == 2 and f"rollout {out['id']} did not keep its backups" in err


def test_revert_is_refused_when_the_backups_are_gone(lab, redis_url, tmp_path):
    pb = playbook(tmp_path, "gone", {EXPIRES: 15}, keep_backups=True)
    code, out, err = fleet(lab, redis_url, "rollout", "run", str(pb), "--inventory", str(lab.inventory),
                           "--limit", lab.left)
    assert code == 0 and out["counts"] == {"total": 1, "verified": 1}, err[-3000:]
    backups = sorted((lab.state / "boot-hq").glob(f"*.before-{out['id']}"))
    assert backups
    for f in backups:
        f.unlink()
    before = files(lab)
    code, _, err = fleet(lab, redis_url, "rollout", "revert", out["id"])
    assert code == 2 and "backups are gone" in err and backups[0].name in err
    assert files(lab) == before, "nothing touched"
