"""The userspace router: a UDP relay between LAN-side and WAN-side loopback addresses, run like a Linux box.

Phones reach the provider (and its DNS) only through the relay. The router is
controlled as a real one is: over a real SSH server whose commands run in
/bin/sh, where `ip`, `tc` and `iptables` are stand-ins (hil.router_tools) that
act on this relay through a control socket (hil.router_commands answers them).
So `ip link set dev wan0 down`, tagged `iptables -I FORWARD ... -j DROP`
rules, `tc qdisc add dev wan0 root handle 1fe1: netem delay 200ms`, and a
background `sleep 60; ip link set dev wan0 up` behave as on a Linux router.
`tcpdump -U -w - -i IFACE FILTER` streams pcap of the datagrams the router
relays (hil.router_capture), until the SSH channel closes; `kamcmd` reaches the
site's Kamailio gateway when the site has one (the gateway is the router).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from . import limits, udp_buffers
from .router_capture import Capture, CaptureArgsError, hep3_sip, parse_args, pcap_header
from .router_commands import RouterCommands, WanState

log = logging.getLogger(__name__)

FLOW_UNREPLIED_S = 30.0    # nf_conntrack_udp_timeout: a flow seen once each way (a DNS question) is forgotten then
FLOW_STREAM_S = 120.0      # nf_conntrack_udp_timeout_stream: a flow seen both ways more than once
FLOW_SWEEP_S = 5.0
# A DNS question's flow is closed once its answer is relayed, and one never answered (the WAN cut) after this: the
# phone's resolver asks again from a new port, so Linux keeping it 30 s only held a descriptor here for each
# question (at 10,000 phones booting, the lab ran out of them: bench/lab_scale.py)
QUESTION_FLOW_S = limits.DNS_FLOW_S     # what the lab's descriptor estimate counts on


@dataclass
class Forward:
    """Packets to `listen` on the LAN side go out of the WAN side to `target`; `questions`: each flow is one question
    and its answer (DNS), closed once answered (QUESTION_FLOW_S when never)."""
    listen: tuple[str, int]
    target: tuple[str, int]
    questions: bool = False


class _Session(asyncio.DatagramProtocol):
    """The WAN-side socket of one LAN client: the router's 'NAT' mapping."""

    def __init__(self, relay: "_Listener", client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()
        self.sent = self.replies = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def idle_limit(self) -> float:
        """Like Linux conntrack: a flow seen both ways more than once (a SIP registration) is kept FLOW_STREAM_S
        after its last packet, any other (a DNS question and its answer) FLOW_UNREPLIED_S."""
        if self.relay.forward.questions:
            return QUESTION_FLOW_S
        return FLOW_STREAM_S if self.replies and self.sent > 1 else FLOW_UNREPLIED_S

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.last = time.monotonic()
        self.replies += 1
        router = self.relay.router
        if router.captures and router.wan.admin_up and self.transport is not None:
            router.capture("wan0", addr[:2], self.transport.get_extra_info("sockname")[:2], data)
        router.forward_packet(self.relay.transport, data, self.client, self.relay.forward.target[1],
                              "lan0", self.relay.forward.listen)
        if self.relay.forward.questions:
            self.relay.close_flow(self.client)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, router: "UserspaceRouter", forward: Forward) -> None:
        self.router, self.forward = router, forward
        self.transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[tuple[str, int], _Session] = {}
        self.opening: dict[tuple[str, int], list[bytes]] = {}    # flows whose WAN socket is being opened

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if self.router.captures:
            self.router.capture("lan0", addr[:2], self.forward.listen, data)
        client = addr[:2]
        session = self.sessions.get(client)
        if session is not None:         # the common case, a known flow: forwarded now, no task
            self._outbound(session, data)
        elif client in self.opening:    # its socket is being opened: sent once it is, in order
            self.opening[client].append(data)
        else:
            self.opening[client] = [data]
            asyncio.ensure_future(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        """The WAN-side socket of a new flow (the NAT mapping); out of descriptors stops the lab (hil.limits)."""
        loop = asyncio.get_running_loop()
        try:
            _, session = await loop.create_datagram_endpoint(lambda: _Session(self, client),
                                                             local_addr=(self.router.wan_ip, 0))
        except OSError as exc:
            self.opening.pop(client, None)
            limits.check(exc, f"{self.router.name}: relay flow for {client[0]}:{client[1]}")
            log.warning("%s: relay flow for %s not opened: %s", self.router.name, client, exc)
            return
        self.sessions[client] = session
        for data in self.opening.pop(client, []):
            self._outbound(session, data)

    def _outbound(self, session: _Session, data: bytes) -> None:
        session.last = time.monotonic()
        session.sent += 1
        wan_side = session.transport.get_extra_info("sockname")[:2] if session.transport else (self.router.wan_ip, 0)
        self.router.forward_packet(session.transport, data, self.forward.target, self.forward.target[1], "wan0", wan_side)

    def close_flow(self, client: tuple[str, int]) -> None:
        session = self.sessions.pop(client, None)
        if session is not None and session.transport:
            session.transport.close()

    def expire(self, now: float) -> int:
        """Close the flows idle past their limit (_Session.idle_limit); how many were closed."""
        idle = [c for c, s in self.sessions.items() if now - s.last > s.idle_limit()]
        for client in idle:
            self.close_flow(client)
        return len(idle)


class UserspaceRouter:
    def __init__(self, name: str, lan_ip: str, wan_ip: str, forwards: list[Forward], wan_name: str = "wan0") -> None:
        self.name, self.lan_ip, self.wan_ip = name, lan_ip, wan_ip
        self.forwards = forwards
        self.wan = WanState(name=wan_name)
        self.cmds = RouterCommands(self.wan)
        self.listeners: list[_Listener] = []
        self.ctl_server: asyncio.AbstractServer | None = None
        self.ssh_server: asyncssh.SSHAcceptor | None = None
        self.slow: dict[str, float] = {}    # lab fault: command substring -> seconds before it runs
        self.captures: list[Capture] = []    # running `tcpdump -w -` streams
        self.kamailio_ctl: Path | None = None    # the site's Kamailio gateway, for `kamcmd` over SSH
        self.hep_tap: asyncio.DatagramTransport | None = None
        self._expiry: asyncio.Task | None = None

    # ------------------------------------------------------------------ data plane
    async def start_relay(self) -> None:
        loop = asyncio.get_running_loop()
        for fwd in self.forwards:
            transport, proto = await loop.create_datagram_endpoint(lambda f=fwd: _Listener(self, f), local_addr=fwd.listen)
            udp_buffers.enlarge_transport(transport)     # the LAN side of the relay: every phone of the site
            self.listeners.append(proto)
        self._expiry = asyncio.ensure_future(self._expire_flows())

    async def _expire_flows(self) -> None:
        """Idle flows go, as a router's connection tracking forgets them: each DNS question comes from a new
        port, and without this every one would keep a WAN socket (a descriptor) for the life of the lab."""
        while True:
            await asyncio.sleep(FLOW_SWEEP_S)
            now = time.monotonic()
            for listener in self.listeners:
                listener.expire(now)

    @property
    def flows(self) -> int:
        """WAN-side sockets open now (one per relayed flow)."""
        return sum(len(listener.sessions) for listener in self.listeners)

    def forward_packet(self, transport, data: bytes, dest: tuple[str, int], dport: int,
                       iface: str = "", src: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        """Both directions pass the same WAN state, so a cut stops traffic both ways at once.
        `iface` and `src` say where the packet leaves the router, for the captures."""
        if transport is None or not self.wan.passes(dport):
            return
        if self.wan.delay:
            asyncio.get_running_loop().call_later(self.wan.delay, self._send, transport, data, dest, iface, src)
        else:
            self._send(transport, data, dest, iface, src)

    def _send(self, transport, data: bytes, dest, iface: str = "", src: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        if not transport.is_closing():
            transport.sendto(data, dest)
            if self.captures and iface:
                self.capture(iface, src, dest, data)

    # ------------------------------------------------------------------ captures
    def capture(self, iface: str, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        """Hand one datagram seen on `iface` to every running capture whose filter takes it."""
        t = time.time()
        for cap in self.captures:
            cap.offer(t, iface, src, dst, data)

    def tap_endpoint(self, endpoint: asyncio.DatagramProtocol, iface: str = "lan0") -> None:
        """Capture what a socket on the router itself (the built-in gateway registrar) receives and sends,
        as tcpdump on the LAN interface sees the gateway's SIP when the gateway is the router."""
        router = self
        received = endpoint.datagram_received
        transport = getattr(endpoint, "transport", None)
        if transport is None:
            raise ValueError("tap_endpoint needs a bound endpoint")
        local = transport.get_extra_info("sockname")[:2]

        def on_datagram(data: bytes, addr) -> None:
            if router.captures:
                router.capture(iface, addr[:2], local, data)
            received(data, addr)

        class _Tapped:
            """The endpoint's transport, with each sent datagram also shown to the captures."""

            def sendto(self, data: bytes, addr=None) -> None:
                transport.sendto(data, addr)
                if router.captures and addr is not None:
                    router.capture(iface, local, addr[:2], data)

            def __getattr__(self, name: str):
                return getattr(transport, name)

        endpoint.datagram_received = on_datagram  # type: ignore[method-assign]
        endpoint.transport = _Tapped()  # type: ignore[attr-defined]

    async def start_hep_tap(self, listen: tuple[str, int], forward_to: tuple[str, int] | None) -> None:
        """Receive the Kamailio gateway's siptrace (HEP v3): its SIP goes into the LAN captures (the gateway runs
        on the router, so tcpdump there would see it), and each datagram goes on unchanged to the site's HEP
        collector when it has one."""
        router = self

        class _Tap(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:  # type: ignore[override]
                self.transport = transport

            def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
                if forward_to is not None:
                    self.transport.sendto(data, forward_to)
                if router.captures:
                    sip = hep3_sip(data)
                    if sip is not None:
                        # stamped on arrival, not with Kamailio's time: a capture's records are in time order
                        _, src, dst, payload = sip
                        router.capture("lan0", src, dst, payload)

        self.hep_tap, _ = await asyncio.get_running_loop().create_datagram_endpoint(_Tap, local_addr=listen)

    async def _stream_capture(self, argv: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """`tcpdump ...` on the control socket: a JSON answer line, then pcap bytes until the tool goes away."""
        try:
            spec = parse_args(argv[1:])
        except CaptureArgsError as exc:
            writer.write(json.dumps({"rc": exc.rc, "stdout": "", "stderr": str(exc) + "\n"}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        self.cmds.log.append({"t": time.time(), "argv": argv})
        writer.write(json.dumps({"stream": True, "stderr": spec.banner()}).encode() + b"\n" + pcap_header())
        cap = Capture(spec, writer)
        self.captures.append(cap)
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            cap.closed = True
            self.captures.remove(cap)
            writer.close()

    # ------------------------------------------------------------------ control plane
    def apply(self, argv: list[str]) -> tuple[int, str, str]:
        """Run one router command (`ip ...`, `tc ...`, `iptables ...`); returns rc, stdout, stderr."""
        return self.cmds.apply(argv)

    @property
    def commands(self) -> list[dict]:
        return self.cmds.log

    async def start_control(self, socket_path: Path) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                argv = [str(a) for a in json.loads(await reader.readline())]
                if argv[:1] == ["tcpdump"]:
                    await self._stream_capture(argv, reader, writer)
                    return
                delay = max((t for k, t in self.slow.items() if k in " ".join(argv)), default=0.0)
                if delay:
                    await asyncio.sleep(delay)
                rc, out, err = self.apply(argv)
            except (ValueError, TypeError):
                rc, out, err = 2, "", "router control: bad request\n"
            except (ConnectionError, OSError):
                return
            writer.write(json.dumps({"rc": rc, "stdout": out, "stderr": err}).encode() + b"\n")
            await writer.drain()
            writer.close()

        if socket_path.exists():
            socket_path.unlink()
        self.ctl_server = await asyncio.start_unix_server(handle, path=str(socket_path))

    async def start_ssh(self, host: str, port: int, host_key: Path, authorized_keys: Path, tools_dir: Path,
                        ctl_socket: Path, username: str) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{tools_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        env["HIL_ROUTER_CTL"] = str(ctl_socket)
        if self.kamailio_ctl:
            env["HIL_KAMAILIO_CTL"] = str(self.kamailio_ctl)

        async def run_command(process: asyncssh.SSHServerProcess) -> None:
            if process.get_extra_info("username") != username:
                process.stderr.write(b"permission denied\n")
                process.exit(255)
                return
            command = process.command or ""
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, env=env, cwd="/",
                                                        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, start_new_session=True)
            await _relay_output(process, proc)

        self.ssh_server = await asyncssh.create_server(
            _KeyOnly, host, port, server_host_keys=[str(host_key)],
            authorized_client_keys=str(authorized_keys), process_factory=run_command, encoding=None)

    def tools(self, tools_dir: Path) -> None:
        """Write the stand-in executables that the SSH shell finds first on PATH."""
        tools_dir.mkdir(parents=True, exist_ok=True)
        for tool in ("ip", "tc", "iptables", "modprobe", "tcpdump"):
            path = tools_dir / tool
            path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hil.router_tools {tool} \"$@\"\n")
            path.chmod(0o755)
        # the site's Kamailio gateway runs on the router: kamcmd reaches its control socket (if the site has one)
        kamcmd = tools_dir / "kamcmd"
        kamcmd.write_text('#!/bin/sh\nif [ -z "$HIL_KAMAILIO_CTL" ]; then echo "sh: 1: kamcmd: not found" >&2; exit 127; fi\n'
                          f'exec {shlex.quote(_real("kamcmd"))} -s "unix:$HIL_KAMAILIO_CTL" "$@"\n')
        kamcmd.chmod(0o755)

    def summary(self) -> dict:
        return {"name": self.name, "lan": self.lan_ip, "wan": self.wan_ip,
                "wan_state": {"interface": self.wan.name, "admin_up": self.wan.admin_up, "loss": self.wan.loss,
                              "delay": self.wan.delay, "drop_all": self.wan.drop_all, "drop_ports": sorted(self.wan.drop_ports),
                              "rules": [" ".join(r) for r in self.wan.rules], "root_qdisc": " ".join(self.wan.root_qdisc),
                              "routes": list(self.wan.routes)},
                "history": self.wan.history[-200:], "commands": self.commands[-200:],
                "captures": [{"interface": c.spec.interface_name, "frames": c.frames, "dropped": c.dropped}
                             for c in self.captures]}

    async def stop(self) -> None:
        if self._expiry:
            self._expiry.cancel()
        for listener in self.listeners:
            for s in listener.sessions.values():
                if s.transport:
                    s.transport.close()
            if listener.transport:
                listener.transport.close()
        for cap in list(self.captures):
            cap.closed = True
            cap.writer.close()  # type: ignore[attr-defined]
        if self.hep_tap:
            self.hep_tap.close()
        if self.ctl_server:
            self.ctl_server.close()
        if self.ssh_server:
            self.ssh_server.close()


def _real(tool: str) -> str:
    """The machine's own executable (the stand-ins' directory comes first on the SSH shell's PATH)."""
    import shutil

    return shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") or tool


async def _pump(src: asyncio.StreamReader, dst) -> None:
    """Copy a command's output to the SSH channel as it comes (a capture streams for as long as it runs)."""
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        pass


async def _relay_output(process: asyncssh.SSHServerProcess, proc: asyncio.subprocess.Process) -> None:
    """Stream stdout and stderr, then the exit status. When the client closes the channel first, our ends of the
    command's pipes are closed, so its next write fails (SIGPIPE / EPIPE) as under OpenSSH: a `tcpdump -w -`
    ends with its next packet, a background `sleep 60; ip link set ... up` that writes nothing runs on."""
    pumps = asyncio.ensure_future(asyncio.gather(_pump(proc.stdout, process.stdout),  # type: ignore[arg-type]
                                                 _pump(proc.stderr, process.stderr)))  # type: ignore[arg-type]
    closed = asyncio.ensure_future(process.channel.wait_closed())
    try:
        await asyncio.wait({pumps, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not pumps.done():                      # the client went away while the command still writes
            pumps.cancel()
            transport = getattr(proc, "_transport", None)
            for fd in (1, 2):
                pipe = transport.get_pipe_transport(fd) if transport else None
                if pipe is not None:
                    pipe.close()
            asyncio.ensure_future(proc.wait())    # reap it whenever it ends
            return
        rc = await proc.wait()
        if not closed.done():
            process.exit(rc if rc >= 0 else 128 - rc)
    finally:
        closed.cancel()


class _KeyOnly(asyncssh.SSHServer):
    """Public-key login only (keys from the authorized_keys file); no passwords."""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False
