"""What a rollout asks of one phone: is it in a call, reboot it, did the reboot arrive.

Kept apart from the Celery tasks so the phone-family seam can own these
decisions; the tasks only call them.
"""
from __future__ import annotations

import time

from . import inventory as inv_mod
from .drivers.control.rest import RestPhone
from .drivers.errors import DeviceRefused, DeviceTimeout, DriverError

def in_call(phone: inv_mod.Phone, creds, rest: RestPhone | None = None) -> bool:
    """Call state from REST where the model has it, phone state polling otherwise; unknown counts as idle."""
    from .drivers.control.polling import polling_in_call

    try:
        return rest.call_state() not in ("", "Idle") if rest is not None else polling_in_call(phone, creds)
    except DriverError:
        return False

def reboot(phone: inv_mod.Phone, creds, rest: RestPhone | None = None) -> str:
    if phone.has_rest:
        (rest or RestPhone(phone, creds)).restart()
        return "rest safeRestart"
    from .drivers.control.sip_notify import check_sync_blocking

    check_sync_blocking(phone)
    return "sip check-sync"

def rebooted_since(phone: inv_mod.Phone, creds, params: dict, store, since: float) -> bool:
    """Whether the reboot sent at `since` reached the phone.

    REST phones say so through their uptime; a REST phone that does not
    answer is taken as rebooting. SoundPoint phones have no uptime to ask
    for: their check-sync is idempotent unless alwaysReboot=1 (a phone already
    running the new files ignores a second one), so we answer False and let it
    be sent again; with alwaysReboot=1 the evidence is the line unregistration
    event a phone sends as it shuts down, where the phone sends events; without
    any evidence we answer True: better a phone that fails verification than one
    rebooted twice.
    """
    if phone.has_rest:
        try:
            return RestPhone(phone, creds).uptime() < time.time() - since + 1
        except (DeviceTimeout, DeviceRefused):
            return True
        except DriverError:
            return False
    if params.get("voIpProt.SIP.specialEvent.checkSync.alwaysReboot", "0") != "1":
        return False
    sends_events = params.get("apps.telNotification.URL") and params.get("apps.telNotification.lineRegistrationEvent", "1") != "0"
    if not sends_events:
        return True
    return (store.phone_state(phone.mac).line_down_at or 0.0) > since
