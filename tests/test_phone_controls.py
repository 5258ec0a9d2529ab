"""Controls that work on real phones (issue 9, point 3), against the virtual lab (net 2, one site).

The lab's SoundPoint IP 650s run UC Software 4.0, validate NOTIFY requests with digest
(voIpProt.SIP.requestValidation) and answer state polling only to its own login
(apps.statePolling.username/password). One of them is set to reboot through the web UI.
"""
from __future__ import annotations

import json
import time

import pytest
import yaml

from conftest import lab_spec, run_fleet, wait_until
from fleet import phones
from fleet.config import inventory
from fleet.drivers.errors import DeviceRefused
from fleet.state.sites import register_site

pytestmark = pytest.mark.slow
POLL_PASSWORD = "poll-Secret-77"


@pytest.fixture(scope="module")
def lab(lab_factory):
    spec = lab_spec("controls", phones=2, models=["SoundPoint IP 650"])
    spec["sites"][0]["params"] = {"voIpProt.SIP.requestValidation.1.request": "NOTIFY",
                                  "voIpProt.SIP.requestValidation.1.method": "digest",
                                  "apps.statePolling.username": "poller", "apps.statePolling.password": POLL_PASSWORD}
    lab = lab_factory(spec)
    # the lab writes the site's values as they are; an inventory names the secret by reference
    doc = yaml.safe_load(lab.inventory.read_text())
    doc["sites"][0]["params"]["apps.statePolling.password"] = "secret:state_poll"
    doc["sites"][0]["phones"][1]["reboot"] = "web"
    lab.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    secrets_path = lab.inventory.parent / "state" / "secrets.yml"
    secrets = yaml.safe_load(secrets_path.read_text())
    secrets["state_poll"] = {"password": POLL_PASSWORD}
    secrets_path.write_text(yaml.safe_dump(secrets))
    wait_until(lambda: all(p["booted"] and p["registrations"] and p["registrations"][0]["working_server"]
                           for p in lab.status()["phones"]), 30, "every phone registered")
    return lab


def _controls(lab, **param_overrides):
    inv = inventory.load(lab.inventory)
    secrets = inventory.Secrets(inv)
    site = inv.sites[0]
    out = []
    for phone in site.phones:
        params = inv.effective_params(site, phone) | param_overrides
        out.append(phones.control(phones.PhoneAccess(phone, secrets.credentials(phone.credentials), params,
                                                     secrets.resolve_param)))
    return out


def _boots(lab) -> dict[str, int]:
    return {p["mac"]: p["boot_count"] for p in lab.status()["phones"]}


def test_lab_phones_are_uc40_soundpoints(lab):
    inv = inventory.load(lab.inventory)
    assert {(p.model, p.family.name) for p in inv.sites[0].phones} == {("SoundPoint IP 650", "uc-4.0")}
    assert [p.reboot_method for p in inv.sites[0].phones] == ["check-sync", "web"]


def test_state_polling_uses_its_own_digest_login(lab):
    assert [c.call_check().state for c in _controls(lab)] == ["idle", "idle"]
    wrong = _controls(lab, **{"apps.statePolling.password": "secret:phone_admin"})[0].call_check()
    # a refused login is told apart from "possibly in a call": waiting would not make it right (issue 19)
    assert wrong.state == "refused" and "401 after answering the challenge" in wrong.reason and not wrong.may_reboot
    assert "the apps.statePolling login" in wrong.reason, wrong


def test_the_lab_phone_answers_corpus_shapes(lab):
    """The virtual phone's web UI challenge and state polling answers are the corpus entries' (issue 16): the
    challenge exactly, the call state at both spellings of its path, in requestor mode (the lab's site files)."""
    import requests
    from requests.auth import HTTPDigestAuth

    from fleet.drivers.control import polling
    from soundpoint import conformance

    phone = inventory.load(lab.inventory).sites[0].phones[0]
    base = f"http://{phone.address}:{phone.http_port}"
    challenge = conformance.get("web-ui-challenge")
    bare = requests.post(base + "/form-submit/Reboot", timeout=5)
    assert (bare.status_code, bare.headers["WWW-Authenticate"], bare.text) == (
        challenge.status_code, challenge.answer["headers"]["WWW-Authenticate"], challenge.body)
    for path in ("/polling/callstateHandler", "/polling/callStateHandler"):
        resp = requests.get(base + path, auth=HTTPDigestAuth("poller", POLL_PASSWORD), timeout=5)
        assert resp.status_code == 200 and polling.parse_call_state(resp.content, path) is False, (path, resp.text)


def test_check_sync_to_a_phone_that_challenges_it_succeeds(lab):
    ctl = _controls(lab)[0]
    mac = ctl.phone.mac
    # without the phone's SIP credentials the challenge cannot be answered: refused (the inventory chose
    # check-sync for this phone, so there is no fallback), and the phone keeps running
    explicit = _controls(lab, **{"reg.1.auth.password": ""})[0]
    explicit.phone = explicit.phone.model_copy(update={"reboot": "check-sync"})
    with pytest.raises(DeviceRefused, match="challenged"):
        explicit.reboot()
    before = _boots(lab)[mac]
    t0 = time.time()
    assert ctl.reboot() == "sip check-sync"
    wait_until(lambda: _boots(lab)[mac] > before, 20, f"phone {mac} rebooted by check-sync")
    events = lab.status()["ground_truth"]["phones"][mac]["events"]
    assert any(e["kind"] == "check_sync_authenticated" and e["t"] >= t0 for e in events), events[-5:]


def test_uc40_phone_configured_for_web_reboot_is_rebooted_through_it(lab):
    ctl = _controls(lab)[1]
    mac = ctl.phone.mac
    wait_until(lambda: lab.status()["phones"][1]["booted"], 20, "phone booted")
    before = _boots(lab)[mac]
    t0 = time.time()
    assert ctl.reboot() == "web /form-submit/Reboot"
    wait_until(lambda: _boots(lab)[mac] > before, 20, f"phone {mac} rebooted through the web UI")
    events = lab.status()["ground_truth"]["phones"][mac]["events"]
    assert [e["data"].get("reason") for e in events if e["kind"] == "reboot" and e["t"] >= t0] == ["web"]


def test_uc40_falls_back_to_the_web_ui_when_check_sync_is_refused(lab):
    """No `reboot:` in the inventory and no SIP credentials to answer the challenge: the web UI reboots it."""
    ctl = _controls(lab, **{"reg.1.auth.password": ""})[0]
    mac = ctl.phone.mac
    wait_until(lambda: lab.status()["phones"][0]["booted"], 20, "phone booted")
    before = _boots(lab)[mac]
    how = ctl.reboot()
    assert how.startswith("web /form-submit/Reboot (check-sync refused: ") and "challenged" in how, how
    wait_until(lambda: _boots(lab)[mac] > before, 20, f"phone {mac} rebooted through the web UI fallback")


def test_push_mode_takes_the_state_the_phone_pushed_to_the_collector(lab, redis_url):
    """apps.statePolling.URL set and the response mode not requestor (0): the phone answers the poll with nothing
    and POSTs its state to the collector."""
    from fleet.evidence.collector import SiteCollector
    from fleet.state.store import Store

    inv = inventory.load(lab.inventory)
    site, phone = inv.sites[0], inv.sites[0].phones[0]
    wait_until(lambda: lab.status()["phones"][0]["booted"], 20, "phone booted")
    own = lab.state / f"boot-{site.name}" / f"{phone.mac}-reg.cfg"
    url = f"http://{site.collector.events}/state"
    push = {"apps.statePolling.URL": url, "apps.statePolling.responseMode": "1"}   # first in CONFIG_FILES: wins
    own.write_text(own.read_text().replace("<reg\n", "<reg\n" + "".join(f'  {k}="{v}"\n' for k, v in push.items()), 1))
    store = Store(redis_url)
    register_site(store, inv, site)
    collector = SiteCollector(site, store)
    collector.start()
    try:
        before = _boots(lab)[phone.mac]
        _controls(lab)[0].reboot()          # alwaysReboot=1: the phone re-reads its files
        wait_until(lambda: _boots(lab)[phone.mac] > before and lab.status()["phones"][0]["booted"], 20,
                   "phone rebooted into push mode")
        ctl = _controls(lab, **push)[0]
        ctl.access.store = store
        check = ctl.call_check()
        assert (check.state, check.reason) == ("idle", "pushed state")
        assert store.pushed_call_state(phone.mac)[1] > time.time() - 10
        # the same phone asked without a store to read pushes from: unknown, never idle
        assert _controls(lab, **push)[0].call_check().state == "unknown"
    finally:
        collector.stop()


def test_phone_whose_call_state_cannot_be_read_is_deferred_not_rebooted(lab, worker_factory, redis_url, tmp_path):
    """The inventory's state polling password is wrong: the phone may be in a call, so the rollout defers it."""
    wait_until(lambda: all(p["booted"] and p["registrations"][0]["working_server"] for p in lab.status()["phones"]),
               30, "every phone registered again")
    doc = yaml.safe_load(lab.inventory.read_text())
    doc["sites"][0]["params"]["apps.statePolling.password"] = "secret:phone_admin"
    bad = tmp_path / "inventory-bad-poll.yml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    worker_factory(bad, "hq")
    mac = doc["sites"][0]["phones"][0]["mac"]
    pb = tmp_path / "pb.yml"
    pb.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "deferred", "params": {"reg.1.server.1.expires": 12}, "targets": {"macs": [mac]},
        "strategy": {"canary": 1, "wave_size": 1, "max_unavailable": 1, "failure_budget": {"total": 0},
                     "progress_deadline": 12},
        "verify": {"registered_to": [1], "within": 20}, "rollback": True}))
    before = _boots(lab)[mac]
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(bad), "--json"], redis_url, timeout=120)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["status"] != "done", res.stdout + res.stderr[-2000:]
    status = run_fleet(["rollout", "status", out["id"], "--json"], redis_url)
    assert "deferred" in status.stdout and "401" in status.stdout, status.stdout[-2000:]
    assert _boots(lab)[mac] == before, "a phone whose call state is unknown must not be rebooted"

