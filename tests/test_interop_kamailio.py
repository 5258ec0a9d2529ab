"""Interoperability with a SIP peer we did not write: Kamailio (Debian) as registrar with digest auth.

The virtual phone's REGISTER, SUBSCRIBE and INVITE must parse, authenticate and be routed by Kamailio.
Marked `lab`; skipped with the reason when Kamailio is not installed (`make test` installs it as root).
"""
from __future__ import annotations

import asyncio

import pytest

from conftest import await_until
from fleet.phoneconf import polycom
from soundpoint.redisboot import free_port
from hil import kamailio as kam
from hil.bootserver import HttpBootServer
from hil.groundtruth import GroundTruth
from hil.phone import VirtualPhone
from hil.phone_types import DOWN, UP, PhoneSpec

pytestmark = pytest.mark.lab
PASSWORD = "kam-Secret-42"

def _publish(boot, params_by_mac: dict[str, dict[str, str]]) -> None:
    """Each phone's files on the boot directory, as fleet renders them."""
    boot.mkdir(exist_ok=True)
    for mac, params in params_by_mac.items():
        for name, data in polycom.render_phone_files(mac, params).items():
            (boot / name).write_bytes(data)


async def _phones(boot, macs: list[str], first_ip: int) -> tuple[HttpBootServer, GroundTruth, list[VirtualPhone]]:
    """A boot server on `boot` and one started VVX per MAC at 127.99.0.<first_ip + i>, booting from it."""
    server = HttpBootServer(boot, "127.0.0.1", free_port(), "PlcmSpIp", "boot-pw")
    await server.start()
    truth = GroundTruth()
    phones = [VirtualPhone(PhoneSpec(mac=mac, model="VVX 410", ip=f"127.99.0.{first_ip + i}", sip_port=free_port(),
                                     boot_url=f"http://PlcmSpIp:boot-pw@127.0.0.1:{server.port}/", boot_time=0.1),
                           truth) for i, mac in enumerate(macs)]
    for p in phones:
        await p.start(http=False)
    return server, truth, phones


@pytest.fixture
def kamailio(tmp_path):
    """Kamailio (hil.kamailio's configuration, the one the labs run) with two users."""
    reason = kam.unavailable()
    if reason:
        pytest.skip(reason)
    with kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "interop.example",
                                         {"1001": PASSWORD, "1002": PASSWORD}, role="interop registrar"),
                      tmp_path / "kamailio") as server:
        yield server.config.port, server.sock


def test_virtual_phones_register_subscribe_and_call_through_kamailio(kamailio, tmp_path):
    port, sock = kamailio
    boot = tmp_path / "boot"
    site = {"reg.1.server.1.address": "127.0.0.1", "reg.1.server.1.port": str(port), "reg.1.server.1.expires": "60",
            "reg.1.server.1.retryTimeOut": "500", "reg.1.server.1.retryMaxCount": "3"}
    macs = ["0004f2aa0001", "0004f2aa0002"]
    _publish(boot, {mac: site | {"reg.1.address": f"100{i + 1}", "reg.1.auth.userId": f"100{i + 1}",
                                 "reg.1.auth.password": PASSWORD} for i, mac in enumerate(macs)})

    async def scenario():
        server, _, phones = await _phones(boot, macs, 2)
        try:
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
    # Kamailio authenticated the INVITE, found 1002's binding and relayed it; the callee (a virtual phone) rang and
    # was picked up (hil.phone_inbound: 180, then 200)
    assert call["attempts"] == [{"server": 1, "result": 200}], call


def test_kamailio_as_outbound_proxy_relays_to_its_upstream_and_traces_both_legs(tmp_path):
    """hil.kamailio's relay, with a phone that uses it as its outbound proxy (sip-3.x: every server through it):
    the REGISTER for server 1 (a name, no DNS anywhere) goes on to the upstream Kamailio, which authenticates and
    binds it; the one for server 2 (Kamailio itself) is handled locally. siptrace's HEP shows both legs of the
    relayed REGISTER and both replies. When the upstream goes silent the phone's own transaction timeout fails
    server 1 over to server 2, with the proxy still up."""
    import socket

    from fleet.evidence.wire import hep

    reason = kam.unavailable(siptrace=True)
    if reason:
        pytest.skip(reason)
    users = {"1001": PASSWORD}
    upstream = kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "provider.example", users,
                                               role="interop upstream"), tmp_path / "upstream")
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.setblocking(False)
    proxy = kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "gateway.example", users,
                                            hep=collector.getsockname(), upstream=("127.0.0.1", upstream.config.port),
                                            role="interop proxy"), tmp_path / "proxy")
    with pytest.raises(ValueError, match="IPv4 address"):
        kam.KamailioConfig("127.0.0.1", 5060, "x", users, upstream=("voip.provider.example", 5060)).render(tmp_path)
    boot = tmp_path / "boot"
    timers = {"expires": "4", "expires.overlap": "2", "retryTimeOut": "500", "retryMaxCount": "3"}
    params = {"reg.1.address": "1001", "reg.1.auth.userId": "1001", "reg.1.auth.password": PASSWORD,
              "reg.1.outboundProxy.address": "127.0.0.1", "reg.1.outboundProxy.port": str(proxy.config.port),
              "reg.1.server.1.address": "voip.provider.example", "reg.1.server.1.port": str(upstream.config.port),
              "reg.1.server.2.address": "127.0.0.1", "reg.1.server.2.port": str(proxy.config.port)}
    params |= {f"reg.1.server.{y}.{k}": v for y in (1, 2) for k, v in timers.items()}
    mac = "0004f2aa0011"
    _publish(boot, {mac: params})

    async def scenario():
        server, truth, (phone,) = await _phones(boot, [mac], 12)
        try:
            await await_until(lambda: phone.regs and {s.index: s.state for s in phone.regs[0].servers} == {1: UP, 2: UP},
                              15, "both servers up through the proxy", step=0.1, fail=False)
            before = {s.index: s.state for s in phone.regs[0].servers} if phone.regs else {}
            dumps = [await asyncio.to_thread(kam.ul_dump, k.sock, True) for k in (upstream, proxy)]
            await asyncio.to_thread(upstream.stop)
            await await_until(lambda: phone.regs[0].working == 2, 15, "failed over to server 2", step=0.1, fail=False)
            reasons = [e["data"]["reason"] for e in truth.snapshot()["phones"][mac]["events"]
                       if e["kind"] == "server_state" and e["data"]["server"] == 1 and e["data"]["state"] == DOWN]
            after = ({s.index: s.state for s in phone.regs[0].servers}, phone.regs[0].working, reasons)
            return before, dumps, after
        finally:
            await phone.stop()
            await server.stop()

    with upstream, proxy:
        before, dumps, after = asyncio.run(scenario())
    assert before == {1: UP, 2: UP}, before
    assert "1001" in dumps[0] and "1001" in dumps[1], dumps      # each server bound the phone: relayed and local
    # the proxy never answered the relayed REGISTER in time: the phone's own transaction timeout decided
    assert after == ({1: DOWN, 2: UP}, 2, ["timeout"]), after
    legs = []
    while True:
        try:
            pkt = hep.parse(collector.recv(65535))
        except BlockingIOError:
            break
        first = pkt.payload.split(b"\r\n", 1)[0].decode()
        legs.append((pkt.src[1], pkt.dst[1], first))
    collector.close()
    p, u = proxy.config.port, upstream.config.port
    relayed = [leg for leg in legs if leg[2].startswith("REGISTER sip:voip.provider.example")]
    assert {(s == p, d == u) for s, d, _ in relayed} == {(False, False), (True, True)}, legs   # in, and out upstream
    assert any(s == u and d == p and "200" in f for s, d, f in legs), legs                      # reply in
    assert any(s == p and d not in (u, p) and "200" in f for s, d, f in legs), legs             # reply out


def test_kamailio_in_a_deep_work_directory_gets_a_short_control_socket(tmp_path):
    """Kamailio exits 255, saying nothing, when its binrpc socket path is over about 104 characters, which deep
    test directories (pytest-xdist's popen-gwN/...) reach: the socket then lives in a short private directory."""
    reason = kam.unavailable()
    if reason:
        pytest.skip(reason)
    deep = tmp_path / ("d" * (140 - len(str(tmp_path)))) / "kamailio-gateway-hq"
    with kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "deep.example", {"1001": PASSWORD},
                                         role="deep"), deep) as server:
        sock = server.sock
        assert len(str(deep / "ctl.sock")) > 104 and len(str(sock)) <= kam.CTL_PATH_MAX, sock
        version = server.kamcmd("core.version")
        assert version.stdout.startswith("kamailio "), version.stderr
        assert (deep / "ctl.sock").resolve() == sock.resolve()
    assert not sock.parent.exists(), "the short directory outlived Kamailio"


def test_stopping_kamailio_leaves_none_of_its_processes(tmp_path):
    """Kamailio runs a main process and children; stop() ends the whole process group, so no child is left
    orphaned (one was once found running, parent 1, after a lab had gone)."""
    import os

    reason = kam.unavailable()
    if reason:
        pytest.skip(reason)
    server = kam.Kamailio(kam.KamailioConfig("127.0.0.1", free_port(), "stop.example", {"1001": PASSWORD},
                                             role="stop"), tmp_path / "kamailio")
    server.start(attached=True)
    group = server.process.pid
    assert os.getpgid(group) == group                     # a process group of its own, led by the main process
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
