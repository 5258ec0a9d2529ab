"""check-sync with alwaysReboot=0: verification by a registration after the push, and what it says about a reboot.

A check-sync with `voIpProt.SIP.specialEvent.checkSync.alwaysReboot=0` (the
default) reboots the phone only when a change needs it; UC Software applies
reg.x.* live. The push records that the reboot is optional, verification rests
on a registration since the push (as for a reboot), and the verified record
says whether a reboot was seen: a shutdown event after the push, none from a
phone that sends them, or not observable.
"""
from __future__ import annotations

import pytest

from fleet.rollout import policy as rp
from soundpoint import families

MAC = "0004f2000001"
LIMITS = rp.Limits(site_of={MAC: "hq"}, max_unavailable={"hq": 1}, budget_total=0, budget_per_site=None,
                   verify_within=30.0, registered_to=(1,))
SEEN = {MAC: {1: {"state": "registered", "t": 995.0}}}


def verifying(**extra) -> dict:
    return {MAC: {"state": "verifying", "reboot_at": "990", "attempt": "1", **extra}}


@pytest.mark.parametrize("extra,downs,applied", [
    ({"reboot_optional": "1", "reports_shutdown": "1"}, None, "without a reboot"),
    ({"reboot_optional": "1", "reports_shutdown": "1"}, {MAC: 980.0}, "without a reboot"),   # an older shutdown
    ({"reboot_optional": "1", "reports_shutdown": "1"}, {MAC: 992.0}, "after a reboot"),
    ({"reboot_optional": "1", "reports_shutdown": "0"}, None, "with or without a reboot (not observable"),
])
def test_a_phone_the_check_sync_need_not_reboot_is_verified_by_its_registration_and_says_how(extra, downs, applied):
    (action,) = rp.advance(verifying(**extra), SEEN, LIMITS, 1000.0, downs)
    assert action.kind == rp.VERIFIED
    assert action.fields["applied"].startswith(applied) and action.event["applied"] == action.fields["applied"]


def test_a_rebooted_phone_says_nothing_about_how_and_no_registration_means_no_verdict_yet():
    (action,) = rp.advance(verifying(), SEEN, LIMITS, 1000.0)
    assert action.kind == rp.VERIFIED and "applied" not in action.fields
    assert rp.advance(verifying(reboot_optional="1", reports_shutdown="1"), {}, LIMITS, 1000.0) == []


def test_the_push_records_an_optional_reboot_only_for_a_lone_check_sync_without_always_reboot():
    from fleet.phones.soundpoint import SoundPointControl

    control = SoundPointControl.__new__(SoundPointControl)
    assert control.may_stay_up(["check-sync"], {})
    assert control.may_stay_up(["check-sync"], {"voIpProt.SIP.specialEvent.checkSync.alwaysReboot": "0"})
    assert not control.may_stay_up(["check-sync"], {"voIpProt.SIP.specialEvent.checkSync.alwaysReboot": "1"})
    assert not control.may_stay_up(["check-sync", "web"], {})
    assert not control.may_stay_up(["rest"], {})


def test_uc_software_applies_reg_x_live_and_soundpoint_sip_firmware_does_not_say():
    for name in ("uc-4.0", "uc-5.x"):
        assert families.get(name).live_params
    for name in ("sip-2.x", "sip-3.x"):
        assert families.get(name).live_params == ""


# ---------------------------------------------------------------- the lab phone's answers to a check-sync NOTIFY
async def _notify_from(source_ip: str) -> int:
    from sipwire import message as sip
    from sipwire.endpoint import SipEndpoint, TransactionTimers
    from test_phone_family import PHONE_IP

    ep = await SipEndpoint.bind(source_ip, 0, name="sender")
    try:
        uri = f"sip:1001@{PHONE_IP}:5060"
        req = sip.make_request("NOTIFY", uri, local=ep.local, from_uri="sip:fleet@fleet.invalid", to_uri=uri,
                               call_id=sip.new_call_id(source_ip), cseq=1, from_tag=sip.new_tag(),
                               extra=[("Event", "check-sync"), ("Subscription-State", "terminated")])
        resp = await ep.request(req, (PHONE_IP, 5060), TransactionTimers(retry_timeout=0.2, retry_max_count=3))
        return resp.status
    finally:
        ep.close()


@pytest.mark.parametrize("method,event,from_server,from_other", [
    ("source", "", 200, 400), ("all", "", 401, 400), ("digest", "", 401, 401),
    ("source", "check-sync", 200, 400), ("source", "message-summary", 200, 200),   # only the events named
])
def test_a_check_sync_notify_is_validated_by_source_digest_or_both_and_only_for_the_events_named(
        method, event, from_server, from_other):
    import asyncio

    from sipwire.endpoint import SipEndpoint
    from hil.phone_types import UP
    from test_phone_family import PHONE_IP, SERVER1, STRANGER, TWO, phone

    params = TWO | {"voIpProt.SIP.requestValidation.1.request": "NOTIFY",
                    "voIpProt.SIP.requestValidation.1.method": method,
                    "reg.1.auth.password": "pw"}
    if event:
        params["voIpProt.SIP.requestValidation.1.request.1.event"] = event

    async def run() -> tuple[int, int]:
        p = phone("uc-4.0", params, model="SoundPoint IP 650")
        p.regs[0].servers[0].state = UP
        p.endpoint = await SipEndpoint.bind(PHONE_IP, 5060, p._on_sip_request, name="phone")
        try:
            return await _notify_from(SERVER1), await _notify_from(STRANGER)
        finally:
            p.endpoint.close()
            for t in list(p._tasks):
                t.cancel()

    assert asyncio.run(run()) == (from_server, from_other)
