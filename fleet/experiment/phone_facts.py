"""Who each phone of a run is, for its report: IP address, extension and firmware.

A report is read beside PBX and router logs, which name phones by address and
extension, not by MAC. The firmware comes from what the phone itself said (the
collector's polls record it in the phone's hash, `Store.set_phone_info`, and so may
anything else that reads it from the phone);
the inventory's `firmware_version` stands in where the phone never said, and
the report says which. Unknown stays None here: the report writes "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass

from fleet.config.inventory import Phone


@dataclass(frozen=True)
class PhoneFacts:
    address: str | None
    extension: str | None
    firmware: str | None
    firmware_from: str | None        # "phone" (it reported it), "inventory" (firmware_version), None (unknown)


def extension(params: dict[str, str]) -> str | None:
    """Line 1's user: `reg.1.address` before any `@` (the guides: "the user part or the full SIP URI")."""
    user = str(params.get("reg.1.address") or "").split("@")[0].strip()
    return user or None


def phone_facts(phone: Phone, params: dict[str, str], stored: dict | None) -> PhoneFacts:
    """The facts of `phone` running `params`; `stored`: its row from `Store.phones` (None: not in the store)."""
    reported = str((stored or {}).get("firmware") or "").strip()
    listed = str(phone.firmware_version or "").strip()
    firmware, source = (reported, "phone") if reported else (listed, "inventory") if listed else (None, None)
    return PhoneFacts(address=str(phone.address) or None, extension=extension(params), firmware=firmware,
                      firmware_from=source)
