"""LAN-side reachability probes: is the provider really gone (or back)?

A cut that did not take effect must fail the experiment, not pass it. The
probe resolves the provider's name through the site's DNS, as the phones do,
and sends SIP OPTIONS; any SIP answer at all means the path is up.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimeout, TransactionTimers

from fleet.base.dns import a_records


@dataclass
class ProbeResult:
    reachable: bool
    stage: str        # dns, sip
    detail: str

    def to_dict(self) -> dict:
        return {"reachable": self.reachable, "stage": self.stage, "detail": self.detail}


async def resolve(name: str, dns: tuple[str, int], timeout: float = 1.0) -> str | None:
    """The first A address the site's DNS server gives `name` (fleet.base.dns asks), or None."""
    found = await asyncio.to_thread(a_records, name, dns[0], dns[1], timeout)
    return found[0][0] if found else None


async def probe_provider(name: str, port: int, dns: tuple[str, int] | None, timeout: float = 2.0) -> ProbeResult:
    address = name
    if dns is not None and not name.replace(".", "").isdigit():
        resolved = await resolve(name, dns)
        if resolved is None:
            return ProbeResult(False, "dns", f"{name} does not resolve through {dns[0]}:{dns[1]}")
        address = resolved
    ep = await SipEndpoint.bind("0.0.0.0", 0, name="probe")
    try:
        req = sip.make_request("OPTIONS", f"sip:{name}", local=ep.local, from_uri="sip:probe@fleet.invalid",
                               to_uri=f"sip:{name}", call_id=sip.new_call_id("fleet"), cseq=1, from_tag=sip.new_tag())
        try:
            resp = await ep.request(req, (address, port), TransactionTimers(retry_timeout=timeout / 4, retry_max_count=3))
        except TransactionTimeout:
            return ProbeResult(False, "sip", f"no answer to OPTIONS from {address}:{port} in {timeout:g}s")
        return ProbeResult(True, "sip", f"{address}:{port} answered {resp.status}")
    finally:
        ep.close()
