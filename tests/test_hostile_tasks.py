"""Hostile task messages straight to a real worker: refused before anything runs.

Anyone who can write to Redis can queue a task, so these tests play that
attacker: messages go through Celery (the test's own Redis, a real `fleet
worker` process, a virtual lab whose router runs commands in a real shell)
with shell syntax in every argument of every router and rollout task. Each
must end FAILED with TaskArgumentError naming the argument, and nothing may
have run: no marker file, no new command in the lab router's log, no file
on the boot server, no phone rebooted.

The second half rewrites a rollout's records in Redis (the other way in) and
shows the worker re-checks them: a bad plan fails that phone with the reason
and touches nothing; a good one (the control) is pushed.
"""
from __future__ import annotations

import glob
import json
import secrets
from pathlib import Path

import pytest
from celery import Celery

from conftest import lab_spec, wait_until
from fleet.config import inventory as inv_mod
from fleet.rollout.plan import config_hash
from fleet.state.store import RolloutStore, Store

pytestmark = pytest.mark.slow
SITE = "hq"
TOKEN = secrets.token_hex(4)


@pytest.fixture(scope="module")
def lab(lab_factory, worker_factory):
    lab = lab_factory(lab_spec("hostile", phones=2))
    lab.worker = worker_factory(lab.inventory)
    lab.inv = inv_mod.load(lab.inventory)
    return lab


@pytest.fixture(scope="module")
def client(redis_url):
    app = Celery("hostile-client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"])
    yield app
    app.close()


def _send(client: Celery, name: str, args: list | None = None, kwargs: dict | None = None):
    # ignore_result=False: rollout tasks do not keep results; the attacker's message cannot hide a refusal from us
    return client.send_task(name, args=args or [], kwargs=kwargs or {}, queue=f"site.{SITE}", ignore_result=False)


def _wait(results: list, timeout: float = 120.0) -> None:
    def pending() -> list:
        return [r for r in results if r.state not in ("SUCCESS", "FAILURE")]

    wait_until(lambda: not pending(), timeout, f"all {len(results)} tasks finished", step=0.2,
               state=lambda: [f"{r.id} {r.state}" for r in pending()][:3])


def _router_commands(lab) -> list:
    return lab.status()["sites"][0]["router"]["commands"]


def _boot_files(lab) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(lab.state)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted((lab.state / f"boot-{SITE}").rglob("*")) if p.is_file() and not p.name.endswith("-app.log")}


def _boot_counts(lab) -> dict[str, int]:
    return {p["mac"]: p["boot_count"] for p in lab.status()["phones"]}


def _payloads(marker_base: str) -> list[str]:
    return [f"0; touch {marker_base}-semi #", f"$(touch {marker_base}-dollar)", f"`touch {marker_base}-tick`",
            f"{SITE}\ntouch {marker_base}-newline", f"x' ; touch {marker_base}-quote; '"]


# an outage as a task message carries it (Outage.to_dict()); each of its fields is attacked too
OUTAGE = dict(id="hostile0123456789", mode="drop", max_duration=30, loss=0.0, delay_ms=0, rate_kbit=0)


def _valid_args(lab, tmp_path: Path) -> dict[str, dict]:
    site = lab.inv.site(SITE)
    rest_phone = next(p for p in site.phones if p.family.rest)
    playbook = tmp_path / "scheduled.yml"
    playbook.write_text("kind: rollout\nname: nightly\nparams: {reg.1.server.1.expires: 600}\n")
    return {
        "fleet.router_outage": dict(site_name=SITE, exp_id="exp-hostile", outage=OUTAGE),
        "fleet.router_restore": dict(site_name=SITE, exp_id="exp-hostile", outage=OUTAGE, probe_for=0.0),
        "fleet.router_state": dict(site_name=SITE, outage_id="hostile0123456789"),
        "fleet.place_call": dict(site_name=SITE, exp_id="exp-hostile", mac=rest_phone.mac, number="1002"),
        "fleet.inbound_call": dict(site_name=SITE, exp_id="exp-hostile", mac=rest_phone.mac, user="1002", ring_s=5),
        "fleet.power_cycle": dict(site_name=SITE, exp_id="exp-hostile", macs=[site.phones[0].mac], off_s=1.0),
        "fleet.rollout_push": dict(rid="rollout-hostile", mac=site.phones[0].mac, attempt=1),
        "fleet.rollout_rollback": dict(rid="rollout-hostile", mac=site.phones[0].mac),
        "fleet.scheduled_rollout": dict(playbook_path=str(playbook), inventory_path=str(lab.inventory.resolve()),
                                        schedule_name="nightly"),
    }


def test_shell_syntax_in_every_argument_is_refused_and_nothing_runs(lab, client, redis_url, tmp_path):
    commands, files, boots = _router_commands(lab), _boot_files(lab), _boot_counts(lab)
    sent = []
    for task, valid in _valid_args(lab, tmp_path).items():
        for field in valid:
            for n, payload in enumerate(_payloads(f"/tmp/pwned-{TOKEN}-{task.split('.')[1]}-{field}")):
                sent.append((task, field, payload, _send(client, task, kwargs=dict(valid, **{field: payload}))))
        if "outage" in valid:
            for field in OUTAGE:
                for n, payload in enumerate(_payloads(f"/tmp/pwned-{TOKEN}-{task.split('.')[1]}-outage-{field}")):
                    sent.append((task, f"outage.{field}", payload,
                                 _send(client, task, kwargs=dict(valid, outage=dict(OUTAGE, **{field: payload})))))
    # the controller's own form (positional), and arguments that are not the task's at all
    outage = _valid_args(lab, tmp_path)["fleet.router_outage"]
    sent.append(("fleet.router_outage", "outage.delay_ms", "positional", _send(client, "fleet.router_outage", args=[
        SITE, "exp-hostile", dict(OUTAGE, delay_ms=f"0; touch /tmp/pwned-{TOKEN}-pos #")])))
    # the reproduction: degrade formats delay_ms into `tc ... delay {delay}ms` on the router
    sent.append(("fleet.router_outage", "outage.delay_ms", "degrade", _send(client, "fleet.router_outage", kwargs=dict(
        outage, outage=dict(OUTAGE, mode="degrade", delay_ms=f"0; touch /tmp/pwned-{TOKEN}-degrade #")))))
    sent.append(("fleet.router_state", "command", "extra kwarg",
                 _send(client, "fleet.router_state", kwargs={"site_name": SITE, "command": f"touch /tmp/pwned-{TOKEN}-extra"})))
    sent.append(("fleet.router_outage", "site_name", "list", _send(client, "fleet.router_outage",
                                                                   kwargs=dict(outage, site_name=[SITE, "; reboot"]))))
    _wait([r for *_, r in sent])

    wrong = []
    for task, field, payload, res in sent:
        exc = res.result
        if res.state != "FAILURE" or type(exc).__name__ != "TaskArgumentError" or field not in str(exc):
            wrong.append(f"{task} {field}={payload!r}: {res.state} {type(exc).__name__}: {str(exc)[:200]}")
    assert not wrong, f"{len(wrong)} of {len(sent)} hostile tasks not refused by name:\n" + "\n".join(wrong[:20])
    assert glob.glob(f"/tmp/pwned-{TOKEN}*") == [], "a hostile argument ran a shell command"
    assert _router_commands(lab) == commands, "the lab router ran commands for a refused task"
    assert _boot_files(lab) == files, "the boot server changed for a refused task"
    assert _boot_counts(lab) == boots, "a phone rebooted for a refused task"
    written = RolloutStore(Store(redis_url)).ids_with_records()
    assert not [i for i in written if "hostile" in i or "pwned" in i], written

    # the control: a valid task of the same kind does reach the router, so the checks above can fail
    ok = _send(client, "fleet.router_state", kwargs={"site_name": SITE})
    _wait([ok])
    assert ok.state == "SUCCESS" and "link_up" in ok.result["state"], ok.result
    assert _router_commands(lab) != commands


def test_refusal_names_the_argument_and_the_rule(lab, client, tmp_path):
    valid = _valid_args(lab, tmp_path)
    outage = lambda **fields: dict(OUTAGE, **fields)  # noqa: E731
    cases = [("fleet.router_outage", "outage.max_duration", outage(max_duration=86401), "less than or equal to 86400"),
             ("fleet.router_outage", "outage.loss", outage(mode="degrade", loss=1.5), "less than or equal to 1"),
             ("fleet.router_outage", "outage.delay_ms", outage(mode="degrade", delay_ms="5"), "valid integer"),
             ("fleet.router_outage", "outage.mode", outage(mode="link-up"), "link-down"),
             ("fleet.router_outage", "outage.id", outage(id="short"), "pattern"),
             ("fleet.router_outage", "outage", outage(rate_kbit=256), "rate_kbit shapes a degrade outage only"),
             ("fleet.router_restore", "outage.id", outage(id="hostile; reboot"), "pattern"),
             ("fleet.router_restore", "probe_for", 121.0, "less than or equal to 120"),
             ("fleet.place_call", "number", "1002@evil.example", "pattern"),
             ("fleet.inbound_call", "user", "1002 ; reboot", "pattern"),
             ("fleet.inbound_call", "ring_s", 301, "less than or equal to 300"),
             ("fleet.power_cycle", "off_s", 301, "less than or equal to 300"),
             ("fleet.power_cycle", "macs", ["0004F2AABBCC"], "pattern"),
             ("fleet.rollout_push", "mac", "0004F2AABBCC", "pattern"),
             ("fleet.rollout_push", "attempt", True, "valid integer"),
             ("fleet.rollout_push", "rid", "../../etc", "pattern"),
             ("fleet.scheduled_rollout", "inventory_path", str(tmp_path / "other.yml"), "not the inventory this worker"),
             ("fleet.scheduled_rollout", "playbook_path", "relative.yml", "pattern")]
    results = [(task, field, rule, _send(client, task, kwargs=dict(valid[task], **{field.split(".")[0]: value})))
               for task, field, value, rule in cases]
    _wait([r for *_, r in results])
    for task, field, rule, res in results:
        assert res.state == "FAILURE", (task, field, res.state, res.result)
        assert f"argument {field}" in str(res.result) and rule in str(res.result), (task, field, str(res.result))


# ---------------------------------------------------------------- rollout records rewritten in Redis
def _entry(lab, mac: str, **params: str) -> dict:
    site, phone = lab.inv.phone(mac)
    merged = dict(lab.inv.effective_params(site, phone), **params)
    return {"mac": mac, "site": site.name, "model": phone.model, "params": merged, "diff": {}, "config_hash": config_hash(merged)}


def _record(store: Store, rid: str, mac: str, entry: dict, **fields: str) -> None:
    RolloutStore(store).create(rid, "hostile.yml", {"phones": [dict(entry, mac=mac)], "waves": [[mac]]}, {})
    if fields:
        RolloutStore(store).set_phone(rid, mac, **fields)


def _settled(store: Store, rid: str, mac: str, states: tuple[str, ...], timeout: float = 60.0) -> dict:
    rs = RolloutStore(store)
    return wait_until(lambda: (rec := rs.phone(rid, mac)).get("state") in states and rec, timeout,
                      f"phone {mac} of rollout {rid} in {states}",
                      state=lambda: {k: v for k, v in rs.phone(rid, mac).items() if k != "plan"})


def test_tampered_rollout_records_fail_the_phone_and_touch_nothing(lab, client, redis_url):
    store = Store(redis_url)
    mac = lab.inv.site(SITE).phones[0].mac
    planted = lab.state / f"boot-{SITE}" / "planted.cfg"
    planted.write_text("a file of the site's own\n")
    files, boots = _boot_files(lab), _boot_counts(lab)
    good = _entry(lab, mac, **{"reg.1.server.1.expires": "14"})
    pushes = {
        "secret-in-label": (dict(good, params=dict(good["params"], **{"reg.1.displayName": "secret:router"})),
                            "secret reference in a parameter that is not a secret parameter"),
        "env-in-label": (dict(good, params=dict(good["params"], **{"reg.1.label": "env:FLEET_REDIS_URL"})),
                         "secret reference in a parameter that is not a secret parameter"),
        "unknown-param": (dict(good, params=dict(good["params"], **{"device.sh.command": "touch /tmp/x"})),
                          "not a parameter the catalogue knows"),
        "out-of-range": (dict(good, params=dict(good["params"], **{"reg.1.server.1.port": "70000"})), "out of range"),
        "other-site": (dict(good, site="elsewhere"), "at site 'elsewhere'"),
        "not-json-params": (dict(good, params=["reg.1.label"]), "plan field params"),
    }
    for name, (entry, _) in pushes.items():
        _record(store, f"tamper-{TOKEN}-{name}", mac, entry)
    _record(store, f"tamper-{TOKEN}-stranger", "0004ffffff01", dict(good, mac="0004ffffff01"))
    _record(store, f"tamper-{TOKEN}-backed-up-name", mac, good, **{"backed_up:planted.cfg": "yes"})
    rollbacks = {
        "planted-file": ({"backed_up:planted.cfg": "absent"}, "not one of this phone's files"),
        "traversal": ({"backed_up:../../../etc/hosts": "absent"}, "not one of this phone's files"),
        "bad-mark": ({f"backed_up:{mac}.cfg": "rm -rf /"}, "expected one of yes, absent, same"),
    }
    for name, (fields, _) in rollbacks.items():
        _record(store, f"tamper-{TOKEN}-rb-{name}", mac, good, **fields)

    for name in pushes:
        _send(client, "fleet.rollout_push", args=[f"tamper-{TOKEN}-{name}", mac, 1])
    _send(client, "fleet.rollout_push", args=[f"tamper-{TOKEN}-stranger", "0004ffffff01", 1])
    _send(client, "fleet.rollout_push", args=[f"tamper-{TOKEN}-backed-up-name", mac, 1])
    for name in rollbacks:
        _send(client, "fleet.rollout_rollback", args=[f"tamper-{TOKEN}-rb-{name}", mac])

    for name, (_, reason) in pushes.items():
        rec = _settled(store, f"tamper-{TOKEN}-{name}", mac, ("failed",))
        assert rec["error"].startswith("refused:") and reason in rec["error"], (name, rec["error"])
    rec = _settled(store, f"tamper-{TOKEN}-stranger", "0004ffffff01", ("failed",))
    assert "not in this worker's inventory" in rec["error"], rec["error"]
    rec = _settled(store, f"tamper-{TOKEN}-backed-up-name", mac, ("failed",))
    assert "'planted.cfg'" in rec["error"], rec["error"]
    for name, (_, reason) in rollbacks.items():
        rec = _settled(store, f"tamper-{TOKEN}-rb-{name}", mac, ("rollback_failed",))
        assert rec["error"].startswith("refused:") and reason in rec["error"], (name, rec["error"])
        assert "rollback_at" not in rec, (name, rec)

    assert planted.read_text() == "a file of the site's own\n"
    assert _boot_files(lab) == files, "a refused record changed the boot server"
    assert _boot_counts(lab) == boots, "a refused record rebooted a phone"

    # the control: the same phone with an untampered record is pushed (so the checks above can fail)
    rid = f"tamper-{TOKEN}-control"
    _record(store, rid, mac, good)
    _send(client, "fleet.rollout_push", args=[rid, mac, 1])
    rec = _settled(store, rid, mac, ("verifying", "verified", "failed"))
    assert rec["state"] == "verifying", {k: v for k, v in rec.items() if k != "plan"}
    fleet_file = lab.state / f"boot-{SITE}" / f"{mac}-fleet.cfg"
    assert 'reg.1.server.1.expires="14"' in fleet_file.read_text()
    assert json.loads(rec["plan"])["config_hash"] == good["config_hash"]
