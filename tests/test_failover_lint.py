"""The dry run's failover warnings (fleet.phoneconf.lint): set-ups a family cannot fail over with, named per phone."""
from __future__ import annotations

from fleet.phoneconf.lint import problems
from fleet.config.inventory import Inventory
from fleet.rollout.plan import plan
from fleet.rollout.playbook import RolloutPlaybook

BASE = {"reg.1.address": "1001", "reg.1.server.1.address": "voip.example", "reg.1.server.1.expires": "600",
        "reg.1.server.2.address": "10.0.0.1", "reg.1.server.2.expires": "600"}


def test_plain_two_server_set_up_on_sip3_has_no_warning():
    assert problems(BASE, "sip-3.x") == []


def test_uc5_phone_on_reregister_defaults_never_registers_with_server_2():
    found = problems(BASE, "uc-5.x")
    assert len(found) == 1 and "reRegisterOn=1" in found[0] and "server 2" in found[0]
    assert problems(BASE | {"reg.1.server.2.failOver.reRegisterOn": "1"}, "uc-5.x") == []


def test_outbound_proxy_used_for_the_fallback_is_flagged_until_useoutboundproxy_is_0():
    with_proxy = BASE | {"reg.1.outboundProxy.address": "sbc.voip.example"}
    found = problems(with_proxy, "sip-3.x")
    assert len(found) == 1 and "sbc.voip.example" in found[0] and "useOutboundProxy" in found[0]
    assert problems(with_proxy | {"reg.1.server.2.useOutboundProxy": "0"}, "sip-3.x") == []
    assert problems(BASE | {"voIpProt.SIP.outboundProxy.address": "sbc.voip.example"}, "sip-3.x")


def test_the_lan_gateway_as_outbound_proxy_for_the_provider_is_not_flagged():
    """The gateway (server 2) doubling as the phones' outbound proxy to the provider: with useOutboundProxy=0
    for server 2, or on a family without that switch, server 2's requests go to the gateway either way."""
    gateway_proxy = BASE | {"reg.1.outboundProxy.address": "10.0.0.1", "reg.1.outboundProxy.port": "5060"}
    assert problems(gateway_proxy | {"reg.1.server.2.useOutboundProxy": "0"}, "uc-4.0") == []
    assert problems(gateway_proxy, "sip-3.x") == []
    assert problems(BASE | {"voIpProt.SIP.outboundProxy.address": "10.0.0.1"}, "sip-2.x") == []
    # a third server elsewhere would still depend on the proxy
    third = gateway_proxy | {"reg.1.server.3.address": "backup.voip.example", "reg.1.server.3.expires": "600"}
    found = problems(third, "sip-3.x")
    assert len(found) == 1 and "fallback server 3 " in found[0], found


def test_invite_source_validation_accepts_every_configured_server_and_warns_only_about_dns_names():
    """The guides accept INVITEs from the set of configured registration servers, registered with or not (SIP 2.2
    guide A-14): server 2 rings the phone. A server given by DNS name is the risk: calls from another address of
    the provider are answered 400 Bad Request."""
    validated = BASE | {"voIpProt.SIP.requestValidation.1.request": "INVITE",
                        "voIpProt.SIP.requestValidation.1.method": "source"}
    found = problems(validated, "sip-3.x")
    assert len(found) == 1 and "requestValidation.1" in found[0] and "server 1 (voip.example)" in found[0], found
    assert "400 Bad Request" in found[0] and "server 2" not in found[0]
    for method in ("both", "all"):
        assert problems(validated | {"voIpProt.SIP.requestValidation.1.method": method}, "sip-2.x") == found
    assert problems(validated | {"voIpProt.SIP.requestValidation.1.method": "digest"}, "sip-3.x") == []
    by_address = validated | {"reg.1.server.1.address": "192.0.2.10"}
    assert problems(by_address, "sip-3.x") == []      # two servers by address: every call they send is accepted


def test_a_phone_without_a_fallback_is_not_warned_about():
    assert problems({"reg.1.address": "1001", "reg.1.server.1.address": "voip.example"}, "uc-5.x") == []


def test_the_rollout_plan_carries_the_warnings_of_each_phone():
    inv = Inventory.model_validate({"name": "t", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/tftp/"}, "params": BASE,
        "phones": [{"mac": "0004f2000001", "model": "VVX 410", "firmware_family": "uc-5.x", "address": "10.0.1.1",
                    "credentials": "admin"},
                   {"mac": "0004f2000002", "model": "SoundPoint IP 650", "firmware_family": "sip-3.x",
                    "address": "10.0.1.2", "credentials": "admin"}]}]})
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"}})
    p = plan(inv, pb, "r")
    warnings = {ph.mac: ph.warnings for ph in p.phones}
    # the SoundPoint's state polling is in neither mode (no responseMode 0, no URL): its call checks cannot answer
    assert len(warnings["0004f2000002"]) == 1 and "apps.statePolling.responseMode=0" in warnings["0004f2000002"][0]
    inv.sites[0].phones[1].params["apps.statePolling.responseMode"] = "0"
    p = plan(inv, pb, "r")
    warnings = {ph.mac: ph.warnings for ph in p.phones}
    assert len(warnings["0004f2000001"]) == 1 and "reRegisterOn" in warnings["0004f2000001"][0]
    assert warnings["0004f2000002"] == []
    assert p.to_dict(refs=False)["phones"][0]["warnings"] == warnings[p.phones[0].mac]


# ---------------------------------------------------------------- phones whose family cannot report call state
def _mixed_inventory() -> Inventory:
    return Inventory.model_validate({"name": "t", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///srv/tftp/"}, "params": BASE,
        "phones": [{"mac": "0004f2000011", "model": "SoundPoint IP 500", "firmware_family": "sip-2.x",
                    "address": "10.0.1.11", "credentials": "admin"},
                   {"mac": "0004f2000012", "model": "SoundPoint IP 650", "firmware_family": "sip-3.x",
                    "address": "10.0.1.12", "credentials": "admin",
                    "params": {"apps.statePolling.responseMode": "0"}}]}]})


def _plan(**strategy):
    pb = RolloutPlaybook.model_validate({"kind": "rollout", "name": "t", "params": {"reg.1.label": "x"},
                                         "strategy": strategy})
    return {ph.mac: ph for ph in plan(_mixed_inventory(), pb, "r").phones}


def test_a_sip2_phone_is_announced_as_deferred_unless_the_playbook_allows_an_unchecked_reboot():
    default = _plan()
    assert any("cannot report its call state" in w for w in default["0004f2000011"].warnings)
    assert not default["0004f2000011"].unchecked_reboot
    allowed = _plan(reboot_without_call_check=True)
    assert allowed["0004f2000011"].unchecked_reboot and not allowed["0004f2000011"].warnings
    # a family that can report its call state is always checked, whatever the playbook says
    assert not allowed["0004f2000012"].unchecked_reboot and not default["0004f2000012"].warnings


def test_the_worker_honours_an_unchecked_reboot_only_for_a_family_that_cannot_report_call_state():
    import json

    from fleet.rollout import record_check as plan_check

    inv = _mixed_inventory()
    for mac, expected in (("0004f2000011", True), ("0004f2000012", False)):   # the second one is forged
        entry = {"mac": mac, "site": "a", "params": {"reg.1.label": "x"}, "config_hash": "0" * 16,
                 "unchecked_reboot": True}
        checked = plan_check.check(inv, "r", mac, {"plan": json.dumps(entry), "attempt": "1"})
        assert checked.unchecked_reboot is expected, mac
