"""hil.limits: the lab's descriptor estimate, the clear stop before opening anything, and the stop at run time
when a socket cannot be opened (a router relay flow out of descriptors)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil import limits
from hil.labfile import SHARED_SIP_ABOVE, LabFile

ROOT = Path(__file__).resolve().parent.parent


def spec(phones: int, *, http: bool = False, sip_sockets: str = "auto", servers=("provider", "gateway")) -> LabFile:
    return LabFile.model_validate({
        "name": "limits", "http": http, "sip_sockets": sip_sockets,
        "timing": {"boot_jitter": 100, "dns_ttl": 300},
        "sites": [{"name": "a", "phones": {"count": phones, "models": ["SoundPoint IP 650"]},
                   "servers": [{"address": a} for a in servers]}]})


def test_estimate_names_each_part_per_phone():
    per_phone = limits.estimate(spec(1000, http=True, sip_sockets="per-phone"), shared_sip=False).parts
    assert per_phone["phone SIP sockets"] == 1000
    assert per_phone["phone HTTP listeners"] == 1000
    assert per_phone["router relay SIP flows"] == 1000      # one NAT mapping per phone that reaches the provider
    shared = limits.estimate(spec(1000, sip_sockets="shared"), shared_sip=True).parts
    assert shared["phone SIP sockets"] == 1 and shared["phone HTTP listeners"] == 0
    # only the gateway (on the LAN): nothing through the relay
    assert limits.estimate(spec(1000, servers=("gateway",)), shared_sip=True).parts["router relay SIP flows"] == 0


def test_auto_shares_the_sip_socket_only_for_large_labs():
    assert not spec(SHARED_SIP_ABOVE).shared_sip
    assert spec(SHARED_SIP_ABOVE + 1).shared_sip
    assert spec(10, sip_sockets="shared").shared_sip
    assert not spec(SHARED_SIP_ABOVE + 1, sip_sockets="per-phone").shared_sip


def test_ensure_raises_the_soft_limit_to_what_is_needed():
    script = textwrap.dedent("""
        import resource
        from hil import limits
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 400))
        print(limits.ensure(limits.Budget({"x": 300}), may_raise_hard=False),
              resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["400", "400"]


def test_a_lab_beyond_the_limit_stops_before_opening_anything_with_the_reason(tmp_path):
    """As an unprivileged user with a hard limit of 300: a 5,000-phone lab (per-phone sockets) stops at once,
    naming what it needs and the limit, and leaves no control file behind."""
    state = tmp_path / "state"
    script = textwrap.dedent(f"""
        import asyncio, json, resource, time
        from pathlib import Path
        from hil import limits
        from hil.lab import Lab
        from hil.labfile import LabFile
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
        spec = LabFile.model_validate({{"name": "big", "sip_sockets": "per-phone",
            "sites": [{{"name": "a", "phones": {{"count": 5000, "models": ["SoundPoint IP 650"]}},
                        "servers": [{{"address": "provider"}}]}}]}})
        async def main():
            lab = Lab(spec, Path({str(state)!r}))
            lab.may_raise_hard_limit = False
            t0 = time.monotonic()
            try:
                await lab.start()
            except limits.OutOfDescriptors as exc:
                await lab.stop()
                return {{"reason": str(exc), "after": time.monotonic() - t0}}
            await lab.stop()
            return {{"reason": None}}
        print(json.dumps(asyncio.run(main())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["reason"], result
    assert "needs about" in result["reason"] and "the limit is 300" in result["reason"], result
    assert "phone SIP sockets 5000" in result["reason"] and "ulimit" in result["reason"], result
    assert result["after"] < 5, result
    assert not (state / "control.json").exists()


def test_a_relay_out_of_descriptors_tells_the_lab_within_5_s():
    """A router relay whose flows cannot get a WAN socket (the limit reached at run time) calls the lab's
    on_exhausted callback with the reason instead of dropping flows silently."""
    script = textwrap.dedent("""
        import asyncio, json, resource, sys, time
        from hil import limits
        from hil.router import Forward, UserspaceRouter
        async def main():
            reasons = []
            limits.on_exhausted(reasons.append)
            sink = socket_port = None
            loop = asyncio.get_running_loop()
            sink, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            router = UserspaceRouter("r", "127.0.0.1", "127.0.0.1",
                                     [Forward(("127.0.0.1", 0), sink.get_extra_info("sockname")[:2])])
            await router.start_relay()
            port = router.listeners[0].transport.get_extra_info("sockname")[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_count() + 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            print(json.dumps({"port": port}), flush=True)
            t0 = time.monotonic()
            while not reasons and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            print(json.dumps({"reasons": reasons[:1], "flows": router.flows}), flush=True)
            await router.stop()
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        clients = []
        t0 = time.monotonic()
        for _ in range(60):           # 60 flows from 60 client ports: more than the 20 descriptors left
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.sendto(b"x", ("127.0.0.1", port))
            clients.append(s)
        result = json.loads(proc.stdout.readline())
        elapsed = time.monotonic() - t0
    finally:
        proc.wait(timeout=30)
        for s in clients:
            s.close()
    assert result["reasons"], (result, proc.stderr.read()[-2000:])
    assert "out of file descriptors" in result["reasons"][0] and "relay flow" in result["reasons"][0], result
    assert 0 < result["flows"] < 60, result
    assert elapsed < 5, elapsed


def test_by_kind_counts_this_process_sockets():
    before = limits.by_kind().get("udp", 0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        assert limits.by_kind().get("udp", 0) == before + 1
    finally:
        s.close()


@pytest.mark.parametrize("err", [24, 23])    # EMFILE, ENFILE
def test_check_raises_only_for_exhaustion(err):
    seen = []
    off = limits.on_exhausted(seen.append)
    try:
        limits.check(OSError(98, "Address already in use"), "x")     # anything else: not ours to judge
        assert seen == []
        with pytest.raises(limits.OutOfDescriptors, match="x: out of file descriptors"):
            limits.check(OSError(err, "too many"), "x")
        assert len(seen) == 1
    finally:
        off()


def test_a_dns_question_flow_is_closed_once_answered_and_a_sip_flow_is_kept():
    """Each DNS question comes from a new port: its relay flow (a WAN socket) is closed with the answer, not kept
    30 s as Linux conntrack would (10,000 phones booting ran the lab out of descriptors); a SIP flow stays (its
    NAT mapping is the phone's address as the provider sees it). The relay's LAN side gets a large receive buffer."""
    from hil import udp_buffers
    from hil.router import Forward, UserspaceRouter

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(b"answer to " + data, addr)

    async def scenario() -> tuple:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        target = server.get_extra_info("sockname")[:2]
        router = UserspaceRouter("r", "127.0.0.1", "127.0.0.1",
                                 [Forward(("127.0.0.1", 0), target, questions=True), Forward(("127.0.0.1", 0), target)])
        await router.start_relay()
        answers = []
        try:
            for listener in router.listeners:
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.settimeout(5)
                client.sendto(b"q", listener.transport.get_extra_info("sockname")[:2])
                answers.append(await asyncio.to_thread(client.recv, 100))
                client.close()
            await asyncio.sleep(0.05)
            sizes = [listener.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                     for listener in router.listeners]
            return answers, [len(listener.sessions) for listener in router.listeners], sizes
        finally:
            await router.stop()
            server.close()

    answers, flows, sizes = asyncio.run(scenario())
    assert answers == [b"answer to q", b"answer to q"]
    assert flows == [0, 1], flows
    if os.geteuid() == 0:       # SO_RCVBUFFORCE: past net.core.rmem_max
        assert min(sizes) >= udp_buffers.RCVBUF, sizes


def test_a_registrar_keeps_its_nonces_in_issue_order_and_forgets_expired_ones_as_it_goes():
    """The sweep rebuilt the whole nonce table on every challenge once 50,000 were live: a core at 10,000 phones.
    Now each challenge drops only what has expired (and the oldest past MAX_NONCES)."""
    from hil import registrar as reg_mod

    r = reg_mod.Registrar("t", "127.0.0.1", 0, "realm", {})
    first = [r._new_nonce(100.0 + i * 0.001) for i in range(1000)]
    assert len(r._nonces) == 1000
    later = r._new_nonce(100.0 + reg_mod.NONCE_TTL_S + 0.5)     # the first 501 have expired by then
    assert len(r._nonces) == 500 and later in r._nonces and first[500] not in r._nonces and first[501] in r._nonces
    r2 = reg_mod.Registrar("t", "127.0.0.1", 0, "realm", {})
    orig = reg_mod.MAX_NONCES
    try:
        reg_mod.MAX_NONCES = 10
        nonces = [r2._new_nonce(5.0) for _ in range(25)]
    finally:
        reg_mod.MAX_NONCES = orig
    assert list(r2._nonces) == nonces[-10:]
