"""fleet's Kamailio command that places a call, run through a real /bin/sh against a real Kamailio (tm's
t_uac_wait_block over kamcmd), to a virtual phone registered there whose configuration decides the answer.

The phone's server 2 is the Kamailio (its server 1 an address nothing answers on): with request validation by
source read the guides' way the call rings and is answered; read the operators' way it is refused with 400; a line
Kamailio holds no binding for is not called at all. Skipped (with the reason) without Kamailio."""
from __future__ import annotations

import asyncio
import os

import pytest

from fleet.experiment import inbound_answers as ia
from fleet.experiment.inbound_why import why_missed
from hil.groundtruth import GroundTruth
from hil.phone import VirtualPhone
from hil.phone_types import PhoneSpec
from sipwire.endpoint import SipEndpoint
from tests.test_gateway_kamailio import kamailio, register, unregister_all  # noqa: F401  (kamailio: the fixture)

pytestmark = pytest.mark.lab
BY_SOURCE = {"voIpProt.SIP.requestValidation.1.request": "INVITE", "voIpProt.SIP.requestValidation.1.method": "source"}


async def _call(server, user: str, phone: VirtualPhone | None, port: int) -> str:
    """Run fleet's command in /bin/sh with kamcmd on PATH while the phone answers on its registered port."""
    endpoint = await SipEndpoint.bind("127.0.0.1", port, phone._on_sip_request, name="phone") if phone else None
    if phone:
        phone.endpoint = endpoint
    try:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", ia.kamailio_command(user, "127.0.0.1", 8),
            env=dict(os.environ, PATH=f"{server.tools}:{os.environ['PATH']}"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err[-500:]
        await asyncio.sleep(1.0)         # the phone's BYE after it hung up
        return out.decode()
    finally:
        if endpoint:
            endpoint.close()


def _phone(port: int, reading: str) -> VirtualPhone:
    p = VirtualPhone(PhoneSpec(mac="0004f2090b01", model="VVX 410", ip="127.0.0.1", sip_port=port,
                               boot_url="http://127.0.0.1:1/", family="uc-5.x", source_validation=reading),
                     GroundTruth())
    p.params = {"reg.1.address": "1001", "reg.1.server.1.address": "127.0.0.9",
                "reg.1.server.2.address": "127.0.0.1"} | BY_SOURCE
    p._configure_registrations()
    return p


@pytest.mark.parametrize("reading, outcome, code", [("configured", ia.REACHED, 200), ("primary", ia.REFUSED, 400)])
def test_the_gateway_call_reaches_the_phone_as_its_configuration_says(kamailio, reading, outcome, code):  # noqa: F811
    unregister_all(kamailio)          # usrloc keeps the last test's contact too: the command calls the first one
    _, port = register(kamailio, "1001", "PolycomVVX-VVX_410-UA/6.4.0.1234")
    phone = _phone(port, reading)
    text = asyncio.run(_call(kamailio, "1001", phone, port))
    answer = ia.parse_kamailio(text)
    assert (answer.outcome, answer.code) == (outcome, code), text
    assert answer.contact == f"sip:1001@127.0.0.1:{port}"
    truth = [e.data for e in phone.truth.events[phone.mac] if e.kind == "inbound_call"]
    assert [t["answer"] for t in truth] == [code], truth          # one decision: retransmissions absorbed
    if outcome == ia.REFUSED:
        assert why_missed(phone.params, answer, 2) == \
            "voIpProt.SIP.requestValidation.1.method=source refuses INVITE from server 2: 400 Bad Request"


def test_a_line_without_a_binding_is_not_called(kamailio):  # noqa: F811
    unregister_all(kamailio)
    answer = ia.parse_kamailio(asyncio.run(_call(kamailio, "1002", None, 0)))
    assert answer.outcome == ia.NOT_BOUND
