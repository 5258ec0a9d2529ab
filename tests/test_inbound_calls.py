"""Calls into a phone (issue 21, point 4), one layer at a time: the virtual phone's INVITE decision from its
configuration, fleet's reading of what each gateway platform prints (every corpus entry), the sentence that names
why a phone missed the call, and the playbook step's checks. The whole path runs in test_inbound_lab.py."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from fleet.config.inventory import load as load_inventory
from fleet.experiment import inbound_answers as ia
from fleet.experiment import playbook as experiment_playbook
from fleet.experiment.inbound_answers import InboundAnswer
from fleet.experiment.inbound_why import why_missed
from hil.groundtruth import GroundTruth
from hil.phone import VirtualPhone
from hil.phone_types import DOWN, UP, PhoneSpec
from sipwire import message as sip
from soundpoint import conformance
from soundpoint.yamlfile import FileError

PHONE_IP, SERVER1, SERVER2, STRANGER = "127.46.10.2", "127.46.10.1", "127.46.10.9", "127.46.10.77"
TWO = {"reg.1.address": "1001", "reg.1.server.1.address": SERVER1, "reg.1.server.2.address": SERVER2}
BY_SOURCE = {"voIpProt.SIP.requestValidation.1.request": "INVITE", "voIpProt.SIP.requestValidation.1.method": "source"}
ONLY_REGISTERED = {f"reg.1.server.2.failOver.{k}": "1" for k in ("onlySignalWithRegistered", "reRegisterOn",
                                                                  "failRegistrationOn")}


def phone(params: dict, family: str = "uc-5.x", reading: str = "configured") -> VirtualPhone:
    p = VirtualPhone(PhoneSpec(mac="0004f2090a01", model="VVX 410" if family == "uc-5.x" else "SoundPoint IP 650",
                               ip=PHONE_IP, boot_url="http://127.0.0.1:1/", family=family,
                               source_validation=reading), GroundTruth())
    p.params = dict(params)
    p._configure_registrations()
    return p


def invite(source: str, user: str = "1001") -> sip.SipMessage:
    return sip.make_request("INVITE", f"sip:{user}@{PHONE_IP}:5060", local=(source, 5060),
                            from_uri=f"sip:fleet-inbound@{source}", to_uri=f"sip:{user}@{source}",
                            call_id=sip.new_call_id(source), cseq=1, from_tag=sip.new_tag())


def decide(p: VirtualPhone, source: str):
    return asyncio.run(p.invite_decision(invite(source), (source, 5060)))


# ------------------------------------------------------------------ the phone's decision
@pytest.mark.parametrize("family", ["uc-5.x", "sip-3.x"])
def test_source_validation_read_the_guides_way_rings_for_every_configured_server(family):
    p = phone(TWO | BY_SOURCE, family)
    assert decide(p, SERVER1).rings and decide(p, SERVER2).rings
    refused = decide(p, STRANGER)
    assert refused.entry == "sipval-invite-source-refused" and "requestValidation.1.method=source" in refused.why


def test_source_validation_read_the_operators_way_refuses_server_2_with_400():
    p = phone(TWO | BY_SOURCE, reading="primary")
    assert decide(p, SERVER1).rings
    refused = decide(p, SERVER2)
    assert (refused.entry, refused.silent) == ("sipval-invite-source-refused", False)
    assert ia.from_status(*_status(refused.entry)).outcome == ia.REFUSED
    assert "server 2" in refused.why and "only server 1 counts" in refused.why
    # without the setting the reading changes nothing
    assert decide(phone(TWO, reading="primary"), SERVER2).rings


def _status(entry_id: str) -> tuple[int, str]:
    e = conformance.get(entry_id)
    first = e.body.split("\r\n", 1)[0].split(" ", 2)
    return int(first[1]), first[2]


def test_digest_validation_challenges_every_caller_that_brings_no_credentials():
    p = phone(TWO | {"voIpProt.SIP.requestValidation.1.request": "INVITE",
                     "voIpProt.SIP.requestValidation.1.method": "digest"})
    for source in (SERVER1, SERVER2):
        d = decide(p, source)
        assert d.entry == "sipval-digest-challenge" and dict(d.fill)["WWW-Authenticate"].startswith("Digest realm=")


def test_only_signal_with_registered_drops_an_invite_from_a_failed_server_and_takes_it_once_registered():
    p = phone(TWO | ONLY_REGISTERED)
    srv2 = p.regs[0].servers[1]
    srv2.state = DOWN
    d = decide(p, SERVER2)
    assert d.silent and "onlySignalWithRegistered=1" in d.why
    srv2.state = UP
    assert decide(p, SERVER2).rings
    # one switch at 0 (failRegistrationOn, the default): the guide's condition does not hold
    p = phone(TWO | ONLY_REGISTERED | {"reg.1.server.2.failOver.failRegistrationOn": "0"})
    p.regs[0].servers[1].state = DOWN
    assert decide(p, SERVER2).rings


def test_a_phone_in_a_call_is_busy():
    p = phone(TWO)
    p.in_call = True
    assert decide(p, SERVER2).entry == "sip-invite-busy"


# ------------------------------------------------------------------ what the gateway prints, read by fleet
EXPECTED = {
    "gateway-kamailio-uac-answered": (ia.REACHED, 200),
    "gateway-kamailio-uac-refused-400": (ia.REFUSED, 400),
    "gateway-kamailio-uac-refused-401": (ia.REFUSED, 401),
    "gateway-kamailio-uac-no-answer-408": (ia.NO_ANSWER, 408),
    "gateway-kamailio-uac-ring-time-over": (ia.NO_ANSWER, None),
    "gateway-kamailio-uac-unbound": (ia.NOT_BOUND, None),
    "gateway-kamailio-uac-wait-unsupported": (ia.UNKNOWN, None),
    "gateway-freeswitch-originate-answered": (ia.REACHED, None),
    "gateway-freeswitch-originate-temporary-failure": (ia.REFUSED, None),
    "gateway-freeswitch-originate-rejected": (ia.REFUSED, None),
    "gateway-freeswitch-originate-busy": (ia.REFUSED, None),
    "gateway-freeswitch-originate-not-registered": (ia.NOT_BOUND, None),
    "gateway-freeswitch-originate-timer": (ia.NO_ANSWER, None),
}


def test_every_originate_entry_of_the_corpus_is_read_here():
    found = {e.id for e in conformance.entries() if e.id.startswith(("gateway-kamailio-uac-", "gateway-freeswitch-originate-"))}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("entry_id", sorted(EXPECTED))
def test_each_gateway_answer_reads_as_its_outcome(entry_id):
    parse = ia.PLATFORMS["kamailio" if "kamailio" in entry_id else "freeswitch"].parse
    answer = parse(conformance.get(entry_id).body)
    assert (answer.outcome, answer.code) == EXPECTED[entry_id], answer
    assert answer.reached == (EXPECTED[entry_id][0] == ia.REACHED)


@pytest.mark.parametrize("junk", ["", "\x00" * 10, "{\n\tcode: 2000\n}\n", "code: 200", "+OKAY\n",
                                  "-ERR lower_case\n", "@contact " + "x" * 600 + "\n", "{" * 100_000])
def test_junk_is_never_an_answered_call(junk):
    for platform in ia.PLATFORMS.values():
        assert platform.parse(junk).outcome in (ia.UNKNOWN, ia.NO_ANSWER), (platform.name, junk[:40])


def test_a_phone_cannot_forge_the_final_answer_through_its_contact():
    """The contact is the phone's own text (its REGISTER): a contact line that carries a code line is one line."""
    text = "@contact sip:1001@10.0.0.5;x=\n{\n\tcode: 408\n\ttext: Request Timeout\n}\n@rc 0\n"
    assert ia.parse_kamailio(text).outcome == ia.NO_ANSWER


def test_the_commands_quote_what_they_carry():
    cmd = ia.kamailio_command("1001", "10.0.0.1", 8)
    assert "user=1001; host=10.0.0.1" in cmd and "timeout 8 kamcmd tm.t_uac_wait_block INVITE" in cmd
    assert "'1001;reboot'" in ia.kamailio_command("1001;reboot", "10.0.0.1", 8)
    assert "originate {originate_timeout=8" in ia.freeswitch_command("1001", "10.0.0.1", 8)
    with pytest.raises(ValueError, match="dial string"):
        ia.line_user("1001;reboot")
    with pytest.raises(ValueError, match="prints no outcome"):
        ia.platform("asterisk")


# ------------------------------------------------------------------ why a phone missed the call
def test_the_reason_names_the_setting_the_answer_points_to():
    refused = InboundAnswer(ia.REFUSED, 400, "Bad Request")
    assert why_missed(TWO | BY_SOURCE, refused, 2) == \
        "voIpProt.SIP.requestValidation.1.method=source refuses INVITE from server 2: 400 Bad Request"
    assert why_missed(TWO, refused, 2) == "INVITE from server 2: refused: 400 Bad Request"
    digest = TWO | {"voIpProt.SIP.requestValidation.1.request": "INVITE", "voIpProt.SIP.requestValidation.1.method": "digest"}
    assert "method=digest challenges INVITE from server 2" in why_missed(digest, InboundAnswer(ia.REFUSED, 401, "Unauthorized"), 2)
    assert "onlySignalWithRegistered=1" in why_missed(TWO | ONLY_REGISTERED, InboundAnswer(ia.NO_ANSWER, 408, "Request Timeout"), 2)
    unbound = why_missed(TWO | {"reg.1.server.2.failOver.reRegisterOn": "0"}, InboundAnswer(ia.NOT_BOUND), 2)
    assert "not registered with server 2" in unbound and "reRegisterOn=0" in unbound
    # FreeSWITCH names a cause, not the status
    fs = why_missed(TWO | BY_SOURCE, ia.parse_freeswitch("-ERR NORMAL_TEMPORARY_FAILURE\n"), 2)
    assert fs.startswith("voIpProt.SIP.requestValidation.1.method=source refuses INVITE from server 2")


# ------------------------------------------------------------------ the playbook step
def _files(tmp: Path, gateway: dict | str, timeout: float = 10.0) -> tuple[Path, Path]:
    (tmp / "secrets.yml").write_text(yaml.safe_dump({"admin": {"username": "Polycom", "password": "456"},
                                                     "router": {"username": "admin", "password": "x"}}))
    (tmp / "secrets.yml").chmod(0o600)
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump({
        "name": "unit", "firmware_family": "uc-5.x", "secrets_file": "secrets.yml",
        "sites": [{"name": "hq", "gateway": gateway, "boot_server": {"url": f"file://{tmp}/"},
                   "router": {"driver": "linux_ssh", "address": "10.0.0.1", "credentials": "router",
                              "wan_interface": "wan0", "timeout": timeout},
                   "phones": [{"mac": "0004f2000001", "model": "VVX 410", "address": "10.0.1.2", "credentials": "admin"}]}]}))
    pb = tmp / "inbound.yml"
    pb.write_text("kind: experiment\nname: calls in\nsite: hq\nsteps:\n"
                  "  - name: calls in during the outage\n    expect: inbound_via_fallback\n    ring_s: 8\n")
    return inv, pb


@pytest.mark.parametrize("gateway, error", [
    ({"address": "10.0.0.1", "platform": "kamailio"}, None),
    ({"address": "10.0.0.1", "platform": "freeswitch"}, None),
    ({"address": "10.0.0.1", "platform": "asterisk"}, "prints no outcome"),
    ("10.0.0.1", "has no platform"),
])
def test_the_step_needs_a_gateway_that_can_place_a_call(tmp_path, gateway, error):
    inv, pb = _files(tmp_path, gateway)
    playbook = experiment_playbook.load(pb)
    step = playbook.steps[0]
    assert isinstance(step, experiment_playbook.InboundStep) and step.ring_s == 8
    if error is None:
        experiment_playbook.check_against(playbook, load_inventory(inv), str(pb))
        return
    with pytest.raises(FileError, match=error) as err:
        experiment_playbook.check_against(playbook, load_inventory(inv), str(pb))
    assert "line 6" in str(err.value) or ":6" in str(err.value), str(err.value)


def test_the_ring_time_must_end_before_the_routers_command_timeout(tmp_path):
    inv, pb = _files(tmp_path, {"address": "10.0.0.1", "platform": "kamailio"}, timeout=5)
    with pytest.raises(FileError, match="ring_s 8 must be below the router's command timeout"):
        experiment_playbook.check_against(experiment_playbook.load(pb), load_inventory(inv), str(pb))


def test_an_unknown_field_of_the_step_is_named(tmp_path):
    _, pb = _files(tmp_path, "10.0.0.1")
    pb.write_text(pb.read_text() + "    via: provider\n")
    with pytest.raises(FileError, match="via"):
        experiment_playbook.load(pb)
