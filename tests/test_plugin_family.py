"""A phone family is a plug-in (issue #18): a fake firmware family and its phone control, both defined in this test,
made known through the public functions only (soundpoint.families.register, fleet.phones.register), with no
existing module edited. Then the real code takes it as one of its own: the inventory loads phones of that family and
checks their parameters against its catalogue, fleet.phones.for_phone gives them the fake control, the rollout plan
and the worker's re-check of the plan use the catalogue, the predictions its retry model, and a rollout push asks
the fake control for the call state and the reboot.

The fixture undoes the registration, so every other test sees only the four families that ship.
Needs the session's private redis-server (conftest.redis_url) for the push; no lab, no traffic off this host.
"""
from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Collection

import pytest
import yaml

from fleet import phones
from fleet.config import inventory, validate
from fleet.config.inventory import Credentials
from fleet.drivers.control.call_check import CallCheck
from fleet.phoneconf import polycom, predict
from fleet.rollout import driver as rollout_driver
from fleet.rollout import record_check
from fleet.rollout import work as rollout_work
from fleet.rollout.plan import PlanError, plan
from fleet.rollout.playbook import RolloutPlaybook
from fleet.state.store import RolloutStore, Store
from fleet.worker import context as worker_context
from soundpoint import families
from soundpoint.families import params
from soundpoint.families.profile import CHECK_SYNC, REST, Family, Param
from soundpoint.yamlfile import FileError

FAKE = "fake-1.x"
WIDGET = "fake.widget.level"          # a parameter only the fake family has
IDLE, BUSY = "0004f2fa0001", "0004f2fa0002"

FAKE_FAMILY = Family(
    name=FAKE, title="Fake Phone 1.x (a test plug-in)",
    catalogue=tuple(params.server("test") + params.uc_failover("test") + params.registration("test")
                    + params.check_sync("test") + [Param(WIDGET, "int", "3", 1, 5, source="this test")]),
    expires_min=30,
    interfaces=frozenset({CHECK_SYNC, REST}),      # REST: its control can say whether the phone is in a call
    reboot_methods=("rest", "check-sync"),
    models=frozenset({"VVX 410"}),
    failover_controls=True,
    max_registrations=2,
)

# The fake phones' side: whether each is in a call, and the reboots each received (the control's only "wire").
DEVICES: dict[str, dict] = {}


class Control:
    """The fake family's phone control (fleet.phones.PhoneControl), talking to DEVICES instead of a phone."""

    def __init__(self, access: phones.PhoneAccess) -> None:
        self.access = access
        self.phone = access.phone
        self.family: families.Family = access.phone.family

    def _device(self) -> dict:
        return DEVICES.setdefault(self.phone.mac, {"in_call": False, "reboots": []})

    def call_check(self) -> CallCheck:
        if self._device()["in_call"]:
            return CallCheck("in-call", "fake API: a call is up")
        return CallCheck("idle", "fake API: no call")

    def reboot(self, announce=None, fallback: bool = True) -> str:
        (announce or (lambda _method: None))(self.phone.reboot_method)
        self._device()["reboots"].append(time.time())
        return f"fake {self.phone.reboot_method}"

    def may_stay_up(self, sent: Collection[str], params: dict[str, str]) -> bool:
        return False

    def reports_shutdown(self, params: dict[str, str]) -> bool:
        return False

    def rebooted_since(self, since: float, params: dict[str, str], tried: Collection[str] | None = None) -> bool:
        return any(t >= since for t in self._device()["reboots"])

    def polling_credentials(self) -> Credentials:
        return self.access.creds

    def identify(self, timeout: float = 5.0) -> phones.Identity:
        return phones.Identity("fake API", "", "fake phone")


@pytest.fixture
def fake_family():
    """The fake family and its control registered for one test, and forgotten after it whatever happens.

    soundpoint.catalogue memoises "which family's entry is this parameter name" per set of known families, so the
    fake family is seen while registered and nobody sees its entries once it is gone."""
    families.register(FAKE_FAMILY)
    try:
        phones.register(FAKE, __name__)
        DEVICES.clear()
        yield FAKE_FAMILY
    finally:
        phones.unregister(FAKE)
        families.unregister(FAKE)
        DEVICES.clear()


INVENTORY = {
    "name": "plug-in", "secrets_file": "secrets.yml", "firmware_family": FAKE,
    "params": {"reg.1.server.1.address": "127.0.0.1", "reg.1.server.1.expires": "60"},
    "sites": [{"name": "hq", "gateway": "127.0.0.1", "boot_server": {"url": "BOOT"},
               "params": {WIDGET: 2},
               "phones": [{"mac": IDLE, "model": "VVX 410", "address": "127.0.0.2", "credentials": "admin",
                           "params": {"reg.1.address": "1001"}},
                          {"mac": BUSY, "model": "VVX 410", "address": "127.0.0.3", "credentials": "admin",
                           "params": {"reg.1.address": "1002"}}]}],
}


def _write_inventory(tmp_path: Path, doc: dict | None = None) -> Path:
    boot = tmp_path / "boot"
    boot.mkdir(exist_ok=True)
    # the site's master file, which fleet edits to put its own file first (it never invents one)
    (boot / "000000000000.cfg").write_text('<?xml version="1.0" standalone="yes"?>\n'
                                           '<APPLICATION APP_FILE_PATH="fake.ld" CONFIG_FILES="site.cfg"/>\n')
    doc = yaml.safe_load(yaml.safe_dump(doc or INVENTORY).replace("BOOT", f"file://{boot}/"))
    (tmp_path / "secrets.yml").write_text(yaml.safe_dump({"admin": {"username": "Polycom", "password": "x"}}))
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _playbook(level: int | str = 4, **more: str) -> RolloutPlaybook:
    return RolloutPlaybook.model_validate({"kind": "rollout", "name": "widget", "params": {WIDGET: level, **more},
                                           "strategy": {"canary": 0}})


def test_the_shipped_families_are_found_by_name_and_have_their_controls():
    assert families.NAMES == tuple(families.MODULES) == ("sip-2.x", "sip-3.x", "uc-4.0", "uc-5.x")
    assert set(phones.BACKENDS) == set(families.NAMES) and FAKE not in families.FAMILIES


def test_an_inventory_of_the_fake_family_loads_and_is_checked_against_its_catalogue(fake_family, tmp_path):
    assert families.get(FAKE) is fake_family and families.NAMES[-1] == FAKE
    inv = inventory.load(_write_inventory(tmp_path))
    phone = inv.sites[0].phones[0]
    assert phone.family is fake_family and phone.reboot_method == "rest"
    assert inv.effective_params(inv.sites[0], phone)[WIDGET] == "2"
    # the fake catalogue's own range, in the inventory's words (file and line)
    doc = yaml.safe_load(yaml.safe_dump(INVENTORY))
    doc["sites"][0]["params"][WIDGET] = 9
    with pytest.raises(FileError, match=rf"{WIDGET}=9: out of range 1..5 for firmware family {FAKE}"):
        inventory.load(_write_inventory(tmp_path, doc))
    # and its limits: two registrations, not the 34 of UC Software 5.x
    doc = yaml.safe_load(yaml.safe_dump(INVENTORY))
    doc["sites"][0]["phones"][0]["params"]["reg.3.address"] = "1003"
    with pytest.raises(FileError, match=f"registrations are numbered 1 to 2 on {FAKE}"):
        inventory.load(_write_inventory(tmp_path, doc))


def test_its_phones_get_the_fake_control(fake_family, tmp_path):
    inv = inventory.load(_write_inventory(tmp_path))
    secrets = inventory.Secrets(inv)
    _, phone = inv.phone(IDLE)
    control = phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets)
    assert isinstance(control, Control) and control.family is fake_family
    assert control.access.params[WIDGET] == "2"
    assert control.call_check() == CallCheck("idle", "fake API: no call")
    assert control.identify().ok


def test_the_rollout_plan_and_the_workers_recheck_use_its_catalogue_and_retry_model(fake_family, tmp_path):
    inv = inventory.load(_write_inventory(tmp_path))
    p = plan(inv, _playbook(4), "r-fake")
    entry = next(ph for ph in p.phones if ph.mac == IDLE)
    assert entry.diff[WIDGET] == ["2", "4"] and not entry.warnings and not entry.unchecked_reboot
    # the worker's second look at the record in Redis checks the same catalogue
    state = {"state": "pending", "attempt": "1", "plan": json.dumps(entry.to_dict())}
    assert record_check.check(inv, "r-fake", IDLE, state).params[WIDGET] == "4"
    forged = entry.to_dict() | {"params": entry.params | {WIDGET: "7"}}
    with pytest.raises(record_check.PlanRefused, match="out of range"):
        record_check.check(inv, "r-fake", IDLE, state | {"plan": json.dumps(forged)})
    # the playbook's own check knows the fake parameter; each phone's, the fake family's catalogue
    with pytest.raises(ValueError, match=f"{WIDGET}=6: out of range 1..5 for firmware family {FAKE}"):
        _playbook(6)
    with pytest.raises(PlanError, match=f"phone {IDLE} .*device.set: not supported by firmware family {FAKE}"):
        plan(inv, _playbook(4, **{"device.set": "1"}), "r-fake")
    # failover_controls: the UC Software retry model (randomised backoff), and fallbacks that wait for a failure
    assert predict.retry_model(FAKE).backoff
    two_servers = entry.params | {"reg.1.server.2.address": "127.0.0.9", "reg.1.server.2.failOver.reRegisterOn": "1"}
    assert predict.fallbacks_on_failure(two_servers, 1, FAKE) == [2]
    assert predict.fallbacks_on_failure(two_servers, 1, "uc-4.0") == []     # a family without the switch


def test_a_rollout_push_asks_the_fake_control(fake_family, tmp_path, redis_url, monkeypatch):
    """The worker's push: the fake control's call check decides (idle: rebooted through it; in a call: deferred)."""
    path = _write_inventory(tmp_path)
    pb = tmp_path / "widget.yml"
    pb.write_text(yaml.safe_dump({"kind": "rollout", "name": "widget", "params": {WIDGET: 4}}))
    rid = f"fake-{time.time_ns()}"
    rollout_driver.create(str(pb), str(path), Store(redis_url), rid=rid)
    monkeypatch.setenv("FLEET_INVENTORY", str(path))
    monkeypatch.setenv("FLEET_REDIS_URL", redis_url)
    worker_context.reset()
    try:
        DEVICES[BUSY] = {"in_call": True, "reboots": []}
        assert rollout_work.push(rid, IDLE, 1)["state"] == "verifying"
        assert rollout_work.push(rid, BUSY, 1) == {"state": "deferred", "reason": "fake API: a call is up"}
    finally:
        worker_context.reset()
    assert len(DEVICES[IDLE]["reboots"]) == 1 and DEVICES[BUSY]["reboots"] == []
    record = RolloutStore(Store(redis_url)).phone(rid, IDLE)
    assert record.get("reboot_via") == "fake rest" and record.get("reboot_tried") == "rest"
    written = (tmp_path / "boot" / polycom.fleet_file_name(IDLE)).read_text()
    assert f'{WIDGET}="4"' in written


def test_registration_is_checked_and_undone(fake_family):
    with pytest.raises(families.FamilyError, match="already registered"):
        families.register(FAKE_FAMILY)
    with pytest.raises(phones.NoControl, match="already has a phone control"):
        phones.register(FAKE, __name__)
    with pytest.raises(families.FamilyError, match="unknown firmware family 'fake-2.x'"):
        phones.register("fake-2.x", __name__)
    with pytest.raises(families.FamilyError, match="ships with this tool"):
        families.unregister("uc-5.x")
    with pytest.raises(phones.NoControl, match="ships with fleet"):
        phones.unregister("uc-5.x")
    # a family registered without a control: its phones get a clear refusal, the others their controls
    half = families.register(Family(name="fake-2.x", title="Fake 2", catalogue=(), expires_min=1,
                                    interfaces=frozenset(), reboot_methods=("check-sync",),
                                    models=frozenset({"VVX 410"}), failover_controls=False))
    try:
        phone = inventory.Phone(mac=IDLE, model="VVX 410", address="127.0.0.2", credentials="a",
                                firmware_family="fake-2.x")
        with pytest.raises(phones.NoControl, match="no phone control for fake-2.x"):
            phones.control(phones.PhoneAccess(phone, Credentials()))
        ours = phone.model_copy(update={"firmware_family": FAKE})
        assert isinstance(phones.control(phones.PhoneAccess(ours, Credentials())), Control)
    finally:
        families.unregister(half.name)


def test_register_refuses_what_fleet_could_not_drive():
    with pytest.raises(TypeError, match="soundpoint.families.Family"):
        families.register({"name": "fake-3.x"})
    odd = Family(name="fake-3.x", title="Fake 3", catalogue=(), expires_min=1, interfaces=frozenset(),
                 reboot_methods=("power-cycle",), models=frozenset({"VVX 410"}), failover_controls=False)
    with pytest.raises(families.FamilyError, match="reboot methods"):
        families.register(odd)
    assert "fake-3.x" not in families.NAMES


def test_no_family_module_imports_the_package_that_loads_it():
    """The circle this layout removed: the family modules import the shapes (profile) and the shared catalogue
    groups (params), never soundpoint.families itself, which imports them by name (MODULES)."""
    folder = Path(families.__file__).parent
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = {a.name for a in node.names}
                assert target not in (".", "soundpoint.families") or names <= {"params", "profile"}, (path.name, names)
                assert target not in ("..", "soundpoint") or "families" not in names, path.name


def test_after_the_plug_in_tests_only_the_shipped_families_remain():
    assert families.NAMES == tuple(families.MODULES) and set(phones.BACKENDS) == set(families.MODULES)
    assert families.lookup_any(WIDGET) is None
    with pytest.raises(ValueError, match="not a parameter this tool manages"):
        validate.param(WIDGET, "3")
