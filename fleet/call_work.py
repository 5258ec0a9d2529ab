"""Place a test call from one phone (an experiment's `call` step): the collectors see where the INVITE went."""
from __future__ import annotations

import time

from .drivers.control.rest import RestPhone
from .task_errors import TaskFailed, failure_text
from .worker_context import context


def place_call(mac: str, number: str) -> dict:
    """Dial `number` from the phone; returns when the phone accepted the dial request, with the time it did."""
    inv, secrets = context()
    try:
        _, phone = inv.phone(mac)
        creds = secrets.credentials(phone.credentials)
    except KeyError as exc:
        raise TaskFailed(failure_text(exc)) from None
    if not phone.family.rest:
        raise TaskFailed(f"phone {mac} ({phone.model}, {phone.family.name}) has no REST API to place a call from")
    RestPhone(phone, creds).dial(number)
    return {"t": time.time()}
