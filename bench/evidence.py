"""Decode rate of the wire evidence pipeline: pcap stream and HEP v3, SIP messages per second on one core.

Generates REGISTER/200 traffic for N phones (default 5,000) registering with
two servers (provider and gateway): every phone's REGISTER and its 200 with
a granted expiry, as a pcap byte stream (Ethernet frames, fed in 64 KiB
chunks as the SSH stdout delivers them) and as HEP v3 datagrams. Each input
runs through the whole path to attributed observations (frame -> datagram ->
SIP parse -> transaction match -> attribution -> Observation). Prints messages
per CPU-second of the process (best of several runs; the wall-clock rate is printed beside it). Target: >= 20,000/s, about 100 times the
steady REGISTER load of a 5,000-phone site.

Detection latency (`--latency`, default on): from a phone's real change (the
moment its registrar's 200 OK, or its own notification, leaves) to the
observation stored in Redis, per source, at 5,000 phones with every source at
once (issue 22). A real collector (SiteCollector, its own thread and event
loop, a private redis-server) runs the sources: a pcap stream over a pipe into
the capture source's code path (what the router's SSH stdout feeds), HEP v3
over real UDP into its listener, telephone notification events over real HTTP
from each phone's own loopback address, and the gateway poller's delivery of
its registrar's answers (FreeSWITCH `show registrations`, every phone bound:
from the answer's arrival to stored; the change itself waits up to one poll
interval for it). The traffic comes from processes of its own, paced over
`--spread` seconds (a site's phones re-registering after an outage). Target:
p99 <= 50 ms for wire, HEP and events.

Run: .venv/bin/python bench/evidence.py [--phones N] [--runs R] [--latency-phones N] [--spread S] [--polls N]
     [--latency-only | --no-latency] [--timeline]
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
from soundpoint.deadline import poll_until  # noqa: E402
from fleet.evidence.wire import hep  # noqa: E402
from fleet.evidence.wire.pcap import PcapStreamParser, PcapWriter  # noqa: E402
from fleet.evidence.wire.decode import LINKTYPE_ETHERNET  # noqa: E402
from fleet.evidence.wire.attribution import Attribution, WireTarget  # noqa: E402
from fleet.evidence.wire.pipeline import WireEvidence  # noqa: E402

SERVERS = {1: ("203.0.113.10", 5060), 2: ("192.168.0.1", 5060)}
T0 = 1_795_700_000.0


def phone(i: int) -> tuple[str, str, str]:
    return f"0004f2{i:06x}", f"{2000 + i}", f"192.168.{1 + i // 250}.{2 + i % 250}"


def _dialog(user: str, ip: str, server: tuple[str, int], cseq: int, via_received: str, to_tag: str) -> str:
    """The header lines a REGISTER and its answer share (Via, From, To, Call-ID, CSeq)."""
    return (f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{user}x{cseq}x{server[0]};rport{via_received}\r\n"
            f"From: \"{user}\" <sip:{user}@{server[0]}>;tag=ab{user}\r\n"
            f"To: <sip:{user}@{server[0]}>{to_tag}\r\n"
            f"Call-ID: {user}-{server[0]}@{ip}\r\n"
            f"CSeq: {cseq} REGISTER\r\n")


def register(user: str, ip: str, server: tuple[str, int], cseq: int) -> bytes:
    return (f"REGISTER sip:{server[0]} SIP/2.0\r\n"
            + _dialog(user, ip, server, cseq, "", "")
            + f"Contact: <sip:{user}@{ip}:5060>;methods=\"INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER\"\r\n"
            f"User-Agent: PolycomSoundPointIP-SPIP_550-UA/3.3.5.0247\r\n"
            f"Accept-Language: en\r\n"
            f"Max-Forwards: 70\r\n"
            f"Expires: 3600\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def ok(user: str, ip: str, server: tuple[str, int], cseq: int) -> bytes:
    return ("SIP/2.0 200 OK\r\n"
            + _dialog(user, ip, server, cseq, f"=5060;received={ip}", f";tag=srv{user}")
            + f"Contact: <sip:{user}@{ip}:5060>;expires=3600\r\n"
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
    ap.add_argument("--latency-phones", type=int, default=5000)
    ap.add_argument("--spread", type=float, default=10.0, help="seconds over which the phones' changes are paced")
    ap.add_argument("--polls", type=int, default=2, help="gateway answers (every phone's binding) during the run")
    ap.add_argument("--latency-only", action="store_true", help="skip the decode rates")
    ap.add_argument("--timeline", action="store_true",
                    help="also print each source's worst latency per half second, and when the gateway answers came")
    ap.add_argument("--no-latency", dest="latency", action="store_false")
    args = ap.parse_args()
    if args.latency_only:
        latency(args.latency_phones, args.spread, args.polls, args.timeline)
        return
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
    if args.latency:
        if hasattr(os, "sched_setaffinity"):       # the collector's threads and Redis: every core again
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        latency(args.latency_phones, args.spread, args.polls, args.timeline)


# ---------------------------------------------------------------- detection latency through a real collector

LAT_PROVIDER, LAT_GATEWAY = ("203.0.113.10", 5060), ("127.0.0.1", 5060)


def lat_phone(i: int) -> tuple[str, str, str]:
    """MAC, user and a loopback address of its own (events must come from the phone's address)."""
    return f"0004f2{0x800000 + i:06x}", f"{30000 + i}", f"127.15.{200 + i // 250}.{2 + i % 250}"


class TimedStore:
    """The real Store, noting when each observation reached Redis (the moment `fleet status` could show it)."""

    def __init__(self, url: str) -> None:
        from fleet.state.store import Store

        self.store = Store(url)
        self.arrived: dict[tuple[str, str], float] = {}      # (mac, source) -> first store time

    def __getattr__(self, name):
        return getattr(self.store, name)

    def record_observations(self, observations):
        n = self.store.record_observations(observations)
        now = time.time()
        for o in observations:
            self.arrived.setdefault((o.mac, o.source), now)
        return n


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
    return f"p50 {pick(0.50):6.1f} ms  p95 {pick(0.95):6.1f} ms  p99 {pick(0.99):6.1f} ms  max {values[-1] * 1000:6.1f} ms"


def freeswitch_answer(phones: int, now: float) -> str:
    """The site gateway's `show registrations` (FreeSWITCH) holding a binding of every phone's line 1."""
    rows = [f"{user},{LAT_GATEWAY[0]},tok{i},sofia/internal/sip:{user}@{ip}:5060,{int(now) + 3600},{ip},5060,udp,gw"
            for i in range(phones) for _, user, ip in [lat_phone(i)]]
    return "\n".join([f"@now {int(now)}", "reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname",
                      *rows, "", f"{phones} total.", ""])


def _paced(phones: int, start: float, spread: float, send, only=lambda i: True) -> dict:
    """Send phone i at start + spread * i / phones (the sender's process: its own GIL, as the network is)."""
    sent = {}
    for i in range(phones):
        if not only(i):
            continue
        delay = start + spread * i / phones - time.time()
        if delay > 0:
            time.sleep(delay)   # pacing the load over `spread` seconds: part of the experiment
        key, t = send(i)
        if t is not None:
            sent[key] = t
    return sent


def latency(phones: int, spread: float, polls: int, timeline: bool = False) -> None:
    """Every source at once into one real collector: the wire (pcap over a pipe), HEP (UDP), the phones' events
    (HTTP from each phone's address), and `polls` answers of the gateway's registrar (bindings of every phone)
    handed to its poller's delivery as the SSH channel would. The traffic comes from processes of its own."""
    import http.client
    import multiprocessing
    import queue
    import tempfile

    from fleet.evidence.collector import SiteCollector
    from fleet.evidence.sources.capture import CaptureThread
    from fleet.evidence.sources.gateway_poller import GatewayPoller
    from fleet.evidence.sources.targets import Targets
    from fleet.config.inventory import Capture, Credentials, GatewayRegistrar, Inventory
    from soundpoint.redisboot import free_port, start_private
    from fleet.state.sites import register_site
    from hil import phone_reports
    from soundpoint import gc_policy

    url, redis_proc = start_private(Path(tempfile.mkdtemp(prefix="bench-evidence-")))
    hep_port = free_port()
    params = {"reg.1.server.1.address": LAT_PROVIDER[0], "reg.1.server.2.address": LAT_GATEWAY[0],
              "reg.1.server.1.retryTimeOut": "400", "reg.1.server.1.retryMaxCount": "3"}
    inv = Inventory.model_validate({
        "name": "bench", "firmware_family": "sip-3.x",
        "sites": [{"name": "bench", "gateway": LAT_GATEWAY[0], "boot_server": {"url": "file:///nonexistent"},
                   "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"},
                   "capture": [f"hep 127.0.0.1:{hep_port}"], "params": params,
                   "phones": [{"mac": mac, "model": "SoundPoint IP 650", "address": ip, "credentials": "x",
                               "params": {"reg.1.address": user}} for mac, user, ip in map(lat_phone, range(phones))]}]})
    site = inv.sites[0]
    store = TimedStore(url)
    register_site(store, inv, site)
    gc_policy.young_die_young()     # as `fleet collector` does (soundpoint.gc_policy)
    collector = SiteCollector(site, store, None, inv)      # type: ignore[arg-type]
    collector.start()
    gc_policy.settled()

    # the pcap stream: a pipe into the router-capture code path (pump), as the SSH stdout would feed it
    rfd, wfd = os.pipe()
    reader = os.fdopen(rfd, "rb", buffering=0)

    class PipeCapture(CaptureThread):
        label = "pipe capture"

        def run_once(self) -> None:
            import select

            def read(timeout: float):
                if not select.select([reader], [], [], timeout)[0]:
                    return b""
                return reader.read(65536) or None
            self.pump(read)
            self.stopping.wait()

    answers: queue.Queue[str] = queue.Queue()
    received: list[float] = []

    class FedBindings(GatewayPoller):
        """The gateway poller's own delivery, each answer handed over as its SSH channel would return it."""

        def run_once(self) -> None:
            self.running.set()
            while not self.stopping.is_set():
                try:
                    text = answers.get(timeout=0.1)
                except queue.Empty:
                    continue
                self.targets.refresh()
                received.append(time.time())
                self.deliver(text)

    targets = Targets(site, collector.phone_params)
    pipe_source = PipeCapture(site, collector.sink(), Capture(kind="router"), targets)
    gw_site = site.model_copy(update={"gateway_registrar": GatewayRegistrar(platform="freeswitch", interval=10)})
    bindings = FedBindings(gw_site, collector.sink(), targets, Credentials(username="bench", password="bench"))
    for src in (pipe_source, bindings):
        src.start()
        src.running.wait(10)
    writer = os.fdopen(wfd, "wb", buffering=0)
    head = io.BytesIO()
    PcapWriter(head, LINKTYPE_ETHERNET)
    writer.write(head.getvalue())
    ehost, eport = site.collector.events.rsplit(":", 1)

    def send_wire(i: int):
        mac, user, ip = lat_phone(i)
        buf = io.BytesIO()
        w = PcapWriter(buf, LINKTYPE_ETHERNET)
        w.write(time.time(), frame((ip, 5060), LAT_PROVIDER, register(user, ip, LAT_PROVIDER, 3)))
        t = time.time()
        w.write(t, frame(LAT_PROVIDER, (ip, 5060), ok(user, ip, LAT_PROVIDER, 3)))
        writer.write(buf.getvalue()[24:])
        return (mac, "wire"), t

    hep_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hep_sock.bind(("127.0.0.1", 0))

    def send_hep(i: int):
        mac, user, ip = lat_phone(i)
        hep_sock.sendto(hep.encode((ip, 5060), LAT_GATEWAY, time.time(), register(user, ip, LAT_GATEWAY, 3)),
                        ("127.0.0.1", hep_port))
        t = time.time()
        hep_sock.sendto(hep.encode(LAT_GATEWAY, (ip, 5060), t, ok(user, ip, LAT_GATEWAY, 3)), ("127.0.0.1", hep_port))
        return (mac, "hep"), t

    def send_event(i: int):
        mac, _, ip = lat_phone(i)
        conn = http.client.HTTPConnection(ehost, int(eport), timeout=5, source_address=(ip, 0))
        body = phone_reports.line_event("LineRegistrationEvent", mac, ip, 1)
        try:
            t = time.time()
            conn.request("POST", "/events", body=body, headers={"Content-Type": "application/xml"})
            ok_ = conn.getresponse().status == 200
            return (mac, "event"), t if ok_ else None
        finally:
            conn.close()

    senders = [("wire", send_wire, lambda i: True), ("hep", send_hep, lambda i: True),
               ("event", send_event, lambda i: i % 2 == 0), ("event", send_event, lambda i: i % 2 == 1)]
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 1.0

    def child(send, only) -> None:
        results.put(_paced(phones, start, spread, send, only))

    sent: dict = {}
    try:
        procs = [ctx.Process(target=child, args=(send, only), daemon=True) for _, send, only in senders]
        for p in procs:
            p.start()
        poll_times = [start + spread * (k + 0.5) / polls for k in range(polls)]
        answer = freeswitch_answer(phones, start)
        for at in poll_times:                          # the gateway's answers, while the rest goes on
            time.sleep(max(0.0, at - time.time()))
            answers.put(answer)
        for _ in procs:
            sent.update(results.get(timeout=spread + 120))
        for p in procs:
            p.join(10)
        expected = {"wire": phones, "hep": phones, "event": phones, "gateway": phones if polls else 0}
        # every observation stored, or 15 s (the ones still missing are counted below)
        poll_until(lambda: all(sum(1 for k in store.arrived if k[1] == n) >= c for n, c in expected.items()), 15, 0.05)
        if received:
            for i in range(phones):
                sent[(lat_phone(i)[0], "gateway")] = received[0]
        print(f"detection latency at {phones} phones, every source at once over {spread:g} s "
              f"({3 * phones} changes + {polls} gateway answers of {phones} bindings), send -> stored in Redis:")
        for name in ("wire", "hep", "event", "gateway"):
            lat = [store.arrived[k] - t for k, t in sent.items() if k[1] == name and k in store.arrived]
            missing = expected[name] - len(lat)
            if not lat:
                print(f"  {name:7s}: no observation arrived")
                continue
            p99 = sorted(lat)[min(len(lat) - 1, int(0.99 * len(lat)))]
            what = " (poll answer received -> stored; the change itself waits up to one poll interval)" if name == "gateway" else ""
            target = "" if name == "gateway" else f"  target p99 <= 50 ms: {'met' if p99 <= 0.05 else 'NOT met'}"
            print(f"  {name:7s}: {percentiles(lat)}{f'; {missing} missing' if missing else ''}{target}{what}")
            if timeline and name != "gateway":
                byb = {}
                for k, t in sent.items():
                    if k[1] == name and k in store.arrived:
                        byb.setdefault(int((t - start) * 2), []).append(store.arrived[k] - t)
                print("    worst per half second (s after start: ms): "
                      + " ".join(f"{b / 2:.1f}:{max(v) * 1000:.0f}" for b, v in sorted(byb.items())))
        if timeline:
            print("    gateway answers delivered at (s after start):", [round(r - start, 2) for r in received])
    finally:
        for src in (pipe_source, bindings):
            src.stop()
        collector.stop()
        writer.close()
        redis_proc.terminate()
        redis_proc.wait(10)


if __name__ == "__main__":
    main()
