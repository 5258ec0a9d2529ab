"""The userspace router: a UDP relay between LAN-side and WAN-side loopback addresses, run like a Linux box.

Phones reach the provider (and its DNS) only through the relay. The router is
controlled as a real one is: over a real SSH server whose commands run in
/bin/sh, where `ip`, `tc` and `iptables` are stand-ins (hil.router_tools) that
act on this relay through a control socket. So `ip link set dev wan0 down`,
`tc qdisc replace dev wan0 root netem loss 30% delay 200ms`, and
`(sleep 60; ip link set dev wan0 up) &` behave as on a Linux router.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)


@dataclass
class Forward:
    """Packets to `listen` on the LAN side go out of the WAN side to `target`."""
    listen: tuple[str, int]
    target: tuple[str, int]


@dataclass
class WanState:
    """The WAN side as a Linux router holds it: link flag, routes, FORWARD rules and the root qdisc.

    The data plane is derived from the rules and the qdisc the way the kernel
    would apply them, so the router commands fleet sends are judged by their
    effect, not by their spelling."""
    name: str = "wan0"
    admin_up: bool = True
    routes: list[str] = field(default_factory=lambda: ["default via 203.0.113.1 proto static"])
    rules: list[list[str]] = field(default_factory=list)      # FORWARD chain, in order, each rule's words
    root_qdisc: list[str] = field(default_factory=list)       # [] = the kernel's default; else e.g. ["netem", "1fe1:", ...]
    history: list[dict] = field(default_factory=list)

    def _drop_rules(self) -> list[list[str]]:
        return [r for r in self.rules if r[-2:] == ["-j", "DROP"]]

    @property
    def drop_all(self) -> bool:
        return any(("-i" in r or "-o" in r) and "statistic" not in r and "--dport" not in r for r in self._drop_rules())

    @property
    def drop_ports(self) -> set[int]:
        return {int(r[r.index("--dport") + 1]) for r in self._drop_rules() if "--dport" in r}

    @property
    def loss(self) -> float:
        probs = [float(r[r.index("--probability") + 1]) for r in self._drop_rules() if "--probability" in r]
        return max(probs, default=0.0)

    @property
    def delay(self) -> float:
        q = self.root_qdisc
        return _duration(q[q.index("delay") + 1]) if q[:1] == ["netem"] and "delay" in q else 0.0

    def passes(self, dport: int) -> bool:
        if not self.admin_up or self.drop_all or dport in self.drop_ports:
            return False
        return not (self.loss and random.random() < self.loss)


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
        self.listeners: list[_Listener] = []
        self.ctl_server: asyncio.AbstractServer | None = None
        self.ssh_server: asyncssh.SSHAcceptor | None = None
        self.commands: list[dict] = []
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
        """Run one stand-in command (`ip ...`, `tc ...`, `iptables ...`); returns rc, stdout, stderr."""
        self.commands.append({"t": time.time(), "argv": argv})
        try:
            tool, args = argv[0], argv[1:]
            if tool == "ip":
                return self._ip(args)
            if tool == "tc":
                return self._tc(args)
            if tool == "iptables":
                return self._iptables(args)
        except (IndexError, ValueError) as exc:
            return 1, "", f"{argv[0]}: bad arguments ({exc})\n"
        return 127, "", f"{argv[0]}: command not found\n"

    def _note(self, what: str) -> None:
        self.wan.history.append({"t": time.time(), "change": what, "admin_up": self.wan.admin_up})

    def _ip(self, args: list[str]) -> tuple[int, str, str]:
        args = [a for a in args if a not in ("-o", "-oneline")]
        if args[:2] == ["link", "set"]:
            rest = args[2:]
            if rest and rest[0] == "dev":
                rest = rest[1:]
            dev, action = rest[0], rest[1]
            if dev != self.wan.name and dev != "lan0":
                return 1, "", f'Cannot find device "{dev}"\n'
            if dev == self.wan.name and action in ("up", "down"):
                if action == "down" and self.wan.admin_up:
                    self.wan.routes = []          # as on Linux: routes through the link go with it, and up does not bring them back
                self.wan.admin_up = action == "up"
                self._note(f"link {action}")
                return 0, "", ""
            return 1, "", f"ip: unsupported action {action}\n"
        if args[:2] == ["link", "show"] or args == ["link"]:
            rest = args[2:]
            if rest and rest[0] == "dev":
                rest = rest[1:]
            devs = [rest[0]] if rest else ["lan0", self.wan.name]
            lines = []
            for i, dev in enumerate(devs, start=2):
                if dev == "lan0":
                    up = True
                elif dev == self.wan.name:
                    up = self.wan.admin_up
                else:
                    return 1, "", f'Device "{dev}" does not exist.\n'
                flags = "BROADCAST,MULTICAST,UP,LOWER_UP" if up else "BROADCAST,MULTICAST"
                state = "UP" if up else "DOWN"
                lines.append(f"{i}: {dev}: <{flags}> mtu 1500 qdisc noqueue state {state} mode DEFAULT group default qlen 1000")
            return 0, "\n".join(lines) + "\n", ""
        if args[:2] == ["route", "show"]:
            return 0, "".join(r + "\n" for r in self.wan.routes), ""
        if args[:2] == ["route", "replace"]:
            words = args[2:]
            if "dev" in words:
                i = words.index("dev")
                words = words[:i] + words[i + 2:]
            route = " ".join(words)
            if route not in self.wan.routes:
                self.wan.routes.append(route)
            self._note(f"route {route}")
            return 0, "", ""
        return 1, "", "ip: only 'link set|show' and 'route show|replace' are emulated\n"

    def _tc(self, args: list[str]) -> tuple[int, str, str]:
        if args[:1] != ["qdisc"]:
            return 1, "", "tc: only qdisc is emulated\n"
        op, words = args[1], args[2:]
        if "dev" in words and words[words.index("dev") + 1] != self.wan.name:
            return 1, "", f'Cannot find device "{words[words.index("dev") + 1]}"\n'
        if op == "show":
            q = self.wan.root_qdisc
            if q:
                desc = f"qdisc {q[0]} {q[1]} dev {self.wan.name} root refcnt 2 {' '.join(q[2:])}".rstrip()
            else:
                desc = f"qdisc noqueue 0: dev {self.wan.name} root refcnt 2"
            return 0, desc + "\n", ""
        if op in ("add", "replace"):
            if "root" not in words:
                return 1, "", "tc: only root qdiscs are emulated\n"
            after = words[words.index("root") + 1:]
            handle = "8001:"
            if after[:1] == ["handle"]:
                handle, after = after[1], after[2:]
            if not after:
                return 1, "", "tc: qdisc kind missing\n"
            if op == "add" and self.wan.root_qdisc:
                return 2, "", "Error: Exclusivity flag on, cannot modify.\n"
            self.wan.root_qdisc = [after[0], handle, *after[1:]]
            self._note(f"qdisc {' '.join(self.wan.root_qdisc)}")
            return 0, "", ""
        if op == "del":
            if not self.wan.root_qdisc:
                return 2, "", "Error: Cannot delete qdisc with handle of zero.\n"
            if "handle" in words and words[words.index("handle") + 1] != self.wan.root_qdisc[1]:
                return 2, "", "Error: Invalid handle.\n"
            self.wan.root_qdisc = []
            self._note("qdisc removed")
            return 0, "", ""
        return 1, "", f"tc: unsupported {op}\n"

    def _iptables(self, args: list[str]) -> tuple[int, str, str]:
        args = [a for a in args if a != "-w"]
        if args[:1] == ["-S"]:
            if args[1:] not in ([], ["FORWARD"]):
                return 1, "", "iptables: only the FORWARD chain is emulated\n"
            lines = ["-P FORWARD ACCEPT"] + ["-A FORWARD " + " ".join(_quote_comment(r)) for r in self.wan.rules]
            return 0, "\n".join(lines) + "\n", ""
        if len(args) < 2 or args[0] not in ("-I", "-A", "-D", "-C") or args[1] != "FORWARD":
            return 1, "", "iptables: only FORWARD rules are emulated\n"
        op, spec = args[0], args[2:]
        if op == "-D" and len(spec) == 1 and spec[0].isdigit():
            n = int(spec[0])
            if not 1 <= n <= len(self.wan.rules):
                return 1, "", "iptables: Index of deletion too big.\n"
            removed = self.wan.rules.pop(n - 1)
            self._note(f"rule removed: {' '.join(removed)}")
            return 0, "", ""
        if "-j" not in spec or spec.index("-j") != len(spec) - 2:
            return 2, "", "iptables: a rule must end with -j TARGET\n"
        for opt in ("--dport", "--probability"):
            if opt in spec:
                float(spec[spec.index(opt) + 1])     # ValueError: bad argument, as iptables refuses it
        if op == "-C":
            return (0, "", "") if spec in self.wan.rules else (1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n")
        if op == "-D":
            if spec not in self.wan.rules:
                return 1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n"
            self.wan.rules.remove(spec)
            self._note(f"rule removed: {' '.join(spec)}")
            return 0, "", ""
        if op == "-I":
            self.wan.rules.insert(0, spec)
        else:
            self.wan.rules.append(spec)
        self._note(f"rule added: {' '.join(spec)}")
        return 0, "", ""

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
        for tool in ("ip", "tc", "iptables"):
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


def _duration(text: str) -> float:
    text = text.strip().lower()
    for suffix, scale in (("ms", 0.001), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text) / 1000 if text else 0.0


def _quote_comment(rule: list[str]) -> list[str]:
    """iptables -S prints a comment in double quotes."""
    out = list(rule)
    if "--comment" in out:
        i = out.index("--comment") + 1
        out[i] = f'"{out[i]}"'
    return out
