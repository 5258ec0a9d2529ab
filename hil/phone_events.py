"""What the phone pushes out by itself: syslog lines and telephone notification events.

A mixin of VirtualPhone (hil.phone): it works on the phone's own state.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp

from . import phone_reports as reports

from .phone_types import Registration, ServerBinding


class Reporting:
    def _log(self, text: str) -> None:
        self.log_lines.append(f"{time.strftime('%m%d%H%M%S')}|{text}")
        if len(self.log_lines) > 1000:
            del self.log_lines[:500]

    def _syslog_target(self) -> tuple[str, int] | None:
        """Where syslog goes: device.syslog.serverName, which a phone applies only with device.set=1 and
        device.syslog.serverName.set=1 (device.* parameters; polycom.md "More facts"). Without them: no syslog."""
        server = self.params.get("device.syslog.serverName")
        if not server or self.params.get("device.set") != "1" or self.params.get("device.syslog.serverName.set") != "1":
            return None
        host, _, port = server.partition(":")
        return host, int(port or self.params.get("device.syslog.serverPort", "514") or 514)

    def _send_udp(self, payload: bytes, target: tuple[str, int]) -> None:
        if self.endpoint and self.endpoint.transport:
            # syslog leaves from the phone's own address, like every other packet of the phone
            self.endpoint.transport.sendto(payload, target)

    def _report_registration(self, reg: Registration, srv: ServerBinding, ok: bool, expires: int | None, reason: str) -> None:
        self._log(f"reg.{reg.index}.server.{srv.index} {srv.address} {'registered' if ok else 'failed ' + reason}")
        target = self._syslog_target()
        if target and reports.sends_registration_line(self):
            self._send_udp(reports.syslog_registration(self.mac, self.spec.ip, reg.index, srv.index,
                                                       f"{srv.address}:{srv.port}", ok, expires, reason), target)

    def _report_call(self, number: str, srv: ServerBinding, status: int) -> None:
        target = self._syslog_target()
        if target and reports.sends_call_line(self):
            self._send_udp(reports.syslog_call(self.mac, self.spec.ip, number, srv.index, f"{srv.address}:{srv.port}", status), target)

    def _events(self) -> aiohttp.ClientSession:
        """Events leave from the phone's own address, as a real phone's do (collectors drop other sources)."""
        if self._events_session is None or self._events_session.closed:
            self._events_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5),
                connector=aiohttp.TCPConnector(local_addr=(self.spec.ip, 0), limit=2, force_close=True))
        return self._events_session

    async def _send_line_events(self, kind: str, only: int | None = None) -> None:
        url = self.params.get("apps.telNotification.URL")
        if not url or self.params.get("apps.telNotification.lineRegistrationEvent", "1") == "0":
            return
        for reg in self.regs:
            if only is not None and reg.index != only:
                continue
            try:
                async with self._events().post(url, data=reports.line_event(kind, self.mac, self.spec.ip, reg.index),
                                              headers={"Content-Type": "application/xml"}):
                    pass
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                self._log(f"telephone notification to {url} failed")
