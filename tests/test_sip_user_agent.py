"""The lab's SIP identity against the corpus: the User-Agent read in every shape and rendered per model and
firmware, the REGISTER header set, and fleet's wire parser on every corpus SIP message."""
from __future__ import annotations

import pytest

from hil.phone import VirtualPhone
from hil.phone_types import PhoneSpec
from hil.groundtruth import GroundTruth
from soundpoint import conformance, user_agent

UA_ENTRIES = conformance.select(area="sip", prefix="sip-ua-")


def test_the_corpus_holds_each_user_agent_shape():
    assert {e.id for e in UA_ENTRIES} >= {"sip-ua-vvx-uc5-prefixed", "sip-ua-vvx-uc5-plain", "sip-ua-vvx-serial-tag",
                                          "sip-ua-soundpoint", "sip-ua-soundpoint-spaced"}
    assert all(e.sources for e in UA_ENTRIES)


@pytest.mark.parametrize("entry", UA_ENTRIES, ids=lambda e: e.id)
def test_every_corpus_shape_gives_model_and_version(entry):
    value = entry.answer["headers"]["User-Agent"]
    ua = user_agent.parse(value)
    assert ua is not None, value
    assert ua.version in value and not ua.version.endswith("_") and ua.model.split()[1] in value
    assert ua.model.split()[0] in ("VVX", "SPIP")


def test_the_serial_tag_is_not_part_of_the_version():
    ua = user_agent.parse(conformance.get("sip-ua-vvx-serial-tag").answer["headers"]["User-Agent"])
    assert (ua.version, ua.serial) == ("4.1.4.7430", "0004f2abcdef")


def test_anything_else_is_not_a_polycom_user_agent():
    for value in ("", "Yealink SIP-T46S 66.86.0.15", "Polycom", "x" * 10000 + "PolycomVVX-VVX_310-UA/5.3.0.1"):
        assert user_agent.parse(value) is None


@pytest.mark.parametrize("model,family,firmware,expect", [
    ("VVX 410", "uc-5.x", "5.9.7.3480", "Polycom/5.9.7.3480 PolycomVVX-VVX_410-UA/5.9.7.3480"),
    ("VVX 410", "uc-5.x", "5.3.0.12768", "PolycomVVX-VVX_410-UA/5.3.0.12768"),
    ("SoundPoint IP 331", "sip-3.x", "3.1.8.0070", "PolycomSoundPointIP-SPIP_331-UA/3.1.8.0070"),
    ("SoundPoint IP 650", "uc-4.0", "4.0.15.1009", "PolycomSoundPointIP-SPIP_650-UA/4.0.15.1009"),
])
def test_the_lab_renders_its_user_agent_from_the_entry_for_its_model_and_version(model, family, firmware, expect):
    assert user_agent.render(model, family, firmware) == expect
    assert user_agent.parse(expect).version == firmware


def test_a_virtual_vvx_sends_its_own_model_not_spip_650():
    p = VirtualPhone(PhoneSpec(mac="0004f2090903", model="VVX 410", ip="127.0.0.1", boot_url="http://127.0.0.1:1/",
                               family="uc-5.x"), GroundTruth())
    ua = user_agent.parse(p.user_agent)
    assert ua.model == "VVX 410" and ua.version == p.model["firmware"], p.user_agent
    assert p.user_agent.startswith(f"Polycom/{p.model['firmware']} ")


def test_the_lab_register_has_the_corpus_header_set_allow_and_user_agent():
    """A virtual VVX's REGISTER, caught by a registrar socket on loopback: the header names of the corpus's
    sip-register-* entry (a real phone's REGISTER), its Allow value, and the phone's own User-Agent."""
    import asyncio

    from sipwire import message as sip
    from sipwire.endpoint import SipEndpoint

    caught: list[sip.SipMessage] = []

    def registrar(msg: sip.SipMessage, addr):
        caught.append(msg)
        return sip.make_response(msg, 200, "OK", to_tag="x", extra=[("Contact", msg.get("contact") + ";expires=60")])

    async def run():
        server = await SipEndpoint.bind("127.0.0.1", 0, registrar, name="registrar")
        p = VirtualPhone(PhoneSpec(mac="0004f2090905", model="VVX 410", ip="127.0.0.1", boot_url="http://127.0.0.1:1/",
                                   family="uc-5.x", sip_port=0), GroundTruth())
        p.params = {"reg.1.address": "1001", "reg.1.server.1.address": "127.0.0.1",
                    "reg.1.server.1.port": str(server.local[1])}
        p._configure_registrations()
        p.endpoint = await SipEndpoint.bind("127.0.0.1", 0, None, name="phone")
        try:
            reg = p.regs[0]
            return await p._register_once(reg, reg.servers[0]), p.user_agent
        finally:
            p.endpoint.close()
            server.close()

    ok, ua = asyncio.run(run())
    assert ok and len(caught) == 1
    real = sip.parse(conformance.get("sip-register-soundpoint-sip3").body.encode())
    names = lambda m: {h.lower() for h, _ in m.headers}       # noqa: E731
    assert names(real) <= names(caught[0]), names(real) - names(caught[0])
    assert caught[0].get("allow") == real.get("allow")
    assert caught[0].get("user-agent") == ua and user_agent.parse(ua).model == "VVX 410"


# the requests the corpus holds whole (answers such as a 200 or a 400 are read by their own tests)
SIP_MESSAGES = [e for e in conformance.select(area="sip") if e.body and e.body.split(" ", 1)[0] == e.request.get("method")]


@pytest.mark.parametrize("entry", SIP_MESSAGES, ids=lambda e: e.id)
def test_fleet_wire_parser_reads_every_corpus_sip_message(entry):
    """fleet's capture parser (fleet.evidence.wire.sip) on each real message the corpus holds: method,
    CSeq, the requested expiry and the User-Agent come out as sent."""
    from fleet.evidence.wire import sip as wire_sip

    msg = wire_sip.parse(entry.body.encode())
    assert msg.is_request and msg.method == entry.request["method"]
    assert msg.cseq[1] == msg.method and msg.get("expires") and msg.call_id
    assert user_agent.parse(msg.get("user-agent") or "") is not None
