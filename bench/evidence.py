"""Decode rate of the wire evidence pipeline: pcap stream and HEP v3, SIP messages per second on one core.

Generates REGISTER/200 traffic for N phones (default 5,000) registering with
two servers (provider and gateway): every phone's REGISTER and its 200 with
a granted expiry, as a pcap byte stream (Ethernet frames, fed in 64 KiB
chunks as the SSH stdout delivers them) and as HEP v3 datagrams. Each input
runs through the whole path to attributed observations (frame -> datagram ->
SIP parse -> transaction match -> attribution -> Observation). Prints messages
per CPU-second of the process (best of several runs; the wall-clock rate is printed beside it). Target: >= 20,000/s, about 100 times the
steady REGISTER load of a 5,000-phone site.

Detection latency (a phone's real change to the observation, per source, at
1,000 phones) needs the lab wiring of issue 10 and is not measured here.

Run: .venv/bin/python bench/evidence.py [--phones N] [--runs R]
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import socket
import sys
import time
from pathlib import Path

import dpkt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet.drivers.collect import hep  # noqa: E402
from fleet.drivers.collect.pcap_stream import PcapStreamParser, PcapWriter  # noqa: E402
from fleet.drivers.collect.wire_decode import LINKTYPE_ETHERNET  # noqa: E402
from fleet.drivers.collect.wire_observations import Attribution, WireTarget  # noqa: E402
from fleet.drivers.collect.wire_pipeline import WireEvidence  # noqa: E402

SERVERS = {1: ("203.0.113.10", 5060), 2: ("192.168.0.1", 5060)}
T0 = 1_795_700_000.0


def phone(i: int) -> tuple[str, str, str]:
    return f"0004f2{i:06x}", f"{2000 + i}", f"192.168.{1 + i // 250}.{2 + i % 250}"


def register(user: str, ip: str, server: tuple[str, int], cseq: int) -> bytes:
    return (f"REGISTER sip:{server[0]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{user}x{cseq}x{server[0]};rport\r\n"
            f"From: \"{user}\" <sip:{user}@{server[0]}>;tag=ab{user}\r\n"
            f"To: <sip:{user}@{server[0]}>\r\n"
            f"Call-ID: {user}-{server[0]}@{ip}\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@{ip}:5060>;methods=\"INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER\"\r\n"
            f"User-Agent: PolycomSoundPointIP-SPIP_550-UA/3.3.5.0247\r\n"
            f"Accept-Language: en\r\n"
            f"Max-Forwards: 70\r\n"
            f"Expires: 3600\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def ok(user: str, ip: str, server: tuple[str, int], cseq: int) -> bytes:
    return (f"SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{user}x{cseq}x{server[0]};rport=5060;received={ip}\r\n"
            f"From: \"{user}\" <sip:{user}@{server[0]}>;tag=ab{user}\r\n"
            f"To: <sip:{user}@{server[0]}>;tag=srv{user}\r\n"
            f"Call-ID: {user}-{server[0]}@{ip}\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@{ip}:5060>;expires=3600\r\n"
            f"Server: kamailio (5.6.3 (x86_64/linux))\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def traffic(phones: int) -> list[tuple[float, tuple[str, int], tuple[str, int], bytes]]:
    out = []
    t = T0
    for i in range(phones):
        _, user, ip = phone(i)
        for server in SERVERS.values():
            t += 0.0001
            out.append((t, (ip, 5060), server, register(user, ip, server, 7)))
            out.append((t + 0.00005, server, (ip, 5060), ok(user, ip, server, 7)))
    return out


def frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=17, data=udp)
    ip.len = 20 + len(bytes(udp))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x00\x04\xf2\x00\x00\x01", dst=b"\x00\x00\x5e\x00\x01\x01",
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def attribution(phones: int) -> Attribution:
    return Attribution(WireTarget(mac, 1, idx, addr, user, phone_ip=ip)
                       for i in range(phones) for (mac, user, ip) in [phone(i)] for idx, addr in SERVERS.items())


def run_pcap(stream: bytes, phones: int) -> tuple[float, float, int]:
    ev = WireEvidence(attribution(phones))
    parser = PcapStreamParser()
    n = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(stream), 65536):
        for rec in parser.feed(stream[i:i + 65536]):
            n += len(ev.feed_frame(rec.t, rec.linktype, rec.frame))
    return time.perf_counter() - wall, time.process_time() - cpu, n


def run_hep(datagrams: list[bytes], phones: int) -> tuple[float, float, int]:
    ev = WireEvidence(attribution(phones), source="hep")
    n = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for d in datagrams:
        n += len(ev.feed_hep(d))
    return time.perf_counter() - wall, time.process_time() - cpu, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})      # one core
    msgs = traffic(args.phones)
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_ETHERNET)
    for t, s, d, p in msgs:
        w.write(t, frame(s, d, p))
    stream = buf.getvalue()
    heps = [hep.encode(s, d, t, p) for t, s, d, p in msgs]
    # the pre-built traffic is not part of a running collector's heap: keep the cyclic GC from walking it
    gc.collect()
    gc.freeze()
    expected = args.phones * len(SERVERS)
    print(f"traffic: {args.phones} phones x {len(SERVERS)} servers, {len(msgs)} SIP messages "
          f"(REGISTER + 200), pcap {len(stream) / 1e6:.1f} MB")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"load average before the runs: {load:.2f} on {os.cpu_count()} cores (a loaded machine lowers the "
          f"wall-clock rate; the CPU-time rate is the decoder's own cost)")
    for name, fn, data in (("pcap", run_pcap, stream), ("hep", run_hep, heps)):
        best_wall = best_cpu = float("inf")
        for _ in range(args.runs):
            wall, cpu, n = fn(data, args.phones)
            if n != expected:
                raise SystemExit(f"{name}: {n} observations, expected {expected}")
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        rate = len(msgs) / best_cpu
        print(f"{name:5s} decode: {rate:10,.0f} SIP messages per CPU-second on one core "
              f"(wall clock: {len(msgs) / best_wall:,.0f}/s; {len(msgs)} messages -> {expected} observations)  "
              f"target >= 20,000/s: {'met' if rate >= 20_000 else 'NOT met'}")
    print("detection latency: not measured here (needs the lab wiring of issue 10)")


if __name__ == "__main__":
    main()
