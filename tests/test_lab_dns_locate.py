"""The lab DNS serves NAPTR and SRV for the provider's name (RFC 3263), rendered from the corpus's dns-* entries;
a virtual phone in DNSnaptr mode with port 0 follows NAPTR -> SRV -> A, and fleet's resolver reads the same
answers to the same server (real UDP sockets on loopback, no lab)."""
from __future__ import annotations

import asyncio

import pytest

from fleet.base import dns as dns_ttl
from fleet.evidence.sources.resolver import SiteResolver
from hil.dns_server import DnsServer
from hil.groundtruth import GroundTruth
from hil.phone import VirtualPhone
from hil.phone_types import PhoneSpec
from hil.resolver import Resolver
from soundpoint import conformance

NAME = "voip.provider.example"
ADDRESS = "127.0.0.77"
SRV_PORT = 5071          # not 5060: following the SRV record shows in the port


async def _serve(located: bool) -> DnsServer:
    return await DnsServer.start("127.0.0.1", 0, {NAME: ADDRESS}, ttl=30,
                                 located={NAME: SRV_PORT} if located else None)


def _port(server: DnsServer) -> int:
    return server.transport.get_extra_info("sockname")[1]


def test_the_dns_entries_cite_their_rfc_sections():
    entries = {e.id: e for e in conformance.select(area="dns")}
    assert set(entries) >= {"dns-naptr-sip-udp", "dns-srv-sip"}
    # the server-location answers cite RFC 3263 (the lookup failures, dns-lookup-*, cite RFC 1035 instead)
    assert all(any("RFC 3263" in s.ref for s in entries[i].sources) for i in ("dns-naptr-sip-udp", "dns-srv-sip"))
    assert all(any("RFC 1035" in s.ref for s in e.sources) for i, e in entries.items() if i.startswith("dns-lookup-"))


def test_a_phone_in_dnsnaptr_mode_follows_naptr_srv_then_a():
    async def run():
        server = await _serve(located=True)
        try:
            found = await Resolver(("127.0.0.1", _port(server)), "127.0.0.1").locate(NAME)
            return found, dict(server.asked)
        finally:
            server.stop()
    found, asked = asyncio.run(run())
    assert found == (ADDRESS, SRV_PORT)
    assert asked == {("NAPTR", NAME): 1, ("SRV", f"_sip._udp.{NAME}"): 1, ("A", f"sip1.{NAME}"): 1}, asked


def test_without_naptr_and_srv_the_phone_uses_the_a_record_at_5060():
    async def run():
        server = await _serve(located=False)
        try:
            return await Resolver(("127.0.0.1", _port(server)), "127.0.0.1").locate(NAME)
        finally:
            server.stop()
    assert asyncio.run(run()) == (ADDRESS, 5060)


def test_fleet_reads_the_lab_answers_rendered_from_every_dns_entry():
    """fleet.base.dns's NAPTR and SRV readers, and the collector's RFC 3263 location, against the lab's server."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(_serve(located=True))
    try:
        port = _port(server)

        def ask(fn, *args):
            return loop.run_until_complete(loop.run_in_executor(None, fn, *args))
        naptr = ask(lambda: dns_ttl.naptr_records(NAME, "127.0.0.1", port))
        entry = conformance.get("dns-naptr-sip-udp")
        assert [(n.flags, n.service) for n in naptr] == [("s", "SIP+D2U")], entry.body
        assert naptr[0].replacement == f"_sip._udp.{NAME}"
        srv = ask(lambda: dns_ttl.srv_records(naptr[0].replacement, "127.0.0.1", port))
        assert [(s.priority, s.weight, s.port, s.target) for s in srv] == [(0, 1, SRV_PORT, f"sip1.{NAME}")]
        located = ask(lambda: SiteResolver(f"127.0.0.1:{port}").locate(NAME, "DNSnaptr"))
        assert located == [(ADDRESS, SRV_PORT, "udp")]
    finally:
        server.stop()
        loop.close()


@pytest.mark.parametrize("params,locates", [
    ({}, True),                                                              # DNSnaptr is the default
    ({"reg.1.server.1.port": "0"}, True),
    ({"reg.1.server.1.port": "5062"}, False),                               # a port given: A record, that port
    ({"reg.1.server.1.transport": "UDPOnly"}, False),
    ({"reg.1.server.1.address": "10.0.0.9"}, False),                        # an address: no DNS at all
])
def test_the_phone_locates_only_where_its_configuration_says(params, locates):
    p = VirtualPhone(PhoneSpec(mac="0004f2090904", model="VVX 410", ip="127.0.0.1", boot_url="http://127.0.0.1:1/",
                               family="uc-5.x"), GroundTruth())
    p.params = {"reg.1.address": "1001", "reg.1.server.1.address": NAME, **params}
    p._configure_registrations()
    assert p.regs[0].servers[0].locate is locates
