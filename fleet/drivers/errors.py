"""Typed driver errors: each names the device, never a secret, and carries no traceback noise to reports."""
from __future__ import annotations


class DriverError(Exception):
    def __init__(self, device: str, message: str) -> None:
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
