"""Typed driver errors: each names the device, never a secret, and carries no traceback noise to reports."""
from __future__ import annotations

from soundpoint.redact import redact


class DriverError(Exception):
    def __init__(self, device: str, message: str) -> None:
        # a device named by its URL, or a message quoting one, must not carry the URL's password along
        device, message = redact(device), redact(message)
        self.device, self.message = device, message
        super().__init__(f"{device}: {message}")


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class DeviceUnreachable(DeviceTimeout):
    """No connection at all (refused, no route): a kind of no-answer, so whoever retries a timeout retries this too."""


class DeviceRefused(DriverError):
    """The device answered with an error (authentication, bad command, SNMP error status)."""


class AuthRefused(DeviceRefused):
    """The device refused the login (HTTP 401): a wrong password or the wrong login, not a broken device."""


class MalformedAnswer(DriverError):
    """The device answered something we cannot parse."""


class HostKeyUnknown(DriverError):
    """The router's SSH host key is not in known_hosts (and accepting new keys was not asked for)."""
