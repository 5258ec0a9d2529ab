"""State polling, telephone notification events and the web UI against the conformance corpus (areas `polling`,
`notification`, `web-ui`; issue 16): every entry of each area goes through the parser that reads it, and the
controls are asked against a fake phone on loopback that answers corpus bodies. Unit tests: no lab, no Redis.
"""
from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from fleet import phones
from fleet.evidence.sources.formats import parse_line_event
from fleet.drivers.control import polling, web_ui
from fleet.drivers.errors import AuthRefused, MalformedAnswer
from fleet.state.observe import REGISTERED, UNREGISTERED
from hil.phone_events import Reporting
from soundpoint import conformance, families
from test_phone_identity import ADMIN, POLL_PARAMS, POLL_PASSWORD, POLL_USER, Route, _phone, _resolve, fake_phone  # noqa: F401

NAME = "phone under test"

# what each polling entry's body says to its reader: True/False in a call, a dict for the device handler,
# an exception for a body that carries no state
POLLING_EXPECTED = {
    "polling-callstate-requestor-idle": False,
    "polling-callstate-requestor-active": True,
    "polling-callstate-sip31-connected": True,
    "polling-callstate-push-post": False,
    "polling-callstate-path-camelcase": False,
    "polling-callstate-push-answer": MalformedAnswer,
    "polling-callstate-nothing-sent": MalformedAnswer,
    "polling-auth-digest-challenge": MalformedAnswer,
    "polling-redirect": MalformedAnswer,
    "polling-device-requestor": {"MACAddress": "0004f214b8e7", "ModelNumber": "SoundPoint IP 650",
                                 "AppLoadID": "4.0.1.18754 27-Feb-11 20:07", "BootROMID": "5.0.0.11646"},
}
NOTIFICATION_EXPECTED = {
    "notification-line-registration": REGISTERED,
    "notification-line-registration-bare": REGISTERED,
    "notification-line-unregistration": UNREGISTERED,
    "notification-incoming-call": None,
    "notification-call-state-change": None,
}
WEB_LOGIN_PAGE = {"web-ui-login-page": True, "web-ui-challenge": False, "web-ui-reboot-accepted": False,
                  "web-ui-home": False, "web-ui-redirect": False}


def _ids(area: str) -> list[str]:
    return [e.id for e in conformance.select(area=area)]


def test_every_entry_of_the_areas_has_an_expected_reading():
    """A new entry must say here what its reader makes of it."""
    assert set(_ids("polling")) == set(POLLING_EXPECTED)
    assert set(_ids("notification")) == set(NOTIFICATION_EXPECTED)
    assert set(_ids("web-ui")) == set(WEB_LOGIN_PAGE)


@pytest.mark.parametrize("entry_id", _ids("polling"))
def test_polling_parsers_read_every_polling_entry(entry_id):
    entry, expected = conformance.get(entry_id), POLLING_EXPECTED[entry_id]
    body = entry.body.encode()
    parse = polling.parse_device_information if "DeviceInformation" in entry.body else polling.parse_call_state
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse(body, NAME)
    else:
        assert parse(body, NAME) == expected


def test_the_sip31_guides_connected_line_state_is_a_call():
    """SIP 3.1 developer's guide p. 2-29: LineState Connected. Refused as malformed before."""
    assert polling.parse_call_state(conformance.get("polling-callstate-sip31-connected").body.encode(), NAME) is True


@pytest.mark.parametrize("state", ["Ringing", "", "active"])
def test_a_line_state_no_source_allows_fails_closed_naming_it(state):
    body = f"<PolycomIPPhone><CallLineInfo><LineKeyNum>1</LineKeyNum><LineState>{state}</LineState></CallLineInfo></PolycomIPPhone>"
    with pytest.raises(MalformedAnswer, match=f"LineState '{state}' of line 1"):
        polling.parse_call_state(body.encode(), NAME)


@pytest.mark.parametrize("body", [b"<!DOCTYPE x [<!ENTITY a 'b'>]><PolycomIPPhone/>", b"<x/>" * 20000, b"<PolycomIPPhone/>"])
def test_hostile_or_empty_call_state_documents_are_malformed(body):
    with pytest.raises(MalformedAnswer):
        polling.parse_call_state(body, NAME)


@pytest.mark.parametrize("entry_id", _ids("notification"))
def test_event_parser_reads_every_notification_entry(entry_id):
    obs = parse_line_event(conformance.get(entry_id).body.encode(), 5.0)
    expected = NOTIFICATION_EXPECTED[entry_id]
    if expected is None:
        assert obs is None
    else:
        assert (obs.mac, obs.reg, obs.state, obs.t) == ("0004f214b8e7", 1, expected, 5.0)


@pytest.mark.parametrize("entry_id", _ids("web-ui"))
def test_login_page_detection_over_every_web_ui_entry(entry_id):
    entry = conformance.get(entry_id)
    assert web_ui.is_login_page(entry.body.encode()) is WEB_LOGIN_PAGE[entry_id]


# ------------------------------------------------------------------ response mode and the catalogue
@pytest.mark.parametrize("params,mode", [
    ({}, "none"),
    ({"apps.statePolling.responseMode": "0"}, "requestor"),
    ({"apps.statePolling.responseMode": "0", "apps.statePolling.URL": "http://c:8514/state"}, "requestor"),
    ({"apps.statePolling.URL": "http://c:8514/state"}, "push"),
    ({"apps.statePolling.responseMode": "1", "apps.statePolling.URL": "http://c:8514/state"}, "push"),
    ({"apps.statePolling.responseMode": "1"}, "none"),
])
def test_response_mode_from_the_parameters(params, mode):
    assert polling.response_mode(params) == mode


@pytest.mark.parametrize("family", ["sip-3.x", "uc-4.0", "uc-5.x"])
def test_the_catalogue_knows_the_response_mode(family):
    fam = families.get(family)
    fam.check("apps.statePolling.responseMode", "0")
    fam.check("apps.statePolling.responseMode", "1")
    with pytest.raises(families.ParameterError):
        fam.check("apps.statePolling.responseMode", "requestor")


# ------------------------------------------------------------------ the controls against a fake phone
def _control(family: str, port: int, params: dict[str, str]):
    return phones.control(phones.PhoneAccess(_phone(family, port), ADMIN, dict(params), _resolve))


REQUESTOR = POLL_PARAMS | {"apps.statePolling.responseMode": "0"}


@pytest.mark.parametrize("family", ["sip-3.x", "uc-4.0"])
def test_requestor_mode_reads_the_answer_at_the_public_clients_path(family, fake_phone):
    """The state comes back in the answer, from /polling/callstateHandler as Posh-UCS requests it."""
    body = conformance.get("polling-callstate-requestor-active").body.encode()
    fake = fake_phone({"/polling/callstateHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    check = _control(family, fake.port, REQUESTOR).call_check()
    assert (check.state, check.reason) == ("in-call", "state polling, requestor mode"), check
    assert [p for _, p, _ in fake.requests] == ["/polling/callstateHandler"] * 2      # challenge, answer


def test_requestor_mode_wins_over_a_push_url(fake_phone):
    """responseMode 0 with a URL set: the phone answers in the response, nothing is pushed to wait for."""
    body = conformance.get("polling-callstate-requestor-idle").body.encode()
    fake = fake_phone({"/polling/callstateHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    check = _control("uc-4.0", fake.port, REQUESTOR | {"apps.statePolling.URL": "http://127.0.0.1:9/state"}).call_check()
    assert check.state == "idle", check


def test_neither_mode_is_unknown_without_asking(fake_phone):
    """No responseMode 0 and no URL: the phone sends its state nowhere, so the check says so and asks nothing."""
    body = conformance.get("polling-callstate-requestor-idle").body.encode()
    fake = fake_phone({"/polling/callstateHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    check = _control("sip-3.x", fake.port, POLL_PARAMS).call_check()
    assert check.state == "unknown" and "apps.statePolling.responseMode=0" in check.reason, check
    assert fake.requests == []


def test_an_empty_answer_in_requestor_mode_says_which_mode_answers(fake_phone):
    fake = fake_phone({"/polling/callstateHandler": Route(b"", login=(POLL_USER, POLL_PASSWORD))})
    check = _control("uc-4.0", fake.port, REQUESTOR).call_check()
    assert check.state == "unknown" and "requestor mode" in check.reason, check


def test_an_unknown_line_state_is_unknown_with_the_value(fake_phone):
    body = b"<PolycomIPPhone><CallLineInfo><LineKeyNum>1</LineKeyNum><LineState>Ringing</LineState></CallLineInfo></PolycomIPPhone>"
    fake = fake_phone({"/polling/callstateHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    check = _control("sip-3.x", fake.port, REQUESTOR).call_check()
    assert check.state == "unknown" and "'Ringing'" in check.reason and not check.may_reboot, check


# ------------------------------------------------------------------ web UI reboot
def _basic() -> str:
    return "Basic " + base64.b64encode(f"{ADMIN.username}:{ADMIN.password}".encode()).decode()


def test_web_reboot_sends_basic_first_and_takes_the_corpus_answer(fake_phone):
    entry = conformance.get("web-ui-reboot-accepted")
    fake = fake_phone({web_ui.REBOOT_PATH: Route(entry.body.encode(), status=entry.status_code, scheme="basic",
                                                 realm="SPIP Configuration")})
    web_ui.reboot(_phone("uc-4.0", fake.port), ADMIN)
    assert fake.requests == [("POST", web_ui.REBOOT_PATH, "Basic")]


def test_a_login_page_with_200_is_not_a_reboot(fake_phone):
    """A web UI that did not take the login answers its login page with 200: refused, never counted as sent."""
    entry = conformance.get("web-ui-login-page")
    fake = fake_phone({web_ui.REBOOT_PATH: Route(entry.body.encode(), scheme="none", content_type="text/html")})
    with pytest.raises(AuthRefused, match="login page"):
        web_ui.reboot(_phone("uc-4.0", fake.port), ADMIN)
    ctl = _control("uc-4.0", fake.port, {})
    ctl.phone = ctl.phone.model_copy(update={"reboot": "web"})
    with pytest.raises(AuthRefused, match="not rebooted"):
        ctl.reboot()


def test_a_wrong_basic_login_gets_the_challenge_and_is_refused(fake_phone):
    fake = fake_phone({web_ui.REBOOT_PATH: Route(b"", scheme="basic", login=("Polycom", "other"),
                                                 realm="SPIP Configuration")})
    with pytest.raises(AuthRefused, match="401"):
        web_ui.reboot(_phone("uc-4.0", fake.port), ADMIN)
    assert fake.requests == [("POST", web_ui.REBOOT_PATH, "Basic")]     # one try, no digest to a Basic realm


def test_a_digest_web_ui_gets_digest_after_the_basic_try(fake_phone):
    fake = fake_phone({web_ui.REBOOT_PATH: Route(b"", scheme="digest")})
    web_ui.reboot(_phone("uc-4.0", fake.port), ADMIN)
    assert [a for _, _, a in fake.requests] == ["Basic", "Digest"]


# ------------------------------------------------------------------ the lab's syslog and corpus answers
class _Phone(Reporting):
    def __init__(self, params: dict[str, str]) -> None:
        self.params = params


@pytest.mark.parametrize("params,target", [
    ({"device.syslog.serverName": "10.0.0.5:5514"}, None),
    ({"device.syslog.serverName": "10.0.0.5:5514", "device.set": "1"}, None),
    ({"device.syslog.serverName": "10.0.0.5:5514", "device.syslog.serverName.set": "1"}, None),
    ({"device.syslog.serverName": "10.0.0.5:5514", "device.set": "1", "device.syslog.serverName.set": "1"},
     ("10.0.0.5", 5514)),
])
def test_the_virtual_phones_syslog_needs_device_set(params, target):
    """device.* applies only with device.set=1 (and its own .set): without them the virtual phone sends no syslog."""
    assert _Phone(params)._syslog_target() == target


def test_the_labs_site_files_switch_syslog_and_requestor_mode_on():
    """The lab's site.cfg (and the inventory it exports) turn device.* on for syslog and put polling in requestor
    mode; a lab file's own site parameters still win."""
    from hil.lab import Lab

    lab = SimpleNamespace(server_params=lambda k, site: {}, spec=SimpleNamespace(timing=SimpleNamespace(log_upload_period=60)))
    site = SimpleNamespace(collector=SimpleNamespace(syslog="10.0.0.5:5514", events="10.0.0.5:8514"),
                           params={"apps.statePolling.responseMode": "1"})
    params = Lab.site_params(lab, 1, site)
    assert (params["device.set"], params["device.syslog.serverName.set"]) == ("1", "1")
    assert params["apps.statePolling.responseMode"] == "1"
    site.params = {}
    assert Lab.site_params(lab, 1, site)["apps.statePolling.responseMode"] == "0"


def test_the_lab_renders_polling_and_events_from_the_corpus():
    from hil import phone_reports as reports

    doc = reports.polling_call_state({1: ("1001", False), 2: ("1002", True)})
    assert polling.parse_call_state(doc, NAME) is True
    assert polling.parse_call_state(reports.polling_call_state({1: ("1001", False)}), NAME) is False
    info = polling.parse_device_information(reports.polling_device("0004F2000001", "SoundPoint IP 650", "4.0.1", {1: "1001"}), NAME)
    assert info == {"MACAddress": "0004F2000001", "ModelNumber": "SoundPoint IP 650", "AppLoadID": "4.0.1", "BootROMID": "4.0.1"}
    obs = parse_line_event(reports.line_event("LineUnregistrationEvent", "0004f2000001", "10.0.0.5", 2), 1.0)
    assert (obs.mac, obs.reg, obs.state) == ("0004f2000001", 2, UNREGISTERED)
    assert reports.web_answer("web-ui-challenge") == (401, {"WWW-Authenticate": 'Basic realm="SPIP Configuration"'}, "")


def test_a_push_mode_phone_that_answers_in_the_response_is_read_there(fake_phone):
    """URL set but the phone answers the poll with its state (its response mode is not what the inventory says):
    that answer is the state; nothing is waited for."""
    body = conformance.get("polling-callstate-requestor-active").body.encode()
    fake = fake_phone({"/polling/callstateHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    ctl = _control("uc-4.0", fake.port, POLL_PARAMS | {"apps.statePolling.URL": "http://127.0.0.1:9/state"})
    ctl.access.store = SimpleNamespace(pushed_call_state=lambda mac: None)
    check = ctl.call_check()
    assert (check.state, check.reason) == ("in-call", "answered in the response, not pushed"), check


@pytest.mark.parametrize("params,problem", [
    ({}, "apps.statePolling.responseMode=0"),
    ({"apps.statePolling.responseMode": "0"}, None),
    ({"apps.statePolling.URL": "http://10.0.0.5:8514/state"}, None),
    ({"apps.statePolling.URL": "http://10.0.0.9:80/other"}, "not to this site's collector"),
])
def test_the_plan_names_a_polling_set_up_call_checks_cannot_read(params, problem):
    found = polling.mode_problems(params, "10.0.0.5:8514")
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


# ---------------------------------------------------------------- push mode as the default where a collector listens
def _site_inventory(events: str | None, site_params: dict | None = None, phone_params: dict | None = None):
    """One site with a phone of every family, its collector's events address given (None: the default wildcard);
    `phone_params` go to the state-polling phones (a family without the parameters refuses them)."""
    from fleet.config.inventory import Inventory

    models = {"sip-2.x": "SoundPoint IP 500", "sip-3.x": "SoundPoint IP 650", "uc-4.0": "SoundPoint IP 650",
              "uc-5.x": "VVX 410"}
    return Inventory.model_validate({"name": "t", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/tftp/"}, "params": site_params or {},
        **({"collector": {"syslog": "10.0.0.5:514", "events": events}} if events else {}),
        "phones": [{"mac": f"0004f20000{i:02x}", "model": model, "firmware_family": family, "address": f"10.0.1.{i + 1}",
                    "credentials": "admin", "params": (phone_params or {}) if family in ("sip-3.x", "uc-4.0") else {}}
                   for i, (family, model) in enumerate(models.items())]}]})


def _params_by_family(inv) -> dict[str, dict[str, str]]:
    site = inv.sites[0]
    return {p.family.name: inv.effective_params(site, p) for p in site.phones}


def test_state_polling_pushes_to_the_site_collector_by_default():
    """No layer sets a response mode or a URL, and the site's collector listens on an address: SIP 3.x and UC
    Software 4.0 phones push to its /state (their state otherwise goes nowhere); a plan has nothing to warn about and
    a call check reads what was pushed. SIP 2.x (no state polling) and UC Software 5 (REST) get nothing."""
    from fleet.rollout.plan import plan
    from fleet.rollout.playbook import RolloutPlaybook

    inv = _site_inventory("10.0.0.5:8514")
    params = _params_by_family(inv)
    push = {"apps.statePolling.URL": "http://10.0.0.5:8514/state", "apps.statePolling.responseMode": "1"}
    for family in ("sip-3.x", "uc-4.0"):
        assert {k: params[family].get(k) for k in push} == push, family
        assert polling.response_mode(params[family]) == "push"
        assert polling.mode_problems(params[family], "10.0.0.5:8514") == []
    for family in ("sip-2.x", "uc-5.x"):
        assert not any(k.startswith("apps.statePolling.") for k in params[family]), family
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"}})
    pushed = {p.mac: p.params for p in plan(inv, pb, "r").phones}
    assert all(pushed[p.mac]["apps.statePolling.URL"] == push["apps.statePolling.URL"] for p in inv.sites[0].phones
               if p.family.name in ("sip-3.x", "uc-4.0"))


@pytest.mark.parametrize("events,site_params,phone_params,mode", [
    (None, {}, {}, "none"),                                                       # a wildcard bind names no host
    ("10.0.0.5:8514", {"apps.statePolling.responseMode": "0"}, {}, "requestor"),  # the lab's sites, chosen
    ("10.0.0.5:8514", {}, {"apps.statePolling.responseMode": "0"}, "requestor"),
    ("10.0.0.5:8514", {}, {"apps.statePolling.URL": "http://10.0.0.9/state"}, "push"),
])
def test_a_chosen_mode_or_a_wildcard_collector_keeps_the_parameters_as_written(events, site_params, phone_params, mode):
    """The default fills only a gap: whatever a layer sets is kept, so existing configurations (and their config
    hashes) do not change; without a reachable collector address nothing is guessed and the plan still warns."""
    from fleet.rollout.plan import config_hash

    inv = _site_inventory(events, site_params, phone_params)
    site = inv.sites[0]
    for phone in site.phones:
        written = {k: str(v) for layer in (inv.params, site.params, phone.params) for k, v in layer.items()}
        params = inv.effective_params(site, phone)
        assert params == written and config_hash(params) == config_hash(written), phone.family.name
        if phone.family.call_state_source == families.STATE_POLLING:
            assert polling.response_mode(params) == mode
    if mode == "none":
        sip3 = next(p for p in site.phones if p.family.name == "sip-3.x")
        assert "apps.statePolling.responseMode=0" in polling.mode_problems(inv.effective_params(site, sip3),
                                                                             site.collector.events)[0]
