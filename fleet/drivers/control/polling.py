"""Phone state polling over HTTP for one phone, synchronous: is a line in a call (before a rollout reboots it).

The asynchronous poller (drivers.collect.poller) serves the collectors; this is
the one request a rollout task makes, with the phone's own authentication
scheme (digest unless the inventory says basic), never basic as a fallback.
"""
from __future__ import annotations

import requests

from ...inventory import Credentials, Phone
from ..errors import DeviceRefused, DeviceTimeout
from .rest import auth_hint, phone_auth

CALL_STATE_PATH = "/polling/callStateHandler"


def polling_in_call(phone: Phone, credentials: Credentials, timeout: float = 3.0) -> bool:
    """Whether a line of the phone is Active; DriverError when the phone cannot be asked."""
    name = f"phone {phone.mac} ({phone.address})"
    try:
        resp = requests.get(f"http://{phone.address}:{phone.http_port}{CALL_STATE_PATH}",
                            auth=phone_auth(phone, credentials), timeout=timeout)
    except requests.RequestException as exc:
        raise DeviceTimeout(name, f"GET {CALL_STATE_PATH}: {type(exc).__name__}") from None
    if resp.status_code == 401:
        raise DeviceRefused(name, f"GET {CALL_STATE_PATH}: HTTP 401 ({auth_hint(phone, resp)})")
    return resp.ok and b"<LineState>Active</LineState>" in resp.content
