"""The userspace router: a UDP relay between LAN-side and WAN-side loopback addresses, run like a Linux box.

Phones reach the provider (and its DNS) only through the relay. The router is
controlled as a real one is: over a real SSH server whose commands run in
/bin/sh, where `ip`, `tc` and `iptables` are stand-ins (hil.router_tools) that
act on this relay through a control socket (hil.router_commands answers them).
So `ip link set dev wan0 down`, tagged `iptables -I FORWARD ... -j DROP`
rules, `tc qdisc add dev wan0 root handle 1fe1: netem delay 200ms`, and a
background `sleep 60; ip link set dev wan0 up` behave as on a Linux router.
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

from .router_commands import RouterCommands, WanState

log = logging.getLogger(__name__)


@dataclass
class Forward:
    """Packets to `listen` on the LAN side go out of the WAN side to `target`."""
    listen: tuple[str, int]
    target: tuple[str, int]


class _Session(asyncio.DatagramProtocol):
    """The WAN-side socket of one LAN client: the router's 'NAT' mapping."""

    def __init__(self, relay: "_Listener", client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.last = time.monotonic()
        self.relay.router.forward_packet(self.relay.transport, data, self.client, self.relay.forward.target[1])


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, router: "UserspaceRouter", forward: Forward) -> None:
        self.router, self.forward = router, forward
        self.transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[tuple[str, int], _Session] = {}

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        asyncio.ensure_future(self._outbound(data, addr[:2]))

    async def _outbound(self, data: bytes, client: tuple[str, int]) -> None:
        session = self.sessions.get(client)
        if session is None:
            loop = asyncio.get_running_loop()
            _, session = await loop.create_datagram_endpoint(lambda: _Session(self, client),
                                                             local_addr=(self.router.wan_ip, 0))
            self.sessions[client] = session
        session.last = time.monotonic()
        self.router.forward_packet(session.transport, data, self.forward.target, self.forward.target[1])


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

    # ------------------------------------------------------------------ data plane
    async def start_relay(self) -> None:
        loop = asyncio.get_running_loop()
        for fwd in self.forwards:
            _, proto = await loop.create_datagram_endpoint(lambda f=fwd: _Listener(self, f), local_addr=fwd.listen)
            self.listeners.append(proto)

    def forward_packet(self, transport, data: bytes, dest: tuple[str, int], dport: int) -> None:
        """Both directions pass the same WAN state, so a cut stops traffic both ways at once."""
        if transport is None or not self.wan.passes(dport):
            return
        if self.wan.delay:
            asyncio.get_running_loop().call_later(self.wan.delay, self._send, transport, data, dest)
        else:
            self._send(transport, data, dest)

    @staticmethod
    def _send(transport, data: bytes, dest) -> None:
        if not transport.is_closing():
            transport.sendto(data, dest)

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
                delay = max((t for k, t in self.slow.items() if k in " ".join(argv)), default=0.0)
                if delay:
                    await asyncio.sleep(delay)
                rc, out, err = self.apply(argv)
            except (ValueError, TypeError):
                rc, out, err = 2, "", "router control: bad request\n"
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

        async def run_command(process: asyncssh.SSHServerProcess) -> None:
            if process.get_extra_info("username") != username:
                process.stderr.write("permission denied\n")
                process.exit(255)
                return
            command = process.command or ""
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, env=env, cwd="/",
                                                        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, start_new_session=True)
            out, err = await proc.communicate()
            process.stdout.write(out.decode(errors="replace"))
            process.stderr.write(err.decode(errors="replace"))
            process.exit(proc.returncode or 0)

        self.ssh_server = await asyncssh.create_server(
            _KeyOnly, host, port, server_host_keys=[str(host_key)],
            authorized_client_keys=str(authorized_keys), process_factory=run_command, encoding="utf-8")

    def tools(self, tools_dir: Path) -> None:
        """Write the stand-in executables that the SSH shell finds first on PATH."""
        tools_dir.mkdir(parents=True, exist_ok=True)
        for tool in ("ip", "tc", "iptables", "modprobe"):
            path = tools_dir / tool
            path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hil.router_tools {tool} \"$@\"\n")
            path.chmod(0o755)

    def summary(self) -> dict:
        return {"name": self.name, "lan": self.lan_ip, "wan": self.wan_ip,
                "wan_state": {"interface": self.wan.name, "admin_up": self.wan.admin_up, "loss": self.wan.loss,
                              "delay": self.wan.delay, "drop_all": self.wan.drop_all, "drop_ports": sorted(self.wan.drop_ports),
                              "rules": [" ".join(r) for r in self.wan.rules], "root_qdisc": " ".join(self.wan.root_qdisc),
                              "routes": list(self.wan.routes)},
                "history": self.wan.history[-200:], "commands": self.commands[-200:]}

    async def stop(self) -> None:
        for listener in self.listeners:
            for s in listener.sessions.values():
                if s.transport:
                    s.transport.close()
            if listener.transport:
                listener.transport.close()
        if self.ctl_server:
            self.ctl_server.close()
        if self.ssh_server:
            self.ssh_server.close()


class _KeyOnly(asyncssh.SSHServer):
    """Public-key login only (keys from the authorized_keys file); no passwords."""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False
