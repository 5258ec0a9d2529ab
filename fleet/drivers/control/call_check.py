"""The answer to "may this phone be rebooted now?", as every phone-control transport gives it.

It lives with the transports (not in fleet.phones, the families' seam above them) because a transport such as state
polling builds it from what the phone pushed, and a driver must not reach up into the layer that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleet.drivers.errors import AuthRefused


@dataclass(frozen=True)
class CallCheck:
    """Whether the phone may be rebooted now. `unknown` is treated as "possibly in a call".

    `refused` is apart from both: the phone answered and refused our login (HTTP 401, after answering its challenge
    where it sent one). Waiting does not change a wrong password, so a rollout fails such a phone at once with the
    reason instead of deferring it, as "possibly in a call", until its progress deadline.
    """
    state: Literal["idle", "in-call", "unknown", "refused"]
    reason: str = ""

    @property
    def may_reboot(self) -> bool:
        return self.state == "idle"


def refused(login: str, exc: AuthRefused) -> CallCheck:
    """The check of a phone that refused `login` (which login was sent, never its value), with the request."""
    return CallCheck("refused", f"wrong credentials, the phone refused {login}: {exc.message}"[:300])
