"""Typed driver errors: each names the device, never a secret, and carries no traceback noise to reports."""
from __future__ import annotations

from ..redact import redact


class DriverError(Exception):
    def __init__(self, device: str, message: str) -> None:
        # a device named by its URL, or a message quoting one, must not carry the URL's password along
        device, message = redact(device), redact(message)
        self.device, self.message = device, message
        super().__init__(f"{device}: {message}")


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class DeviceRefused(DriverError):
    """The device answered with an error (authentication, bad command, SNMP error status)."""


class MalformedAnswer(DriverError):
    """The device answered something we cannot parse."""


class HostKeyUnknown(DriverError):
    """The router's SSH host key is not in known_hosts (and accepting new keys was not asked for)."""
