"""Issue 22: a collector at a 5,000-phone site keeps every source's detection quick while a gateway poll's answer
(5,000 bindings) goes through it: the backlog is stored at a pace (fleet.evidence.flush_queue), HEP datagrams are
read in batches per wake-up of the loop (hep_listener.DrainingReader), lapses are found without looking at every
grant (WireEvidence._lapsed), and the gateway's entries are worked out once per rebuild of the targets."""
from __future__ import annotations

import asyncio
import socket

from fleet.evidence.flush_queue import FlushQueue
from fleet.evidence.sources import hep_listener
from fleet.evidence.wire import hep
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.state.observe import Observation
from sipwire import message as sip

MAC = "0004f2000001"
PHONE = ("192.168.1.10", 5060)
PROVIDER, GATEWAY = ("203.0.113.10", 5060), ("192.168.1.1", 5060)


def obs(mac: str, t: float, source: str = "gateway") -> Observation:
    return Observation(mac=mac, t=t, source=source, server=2, state="registered", address="127.0.0.1:5060")


def test_the_backlog_is_stored_at_a_pace_and_fresh_observations_never_wait_for_it():
    q = FlushQueue(slice_size=100, share=0.25)
    q.defer([obs(f"m{i:04d}", 1.0) for i in range(1000)])
    assert q.due(10.0)
    first = q.take([], now=10.0)
    assert len(first) == 100 and q.topped_up
    q.stored(0.03, now=10.03)                       # 30 ms of storing: at a quarter share, 90 ms off
    assert not q.due(10.1) and q.due(10.12)
    fresh = [obs("x0001", 2.0, "wire")]
    assert q.take(fresh, now=10.1) == fresh, "fresh ones are stored at once, nothing from the backlog with them"
    assert not q.topped_up
    q.stored(0.01, now=10.11)                       # a batch of fresh ones only: the pace is unchanged
    assert not q.due(10.115) and q.due(10.12)
    second = q.take(fresh[:0], now=10.12)
    assert len(second) == 100 and second[0].mac == "m0100", "the backlog goes on where it stopped, oldest first"
    # every backlogged observation of a phone that has a fresh one goes with it, pace or not (their order)
    late = obs("m0500", 3.0, "hep")
    q.stored(0.04, now=10.16)
    batch = q.take([late], now=10.17)
    assert [o.mac for o in batch] == ["m0500", "m0500"] and batch[-1] is late


def test_a_lapse_is_found_at_its_time_once_through_refreshes_and_a_shorter_expiry():
    """The lapses are kept by due time (a heap with the refreshed grants' stale entries left in it): what
    `tick` reports must be what a look at every grant would: each lapsed grant once, at its own expiry."""
    targets = [WireTarget(f"0004f20000{i:02x}", 1, 1, PROVIDER, f"10{i:02d}") for i in range(3)]
    ev = WireEvidence(Attribution(targets), lapse=True)
    grant = lambda i, t, expires: ev._track(Observation(mac=targets[i].mac, t=t, source="wire", reg=1, server=1,  # noqa: E731
                                                          state="registered", address="x", expires=expires))
    for k in range(40):                     # 40 refreshes of phone 0 (enough to rebuild the heap more than once)
        grant(0, 10.0 + k, 60)
    grant(1, 10.0, 600)
    grant(1, 20.0, 30)                      # phone 1's grant shortened: lapses at 50, not 610
    grant(2, 10.0, 60)
    assert ev.tick(50.5) == [] and len(ev._lapses) <= 4 * len(ev._bound) + 64, "within the grace: nothing yet"
    first = ev.tick(71.5)                   # phone 1 at 50 (+1 s grace) and phone 2 at 70
    assert sorted((o.mac, o.t) for o in first) == [(targets[1].mac, 50.0), (targets[2].mac, 70.0)], first
    assert ev.tick(100.0) == [], "phone 0 was refreshed at 49: good until 109"
    last = ev.tick(110.5)
    assert [(o.mac, o.t, o.state) for o in last] == [(targets[0].mac, 109.0, "unregistered")]
    assert ev.tick(10_000.0) == [] and ev._bound == {}


def test_the_hep_listener_reads_a_burst_in_batches_and_every_datagram_arrives():
    async def scenario() -> tuple[int, int, int]:
        got: list[hep.HepPacket] = []
        reader, proto = await hep_listener.start_hep_listener("127.0.0.1", 0, ["127.0.0.1"], lambda p, a: got.append(p))
        port = reader.get_extra_info("sockname")[1]
        calls = 0
        real = reader._readable

        def counted() -> None:
            nonlocal calls
            calls += 1
            real()
        loop = asyncio.get_running_loop()
        loop.remove_reader(reader.sock.fileno())
        loop.add_reader(reader.sock.fileno(), counted)
        msg = sip.make_request("OPTIONS", "sip:x@192.0.2.1", local=PHONE, from_uri="sip:1001@192.0.2.1",
                               to_uri="sip:x@192.0.2.1", call_id="c", cseq=1, from_tag="f")
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            out.sendto(hep.encode(PHONE, PROVIDER, 1.0 + i, msg.encode()), ("127.0.0.1", port))
        out.sendto(b"\x00" * 10, ("127.0.0.1", port))      # malformed: dropped and counted, the rest read on
        out.close()
        for _ in range(200):
            if len(got) == 200 and proto.stats["malformed"] == 1:
                break
            await asyncio.sleep(0.01)
        reader.close()
        reader.close()                                     # twice: no error
        return len(got), calls, proto.stats["malformed"]

    received, wakeups, malformed = asyncio.run(scenario())
    assert received == 200 and malformed == 1
    assert wakeups < 201 / 2, f"{wakeups} wake-ups for 201 datagrams: not read in batches"
