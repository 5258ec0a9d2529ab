"""The collector runs the per-server sources the inventory names, end to end into a real Redis.

- router capture: the collector logs in to an SSH server (asyncssh, as the lab router) and runs the Linux
  platform's capture command there: the real tcpdump on `lo`, its pcap stdout streamed back over SSH while
  phones (plain UDP sockets) REGISTER with a server socket that answers 200;
- HEP: HEP v3 datagrams over real UDP, from the gateway's address (accepted) and from a stranger (dropped);
- a capture whose output is not pcap, and HEP junk, never stop the collector; the source restarts.

Needs tcpdump and CAP_NET_RAW for the capture (skips with the reason otherwise).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path

import asyncssh
import pytest
import yaml

from conftest import free_port, require_loopback_capture, udp_socket, wait_until
from fleet.evidence.collector import SiteCollector
from fleet.state.sites import register_site
from fleet.evidence.wire import hep
from fleet.config.inventory import Inventory, Secrets
from fleet.state.observe import REGISTERED, UNREGISTERED
from fleet.state.store import Store
from sipwire import message as sip

PHONES = {"0004f2fa0001": ("127.15.250.2", "5001"), "0004f2fa0002": ("127.15.250.3", "5002")}
GATEWAY = "127.0.0.1"            # the site's gateway: where HEP comes from
STRANGER = "127.15.250.9"


class SshRouter:
    """An SSH server on loopback that runs what it is asked in /bin/sh and streams stdout back as it comes
    (as OpenSSH does). `junk` > 0: answer that many capture requests with bytes that are not pcap."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.junk = 0
        self.commands: list[str] = []
        self.loop = asyncio.new_event_loop()
        client, host = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
        client.write_private_key(str(tmp / "client_key"))
        os.chmod(tmp / "client_key", 0o600)
        host.write_private_key(str(tmp / "host_key"))
        (tmp / "authorized_keys").write_text(client.export_public_key().decode())
        (tmp / "bin").mkdir()
        (tmp / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host.export_public_key().decode().strip()}\n")
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        assert ready.wait(10), "SSH server did not start"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def run(process: asyncssh.SSHServerProcess) -> None:
            command = process.command or ""
            self.commands.append(command)
            if "tcpdump" in command and self.junk > 0:
                self.junk -= 1
                process.stdout.write(b"this is not a pcap stream at all, just text\n" * 4)
                process.exit(0)
                return
            env = dict(os.environ, PATH=f"{self.tmp / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, stdout=asyncio.subprocess.PIPE, env=env,
                                                        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            try:
                while data := await proc.stdout.read(65536):
                    process.stdout.write(data)
                    await process.stdout.drain()
            except (asyncssh.Error, ConnectionError, BrokenPipeError):
                pass
            finally:
                if proc.returncode is None:
                    proc.terminate()
                await proc.wait()
            process.exit(proc.returncode or 0)

        async def start() -> None:
            self.server = await asyncssh.create_server(
                asyncssh.SSHServer, "127.0.0.1", self.port, server_host_keys=[str(self.tmp / "host_key")],
                authorized_client_keys=str(self.tmp / "authorized_keys"), process_factory=run, encoding=None)

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def ssh_router(tmp_path):
    router = SshRouter(tmp_path)
    yield router
    router.close()


def _inventory(tmp: Path, router: SshRouter, ports: tuple[int, int], capture: list, gateway=GATEWAY,
               provider: str = "127.0.0.1") -> Inventory:
    (tmp / "secrets.yml").write_text(yaml.safe_dump({"router": {"username": "fleet",
                                                                "key_file": str(tmp / "client_key")},
                                                     "admin": {"password": "x"}}))
    params = {"reg.1.server.1.address": provider, "reg.1.server.1.port": ports[0],
              "reg.1.server.2.address": GATEWAY, "reg.1.server.2.port": ports[1],
              "reg.1.server.1.retryTimeOut": 300, "reg.1.server.1.retryMaxCount": 2}
    return Inventory.model_validate({
        "name": "wire", "firmware_family": "sip-3.x", "secrets_file": str(tmp / "secrets.yml"),
        "sites": [{"name": "wire", "gateway": gateway, "boot_server": {"url": "file:///nonexistent"},
                   "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"},
                   "router": {"driver": "linux_ssh", "address": "127.0.0.1", "port": router.port, "credentials": "router",
                              "wan_interface": "lo", "known_hosts": str(tmp / "known_hosts")},
                   "capture": capture, "params": {k: str(v) for k, v in params.items()},
                   "phones": [{"mac": mac, "model": "SoundPoint IP 650", "address": ip, "credentials": "admin",
                               "params": {"reg.1.address": user}} for mac, (ip, user) in PHONES.items()]}]})


@pytest.fixture
def store(redis_url):
    s = Store(redis_url)
    s.forget_phones(list(PHONES))
    return s


def _start(inv: Inventory, store: Store) -> SiteCollector:
    site = inv.sites[0]
    register_site(store, inv, site)
    c = SiteCollector(site, store, Secrets(inv), inv)
    c.start()
    return c


def _register(phone_ip: str, user: str, server: tuple[str, int], cseq: int, expires: int = 120) -> bytes:
    return sip.make_request("REGISTER", f"sip:{server[0]}:{server[1]}", local=(phone_ip, 5060),
                            from_uri=f"sip:{user}@{server[0]}", to_uri=f"sip:{user}@{server[0]}",
                            call_id=f"{user}-{server[1]}@{phone_ip}", cseq=cseq, from_tag=f"t{user}",
                            contact=f"<sip:{user}@{phone_ip}:5060>", extra=[("Expires", str(expires))]).encode()


def _server_state(store: Store, mac: str, server: int) -> dict:
    return store.phone_state(mac).servers.get(server) or {}


def test_router_capture_and_hep_give_per_server_state_through_the_store(tmp_path, ssh_router, store):
    require_loopback_capture()
    provider = udp_socket(timeout=0.3)
    gw_port, hep_port = free_port(), free_port()
    inv = _inventory(tmp_path, ssh_router, (provider.getsockname()[1], gw_port), ["router lo", f"hep 127.0.0.1:{hep_port}"])
    exp = store.new_experiment("wire", "wire-test")
    store.set_observing("wire", exp)
    ssh_router.junk = 1        # the first capture answers garbage: the source must restart, not die
    c = _start(inv, store)
    phones = {}
    try:
        for mac, (ip, _) in PHONES.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            phones[mac] = s
        wait_until(lambda: c.observing == exp, 10, "the collector noticing the experiment")

        # HEP from the gateway: phone 1 registered there (REGISTER, 200 with expires=90); phone 2 refused (403)
        (ip1, u1), (ip2, u2) = PHONES["0004f2fa0001"], PHONES["0004f2fa0002"]
        gw = (GATEWAY, gw_port)
        to_hep = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        to_hep.bind((GATEWAY, 0))
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind((STRANGER, 0))
        for ip, user, code in ((ip1, u1, 200), (ip2, u2, 403)):
            req = _register(ip, user, gw, 1, 90)
            resp = sip.make_response(sip.parse(req), code, "OK" if code == 200 else "Forbidden",
                                     extra=[("Expires", "90")] if code == 200 else []).encode()
            # a stranger's forged 200 for phone 2 comes first and must be dropped
            stranger.sendto(hep.encode((ip2, 5060), gw, 1.0, _register(ip2, u2, gw, 1, 90)), ("127.0.0.1", hep_port))
            to_hep.sendto(b"HEP3 junk that is not a HEP packet", ("127.0.0.1", hep_port))
            now = time.time()      # a HEP agent's clock is ours within seconds (NTP); far off, it is dropped
            to_hep.sendto(hep.encode((ip, 5060), gw, now, req), ("127.0.0.1", hep_port))
            to_hep.sendto(hep.encode(gw, (ip, 5060), now + 0.01, resp), ("127.0.0.1", hep_port))
        wait_until(lambda: _server_state(store, "0004f2fa0002", 2).get("code") == 403
                   and _server_state(store, "0004f2fa0001", 2).get("state") == REGISTERED, 10,
                   "HEP observations in the store")
        s1 = _server_state(store, "0004f2fa0001", 2)
        assert (s1["source"], s1["code"], s1["until"] - s1["t"]) == ("hep", 200, pytest.approx(90, abs=0.01)), s1
        assert _server_state(store, "0004f2fa0002", 2)["state"] == UNREGISTERED

        # the router capture: real REGISTERs on lo, answered by the provider socket; phone 2 gets no answer
        cseq = 0

        def exchange() -> bool:
            nonlocal cseq
            cseq += 1
            for mac, (ip, user) in PHONES.items():
                phones[mac].sendto(_register(ip, user, provider.getsockname(), cseq, 300), provider.getsockname())
            try:
                while True:
                    data, addr = provider.recvfrom(65535)
                    msg = sip.parse(data)
                    if addr[0] == ip1:
                        provider.sendto(sip.make_response(msg, 200, "OK", extra=[("Expires", "300")]).encode(), addr)
            except socket.timeout:
                pass
            st1, st2 = _server_state(store, "0004f2fa0001", 1), _server_state(store, "0004f2fa0002", 1)
            return st1.get("source") == "wire" and st2.get("source") == "wire"

        wait_until(exchange, 40, "wire observations of both phones at server 1 "
                                 f"(sources: {[getattr(x, 'last_error', '') for x in c.evidence]})")
        st1, st2 = _server_state(store, "0004f2fa0001", 1), _server_state(store, "0004f2fa0002", 1)
        assert (st1["state"], st1["code"]) == (REGISTERED, 200), st1
        assert st2["state"] == UNREGISTERED and "code" not in st2, "no answer: a timeout, not a refusal"
        assert store.phone_state("0004f2fa0001").working_server == 1
        assert store.phone_state("0004f2fa0002").working_server is None
        router_source = next(x for x in c.evidence if getattr(x, "label", "") == "router capture")
        assert router_source.running.is_set() and "not a pcap stream" in router_source.last_error, router_source.last_error
        assert any("tcpdump" in cmd and "-i lo" in cmd for cmd in ssh_router.commands), ssh_router.commands
        assert ssh_router.junk == 0

        # the experiment keeps the SIP both sources saw (for its capture.pcap); the stranger's is not in it
        kept = wait_until(lambda: (lambda k: k if {d["source"] for d in k} == {"wire", "hep"} else None)(store.capture(exp)),
                          10, "kept SIP datagrams from both sources")
        assert all(d["src"][0] != STRANGER for d in kept)
        hep_source = next(x for x in c.evidence if getattr(x, "source", "") == "hep" and not hasattr(x, "label"))
        # only the gateway's four datagrams were decoded: the stranger's and the junk never reached the decoder
        assert hep_source.evidence.stats.get("register_messages", 0) == 4, hep_source.evidence.stats
    finally:
        c.stop()
        store.set_observing("wire", None)
        for s in phones.values():
            s.close()
        provider.close()


FS_CLI = """#!/bin/sh
# FreeSWITCH's fs_cli as the gateway answers `show registrations` (expires: absolute, on the gateway's clock)
cat "$(dirname "$0")/registrations.txt"
"""


def test_gateway_bindings_are_polled_over_the_router_ssh(tmp_path, ssh_router, store):
    """FreeSWITCH as the gateway (its fs_cli stands on the router's PATH): bindings become server 2's state;
    an answer that is not a complete listing gives no observation, and a binding that goes away reads as
    unregistered at the next poll."""
    fs = tmp_path / "bin" / "fs_cli"
    fs.write_text(FS_CLI)
    fs.chmod(0o755)
    listing = tmp_path / "bin" / "registrations.txt"

    def answer(text: str) -> None:
        """The gateway's next answer, whole: a poll never reads a file half written (truncated, then filled)."""
        part = listing.with_suffix(".part")
        part.write_text(text)
        part.replace(listing)
    answer("-ERR no reply\n")

    def bound(*users: str) -> str:
        rows = "".join(f"{u},127.0.0.1,tok{u},sofia/internal/sip:{u}@{ip}:5060,{int(__import__('time').time()) + 60},"
                       f"{ip},5060,udp,gw,\n" for mac, (ip, u) in PHONES.items() if u in users)
        return (f"reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,metadata\n{rows}\n"
                f"{len(users)} total.\n")

    inv = _inventory(tmp_path, ssh_router, (free_port(), free_port()), [],
                     gateway={"address": GATEWAY, "platform": "freeswitch", "interval": 1}, provider="127.0.0.5")
    c = _start(inv, store)
    try:
        poller = c.evidence[0]
        wait_until(lambda: any("fs_cli" in cmd for cmd in ssh_router.commands), 10, "the first poll")
        assert poller.polls == 0 and store.phone_state("0004f2fa0001").observed_at is None, "junk made an observation"
        answer(bound("5001"))
        wait_until(lambda: _server_state(store, "0004f2fa0002", 2).get("source") == "gateway", 10, "a bindings poll")
        s1, s2 = _server_state(store, "0004f2fa0001", 2), _server_state(store, "0004f2fa0002", 2)
        assert s1["state"] == REGISTERED and 55 <= s1["until"] - s1["t"] <= 61, (s1, s2, poller.polls, ssh_router.commands[-3:])
        assert s2["state"] == UNREGISTERED, s2
        assert store.phone_state("0004f2fa0001").working_server is None, "bindings alone say nothing of server 1"
        answer(bound())
        wait_until(lambda: _server_state(store, "0004f2fa0001", 2).get("state") == UNREGISTERED, 10,
                   "the binding's removal seen")
        assert store.phone_state("0004f2fa0001").working_server is None
    finally:
        c.stop()


def test_a_capture_that_cannot_start_is_reported_and_the_rest_keeps_working(tmp_path, ssh_router, store):
    """`capture: interface NAME` naming no interface of this host: the source says why (and is retried slowly);
    the collector's other sources still record."""
    import http.client

    from hil import phone_reports

    inv = _inventory(tmp_path, ssh_router, (free_port(), free_port()), ["interface nosuch0"])
    inv.sites[0].params["reg.1.server.2.transport"] = "TLS"          # server 2 over TLS: no capture can see it
    c = _start(inv, store)
    try:
        local = c.evidence[0]
        wait_until(lambda: local.last_error, 10, "the local capture's error")
        assert "nosuch0" in local.last_error or "CAP_NET_RAW" in local.last_error, local.last_error
        # `fleet status --json`: the failing source with since and why, and every phone's server 2 not observable
        rows = wait_until(lambda: (lambda r: r if r and r[0].get("evidence_errors") else None)(
            json.loads(store.status_json("wire"))), 10, "the collector's evidence report in the store",
            state=lambda: store.site_evidence(["wire"]))
        errors = rows[0]["evidence_errors"]
        assert [e["source"] for e in errors] == ["local capture"] and "nosuch0" in errors[0]["error"], errors
        assert errors[0]["since"] <= time.time()
        assert {(r["mac"], u["server"], u["why"]) for r in rows for u in r["unobservable"]} == {
            (mac, 2, "registers over TLS (encrypted)") for mac in PHONES}
        assert "secret" not in json.dumps(rows).lower() and "password" not in json.dumps(rows).lower()
        mac, (ip, _) = next(iter(PHONES.items()))
        host, port = inv.sites[0].collector.events.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(ip, 0))
        conn.request("POST", "/events", body=phone_reports.line_event("LineRegistrationEvent", mac, ip, 1))
        assert conn.getresponse().status == 200
        conn.close()
        wait_until(lambda: store.phone_state(mac).line_state == REGISTERED, 10, "the event recorded")
    finally:
        c.stop()
