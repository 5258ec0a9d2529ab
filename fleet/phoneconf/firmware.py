"""Which interface fleet talks to a phone through, from its firmware family and version alone.

A UC Software 5 family offers the REST API, but only from 5.4 on; a 5.0-5.3 phone
(by the inventory's `firmware_version`) is read and pushed to by state polling like
SIP 3.x and UC Software 4.0. The inventory (its push-mode default), the REST driver,
the rollout plan and the collector's poller all ask this one question, so it lives
here, below all of them, as a function of plain values (no inventory types).
"""
from __future__ import annotations

from soundpoint import families
from soundpoint.conformance import version_in

REST_FROM = "5.4"                 # the oldest UC Software with the REST API


def supports_rest(version: str) -> bool:
    """Whether firmware `version` has the REST API (UC Software 5.4 and later)."""
    return version_in(version, f">={REST_FROM}")


def uses_rest(family: families.Family, firmware_version: str | None) -> bool:
    """Whether fleet talks REST to a phone of `family`: a REST family, unless its known version is before 5.4
    (then the family's other interfaces serve: state polling, check-sync)."""
    return family.rest and (not firmware_version or supports_rest(firmware_version))


def uses_state_polling(family: families.Family, firmware_version: str | None) -> bool:
    """Whether call checks on a phone of `family` read state polling: the family has it and fleet does not talk
    REST to it (SIP 3.x, UC Software 4.0, and UC Software 5.0-5.3 by `firmware_version`)."""
    return families.STATE_POLLING in family.interfaces and not uses_rest(family, firmware_version)
