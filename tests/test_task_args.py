"""Unit tests of the task argument models, the plan re-check and Redis credentials (no worker, no lab)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis
import yaml

from conftest import ROOT
from fleet.rollout import record_check as plan_check
from fleet.worker import args as task_args
from fleet.worker.app import app
from fleet.drivers.router import OUTAGE_MODES
from fleet.config.inventory import Inventory
from soundpoint.redact import redact_url as redacted
from soundpoint.redisboot import start_private
from fleet.rollout.plan import config_hash
from fleet.worker.args import TaskArgumentError, validated

import fleet.experiment.tasks  # noqa: F401  (registers the tasks)
import fleet.rollout.tasks  # noqa: F401


def test_every_fleet_task_checks_its_arguments():
    tasks = {name: t for name, t in app.tasks.items() if name.startswith("fleet.")}
    assert {"fleet.router_outage", "fleet.rollout_push", "fleet.scheduled_rollout"} <= set(tasks)
    unchecked = [name for name, t in tasks.items() if not hasattr(t.run, "__fleet_args_model__")]
    assert not unchecked, f"tasks without an argument model (add one in fleet/worker/args.py): {unchecked}"


def test_outage_modes_match_the_router_drivers():
    mode = task_args.RouterOutageArgs.model_fields["outage"].annotation.model_fields["mode"].annotation
    assert mode.__args__ == OUTAGE_MODES


def test_decorator_refuses_before_the_body_runs_and_names_the_argument():
    ran = []

    class Args(task_args.TaskArgs):
        site_name: task_args.SiteName
        delay_ms: int = 0

    @validated(Args)
    def task(site_name: str, delay_ms: int = 0) -> str:
        ran.append((site_name, delay_ms))
        return "ran"

    assert task("hq", delay_ms=5) == "ran"
    for args, kwargs, field in [(("hq",), {"delay_ms": "0; touch /tmp/x #"}, "delay_ms"),
                                (("hq\n",), {}, "site_name"), (("$(id)",), {}, "site_name"),
                                (("hq", 1, 2), {}, "positional"), (("hq",), {"shell": "sh"}, "shell"),
                                ((), {}, "site_name")]:
        with pytest.raises(TaskArgumentError, match=field):
            task(*args, **kwargs)
    assert ran == [("hq", 5)]


def test_decorator_passes_a_bound_tasks_self_through():
    class Args(task_args.TaskArgs):
        rid: task_args.SafeId

    @validated(Args)
    def task(self, rid: str) -> tuple:
        return self, rid

    assert task("SELF", "r1") == ("SELF", "r1")
    with pytest.raises(TaskArgumentError, match="argument rid"):
        task("SELF", "r1; reboot")


def test_model_and_signature_must_agree():
    class Args(task_args.TaskArgs):
        rid: task_args.SafeId

    with pytest.raises(TypeError, match="do not match"):
        @validated(Args)
        def task(rid: str, extra: int = 0) -> None: ...


def test_refusal_survives_the_result_backend_round_trip():
    """Celery stores (type, module, args) and rebuilds the exception for the caller: one string argument."""
    exc = TaskArgumentError("fleet.x: refused: argument mac: String should match pattern")
    rebuilt = type(exc)(*exc.args)
    assert str(rebuilt) == str(exc)


@pytest.mark.parametrize("value", ["0004f2aabbcc", "ffffffffffff"])
def test_mac_accepts_the_inventory_form(value):
    task_args.RolloutRollbackArgs(rid="r-1", mac=value)


@pytest.mark.parametrize("value", ["0004F2AABBCC", "00:04:f2:aa:bb:cc", "0004f2aabbc", "0004f2aabbccd", "0004f2aabbcg"])
def test_mac_refuses_other_forms(value):
    with pytest.raises(ValueError):
        task_args.RolloutRollbackArgs(rid="r-1", mac=value)


@pytest.mark.parametrize("number", ["1002", "*97", "#31#", "0049301234567"])
def test_phone_numbers(number):
    task_args.PlaceCallArgs(site_name="hq", exp_id="e", mac="0004f2aabbcc", number=number)


@pytest.mark.parametrize("number", ["", "+49 30", "1002;touch x", "sip:1002@x", "1" * 33])
def test_bad_phone_numbers(number):
    with pytest.raises(ValueError, match="number"):
        task_args.PlaceCallArgs(site_name="hq", exp_id="e", mac="0004f2aabbcc", number=number)


# ---------------------------------------------------------------- plan re-check
def _inv() -> Inventory:
    return Inventory.model_validate({
        "name": "unit", "firmware_family": "uc-5.x",
        "sites": [{"name": "hq", "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/boot"},
                   "phones": [{"mac": "0004f2000001", "model": "VVX 410", "address": "10.0.1.2", "credentials": "admin"}]}]})


def _state(params: dict, **extra) -> dict:
    entry = {"mac": "0004f2000001", "site": "hq", "model": "VVX 410", "params": params, "diff": {},
             "config_hash": config_hash(params)}
    return {"state": "pending", "attempt": "1", "plan": json.dumps(entry), **extra}


def test_plan_check_accepts_a_plan_the_planner_makes():
    params = {"reg.1.server.1.address": "sip.example.net", "reg.1.server.1.expires": "600",
              "reg.1.auth.password": "secret:sip_1001"}
    checked = plan_check.check(_inv(), "r1", "0004f2000001", _state(params, **{"backed_up:0004f2000001.cfg": "yes"}))
    assert checked.params == params and checked.backups == {"0004f2000001.cfg": "yes"} and checked.attempt == 1


@pytest.mark.parametrize("params, reason", [
    ({"reg.1.label": "secret:router"}, "not a secret parameter"),
    ({"reg.1.displayName": "env:FLEET_REDIS_URL"}, "not a secret parameter"),
    ({"reg.1.auth.password": "secret:a b"}, "malformed secret reference"),
    ({"no.such.param": "1"}, "catalogue"),
    ({"reg.1.server.1.expires": "5"}, "out of range"),
    ({"reg.1.server.1.register": "yes"}, "expected 0 or 1"),
    ({"reg.1.label": "a\x00b"}, "control characters"),
])
def test_plan_check_refuses_bad_parameters(params, reason):
    with pytest.raises(plan_check.PlanRefused, match=reason):
        plan_check.check(_inv(), "r1", "0004f2000001", _state(params))


@pytest.mark.parametrize("extra, reason", [
    ({"backed_up:../x": "absent"}, "not one of this phone's files"),
    ({"backed_up:0004f2000002.cfg": "absent"}, "not one of this phone's files"),
    ({"backing_up:site.cfg": "1"}, "not one of this phone's files"),
    ({"backed_up:0004f2000001-fleet.cfg": "maybe"}, "expected one of"),
    ({"attempt": "1; x"}, "attempt"),
])
def test_plan_check_refuses_bad_records(extra, reason):
    with pytest.raises(plan_check.PlanRefused, match=reason):
        plan_check.check(_inv(), "r1", "0004f2000001", _state({}, **extra))


def test_plan_check_refuses_strangers_and_mismatches():
    with pytest.raises(plan_check.PlanRefused, match="not in this worker's inventory"):
        plan_check.check(_inv(), "r1", "0004f2000009", _state({}))
    with pytest.raises(plan_check.PlanRefused, match="no record"):
        plan_check.check(_inv(), "r1", "0004f2000001", {})
    state = _state({})
    state["plan"] = state["plan"].replace('"site": "hq"', '"site": "branch"')
    with pytest.raises(plan_check.PlanRefused, match="at site 'branch'"):
        plan_check.check(_inv(), "r1", "0004f2000001", state)
    with pytest.raises(plan_check.PlanRefused, match="not JSON"):
        plan_check.check(_inv(), "r1", "0004f2000001", dict(state, plan="{"))


def test_file_names_are_the_renderers():
    assert plan_check.file_names("0004f2000001") == {"0004f2000001.cfg", "0004f2000001-fleet.cfg"}


# ---------------------------------------------------------------- Redis credentials
def test_redacted_hides_passwords_only():
    assert redacted("redis://fleet:s3cr3t@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert redacted("redis://:s3cr3t@h:1/0") == "redis://***@h:1/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_private_redis_has_an_acl_user_and_no_open_default(tmp_path):
    url, proc = start_private(tmp_path / "r")
    try:
        assert re.match(r"^redis://fleet:[A-Za-z0-9_-]{16,}@127\.0\.0\.1:\d+/0$", url)
        assert password_of(url) not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        r = redis.Redis.from_url(url)
        assert r.acl_whoami() == "fleet"
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.config_get("dir")
        anonymous = re.sub(r"//[^@]*@", "//", url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(anonymous).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(url.replace(password_of(url), "wrong-password-123")).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def test_transactions_survive_a_restart_from_the_append_only_file(tmp_path):
    """Redis 7 replays MULTI/EXEC from the AOF as the default user: with that user off they would be lost."""
    url, proc = start_private(tmp_path / "aof", appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        r = redis.Redis.from_url(url)
        with r.pipeline(transaction=True) as pipe:
            pipe.hset("tx", mapping={"a": 1}).set("tx2", "b").execute()
        r.set("plain", "c")
    finally:
        proc.terminate()
        proc.wait(10)
    url, proc = start_private(tmp_path / "aof", port=port, appendonly=True, password=password_of(url))
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        assert (r.hgetall("tx"), r.get("tx2"), r.get("plain")) == ({"a": "1"}, "b", "c")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(re.sub(r"//fleet:", "//default:", url)).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def password_of(url: str) -> str:
    return url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]


def test_the_session_redis_is_password_protected(redis_url):
    assert re.match(r"^redis://fleet:[^@]+@", redis_url)


def test_compose_sets_redis_password_and_flower_auth_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    doc = yaml.safe_load(text)
    services = doc["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "user default on resetpass ~*" in redis_cmd and "user fleet on >$$FLEET_REDIS_PASSWORD" in redis_cmd
    assert "nopass" not in redis_cmd
    assert "--requirepass" not in redis_cmd          # ACL user, not the default user's password
    for name in ("worker-hq", "worker-control", "collector-hq", "scheduler", "flower"):
        url = services[name]["environment"]["FLEET_REDIS_URL"]
        assert url.startswith("redis://fleet:${FLEET_REDIS_PASSWORD:?"), (name, url)
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not re.search(r"redis://[^$\s\"]*:[^$\s\"]+@", text), "a literal password in docker-compose.yml"
