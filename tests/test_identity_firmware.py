"""A firmware mismatch is reported whichever interface reads the identity (issue 16, review point 2).

The REST path compared device/info's version with the inventory's `firmware_version`; state polling's
`AppLoadID` (SIP 3.x, UC Software 4.0, UC Software 5.0-5.3) was shown but never compared, so a phone listed 5.3
that runs 5.8 probed as fine. In push mode the phone's answer carries nothing, and the Identity says so.
"""
from __future__ import annotations

import pytest

from fleet import phones
from fleet.config.inventory import Phone
from soundpoint import conformance
from test_phone_identity import (ADMIN, DEVICE_XML, MAC, POLL_PARAMS, POLL_PASSWORD, POLL_USER, Route, _resolve,  # noqa: F401
                                 fake_phone)

POLL_LOGIN = (POLL_USER, POLL_PASSWORD)


def _identify(family: str, model: str, version: str | None, port: int, params: dict | None = None) -> phones.Identity:
    phone = Phone(mac=MAC, model=model, address="127.0.0.1", http_port=port, credentials="phone_admin",
                  firmware_family=family, http_auth="digest", **({"firmware_version": version} if version else {}))
    return phones.control(phones.PhoneAccess(phone, ADMIN, dict(params or POLL_PARAMS), _resolve)).identify(2.0)


def _device(app_load_id: str) -> bytes:
    """The corpus device handler answer (polling-device-requestor) naming another application version."""
    body = conformance.get("polling-device-requestor").body
    start, end = body.index("<AppLoadID>") + len("<AppLoadID>"), body.index("</AppLoadID>")
    return (body[:start] + app_load_id + body[end:]).replace("0004f214b8e7", MAC).replace(
        "0004F214B8E7", MAC.upper()).encode()


@pytest.mark.parametrize("family,model,listed,running,matches", [
    ("sip-3.x", "SoundPoint IP 650", "3.2", "3.2.3.1734", True),
    ("sip-3.x", "SoundPoint IP 650", "3.1.0", "3.2.3.1734", False),
    ("uc-4.0", "SoundPoint IP 650", "4.0.1", "4.0.1.18754 27-Feb-11 20:07", True),
    ("uc-4.0", "SoundPoint IP 650", "4.0.2", "4.0.1.18754 27-Feb-11 20:07", False),
    ("uc-5.x", "VVX 410", "5.3.0", "5.3.0.1234", True),
    ("uc-5.x", "VVX 410", "5.3", "5.8.0.12386", False),
    ("uc-4.0", "SoundPoint IP 650", "4.0.1", "unknown", False),
])
def test_state_polling_identity_compares_the_firmware_with_the_inventory(family, model, listed, running, matches,
                                                                          fake_phone):
    fake = fake_phone({"/polling/deviceHandler": Route(_device(running), login=POLL_LOGIN)})
    found = _identify(family, model, listed, fake.port)
    assert "state polling GET /polling/deviceHandler" in found.method, found
    if matches:
        assert found.ok and running in found.detail, found
    else:
        assert found.problem == "error-status", found
        assert f"firmware mismatch, the inventory says {listed}" in found.detail and running in found.detail, found
    assert [p for _, p, _ in fake.requests if p.startswith("/api/")] == [], "no REST asked below 5.4"


def test_no_listed_version_is_not_compared(fake_phone):
    fake = fake_phone({"/polling/deviceHandler": Route(DEVICE_XML, login=POLL_LOGIN)})
    found = _identify("sip-3.x", "SoundPoint IP 650", None, fake.port)
    assert found.ok and "mismatch" not in found.detail, found


def test_push_mode_says_the_firmware_was_not_checked(fake_phone):
    """The answer goes to apps.statePolling.URL: nothing to compare, and the report says so instead of "fine"."""
    fake = fake_phone({"/polling/deviceHandler": Route(b"", login=POLL_LOGIN)})
    found = _identify("uc-5.x", "VVX 410", "5.3.0", fake.port,
                      POLL_PARAMS | {"apps.statePolling.URL": "http://127.0.0.1:9/state"})
    assert found.ok and "not read here" in found.detail, found
    assert "nor its firmware checked against the inventory's 5.3.0" in found.detail, found
