"""Place a test call from one phone (an experiment's `call` step): the collectors see where the INVITE went."""
from __future__ import annotations

import time

from fleet.drivers.control.rest import RestPhone
from fleet.state.lease import PhoneRestLock
from fleet.worker.errors import TaskFailed, failure_text
from fleet.worker.context import context, stores
from fleet.base.steps import step


@step("test call", args=("mac",))
def place_call(mac: str, number: str) -> dict:
    """Dial `number` from the phone; returns when the phone accepted the dial request, with the time it did. The
    request holds the phone's REST lock, as every other REST request does (the collector may be polling it)."""
    inv, secrets = context()
    try:
        _, phone = inv.phone(mac)
        creds = secrets.credentials(phone.credentials)
    except KeyError as exc:
        raise TaskFailed(failure_text(exc)) from None
    if not phone.family.rest:
        raise TaskFailed(f"phone {mac} ({phone.model}, {phone.family.name}) has no REST API to place a call from")
    store, _ = stores()
    RestPhone(phone, creds, guard=PhoneRestLock.factory(store, mac, owner="experiment")).dial(number)
    return {"t": time.time()}
