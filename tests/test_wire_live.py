"""Wire evidence from real third-party programs: Kamailio as the gateway (its siptrace HEP v3 into our
listener and its `kamcmd ul.dump` into our bindings parser must tell the same story as the REGISTER answers
the phones got) and tcpdump on loopback as the local-capture input.

Marked `lab`; each test skips with the reason when Kamailio, tcpdump or CAP_NET_RAW is missing
(Debian: apt-get install kamailio tcpdump).
The phones here are plain UDP sockets sending REGISTERs with digest auth (sipwire builds them), so the test
needs nothing of the virtual lab.
"""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.sources.hep_listener import start_hep_listener
from fleet.evidence.wire.attribution import Attribution, WireTarget, detail_fields
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.state.observe import REGISTERED, UNREGISTERED
from soundpoint.redisboot import free_port
from hil import kamailio as kam
from sipwire import digest
from sipwire import message as sip

from conftest import await_until, require_loopback_capture, udp_socket, wait_until

pytestmark = pytest.mark.lab
PASSWORD = "gw-Secret-7"

@pytest.fixture
def kamailio(tmp_path):
    """Kamailio (hil.kamailio's configuration) tracing to a HEP port; 3003 is unknown to it (403 Forbidden)."""
    reason = kam.unavailable(siptrace=True)
    if reason:
        pytest.skip(reason)
    port, hep_port = free_port(), free_port()
    users = {u: PASSWORD for u in ("3001", "3002", "3004", "3005")}
    with kam.Kamailio(kam.KamailioConfig("127.0.0.1", port, "gateway.example", users, hep=("127.0.0.1", hep_port),
                                         role="gateway with siptrace"), tmp_path / "kamailio") as server:
        yield port, hep_port, server.sock


def _register(server: tuple[str, int], user: str, password: str, expires: int, sock: socket.socket) -> list[int]:
    """REGISTER, answer a challenge once; the status codes received, in order."""
    local = sock.getsockname()
    call_id, tag, codes, auth = sip.new_call_id(local[0]), sip.new_tag(), [], None
    uri = f"sip:{server[0]}:{server[1]}"
    for cseq in (1, 2):
        extra = [("Expires", str(expires))] + ([("Authorization", auth)] if auth else [])
        req = sip.make_request("REGISTER", uri, local=local, from_uri=f"sip:{user}@{server[0]}",
                               to_uri=f"sip:{user}@{server[0]}", call_id=call_id, cseq=cseq, from_tag=tag,
                               contact=f"<sip:{user}@{local[0]}:{local[1]}>", extra=extra)
        sock.sendto(req.encode(), server)
        resp = sip.parse(sock.recv(65535))
        codes.append(resp.status)
        if resp.status != 401 or auth:
            break
        auth = digest.authorization(digest.parse_challenge(resp.get("www-authenticate") or ""), username=user,
                                    password=password, method="REGISTER", uri=uri)
    return codes


def test_kamailio_hep_and_ul_dump_agree_with_what_the_phones_were_told(kamailio):
    port, hep_port, ctl = kamailio
    server = ("127.0.0.1", port)
    plan = {"3001": (PASSWORD, 300), "3002": (PASSWORD, 0), "3003": (PASSWORD, 300), "3004": ("wrong", 300),
            "3005": (PASSWORD, 120)}
    targets = [WireTarget(f"0004f2ab{u}", 1, 2, server, u) for u in plan]

    async def scenario():
        ev = WireEvidence(Attribution(targets), source="hep")
        seen = []
        transport, proto = await start_hep_listener("127.0.0.1", hep_port, ["127.0.0.1"],
                                                    lambda pkt, addr: seen.extend(ev.feed_datagram(pkt.datagram())))
        socks = {u: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for u in plan}
        try:
            told = {}
            for u, s in socks.items():
                s.bind(("127.0.0.1", 0))
                s.settimeout(5)
                if u == "3002":       # registers, then removes its binding with expires=0
                    await asyncio.to_thread(_register, server, u, PASSWORD, 300, s)
                told[u] = await asyncio.to_thread(_register, server, u, *plan[u], s)
            # 3004 (wrong password) gets only challenges: no state from those (issue 17); its binding never was
            await await_until(lambda: len({o.mac for o in seen}) >= len(plan) - 1, 10, "an observation of every user but 3004",
                              step=0.02, state=lambda: (sorted({o.mac for o in seen}), dict(proto.stats)))
            dump = await asyncio.to_thread(kam.ul_dump, ctl)
            return told, seen, dump, dict(proto.stats)
        finally:
            for s in socks.values():
                s.close()
            transport.close()

    told, seen, dump, stats = asyncio.run(scenario())
    assert told == {"3001": [401, 200], "3002": [401, 200], "3003": [403], "3004": [401, 401], "3005": [401, 200]}
    last = {}
    for o in seen:
        last[o.mac[-4:]] = (o.state, detail_fields(o.detail).get("code"), detail_fields(o.detail).get("expires"))
    assert last == {"3001": (REGISTERED, "200", "300"), "3002": (UNREGISTERED, "200", "0"),
                    "3003": (UNREGISTERED, "403", None),
                    "3005": (REGISTERED, "200", "120")}, (last, stats)
    bindings = gb.observations(gb.parse_kamailio(dump), targets, time.time())
    from_gateway = {o.mac[-4:]: o.state for o in bindings}
    from_wire = {k: v[0] for k, v in last.items()}
    assert from_gateway == from_wire | {"3004": UNREGISTERED}, (from_gateway, from_wire, dump)


def test_local_capture_on_loopback_sees_a_register_and_its_answer():
    """The mirror-port input for real: tcpdump on `lo` (needs tcpdump and CAP_NET_RAW), its pcap stdout
    through iter_pcap into the pipeline."""
    import threading
    from fleet.evidence.sources.local_capture import start_local_capture
    from fleet.evidence.wire.pcap import iter_pcap
    require_loopback_capture()
    server_sock, phone_sock = udp_socket(), udp_socket()
    server = server_sock.getsockname()
    ev = WireEvidence(Attribution([WireTarget("0004f2ab0001", 1, 1, server, "4001")]))
    proc = start_local_capture("lo", ports=(server[1],))
    seen: list = []
    reader = threading.Thread(target=lambda: [seen.extend(ev.feed_frame(r.t, r.linktype, r.frame))
                                              for r in iter_pcap(proc.stdout)], daemon=True)
    reader.start()
    try:
        req = sip.make_request("REGISTER", f"sip:{server[0]}:{server[1]}", local=phone_sock.getsockname(),
                               from_uri="sip:4001@127.0.0.1", to_uri="sip:4001@127.0.0.1", call_id="lo-1@127.0.0.1",
                               cseq=1, from_tag="x", contact=f"<sip:4001@127.0.0.1:{phone_sock.getsockname()[1]}>",
                               extra=[("Expires", "90")])

        def exchange() -> list:
            """Once seen, the observations; until then one more REGISTER and its 200 (tcpdump needs a moment to
            attach; a repeated REGISTER is a retransmission to the matcher)."""
            if seen:
                return seen
            phone_sock.sendto(req.encode(), server)
            server_sock.settimeout(0.5)
            try:
                data, addr = server_sock.recvfrom(65535)
            except socket.timeout:
                return seen
            server_sock.sendto(sip.make_response(sip.parse(data), 200, "OK", extra=[("Expires", "90")]).encode(), addr)
            return seen

        wait_until(exchange, 15, "the capture seeing the REGISTER", step=0.2, state=lambda: ev.stats)
        assert [(o.mac, o.state, detail_fields(o.detail)["expires"]) for o in seen] == [
            ("0004f2ab0001", REGISTERED, "90")], ev.stats
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server_sock.close()
        phone_sock.close()
