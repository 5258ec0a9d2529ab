"""SIP NOTIFY check-sync: the one control every SoundPoint understands (reboot or resync).

Addressed to the phone's registered user (`sip:1001@phone`), since phones match
the request URI against their lines. A phone with `voIpProt.SIP.requestValidation`
challenges it (401/407): the challenge is answered once with the phone's own SIP
credentials (reg.1.auth.*), and only a refusal after that is reported as refused. Validation by source
answers 400 Bad Request to a NOTIFY not from a configured registration server (conformance checksync-notify-*).
"""
from __future__ import annotations

import asyncio

from sipwire import digest
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimeout, TransactionTimers

from fleet.config.inventory import Phone
from fleet.drivers.errors import DeviceRefused, DeviceTimeout


async def check_sync(phone: Phone, timeout: float = 4.0, user: str | None = None,
                     auth: tuple[str, str] | None = None) -> int:
    name = f"phone {phone.mac} ({phone.address})"
    ep = await SipEndpoint.bind("0.0.0.0", 0, name="check-sync")
    try:
        uri = f"sip:{user + '@' if user else ''}{phone.address}:{phone.sip_port}"
        call_id, tag = sip.new_call_id("fleet"), sip.new_tag()
        header: list[tuple[str, str]] = []
        for cseq in (1, 2):
            req = sip.make_request("NOTIFY", uri, local=ep.local, from_uri="sip:fleet@fleet.invalid", to_uri=uri,
                                   call_id=call_id, cseq=cseq, from_tag=tag,
                                   extra=[("Event", "check-sync"), ("Subscription-State", "terminated")] + header)
            try:
                resp = await ep.request(req, (phone.address, phone.sip_port), TransactionTimers(retry_timeout=timeout / 4))
            except TransactionTimeout:
                raise DeviceTimeout(name, "no answer to check-sync NOTIFY") from None
            if resp.status in (401, 407) and not header:
                if auth is None:
                    raise DeviceRefused(name, f"check-sync challenged ({resp.status}) and the inventory gives no "
                                              "SIP credentials (reg.1.auth.password) to answer it")
                hname = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
                try:
                    challenge = digest.parse_challenge(resp.get(hname) or "")
                    value = digest.authorization(challenge, username=auth[0], password=auth[1], method="NOTIFY", uri=uri)
                except (sip.SipParseError, KeyError, ValueError):
                    raise DeviceRefused(name, f"check-sync challenge ({resp.status}) cannot be read") from None
                header = [("Authorization" if resp.status == 401 else "Proxy-Authorization", value)]
                continue
            break
        if resp.status is None or resp.status >= 300:
            after = " after answering its digest challenge" if header else ""
            why = (" (a phone validating NOTIFY by source takes it only from its configured registration servers: "
                   "voIpProt.SIP.requestValidation)" if resp.status == 400 else "")
            raise DeviceRefused(name, f"check-sync refused{after}: {resp.status}{why}")
        return resp.status
    finally:
        ep.close()


def check_sync_blocking(phone: Phone, timeout: float = 4.0, user: str | None = None,
                        auth: tuple[str, str] | None = None) -> int:
    return asyncio.run(check_sync(phone, timeout, user, auth))
