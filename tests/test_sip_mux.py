"""hil.sip_mux: every phone of a process on one SIP socket, each datagram from the phone's own address
(and hil.http_mux, their web servers on one listener, in the lab test).

The unit tests use real sockets on 127.0.0.x with ports the kernel picks (nobody else's); the lab test starts a
lab whose phones share the socket and checks that each phone's REGISTER reached the gateway from its own
address (the fleet's wire evidence attributes SIP by source address)."""
from __future__ import annotations

import asyncio
import socket

import pytest
import requests
import yaml

from hil import harness
from hil.sip_mux import SharedSipSocket
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimers

from conftest import lab_spec

PHONES = [f"127.0.0.{i}" for i in range(2, 12)]


def _options(ep: SipEndpoint, target: tuple[str, int]) -> sip.SipMessage:
    return sip.make_request("OPTIONS", f"sip:{target[0]}", local=ep.local, from_uri=f"sip:p@{ep.local[0]}",
                            to_uri=f"sip:{target[0]}", call_id=sip.new_call_id(ep.local[0]), cseq=1,
                            from_tag=sip.new_tag(), contact=f"<sip:p@{ep.local[0]}:{ep.local[1]}>", user_agent="t")


def test_each_phone_sends_from_its_own_address_and_gets_its_own_answers():
    async def main():
        seen: list[tuple[str, int]] = []

        def answer(msg: sip.SipMessage, addr: tuple[str, int]):
            seen.append(addr)
            return sip.make_response(msg, 200, "OK")

        server = await SipEndpoint.bind("127.0.0.1", 0, answer)
        mux = await SharedSipSocket.open()
        try:
            eps = [mux.endpoint(ip, None, f"phone-{ip}") for ip in PHONES]
            assert all(ep.local == (ip, mux.port) for ep, ip in zip(eps, PHONES))
            answers = await asyncio.gather(*(ep.request(_options(ep, server.local), server.local, TransactionTimers())
                                             for ep in eps))
            assert [a.status for a in answers] == [200] * len(PHONES)
            # each answer went to the phone whose transaction it matches (their own Call-IDs, branches)
            assert sorted(seen) == sorted((ip, mux.port) for ip in PHONES)
            assert mux.phones == len(PHONES) and mux.unknown == 0
        finally:
            mux.close()
            server.close()

    asyncio.run(main())


def test_a_datagram_for_an_address_no_phone_holds_is_dropped_and_counted():
    async def main():
        mux = await SharedSipSocket.open()
        try:
            got: list[bytes] = []
            ep = mux.endpoint("127.0.0.2", None, "p")
            ep.datagram_received = lambda data, addr: got.append(data)  # type: ignore[method-assign]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"OPTIONS for nobody", ("127.0.0.99", mux.port))
                s.sendto(b"OPTIONS for p", ("127.0.0.2", mux.port))
            for _ in range(100):
                if got and mux.unknown:
                    break
                await asyncio.sleep(0.02)
            assert got == [b"OPTIONS for p"] and mux.unknown == 1
            ep.close()                   # a stopped phone's address is no longer served
            with pytest.raises(ValueError, match="already taken"):
                mux.endpoint("127.0.0.3", None, "a")
                mux.endpoint("127.0.0.3", None, "b")
        finally:
            mux.close()

    asyncio.run(main())


@pytest.mark.lab
def test_lab_phones_on_the_shared_socket_register_from_their_own_addresses(tmp_path):
    spec = lab_spec("sharedsip", phones=6, servers=[
        {"address": "gateway", "expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}])
    spec["sip_sockets"] = "shared"
    lab = harness.start_lab(tmp_path / "lab", spec)
    try:
        inventory = yaml.safe_load(lab.inventory.read_text())
        phones = [p for site in inventory["sites"] for p in site["phones"]]
        ports = {p["sip_port"] for p in phones}
        assert len(ports) == 1 and ports != {5060}, ports        # one socket for all, on a port of its own
        status = lab.status()
        sources = {r["source"].rsplit(":", 1)[0] for site in status["sites"]
                   for r in site["gateway"]["requests"] if r["method"] == "REGISTER"}
        assert sources == {p["address"] for p in phones}, (sources, phones)
        # their web servers share one listener too, each phone answering at its own address (its digest challenge)
        http_ports = {p["http_port"] for p in phones}
        assert len(http_ports) == 1 and http_ports != {8080}, http_ports
        for p in phones[:2]:
            resp = requests.get(f"http://{p['address']}:{p['http_port']}/polling/deviceHandler", timeout=10)
            assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Digest"), resp.headers
    finally:
        lab.post("/shutdown", {})
