"""Interoperability with a SIP peer we did not write: Kamailio (Debian) as registrar with digest auth.

The virtual phone's REGISTER, SUBSCRIBE and INVITE must parse, authenticate and be routed by Kamailio.
Marked `lab`; skipped with the reason when Kamailio is not installed (`make test` installs it as root).
"""
from __future__ import annotations

import asyncio

import pytest

from conftest import await_until
from fleet import polycom
from fleet.redisboot import free_port
from hil import kamailio as kam
from hil.bootserver import HttpBootServer
from hil.groundtruth import GroundTruth
from hil.phone import VirtualPhone
from hil.phone_types import PhoneSpec

pytestmark = pytest.mark.lab
PASSWORD = "kam-Secret-42"

@pytest.fixture
def kamailio(tmp_path):
    """Kamailio (hil.kamailio's configuration, the one the labs run) with two users."""
    reason = kam.unavailable()
    if reason:
        pytest.skip(reason)
    server = kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "interop.example",
                                             {"1001": PASSWORD, "1002": PASSWORD}, role="interop registrar"),
                          tmp_path / "kamailio")
    sock = server.start()
    yield server.config.port, sock
    server.stop()


def test_virtual_phones_register_subscribe_and_call_through_kamailio(kamailio, tmp_path):
    port, sock = kamailio
    boot = tmp_path / "boot"
    boot.mkdir()
    site = {"reg.1.server.1.address": "127.0.0.1", "reg.1.server.1.port": str(port), "reg.1.server.1.expires": "60",
            "reg.1.server.1.retryTimeOut": "500", "reg.1.server.1.retryMaxCount": "3"}
    macs = ["0004f2aa0001", "0004f2aa0002"]
    for i, mac in enumerate(macs):
        params = site | {"reg.1.address": f"100{i + 1}", "reg.1.auth.userId": f"100{i + 1}", "reg.1.auth.password": PASSWORD}
        for name, data in polycom.render_phone_files(mac, params).items():
            (boot / name).write_bytes(data)

    async def scenario():
        server = HttpBootServer(boot, "127.0.0.1", free_port(), "PlcmSpIp", "boot-pw")
        await server.start()
        truth = GroundTruth()
        phones = [VirtualPhone(PhoneSpec(mac=mac, model="VVX 410", ip=f"127.99.0.{i + 2}", sip_port=free_port(),
                                         boot_url=f"http://PlcmSpIp:boot-pw@127.0.0.1:{server.port}/", boot_time=0.1),
                               truth) for i, mac in enumerate(macs)]
        try:
            for p in phones:
                await p.start(http=False)
            # no failure here: the states are asserted below, with their own message
            await await_until(lambda: all(p.regs and p.regs[0].working == 1 for p in phones), 15, "both phones registered",
                              step=0.1, fail=False)
            states = [p.regs[0].working if p.regs else None for p in phones]
            dump = await asyncio.to_thread(kam.ul_dump, sock, True)
            call = await phones[0].place_call("1002")
            return states, dump, call, [p.regs[0].subscribed_to_primary for p in phones]
        finally:
            for p in phones:
                await p.stop()
            await server.stop()

    states, dump, call, subscribed = asyncio.run(scenario())
    assert states == [1, 1], "both phones registered with Kamailio (digest auth answered)"
    assert "1001" in dump and "1002" in dump, dump
    assert subscribed == [True, True], "Kamailio accepted the message-summary SUBSCRIBE"
    # Kamailio authenticated the INVITE, found 1002's binding and relayed it; the callee (a virtual phone) is busy
    assert call["attempts"] == [{"server": 1, "result": 486}], call
