"""The answer to "may this phone be rebooted now?", as every phone-control transport gives it.

It lives with the transports (not in fleet.phones, the families' seam above them) because a transport such as state
polling builds it from what the phone pushed, and a driver must not reach up into the layer that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CallCheck:
    """Whether the phone may be rebooted now. `unknown` is treated as "possibly in a call"."""
    state: Literal["idle", "in-call", "unknown"]
    reason: str = ""

    @property
    def may_reboot(self) -> bool:
        return self.state == "idle"
