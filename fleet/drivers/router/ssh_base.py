"""One SSH base for router platforms (paramiko): connect, host-key checking, timeouts, typed errors.

A platform is a table of shell commands (scrapli's lesson: a vendor is mostly
data). The dead-man's switch is a restore scheduled on the router itself when
a cut is made, so a controller that dies mid-outage never leaves a site
without WAN.
"""
from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
import socket
from dataclasses import dataclass

import paramiko

from ...inventory import Credentials, Router
from ..errors import DeviceRefused, DeviceTimeout, DriverError, HostKeyUnknown, MalformedAnswer


@dataclass(frozen=True)
class CommandTable:
    cut: dict[str, list[str]]
    restore: dict[str, list[str]]
    state: list[str]


class SshRouter(ABC):
    table: CommandTable

    def __init__(self, router: Router, credentials: Credentials) -> None:
        self.router = router
        self.name = f"router {router.address}:{router.port}"
        self.client = paramiko.SSHClient()
        if router.known_hosts:
            try:
                self.client.load_host_keys(router.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise DriverError(self.name, f"cannot read known_hosts {router.known_hosts}: {type(exc).__name__}") from None
        # Unknown keys are refused unless the user opted in explicitly (inventory: accept_new_host_key: true).
        policy = paramiko.AutoAddPolicy() if router.accept_new_host_key else paramiko.RejectPolicy()
        self.client.set_missing_host_key_policy(policy)
        try:
            self.client.connect(router.address, port=router.port, username=credentials.username or None,
                                password=credentials.password or None, key_filename=credentials.key_file or None,
                                timeout=router.timeout, banner_timeout=router.timeout, auth_timeout=router.timeout,
                                look_for_keys=False, allow_agent=False)
        except paramiko.BadHostKeyException:
            raise HostKeyUnknown(self.name, "host key does not match known_hosts (possible impersonation)") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyUnknown(self.name, "host key not in known_hosts; add it, or set accept_new_host_key") from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise DeviceRefused(self.name, "authentication failed") from None
            raise DriverError(self.name, f"SSH error: {type(exc).__name__}") from None
        except (socket.timeout, TimeoutError):
            raise DeviceTimeout(self.name, f"no SSH answer within {router.timeout:g}s") from None
        except OSError as exc:
            raise DeviceTimeout(self.name, f"cannot connect ({exc.strerror or type(exc).__name__})") from None

    def run(self, command: str, check: bool = True) -> str:
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=self.router.timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except (socket.timeout, TimeoutError):
            raise DeviceTimeout(self.name, f"command did not finish within {self.router.timeout:g}s: {command}") from None
        except paramiko.SSHException as exc:
            raise DriverError(self.name, f"SSH error running {command!r}: {type(exc).__name__}") from None
        if check and rc != 0:
            raise DeviceRefused(self.name, f"{command!r} exited {rc}: {err.strip()[:200]}")
        return out

    def _fmt(self, template: str, **kw) -> str:
        return template.format(wan=shlex.quote(self.router.wan_interface), dns_port=self.router.dns_port, **kw)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.table.cut)

    def cut(self, mode: str, *, loss: float = 0.0, delay_ms: int = 0) -> None:
        if mode not in self.table.cut:
            raise DeviceRefused(self.name, f"outage mode {mode!r} not supported by this router driver")
        for cmd in self.table.cut[mode]:
            self.run(self._fmt(cmd, loss=f"{loss * 100:g}%", delay=f"{delay_ms}ms"))

    def restore(self, mode: str) -> None:
        for cmd in self.table.restore[mode]:
            self.run(self._fmt(cmd), check=False)

    @property
    def _deadman_file(self) -> str:
        # on the router, so that any controller (even one that lost the token when it died) can disarm it
        return shlex.quote(f"/tmp/fleet-deadman-{self.router.wan_interface}.pid")

    def arm_deadman(self, mode: str, seconds: int) -> str:
        restore = "; ".join(self._fmt(c) for c in self.table.restore[mode])
        script = f"sleep {int(seconds)}; {restore}; rm -f {self._deadman_file}"
        out = self.run(f"nohup sh -c {shlex.quote(script)} >/dev/null 2>&1 & echo $! > {self._deadman_file}; cat {self._deadman_file}")
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if not pid.isdigit():
            raise MalformedAnswer(self.name, "dead-man's switch did not report a process id")
        return pid

    def disarm_deadman(self, token: str | None = None) -> None:
        """Cancel the scheduled restore: the given one, or the one recorded on the router."""
        target = token if token and token.isdigit() else f"$(cat {self._deadman_file} 2>/dev/null)"
        self.run(f"p={target}; [ -n \"$p\" ] && {{ pkill -P $p 2>/dev/null; kill $p 2>/dev/null; }}; rm -f {self._deadman_file}; true",
                 check=False)

    def wan_state(self) -> dict:
        outputs = [self.run(self._fmt(c), check=False) for c in self.table.state]
        return self.parse_state(outputs)

    @abstractmethod
    def parse_state(self, outputs: list[str]) -> dict:
        """Turn the outputs of the table's state commands into {link_up, dropping, netem, dns_blocked}."""

    def close(self) -> None:
        self.client.close()
