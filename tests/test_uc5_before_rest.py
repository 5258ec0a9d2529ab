"""UC Software 5.0-5.3 (no REST API before 5.4) on a real site: call state through state polling in push mode.

The family's interfaces say "REST", the phone's firmware version says "not yet": every place that chooses between
REST and state polling decides by the version (fleet.drivers.control.rest.uses_rest), so a 5.3 phone gets the
push-mode default, the collector polls it in its own mode (not requestor), and a REST-family phone listed without
a version that answers lineInfo with 404 is polled by state polling from then on, saying why.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fleet import phones
from fleet.evidence.collector import SiteCollector
from fleet.evidence.sources.poller import Poller
from fleet.drivers.control import polling
from fleet.config.inventory import Credentials, Inventory
from fleet.state.store import Store
from soundpoint import conformance
from test_phone_identity import ADMIN, POLL_PARAMS, POLL_PASSWORD, POLL_USER, Route, _resolve, fake_phone  # noqa: F401

MAC = "0004f2e5e3e0"
PUSH = {"apps.statePolling.URL": "http://10.0.0.5:8514/state", "apps.statePolling.responseMode": "1"}


def _inventory(version: str | None, port: int = 80) -> Inventory:
    """One site with a collector at 10.0.0.5 and one VVX 410 (UC Software 5), its version as given."""
    phone = {"mac": MAC, "model": "VVX 410", "firmware_family": "uc-5.x", "address": "127.0.0.1", "http_port": port,
             "credentials": "admin", "params": dict(POLL_PARAMS)}
    if version:
        phone["firmware_version"] = version
    return Inventory.model_validate({"name": "t", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/tftp/"},
        "collector": {"syslog": "10.0.0.5:514", "events": "10.0.0.5:8514"}, "phones": [phone]}]})


def _params(inv: Inventory) -> dict[str, str]:
    site = inv.sites[0]
    return inv.effective_params(site, site.phones[0])


@pytest.mark.parametrize("version,pushed", [("5.3.0", True), ("5.0.2", True), ("5.4.0", False), ("5.8.0", False),
                                            (None, False)])
def test_a_phone_below_54_pushes_its_state_to_the_collector_by_default(version, pushed):
    """Below 5.4 call checks read state polling, so the phone gets the push default SIP 3.x and UC 4.0 get; a REST
    phone (5.4 and later, or no version listed: REST is tried) gets nothing."""
    params = _params(_inventory(version))
    assert ({k: params.get(k) for k in PUSH} == PUSH) is pushed, params
    assert polling.response_mode(params) == ("push" if pushed else "none")


def test_the_plan_warns_about_a_53_phone_whose_state_goes_nowhere():
    """A 5.3 phone whose site sets a push URL other than the collector's is named in the plan, as a SIP 3.x one is."""
    from fleet.rollout.plan import plan
    from fleet.rollout.playbook import RolloutPlaybook

    inv = _inventory("5.3.0")
    object.__setattr__(inv.sites[0].phones[0], "params", POLL_PARAMS | {"apps.statePolling.URL": "http://10.9.9.9/s"})
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"}})
    warnings = plan(inv, pb, "r").phones[0].warnings
    assert any("10.9.9.9" in w or "collector" in w for w in warnings), warnings


def test_the_collector_polls_a_53_phone_in_push_mode():
    """Not requestor: a push-mode phone answers the device handler with an empty body, which requestor reads as
    malformed."""
    inv = _inventory("5.3.0")
    collector = SiteCollector(inv.sites[0], None, None, inv)     # not started: only its poll set-up is asked
    assert collector._poll_modes()[MAC] == "push"


def test_a_53_phone_in_push_mode_is_polled_without_reading_an_answer(fake_phone):
    """The push-mode phone answers both handlers with nothing (its state goes to the URL): the poll is an ok round
    that only made it push, asked at the public clients' path with the polling login."""
    fake = fake_phone({"/polling/callstateHandler": Route(b"", login=(POLL_USER, POLL_PASSWORD)),
                       "/polling/deviceHandler": Route(b"", login=(POLL_USER, POLL_PASSWORD))})
    inv = _inventory("5.3.0", fake.port)
    collector = SiteCollector(inv.sites[0], None, None, inv)
    phone = inv.sites[0].phones[0]

    async def poll():
        async with Poller(timeout=3) as poller:
            return await poller.poll([(phone, Credentials(POLL_USER, POLL_PASSWORD))], collector._poll_modes())

    (found,) = asyncio.run(poll())
    assert found.ok and found.error == "" and found.no_rest == "", found
    assert [p for _, p, _ in fake.requests] == ["/polling/callstateHandler"] * 2, fake.requests


def test_a_53_phones_call_check_reads_the_pushed_state(fake_phone, redis_url):
    """The control asks the phone (which then pushes) and takes the state the collector stored; before, the phone's
    mode was `none` and every check said unknown, deferring the phone until the deadline."""
    fake = fake_phone({"/polling/callstateHandler": Route(b"", login=(POLL_USER, POLL_PASSWORD))})
    inv = _inventory("5.3.0", fake.port)
    store = Store(redis_url)
    store.r.delete(f"phone:{MAC}")

    def collector_gets_the_push():   # what fleet.evidence.collector._state_push records when the phone POSTs
        deadline = time.monotonic() + 5
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)
        store.record_pushed_call_state(MAC, True, time.time())

    threading.Thread(target=collector_gets_the_push, daemon=True).start()
    access = phones.PhoneAccess(inv.sites[0].phones[0], ADMIN, _params(inv), _resolve, store=store)
    check = phones.control(access).call_check()
    assert check.state == "in-call" and "state polling used" in check.reason and "pushed" in check.reason, check
    assert "5.3.0" in check.reason, check


def test_a_rest_phone_listed_without_a_version_that_has_no_rest_is_polled_by_state_polling(fake_phone):
    """lineInfo answers 404 (no REST API): the poller says why and reads state polling in the same round, with the
    polling login; later rounds do not ask REST again."""
    idle = conformance.get("polling-callstate-requestor-idle").body.encode()
    device = conformance.get("polling-device-requestor").body.encode()
    fake = fake_phone({"/polling/callstateHandler": Route(idle, login=(POLL_USER, POLL_PASSWORD)),
                       "/polling/deviceHandler": Route(device, login=(POLL_USER, POLL_PASSWORD))})
    inv = _inventory(None, fake.port)
    phone = inv.sites[0].phones[0]

    async def two_rounds():
        async with Poller(timeout=3, polling_login=lambda p: Credentials(POLL_USER, POLL_PASSWORD)) as poller:
            first = await poller.poll([(phone, ADMIN)], {MAC: "requestor"})
            second = await poller.poll([(phone, ADMIN)], {MAC: "requestor"})
            return first + second

    first, second = asyncio.run(two_rounds())
    for found in (first, second):
        assert found.ok and found.in_call is False, (found, fake.requests)
        assert "lineInfo answered HTTP 404" in found.no_rest and "state polling" in found.no_rest, found
    assert [p for _, p, _ in fake.requests].count("/api/v1/mgmt/lineInfo") == 1, fake.requests
