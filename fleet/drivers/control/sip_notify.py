"""SIP NOTIFY check-sync: the one control every SoundPoint understands (reboot or resync)."""
from __future__ import annotations

import asyncio

from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimeout, TransactionTimers

from ...inventory import Phone
from ..errors import DeviceRefused, DeviceTimeout


async def check_sync(phone: Phone, timeout: float = 4.0) -> int:
    ep = await SipEndpoint.bind("0.0.0.0", 0, name="check-sync")
    try:
        uri = f"sip:{phone.address}:{phone.sip_port}"
        req = sip.make_request("NOTIFY", uri, local=ep.local, from_uri="sip:fleet@fleet.invalid", to_uri=uri,
                               call_id=sip.new_call_id("fleet"), cseq=1, from_tag=sip.new_tag(),
                               extra=[("Event", "check-sync"), ("Subscription-State", "terminated")])
        try:
            resp = await ep.request(req, (phone.address, phone.sip_port), TransactionTimers(retry_timeout=timeout / 4))
        except TransactionTimeout:
            raise DeviceTimeout(f"phone {phone.mac} ({phone.address})", "no answer to check-sync NOTIFY") from None
        if resp.status is None or resp.status >= 300:
            raise DeviceRefused(f"phone {phone.mac} ({phone.address})", f"check-sync answered {resp.status}")
        return resp.status
    finally:
        ep.close()


def check_sync_blocking(phone: Phone, timeout: float = 4.0) -> int:
    return asyncio.run(check_sync(phone, timeout))
